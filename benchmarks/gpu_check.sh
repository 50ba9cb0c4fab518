#!/usr/bin/env bash
# One prepared run for a machine with a CUDA GPU: the kernel tests on CUDA (real kernels, not the interpreter), then
# the kernel benchmark. It uses the Python found there (torch, triton and pytest installed; nothing is downloaded).
# Results land in benchmarks/results/, and are copied to $OUT when that is set.
#   bash benchmarks/gpu_check.sh        (a few minutes on an H200)
set -euo pipefail
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p benchmarks/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee benchmarks/results/gpu.txt
$PYTHON -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tail -n 20 | tee benchmarks/results/gpu_kernel_tests.txt
$PYTHON benchmarks/kernels.py --csv benchmarks/results/kernels.csv | tee benchmarks/results/kernels.txt
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/gpu.txt benchmarks/results/gpu_kernel_tests.txt benchmarks/results/kernels.* "$OUT"/
fi
