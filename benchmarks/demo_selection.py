"""Which checkpoint should `make demo` test? Three selection rules on the same fits, over three seeds.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/demo_selection.py            # about 15 min on a 2-core CPU

For each seed (`--seed_everything S`) the demo's config (configs/classification/digits.yaml) is fitted once, with one
more ModelCheckpoint added, and the test split is scored with the weights each rule picks from that one fit:

    best val/acc1   the first epoch with the highest validation top-1 (ModelCheckpoint monitor val/acc1, mode max)
    best val/loss   the epoch with the lowest validation loss (monitor val/loss, mode min)
    last (EMA)      the final weights, last.ckpt

The demo's validation split is 180 digits: top-1 reaches 100% within the first half of the run and stays there, and
ModelCheckpoint keeps the first epoch that reached it (a tie does not replace it), so `best val/acc1` picks an early,
under-trained model. Validation loss keeps moving after the accuracy saturates. With EMAWeightAveraging every
checkpoint's state_dict holds the EMA weights (lightnet_vision/demo.py), which validation also scores.

Writes `--out` (default benchmarks/results/demo_selection.csv; its `#` lines record machine, command and date) and
prints a markdown table: one row per rule, test top-1 per seed, min and mean. `--max_epochs` and `--limit_batches`
shorten the fits for a smoke run (tests/test_demo_selection.py).
"""

import argparse
import csv
import datetime
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import lightning
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from lightnet_vision.checkpoints import load_checkpoint  # noqa: E402 (after the path)
from lightnet_vision.cli import build_cli  # noqa: E402

DEMO_CONFIG = REPO_ROOT / "configs" / "classification" / "digits.yaml"
RULES = ("best val/acc1", "best val/loss", "last (EMA)")


def selection_config(base: Path, root_dir: Path) -> dict:
    """The demo's config with its run folder under `root_dir` and ModelCheckpoints for both val/acc1 and val/loss.

    The demo's own config may monitor either; the one it lacks is added, so every rule is read from the same fit.
    """
    config = yaml.safe_load(base.read_text())
    config["trainer"]["default_root_dir"] = str(root_dir)
    callbacks = config["trainer"]["callbacks"]
    monitored = {callback.get("init_args", {}).get("monitor") for callback in callbacks}
    extra = {
        "val/acc1": {"monitor": "val/acc1", "mode": "max", "filename": "acc-epoch{epoch:03d}-{val/acc1:.4f}"},
        "val/loss": {"monitor": "val/loss", "mode": "min", "filename": "loss-epoch{epoch:03d}-{val/loss:.4f}"},
    }
    for monitor, init_args in extra.items():
        if monitor not in monitored:
            init_args = {**init_args, "auto_insert_metric_name": False}
            callbacks.insert(0, {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": init_args})
    return config


def rule_checkpoints(callbacks: list) -> dict[str, str]:
    """The checkpoint path each rule picks, from the fitted trainer's ModelCheckpoint callbacks."""
    picked: dict[str, str] = {}
    for callback in callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.monitor == "val/acc1":
            picked["best val/acc1"] = callback.best_model_path
        elif callback.monitor == "val/loss":
            picked["best val/loss"] = callback.best_model_path
        if callback.save_last and callback.last_model_path:
            picked["last (EMA)"] = callback.last_model_path
    missing = [rule for rule in RULES if not picked.get(rule)]
    if missing:
        raise RuntimeError(f"no checkpoint for {missing}: the config lacks their ModelCheckpoint")
    return picked


def fit_and_score(seed: int, root_dir: Path, extra_args: list[str]) -> list[dict]:
    """One fit of the demo for `seed`; a row per rule: its test top-1, epoch and validation numbers."""
    root_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=root_dir, delete=False) as handle:
        yaml.safe_dump(selection_config(DEMO_CONFIG, root_dir), handle, sort_keys=False)
    argv = ["--config", handle.name, "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false"]
    cli = build_cli([*argv, *extra_args], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    rows = []
    for rule, path in rule_checkpoints(cli.trainer.callbacks).items():
        checkpoint = load_checkpoint(path)
        cli.model.load_state_dict(checkpoint["state_dict"])  # the EMA weights (see the module docstring)
        result = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        rows.append({
            "rule": rule,
            "seed": seed,
            "test_acc1": round(result["test/acc1"], 6),
            "epochs_trained": round(checkpoint["global_step"] / cli.trainer.num_training_batches, 2),
            "global_step": checkpoint["global_step"],
            "checkpoint": os.path.relpath(path, REPO_ROOT),
        })  # fmt: skip
    return sorted(rows, key=lambda row: RULES.index(row["rule"]))


def markdown_table(rows: list[dict], seeds: list[int]) -> str:
    """Rows = rules, columns = test top-1 per seed, then the min and the mean over the seeds."""
    lines = [
        "| rule | " + " | ".join(f"seed {seed}" for seed in seeds) + " | min | mean |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    for rule in RULES:
        scores = {row["seed"]: row["test_acc1"] for row in rows if row["rule"] == rule}
        if not scores:
            continue
        cells = [f"{scores[seed]:.2%} ({epochs_of(rows, rule, seed):g} ep)" for seed in seeds]
        values = list(scores.values())
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {min(values):.2%} | {sum(values) / len(values):.2%} |")
    return "\n".join(lines)


def epochs_of(rows: list[dict], rule: str, seed: int) -> float:
    """Epochs of training behind the weights `rule` picked for `seed`."""
    return next(row["epochs_trained"] for row in rows if row["rule"] == rule and row["seed"] == seed)


def describe_run(command: str, seconds: float) -> dict[str, str]:
    """The `#` header lines: date, command, machine, threads, versions and what else shared the machine."""
    from benchmarks.report import cpu_model

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "command": command,
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        "threads": f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
        "versions": f"torch {torch.__version__}, lightning {lightning.__version__}",
        "wall time": f"{seconds / 60:.1f} min for all fits (other jobs shared the machine; not a timing benchmark)",
        "test split": "270 digits (configs/classification/digits.yaml: test_fraction 0.15, split seed 0)",
        "rules": "; ".join(RULES) + " (one fit per seed; every checkpoint holds the EMA weights)",
    }


def write_csv(rows: list[dict], description: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        for key, value in description.items():
            handle.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "demo_selection.csv")
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs" / "demo_selection", help="run folders")
    parser.add_argument("--max_epochs", type=int, default=None, help="shorter fits (smoke runs)")
    parser.add_argument("--limit_batches", type=int, default=None, help="train/val/test batches per epoch (smoke)")
    args = parser.parse_args(argv)

    extra_args: list[str] = []
    if args.max_epochs is not None:
        extra_args += ["--trainer.max_epochs", str(args.max_epochs)]
    if args.limit_batches is not None:
        for split in ("train", "val", "test"):
            extra_args += [f"--trainer.limit_{split}_batches", str(args.limit_batches)]
    started = datetime.datetime.now(datetime.UTC)
    rows = [row for seed in args.seeds for row in fit_and_score(seed, args.runs / f"seed{seed}", extra_args)]
    seconds = (datetime.datetime.now(datetime.UTC) - started).total_seconds()

    command = "python benchmarks/demo_selection.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    write_csv(rows, describe_run(command, seconds), args.out)
    print(f"\ntest top-1 on the 270 test digits, by checkpoint rule (epochs trained in brackets); {args.out}")
    print(markdown_table(rows, args.seeds))
    return rows


if __name__ == "__main__":
    main()
