#!/usr/bin/env bash
# Wheels the GPU machine lacks (docs/gpu.md), for its Python 3.12, into .whl/ (git-ignored by
# .git/info/exclude). faiss-cpu serves the few-shot rule; its GPU index needs a faiss-gpu build
# (faiss-gpu 1.15.1 is a 135 MB wheel, over the 64 MiB a device call carries), so the benchmark
# reports "FAISS on the GPU: False" there and searches on the CPU (20 supports: negligible).
set -euo pipefail
ex=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$ex")"
grep -qx '/.whl/' "$ex" 2>/dev/null || echo '/.whl/' >> "$ex"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "faiss-cpu==1.15.1"
# 160 frames of one held-out structure (about 8 MB: a call carries at most 64 MiB with the
# tree) for realistic frames and labels; carried as data/gpu_bench
mkdir -p data/gpu_bench
"${PYTHON:-.venv/bin/python}" - <<'PY'
import h5py, numpy as np
src, dst = "data/offline/pdb/1BXN.h5", "data/gpu_bench/1BXN.h5"
with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
    hit = f["entry_1/truth/hit_class"][()]
    keep = np.sort(np.concatenate([np.flatnonzero(hit == c)[:80] for c in (1, 2)]))
    g.create_dataset("entry_1/data_1/data", data=np.rint(f["entry_1/data_1/data"][keep]).astype(np.uint16),
                     compression="gzip", chunks=(1, 172, 172))
    g["entry_1/data_1/mask"] = f["entry_1/data_1/mask"][()]
    g["entry_1/truth/hit_class"] = hit[keep]
PY
du -sh .whl data/gpu_bench
