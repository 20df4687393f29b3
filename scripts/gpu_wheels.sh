#!/usr/bin/env bash
# Wheels the GPU machine lacks (docs/gpu.md), for its Python 3.12, into .whl/ (git-ignored by
# .git/info/exclude). faiss-cpu serves the few-shot rule; its GPU index needs a faiss-gpu build
# for the machine's CUDA, which is too large to carry (the benchmark reports FAISS on the GPU: False).
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "faiss-cpu==1.15.1"
# one held-out shard (30 MB: the call carries at most 64 MiB with the 17 MB tree) for realistic
# frames and labels; carried as data/gpu_bench
mkdir -p data/gpu_bench
[ -f data/offline/pdb/1BXN.h5 ] && cp -n data/offline/pdb/1BXN.h5 data/gpu_bench/
du -sh .whl data/gpu_bench
