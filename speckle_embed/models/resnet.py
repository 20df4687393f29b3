"""Pre-activation ResNet classifier for single-hit selection (Assalauova et al., IUCrJ 9, 2022).

Assalauova et al. classify PR772 diffraction patterns (single hit vs the rest) with a small
pre-activation residual network on a 192 x 96 (H x W) patch of the detector. This module
implements that family of networks for the supervised comparison heads
(:mod:`speckle_embed.heads`); it is a classifier (logits), not an embedding.

Default architecture, for a (N, 1, 192, 96) input (``channels=(16, 32, 64, 128, 256)``,
``blocks=(1, 2, 2, 2, 1)``)::

    stem   Conv 3x3 1->16                                   192 x 96
    block1 PreAct(16 -> 16)                                 192 x 96   identity shortcut
    block2 PreAct(16 -> 32,  stride 2)                       96 x 48   1x1/2 projection
    block3 PreAct(32 -> 32)                                  96 x 48
    block4 PreAct(32 -> 64,  stride 2)                       48 x 24   1x1/2 projection
    block5 PreAct(64 -> 64)                                  48 x 24
    block6 PreAct(64 -> 128, stride 2)                       24 x 12   1x1/2 projection
    block7 PreAct(128 -> 128)                                24 x 12
    block8 PreAct(128 -> 256, stride 2)                      12 x 6    1x1/2 projection
    head   BatchNorm -> LeakyReLU -> global average pool -> Linear 256 -> n_classes

i.e. eight residual blocks, four strided-convolution downsamplings, and the number of filters
doubling at each downsampling from the stem's 16 up to 256 (~1.61 M parameters for two classes).
``stage i`` of ``blocks[i]`` blocks works at ``channels[i]`` filters; the first block of every
stage after the first downsamples with stride 2.

A pre-activation block (He et al., "Identity mappings in deep residual networks", 2016)::

    a = LeakyReLU(BN(x))
    y = Conv3x3(stride)(a) -> BN -> LeakyReLU -> Conv3x3
    out = y + (x                       if shape is unchanged
               Conv1x1(stride)(a)      otherwise: projection of the pre-activated input)

Convolutions carry no bias (a BatchNorm follows, or the sum feeds the next block's BatchNorm);
weights use Kaiming-normal initialisation for leaky ReLU. The leaky-ReLU slope defaults to 0.01
(PyTorch's default, also nnU-Net's, whose training recipe the paper follows).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import register_model

__all__ = ["PreActBlock", "PreActResNetClassifier"]


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name} must be a positive int or a pair (H, W), got {value}")
    return value


class PreActBlock(nn.Module):
    """Pre-activation residual block: BN -> LeakyReLU -> conv3x3 -> BN -> LeakyReLU -> conv3x3.

    Parameters
    ----------
    in_channels, out_channels : int
    stride : int
        Stride of the first convolution (and of the projection shortcut).
    negative_slope : float
        Slope of the leaky ReLUs.

    Notes
    -----
    The shortcut is the identity when ``stride == 1`` and the channel count is unchanged,
    otherwise a 1x1 convolution with ``stride`` applied to the pre-activated input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 negative_slope: float = 0.01) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = nn.LeakyReLU(negative_slope, inplace=False)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.LeakyReLU(negative_slope, inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            None if stride == 1 and in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        y = self.conv2(self.act2(self.bn2(self.conv1(a))))
        return y + skip


@register_model("preact_resnet")
class PreActResNetClassifier(nn.Module):
    """Pre-activation ResNet classifier of diffraction-pattern patches (logits out).

    Parameters
    ----------
    input_size : int or (int, int)
        Patch size (H, W) the model is built for; ``(192, 96)`` as in Assalauova et al.
        (tests use e.g. ``(32, 16)``). The network itself is size-agnostic (global average
        pooling); the size is checked so that a head feeds the patch it was trained on.
    n_classes : int
        Number of output logits (2: non-single / single).
    channels : sequence of int
        Filters of each stage; ``channels[0]`` is also the stem's width. Default
        ``(16, 32, 64, 128, 256)``.
    blocks : sequence of int
        Residual blocks per stage (same length as ``channels``). Default ``(1, 2, 2, 2, 1)``:
        eight blocks, a stride-2 block opening every stage after the first.
    in_channels : int
        Channels of the input (1).
    negative_slope : float
        Leaky-ReLU slope (0.01).

    Attributes
    ----------
    stem : nn.Conv2d
    blocks : nn.Sequential
        The residual blocks, in order.
    head_norm : nn.BatchNorm2d
        Final pre-activation before pooling.
    fc : nn.Linear
        ``channels[-1] -> n_classes``.

    Examples
    --------
    >>> model = PreActResNetClassifier()
    >>> model(torch.zeros(2, 1, 192, 96)).shape
    torch.Size([2, 2])
    >>> len(model.blocks), model.n_downsamplings
    (8, 4)
    >>> PreActResNetClassifier(**model.config).config == model.config
    True
    """

    def __init__(
        self,
        input_size: int | Sequence[int] = (192, 96),
        n_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        blocks: Sequence[int] = (1, 2, 2, 2, 1),
        in_channels: int = 1,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        blocks = [int(b) for b in blocks]
        if not channels or len(channels) != len(blocks):
            raise ValueError(
                f"channels {channels} and blocks {blocks} must be non-empty and of equal length")
        if min(channels) < 1 or min(blocks) < 1:
            raise ValueError(f"channels and blocks must be >= 1, got {channels}, {blocks}")
        for name, value in (("n_classes", n_classes), ("in_channels", in_channels)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value}")
        if not negative_slope >= 0:
            raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")
        self.input_size = _pair(input_size, "input_size")
        self.n_classes = int(n_classes)
        self.channels = channels
        self.stage_blocks = blocks
        self.in_channels = int(in_channels)
        self.negative_slope = float(negative_slope)

        self.stem = nn.Conv2d(self.in_channels, channels[0], 3, padding=1, bias=False)
        layers = []
        c_in = channels[0]
        for stage, (c_out, n) in enumerate(zip(channels, blocks)):
            for j in range(n):
                stride = 2 if (stage > 0 and j == 0) else 1
                layers.append(PreActBlock(c_in, c_out, stride, self.negative_slope))
                c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.head_norm = nn.BatchNorm2d(c_in)
        self.head_act = nn.LeakyReLU(self.negative_slope, inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, self.n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=self.negative_slope, mode="fan_out",
                                        nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    @property
    def n_downsamplings(self) -> int:
        """Number of stride-2 blocks (``len(channels) - 1``)."""
        return len(self.channels) - 1

    @property
    def config(self) -> dict:
        """Constructor arguments as a plain dict; ``build_model({"name": "preact_resnet", **config})``."""
        return {
            "input_size": list(self.input_size),
            "n_classes": self.n_classes,
            "channels": list(self.channels),
            "blocks": list(self.stage_blocks),
            "in_channels": self.in_channels,
            "negative_slope": self.negative_slope,
        }

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, n_classes={self.n_classes}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch of patches.

        Parameters
        ----------
        x : Tensor, shape (N, in_channels, H, W), or (N, H, W) when ``in_channels == 1``

        Returns
        -------
        Tensor, shape (N, n_classes)
        """
        if x.ndim == 3 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, {self.input_size[0]}, "
                f"{self.input_size[1]}), got {tuple(x.shape)}")
        x = self.blocks(self.stem(x))
        x = self.pool(self.head_act(self.head_norm(x))).flatten(1)
        return self.fc(x)
