"""diffusers' DiT (softmax attention, fixed sin-cos positions) behind LightNet-DiT's interface, so that
`LatentDiffusion` trains and samples it unchanged: the peer of configs/diffusion/digits_dit.yaml.

What the task reads of a denoiser, and what this adapter gives:

- `forward(x, t, y)` with y None meaning the null class, `forward_with_cfg(x, t, y, scale)` guiding the first
  `in_channels` output channels and keeping the conditional variance, as `LightNetDiT` does;
- `num_classes`, `in_channels`, `input_size`, `patch_size`, `learn_sigma` (2C output channels when set).

diffusers gives every block its own timestep-and-label embedder, each of which would drop labels for guidance
independently (block 1 could see the class while block 2 sees the null class). Here the labels are dropped once per
sample, before any block, with `class_dropout_prob`, and the embedders' own dropout is switched off: every block sees
the same label, as in DiT and in LightNet-DiT.
"""

import torch
from diffusers import DiTTransformer2DModel
from torch import Tensor, nn


class DiffusersDiT(nn.Module):
    """A class-conditional denoiser `forward(x, t, y)` built on `diffusers.DiTTransformer2DModel`.

    Args:
        input_size: Latent side the sin-cos position table is built for (any side divisible by `patch_size` runs:
            diffusers rebuilds the table for another grid).
        patch_size: Side of the square latent patches.
        in_channels: Latent channels C.
        hidden_size: Model width D (`num_heads` heads of `hidden_size // num_heads` channels).
        depth: Number of transformer blocks.
        num_heads: Attention heads.
        class_dropout_prob: Probability, while training, of replacing a label by the null class (for guidance).
        num_classes: Real classes; the null class is index `num_classes`. 0 makes an unconditional model.
        learn_sigma: Also predict the variance: 2C output channels, as `LightNetDiT(learn_sigma=True)`.
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.class_dropout_prob = class_dropout_prob
        # num_embeds_ada_norm is the number of classes: each block's label table holds them plus the null class.
        self.dit = DiTTransformer2DModel(
            num_attention_heads=num_heads,
            attention_head_dim=hidden_size // num_heads,
            in_channels=in_channels,
            out_channels=self.out_channels,
            num_layers=depth,
            sample_size=input_size,
            patch_size=patch_size,
            num_embeds_ada_norm=num_classes,
        )
        for module in self.dit.modules():
            if hasattr(module, "embedding_table") and hasattr(module, "dropout_prob"):
                if module.embedding_table.num_embeddings != num_classes + 1:
                    raise RuntimeError("diffusers' label embedder has no null class: this adapter needs one")
                module.dropout_prob = 0.0  # dropped once per sample in `forward` instead

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Noise (or velocity; and variance with `learn_sigma`) `[B, C_out, H, W]` for latents x `[B, C, H, W]` at
        timesteps t `[B]`; y `[B]` holds class labels, where `num_classes` (and y=None) is the null class."""
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        elif self.training and self.class_dropout_prob > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.class_dropout_prob
            y = torch.where(drop, self.num_classes, y)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        return self.dit(x, timestep=t, class_labels=y, return_dict=False)[0]

    def forward_with_cfg(self, x: Tensor, t: Tensor, y: Tensor, cfg_scale: float) -> Tensor:
        """Classifier-free guidance `ε_null + s (ε_cond − ε_null)` on the first C channels, in one batched pass; a
        learned variance is the conditional one. x `[B, C, H, W]`, t and y `[B]`; returns `[B, C_out, H, W]`."""
        null = torch.full_like(y, self.num_classes)
        out = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))  # [2B, C_out, H, W]
        cond, uncond = out.chunk(2)  # [B, C_out, H, W] each
        c = self.in_channels
        guided = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])  # [B, C, H, W]
        return torch.cat([guided, cond[:, c:]], dim=1)
