"""Resolution transfer, measured (issue 16, point 2): the digits classifiers trained at 32² run at other sizes.

    python benchmarks/resolution_transfer.py            # make quality-peers runs it after peers_quality.py
    python benchmarks/resolution_transfer.py --fast     # a smoke run (numbers meaningless)

The classifiers are those of benchmarks/peers_quality.py (LightNet and timm's DeiT, configs/classification/digits.yaml
and digits_deit.yaml, trained at 32², patch 8: a 4×4 grid): their checkpoints are read from
runs/peers_quality/checkpoints.json when it exists, else trained here the same way. Each is evaluated on the same
test digits resized to 24², 40², 48² and 64² (3×3 to 8×8 patches):

- **zero-shot**: the 32² weights as they are (the EMA weights of the checkpoint `make demo`
  tests; the fit's final EMA weights, last.ckpt, are tested at 32² too). LightNet's MD-TPE and MD-LRPE are relative
  and take any grid (docs/method.md); DeiT's learned position table is resampled to the new grid by timm
  (`dynamic_img_size`: bicubic interpolation of the 4×4 table);
- **fine-tuned**: then a few epochs (`--epochs`, default 5) at the new size with the same recipe (AdamW, weight decay,
  label smoothing, augmentation, drop path) at a tenth of the learning rate, cosine decay without warm-up, and
  without the EMA (at decay 0.995 an average over about a hundred steps would still hold more than half of the
  starting weights); the final weights are tested. DeiT starts from its table interpolated as above.

The denoisers (where cheap): the two of peers_quality.py (LightNet-DiT and diffusers' DiT, trained on 4×4 latents
of 16² digits) sample 20 digits per class on 4×4, 6×6 and 8×8 latents (16², 24², 32² images), scored as
`make demo-generate` scores (the samples are average-pooled to 8×8). LightNet-DiT takes any grid; diffusers'
rebuilds its sin-cos table for the new grid over the trained grid's extent. Zero-shot only: fine-tuning a denoiser
at a new size would need a first stage and data at that size. Skipped when peers_quality.py has not run
(`--no-denoisers` to skip always).

Writes benchmarks/results/resolution_transfer.csv (machine, command and date in its header lines) and prints a
markdown table.
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: `benchmarks.*` lives in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers_quality import (
    CHECKPOINTS,
    CLASSIFIERS,
    CONFIGS,
    DENOISERS,
    QUIET,
    REPO_ROOT,
    describe,
    shown,
    spawn,
    write_csv,
)

RUN_ROOT = Path("runs/resolution_transfer")
RESULTS = REPO_ROOT / "benchmarks" / "results" / "resolution_transfer.csv"
TRAINED_SIZE = 32
SIZES = (24, 40, 48, 64)
PATCH = 8
DENOISER_LATENT_SIDES = (4, 6, 8)  # the first stage downsamples by 4: 16², 24², 32² images
DENOISER_SAMPLES_PER_CLASS = 20
FAST_TRAINER = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
COLUMNS = ["family", "model", "size", "grid", "mode", "test_top1", "agreement", "precision", "recall", "variety", "s"]


def classifier_cli(name: str, size: int, epochs: int, fast: bool):
    """The CLI of `name`'s digits config at image side `size`, set up for fine-tuning: lr / 10, no warm-up, no EMA."""
    from lightning.pytorch.callbacks import WeightAveraging

    from lightnet_vision.cli import build_cli

    files = [arg for path in CONFIGS[name] for arg in ("--config", path)]
    lr = "--model.init_args.optimizer.init_args.lr"
    args = [
        *files,
        *("--data.init_args.image_size", str(size), "--trainer.max_epochs", str(epochs)),
        *("--trainer.default_root_dir", str(RUN_ROOT / f"{name}_{size}")),
        *(lr, "2.0e-4", "--model.init_args.lr_scheduler.init_args.warmup_epochs", "0"),
        *QUIET,
        *(FAST_TRAINER if fast else []),
    ]
    cli = build_cli(args, run=False)
    cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not isinstance(c, WeightAveraging)]
    return cli


