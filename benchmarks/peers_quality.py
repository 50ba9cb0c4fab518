"""LightNet against its softmax-attention peers in the same pipeline, on the digits quickstarts (issue 16, point 3).

    python benchmarks/peers_quality.py            # make quality-peers: about 15 minutes on a 2-core CPU
    python benchmarks/peers_quality.py --fast     # a smoke run of a few steps (numbers meaningless)

The same command, data, recipe, seed and budget for both sides of each pair; only the backbone's config differs:

- classifiers: configs/classification/digits.yaml (LightNet) and the same composed with digits_deit.yaml (timm's
  VisionTransformer at the same patch, width, depth and heads). Quality: test top-1 of the checkpoint `make demo`
  tests (the best checkpoint by the config's monitored metric, its EMA weights; `classify()` in
  lightnet_vision/demo.py).
- denoisers: configs/diffusion/digits.yaml (LightNet-DiT) and the same composed with digits_dit.yaml (diffusers'
  DiT through lightnet_vision.models.DiffusersDiT), both on one autoencoder fitted once by
  configs/autoencoder/digits.yaml. Quality: 500 samples (50 per class, the seeds of `make demo-generate`) scored by
  `lightnet_vision.demo.score_digit_samples` (judge agreement, improved precision and recall, in-class variety
  against the real training digits). Two reference rows give the metrics' own scale: the real test digits, and
  their reconstructions through the autoencoder (the ceiling a denoiser in its latent space can reach).

Each fit runs in a fresh Python process, one after the other, so that its peak RSS is its own. Per model:
parameters; the fit's wall time (`trainer.fit` only); the peak RSS of the fitting process (mostly the libraries:
read the difference, not the ratio); and the bytes per image that the backward keeps in a training-mode forward of
one batch (benchmarks/saved_bytes.py: the activation memory that grows with the batch).

Writes benchmarks/results/peers_quality.csv (machine, command and date in its header lines), prints a markdown table,
and leaves the runs and checkpoints under runs/peers_quality/ (benchmarks/resolution_transfer.py reuses the
classifiers' from runs/peers_quality/checkpoints.json).
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as a script: `benchmarks.*` lives in the repository root
    sys.path.insert(0, str(REPO_ROOT))

RUN_ROOT = Path("runs/peers_quality")
CHECKPOINTS = RUN_ROOT / "checkpoints.json"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "peers_quality.csv"
CONFIGS = {
    "lightnet": ["configs/classification/digits.yaml"],
    "deit": ["configs/classification/digits.yaml", "configs/classification/digits_deit.yaml"],
    "autoencoder": ["configs/autoencoder/digits.yaml"],
    "lightnet_dit": ["configs/diffusion/digits.yaml"],
    "diffusers_dit": ["configs/diffusion/digits.yaml", "configs/diffusion/digits_dit.yaml"],
}
CLASSIFIERS = ("lightnet", "deit")
DENOISERS = ("lightnet_dit", "diffusers_dit")
SAMPLES_PER_CLASS = 50
ROUNDS, WARMUP = 15, 3  # training steps timed per model (alternating within each pair), after the warm-up
FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
COLUMNS = [
    "family",
    "model",
    "backbone",
    "params_m",
    "test_top1",
    "agreement",
    "precision",
    "recall",
    "variety",
    "fit_s",
    "step_ms",
    "peak_rss_mib",
    "saved_kib_per_image",
    "checkpoint",
]


def cli_args(name: str, fast: bool, extra: list[str] = ()) -> list[str]:
    """The command line of one fit: its config files, its own run folder, and `extra`."""
    files = [arg for path in CONFIGS[name] for arg in ("--config", path)]
    return [*files, "--trainer.default_root_dir", str(RUN_ROOT / name), *QUIET, *(FAST if fast else []), *extra]


def parameters_m(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def fit(cli) -> float:
    """Fits the CLI's model on its data; the wall time of the fit in seconds."""
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return time.perf_counter() - start


