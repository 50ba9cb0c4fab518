"""Position probes: can a classifier tell where things are? Tiny models, trained from scratch on two layout tasks.

    python benchmarks/position_probes.py                        # every encoding, 3 seeds (~5 min on a 2-core CPU)
    python benchmarks/position_probes.py --seeds 0 --steps 200  # quicker

| probe           | input                                                    | classes                              |
|-----------------|----------------------------------------------------------|--------------------------------------|
| bright_quadrant | 16×16 Gaussian noise, one quadrant brightened by +1      | which quadrant (4, chance 25%)       |
| digit_order     | a real 0 and a real 1 (scikit-learn digits), 16×32       | is the 0 on the left (2, chance 50%) |
| mirrored_pair   | such a pair, or that image with its patch grid mirrored  | mirrored or not (2, chance 50%)      |

The tasks are about layout: the content is the same whatever the label, only its place moves. With the paper's
encodings (MD-LRPE in its cosine form, symmetric MD-TPE) and mean pooling, mirroring the patch grid is an exact
symmetry of the classifier. The quadrant of bright_quadrant and the two classes of mirrored_pair are exact mirror
images of each other, so that model stays at chance on both; digit_order is not an exact mirror pair (the strokes
inside each patch do not flip), so distances between parts of the digits can decide it without telling left from
right. Every LightNet here has the
same size (width 32, 2 heads, 2 blocks, patch 4) and differs only in `lrpe` and `tpe`; a ViT of the same size with
learned absolute position embeddings and mean pooling (timm) is the reference. Each model trains with AdamW
(lr 2e-3, batch 64) on fresh samples every step and is scored on 512 held-out samples (digits the training never
saw, for digit_order). Output: a table of the mean (min–max) test accuracy over the seeds, and a CSV (`--out`).
"""

import argparse
import csv
import datetime
import itertools
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from lightnet_vision.models import LightNet

LRPE_CHOICES = ("rotary", "cosine", "none")
TPE_CHOICES = ("symmetric", "asymmetric", "none")
# A batch sampler: (batch size, generator, split) -> (images [B, 1, H, W], labels [B]).
Sampler = Callable[[int, torch.Generator, str], tuple[Tensor, Tensor]]


def bright_quadrant(batch: int, generator: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor]:
    """16×16 noise with one quadrant brightened; the label is the quadrant (0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right)."""
    images = torch.randn(batch, 1, 16, 16, generator=generator)
    labels = torch.randint(0, 4, (batch,), generator=generator)
    for index, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[index, :, 8 * row : 8 * row + 8, 8 * col : 8 * col + 8] += 1.0
    return images, labels


def _zeros_and_ones() -> dict[str, tuple[Tensor, Tensor]]:
    # The real 0s and 1s of scikit-learn's digits at 16×16 (nearest upsampling), in [0, 1]; the first 80% of each
    # digit for training, the rest held out.
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16)[:, None]  # [N, 1, 8, 8]
    images = F.interpolate(images, scale_factor=2, mode="nearest")  # [N, 1, 16, 16]
    target = torch.from_numpy(digits.target)
    splits = {}
    for split in ("train", "test"):
        pair = []
        for digit in (0, 1):
            chosen = images[target == digit]
            cut = int(0.8 * len(chosen))
            pair.append(chosen[:cut] if split == "train" else chosen[cut:])
        splits[split] = (pair[0], pair[1])
    return splits


_DIGITS: dict[str, tuple[Tensor, Tensor]] = {}


def digit_order(batch: int, generator: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor]:
    """A 0 and a 1 side by side (16×32); the label is 1 when the 0 is on the left."""
    if not _DIGITS:
        _DIGITS.update(_zeros_and_ones())
    zeros, ones = _DIGITS[split]
    zero = zeros[torch.randint(0, len(zeros), (batch,), generator=generator)]
    one = ones[torch.randint(0, len(ones), (batch,), generator=generator)]
    labels = torch.randint(0, 2, (batch,), generator=generator)
    left = torch.where(labels[:, None, None, None] == 1, zero, one)
    right = torch.where(labels[:, None, None, None] == 1, one, zero)
    images = torch.cat([left, right], dim=-1)  # [B, 1, 16, 32]
    return (images - 0.3) / 0.4, labels


