"""The harness of benchmarks/models.py: builds (and compiles) the two sides of a pair, times their calls
interleaved, measures the peak memory of a train step, and turns one pair at one size and mode into a row.

How and why it measures as it does is in benchmarks/models.py's docstring (its `--help`).
"""

import ctypes
import functools
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.peers import (
    GRAD_CHECKPOINTING,
    PATCH_SIZE,
    UNITS,
    build_model,
    make_inputs,
    run_forward,
    training_loss,
)
from benchmarks.saved_bytes import model_saved_bytes

MODES = ("train", "inference")
# A pair whose first call takes longer than this is timed with one warm-up round and at most 3 timed rounds.
SLOW_CALL_SECONDS = 2.0
SLOW_CALL_REPEATS = 3
# Keyword arguments of `nn.Module.compile` with `--compile`; empty: torch.compile's defaults (inductor).
COMPILE_OPTIONS: dict = {}
COMPILE_SCOPES = {"model": "whole model on both sides", "blocks": "repeated blocks on both sides (regional)"}


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
    """Peak MiB of one step above the memory held before it, measured in this process (how: benchmarks/models.py)."""
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


def saved_mib_per_sample(
    name: str, model: nn.Module, inputs: dict[str, Tensor], batch: int, bf16: bool
) -> float | None:
    """MiB per sample (image, or sequence of a mixer) of the tensors the backward of a train step keeps, counted
    once per storage after its forward (benchmarks/saved_bytes.py); parameters and buffers left out. None for a side
    with gradient checkpointing, whose regions keep what they hold under hooks of their own."""
    if name.endswith(GRAD_CHECKPOINTING):
        return None
    device_type = next(iter(inputs.values())).device.type
    model.train()

    def forward() -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            return run_forward(model, name, inputs)

    return model_saved_bytes(model, forward) / batch / 2**20


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

    saved = {}
    if mode == "train":
        for name in timings:
            if name in notes:
                continue
            try:
                saved[name] = saved_mib_per_sample(name, models[name], inputs, batch, settings.bf16)
            except torch.OutOfMemoryError as error:
                notes[name] = f"saved bytes not counted ({type(error).__name__})"
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
        "lightnet_saved_mib": saved.get(lightnet),
        "peer_saved_mib": saved.get(peer),
        "saved_ratio": ratio(saved.get(lightnet), saved.get(peer)),
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
