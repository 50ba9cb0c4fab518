"""LightNet against the softmax-attention models it replaces, side by side in one run: throughput, scaling, memory.

    python benchmarks/models.py                  # all three families (about 12 min on an idle 2-core CPU)
    python benchmarks/models.py --only mixer --sizes 16 32 64 128 --repeats 7
    python benchmarks/models.py --quick          # smoke test: tiny sizes, one timed call
    python benchmarks/models.py --device cuda --bf16 --compile blocks --modes train --only denoiser \
        --pairs lightnet_dit_s_2 lightnet_dit_xl_2 --sizes 32   # what benchmarks/gpu_check.sh runs, among others
    make bench                                   # installs the `bench` extra (timm, matplotlib), then runs this

| family     | LightNet (arXiv 2405.21022)   | peer                                               | size: side of   |
|------------|-------------------------------|----------------------------------------------------|-----------------|
| classifier | lightnet_tiny, lightnet_small | timm deit_tiny_patch16_224, deit_small_patch16_224 | image, 224..896 |
| denoiser   | lightnet_dit_s_2              | diffusers DiTTransformer2DModel as DiT-S/2         | latent, 32..128 |
|            | lightnet_dit_xl_2 (`--pairs`) | diffusers DiTTransformer2DModel as DiT-XL/2        |                 |
| mixer      | LightNetAttention + MD-LRPE   | qkv Linear, scaled_dot_product_attention, proj     | grid, 16..128   |

The mixers come at the widths of the tiny and small classifiers (192 with 3 heads, 384 with 6); the denoisers
predict 4 channels (no learned variance) for 1000 classes. The XL pair (28 layers, 1152 wide, 16 heads: about 675M
parameters a side) runs only when `--pairs` names it, so that the default CPU run stays as it was; `--pairs` takes
LightNet names and keeps only their pairs (e.g. `--pairs lightnet_tiny lightnet_dit_xl_2`).

Mode `train` is one optimiser step of a model (forward, cross-entropy against the labels or MSE against the noise,
backward, AdamW) and forward + backward of a mixer (a fixed upstream gradient, no optimiser); mode `inference` is a
forward in eval mode under `torch.no_grad()`; `--modes` runs one of them only. Throughput is images/s for the models
and tokens/s for the mixers; every ratio is LightNet / peer (throughput above 1: LightNet is faster; memory below 1:
LightNet needs less).

`--compile` compiles both sides the same way with torch.compile's default options, in place (`nn.Module.compile`)
and then times them compiled: `--compile model` (or `--compile` alone) the whole model, as the tasks' `compile: true`
does; `--compile blocks` each block of the model's stack of identical blocks (its ModuleList or Sequential of them;
a model without one, such as a mixer, whole). Identical blocks share one compiled graph, so compiling takes about as
long for 28 blocks as for one: this is the scope that fits a 28-layer DiT-XL/2 into a short GPU check. Every pair is
compiled afresh (`torch._dynamo.reset()` before it, so that no cache limit sends a model back to eager unseen); the
first call of each side and mode compiles and is recorded as `*_compile_s`, outside the timing. A side whose
compilation (or any later call) raises is recorded as skipped with the reason, never a crash, and is not run at the
larger sizes.

Timing: both sides get the same input tensors (seeded), the same dtype (fp32; `--bf16` autocasts the forward to
bf16 on CUDA) and the same number of threads (`torch.set_num_threads`, recorded). Calls alternate A B A B, so a
disturbance of the machine hits both sides alike; warm-up rounds are not timed and the result is the median of the
timed calls. When the first call of either side takes over 2 s, the pair gets one warm-up round and at most 3 timed
rounds. A side that runs out of memory or whose call takes longer than `--max-seconds` is recorded as skipped with
the reason, and is not run at the larger sizes of the family.

Peak memory (mode `train`) is what a step needs above what is resident before it (weights, inputs, AdamW's state):
activations kept for backward, gradients, workspace. On CUDA the timed step itself is run once more after the timing,
then measured on the next step: `max_memory_allocated()` after `reset_peak_memory_stats()`, minus
`memory_allocated()` before the step (the other side's weights are resident too, which the difference leaves out).
On CPU a side is built from scratch (and compiled, with `--compile`), run for one step (which creates the
optimiser state and pages in the code), then measured on a second step. Tracemalloc does not see torch's allocator,
so each CPU measurement runs in a fresh process (memory another model freed cannot be reused unseen): after the
warm-up step, `malloc_trim(0)` returns the free heap to the system, the kernel's peak-RSS counter is reset
(`5 > /proc/self/clear_refs`, Linux only), and the result is the peak RSS during the step (`VmHWM`) minus the RSS
before it (`VmRSS`). That counts what the process really holds, allocator fragmentation and oneDNN buffers included.

Saved bytes (mode `train`, columns `*_saved_mib`, "sav" in the table): what the backward keeps, per sample
(image, or sequence of a mixer), counted after one forward of the train step with
`torch.autograd.graph.saved_tensors_hooks` as the distinct storages of the tensors autograd saves, parameters and
buffers left out (benchmarks/saved_bytes.py; `python benchmarks/saved_bytes.py` breaks one block down by op). It
is a property of the model, not of the device or the allocator, and holds compiled too (what the compiled graph
saves). It is not counted under gradient checkpointing, whose regions keep their inputs under hooks of their own.

`--grad-checkpointing` gives both sides their own checkpointing of their blocks: LightNet's and timm's
`set_grad_checkpointing`, diffusers' `enable_gradient_checkpointing` (not the mixers, which have no blocks).

On CUDA, models are built on the GPU (on the CPU if that fails) and the default batch holds 8 times as many
tokens as on the CPU (classifier: 64 images at 224², 16 at 448², 4 at 896²), enough to keep the GPU busy.

Output: a table, a CSV (`--out`, default benchmarks/results/models.csv; its `#` lines record the machine, threads,
versions, device, dtype, compilation, command and date; rewritten after every row, so a run that is stopped keeps
what it measured) and a log-log plot of throughput against size beside it (`.png`, at the end).

Files: this one is the command line and the run (families, sizes, pairs in order; rows to the CSV as they come);
benchmarks/peers.py the catalogue (the pairs, their sizes and batches, how each side is built and fed);
benchmarks/harness.py the measurement (compilation, interleaved timing, peak memory, one row per pair and mode);
benchmarks/report.py the output (run description, printed table, CSV, plot).
"""

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch

