"""A KL autoencoder for the first stage of latent diffusion, built on diffusers' `AutoencoderKL`."""

from diffusers import AutoencoderKL
from torch import nn


class KLAutoencoder(nn.Module):
    """An `AutoencoderKL` that downsamples by `2^(len(block_out_channels) - 1)`, configured with typed arguments.

    Args:
        in_chans: Image channels (set from the data by the CLI).
        block_out_channels: Channels of the encoder stages; each stage after the first halves the resolution.
        latent_channels: Channels of the latent.
        layers_per_block: ResNet layers per stage.
        norm_num_groups: Groups of the GroupNorms (must divide every channel count).
        attention: Self-attention in the middle block (as SD-VAE); off is cheaper for small images.
    """

    def __init__(
        self,
        in_chans: int = 3,
        block_out_channels: list[int] = [64, 128, 256, 256],  # noqa: B006 (never mutated; a list so YAML can set it)
        latent_channels: int = 4,
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        attention: bool = True,
    ) -> None:
        super().__init__()
        stages = len(block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=in_chans,
            out_channels=in_chans,
            down_block_types=("DownEncoderBlock2D",) * stages,
            up_block_types=("UpDecoderBlock2D",) * stages,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=attention,
        )
