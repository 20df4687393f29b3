#!/usr/bin/env bash
# One call of a GPU session (docs/gpu.md): CUDA tests + GPU benchmark, results under $OUT.
#
# Run on the GPU machine from the repository root. Its python3 has torch with CUDA, h5py,
# numpy, matplotlib, tqdm; faiss (and hydra for the training tests) travel as wheels in .whl/
# (scripts/gpu_wheels.sh makes them), a few shards of 172x172 frames in data/gpu_bench/
# (optional: Poisson frames otherwise; labels agreement is then less meaningful).
set -uo pipefail
OUT=${OUT:-/tmp/speckle_gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } \
    2>&1 | tee "$OUT/machine.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_transfer.py tests/test_index.py tests/test_embedder.py \
    2>&1 | tee "$OUT/cuda_tests.log"
python3 benchmarks/bench_gpu.py --frames "${FRAMES:-16384}" --data "${DATA:-data/gpu_bench}" \
    --out "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
