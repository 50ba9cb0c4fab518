"""LightNet-DiT: a latent-diffusion denoiser with LightNet blocks (arXiv 2405.21022), DiT's interface.

Latents `[B, C, h, w]` are patchified (patch 2, 4 or 8) → MD-TPE over the patch grid → L LightNet blocks whose
norms are modulated adaLN-Zero style by `timestep embedding + class embedding` → adaLN final layer → unpatchify.
The denoiser knows nothing of noise schedules: that lives in `lightnet_vision.diffusion`. The layout, the anchor token
and the presets: docs/method.md#denoiser.

DiT's contract is kept (tests/models/test_lightnet_dit.py): every keyword of DiT's `DiT.__init__` with its meaning and
default (the sizes through a preset), `learn_sigma=True` (noise and variance, 2C output channels; the variance is
trained by the variational-bound term of `GaussianDiffusion.training_loss`), `forward(x, t, y)` and
`forward_with_cfg`, which guides the noise prediction only.
"""

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightnet_vision.layers import MDLRPE, MDTPE, LabelEmbedder, LightNetDiTBlock, PatchEmbed, TimestepEmbedder
from lightnet_vision.layers.adaln import modulate
from lightnet_vision.models._registry import fill_from_preset, register_model
from lightnet_vision.models.hub import HubMixin


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens to patches of the output channels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class LightNetDiT(nn.Module, HubMixin, tags=["diffusion", "class-conditional-image-generation"]):
    """Class-conditional (or unconditional) denoiser `forward(x, t, y)` of latents.

    Args:
        preset: A registered preset (`list_models(model_cls=LightNetDiT)`: lightnet_dit_s_2, ..., lightnet_dit_xl_8)
            that sets `hidden_size`, `depth`, `num_heads` and `patch_size`; each of these given explicitly wins over it.
        input_size: Default latent side (informational: any size divisible by `patch_size` runs).
        patch_size: Side of the square latent patches (default: the preset's).
        in_channels: Latent channels C.
        hidden_size: Model width D (default: the preset's).
        depth: Number of blocks L (default: the preset's).
        num_heads: Attention heads H (default: the preset's).
        mlp_ratio: The GLU of each block has the parameters of an MLP `mlp_ratio · D` wide (DiT's keyword).
        class_dropout_prob: Probability of training with the null label (for classifier-free guidance).
        num_classes: Number of classes; 0 trains an unconditional model.
        learn_sigma: Also predict the per-element variance, as DiT does by default: the output has 2C channels,
            noise (or velocity) then the variance's interpolation `v` between the posterior's and β_t's log
            variance (improved DDPM's "learned range"). `GaussianDiffusion` trains it with the variational bound and
            its "ddpm" sampler draws with it.
        grad_checkpointing: Recompute each block in the backward instead of storing its activations: the
            activation memory of training falls to about one block plus one `[B, N, D]` tensor per block, for
            roughly a third more compute. Same as `set_grad_checkpointing()`.
        lrpe: MD-LRPE form in every attention: "rotary" (default: tells left from right, K wide), "cosine" (the
            paper's, even in the offset) or "none".
        tpe: MD-TPE form after the patch embedding: "symmetric" (the paper's), "asymmetric" (a decay per
            direction) or "none".
    """

    hub_description = "a class-conditional latent-diffusion denoiser (DiT's interface)"

    def __init__(
        self,
        preset: str | None = "lightnet_dit_s_2",
        input_size: int = 32,
        patch_size: int | None = None,
        in_channels: int = 4,
        hidden_size: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        grad_checkpointing: bool = False,
        lrpe: str = "rotary",
        tpe: str = "symmetric",
    ) -> None:
        super().__init__()
        size = {"hidden_size": hidden_size, "depth": depth, "num_heads": num_heads, "patch_size": patch_size}
        hidden_size, depth, num_heads, patch_size = fill_from_preset(LightNetDiT, preset, **size).values()
        self.preset = preset
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.grad_checkpointing = grad_checkpointing
        # Constructor arguments (sizes resolved) for `model_args`.
        self._arguments = {
            "preset": preset,
            "input_size": input_size,
            "patch_size": patch_size,
            "in_channels": in_channels,
            "hidden_size": hidden_size,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "class_dropout_prob": class_dropout_prob,
            "num_classes": num_classes,
            "learn_sigma": learn_sigma,
            "lrpe": lrpe,
            "tpe": tpe,
        }

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.pos_tpe = None if tpe == "none" else MDTPE(hidden_size, num_heads, num_axes=2, form=tpe)
        self.pos_lrpe = None if lrpe == "none" else MDLRPE(hidden_size // num_heads, num_axes=2, form=lrpe)
        self.blocks = nn.ModuleList(
            LightNetDiTBlock(hidden_size, num_heads, lrpe=lrpe, mlp_ratio=mlp_ratio) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # 1. Linear layers: Xavier uniform, zero bias.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # 2. Patch embedding like a linear layer over the flattened patch.
        weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        # 3. Label table and timestep MLP: small normal.
        nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # 4. adaLN-Zero: every modulation starts at zero, so each block starts as the identity.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # 5. The output layer starts at zero: the first prediction is 0 everywhere.
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set() if self.pos_tpe is None else {"pos_tpe.decay_logit"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @property
    def architecture(self) -> str:
        """The registered name of this model: its preset (lightnet_dit_s_2 when built from explicit sizes)."""
        return self.preset or "lightnet_dit_s_2"

    def model_args(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this model."""
        return {**self._arguments, "grad_checkpointing": self.grad_checkpointing}

    def unpatchify(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        batch, p, c = x.shape[0], self.patch_size, self.out_channels
        h, w = grid
        x = x.reshape(batch, h, w, p, p, c)  # [B, h, w, p, p, C]
        return torch.einsum("bhwpqc->bchpwq", x).reshape(batch, c, h * p, w * p)  # [B, C, H, W]

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Predict noise (and variance with `learn_sigma`) for latents x `[B, C, H, W]` at timesteps t `[B]`.

        y holds class labels `[B]`; the index `num_classes` (and y=None) means "no class".
        """
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        tokens, grid = self.x_embedder(x)  # [B, N, D], (h, w)
        if self.pos_tpe is not None:
            tokens = tokens + self.pos_tpe(tokens, grid)
        c = self.t_embedder(t) + self.y_embedder(y)  # [B, D]
        # The condition also enters as one extra token, first, with MD-LRPE angle 0: an anchor at the grid's
        # origin. MD-TPE and MD-LRPE are relative, so without it a token fed pure noise cannot tell where on the
        # grid it is, and a denoiser cannot place a class's strokes (docs/method.md#anchor-token).
        tokens = torch.cat([c[:, None], tokens], dim=1)  # [B, 1 + N, D]
        angles = None if self.pos_lrpe is None else self.pos_lrpe(grid, num_extra_tokens=1)  # [1 + N, K or K/2]
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, angles, use_reentrant=False)
            else:
                tokens = block(tokens, c, angles)
        tokens = self.final_layer(tokens[:, 1:], c)  # [B, N, p*p*C_out]
        return self.unpatchify(tokens, grid)  # [B, C_out, H, W]

    def forward_with_cfg(self, x: Tensor, t: Tensor, y: Tensor, cfg_scale: float) -> Tensor:
        """Classifier-free guidance of the noise prediction, `ε_null + s (ε_cond − ε_null)` on all C of its channels,
        in one batched pass; a learned variance is the conditional one, not extrapolated. x `[B, C, H, W]`, t and y
        `[B]` (DiT's takes the batch already doubled); returns `[B, C_out, H, W]`."""
        null = torch.full_like(y, self.num_classes)
        out = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))  # [2B, C_out, H, W]
        cond, uncond = out.chunk(2)  # [B, C_out, H, W] each
        c = self.in_channels
        guided = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])  # [B, C, H, W]
        return torch.cat([guided, cond[:, c:]], dim=1)


