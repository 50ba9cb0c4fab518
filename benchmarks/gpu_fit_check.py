"""Do the Triton kernels train like the PyTorch path? The digits fit on CUDA with each, loss curve against loss curve.

    python benchmarks/gpu_fit_check.py                      # 200 bf16-mixed steps on CUDA: auto, torch, compiled
    python benchmarks/gpu_fit_check.py --device cpu --steps 5 --runs auto torch    # a CPU smoke run
    python benchmarks/gpu_fit_check.py --dry-run            # builds the first run's CLI on the CPU, fits nothing

Each run fits configs/classification/digits.yaml through the repo's CLI (`build_cli(argv, run=False)`, as
lightnet_vision/demo.py does) with the same seed, for `--steps` optimizer steps in `--precision` (default
bf16-mixed) on one device, and records the training loss of every step (a callback reading `outputs["loss"]`). The
config is copied into a temporary root with its checkpoint callbacks removed, no logger and no validation: the check
compares training losses only, and writes nothing outside that root and `--out`. The augmentation pipeline is seeded
too (`set_random_seed`: albumentations keeps a generator of its own), so every run sees the same batches. The runs:

| run           | additive attention                                   | backbone                                 |
|---------------|------------------------------------------------------|------------------------------------------|
| auto          | `impl="auto"`: the Triton kernels on CUDA            | eager                                    |
| torch         | `impl="torch"`: the PyTorch path                     | eager                                    |
| auto_compiled | `impl="auto"`                                        | `--model.init_args.compile true`         |

`impl="torch"` is forced by replacing the name `additive_attention` in lightnet_vision/layers/attention.py (where
every LightNet layer calls it) with `functools.partial(additive_attention, impl="torch")` for the run, then putting
it back. In the eager runs the calls that reach the Triton kernel (`noncausal_additive_attention`) are counted, so the
CSV shows that `auto` really ran Triton and `torch` did not. The compiled run sets inductor's `fallback_random`, so
that its drop-path masks are those of the eager runs.

Verdict, for each run against `torch`: the curves agree when both made all their steps with finite losses and
- the first 10 losses differ by at most 0.05 each (same weights, same batches: a wrong forward shows at step 1, a
  wrong gradient in the steps after it),
- the means of the last 20 losses differ by at most 10% (relative), and
- the 20-step moving averages never differ by more than 0.25 (nats).
Any difference in rounding grows along a fit, so the later criteria are sized on how far apart two sound runs drift:
on a CPU (torch path, 200 steps, seed 0), bf16-mixed against 32-true differ by at most 0.01 in the first 10 steps, by
3.1% in the last-20 mean and by 0.13 in the 10-step moving average; seed 0 against seed 1 (bf16-mixed) by 4.9% and
0.11 (20-step). The tolerances are about twice that.

`--run-seconds` stops each fit after that many seconds (Lightning's `max_time`, counted from the start of the fit,
compilation included): a run so stopped is judged on its first 10 steps alone (not at all with fewer), and a `torch`
run so stopped gives no verdict. benchmarks/gpu_check.sh gives each run 40 s, so that a slow compilation cannot take
the time of the others.

Writes the curves (`--out`, a CSV with `#` lines holding the runs and the verdict) and a markdown summary beside it
(`.md`), both after every run, so a stopped check keeps the runs it made.
"""

import argparse
import contextlib
import csv
import datetime
import functools
import math
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
import yaml
from lightning.pytorch import Callback

CONFIG = Path("configs/classification/digits.yaml")
# run name: (impl of additive_attention, compile the backbone)
RUNS = {"auto": ("auto", False), "torch": ("torch", False), "auto_compiled": ("auto", True)}
REFERENCE_RUN = "torch"
# Agreement of a run with the reference run (see the module docstring).
FIRST_STEPS = 10
MAX_FIRST_STEPS_DIFFERENCE = 0.05
LAST_STEPS = 20
MAX_RELATIVE_DIFFERENCE = 0.10
MOVING_AVERAGE_STEPS = 20
MAX_MOVING_AVERAGE_DIFFERENCE = 0.25


