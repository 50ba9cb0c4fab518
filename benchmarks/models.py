"""LightNet against the softmax-attention models it replaces, side by side in one run: throughput, scaling, memory.

    python benchmarks/models.py                  # all three families (about 12 min on an idle 2-core CPU)
    python benchmarks/models.py --only mixer --sizes 16 32 64 128 --repeats 7
    python benchmarks/models.py --quick          # smoke test: tiny sizes, one timed call
    python benchmarks/models.py --device cuda --bf16 --compile blocks --modes train --only denoiser \
        --pairs lightnet_dit_s_2 lightnet_dit_xl_2 --sizes 32   # what benchmarks/gpu_check.sh runs, among others
    make bench                                   # installs the `bench` extra (timm, matplotlib), then runs this

| family     | LightNet (arXiv 2405.21022)   | peer                                               | size: side of   |
|------------|-------------------------------|----------------------------------------------------|-----------------|
| classifier | lightnet_tiny, lightnet_small | timm deit_tiny_patch16_224, deit_small_patch16_224 | image, 224..896 |
| denoiser   | lightnet_dit_s_2              | diffusers DiTTransformer2DModel as DiT-S/2         | latent, 32..128 |
|            | lightnet_dit_xl_2 (`--pairs`) | diffusers DiTTransformer2DModel as DiT-XL/2        |                 |
| mixer      | LightNetAttention + MD-LRPE   | qkv Linear, scaled_dot_product_attention, proj     | grid, 16..128   |

The mixers come at the widths of the tiny and small classifiers (192 with 3 heads, 384 with 6); the denoisers
predict 4 channels (no learned variance) for 1000 classes. The XL pair (28 layers, 1152 wide, 16 heads: about 675M
parameters a side) runs only when `--pairs` names it, so that the default CPU run stays as it was; `--pairs` takes
LightNet names and keeps only their pairs (e.g. `--pairs lightnet_tiny lightnet_dit_xl_2`).

Mode `train` is one optimiser step of a model (forward, cross-entropy against the labels or MSE against the noise,
backward, AdamW) and forward + backward of a mixer (a fixed upstream gradient, no optimiser); mode `inference` is a
forward in eval mode under `torch.no_grad()`; `--modes` runs one of them only. Throughput is images/s for the models
and tokens/s for the mixers; every ratio is LightNet / peer (throughput above 1: LightNet is faster; memory below 1:
LightNet needs less).

`--compile` compiles both sides the same way with torch.compile's default options, in place (`nn.Module.compile`)
and then times them compiled: `--compile model` (or `--compile` alone) the whole model, as the tasks' `compile: true`
does; `--compile blocks` each block of the model's stack of identical blocks (its ModuleList or Sequential of them;
a model without one, such as a mixer, whole). Identical blocks share one compiled graph, so compiling takes about as
long for 28 blocks as for one: this is the scope that fits a 28-layer DiT-XL/2 into a short GPU check. Every pair is
compiled afresh (`torch._dynamo.reset()` before it, so that no cache limit sends a model back to eager unseen); the
first call of each side and mode compiles and is recorded as `*_compile_s`, outside the timing. A side whose
compilation (or any later call) raises is recorded as skipped with the reason, never a crash, and is not run at the
larger sizes.

Timing: both sides get the same input tensors (seeded), the same dtype (fp32; `--bf16` autocasts the forward to
bf16 on CUDA) and the same number of threads (`torch.set_num_threads`, recorded). Calls alternate A B A B, so a
disturbance of the machine hits both sides alike; warm-up rounds are not timed and the result is the median of the
timed calls. When the first call of either side takes over 2 s, the pair gets one warm-up round and at most 3 timed
rounds. A side that runs out of memory or whose call takes longer than `--max-seconds` is recorded as skipped with
the reason, and is not run at the larger sizes of the family.

Peak memory (mode `train`) is what a step needs above what is resident before it (weights, inputs, AdamW's state):
activations kept for backward, gradients, workspace. On CUDA the timed step itself is run once more after the timing,
then measured on the next step: `max_memory_allocated()` after `reset_peak_memory_stats()`, minus
`memory_allocated()` before the step (the other side's weights are resident too, which the difference leaves out).
On CPU a side is built from scratch (and compiled, with `--compile`), run for one step (which creates the
optimiser state and pages in the code), then measured on a second step. Tracemalloc does not see torch's allocator,
so each CPU measurement runs in a fresh process (memory another model freed cannot be reused unseen): after the
warm-up step, `malloc_trim(0)` returns the free heap to the system, the kernel's peak-RSS counter is reset
(`5 > /proc/self/clear_refs`, Linux only), and the result is the peak RSS during the step (`VmHWM`) minus the RSS
before it (`VmRSS`). That counts what the process really holds, allocator fragmentation and oneDNN buffers included.

On CUDA, models are built on the GPU (on the CPU if that fails) and the default batch holds 8 times as many
tokens as on the CPU (classifier: 64 images at 224², 16 at 448², 4 at 896²), enough to keep the GPU busy.

Output: a table, a CSV (`--out`, default benchmarks/results/models.csv; its `#` lines record the machine, threads,
versions, device, dtype, compilation, command and date; rewritten after every row, so a run that is stopped keeps
what it measured) and a log-log plot of throughput against size beside it (`.png`, at the end).
"""