def saved_kib_per_image(model, forward, batch_size: int) -> float:
    """KiB per image the backward keeps in a training-mode forward of `batch_size` images (saved_bytes.py)."""
    from benchmarks.saved_bytes import model_saved_bytes

    model.train()
    return model_saved_bytes(model, forward) / batch_size / 1024


def run_classifier(name: str, fast: bool) -> dict:
    """Fits one digits classifier and tests the checkpoint `make demo` tests (lightnet_vision/demo.py)."""
    import torch

    from lightnet_vision.checkpoints import load_checkpoint
    from lightnet_vision.cli import build_cli

    cli = build_cli(cli_args(name, fast), run=False)
    fit_s = fit(cli)
    best = cli.trainer.checkpoint_callback.best_model_path  # the first ModelCheckpoint's: the one make demo tests
    cli.model.load_state_dict(load_checkpoint(best)["state_dict"])  # the EMA weights, as classify() loads them
    accuracy = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/acc1"]
    backbone = cli.model.model
    images = torch.randn(cli.datamodule.batch_size, 1, cli.datamodule.image_size, cli.datamodule.image_size)
    return {
        "family": "classifier",
        "model": name,
        "backbone": f"{type(backbone).__module__}.{type(backbone).__name__}",
        "params_m": parameters_m(backbone),
        "test_top1": accuracy,
        "monitor": cli.trainer.checkpoint_callback.monitor,
        "fit_s": fit_s,
        "saved_kib_per_image": saved_kib_per_image(backbone, lambda: backbone(images), len(images)),
        "checkpoint": best,
    }


def run_autoencoder(fast: bool) -> dict:
    from lightnet_vision.cli import build_cli

    cli = build_cli(cli_args("autoencoder", fast), run=False)
    fit_s = fit(cli)
    checkpoint = cli.trainer.checkpoint_callback.last_model_path
    return {"family": "autoencoder", "model": "autoencoder", "fit_s": fit_s, "checkpoint": checkpoint}


def generate_samples(task, samples_per_class: int):
    """`samples_per_class` images of every digit with the seeds of `make demo-generate`: (images, labels)."""
    import torch

    labels = torch.arange(10).repeat_interleave(samples_per_class)
    images = [
        task.generate(chunk.to(task.device), generator=torch.Generator().manual_seed(index))
        for index, chunk in enumerate(labels.split(100))
    ]
    return torch.cat(images).cpu(), labels


def run_denoiser(name: str, first_stage: str, fast: bool) -> dict:
    """Fits one denoiser on the shared autoencoder's latents and scores its samples as `make demo-generate` does."""
    import torch

    from lightnet_vision.cli import build_cli
    from lightnet_vision.demo import score_digit_samples

    cli = build_cli(cli_args(name, fast, ["--model.init_args.first_stage", first_stage]), run=False)
    fit_s = fit(cli)
    task = cli.model.eval()  # with EMAWeightAveraging, the EMA weights are in place after fit
    images, labels = generate_samples(task, 2 if fast else SAMPLES_PER_CLASS)
    scores = score_digit_samples(images, labels)
    denoiser = task.model
    batch = cli.datamodule.batch_size
    latents = torch.randn(batch, *task.latent_shape())
    steps, classes = torch.randint(0, 1000, (batch,)), torch.randint(0, 10, (batch,))
    return {
        "family": "denoiser",
        "model": name,
        "backbone": f"{type(denoiser).__module__}.{type(denoiser).__name__}",
        "params_m": parameters_m(denoiser),
        **scores,
        "fit_s": fit_s,
        "saved_kib_per_image": saved_kib_per_image(denoiser, lambda: denoiser(latents, steps, classes), batch),
        "checkpoint": cli.trainer.checkpoint_callback.last_model_path,
    }


