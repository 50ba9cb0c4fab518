"""Tiny versions of the generation quickstart (configs/autoencoder/digits.yaml, configs/diffusion/digits.yaml).

Everything runs on 8x8 digits: a two-stage KL autoencoder (8x8 -> 4x4x4 latents), a one-block LightNet-DiT of
width 32, and a few training steps, so that the tests of the generation stack stay fast on a CPU.
"""

import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn

from lightnet_vision.cli import LightNetCLI, build_cli
from lightnet_vision.datamodules import DigitsDataModule
from lightnet_vision.models import LightNetDiT

REPO_ROOT = Path(__file__).resolve().parents[1]
AUTOENCODER_CONFIG = str(REPO_ROOT / "configs" / "autoencoder" / "digits.yaml")
DIFFUSION_CONFIG = str(REPO_ROOT / "configs" / "diffusion" / "digits.yaml")
QUIET = "--trainer.accelerator cpu --trainer.enable_progress_bar false --trainer.enable_model_summary false".split()

_AE = "--model.init_args.model.init_args"
TINY_AUTOENCODER = [
    *(f"{_AE}.block_out_channels", "[8, 16]", f"{_AE}.norm_num_groups", "8"),
    *(f"{_AE}.layers_per_block", "1", f"{_AE}.attention", "false"),
]
DIGITS_8 = ["--data.init_args.image_size", "8", "--data.init_args.batch_size", "16"]


def tiny_denoiser_args(in_channels: int, patch_size: int, input_size: int) -> list[str]:
    """CLI overrides that shrink the diffusion config's LightNet-DiT to one block of width 32."""
    dit = "--model.init_args.model.init_args"
    values = {"in_channels": in_channels, "patch_size": patch_size, "input_size": input_size}
    values |= {"hidden_size": 32, "depth": 1, "num_heads": 2}
    return [arg for key, value in values.items() for arg in (f"{dit}.{key}", str(value))]


def pixel_diffusion_args() -> list[str]:
    """The diffusion config in pixel space on 8x8 digits, with 2 sampling steps."""
    return [
        *("--model.init_args.first_stage", "pixel", "--model.init_args.num_sampling_steps", "2"),
        *tiny_denoiser_args(in_channels=1, patch_size=2, input_size=8),
        *DIGITS_8,
    ]


def latent_diffusion_args(checkpoint: Path) -> list[str]:
    """The diffusion config in the latent space (4x4x4) of the tiny autoencoder, with 2 sampling steps."""
    return [
        *("--model.init_args.first_stage", str(checkpoint), "--model.init_args.num_sampling_steps", "2"),
        *tiny_denoiser_args(in_channels=4, patch_size=1, input_size=4),
        *DIGITS_8,
    ]


def tiny_digits(**overrides) -> DigitsDataModule:
    """8x8 digits in [-1, 1], without augmentation."""
    kwargs = {"image_size": 8, "augment": False, "mean": (0.5,), "std": (0.5,), "batch_size": 16}
    return DigitsDataModule(**{**kwargs, **overrides})


def tiny_dit(in_channels: int = 1, num_classes: int = 10, patch_size: int = 2, **overrides) -> LightNetDiT:
    return LightNetDiT(
        **{
            "input_size": 8,
            "patch_size": patch_size,
            "in_channels": in_channels,
            "hidden_size": 32,
            "depth": 1,
            "num_heads": 2,
            "num_classes": num_classes,
            **overrides,
        }
    )


def wake(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Random values for the zero-initialised adaLN and output layers of a LightNet-DiT, so its output is not 0."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                param.normal_(std=std)
    return model


def run_cli(root: Path, args: list[str]) -> LightNetCLI:
    """The CLI run from `root` (configs write relative paths such as runs/...), without pytest's command line."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["lightnet-vision"])
        return build_cli(args)


def fit_tiny_autoencoder(root: Path) -> tuple[LightNetCLI, Path]:
    """configs/autoencoder/digits.yaml shrunk to 2 training and 2 validation batches; its last.ckpt."""
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
    cli = run_cli(root, ["fit", "--config", AUTOENCODER_CONFIG, *QUIET, *TINY_AUTOENCODER, *DIGITS_8, *limits])
    checkpoint = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert checkpoint.is_file() and checkpoint.is_relative_to(root)
    return cli, checkpoint


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


class EMAProbe(Callback):
    """Records the EMA callback's averaged weights and the model's own weights when training (re)starts and after
    every step (after the EMA update: the EMA callback comes first in the list)."""

    def __init__(self) -> None:
        self.at_start: dict | None = None
        self.after_step: dict[int, dict] = {}

    @staticmethod
    def _snapshot(trainer: Trainer, pl_module: LightningModule) -> dict:
        (ema,) = [callback for callback in trainer.callbacks if isinstance(callback, WeightAveraging)]
        # The averaged weights as the callback writes them into a checkpoint's state_dict.
        checkpoint = {"state_dict": {}}
        ema.on_save_checkpoint(trainer, pl_module, checkpoint)
        return {
            "step": trainer.global_step,
            "average": {name: value.detach().clone() for name, value in checkpoint["state_dict"].items()},
            "current": clone_state(pl_module),
        }

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.at_start = self._snapshot(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.after_step[trainer.global_step] = self._snapshot(trainer, pl_module)
