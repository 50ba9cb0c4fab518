#!/usr/bin/env bash
# The prepared run for a machine with one CUDA GPU, sized to finish in under 8 minutes on an H200, and its dry run:
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repository root (python3: torch, triton)
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere, CPU only: lists every step, skips the CUDA ones, exits 0
#
# Steps, in this order; each runs under `timeout` with its own budget in seconds, and each is recorded (status,
# seconds) whatever happens to the others:
#   step                        budget  what
#   info                            60  nvidia-smi, Python and package versions (also in the dry run)
#   wheels                          60  the wheels in .whl/ installed into /tmp/site, put on PYTHONPATH (below)
#   kernel_tests                   120  python3 -m pytest tests/kernels on CUDA, real kernels; -n 8 with pytest-xdist
#                                       (most of the time is Triton compiling); tests/kernels/test_kernels_compile.py,
#                                       a report compiled on the CPU, is left to CI
#   kernel_bench                    45  benchmarks/kernels.py: Triton vs the PyTorch path vs softmax attention (SDPA),
#                                       N 1k..64k, bf16, both MD-LRPE forms (cosine, rotary)
#   models_eager_classifier         50  benchmarks/models.py --bf16 --modes train, eager: train-step throughput and peak
#                                       memory of lightnet_tiny/small vs timm DeiT-Ti/S at 224, 448, 896 (`make bench`)
#   models_eager_denoiser           60  the same for lightnet_dit_s_2/xl_2 vs diffusers DiT-S/2, DiT-XL/2 at 32, 64, 128
#   models_compiled_classifier      60  the same with --compile blocks, classifier at 224
#   models_compiled_denoiser        75  the same with --compile blocks, denoiser at 32; regional compilation: a model's
#                                       identical blocks share one compiled graph, so the 28 blocks of XL/2 compile
#                                       about as fast as one (the tasks' whole-model compile runs in the fit check)
#   fit_check                      100  benchmarks/gpu_fit_check.py: 200 bf16-mixed steps of the digits config with
#                                       impl="auto" (Triton) and impl="torch", loss curves compared; then compiled
# A deadline (GPU_CHECK_SECONDS, default 455 s from the start) caps every budget, and the steps before the fit check
# keep its budget free for it, so the whole ends before 8 minutes; a step left with under 15 s is skipped ("out of
# time"). After every step benchmarks/gpu_report.py rewrites the summary and the results are copied to $OUT (when
# set), so a run stopped from outside still brings back what it measured.
#
# Results (in RESULTS, default benchmarks/results; a new temporary folder with --dry-run): gpu_check.md (the
# summary: machine, date, each step's status and time, the tables), gpu_check.log (all output),
# gpu_kernel_tests.txt, kernels.csv, models_gpu.csv (the rows of the four models_gpu_*.csv under a column `run`),
# gpu_fit_check.csv (the loss curves; the verdict in its `#` lines; .md beside it). These six go to $OUT (at most 8
# files come back).
#
# Packages the GPU machine lacks (diffusers, jsonargparse, albumentations, torchdata and what they need) travel as
# wheels in .whl/ (ignored by git: `echo /.whl/ >> .git/info/exclude`), pinned in benchmarks/gpu_wheels.txt.
# Download them where pip reaches the index, from the repository root:
#   grep -v '^#' benchmarks/gpu_wheels.txt | xargs python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl
# and carry .whl along with the run; the step `wheels` installs them with no index and no dependencies.
set -uo pipefail

DRY_RUN=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $arg; usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ "$DRY_RUN" = 1 ]; then RESULTS=${RESULTS:-$(mktemp -d)}; else RESULTS=${RESULTS:-benchmarks/results}; fi
mkdir -p "$RESULTS"
if [ "$DRY_RUN" = 0 ]; then  # what an earlier run left must not reach this run's summary
  rm -f "$RESULTS"/gpu.txt "$RESULTS"/gpu_kernel_tests.txt "$RESULTS"/kernels.csv "$RESULTS"/models_gpu*.csv \
    "$RESULTS"/gpu_fit_check.csv "$RESULTS"/gpu_fit_check.md
fi
DEADLINE=${GPU_CHECK_SECONDS:-455}
FIT_BUDGET=100
START=$SECONDS
OUT_FILES="gpu_check.md gpu_check.log gpu_kernel_tests.txt kernels.csv models_gpu.csv gpu_fit_check.csv"
: > "$RESULTS/gpu_steps.tsv"
exec > >(tee "$RESULTS/gpu_check.log") 2>&1

report() {
  $PYTHON benchmarks/gpu_report.py "$RESULTS" > /dev/null || echo "benchmarks/gpu_report.py failed"
  if [ -n "${OUT:-}" ]; then
    for file in $OUT_FILES; do if [ -f "$RESULTS/$file" ]; then cp "$RESULTS/$file" "$OUT/"; fi; done
  fi
}
trap report EXIT
trap 'exit 143' TERM INT  # stopped from outside: the EXIT trap still writes the summary and copies the results

record() {  # record NAME STATUS SECONDS BUDGET COMMAND...
  local name=$1 status=$2 seconds=$3 budget=$4
  shift 4
  echo "== step $name: $status (${seconds} s)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$budget" "$*" >> "$RESULTS/gpu_steps.tsv"
  report
}