class LossRecorder(Callback):
    """The training loss of every batch, as a float."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


@dataclass
class Run:
    name: str
    impl: str
    compile: bool
    losses: list[float] = field(default_factory=list)
    wall_s: float | None = None
    triton_calls: int | None = None
    status: str = "not run"


@contextlib.contextmanager
def forced_impl(impl: str) -> Iterator[None]:
    """With impl "torch", every LightNet layer's `additive_attention` is the PyTorch path; "auto" changes nothing."""
    from lightnet_vision.layers import attention

    original = attention.additive_attention
    if impl != "auto":
        attention.additive_attention = functools.partial(original, impl=impl)
    try:
        yield
    finally:
        attention.additive_attention = original


@contextlib.contextmanager
def counted_triton_calls(run: Run) -> Iterator[None]:
    """Counts the calls that reach the non-causal Triton kernel into `run.triton_calls` (None without Triton)."""
    try:
        from lightnet_vision.kernels.additive import triton_noncausal
    except ImportError:
        yield
        return
    original = triton_noncausal.noncausal_additive_attention
    run.triton_calls = 0

    def counting(*args, **kwargs):
        run.triton_calls += 1
        return original(*args, **kwargs)

    # The PyTorch path imports the kernel from its module at every call, so it finds this wrapper.
    triton_noncausal.noncausal_additive_attention = counting
    try:
        yield
    finally:
        triton_noncausal.noncausal_additive_attention = original


def cli_args(root: Path, run: Run, args: argparse.Namespace) -> list[str]:
    """The config (without checkpoints or logger, in `root`) and the overrides of one run."""
    config = yaml.safe_load(CONFIG.read_text())
    trainer = config["trainer"]
    trainer["callbacks"] = [c for c in trainer.get("callbacks", []) if not c["class_path"].endswith("ModelCheckpoint")]
    trainer["logger"] = False
    trainer["default_root_dir"] = str(root / run.name)
    path = root / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return [
        "--config", str(path),
        "--seed_everything", str(args.seed),
        "--trainer.max_steps", str(args.steps),
        "--trainer.max_epochs", str(args.steps),  # at least one step an epoch: max_steps ends the fit
        "--trainer.precision", args.precision,
        "--trainer.accelerator", "gpu" if args.device == "cuda" else args.device,
        "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0",
        "--model.init_args.compile", str(run.compile).lower(),
        *(["--trainer.max_time", max_time(args.run_seconds)] if args.run_seconds else []),
    ]  # fmt: skip


def max_time(seconds: int) -> str:
    """Lightning's `DD:HH:MM:SS`."""
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"00:{hours:02d}:{minutes:02d}:{seconds:02d}"


def fit(root: Path, run: Run, args: argparse.Namespace) -> None:
    """One run; its losses, wall time, Triton calls and status are filled in, also when it fails."""
    from lightnet_vision.cli import build_cli

    if run.compile:
        torch._dynamo.reset()
        # Random ops (drop path) draw from the eager generator, as in the other runs, not from inductor's own.
        inductor_config.fallback_random = True
    recorder = LossRecorder()
    counter = contextlib.nullcontext() if run.compile else counted_triton_calls(run)
    start = time.perf_counter()
    try:
        cli = build_cli(cli_args(root, run, args), run=False)
        # albumentations draws from its own generator, seeded from the OS unless told, which seed_everything does
        # not reach: seeded here, so that every run sees the same augmented batches (the loader has no workers).
        cli.datamodule.train_transform.set_random_seed(args.seed)
        cli.trainer.callbacks.append(recorder)
        with forced_impl(run.impl), counter:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        run.status = "ok"
        if args.run_seconds and len(recorder.losses) < args.steps:  # Lightning's max_time ended the fit
            run.status = f"stopped by --run-seconds {args.run_seconds}"
    except (Exception, SystemExit) as error:  # recorded (a CLI error exits), and the next run still goes
        traceback.print_exc()
        run.status = f"failed ({type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:120]})"
    finally:
        run.wall_s = time.perf_counter() - start
        run.losses = recorder.losses


