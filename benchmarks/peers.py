"""The peer catalogue of benchmarks/models.py: which LightNet model is measured against which softmax-attention
model, at which sizes and batches, how each side is built, and what it is fed and trained on.

The method of the measurement (timing, memory) is in benchmarks/models.py's docstring (its `--help`).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightnet_vision.layers import MDLRPE, LightNetAttention
from lightnet_vision.models import create_model

FAMILIES = ("classifier", "denoiser", "mixer")
# (LightNet, peer) in each family: the pairs of a default run...
PAIRS = {
    "classifier": [("lightnet_tiny", "deit_tiny_patch16_224"), ("lightnet_small", "deit_small_patch16_224")],
    "denoiser": [("lightnet_dit_s_2", "diffusers_dit_s_2")],
    "mixer": [
        ("lightnet_attention_tiny", "softmax_attention_tiny"),
        ("lightnet_attention_small", "softmax_attention_small"),
    ],
}
# ...and those that run only when `--pairs` names them.
EXTRA_PAIRS = {"classifier": [], "denoiser": [("lightnet_dit_xl_2", "diffusers_dit_xl_2")], "mixer": []}
ALL_PAIRS = {family: PAIRS[family] + EXTRA_PAIRS[family] for family in FAMILIES}
SIZES = {"classifier": [224, 448, 896], "denoiser": [32, 64, 128], "mixer": [16, 32, 64, 128]}
QUICK_SIZES = {"classifier": [32, 64], "denoiser": [8, 16], "mixer": [4, 8]}
QUICK_BATCH_SIZE = 2
PATCH_SIZE = {"classifier": 16, "denoiser": 2, "mixer": 1}
# Default batch: as many samples as hold about this many tokens, at least one (classifier: 8 images at 224², 2 at
# 448², 1 at 896²). It keeps every call long enough to time and the full CPU run near 12 minutes.
TOKENS_PER_CALL = {"classifier": 8 * 14**2, "denoiser": 8 * 16**2, "mixer": 16 * 16**2}
# On CUDA the default batch holds this many times as many tokens.
CUDA_TOKEN_SCALE = 8
UNITS = {"classifier": "images/s", "denoiser": "images/s", "mixer": "tokens/s"}
SIZE_LABELS = {"classifier": "image side", "denoiser": "latent side", "mixer": "token grid side"}
NUM_CLASSES = 1000
NUM_TIMESTEPS = 1000
LATENT_CHANNELS = 4
# (width, heads) of the mixers, as in the tiny and small classifiers (DeiT-Ti and DeiT-S): heads of 64 channels.
MIXER_SHAPES = {"tiny": (192, 3), "small": (384, 6)}
# The diffusers peers of the denoisers, as DiT's configurations: (layers, heads, head dim).
DIFFUSERS_DIT = {"diffusers_dit_s_2": (12, 6, 64), "diffusers_dit_xl_2": (28, 16, 72)}
# A model name with this suffix is built with its own gradient checkpointing (`--grad-checkpointing`).
GRAD_CHECKPOINTING = "+grad_checkpointing"


class SoftmaxAttention(nn.Module):
    """The mixer's peer: multi-head softmax attention as in ViT and DiT, without positions."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        # No qkv bias, as in LightNetAttention.
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, n, dim = x.shape
        qkv = self.qkv(x).reshape(batch, n, 3, self.num_heads, dim // self.num_heads)  # [B, N, 3, H, K]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × [B, H, N, K]
        o = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, K]
        return self.proj(o.transpose(1, 2).reshape(batch, n, dim))  # [B, N, D]