def mirrored_pair(batch: int, generator: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor]:
    """A 0 and a 1 side by side (16×32, in either order), or that image with its grid of 4×4 patches mirrored left
    to right (label 1), each patch left as it is: the two classes differ by exactly the symmetry of the paper's
    encodings."""
    images, _ = digit_order(batch, generator, split)  # [B, 1, 16, 32], the order of the two digits at random
    labels = torch.randint(0, 2, (batch,), generator=generator)
    patches = images.reshape(batch, 1, 4, 4, 8, 4)  # [B, 1, rows, 4, columns, 4]
    mirrored = patches.flip(4).reshape(images.shape)
    return torch.where(labels[:, None, None, None] == 1, mirrored, images), labels


PROBES: dict[str, tuple[Sampler, int, tuple[int, int]]] = {
    "bright_quadrant": (bright_quadrant, 4, (16, 16)),
    "digit_order": (digit_order, 2, (16, 32)),
    "mirrored_pair": (mirrored_pair, 2, (16, 32)),
}


def tiny_lightnet(num_classes: int, **encodings: str) -> LightNet:
    """The probe-sized LightNet: width 32, 2 heads, 2 blocks, patch 4, one input channel; `lrpe` and `tpe` as given
    (else the classifier's defaults)."""
    return LightNet(
        img_size=16,
        patch_size=4,
        in_chans=1,
        num_classes=num_classes,
        embed_dim=32,
        depth=2,
        num_heads=2,
        **encodings,
    )


def tiny_vit(num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """The reference: a ViT of the same size with learned absolute position embeddings and mean pooling."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=image_size,
        patch_size=4,
        in_chans=1,
        num_classes=num_classes,
        embed_dim=32,
        depth=2,
        num_heads=2,
        class_token=False,
        global_pool="avg",
    )


def train_probe(model: nn.Module, sampler: Sampler, steps: int, seed: int, batch_size: int = 64) -> float:
    """Trains `model` for `steps` AdamW steps on fresh samples and returns its accuracy on 512 held-out samples."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        images, labels = sampler(batch_size, generator, "train")
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    images, labels = sampler(512, torch.Generator().manual_seed(10_000 + seed), "test")
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(dim=-1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--probes", nargs="+", choices=list(PROBES), default=list(PROBES))
    parser.add_argument("--no-vit", action="store_true", help="skip the ViT reference (needs timm)")
    parser.add_argument("--out", default="benchmarks/results/position_probes.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)

    choices = itertools.product(LRPE_CHOICES, TPE_CHOICES)
    models = [(f"lightnet lrpe={lrpe} tpe={tpe}", lrpe, tpe) for lrpe, tpe in choices]
    if not args.no_vit:
        models.append(("vit (learned absolute positions)", None, None))
    rows = []
    start = time.perf_counter()
    probes = {name: PROBES[name] for name in args.probes}
    for (name, lrpe, tpe), (probe, (sampler, num_classes, size)) in itertools.product(models, probes.items()):
        scores = []
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = tiny_vit(num_classes, size) if lrpe is None else tiny_lightnet(num_classes, lrpe=lrpe, tpe=tpe)
            scores.append(train_probe(model, sampler, args.steps, seed))
        rows.append({"model": name, "probe": probe, "mean": sum(scores) / len(scores), "scores": scores})
        print(f"{name:34} {probe:16} {rows[-1]['mean']:.1%}  ({' '.join(f'{s:.1%}' for s in scores)})", flush=True)

    print(f"\n{len(args.seeds)} seeds, {args.steps} steps each, {time.perf_counter() - start:.0f} s in all\n")
    print("| model | " + " | ".join(probes) + " |")
    print("|---|" + "---|" * len(probes))
    for name, *_ in models:
        cells = []
        for probe in probes:
            row = next(r for r in rows if r["model"] == name and r["probe"] == probe)
            cells.append(f"{row['mean']:.1%} ({min(row['scores']):.0%}–{max(row['scores']):.0%})")
        print(f"| {name} | " + " | ".join(cells) + " |")

    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        handle.write(f"# {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, ")
        handle.write(f"{datetime.date.today()}, --steps {args.steps} --seeds {' '.join(map(str, args.seeds))}\n")
        writer = csv.writer(handle)
        writer.writerow(["model", "probe", "mean_accuracy", *[f"seed{s}" for s in args.seeds]])
        for row in rows:
            writer.writerow([row["model"], row["probe"], round(row["mean"], 4), *[round(s, 4) for s in row["scores"]]])
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
