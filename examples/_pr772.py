"""PR772-like labelled shots for the online examples (``online_training.py``,
``compare_resnet_head.py``): not an example itself, the data step they share.

The settings of ``python -m simulate experiment=pr772 dataset=online_pr772``, restricted to the
full capsid: 70 nm icosahedral capsids (``conf/simulate/source/continuum_pr772.yaml``) on a pnCCD-like
128x128 detector (``pnccd_geometry(binning=8)``, grid oversampling 6), single / multi /
non-sample hits in equal shares, photon noise, a decade of fluence spread.
"""
from __future__ import annotations

from pathlib import Path


def simulate_pr772(data_dir: Path, n_frames: int, seed: int) -> Path:
    """Simulate ``n_frames`` PR772-like shots into ``data_dir``; returns the shard path."""
    from simulate.generate import generate_dataset
    from simulate.geometry import pnccd_geometry
    from simulate.sources import resolve_sources

    capsid = {"name": "pr772", "kind": "icosahedral_capsid",       # conf/simulate/source/continuum_pr772.yaml
              "params": {"diameter_angstrom": 700.0, "shell_thickness": 40.0, "core_density": 0.55,
                         "shell_density": 0.43, "voxel_angstrom": 10.0, "seed": 0}}
    report = generate_dataset(
        resolve_sources({"kind": "continuum", "objects": [capsid]}),
        pnccd_geometry(binning=8), oversampling=6.0,                # conf/simulate/experiment/pr772.yaml
        out_dir=data_dir, n_frames=n_frames, chunk=100, seed=seed, progress=False,
        # conf/simulate/dataset/online_pr772.yaml
        mix={"single": 1 / 3, "multi": 1 / 3, "no_hit": 0.0, "non_sample": 1 / 3},
        noise={"poisson": True, "gaussian_sigma": 0.15, "beam_center_jitter_px": 0.5},
        fluence={"kind": "loguniform", "low": 10 ** -0.5, "high": 10 ** 0.5, "pulse_sigma": 0.1})
    if not report.ok:
        raise SystemExit(f"simulation failed:\n{report.table()}")
    return report.shard_paths[0]
