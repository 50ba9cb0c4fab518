"""Write generated samples: the images a generator's `predict` returns, as PNG files and one `.npz`."""

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import Tensor


class SampleWriter(BasePredictionWriter):
    """Collects what `predict_step` returns (`labels [B]`, `indices [B]`, `images [B, H, W, C]` uint8), gathers it
    from every process, and writes `samples/<class>/<n>.png` and `samples.npz` (`arr_0`: `N×H×W×C` uint8 in index
    order, the layout of ADM's evaluation files, and `labels`) once at the end. Other predictions are left alone.

    Args:
        output_dir: Folder to write into; by default the run's log directory.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions, batch_indices) -> None:
        if any(not isinstance(batch, dict) or "images" not in batch for batch in predictions):
            return  # not generated samples
        # Every process takes part in the gather and in `log_dir` (both collective), also one given no samples.
        if predictions:
            keys = ("labels", "indices", "images")
            labels, indices, images = (torch.cat([batch[key] for batch in predictions]) for key in keys)
        else:
            labels, indices, images = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), None
        labels, indices, images = gather_uneven(pl_module, labels, indices, images)
        out = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero or images is None:
            return
        order = torch.argsort(indices)
        unique = torch.ones_like(order, dtype=torch.bool)
        unique[1:] = indices[order][1:] != indices[order][:-1]  # a sampler may repeat items
        order = order[unique]
        write_samples(out, images[order].cpu().numpy(), labels[order].cpu().numpy())
        print(f"wrote {len(order)} samples to {out / 'samples'} and {out / 'samples.npz'}")


def gather_uneven(
    task: LightningModule, labels: Tensor, indices: Tensor, images: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Every process's `(labels [n], indices [n], images [n, H, W, C])`, concatenated, on every process.

    Lightning's predict sampler does not pad, so processes hold different numbers of samples (a process may hold
    none: `images` None). Each process pads its share to the largest before the gather and the padding is dropped
    after it. One process: the arguments as they are.
    """
    if task.trainer.world_size == 1:
        return labels, indices, images
    device = task.device
    count = labels.shape[0]
    shape = torch.tensor([count, *(images.shape[1:] if images is not None else (0, 0, 0))], device=device)
    shapes = task.all_gather(shape)  # [world, 4]
    most, image_shape = int(shapes[:, 0].max()), shapes[:, 1:].max(dim=0).values.tolist()
    if most == 0:
        return labels, indices, None
    if images is None:
        images = torch.zeros(0, *image_shape, dtype=torch.uint8)

    def padded(x: Tensor) -> Tensor:
        return torch.cat([x, x.new_zeros(most - count, *x.shape[1:])]).to(device)

    gathered = task.all_gather({"labels": padded(labels), "indices": padded(indices), "images": padded(images)})
    counts = shapes[:, 0].tolist()
    return tuple(
        torch.cat([part[:n] for part, n in zip(gathered[key], counts, strict=True)])  # [sum of counts, ...]
        for key in ("labels", "indices", "images")
    )


def write_samples(out: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """`out/samples/<class>/<index>.png` and `out/samples.npz` with `arr_0` (`N×H×W×C` uint8) and `labels`."""
    counters: dict[int, int] = {}
    for image, label in zip(images, labels, strict=True):
        folder = out / "samples" / (str(int(label)) if label >= 0 else "unconditional")
        folder.mkdir(parents=True, exist_ok=True)
        index = counters.get(int(label), 0)
        counters[int(label)] = index + 1
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{index}.png")
    np.savez(out / "samples.npz", arr_0=images, labels=labels)
