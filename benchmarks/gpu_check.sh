#!/usr/bin/env bash
# One prepared run for a machine with a CUDA GPU: the kernel tests on CUDA (real kernels, not the interpreter), then
# the kernel benchmark. It uses the Python found there (torch, triton and pytest installed; nothing is downloaded).
# Results land in benchmarks/results/, and are copied to $OUT when that is set.
#   bash benchmarks/gpu_check.sh        (a few minutes on an H200)
set -euo pipefail
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p benchmarks/results
copy_results() { if [ -n "${OUT:-}" ]; then cp benchmarks/results/gpu* benchmarks/results/kernels.* "$OUT"/ 2>/dev/null || true; fi; }
trap copy_results EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee benchmarks/results/gpu.txt
# A failing or slow test must not cost the benchmark: the tests get at most 4 minutes and their status is recorded.
set +e
timeout 240 $PYTHON -m pytest -q -p no:cacheprovider -rfE tests/kernels > benchmarks/results/gpu_kernel_tests.txt 2>&1
echo "pytest exit status: $?" >> benchmarks/results/gpu_kernel_tests.txt
set -e
tail -n 40 benchmarks/results/gpu_kernel_tests.txt
PYTHONUNBUFFERED=1 $PYTHON benchmarks/kernels.py --csv benchmarks/results/kernels.csv | tee benchmarks/results/kernels.txt
