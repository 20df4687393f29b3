"""Write a small synthetic rehearsal set for the two-terminal stream example (README):
``<out>/run.cxi`` (400 uint16 128 x 128 frames, alternating ring-like "single" and stripe-like
"no_hit" patterns with Poisson noise) and ``<out>/supports/{single,no_hit}/frames.npy`` (5 each).
The patterns are toys (not physics): they only make the example run on a fresh machine.

Run it (a second of work; then the README's two-terminal example, section "Online veto"):

    python examples/stream_rehearsal_data.py rehearsal --seed 0

Full size: replay a real run instead, ``python -m speckle_embed stream-replay`` on your CXI files
(docs/stream.md), or point ``speckle-embed stream`` at the facility's Karabo bridge / ZMQ stream.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np


def toy_frames(n: int, kind: str, rng) -> np.ndarray:
    yy, xx = np.mgrid[:128, :128] - 63.5
    r = np.hypot(yy, xx) if kind == "single" else np.abs(xx)
    return np.stack([rng.poisson(30 * (1 + np.cos(r / rng.uniform(2.8, 3.2)))) for _ in range(n)]).astype(np.uint16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    for kind in ("single", "no_hit"):
        d = args.out / "supports" / kind
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "frames.npy", toy_frames(5, kind, rng))
    frames = np.empty((400, 128, 128), np.uint16)
    frames[0::2] = toy_frames(200, "single", rng)
    frames[1::2] = toy_frames(200, "no_hit", rng)
    with h5py.File(args.out / "run.cxi", "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=frames, chunks=(1, 128, 128))
    print(f"wrote {args.out / 'run.cxi'} and {args.out / 'supports'}")


if __name__ == "__main__":
    main()