import argparse
import csv
import ctypes
import datetime
import functools
import importlib.metadata
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightnet_vision.layers import MDLRPE, LightNetAttention
from lightnet_vision.models import create_model

FAMILIES = ("classifier", "denoiser", "mixer")
MODES = ("train", "inference")
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
# A pair whose first call takes longer than this is timed with one warm-up round and at most 3 timed rounds.
SLOW_CALL_SECONDS = 2.0
SLOW_CALL_REPEATS = 3


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


# Keyword arguments of `nn.Module.compile` with `--compile`; empty: torch.compile's defaults (inductor).
COMPILE_OPTIONS: dict = {}
COMPILE_SCOPES = {"model": "whole model on both sides", "blocks": "repeated blocks on both sides (regional)"}
# A LightNet model name with this suffix is built with gradient checkpointing (`--grad-checkpointing`).
GRAD_CHECKPOINTING = "+grad_checkpointing"


def build_model(family: str, name: str, size: int) -> nn.Module:
    """One side of a pair, for inputs of side `size`, with fresh (seeded) weights."""
    torch.manual_seed(0)
    if name.endswith(GRAD_CHECKPOINTING):
        model = build_model(family, name.removesuffix(GRAD_CHECKPOINTING), size)
        model.set_grad_checkpointing(True)
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


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of the model's stacks of identical blocks: children of a ModuleList or Sequential attribute that
    holds at least two modules, all of one class with parameters of the same names and shapes."""
    blocks = []
    for child in model.children():
        if isinstance(child, nn.ModuleList | nn.Sequential) and len(child) > 1 and len(set(map(signature, child))) == 1:
            blocks += list(child)
    return blocks


def signature(module: nn.Module) -> tuple:
    return type(module), tuple((name, tuple(p.shape)) for name, p in module.named_parameters())


def compile_in_place(model: nn.Module, scope: str) -> None:
    """`--compile model`: the whole model; `--compile blocks`: each of its `repeated_blocks` (else the whole)."""
    for module in (repeated_blocks(model) if scope == "blocks" else []) or [model]:
        module.compile(**COMPILE_OPTIONS)


def build_on_device(family: str, name: str, size: int, device: str, compile: str = "") -> nn.Module:
    """`build_model` on `device`: initialised there on CUDA (fast for the XL models), on the CPU if that fails; then
    compiled in place with `compile` "model" or "blocks" (see `compile_in_place`)."""
    model = None
    if device.startswith("cuda"):
        try:
            with torch.device(device):
                model = build_model(family, name, size)
        except Exception:  # e.g. an initialisation that mixes devices: built on the CPU below
            model = None
    if model is None:
        model = build_model(family, name, size)
    model = model.to(device)
    if compile:
        compile_in_place(model, compile)
    return model


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


def make_train_step(
    family: str, name: str, model: nn.Module, inputs: dict[str, Tensor], bf16: bool
) -> Callable[[], None]:
    device_type = next(iter(inputs.values())).device.type
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if family != "mixer" else None
    if family == "mixer":
        # A mixer inside a network also passes a gradient back to its input.
        inputs["tokens"].requires_grad_(True)

    def train_step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            output = run_forward(model, name, inputs)
        training_loss(family, output, inputs).backward()
        if optimizer is not None:
            optimizer.step()
        # Free the gradients: between steps only the weights, the inputs and the optimiser state are held.
        model.zero_grad(set_to_none=True)
        if family == "mixer":
            inputs["tokens"].grad = None

    return train_step


def make_inference_call(name: str, model: nn.Module, inputs: dict[str, Tensor], bf16: bool) -> Callable[[], None]:
    device_type = next(iter(inputs.values())).device.type

    def infer() -> None:
        with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            run_forward(model, name, inputs)

    return infer


def train_step_from_scratch(
    family: str, name: str, size: int, batch: int, device: str, bf16: bool, compile: str = ""
) -> Callable:
    """A train step with its own model and inputs; picklable through functools.partial, for the memory process."""
    model = build_on_device(family, name, size, device, compile).train()
    return make_train_step(family, name, model, make_inputs(family, size, batch, device, name), bf16)


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    skipped: str = ""


class CallFailed(RuntimeError):
    """A call that raised (other than running out of memory): its side is skipped with this message as the reason."""


def guarded(call: Callable[[], None], what: str) -> Callable[[], None]:
    """`call`, with any error but out-of-memory turned into `CallFailed("{what} failed (...)")`."""

    def run() -> None:
        try:
            call()
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            raise CallFailed(f"{what} failed ({type(error).__name__}: {first_line(error)})") from error

    return run


def first_line(error: BaseException, width: int = 100) -> str:
    return (str(error).strip().splitlines() or [""])[0][:width]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int, device: str, max_seconds: float
) -> tuple[dict[str, Timing], int, int]:
    """Time the calls round by round, one call of each per round, in order (A B A B ...); warm-up rounds not kept.

    Returns the timings by name and the warm-up and timed rounds that were run (fewer for slow calls).
    """
    timings = {name: Timing() for name in calls}
    round_index = 0
    while round_index < warmup + repeats:
        round_seconds = []
        for name, call in calls.items():
            timing = timings[name]
            if timing.skipped:
                continue
            try:
                synchronize(device)
                start = time.perf_counter()
                call()
                synchronize(device)
                seconds = time.perf_counter() - start
            except torch.OutOfMemoryError as error:
                timing.seconds, timing.skipped = [], f"out of memory ({first_line(error, 80)})"
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            except CallFailed as error:
                timing.seconds, timing.skipped = [], str(error)
                continue
            if seconds > max_seconds:
                timing.seconds, timing.skipped = [], f"one call took {seconds:.0f} s > --max-seconds {max_seconds:g}"
                continue
            round_seconds.append(seconds)
            if round_index >= warmup:
                timing.seconds.append(seconds)
        if round_index == 0 and max(round_seconds, default=0.0) > SLOW_CALL_SECONDS:
            warmup, repeats = min(warmup, 1), min(repeats, SLOW_CALL_REPEATS)
        round_index += 1
    return timings, warmup, repeats


def throughput(seconds: list[float], items_per_call: int) -> float | None:
    """Items per second of the median call; None without timings."""
    return items_per_call / statistics.median(seconds) if seconds else None


def spread(seconds: list[float]) -> float | None:
    """(slowest - fastest) / median of the timed calls: how much the machine disturbed them."""
    return (max(seconds) - min(seconds)) / statistics.median(seconds) if seconds else None


def ratio(lightnet: float | None, peer: float | None) -> float | None:
    """LightNet / peer, None where either is missing."""
    return lightnet / peer if lightnet is not None and peer else None


def rss_kib(field_name: str) -> int:
    """A `kB` field of /proc/self/status: `VmRSS` (resident now) or `VmHWM` (peak resident since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def peak_step_memory_here(build_step: Callable[[], Callable[[], None]], device: str, threads: int) -> float:
    """Peak MiB of one step above the memory held before it, measured in this process (see the module docstring)."""
    torch.set_num_threads(threads)
    step = build_step()
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib("VmRSS")
    step()
    return (rss_kib("VmHWM") - before) / 2**10


def measure_peak_memory(build_step: Callable[[], Callable[[], None]], device: str, threads: int) -> float:
    """Peak MiB of a train step: in this process on CUDA, in a fresh process on CPU."""
    if device.startswith("cuda"):
        return peak_step_memory_here(build_step, device, threads)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(peak_step_memory_here, build_step, device, threads).result()


@dataclass(frozen=True)
class Settings:
    device: str
    bf16: bool
    threads: int
    repeats: int
    warmup: int
    max_seconds: float
    measure_memory: bool = True
    compile: str = ""  # "", "model" or "blocks"
    modes: tuple[str, ...] = MODES


def measure_pair(
    family: str,
    mode: str,
    size: int,
    batch: int,
    models: dict[str, nn.Module],
    inputs: dict[str, Tensor],
    settings: Settings,
    skipped_before: dict[tuple[str, str], str],
) -> dict:
    """Time (and in mode `train` measure the memory of) the two models of a pair; one row of the results."""
    lightnet, peer = list(models)
    calls, notes = {}, {}
    for name, model in models.items():
        if (name, mode) in skipped_before:
            notes[name] = skipped_before[(name, mode)]
            continue
        model.train(mode == "train")
        if mode == "train":
            calls[name] = make_train_step(family, name, model, inputs, settings.bf16)
        else:
            calls[name] = make_inference_call(name, model, inputs, settings.bf16)
    compile_seconds = {}
    if settings.compile:
        calls = {name: guarded(call, "torch.compile") for name, call in calls.items()}
        compile_seconds = first_calls(calls, settings.device, notes)
    timings, warmup, repeats = time_interleaved(
        calls, settings.repeats, settings.warmup, settings.device, settings.max_seconds
    )
    for name, timing in timings.items():
        if timing.skipped:
            notes[name] = timing.skipped
    for name, note in notes.items():
        skipped_before.setdefault((name, mode), f"skipped since {size}: {note}")

    peaks = {}
    if mode == "train" and settings.measure_memory:
        for name in timings:
            if name in notes:
                continue
            if settings.device.startswith("cuda"):
                build_step = functools.partial(lambda call: call, calls[name])  # the timed step, measured in place
            else:
                build_step = functools.partial(
                    train_step_from_scratch, family, name, size, batch, settings.device, settings.bf16, settings.compile
                )
            try:
                peaks[name] = measure_peak_memory(build_step, settings.device, settings.threads)
            except (torch.OutOfMemoryError, CallFailed, BrokenProcessPool, OSError) as error:
                notes[name] = f"memory not measured ({type(error).__name__})"

    items_per_call = batch * (size // PATCH_SIZE[family]) ** 2 if family == "mixer" else batch
    lightnet_seconds, peer_seconds = (timings.get(name, Timing()).seconds for name in (lightnet, peer))
    lightnet_throughput = throughput(lightnet_seconds, items_per_call)
    peer_throughput = throughput(peer_seconds, items_per_call)
    return {
        "family": family,
        "mode": mode,
        "size": size,
        "tokens": (size // PATCH_SIZE[family]) ** 2,
        "batch": batch,
        "lightnet": lightnet,
        "peer": peer,
        "lightnet_params_m": parameter_millions(models[lightnet]),
        "peer_params_m": parameter_millions(models[peer]),
        "unit": UNITS[family],
        "lightnet_throughput": lightnet_throughput,
        "peer_throughput": peer_throughput,
        "throughput_ratio": ratio(lightnet_throughput, peer_throughput),
        "lightnet_spread": spread(lightnet_seconds),
        "peer_spread": spread(peer_seconds),
        "lightnet_peak_mib": peaks.get(lightnet),
        "peer_peak_mib": peaks.get(peer),
        "memory_ratio": ratio(peaks.get(lightnet), peaks.get(peer)),
        "compile": settings.compile or "eager",
        "lightnet_compile_s": compile_seconds.get(lightnet),
        "peer_compile_s": compile_seconds.get(peer),
        "warmup": warmup,
        "repeats": repeats,
        "skipped": "; ".join(f"{name}: {note}" for name, note in notes.items()),
    }


def first_calls(calls: dict[str, Callable[[], None]], device: str, notes: dict[str, str]) -> dict[str, float]:
    """Run each call once, untimed for the throughput: with `--compile` this call compiles. Returns its seconds by
    name; a call that fails is removed from `calls` and its reason put in `notes`."""
    seconds = {}
    for name, call in list(calls.items()):
        try:
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            seconds[name] = time.perf_counter() - start
        except (torch.OutOfMemoryError, CallFailed) as error:
            out_of_memory = isinstance(error, torch.OutOfMemoryError)
            notes[name] = f"out of memory ({first_line(error, 80)})" if out_of_memory else str(error)
            del calls[name]
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return seconds


def parameter_millions(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def default_batch_size(family: str, size: int, device: str = "cpu") -> int:
    tokens = TOKENS_PER_CALL[family] * (CUDA_TOKEN_SCALE if device.startswith("cuda") else 1)
    return max(1, tokens // (size // PATCH_SIZE[family]) ** 2)


def run_family(
    family: str,
    sizes: list[int],
    batch_size: int | None,
    settings: Settings,
    grad_checkpointing: bool = False,
    pairs: list[tuple[str, str]] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Every pair of a family (`pairs`, default `PAIRS[family]`) at every size, in each mode of the settings; sizes in
    increasing order. `on_row` is called with each row as soon as it is measured."""
    rows = []
    skipped_before: dict[tuple[str, str], str] = {}
    for size in sorted(sizes):
        batch = batch_size or default_batch_size(family, size, settings.device)
        for lightnet, peer in PAIRS[family] if pairs is None else pairs:
            if grad_checkpointing and family != "mixer":
                lightnet += GRAD_CHECKPOINTING
            if settings.compile:
                torch._dynamo.reset()  # fresh caches for every pair: no recompile limit is ever reached
            inputs = make_inputs(family, size, batch, settings.device, lightnet)
            device, compile = settings.device, settings.compile
            models = {name: build_on_device(family, name, size, device, compile) for name in (lightnet, peer)}
            for mode in settings.modes:
                row = measure_pair(family, mode, size, batch, models, inputs, settings, skipped_before)
                print(format_row(row), flush=True)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
            del models, inputs
            if settings.device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


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


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_run(settings: Settings, command: str) -> dict[str, str]:
    """What the numbers depend on; printed and written at the top of the CSV."""
    device = torch.cuda.get_device_name(settings.device) if settings.device.startswith("cuda") else "cpu"
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        "device": f"{settings.device} ({device})",
        "threads": str(settings.threads),
        "dtype": "bf16 autocast" if settings.bf16 else "fp32",
        "compile": f"torch.compile of the {COMPILE_SCOPES[settings.compile]}" if settings.compile else "eager",
        "versions": ", ".join(
            f"{package} {importlib.metadata.version(package)}" for package in ("torch", "timm", "diffusers")
        ),
        "memory": "peak above the held weights, inputs and optimiser state: "
        + ("CUDA max_memory_allocated" if settings.device.startswith("cuda") else "peak RSS in a fresh process"),
        "ratios": "LightNet / peer",
    }


HEADER = (
    f"{'family':<10} {'mode':<9} {'size':>4} {'batch':>5}  {'LightNet':<18} {'peer':<22} "
    f"{'LN thr':>9} {'peer thr':>9} {'ratio':>6}  {'LN MiB':>7} {'peer MiB':>8} {'ratio':>6}  skipped"
)


def format_number(value: float | None, digits: int = 4) -> str:
    """At least `digits` significant digits, no exponent: 18840, 12.83, 0.614 (digits=3)."""
    if value is None:
        return ""
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value)))) if value else 0
    return f"{value:.{decimals}f}"


def format_row(row: dict) -> str:
    return (
        f"{row['family']:<10} {row['mode']:<9} {row['size']:>4} {row['batch']:>5}  {row['lightnet']:<18} "
        f"{row['peer']:<22} {format_number(row['lightnet_throughput']):>9} {format_number(row['peer_throughput']):>9} "
        f"{format_number(row['throughput_ratio'], 3):>6}  {format_number(row['lightnet_peak_mib']):>7} "
        f"{format_number(row['peer_peak_mib']):>8} {format_number(row['memory_ratio'], 3):>6}  {row['skipped']}"
    )


def write_csv(rows: list[dict], description: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        for key, value in description.items():
            handle.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {key: format_number(value) if isinstance(value, float) else value for key, value in row.items()}
            )


def draw_plot(rows: list[dict], path: Path, title: str) -> None:
    """Throughput against size, log-log: one column of panels per family, train above inference (those measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    families = [family for family in FAMILIES if any(row["family"] == family for row in rows)]
    modes = [mode for mode in MODES if any(row["mode"] == mode for row in rows)]
    figure, axes = plt.subplots(len(modes), len(families), figsize=(5 * len(families), 4 * len(modes)), squeeze=False)
    for column, family in enumerate(families):
        sizes = sorted({row["size"] for row in rows if row["family"] == family})
        for line, mode in enumerate(modes):
            axis = axes[line][column]
            measured = {(row["lightnet"], row["peer"]) for row in rows if row["family"] == family}
            for color, (lightnet, peer) in enumerate(sorted(measured, key=pair_order(family))):
                pair_rows = [
                    r for r in rows if r["family"] == family and r["mode"] == mode and r["lightnet"] == lightnet
                ]
                for side, name, style in (("lightnet", lightnet, "-"), ("peer", peer, "--")):
                    points = [(r["size"], r[f"{side}_throughput"]) for r in pair_rows if r[f"{side}_throughput"]]
                    if points:
                        axis.plot(*zip(*points, strict=True), style, marker="o", color=f"C{color}", label=name)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xticks(sizes, [f"{size}²" for size in sizes])
            axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            axis.set_title(f"{family}, {'forward + backward' if family == 'mixer' and mode == 'train' else mode}")
            axis.set_xlabel(SIZE_LABELS[family])
            axis.set_ylabel(UNITS[family])
            axis.grid(True, which="major", alpha=0.3)
            axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def pair_order(family: str) -> Callable[[tuple[str, str]], int]:
    """Sort key of a family's measured pairs: their order in `ALL_PAIRS` (a `+grad_checkpointing` LightNet too)."""
    order = [lightnet for lightnet, _ in ALL_PAIRS[family]]
    return lambda pair: order.index(pair[0].removesuffix(GRAD_CHECKPOINTING))


def parse_batch_sizes(values: list[str]) -> dict[str, int]:
    """`classifier=4 mixer=1` → {"classifier": 4, "mixer": 1}."""
    batch_sizes = {}
    for value in values:
        family, _, number = value.partition("=")
        if family not in FAMILIES or not number.isdigit() or int(number) < 1:
            raise SystemExit(f"--batch-size takes FAMILY=N with FAMILY one of {', '.join(FAMILIES)}; got {value!r}")
        batch_sizes[family] = int(number)
    return batch_sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="families to run")
    parser.add_argument("--sizes", type=int, nargs="+", help="sides to run (with a single --only family)")
    lightnet_names = [lightnet for family in FAMILIES for lightnet, _ in ALL_PAIRS[family]]
    parser.add_argument(
        "--pairs",
        nargs="+",
        choices=lightnet_names,
        metavar="LIGHTNET",
        help=f"only the pairs of these LightNet models, XL included ({', '.join(lightnet_names)})",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to run")
    parser.add_argument(
        "--batch-size",
        nargs="+",
        default=[],
        metavar="FAMILY=N",
        help="one batch size for every size of a family (default: about a fixed token count)",
    )
    parser.add_argument("--repeats", type=int, help="timed rounds (default 5; 1 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 2; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--bf16", action="store_true", help="autocast the forward to bf16 (CUDA)")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="model",
        default="",
        choices=list(COMPILE_SCOPES),
        help="torch.compile both sides: the whole model (default) or each repeated block",
    )
    parser.add_argument("--max-seconds", type=float, default=120.0, help="skip a side whose call takes longer")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument(
        "--grad-checkpointing", action="store_true", help="LightNet models recompute their blocks in the backward"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, batch 2, one timed round: a smoke test")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/models.csv"), help="CSV; PNG beside")
    args = parser.parse_args(argv)
    if args.sizes and len(args.only) != 1:
        parser.error("--sizes needs exactly one family in --only")
    if args.bf16 and not args.device.startswith("cuda"):
        parser.error("--bf16 is for CUDA; CPU runs are fp32")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/models.py", *(sys.argv[1:] if argv is None else argv)])
    default_repeats, default_warmup = (1, 1) if args.quick else (5, 2)
    settings = Settings(
        device=args.device,
        bf16=args.bf16,
        threads=args.threads,
        repeats=default_repeats if args.repeats is None else args.repeats,
        warmup=default_warmup if args.warmup is None else args.warmup,
        max_seconds=args.max_seconds,
        measure_memory=not args.no_memory,
        compile=args.compile,
        modes=tuple(mode for mode in MODES if mode in args.modes),
    )
    torch.set_num_threads(settings.threads)
    batch_sizes = parse_batch_sizes(args.batch_size)
    pairs = select_pairs(args.only, args.pairs)
    description = describe_run(settings, command)
    for key, value in description.items():
        print(f"{key}: {value}")
    print(HEADER, flush=True)

    rows = []

    def keep(row: dict) -> None:
        rows.append(row)
        write_csv(rows, description, args.out)  # after every row: a stopped run keeps what it measured

    for family in args.only:
        sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)[family]
        batch_size = batch_sizes.get(family, QUICK_BATCH_SIZE if args.quick else None)
        run_family(family, sizes, batch_size, settings, args.grad_checkpointing, pairs[family], keep)
    if not rows:
        raise SystemExit("no pair was measured")
    plot_path = args.out.with_suffix(".png")
    draw_plot(rows, plot_path, f"{description['device']}, {description['threads']} threads, {description['dtype']}")
    print(f"wrote {args.out} and {plot_path}")
    return rows


if __name__ == "__main__":
    main()