def moving_average(values: list[float], steps: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - steps + 1) : i + 1]) for i in range(len(values))]


def compare(run: Run, reference: Run, steps: int) -> dict:
    """How far `run`'s curve is from `reference`'s, and whether they agree (see the module docstring). A run stopped
    by `--run-seconds` is judged on its first steps alone, and not at all (`agree` None) with fewer than 10."""
    stopped = run.status.startswith("stopped")
    complete = len(reference.losses) == steps and (stopped or len(run.losses) == steps)
    finite = all(math.isfinite(loss) for loss in run.losses + reference.losses)
    result = {"complete": complete, "finite": finite}
    result["first_steps_difference"] = result["relative_difference"] = result["max_moving_difference"] = None
    if run.losses and reference.losses and finite:
        pairs = zip(run.losses[:FIRST_STEPS], reference.losses[:FIRST_STEPS], strict=False)
        result["first_steps_difference"] = max(abs(a - b) for a, b in pairs)
        if not stopped:
            last, last_reference = (statistics.fmean(r.losses[-LAST_STEPS:]) for r in (run, reference))
            result["relative_difference"] = abs(last - last_reference) / abs(last_reference)
            curves = (moving_average(r.losses, MOVING_AVERAGE_STEPS) for r in (run, reference))
            result["max_moving_difference"] = max(abs(a - b) for a, b in zip(*curves, strict=False))
    if stopped and finite and len(run.losses) < FIRST_STEPS:
        result["agree"] = None
        return result
    result["agree"] = bool(
        complete
        and finite
        and result["first_steps_difference"] is not None
        and result["first_steps_difference"] <= MAX_FIRST_STEPS_DIFFERENCE
        and (stopped or result["relative_difference"] <= MAX_RELATIVE_DIFFERENCE)
        and (stopped or result["max_moving_difference"] <= MAX_MOVING_AVERAGE_DIFFERENCE)
    )
    return result


def describe(args: argparse.Namespace, argv: list[str]) -> dict[str, str]:
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/gpu_fit_check.py", *argv]),
        "config": f"{CONFIG}, seed {args.seed}, {args.steps} steps, {args.precision}, no validation",
        "device": f"{args.device} ({device})",
        "versions": f"torch {torch.__version__}",
        "tolerance": f"first {FIRST_STEPS} losses within {MAX_FIRST_STEPS_DIFFERENCE}, last {LAST_STEPS} mean within "
        f"{MAX_RELATIVE_DIFFERENCE:.0%} relative, {MOVING_AVERAGE_STEPS}-step moving averages within "
        f"{MAX_MOVING_AVERAGE_DIFFERENCE}, all finite, all steps",
    }


def summary_rows(runs: list[Run], steps: int) -> list[dict]:
    reference = next((run for run in runs if run.name == REFERENCE_RUN and run.status == "ok"), None)
    rows = []
    for run in runs:
        row = {
            "run": run.name,
            "impl": run.impl,
            "compile": run.compile,
            "status": run.status,
            "steps": len(run.losses),
            "wall_s": None if run.wall_s is None else round(run.wall_s, 1),
            "triton_calls": run.triton_calls,
            "first_20_mean": round(statistics.fmean(run.losses[:LAST_STEPS]), 4) if run.losses else None,
            "last_20_mean": round(statistics.fmean(run.losses[-LAST_STEPS:]), 4) if run.losses else None,
        }
        if reference is not None and run is not reference and run.losses:
            comparison = compare(run, reference, steps)
            row["first_10_max_difference"] = comparison["first_steps_difference"]
            row["relative_difference"] = comparison["relative_difference"]
            row["max_moving_difference"] = comparison["max_moving_difference"]
            row["agrees_with_torch"] = comparison["agree"]
        rows.append(row)
    return rows


