"""Pre-encoded latents for latent diffusion: encode an image dataset once, then train from the cache.

A cache folder holds `index.json` (what was encoded and how), `stats.json` (per-channel mean and std of the
latents) and safetensors shards `<split>-<n>.safetensors` with `latents` `[n, C, h, w]` (fp16) and `labels` `[n]`.
Every image is stored twice, as is and flipped horizontally, as DiT does for ImageNet. Nothing in a cache is a
pickle: the shards are safetensors (raw tensor bytes after a JSON header) and the rest is JSON, so reading a cache
someone else made cannot run code.
"""

import json
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightnet_vision.datamodules.data_info import DataInfo
from lightnet_vision.datamodules.image_datamodule import ImageDataModule, ResumableRandomSampler, default_num_workers
from lightnet_vision.models.first_stage import FirstStage


def _write_shard(cache_dir: Path, name: str, latents: list[Tensor], labels: list[Tensor]) -> dict:
    # Writes the pending batches as one shard and empties the lists.
    file = f"{name}.safetensors"
    save_file({"latents": torch.cat(latents).half(), "labels": torch.cat(labels)}, str(cache_dir / file))
    size = sum(len(x) for x in labels)
    latents.clear()
    labels.clear()
    return {"file": file, "size": size}


@torch.no_grad()
def write_latent_cache(
    source: ImageDataModule,
    first_stage: FirstStage,
    cache_dir: str | Path,
    flips: bool = True,
    shard_size: int = 10_000,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    source_name: str = "",
) -> dict:
    """Encode the train and val splits of `source` (with its eval transform: no random augmentation) into shards."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    first_stage.to(device)
    source.setup("fit")
    index = {
        "num_classes": source.num_classes,
        "class_names": source.class_names,
        "image_size": source.image_size,
        "in_chans": source.in_chans,
        "first_stage": source_name,
        "latent_scale": first_stage.scale,
        "flips": flips,
        "splits": {},
    }
    total = sumsq = count = 0
    for split, dataset in (("train", source.train_set), ("val", source.val_set)):
        if dataset is None:
            continue
        if hasattr(dataset, "transform"):
            dataset.transform = source.eval_transform
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=source.num_workers)
        shards, latents, labels = [], [], []
        for images, targets in loader:
            views = [images, images.flip(-1)] if flips else [images]
            for view in views:
                encoded = first_stage.encode(view.to(device)).cpu()  # [B, C, h, w], scaled
                latents.append(encoded)
                labels.append(targets.long())
                if split == "train":
                    flat = encoded.double().transpose(0, 1).flatten(1)  # [C, B*h*w]
                    total, sumsq, count = total + flat.sum(1), sumsq + (flat**2).sum(1), count + flat.shape[1]
            if sum(len(x) for x in labels) >= shard_size:
                shards.append(_write_shard(cache_dir, f"{split}-{len(shards):05d}", latents, labels))
        if labels:
            shards.append(_write_shard(cache_dir, f"{split}-{len(shards):05d}", latents, labels))
        index["splits"][split] = shards
    source.teardown("fit")  # an image folder lists the unreadable files it skipped
    mean = total / count
    stats = {"mean": mean.tolist(), "std": (sumsq / count - mean**2).clamp_min(0).sqrt().tolist()}
    (cache_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    (cache_dir / "index.json").write_text(json.dumps(index, indent=2))  # written last: its presence marks a cache
    return index


class LatentShards(Dataset):
    """Items `{"latents": [C, h, w] float32, "labels": int}` read lazily (memory-mapped) from shards."""

    def __init__(self, cache_dir: Path, shards: list[dict]) -> None:
        self.files = [cache_dir / shard["file"] for shard in shards]
        self.offsets = torch.tensor([0] + [shard["size"] for shard in shards]).cumsum(0)
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        shard = int(torch.searchsorted(self.offsets, index, right=True)) - 1
        if shard not in self._handles:  # opened per worker process, on first use
            self._handles[shard] = safe_open(str(self.files[shard]), framework="pt")
        handle, row = self._handles[shard], index - int(self.offsets[shard])
        latents = handle.get_slice("latents")[row : row + 1][0].float()
        return {"latents": latents, "labels": handle.get_slice("labels")[row : row + 1][0]}


class LatentCacheDataModule(LightningDataModule):
    """Trains latent diffusion from a cache; the cache is built first when it is missing and a source is given.

    The first stage belongs to the task (`LatentDiffusion(first_stage=...)`), named once in a config: the task
    builds a missing cache with it in its `prepare_data` (`build_cache`), and refuses a cache encoded by another.

    Args:
        cache_dir: The cache folder.
        source: The image DataModule to encode (only needed to build the cache).
        flips: Also store every image flipped horizontally.
        shard_size: Latents per shard.
        encode_batch_size: Images per encoder batch while building the cache.
        batch_size: Samples per batch and per process.
        num_workers: Loader worker processes; None: one fewer than the available cores, at most 4.
    """

    def __init__(
        self,
        cache_dir: str,
        source: ImageDataModule | None = None,
        flips: bool = True,
        shard_size: int = 10_000,
        encode_batch_size: int = 64,
        batch_size: int = 32,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        self.cache_dir = Path(cache_dir)
        self.source = source
        self.flips = flips
        self.shard_size = shard_size
        self.encode_batch_size = encode_batch_size
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        index = self._read_index()
        if index is None and source is None:
            raise FileNotFoundError(
                f"no latent cache at {self.cache_dir} (index.json missing); give data.source to build it"
            )
        self.index = index
        self.train_set: LatentShards | None = None
        self.val_set: LatentShards | None = None

    @property
    def data_info(self) -> DataInfo:
        """The images the latents were encoded from (the task maps them to latents through its first stage)."""
        if self.index is None:
            return self.source.data_info
        keys = ("image_size", "in_chans", "num_classes", "class_names")
        return DataInfo(**{key: self.index[key] for key in keys})

    def _read_index(self) -> dict | None:
        path = self.cache_dir / "index.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def build_cache(self, first_stage: FirstStage, first_stage_name: str) -> None:
        """Encodes the source into the cache if there is none yet, else checks the cache was encoded by this first
        stage (by latent scale, and by name where the cache records one). Called by the task that owns the first
        stage, on one process."""
        index = self._read_index()
        if index is not None:
            recorded_name, recorded_scale = index.get("first_stage"), index.get("latent_scale")
            other_name = bool(recorded_name) and recorded_name != first_stage_name
            other_scale = recorded_scale is not None and abs(recorded_scale - first_stage.scale) > 1e-6 * recorded_scale
            if other_name or other_scale:
                raise ValueError(
                    f"the latent cache {self.cache_dir} was encoded by first stage {index.get('first_stage')!r} "
                    f"(scale {index.get('latent_scale')}), the task uses {first_stage_name!r} (scale "
                    f"{first_stage.scale}); point data.cache_dir at a new folder to encode it again"
                )
            return
        rank_zero_info(f"encoding {type(self.source).__name__} into the latent cache {self.cache_dir} ...")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        write_latent_cache(
            self.source,
            first_stage,
            self.cache_dir,
            self.flips,
            self.shard_size,
            self.encode_batch_size,
            device,
            source_name=first_stage_name,
        )
        self.index = self._read_index()

    def setup(self, stage: str | None = None) -> None:
        index = self._read_index()
        if index is None:
            raise FileNotFoundError(f"no latent cache at {self.cache_dir}: prepare_data has not built it")
        self.train_set = LatentShards(self.cache_dir, index["splits"]["train"])
        if "val" in index["splits"]:
            self.val_set = LatentShards(self.cache_dir, index["splits"]["val"])

    def train_dataloader(self) -> DataLoader:
        # Stateful, so that a fit resumed from a mid-epoch checkpoint goes on where the epoch's order stopped.
        return StatefulDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=ResumableRandomSampler(self.train_set),
            drop_last=len(self.train_set) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
