"""Every ready-made config parses and instantiates through the CLI, so a config can never rot (litgpt's habit)."""

import sys
from pathlib import Path

import pytest
import torch
import yaml
from classification_helpers import write_image_folder
from diffusion_helpers import tiny_digits

from lightnet_vision.cli import build_cli
from lightnet_vision.datamodules import ImageFolderDataModule, LatentCacheDataModule
from lightnet_vision.datamodules.latent_cache import write_latent_cache
from lightnet_vision.models import FirstStage
from lightnet_vision.tasks import Autoencoder, LatentDiffusion

REPO_ROOT = Path(__file__).resolve().parents[1]
# Config folders with a test here; add a folder and its overrides below when its task lands.
TESTED_FOLDERS = ("classification", "autoencoder", "diffusion")
CONFIGS = [
    path.relative_to(REPO_ROOT)
    for path in sorted((REPO_ROOT / "configs").rglob("*.yaml"))
    if path.relative_to(REPO_ROOT / "configs").parts[0] in TESTED_FOLDERS
]


def config_files(config: Path) -> list[Path]:
    """The files of a config, in command-line order: a size file in `<name>/` follows the recipe `<name>.yaml`
    (`--config configs/classification/imagenet.yaml --config configs/classification/imagenet/lightnet_small.yaml`),
    and a peer file `<name>_<peer>.yaml` that swaps only the backbone (no `data` of its own) follows `<name>.yaml`
    (`--config configs/classification/digits.yaml --config configs/classification/digits_deit.yaml`)."""
    recipe = config.parent.with_suffix(".yaml")
    if recipe.is_file():
        return [recipe, config]
    peer_of = config.with_name(config.name.rsplit("_", 1)[0] + ".yaml")
    if "_" in config.stem and peer_of.is_file() and "data" not in yaml.safe_load(config.read_text()):
        return [peer_of, config]
    return [config]


def config_value(config: Path, *keys: str, default=None):
    """A key of a config as the command line composes its files: the last file that sets it wins."""
    value = default
    for path in config_files(config):
        node = yaml.safe_load(path.read_text())
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        value = value if node is None else node
    return value


TINY_TRAINER = (
    "--trainer.accelerator cpu --trainer.devices 1 --trainer.strategy auto --trainer.precision 32-true "
    "--trainer.enable_progress_bar false"
).split()


def data_overrides(config: Path, tmp_path: Path, request: pytest.FixtureRequest) -> list[str]:
    """Tiny local stand-ins for the data a config names: nothing is read from data/ or downloaded."""
    data = ["--data.init_args.num_workers", "0"]
    data_class = config_value(config, "data", "class_path").rsplit(".", 1)[-1]
    if data_class == "ImageFolderDataModule":
        data += ["--data.init_args.root", str(write_image_folder(tmp_path / "images", splits=("train", "val")))]
    elif data_class == "TorchvisionDataModule":
        data += ["--data.init_args.root", str(tmp_path / "absent")]  # no files: __init__ must not need them
    elif data_class == "LatentCacheDataModule":
        # A ready cache (of the tiny autoencoder's latents), so the source dataset is never needed.
        cache_dir = request.getfixturevalue("tiny_latent_cache")
        data += ["--data.init_args.cache_dir", str(cache_dir), "--data.init_args.source", "null"]
    return data


def classification_overrides(config: Path, tmp_path: Path, request: pytest.FixtureRequest) -> list[str]:
    backbone = "--model.init_args.model.init_args"
    tiny = [f"{backbone}.embed_dim", "16", f"{backbone}.depth", "1", f"{backbone}.num_heads", "2"]
    return tiny + data_overrides(config, tmp_path, request)


def autoencoder_overrides(config: Path, tmp_path: Path, request: pytest.FixtureRequest) -> list[str]:
    model = "--model.init_args.model.init_args"
    tiny = [f"{model}.block_out_channels", "[8, 16]", f"{model}.norm_num_groups", "8"]
    return tiny + data_overrides(config, tmp_path, request)