if not __package__:  # run as a script (`python benchmarks/models.py`): `benchmarks.*` lives in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (
    COMPILE_SCOPES,
    MODES,
    Settings,
    build_on_device,
    measure_pair,
)
from benchmarks.peers import (
    ALL_PAIRS,
    FAMILIES,
    GRAD_CHECKPOINTING,
    PAIRS,
    QUICK_BATCH_SIZE,
    QUICK_SIZES,
    SIZES,
    default_batch_size,
    make_inputs,
    select_pairs,
)
from benchmarks.report import HEADER, describe_run, draw_plot, format_row, write_csv


def run_family(
    family: str,
    sizes: list[int],
    batch_size: int | None,
    settings: Settings,
    grad_checkpointing: bool = False,
    pairs: list[tuple[str, str]] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Every pair of a family (`pairs`, default `PAIRS[family]`) at every size, in each mode of the settings; sizes in
    increasing order. `on_row` is called with each row as soon as it is measured."""
    rows = []
    skipped_before: dict[tuple[str, str], str] = {}
    for size in sorted(sizes):
        batch = batch_size or default_batch_size(family, size, settings.device)
        for lightnet, peer in PAIRS[family] if pairs is None else pairs:
            if grad_checkpointing and family != "mixer":
                lightnet, peer = lightnet + GRAD_CHECKPOINTING, peer + GRAD_CHECKPOINTING
            if settings.compile:
                torch._dynamo.reset()  # fresh caches for every pair: no recompile limit is ever reached
            inputs = make_inputs(family, size, batch, settings.device, lightnet)
            device, compile = settings.device, settings.compile
            models = {name: build_on_device(family, name, size, device, compile) for name in (lightnet, peer)}
            for mode in settings.modes:
                row = measure_pair(family, mode, size, batch, models, inputs, settings, skipped_before)
                print(format_row(row), flush=True)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
            del models, inputs
            if settings.device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def parse_batch_sizes(values: list[str]) -> dict[str, int]:
    """`classifier=4 mixer=1` → {"classifier": 4, "mixer": 1}."""
    batch_sizes = {}
    for value in values:
        family, _, number = value.partition("=")
        if family not in FAMILIES or not number.isdigit() or int(number) < 1:
            raise SystemExit(f"--batch-size takes FAMILY=N with FAMILY one of {', '.join(FAMILIES)}; got {value!r}")
        batch_sizes[family] = int(number)
    return batch_sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="families to run")
    parser.add_argument("--sizes", type=int, nargs="+", help="sides to run (with a single --only family)")
    lightnet_names = [lightnet for family in FAMILIES for lightnet, _ in ALL_PAIRS[family]]
    parser.add_argument(
        "--pairs",
        nargs="+",
        choices=lightnet_names,
        metavar="LIGHTNET",
        help=f"only the pairs of these LightNet models, XL included ({', '.join(lightnet_names)})",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to run")
    parser.add_argument(
        "--batch-size",
        nargs="+",
        default=[],
        metavar="FAMILY=N",
        help="one batch size for every size of a family (default: about a fixed token count)",
    )
    parser.add_argument("--repeats", type=int, help="timed rounds (default 5; 1 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 2; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--bf16", action="store_true", help="autocast the forward to bf16 (CUDA)")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="model",
        default="",
        choices=list(COMPILE_SCOPES),
        help="torch.compile both sides: the whole model (default) or each repeated block",
    )
    parser.add_argument("--max-seconds", type=float, default=120.0, help="skip a side whose call takes longer")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="both sides recompute their blocks in the backward, each with its own checkpointing",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, batch 2, one timed round: a smoke test")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/models.csv"), help="CSV; PNG beside")
    args = parser.parse_args(argv)
    if args.sizes and len(args.only) != 1:
        parser.error("--sizes needs exactly one family in --only")
    if args.bf16 and not args.device.startswith("cuda"):
        parser.error("--bf16 is for CUDA; CPU runs are fp32")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/models.py", *(sys.argv[1:] if argv is None else argv)])
    default_repeats, default_warmup = (1, 1) if args.quick else (5, 2)
    settings = Settings(
        device=args.device,
        bf16=args.bf16,
        threads=args.threads,
        repeats=default_repeats if args.repeats is None else args.repeats,
        warmup=default_warmup if args.warmup is None else args.warmup,
        max_seconds=args.max_seconds,
        measure_memory=not args.no_memory,
        compile=args.compile,
        modes=tuple(mode for mode in MODES if mode in args.modes),
    )
    torch.set_num_threads(settings.threads)
    batch_sizes = parse_batch_sizes(args.batch_size)
    pairs = select_pairs(args.only, args.pairs)
    description = describe_run(settings, command)
    for key, value in description.items():
        print(f"{key}: {value}")
    print(HEADER, flush=True)

    rows = []

    def keep(row: dict) -> None:
        rows.append(row)
        write_csv(rows, description, args.out)  # after every row: a stopped run keeps what it measured

    for family in args.only:
        sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)[family]
        batch_size = batch_sizes.get(family, QUICK_BATCH_SIZE if args.quick else None)
        run_family(family, sizes, batch_size, settings, args.grad_checkpointing, pairs[family], keep)
    if not rows:
        raise SystemExit("no pair was measured")
    plot_path = args.out.with_suffix(".png")
    draw_plot(rows, plot_path, f"{description['device']}, {description['threads']} threads, {description['dtype']}")
    print(f"wrote {args.out} and {plot_path}")
    return rows


if __name__ == "__main__":
    main()
