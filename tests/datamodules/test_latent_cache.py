"""The latent cache: what write_latent_cache stores, and LatentCacheDataModule reading (or building) it."""

import json
import re

import pytest
import torch
from diffusion_helpers import tiny_digits, tiny_dit
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightnet_vision.datamodules import LatentCacheDataModule
from lightnet_vision.datamodules.latent_cache import LatentShards, write_latent_cache
from lightnet_vision.models import FirstStage
from lightnet_vision.tasks import LatentDiffusion


def small_digits():
    # About 180 training and 180 validation digits at 8x8.
    return tiny_digits(val_fraction=0.1, test_fraction=0.8)


def source_images(split: str, batch_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The split's images and labels in the batches the cache was written in (evaluation transform, no shuffling)."""
    data = small_digits()
    data.setup("fit")
    dataset = data.train_set if split == "train" else data.val_set
    batches = list(DataLoader(dataset, batch_size=batch_size))
    return [images for images, _ in batches], [labels for _, labels in batches]


def read_split(cache_dir, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    index = json.loads((cache_dir / "index.json").read_text())
    shards = LatentShards(cache_dir, index["splits"][split])
    items = [shards[i] for i in range(len(shards))]
    return torch.stack([item["latents"] for item in items]), torch.stack([item["labels"] for item in items])


@pytest.fixture(scope="module")
def pixel_cache(tmp_path_factory):
    """The pixel-space cache of the small digits, with flips, in shards of about 50 items."""
    cache_dir = tmp_path_factory.mktemp("pixel_cache")
    index = write_latent_cache(small_digits(), FirstStage.load("pixel"), cache_dir, shard_size=50, batch_size=32)
    return cache_dir, index


def test_cache_files_and_index(pixel_cache):
    cache_dir, index = pixel_cache
    assert (cache_dir / "index.json").is_file() and (cache_dir / "stats.json").is_file()
    assert json.loads((cache_dir / "index.json").read_text()) == index
    assert (index["num_classes"], index["image_size"], index["in_chans"]) == (10, 8, 1)
    assert index["class_names"] == [str(digit) for digit in range(10)]
    assert index["latent_scale"] == 1.0 and index["flips"] is True
    assert len(index["splits"]["train"]) > 1  # several shards, so reading must cross shard boundaries
    for split, shards in index["splits"].items():
        for shard in shards:
            assert (cache_dir / shard["file"]).is_file() and shard["file"].startswith(f"{split}-")


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_image_is_cached_as_is_and_flipped(pixel_cache, split):
    cache_dir, index = pixel_cache
    images, labels = source_images(split, batch_size=32)
    latents, cached_labels = read_split(cache_dir, split)
    count = sum(len(batch) for batch in images)
    assert len(latents) == sum(shard["size"] for shard in index["splits"][split]) == 2 * count
    assert latents.dtype == torch.float32 and latents.shape[1:] == (1, 8, 8)
    # Each encoder batch is stored as is, then flipped horizontally; pixels pass through fp16 storage.
    expected = torch.cat([view for batch in images for view in (batch, batch.flip(-1))])
    torch.testing.assert_close(latents, expected.half().float(), rtol=0, atol=0)
    torch.testing.assert_close(cached_labels, torch.cat([y for batch in labels for y in (batch, batch)]))


def test_stats_describe_the_cached_training_latents(pixel_cache):
    cache_dir, _ = pixel_cache
    stats = json.loads((cache_dir / "stats.json").read_text())
    latents, _ = read_split(cache_dir, "train")
    per_channel = latents.double().transpose(0, 1).flatten(1)  # [C, N*h*w]
    assert stats["mean"] == pytest.approx(per_channel.mean(1).tolist(), abs=1e-3)
    assert stats["std"] == pytest.approx(per_channel.std(1, unbiased=False).tolist(), abs=1e-3)
    assert stats["std"][0] > 0.1  # digits are not flat


def test_cache_without_flips_stores_each_image_once(tmp_path):
    index = write_latent_cache(small_digits(), FirstStage.load("pixel"), tmp_path, flips=False, batch_size=64)
    images, labels = source_images("train", batch_size=64)
    latents, cached_labels = read_split(tmp_path, "train")
    assert index["flips"] is False
    torch.testing.assert_close(latents, torch.cat(images).half().float(), rtol=0, atol=0)
    torch.testing.assert_close(cached_labels, torch.cat(labels))


@pytest.mark.slow
def test_autoencoder_cache_holds_scaled_posterior_samples(tiny_autoencoder, tmp_path):
    _, checkpoint = tiny_autoencoder
    first_stage = FirstStage.load(str(checkpoint))
    index = write_latent_cache(small_digits(), first_stage, tmp_path, batch_size=64, source_name=str(checkpoint))
    assert index["first_stage"] == str(checkpoint) and index["latent_scale"] == pytest.approx(first_stage.scale)
    images, _ = source_images("train", batch_size=64)
    latents, _ = read_split(tmp_path, "train")
    assert latents.shape == (2 * sum(len(batch) for batch in images), 4, 4, 4)
    # Each cached latent is a draw from the scaled posterior of its image (as is, or flipped): within 6 sigma.
    views = torch.cat([view for batch in images for view in (batch, batch.flip(-1))])
    with torch.no_grad():
        posterior = first_stage.vae.encode(views).latent_dist
    mean, std = posterior.mean * first_stage.scale, posterior.std * first_stage.scale
    assert ((latents - mean).abs() <= 6 * std + 1e-2).all()
    assert not torch.allclose(latents, mean, atol=1e-3)  # sampled, not the mode
    # A flipped digit is not its own mirror image: the two copies differ.
    count = len(images[0])
    assert not torch.allclose(latents[:count], latents[count : 2 * count], atol=1e-2)


def test_datamodule_builds_the_cache_once_and_reads_it_back(tmp_path):
    cache_dir = tmp_path / "cache"
    data = LatentCacheDataModule(str(cache_dir), small_digits(), batch_size=8, num_workers=0)
    # Before the cache exists, the description of the data comes from the source.
    info = data.data_info
    assert (info.num_classes, info.image_size, info.in_chans) == (10, 8, 1)
    data.build_cache(FirstStage.load("pixel"), "pixel")
    files = sorted(cache_dir.iterdir())
    assert cache_dir / "index.json" in files
    assert json.loads((cache_dir / "index.json").read_text())["first_stage"] == "pixel"
    mtimes = {path: path.stat().st_mtime_ns for path in files}

    again = LatentCacheDataModule(str(cache_dir), source=small_digits(), num_workers=0)
    again.build_cache(FirstStage.load("pixel"), "pixel")
    assert sorted(cache_dir.iterdir()) == files
    assert {path: path.stat().st_mtime_ns for path in files} == mtimes  # an existing cache is not rewritten

    # Without a source, everything comes from index.json.
    cached = LatentCacheDataModule(str(cache_dir), batch_size=8, num_workers=0)
    info = cached.data_info
    assert (info.num_classes, info.image_size, info.in_chans) == (10, 8, 1)
    assert info.class_names == [str(digit) for digit in range(10)]
    cached.setup("fit")
    batch = next(iter(cached.train_dataloader()))
    assert batch["latents"].dtype == torch.float32 and batch["latents"].shape == (8, 1, 8, 8)
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (8,)
    assert ((batch["labels"] >= 0) & (batch["labels"] < 10)).all()
    val_images, _ = source_images("val", batch_size=8)
    assert len(cached.val_dataloader().dataset) == 2 * sum(len(batch) for batch in val_images)


def test_missing_cache_without_a_source_names_the_folder(tmp_path):
    cache_dir = tmp_path / "no_cache_here"
    with pytest.raises(FileNotFoundError, match=re.escape(str(cache_dir))):
        LatentCacheDataModule(str(cache_dir))


def test_a_cache_of_another_first_stage_is_refused_naming_both(tmp_path):
    cache_dir = tmp_path / "cache"
    data = LatentCacheDataModule(str(cache_dir), small_digits(), batch_size=8, num_workers=0)
    data.build_cache(FirstStage.load("pixel"), "pixel")
    with pytest.raises(ValueError, match=r"encoded by first stage 'pixel'.*'other.ckpt'") as error:
        data.build_cache(FirstStage.load("pixel", scale=0.5), "other.ckpt")
    assert str(cache_dir) in str(error.value)


@pytest.mark.slow
def test_cache_is_built_with_the_first_stage_of_the_task(tiny_autoencoder, tmp_path):
    # The cache is encoded by the task's own first stage (its prepare_data), so a config names it once.
    _, checkpoint = tiny_autoencoder
    cache_dir = tmp_path / "cache"
    data = LatentCacheDataModule(str(cache_dir), small_digits(), batch_size=8, num_workers=0)
    task = LatentDiffusion(tiny_dit(in_channels=4, patch_size=1, input_size=4), first_stage=str(checkpoint))
    trainer = Trainer(
        accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(task, datamodule=data)
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["first_stage"] == str(checkpoint)
    assert index["latent_scale"] == pytest.approx(task.first_stage.scale)
    latents, _ = read_split(cache_dir, "train")
    assert latents.shape[1:] == (4, 4, 4)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