def diffusion_overrides(config: Path, tmp_path: Path, request: pytest.FixtureRequest) -> list[str]:
    denoiser = "--model.init_args.model.init_args"
    tiny = [f"{denoiser}.hidden_size", "16", f"{denoiser}.depth", "1", f"{denoiser}.num_heads", "2"]
    if config_value(config, "model", "init_args", "first_stage", default="pixel") != "pixel":
        # A pretrained VAE or an autoencoder trained by another config: the tiny autoencoder (4 latent channels).
        _, checkpoint = request.getfixturevalue("tiny_autoencoder")
        tiny += ["--model.init_args.first_stage", str(checkpoint), f"{denoiser}.in_channels", "4"]
    return tiny + data_overrides(config, tmp_path, request)


OVERRIDES = {
    "classification": classification_overrides,
    "autoencoder": autoencoder_overrides,
    "diffusion": diffusion_overrides,
}


def check_classification(cli) -> None:
    data, task, backbone = cli.datamodule, cli.model, cli.model.model
    assert backbone.embed_dim == 16 and len(backbone.blocks) == 1
    assert backbone.num_classes == data.num_classes
    assert backbone.in_chans == data.in_chans == backbone.patch_embed.proj.in_channels
    # LightNet keeps the data's image size as img_size, timm's ViT in its patch embedding.
    img_size = backbone.img_size if hasattr(backbone, "img_size") else backbone.patch_embed.img_size[0]
    assert img_size == data.image_size
    assert task.class_names == data.class_names
    if isinstance(data, ImageFolderDataModule):
        assert data.class_names == ["ant", "cat", "zebra"]
    # The config's patch size fits its image size: one evaluation-sized image runs through the model.
    with torch.no_grad():
        logits = task.eval()(torch.zeros(1, data.in_chans, data.image_size, data.image_size))
    assert logits.shape == (1, data.num_classes)