def build_model(family: str, name: str, size: int) -> nn.Module:
    """One side of a pair, for inputs of side `size`, with fresh (seeded) weights."""
    torch.manual_seed(0)
    if name.endswith(GRAD_CHECKPOINTING):
        model = build_model(family, name.removesuffix(GRAD_CHECKPOINTING), size)
        enable_grad_checkpointing(model)
        return model
    if family == "classifier" and name.startswith("lightnet"):
        return create_model(name, img_size=size, num_classes=NUM_CLASSES)
    if family == "classifier":
        import timm

        # timm's DeiT has a learned position table for one image size, hence img_size.
        return timm.create_model(name, pretrained=False, img_size=size, num_classes=NUM_CLASSES)
    if name.startswith("lightnet_dit"):
        return create_model(
            name, input_size=size, in_channels=LATENT_CHANNELS, num_classes=NUM_CLASSES, learn_sigma=False
        )
    if name in DIFFUSERS_DIT:
        from diffusers import DiTTransformer2DModel

        # DiT-S/2: 12 layers of 6 heads × 64, DiT-XL/2: 28 layers of 16 heads × 72; out_channels = in_channels is
        # DiT's learn_sigma=False.
        num_layers, num_heads, head_dim = DIFFUSERS_DIT[name]
        return DiTTransformer2DModel(
            num_layers=num_layers,
            num_attention_heads=num_heads,
            attention_head_dim=head_dim,
            patch_size=2,
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            sample_size=size,
            num_embeds_ada_norm=NUM_CLASSES,
        )
    if name.startswith("lightnet_attention"):
        return LightNetAttention(*mixer_shape(name))
    if name.startswith("softmax_attention"):
        return SoftmaxAttention(*mixer_shape(name))
    raise ValueError(f"no model {name!r} in family {family!r}")


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Each side's own gradient checkpointing of its blocks: `set_grad_checkpointing` (LightNet, timm) or
    `enable_gradient_checkpointing` (diffusers)."""
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    elif hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    else:
        raise ValueError(f"{type(model).__name__} has no gradient checkpointing")


def mixer_shape(name: str) -> tuple[int, int]:
    """(width, heads) of a mixer from the suffix of its name, e.g. `lightnet_attention_tiny`."""
    return MIXER_SHAPES[name.rsplit("_", 1)[1]]


def make_inputs(family: str, size: int, batch: int, device: str, name: str = "") -> dict[str, Tensor]:
    """The tensors both sides of a pair are fed, the same for every call (`name`: either side, for a mixer's width)."""
    generator = torch.Generator().manual_seed(0)
    if family == "classifier":
        inputs = {
            "images": torch.randn(batch, 3, size, size, generator=generator),
            "labels": torch.randint(0, NUM_CLASSES, (batch,), generator=generator),
        }
    elif family == "denoiser":
        inputs = {
            "latents": torch.randn(batch, LATENT_CHANNELS, size, size, generator=generator),
            "timesteps": torch.randint(0, NUM_TIMESTEPS, (batch,), generator=generator),
            "labels": torch.randint(0, NUM_CLASSES, (batch,), generator=generator),
            "noise": torch.randn(batch, LATENT_CHANNELS, size, size, generator=generator),
        }
    else:
        n = size * size
        width, heads = mixer_shape(name)
        inputs = {
            "tokens": torch.randn(batch, n, width, generator=generator),
            # The MD-LRPE angles of a square grid, as the classifier computes them once for all its blocks.
            "angles": MDLRPE(width // heads, num_axes=2)((size, size)),  # [N, K]
            "upstream": torch.randn(batch, n, width, generator=generator),
        }
    return {key: value.to(device) for key, value in inputs.items()}


def run_forward(model: nn.Module, name: str, inputs: dict[str, Tensor]) -> Tensor:
    name = name.removesuffix(GRAD_CHECKPOINTING)
    if "images" in inputs:
        return model(inputs["images"])  # [B, classes]
    if name in DIFFUSERS_DIT:
        latents, timesteps, labels = inputs["latents"], inputs["timesteps"], inputs["labels"]
        return model(latents, timestep=timesteps, class_labels=labels, return_dict=False)[0]  # [B, C, H, W]
    if "latents" in inputs:
        return model(inputs["latents"], inputs["timesteps"], inputs["labels"])  # [B, C, H, W]
    if name.startswith("lightnet_attention"):
        return model(inputs["tokens"], inputs["angles"])  # [B, N, D]
    return model(inputs["tokens"])  # [B, N, D]


def training_loss(family: str, output: Tensor, inputs: dict[str, Tensor]) -> Tensor:
    if family == "classifier":
        return F.cross_entropy(output.float(), inputs["labels"])
    if family == "denoiser":
        return F.mse_loss(output.float(), inputs["noise"])
    # Its gradient with respect to the output is the fixed upstream gradient.
    return (output.float() * inputs["upstream"]).sum()


def default_batch_size(family: str, size: int, device: str = "cpu") -> int:
    tokens = TOKENS_PER_CALL[family] * (CUDA_TOKEN_SCALE if device.startswith("cuda") else 1)
    return max(1, tokens // (size // PATCH_SIZE[family]) ** 2)


def select_pairs(families: list[str], names: list[str] | None) -> dict[str, list[tuple[str, str]]]:
    """The pairs of each family: `PAIRS` without `names`, else the pairs of `ALL_PAIRS` whose LightNet is named."""
    if names is None:
        return {family: PAIRS[family] for family in families}
    selected = {family: [pair for pair in ALL_PAIRS[family] if pair[0] in names] for family in families}
    for family, pairs in selected.items():
        if not pairs:
            choices = ", ".join(lightnet for lightnet, _ in ALL_PAIRS[family])
            raise SystemExit(f"--pairs names no pair of the family {family}; its LightNet models: {choices}")
    return selected