# run_step NAME BUDGET RESERVE OUTPUT COMMAND...: COMMAND under `timeout`, with at most BUDGET seconds and RESERVE
# seconds kept free before the deadline; its output goes to the log and, unless OUTPUT is -, to the file OUTPUT.
run_step() {
  local name=$1 budget=$2 reserve=$3 output=$4 rc start=$SECONDS status
  shift 4
  local left=$((DEADLINE - (SECONDS - START) - reserve))
  if ((budget > left)); then budget=$((left > 0 ? left : 0)); fi
  echo
  echo "== step $name (at most ${budget} s): $*"
  if [ "$DRY_RUN" = 1 ]; then
    record "$name" "skipped (dry run: no CUDA)" 0 "$budget" "$@"
    return
  fi
  if ((budget < 15)); then
    record "$name" "skipped (out of time)" 0 "$budget" "$@"
    return
  fi
  if [ "$output" = - ]; then
    timeout -k 5 "$budget" "$@"
    rc=$?
  else
    timeout -k 5 "$budget" "$@" 2>&1 | tee "$output"
    rc=${PIPESTATUS[0]}
    printf '\nexit status: %s\n' "$rc" >> "$output"
  fi
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out after ${budget} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "$name" "$status" $((SECONDS - start)) "$budget" "$@"
}

BEFORE_FIT=$((FIT_BUDGET + 10))
MODELS=(benchmarks/models.py --device cuda --bf16 --modes train)

# info: in the dry run too (no CUDA asked for), as the CPU smoke of the Python found here.
echo "== step info: machine and versions"
start=$SECONDS
{
  if [ "$DRY_RUN" = 0 ]; then
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  fi
  timeout 30 "$PYTHON" -c "
import importlib.metadata as metadata, platform, sys
print('python', platform.python_version(), sys.executable, '| host', platform.node(), '|', platform.platform())
names = ('torch', 'triton', 'lightning', 'timm', 'diffusers', 'jsonargparse', 'albumentations', 'torchdata')
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return 'missing'
print(', '.join(f'{name} {version(name)}' for name in names))
"
  echo "date: $(date -Iseconds)"
} 2>&1 | tee "$RESULTS/gpu.txt"
record info ok $((SECONDS - start)) 60 nvidia-smi, versions

if [ "$DRY_RUN" = 0 ] && ! compgen -G ".whl/*.whl" > /dev/null; then
  record wheels "skipped (no .whl/ folder)" 0 60 pip install .whl/*.whl
else
  run_step wheels 60 "$BEFORE_FIT" - bash -c "$PYTHON -m pip install -q --no-index --no-deps --no-compile \
--no-cache-dir --upgrade --target /tmp/site .whl/*.whl"
  if [ "$DRY_RUN" = 0 ] && tail -n 1 "$RESULTS/gpu_steps.tsv" | grep -q $'\tok\t'; then
    export PYTHONPATH=/tmp/site:$PYTHONPATH
  fi
fi

PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider -rfE)
if "$PYTHON" -c "import xdist" 2> /dev/null; then PYTEST+=(-n 8); fi
if [ -f tests/kernels/test_kernels_compile.py ]; then PYTEST+=(--ignore=tests/kernels/test_kernels_compile.py); fi
run_step kernel_tests 120 "$BEFORE_FIT" "$RESULTS/gpu_kernel_tests.txt" "${PYTEST[@]}" tests/kernels

run_step kernel_bench 45 "$BEFORE_FIT" - "$PYTHON" benchmarks/kernels.py --repeats 10 --csv "$RESULTS/kernels.csv"

run_step models_eager_classifier 50 "$BEFORE_FIT" - "$PYTHON" "${MODELS[@]}" --only classifier \
  --out "$RESULTS/models_gpu_eager_classifier.csv"

run_step models_eager_denoiser 60 "$BEFORE_FIT" - "$PYTHON" "${MODELS[@]}" --only denoiser \
  --pairs lightnet_dit_s_2 lightnet_dit_xl_2 --out "$RESULTS/models_gpu_eager_denoiser.csv"

run_step models_compiled_classifier 60 "$BEFORE_FIT" - "$PYTHON" "${MODELS[@]}" --compile blocks --only classifier \
  --sizes 224 --out "$RESULTS/models_gpu_compiled_classifier.csv"

run_step models_compiled_denoiser 75 "$BEFORE_FIT" - "$PYTHON" "${MODELS[@]}" --compile blocks --only denoiser \
  --sizes 32 --pairs lightnet_dit_s_2 lightnet_dit_xl_2 --out "$RESULTS/models_gpu_compiled_denoiser.csv"

run_step fit_check "$FIT_BUDGET" 5 - "$PYTHON" benchmarks/gpu_fit_check.py --run-seconds 40 \
  --out "$RESULTS/gpu_fit_check.csv"

echo
echo "== done in $((SECONDS - START)) s; summary: $RESULTS/gpu_check.md"
cut -f 1-3 "$RESULTS/gpu_steps.tsv" | column -t -s $'\t' 2> /dev/null || cut -f 1-3 "$RESULTS/gpu_steps.tsv"
exit 0
