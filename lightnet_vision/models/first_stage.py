"""The first stage of latent diffusion: images in [-1, 1] to scaled latents and back (or pixels left as they are).

Sources: "pixel" (no autoencoder), a diffusers `AutoencoderKL` directory or hub id (SD-VAE, scale 0.18215), or a
checkpoint of this project's `Autoencoder` task, which stores the latent scale it estimated from data.
"""

import inspect
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from lightnet_vision.checkpoints import load_checkpoint
from lightnet_vision.models.autoencoder import KLAutoencoder
from lightnet_vision.run_folder import newest_last_checkpoint, runs_under


class FirstStage(nn.Module):
    """Encode/decode with an optional `AutoencoderKL`; latents are multiplied by `scale` to have unit variance.

    Args:
        vae: The autoencoder; None works in pixel space.
        scale: Latent scale factor (1 in pixel space).
    """

    def __init__(self, vae: AutoencoderKL | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.vae = vae
        self.scale = scale
        if vae is not None:
            vae.requires_grad_(False).eval()

    @property
    def downsample_factor(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int | None:
        return None if self.vae is None else self.vae.config.latent_channels

    @torch.no_grad()
    def encode(self, images: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        if self.vae is None:
            return images * self.scale
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mode()
        return latents.float() * self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        if self.vae is None:
            return latents / self.scale
        return self.vae.decode((latents / self.scale).to(self.vae.dtype)).sample.float()

    @classmethod
    def load(cls, source: str, scale: float | None = None) -> "FirstStage":
        """`source`: "pixel", a `.ckpt` of the `Autoencoder` task, the run root of such a task (its newest run's
        `last.ckpt`: `runs/autoencoder_digits`), or a diffusers directory / hub id.

        Neither kind of file can run code when read: the checkpoint is read with `torch.load(weights_only=True)`,
        and diffusers reads safetensors files (or `.bin` files with `weights_only=True`)."""
        if source == "pixel":
            return cls(None, 1.0 if scale is None else scale)
        if source.endswith(".ckpt"):
            return cls.from_autoencoder_checkpoint(source, scale)
        if runs_under(source):
            last = newest_last_checkpoint(source)
            if last is None:
                raise FileNotFoundError(f"first stage {source}: no run under it has a checkpoints/last.ckpt yet")
            return cls.from_autoencoder_checkpoint(last, scale)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae" if (Path(source) / "vae").is_dir() else None)
        return cls(vae, vae.config.scaling_factor if scale is None else scale)

    @classmethod
    def from_autoencoder_checkpoint(cls, path: str, scale: float | None = None) -> "FirstStage":
        if not Path(path).is_file():
            raise FileNotFoundError(f"autoencoder checkpoint {path} does not exist")
        checkpoint = load_checkpoint(path)  # weights_only: a file carrying pickled code is refused, not run
        config = checkpoint.get("hyper_parameters", {}).get("model", {})
        if not (isinstance(config, dict) and config.get("class_path", "").endswith("KLAutoencoder")):
            raise ValueError(f"{path} is not a checkpoint of the Autoencoder task with a KLAutoencoder model")
        # Keep only KLAutoencoder's own arguments: the CLI also records link values it does not take.
        accepted = inspect.signature(KLAutoencoder).parameters
        vae = KLAutoencoder(**{k: v for k, v in config.get("init_args", {}).items() if k in accepted}).vae
        state = checkpoint["state_dict"]
        prefix = "model.vae."
        vae.load_state_dict({name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix)})
        return cls(vae, float(state["latent_scale"]) if scale is None else scale)