def load_at_size(task, checkpoint: str, grid: int) -> None:
    """The trained weights into `task`, built for a `grid`×`grid` patch grid. A learned position table (DeiT's) is
    resampled to the grid as timm's `dynamic_img_size` does on the fly; LightNet has no table to resample."""
    from timm.layers import resample_abs_pos_embed

    from lightnet_vision.checkpoints import load_checkpoint

    state = load_checkpoint(checkpoint)["state_dict"]
    own = task.state_dict()
    for key, value in state.items():
        if key.endswith("pos_embed") and own[key].shape != value.shape:
            trained = TRAINED_SIZE // PATCH
            state[key] = resample_abs_pos_embed(value, new_size=(grid, grid), old_size=(trained, trained))
    task.load_state_dict(state)


def test_accuracy(task, datamodule) -> float:
    """Top-1 of `task` on the DataModule's test split (its images at the DataModule's size)."""
    import torch

    datamodule.setup("test")
    task.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in datamodule.test_dataloader():
            correct += int((task(images).argmax(-1) == labels).sum())
            total += len(labels)
    return correct / total


def classifier_rows(name: str, checkpoint: str, epochs: int, fast: bool) -> list[dict]:
    rows = []
    for size in (TRAINED_SIZE, *SIZES):
        grid = size // PATCH
        cli = classifier_cli(name, size, epochs, fast)
        load_at_size(cli.model, checkpoint, grid)
        base = {"family": "classifier", "model": name, "size": size, "grid": f"{grid}x{grid}"}
        rows.append(base | {"mode": "trained" if size == TRAINED_SIZE else "zero-shot"})
        rows[-1]["test_top1"] = test_accuracy(cli.model, cli.datamodule)
        if size == TRAINED_SIZE:
            # The fit's final EMA weights beside the selected checkpoint: how much the selection matters.
            last = Path(checkpoint).with_name("last.ckpt")
            if last.is_file():
                load_at_size(cli.model, str(last), grid)
                final = test_accuracy(cli.model, cli.datamodule)
                rows.append(base | {"mode": "trained, final weights (last.ckpt)", "test_top1": final})
            continue
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        seconds = time.perf_counter() - start
        tuned = test_accuracy(cli.model, cli.datamodule)
        rows.append(base | {"mode": f"fine-tuned {epochs} epochs", "test_top1": tuned, "s": seconds})
        print(f"{name} {size}²: zero-shot {rows[-2]['test_top1']:.2%}, fine-tuned {tuned:.2%}", flush=True)
    return rows