def check_autoencoder(cli) -> None:
    data, task = cli.datamodule, cli.model
    assert isinstance(task, Autoencoder)
    vae = task.vae
    assert tuple(vae.config.block_out_channels) == (8, 16)
    assert vae.config.in_channels == vae.config.out_channels == data.in_chans
    # One image of the data's size goes to latents (downsampled 2x by the two stages) and back.
    images = torch.zeros(1, data.in_chans, data.image_size, data.image_size)
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
        assert latents.shape == (1, vae.config.latent_channels, data.image_size // 2, data.image_size // 2)
        assert vae.decode(latents).sample.shape == images.shape


def check_diffusion(cli) -> None:
    data, task, denoiser = cli.datamodule, cli.model, cli.model.model
    assert isinstance(task, LatentDiffusion)
    if hasattr(denoiser, "dit"):  # diffusers' DiT through DiffusersDiT (configs/diffusion/digits_dit.yaml)
        assert denoiser.dit.inner_dim == 16 and len(denoiser.dit.transformer_blocks) == 1
    else:
        assert denoiser.x_embedder.proj.out_channels == 16 and len(denoiser.blocks) == 1
    info = data.data_info
    assert denoiser.num_classes == info.num_classes
    assert task.data_info == info and task.class_names == info.class_names
    first_stage = task.first_stage
    assert denoiser.input_size == info.image_size // first_stage.downsample_factor
    if first_stage.vae is None:
        assert denoiser.in_channels == info.in_chans
    else:
        assert denoiser.in_channels == first_stage.latent_channels
    if isinstance(data, LatentCacheDataModule):
        assert (info.num_classes, info.image_size) == (10, 8)  # read from the index.json of the tiny digits cache
    # The config's patch size fits its latent size: one latent runs through the denoiser.
    channels, height, width = task.latent_shape()
    latents = torch.zeros(1, channels, height, width)
    with torch.no_grad():
        out = denoiser.eval()(latents, torch.tensor([500]), torch.tensor([0]))
    assert out.shape == (1, denoiser.out_channels, height, width)


CHECKS = {"classification": check_classification, "autoencoder": check_autoencoder, "diffusion": check_diffusion}


@pytest.fixture(scope="module")
def tiny_latent_cache(tiny_autoencoder, tmp_path_factory) -> Path:
    """A latent cache of a few digits encoded by the tiny autoencoder, for configs that train from a cache."""
    _, checkpoint = tiny_autoencoder
    cache_dir = tmp_path_factory.mktemp("latent_cache")
    data = tiny_digits(val_fraction=0.05, test_fraction=0.9)
    write_latent_cache(data, FirstStage.load(str(checkpoint)), cache_dir, source_name=str(checkpoint))
    return cache_dir


def test_configs_are_found():
    names = {"/".join(path.parts[2:]) for path in CONFIGS if path.parts[1] == "classification"}
    assert {"debug.yaml", "digits.yaml", "cifar10_lightnet_tiny.yaml", "imagenet.yaml"} <= names
    assert {"imagenet/lightnet_tiny.yaml", "imagenet/lightnet_small.yaml", "imagenet/lightnet_base.yaml"} <= names
    assert config_files(REPO_ROOT / "configs/classification/imagenet/lightnet_small.yaml") == [
        REPO_ROOT / "configs/classification/imagenet.yaml",
        REPO_ROOT / "configs/classification/imagenet/lightnet_small.yaml",
    ]


def test_every_run_writes_to_its_own_folder():
    # Sizes of one recipe differ in their run folder, logger and checkpoint folder, never only in the preset.
    folders = {}
    for config in CONFIGS:
        trainer = {key: config_value(REPO_ROOT / config, "trainer", key) for key in ("default_root_dir", "logger")}
        if trainer["default_root_dir"] is not None:
            folders.setdefault(trainer["default_root_dir"], []).append(str(config))
    assert all(len(configs) == 1 for configs in folders.values()), folders
    for config in CONFIGS:
        files = [yaml.safe_load(path.read_text()) for path in config_files(REPO_ROOT / config)]
        callbacks = [c for f in files for c in f["trainer"].get("callbacks", []) + f["trainer"].get("callbacks+", [])]
        dirpaths = {c["init_args"]["dirpath"] for c in callbacks if "dirpath" in c.get("init_args", {})}
        root = config_value(REPO_ROOT / config, "trainer", "default_root_dir")
        assert all(dirpath.startswith(f"{root}/") for dirpath in dirpaths), (config, dirpaths)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.slow
def test_config_instantiates_with_linked_values(config, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # configs write relative paths such as runs/...
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])  # LightningCLI warns about pytest's own command line
    folder = config.parts[1]
    overrides = OVERRIDES[folder](REPO_ROOT / config, tmp_path, request)
    files = [arg for path in config_files(REPO_ROOT / config) for arg in ("--config", str(path))]
    cli = build_cli([*files, *TINY_TRAINER, *overrides], run=False)
    CHECKS[folder](cli)
    # A size file's preset reaches the backbone (its widths are cut by the overrides above, its patch is kept).
    preset = config_value(REPO_ROOT / config, "model", "init_args", "model", "init_args", "preset")
    assert preset is None or cli.model.model.preset == preset
    assert cli.trainer.accelerator.__class__.__name__ == "CPUAccelerator"


def test_generation_configs_are_found():
    names = {"/".join(path.parts[1:]) for path in CONFIGS}
    assert {"autoencoder/digits.yaml", "diffusion/digits.yaml"} <= names
    # At least one config trains from a latent cache, so the LatentCacheDataModule overrides are exercised.
    data_classes = {config_value(REPO_ROOT / path, "data", "class_path") for path in CONFIGS}
    assert "lightnet_vision.datamodules.LatentCacheDataModule" in data_classes
