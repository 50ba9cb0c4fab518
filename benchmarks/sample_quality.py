"""What the generation quickstart's samples are worth beyond recognisability: agreement, precision, recall and
variety of its digits against the real ones, with the ceilings that bound them.

    python benchmarks/sample_quality.py                   # the newest `make demo-generate` run (trains one if none)
    python benchmarks/sample_quality.py --checkpoint PATH # a LatentDiffusion checkpoint of the digits

Rows: held-out real digits (the validation and test splits, what a perfect generator would score); the autoencoder's
reconstructions of them (the ceiling its latent space sets); the denoiser's 500 samples (50 per digit) at several
guidance scales and samplers, two sampling seeds each. Every row is scored against the real training digits by
`lightnet_vision.metrics.digits.score_digit_samples` (pixels pooled to 8×8, k = 3). Sampling and scoring take about
a minute on a 2-core CPU; training the quickstart when no run exists, about 6 minutes more.
"""

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root holds the `benchmarks` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import cpu_model
from lightnet_vision.metrics.digits import digits_judge, real_digits, score_digit_samples
from lightnet_vision.run_folder import newest_last_checkpoint
from lightnet_vision.tasks import LatentDiffusion

RUN_ROOT = "runs/diffusion_digits"
# (guidance scale, sampler, steps): the quickstart's setting (1.25, dpm++, 25) and what it was chosen among.
SETTINGS = [(1.0, "dpm++", 25), (1.25, "dpm++", 25), (1.5, "dpm++", 25), (2.0, "dpm++", 25), (1.25, "ddpm", 100)]
SEEDS = (0, 1)
KEYS = ("agreement", "precision", "recall", "variety")


def find_checkpoint(given: str | None) -> str:
    if given:
        return given
    found = newest_last_checkpoint(RUN_ROOT)
    if found is None:
        print(f"no run under {RUN_ROOT}: training the generation quickstart first (make demo-generate)", flush=True)
        subprocess.run([sys.executable, "-m", "lightnet_vision.demo", "generate"], check=True)
        found = newest_last_checkpoint(RUN_ROOT)
    return found


def sample(task: LatentDiffusion, guidance: float, sampler: str, steps: int, seed: int) -> tuple:
    labels = torch.arange(10).repeat_interleave(50)
    images = torch.cat([
        task.generate(chunk, generator=torch.Generator().manual_seed(1000 * seed + index), guidance_scale=guidance,
                      sampler=sampler, num_steps=steps)
        for index, chunk in enumerate(labels.split(100))
    ])  # fmt: skip
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help=f"a LatentDiffusion checkpoint (default: newest under {RUN_ROOT})")
    parser.add_argument("--out", default="benchmarks/results/sample_quality.csv")
    args = parser.parse_args()
    checkpoint = find_checkpoint(args.checkpoint)
    started = time.time()
    task = LatentDiffusion.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    side = task.data_info.image_size  # the side of the images the first stage was trained on
    reference, judge = real_digits("train", side), digits_judge()
    held_out = [real_digits(split, side) for split in ("val", "test")]
    real_images, real_labels = (torch.cat(parts) for parts in zip(*held_out, strict=True))

    rows = [
        {
            "source": "real digits (val + test)",
            "seed": "",
            **score_digit_samples(real_images, real_labels, reference, judge),
        }
    ]
    with torch.no_grad():
        reconstructions = task.first_stage.decode(task.first_stage.encode(real_images, sample=False)).clamp(-1, 1)
    rows.append({"source": "autoencoder reconstructions", "seed": "",
                 **score_digit_samples(reconstructions, real_labels, reference, judge)})  # fmt: skip
    for guidance, sampler, steps in SETTINGS:
        for seed in SEEDS:
            images, labels = sample(task, guidance, sampler, steps, seed)
            source = f"samples, guidance {guidance}, {sampler} {steps} steps"
            rows.append({"source": source, "seed": seed, **score_digit_samples(images, labels, reference, judge)})
            print(" ".join(f"{key} {rows[-1][key]:.3f}" for key in KEYS), "|", source, "seed", seed, flush=True)

    description = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        "checkpoint": checkpoint,
        "reference": f"{len(reference[1])} real training digits at {side}x{side}, pooled to 8x8; k = 3",
        "seconds": f"{time.time() - started:.0f} (sampling and scoring)",
    }
    write(rows, description, Path(args.out))
    print(table(rows))


def write(rows: list[dict], description: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        handle.writelines(f"# {key}: {value}\n" for key, value in description.items())
        writer = csv.DictWriter(handle, fieldnames=["source", "seed", *KEYS])
        writer.writeheader()
        writer.writerows({**row, **{key: f"{row[key]:.4f}" for key in KEYS}} for row in rows)


def table(rows: list[dict]) -> str:
    """Markdown: one line per source, seeds as min–max."""
    lines = ["| source | agreement | precision | recall | variety |", "|---|---|---|---|---|"]
    for source in dict.fromkeys(row["source"] for row in rows):
        group = [row for row in rows if row["source"] == source]
        cells = []
        for key in KEYS:
            low, high = min(row[key] for row in group), max(row[key] for row in group)
            fmt = (lambda v: f"{v:.1%}") if key == "agreement" else (lambda v: f"{v:.2f}")
            cells.append(fmt(low) if fmt(low) == fmt(high) else f"{fmt(low)}–{fmt(high)}")
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
