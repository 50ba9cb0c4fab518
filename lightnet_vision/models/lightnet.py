"""LightNet image classifier (arXiv 2405.21022) with timm's model interface.

Patch embedding → MD-TPE over the (h, w) patch grid → L LightNet blocks (additive attention with MD-LRPE, GLU) →
LayerNorm → mean pool → linear head. No parameter depends on the input size: a model trained at 224² runs at
any size divisible by the patch, without interpolation. The layout and presets: docs/method.md#classifier.

timm's model contract is kept (tests/models/test_timm_contract.py): `pretrained_cfg`, `global_pool`,
`reset_classifier(n, global_pool)`, `group_matcher` (layer-wise lr decay), `forward_intermediates` and `feature_info`
(feature maps on the patch grid, for detection and segmentation necks); `lightnet_vision.models.timm_models` puts the
presets in timm's registry. Export: `torch.export` and `torch.onnx.export(..., dynamo=True)` with dynamic height and
width give a graph that runs at any patch grid of at least 2×2; tracing (`torch.jit.trace`, `torch.onnx.export(...,
dynamo=False)`) fixes the grid of the example input and gives wrong logits at another size.
"""

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightnet_vision.layers import MDLRPE, MDTPE, LightNetBlock, PatchEmbed
from lightnet_vision.models._registry import fill_from_preset, register_model
from lightnet_vision.models.hub import HubMixin

# ImageNet's channel statistics: the normalisation of the ImageNet recipe and timm's default.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GLOBAL_POOLS = ("avg", "max", "avgmax", "")


class LightNet(nn.Module, HubMixin, pipeline_tag="image-classification", tags=["image-classification", "timm"]):
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
        global_pool: How `forward_head` pools the tokens: "avg" (the paper's mean), "max", "avgmax" (their mean),
            or "" (none: the head is applied to every token).
    """

    hub_description = "an image classifier"

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
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        size = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads}
        embed_dim, depth, num_heads = fill_from_preset(LightNet, preset, **size).values()
        _check_pool(global_pool)
        self.preset = preset
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        # timm's names: features after the pooling, and the width the head sees (no pre-logits layer here).
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.global_pool = global_pool
        self.grad_checkpointing = grad_checkpointing
        # Constructor arguments (sizes resolved) for `model_args`; the head's and the pooling's are read live.
        self._arguments = {
            "preset": preset,
            "img_size": img_size,
            "patch_size": patch_size,
            "in_chans": in_chans,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "qkv_bias": qkv_bias,
            "drop_rate": drop_rate,
            "drop_path_rate": drop_path_rate,
            "lrpe": lrpe,
            "tpe": tpe,
        }

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
        # timm's feature description: one map per block, on the patch grid.
        self.feature_info = [
            {"module": f"blocks.{i}", "num_chs": embed_dim, "reduction": patch_size} for i in range(depth)
        ]
        self.pretrained_cfg = self.default_cfg = self.input_config(self.architecture, in_chans, img_size, num_classes)
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

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups, first to last (layer-wise lr decay): the stem (patch embedding, MD-TPE), each
        block, then the final norm with the last block; the head, unmatched, is the last group."""
        return {"stem": r"^patch_embed|^pos_tpe", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    @staticmethod
    def input_config(
        architecture: str = "lightnet_tiny", in_chans: int = 3, img_size: int = 224, num_classes: int = 1000
    ) -> dict[str, Any]:
        """timm's pretrained_cfg of a model built with these arguments: its input size and channels, how to resize
        and crop, the normalisation (ImageNet's for 3 channels, none otherwise, until a task sets its data's), first
        layer and head. No weights are published, so it names no source."""
        three = in_chans == 3
        return {
            "architecture": architecture,
            "input_size": (in_chans, img_size, img_size),
            "fixed_input_size": False,
            "interpolation": "bilinear",  # what the DataModules' resize uses
            "crop_pct": 0.875,
            "crop_mode": "center",
            "mean": IMAGENET_MEAN if three else (0.0,) * in_chans,
            "std": IMAGENET_STD if three else (1.0,) * in_chans,
            "num_classes": num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "apache-2.0",
            "paper_ids": "arXiv:2405.21022",
        }

    @property
    def architecture(self) -> str:
        """The registered name of this model: its preset (lightnet_tiny when built from explicit sizes)."""
        return self.preset or "lightnet_tiny"

    def model_args(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this model as it is now (the head and the pooling included)."""
        return {
            **self._arguments,
            "num_classes": self.num_classes,
            "global_pool": self.global_pool,
            "grad_checkpointing": self.grad_checkpointing,
        }

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh head of `num_classes` (0: none, pooled features out) and, when given, another pooling."""
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        device = self.patch_embed.proj.weight.device
        self.head = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def _tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int], Tensor | None]:
        if torch.jit.is_tracing():
            warnings.warn(
                "a traced LightNet holds the patch grid of its example input and gives wrong outputs at another "
                "size; export with torch.export or torch.onnx.export(dynamo=True) and dynamic height/width instead",
                stacklevel=3,
            )
        x, grid = self.patch_embed(x)  # [B, N, D], (h, w)
        if self.pos_tpe is not None:
            x = x + self.pos_tpe(x, grid)
        angles = None if self.pos_lrpe is None else self.pos_lrpe(grid)  # [N, K] (cosine) or [N, K/2] (rotary)
        return x, grid, angles

    def _block(self, block: nn.Module, x: Tensor, angles: Tensor | None) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, angles, use_reentrant=False)
        return block(x, angles)

    def forward_features(self, x: Tensor) -> Tensor:
        x, _, angles = self._tokens(x)
        for block in self.blocks:
            x = self._block(block, x, angles)
        return self.norm(x)  # [B, N, D]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's feature extraction: the outputs of the blocks `indices` (an int n: the last n; a list: those
        indices, negative from the end; None: all), as maps `[B, D, h, w]` on the patch grid ("NCHW") or tokens
        `[B, N, D]` ("NLC"), with the final norm applied when `norm`. Returns them alone (`intermediates_only`) or
        after the final features `[B, N, D]`; `stop_early` skips the blocks after the last one taken."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = take_indices(len(self.blocks), indices)
        batch = x.shape[0]
        x, (h, w), angles = self._tokens(x)
        intermediates = []
        for i, block in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = self._block(block, x, angles)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        if output_fmt == "NCHW":
            intermediates = [y.reshape(batch, h, w, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drops the blocks after the last of `indices` (and the final norm and head when asked): what a feature
        extractor (timm's `features_only`) keeps. Returns the indices, counted from the first block."""
        take, last = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        self.feature_info = self.feature_info[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)  # [B, D], mean over tokens
        elif self.global_pool == "max":
            x = x.amax(dim=1)
        elif self.global_pool == "avgmax":
            x = 0.5 * (x.mean(dim=1) + x.amax(dim=1))
        x = self.head_drop(x)  # [B, D], or [B, N, D] without pooling
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def take_indices(num_blocks: int, indices: int | list[int] | None) -> tuple[list[int], int]:
    """timm's `feature_take_indices`: the blocks to take (None: all; an int n: the last n; a list: those, negative
    counted from the end) and the largest of them."""
    if indices is None:
        indices = num_blocks
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"cannot take the last {indices} of {num_blocks} blocks")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        take = [num_blocks + i if i < 0 else i for i in indices]
        if not take or any(not 0 <= i < num_blocks for i in take):
            raise ValueError(f"block indices {list(indices)} are out of range for {num_blocks} blocks")
    return take, max(take)


def _check_pool(global_pool: str) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")


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
