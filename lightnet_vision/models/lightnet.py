"""LightNet image classifier (arXiv 2405.21022) with timm's model interface.

Patch embedding → MD-TPE over the (h, w) patch grid → L LightNet blocks (additive attention with MD-LRPE, GLU) →
LayerNorm → mean pool → linear head. No parameter depends on the input size: a model trained at 224² runs at
any size divisible by the patch, without interpolation. The layout and presets: docs/method.md#classifier.
"""

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightnet_vision.layers import MDLRPE, MDTPE, LightNetBlock, PatchEmbed
from lightnet_vision.models._registry import fill_from_preset, register_model


class LightNet(nn.Module):
    """LightNet classifier.

    Args:
        preset: A registered preset (`list_models(model_cls=LightNet)`: lightnet_tiny, lightnet_small, ...) that sets
            `embed_dim`, `depth` and `num_heads`; each of these given explicitly wins over it.
        img_size: Default input size (informational: any size divisible by `patch_size` runs).
        patch_size: Side of the square patches.
        in_chans: Input image channels.
        num_classes: Classes of the head; 0 gives a model without a head (pooled features out).
        embed_dim: Model width D (default: the preset's).
        depth: Number of blocks L (default: the preset's).
        num_heads: Attention heads H, head dim D / H (default: the preset's).
        qkv_bias: Add a bias to the q, k and v projections.
        drop_rate: Dropout before the head.
        drop_path_rate: Stochastic depth at the last block, rising linearly from 0 at the first.
        grad_checkpointing: Recompute each block in the backward instead of storing its activations: the
            activation memory of training falls to about one block plus one `[B, N, D]` tensor per block, for
            roughly a third more compute. Same as `set_grad_checkpointing()`.
        lrpe: MD-LRPE form in every attention: "rotary" (default: tells left from right, K wide), "cosine" (the
            paper's, even in the offset) or "none".
        tpe: MD-TPE form after the patch embedding: "symmetric" (the paper's), "asymmetric" (a decay per
            direction) or "none".
    """

    def __init__(
        self,
        preset: str | None = "lightnet_tiny",
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        lrpe: str = "rotary",
        tpe: str = "symmetric",
    ) -> None:
        super().__init__()
        size = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads}
        embed_dim, depth, num_heads = fill_from_preset(LightNet, preset, **size).values()
        self.preset = preset
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.grad_checkpointing = grad_checkpointing

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_tpe = None if tpe == "none" else MDTPE(embed_dim, num_heads, num_axes=2, form=tpe)
        self.pos_lrpe = None if lrpe == "none" else MDLRPE(embed_dim // num_heads, num_axes=2, form=lrpe)
        # Python floats on any default device: the model can be built on the meta device (sizes, deferred init).
        drop_path = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            LightNetBlock(embed_dim, num_heads, drop_path=drop_path[i], qkv_bias=qkv_bias, lrpe=lrpe)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Linear layers: truncated normal (std 0.02) and zero bias, as in ViT/DeiT.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Patch embedding: like a linear layer over the flattened patch.
        nn.init.trunc_normal_(self.patch_embed.proj.weight.view(self.embed_dim, -1), std=0.02)
        nn.init.zeros_(self.patch_embed.proj.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW should not decay besides biases and norms: the positional decays of MD-TPE."""
        return set() if self.pos_tpe is None else {"pos_tpe.decay_logit"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x, grid = self.patch_embed(x)  # [B, N, D], (h, w)
        if self.pos_tpe is not None:
            x = x + self.pos_tpe(x, grid)
        angles = None if self.pos_lrpe is None else self.pos_lrpe(grid)  # [N, K] (cosine) or [N, K/2] (rotary)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, angles, use_reentrant=False)
            else:
                x = block(x, angles)
        return self.norm(x)  # [B, N, D]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(dim=1))  # [B, D], mean over tokens
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(LightNet)
def lightnet_tiny() -> dict[str, int]:
    """LightNet at DeiT-Ti width: D=192, H=3, L=12 (patch 16, 224² by default)."""
    return {"embed_dim": 192, "depth": 12, "num_heads": 3}


@register_model(LightNet)
def lightnet_small() -> dict[str, int]:
    """LightNet at DeiT-S width: D=384, H=6, L=12 (patch 16, 224² by default)."""
    return {"embed_dim": 384, "depth": 12, "num_heads": 6}


@register_model(LightNet)
def lightnet_base() -> dict[str, int]:
    """LightNet at DeiT-B width: D=768, H=12, L=12 (patch 16, 224² by default)."""
    return {"embed_dim": 768, "depth": 12, "num_heads": 12}