@register_model(LightNetDiT)
def lightnet_dit_s_2() -> dict[str, int]:
    """LightNet-DiT at DiT-S/2 size: D=384, H=6, L=12, patch 2."""
    return {"hidden_size": 384, "depth": 12, "num_heads": 6, "patch_size": 2}


@register_model(LightNetDiT)
def lightnet_dit_s_4() -> dict[str, int]:
    """LightNet-DiT at DiT-S/4 size: D=384, H=6, L=12, patch 4."""
    return {"hidden_size": 384, "depth": 12, "num_heads": 6, "patch_size": 4}


@register_model(LightNetDiT)
def lightnet_dit_s_8() -> dict[str, int]:
    """LightNet-DiT at DiT-S/8 size: D=384, H=6, L=12, patch 8."""
    return {"hidden_size": 384, "depth": 12, "num_heads": 6, "patch_size": 8}


@register_model(LightNetDiT)
def lightnet_dit_b_2() -> dict[str, int]:
    """LightNet-DiT at DiT-B/2 size: D=768, H=12, L=12, patch 2."""
    return {"hidden_size": 768, "depth": 12, "num_heads": 12, "patch_size": 2}


@register_model(LightNetDiT)
def lightnet_dit_b_4() -> dict[str, int]:
    """LightNet-DiT at DiT-B/4 size: D=768, H=12, L=12, patch 4."""
    return {"hidden_size": 768, "depth": 12, "num_heads": 12, "patch_size": 4}


@register_model(LightNetDiT)
def lightnet_dit_b_8() -> dict[str, int]:
    """LightNet-DiT at DiT-B/8 size: D=768, H=12, L=12, patch 8."""
    return {"hidden_size": 768, "depth": 12, "num_heads": 12, "patch_size": 8}


@register_model(LightNetDiT)
def lightnet_dit_l_2() -> dict[str, int]:
    """LightNet-DiT at DiT-L/2 size: D=1024, H=16, L=24, patch 2."""
    return {"hidden_size": 1024, "depth": 24, "num_heads": 16, "patch_size": 2}


@register_model(LightNetDiT)
def lightnet_dit_l_4() -> dict[str, int]:
    """LightNet-DiT at DiT-L/4 size: D=1024, H=16, L=24, patch 4."""
    return {"hidden_size": 1024, "depth": 24, "num_heads": 16, "patch_size": 4}


@register_model(LightNetDiT)
def lightnet_dit_l_8() -> dict[str, int]:
    """LightNet-DiT at DiT-L/8 size: D=1024, H=16, L=24, patch 8."""
    return {"hidden_size": 1024, "depth": 24, "num_heads": 16, "patch_size": 8}


@register_model(LightNetDiT)
def lightnet_dit_xl_2() -> dict[str, int]:
    """LightNet-DiT at DiT-XL/2 size: D=1152, H=16, L=28, patch 2."""
    return {"hidden_size": 1152, "depth": 28, "num_heads": 16, "patch_size": 2}


@register_model(LightNetDiT)
def lightnet_dit_xl_4() -> dict[str, int]:
    """LightNet-DiT at DiT-XL/4 size: D=1152, H=16, L=28, patch 4."""
    return {"hidden_size": 1152, "depth": 28, "num_heads": 16, "patch_size": 4}


@register_model(LightNetDiT)
def lightnet_dit_xl_8() -> dict[str, int]:
    """LightNet-DiT at DiT-XL/8 size: D=1152, H=16, L=28, patch 8."""
    return {"hidden_size": 1152, "depth": 28, "num_heads": 16, "patch_size": 8}