def verdict(rows: list[dict]) -> str:
    compared = [row for row in rows if row.get("agrees_with_torch") is not None]
    if not compared:
        return "no verdict: the torch run or the runs to compare with it did not finish"

    def label(row: dict) -> str:
        return row["run"] + (f" (first {row['steps']} steps)" if row["status"].startswith("stopped") else "")

    failed = [label(row) for row in compared if not row["agrees_with_torch"]]
    agreeing = ", ".join(label(row) for row in compared if row["agrees_with_torch"])
    if failed:
        return f"DISAGREE: {', '.join(failed)} against torch" + (f" (agree: {agreeing})" if agreeing else "")
    return f"agree: {agreeing} against torch"


def format_value(value: object, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "" if value is None else str(value)


def write_results(runs: list[Run], description: dict[str, str], steps: int, path: Path, cuda: bool) -> str:
    """The curves as a CSV (the runs and the verdict in its `#` lines) and a markdown summary beside it."""
    rows = summary_rows(runs, steps)
    result = verdict(rows)
    if cuda and any(run.name == "auto" and run.triton_calls == 0 for run in runs):
        result += "; WARNING: the auto run never reached the Triton kernel"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        for key, value in {**description, "verdict": result}.items():
            handle.write(f"# {key}: {value}\n")
        for row in rows:
            handle.write("# run " + ", ".join(f"{key}={format_value(value)}" for key, value in row.items()) + "\n")
        writer = csv.writer(handle)
        writer.writerow(["step", *(f"loss_{run.name}" for run in runs)])
        for step in range(max((len(run.losses) for run in runs), default=0)):
            losses = [format_value(run.losses[step], 7) if step < len(run.losses) else "" for run in runs]
            writer.writerow([step + 1, *losses])
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [
        f"**Fit check**: {result}",
        "",
        *(f"- {key}: {value}" for key, value in description.items()),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(format_value(row.get(column)) for column in columns) + " |" for row in rows),
    ]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="in this order")
    parser.add_argument(
        "--run-seconds", type=int, help="stop each fit after this long (Lightning's max_time); judged on its start"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_fit_check.csv"))
    parser.add_argument("--dry-run", action="store_true", help="build the first run's CLI on the CPU, fit nothing")
    args = parser.parse_args(argv)
    if args.steps < LAST_STEPS and not args.dry_run and args.device == "cuda":
        parser.error(f"--steps must be at least {LAST_STEPS} on CUDA (the verdict compares the last {LAST_STEPS})")
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    runs = [Run(name, *RUNS[name]) for name in args.runs]
    with tempfile.TemporaryDirectory(prefix="gpu_fit_check_") as root:
        if args.dry_run:
            args.device, args.precision = "cpu", "32-true"
            from lightnet_vision.cli import build_cli

            argv = cli_args(Path(root), runs[0], args)
            build_cli(argv, run=False)
            print("dry run: the CLI builds with", " ".join(argv[2:]))
            return "dry run"
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --device cpu (a smoke run) or --dry-run")
        description = describe(args, sys.argv[1:] if argv is None else argv)
        result = "no run finished"
        for run in runs:
            print(f"\n== run {run.name}: impl={run.impl}, compile={run.compile}", flush=True)
            fit(Path(root), run, args)
            print(f"== run {run.name}: {run.status}, {len(run.losses)} steps in {run.wall_s:.1f} s", flush=True)
            result = write_results(runs, description, args.steps, args.out, args.device == "cuda")
    print(f"\n{args.out.with_suffix('.md').read_text()}")
    print(f"verdict: {result}\nwrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