def reference_rows(first_stage: str) -> list[dict]:
    """The metrics on the real test digits and on their reconstructions through the autoencoder."""
    import torch

    from lightnet_vision.demo import score_digit_samples
    from lightnet_vision.metrics.digits import real_digits
    from lightnet_vision.models import FirstStage

    images, labels = real_digits("test", image_size=16)
    autoencoder = FirstStage.load(first_stage).eval()
    with torch.no_grad():
        reconstructions = autoencoder.decode(autoencoder.encode(images)).clamp(-1, 1)
    return [
        {"family": "reference", "model": "real test digits", **score_digit_samples(images, labels)},
        {"family": "reference", "model": "autoencoder reconstructions", **score_digit_samples(reconstructions, labels)},
    ]


def training_loss_of(name: str, task, images, labels):
    """The loss of one training step of `name`'s backbone on `(images, labels)`, as its task computes it."""
    import torch.nn.functional as F

    backbone = task.model.train()
    if name in CLASSIFIERS:
        return lambda: F.cross_entropy(backbone(images), labels, label_smoothing=0.1)
    latents = task.first_stage.encode(images)
    return lambda: task.diffusion.training_loss(lambda x, t: backbone(x, t, labels), latents)


def step_times(first_stage: str, fast: bool) -> list[dict]:
    """Milliseconds per training step (forward, backward, AdamW) of each model on one batch of its data, the two
    sides of a pair alternating in one process (median of `ROUNDS` after `WARMUP`), so that whatever else runs on
    the machine slows both alike: the ratio to read, where the fits' wall times were taken minutes apart."""
    import torch

    from lightnet_vision.cli import build_cli

    rounds, warmup = (2, 1) if fast else (ROUNDS, WARMUP)
    rows = []
    for pair in (CLASSIFIERS, DENOISERS):
        steps = {}
        for name in pair:
            extra = ["--model.init_args.first_stage", first_stage] if name in DENOISERS else []
            cli = build_cli(cli_args(name, fast, extra), run=False)
            cli.datamodule.setup("fit")
            images, labels = next(iter(cli.datamodule.train_dataloader()))
            optimizer = torch.optim.AdamW(cli.model.model.parameters(), lr=1e-4)
            steps[name] = (training_loss_of(name, cli.model, images, labels), optimizer, [])
        for round_index in range(warmup + rounds):
            for loss_of, optimizer, times in steps.values():
                start = time.perf_counter()
                optimizer.zero_grad()
                loss_of().backward()
                optimizer.step()
                if round_index >= warmup:
                    times.append(time.perf_counter() - start)
        rows += [{"model": name, "step_ms": 1000 * sorted(t)[len(t) // 2]} for name, (_, _, t) in steps.items()]
    return rows


def run_job(job: str, fast: bool, first_stage: str | None) -> dict | list[dict]:
    if job == "step_times":
        return step_times(first_stage, fast)
    if job in CLASSIFIERS:
        return run_classifier(job, fast)
    if job == "autoencoder":
        return run_autoencoder(fast)
    if job == "reference":
        return reference_rows(first_stage)
    return run_denoiser(job, first_stage, fast)


def child(job: str, fast: bool, first_stage: str | None, result: Path) -> None:
    """One job in this (fresh) process; writes its row(s) with the process's peak RSS to `result`."""
    rows = run_job(job, fast, first_stage)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if isinstance(rows, dict):
        rows = [rows | {"peak_rss_mib": peak_mib}]
    result.write_text(json.dumps(rows))


def spawn(job: str, fast: bool, first_stage: str | None = None) -> list[dict]:
    """Runs `job` in a fresh process (the environment's thread settings carry over) and returns its rows."""
    result = RUN_ROOT / f"{job}.json"
    command = [sys.executable, __file__, "--job", job, "--result", str(result), *(["--fast"] if fast else [])]
    command += ["--first-stage", first_stage] if first_stage else []
    print(f"\n=== {job}: {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True)
    return json.loads(result.read_text())


def describe(command: str, monitor: str | None = None) -> dict[str, str]:
    from benchmarks.report import cpu_model

    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("torch", "timm", "diffusers", "lightning"))
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        "threads": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "versions": versions,
        "fit_s": "wall time of trainer.fit alone, one fit at a time, minutes apart; other jobs may share the machine",
        "step_ms": "median ms of one training step (forward, backward, AdamW) on one batch of the config's data, the "
        "two models of a pair alternating in one process: the ratio to read",
        "peak_rss_mib": "peak RSS of the fitting process (fresh per fit: libraries, data, model, optimiser, "
        "activations)",
        "saved_kib_per_image": "KiB per image the backward keeps in a training-mode forward of one batch "
        "(benchmarks/saved_bytes.py), without parameters",
        "quality": "classifiers: test top-1 of the EMA weights of the best checkpoint by the config's monitor "
        f"({monitor}); denoisers: 500 samples "
        "scored by lightnet_vision.demo.score_digit_samples against the real training digits",
    }


def write_csv(rows: list[dict], description: dict[str, str], path: Path, columns: list[str] = COLUMNS) -> None:
    """`rows` under `#`-prefixed description lines, one column per name in `columns`."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        for key, value in description.items():
            handle.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: shown(row.get(key)) for key in columns})


def shown(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    """The table of docs/peers.md: one line per model, the ratios LightNet / peer under each pair."""
    lines = [
        "| model | params (M) | test top-1 | agreement | precision | recall | variety | fit (s) | step (ms) "
        "| peak RSS (MiB) | saved KiB/image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_name = {row["model"]: row for row in rows}
    for row in rows:
        if row["family"] == "autoencoder":
            continue
        cells = [row["model"], row.get("params_m")]
        cells += [row.get(key) for key in ("test_top1", "agreement", "precision", "recall", "variety")]
        cells += [row.get(key) for key in ("fit_s", "step_ms", "peak_rss_mib", "saved_kib_per_image")]
        lines.append("| " + " | ".join(shown(cell) for cell in cells) + " |")
    for lightnet, peer in (("lightnet", "deit"), ("lightnet_dit", "diffusers_dit")):
        if lightnet in by_name and peer in by_name:
            ratios = [
                by_name[lightnet][key] / by_name[peer][key]
                for key in ("params_m", "fit_s", "step_ms", "peak_rss_mib", "saved_kib_per_image")
            ]
            cells = [f"{lightnet} / {peer}", ratios[0], *[None] * 5, *ratios[1:]]
            lines.append("| " + " | ".join(f"*{shown(cell)}*" if cell else "" for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="a few steps per fit (a smoke run)")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"the CSV to write (default: {RESULTS.relative_to(REPO_ROOT)}; with --fast, runs/peers_quality/fast.csv)",
    )
    parser.add_argument("--job", help=argparse.SUPPRESS)  # one fit, in the child process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--first-stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        child(args.job, args.fast, args.first_stage, args.result)
        return []

    output = args.output or (RUN_ROOT / "fast.csv" if args.fast else RESULTS)
    command = shlex.join(["python", "benchmarks/peers_quality.py", *(argv if argv is not None else sys.argv[1:])])
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    rows = [row for name in CLASSIFIERS for row in spawn(name, args.fast)]
    CHECKPOINTS.write_text(json.dumps({row["model"]: row["checkpoint"] for row in rows}, indent=1))
    (autoencoder,) = spawn("autoencoder", args.fast)
    first_stage = autoencoder["checkpoint"]
    rows += [row for name in DENOISERS for row in spawn(name, args.fast, first_stage)]
    times = {row["model"]: row["step_ms"] for row in spawn("step_times", args.fast, first_stage)}
    rows = [row | ({"step_ms": times[row["model"]]} if row["model"] in times else {}) for row in rows]
    rows += spawn("reference", args.fast, first_stage)
    rows.append(autoencoder)
    checkpoints = {row["model"]: row["checkpoint"] for row in rows if "checkpoint" in row}
    CHECKPOINTS.write_text(json.dumps(checkpoints, indent=1))
    write_csv(rows, describe(command, rows[0].get("monitor")), output)
    print(f"\n{markdown(rows)}\n\nwritten: {output}")
    return rows


if __name__ == "__main__":
    main()