def denoiser_rows(name: str, checkpoint: str, first_stage: str, fast: bool) -> list[dict]:
    import torch

    from lightnet_vision.checkpoints import load_checkpoint
    from lightnet_vision.cli import build_cli
    from lightnet_vision.demo import score_digit_samples

    files = [arg for path in CONFIGS[name] for arg in ("--config", path)]
    args = [*files, "--model.init_args.first_stage", first_stage, "--trainer.default_root_dir", str(RUN_ROOT / name)]
    task = build_cli([*args, *QUIET], run=False).model
    task.load_state_dict(load_checkpoint(checkpoint)["state_dict"])  # the EMA weights
    task.eval()
    per_class = 2 if fast else DENOISER_SAMPLES_PER_CLASS
    labels = torch.arange(10).repeat_interleave(per_class)
    rows = []
    for side in DENOISER_LATENT_SIDES:
        channels, trained_side, _ = task.latent_shape()
        noise = torch.randn(len(labels), channels, side, side, generator=torch.Generator().manual_seed(0))
        images = task.generate(labels, noise=noise, generator=torch.Generator().manual_seed(1))
        size = images.shape[-1]
        mode = "trained" if side == trained_side else "zero-shot"
        scores = score_digit_samples(images, labels)
        rows.append({"family": "denoiser", "model": name, "size": size, "grid": f"{side}x{side} latent", "mode": mode})
        rows[-1] |= scores
        print(f"{name} {size}²: agreement {scores['agreement']:.1%}, recall {scores['recall']:.2f}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """Classifiers: top-1 per size, zero-shot and fine-tuned, LightNet beside DeiT; denoisers: agreement/recall."""
    lines = []
    classifier = [row for row in rows if row["family"] == "classifier"]
    if classifier:
        names = sorted({row["model"] for row in classifier}, key=list(CLASSIFIERS).index)
        header = " | ".join(f"{name} {mode}" for mode in ("zero-shot", "fine-tuned") for name in names)
        lines += [f"| size (grid) | {header} |", "|---" * (1 + 2 * len(names)) + "|"]
        for size in (TRAINED_SIZE, *SIZES):
            cells = []
            for mode in ("zero-shot", "fine-tuned"):
                for name in names:
                    found = [
                        r["test_top1"]
                        for r in classifier
                        if r["model"] == name
                        and r["size"] == size
                        and (r["mode"].startswith(mode) or (r["mode"] == "trained" and mode == "zero-shot"))
                        and "last.ckpt" not in r["mode"]
                    ]
                    cells.append(f"{found[0]:.2%}" if found else "")
            grid = size // PATCH
            lines.append(f"| {size}² ({grid}×{grid}) | " + " | ".join(cells) + " |")
        for r in classifier:
            if "last.ckpt" in r["mode"]:
                lines.append(f"\n{r['model']} at {r['size']}², {r['mode']}: {r['test_top1']:.2%}")
    denoiser = [row for row in rows if row["family"] == "denoiser"]
    if denoiser:
        lines += ["", "| denoiser | image (latent grid) | mode | agreement | precision | recall | variety |"]
        lines.append("|---|---|---|---|---|---|---|")
        for r in denoiser:
            scores = " | ".join(shown(r[key]) for key in ("agreement", "precision", "recall", "variety"))
            lines.append(f"| {r['model']} | {r['size']}² ({r['grid']}) | {r['mode']} | {scores} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs at each new size")
    parser.add_argument("--fast", action="store_true", help="a few steps per fit (a smoke run)")
    parser.add_argument("--no-denoisers", action="store_true", help="skip the denoisers")
    parser.add_argument("--output", type=Path, help="the CSV (default: benchmarks/results/resolution_transfer.csv)")
    args = parser.parse_args(argv)
    output = args.output or (RUN_ROOT / "fast.csv" if args.fast else RESULTS)
    command = shlex.join(["python", "benchmarks/resolution_transfer.py", *(argv if argv is not None else sys.argv[1:])])

    import torch

    torch.manual_seed(0)
    checkpoints = json.loads(CHECKPOINTS.read_text()) if CHECKPOINTS.is_file() else {}
    rows = []
    for name in CLASSIFIERS:
        if name not in checkpoints:
            print(f"no {name} checkpoint in {CHECKPOINTS}: training it as benchmarks/peers_quality.py does")
            CHECKPOINTS.parent.mkdir(parents=True, exist_ok=True)
            (trained,) = spawn(name, args.fast)
            checkpoints[name] = trained["checkpoint"]
        rows += classifier_rows(name, checkpoints[name], args.epochs, args.fast)
    if args.no_denoisers or not all(name in checkpoints for name in (*DENOISERS, "autoencoder")):
        print("denoisers skipped: run benchmarks/peers_quality.py first (or --no-denoisers was given)")
    else:
        for name in DENOISERS:
            rows += denoiser_rows(name, checkpoints[name], checkpoints["autoencoder"], args.fast)
    description = describe(command)
    for key in ("fit_s", "step_ms", "peak_rss_mib", "saved_kib_per_image"):
        del description[key]
    description["s"] = "wall time of one fine-tuning fit; other jobs may share the machine"
    description["quality"] = (
        "classifiers: top-1 on the 270 test digits resized to the size; denoisers: 200 samples (20 per class) "
        "scored by lightnet_vision.demo.score_digit_samples against the real training digits at the samples' size"
    )
    write_csv(rows, description, output, COLUMNS)
    print(f"\n{markdown(rows)}\n\nwritten: {output}")
    return rows


if __name__ == "__main__":
    main()
