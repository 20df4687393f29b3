"""Training configuration: nested dataclasses built from plain (Hydra-composed) mappings.

``conf/train/train.yaml`` mirrors :class:`TrainConfig` key for key; :meth:`TrainConfig.from_dict`
refuses unknown keys (with the allowed ones in the message) so that a typo in an override
fails before any work. ``model`` and ``augment`` stay plain mappings here (the model registry
and :class:`~speckle_embed.train.augment.AugmentConfig` validate them).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "TrainConfig",
    "DataConfig",
    "SamplerConfig",
    "LossConfig",
    "OptimConfig",
    "EvalConfig",
    "to_plain",
]


@dataclass
class DataConfig:
    """Where the frames come from and how they are split.

    Attributes
    ----------
    dirs : list of str
        Dataset folders or shard files (relative paths are relative to ``base_dir``).
    data_path : str
        HDF5 path of the frames.
    recursive : bool
        Search the folders recursively.
    mode : {"structure", "class"}
        ``structure`` (offline): hold out whole structures, mine with the (structure, hit)
        rule. ``class`` (online): ``n_train_per_class`` / ``n_val_per_class`` frames of each
        of ``hit_classes``, every frame of the same dummy structure.
    hit_classes : list of int, optional
        Hit classes used (``structure`` mode default: every labelled class; ``class`` mode
        default: single, multi, non_sample).
    val_fraction, val_structures : structure mode, see
        :func:`~speckle_embed.train.split.split_by_structure`.
    n_train_per_class, n_val_per_class : int
        Class mode.
    split_seed : int, optional
        Seed of the split (default: the run's seed).
    generate_if_missing : bool
        Simulate a small procedural dataset into ``dirs[0]`` if it has no shard (needs the
        ``simulate`` package); ``generate`` holds the simulator's arguments.
    max_open_files : int
        HDF5 files kept open at once.
    frame_shape : None, "max" or [H, W]
        Common frame size when the folders mix detectors (e.g. 172x172 and a 128x128 pnCCD):
        every shard is centre-cropped/padded to it and the padding is masked as bad pixels
        (``"max"``: the largest height and width). None: all shards must have one size.
    merge_classes : dict, optional
        ``{hit class: label}`` applied to the training and validation labels, e.g. ``{3: 2}``:
        non-sample hits share the multi-hit label, so mining treats both as one "not single"
        class, as a 2-way single vs not-single task sees them. None: the hit classes as stored.
    """

    dirs: list = field(default_factory=lambda: ["data/simulated/procedural"])
    data_path: str = "/entry_1/data_1/data"
    recursive: bool = False
    mode: str = "structure"
    hit_classes: list | None = None
    val_fraction: float = 0.25
    val_structures: list | None = None
    n_train_per_class: int = 40
    n_val_per_class: int = 20
    split_seed: int | None = None
    generate_if_missing: bool = False
    generate: dict = field(default_factory=dict)
    max_open_files: int = 64
    frame_shape: object = None
    merge_classes: dict | None = None

    def __post_init__(self):
        if self.frame_shape is not None and not isinstance(self.frame_shape, str):
            self.frame_shape = [int(v) for v in self.frame_shape]
        if isinstance(self.dirs, str):
            self.dirs = [self.dirs]
        self.dirs = [str(d) for d in self.dirs]
        if not self.dirs:
            raise ValueError("data.dirs is empty: give at least one dataset folder or file")
        if self.mode not in ("structure", "class"):
            raise ValueError(f"data.mode must be 'structure' or 'class', got {self.mode!r}")
        if self.merge_classes is not None:
            try:
                self.merge_classes = {int(k): int(v) for k, v in dict(self.merge_classes).items()}
            except (TypeError, ValueError) as exc:
                raise ValueError(f"data.merge_classes must map hit classes to labels, e.g. {{3: 2}}; "
                                 f"got {self.merge_classes!r}") from exc


@dataclass
class SamplerConfig:
    """``p`` (structure, hit) groups x ``k`` frames per batch."""
    p: int = 16
    k: int = 8


@dataclass
class LossConfig:
    """Triplet loss on squared L2 and its miner.

    ``miner``: ``semihard`` (SpeckleNN; ``select`` and ``fallback`` apply), ``batch_hard`` or
    ``batch_all`` (``active_only`` applies). ``margin`` is in squared-L2 units of unit-norm
    embeddings (distances in [0, 4]).
    """
    margin: float = 0.1
    miner: str = "semihard"
    select: str = "random"
    fallback: str = "hardest"
    active_only: bool = False

    def __post_init__(self):
        if self.miner not in ("semihard", "batch_hard", "batch_all"):
            raise ValueError(f"loss.miner must be semihard, batch_hard or batch_all, got {self.miner!r}")
        if not self.margin > 0:
            raise ValueError(f"loss.margin must be > 0, got {self.margin}")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``; gradient clipping.

    ``warmup_steps`` (if set) overrides ``warmup_fraction`` of the total steps.
    ``grad_clip`` is the max global L2 norm (``null``/0 disables).
    """
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int | None = None
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 5.0


@dataclass
class EvalConfig:
    """Validation episodes (see :mod:`speckle_embed.fewshot.episodes`).

    ``max_per_class``: validation frames kept per (structure, class), chosen once.
    """
    n_way: int = 2
    k_shot: int = 5
    n_query: int = 10
    n_tasks: int = 20
    classes: list | None = None
    rule: str = "mean_distance"
    max_per_class: int = 60
    batch_size: int = 256
    seed: int = 0


@dataclass
class TrainConfig:
    """Everything :func:`speckle_embed.train.train` needs (see ``conf/train/train.yaml``).

    Attributes
    ----------
    name : str
        Run name (used by the Hydra run directory).
    seed : int
        Seeds model initialisation, data order, augmentation and mining.
    run_dir : str
        Output folder (checkpoints, metrics.csv, tb/, learning_curve.png).
    base_dir : str, optional
        Folder relative data paths are relative to (default: the current directory).
    epochs : int
    steps_per_epoch : int, optional
        Default: training frames / (p * k), rounded up.
    device : {"auto", "cpu", "cuda", ...}
    threads : int, optional
        ``torch.set_num_threads``.
    channels_last : bool
        Model and inputs in channels-last memory format.
    amp : bool
        bf16 autocast (CUDA only; ignored on CPU).
    deterministic : bool
        Deterministic cuDNN algorithms.
    resume : str
        ``auto`` (continue from ``run_dir/last.pt`` if present), ``never`` (start over) or
        a checkpoint path.
    init_checkpoint : str, optional
        Start from this checkpoint's weights; its architecture and preprocessing replace
        ``model`` and ``preprocessing`` (fine-tuning, e.g. online after offline).
        ``pretrained`` / ``pretrained:<name>``: the embedding shipped in the package.
    init_crop : int, optional
        Train the ``init_checkpoint`` at another input scale: this replaces the ``crop``
        (detector pixels of the model window) of its preprocessing, e.g. 67 for a 96-pixel model
        that should see frames upsampled 96/67 = 1.43x (scale 0.7). Needs ``init_checkpoint``.
    checkpoint_every_steps : int
        Also write ``last.pt`` every that many optimizer steps (0 = epoch ends only).
    progress, tensorboard : bool
    model : dict
        Registry config (``name`` + constructor arguments); ``input_size`` defaults to the
        preprocessing's.
    preprocessing : dict
        :class:`~speckle_embed.preprocess.Preprocessing` fields.
    augment : dict
        :class:`~speckle_embed.train.augment.AugmentConfig` fields.
    """

    name: str = "default"
    seed: int = 0
    run_dir: str = "."
    base_dir: str | None = None
    epochs: int = 20
    steps_per_epoch: int | None = None
    device: str = "auto"
    threads: int | None = None
    channels_last: bool = False
    amp: bool = True
    deterministic: bool = True
    resume: str = "auto"
    init_checkpoint: str | None = None
    init_crop: int | None = None
    checkpoint_every_steps: int = 50
    progress: bool = True
    tensorboard: bool = True
    model: dict = field(default_factory=lambda: {"name": "specklenn"})
    preprocessing: dict = field(default_factory=lambda: {"input_size": 96, "crop": 96})
    augment: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if int(self.epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.steps_per_epoch is not None and int(self.steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if int(self.checkpoint_every_steps) < 0:
            raise ValueError("checkpoint_every_steps must be >= 0")
        if self.init_crop is not None and not self.init_checkpoint:
            raise ValueError("init_crop replaces the crop of init_checkpoint's preprocessing; set init_checkpoint "
                             "too, or set preprocessing.crop when training from scratch")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "TrainConfig") -> "TrainConfig":
        """Build from a nested mapping (DictConfig works), missing keys take defaults."""
        if isinstance(d, cls):
            return d
        return _build(cls, to_plain(d), "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def to_plain(cfg) -> dict:
    """A plain ``dict`` from a mapping or an OmegaConf ``DictConfig`` (interpolations resolved)."""
    if hasattr(cfg, "_metadata") and hasattr(cfg, "_get_node"):  # omegaconf container
        from omegaconf import OmegaConf
        return OmegaConf.to_container(cfg, resolve=True)
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"config must be a mapping or a TrainConfig, got {type(cfg).__name__}")
    return {k: (to_plain(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}


def _build(cls, d: Mapping, where: str):
    if not isinstance(d, Mapping):
        raise TypeError(f"config section {where or '<root>'} must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; allowed in "
                         f"{where.rstrip('.') or 'the root'}: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        typ = hints.get(name)
        if dataclasses.is_dataclass(typ) and value is not None:
            value = _build(typ, value, f"{where}{name}.")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad config section {where or '<root>'}: {exc}") from exc
