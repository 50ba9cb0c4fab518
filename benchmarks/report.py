"""The report of benchmarks/models.py: the description of the run, the printed table, the CSV and the plot."""

import csv
import datetime
import importlib.metadata
import math
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.harness import COMPILE_SCOPES, MODES, Settings
from benchmarks.peers import ALL_PAIRS, FAMILIES, GRAD_CHECKPOINTING, SIZE_LABELS, UNITS


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
        "saved": "MiB per sample that the backward keeps: unique storages of autograd's saved tensors after the "
        "forward (benchmarks/saved_bytes.py), without parameters; not counted with gradient checkpointing",
        "ratios": "LightNet / peer",
    }


HEADER = (
    f"{'family':<10} {'mode':<9} {'size':>4} {'batch':>5}  {'LightNet':<18} {'peer':<22} "
    f"{'LN thr':>9} {'peer thr':>9} {'ratio':>6}  {'LN MiB':>7} {'peer MiB':>8} {'ratio':>6}  "
    f"{'LN sav':>7} {'peer sav':>8} {'ratio':>6}  skipped"
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
        f"{format_number(row['peer_peak_mib']):>8} {format_number(row['memory_ratio'], 3):>6}  "
        f"{format_number(row['lightnet_saved_mib']):>7} {format_number(row['peer_saved_mib']):>8} "
        f"{format_number(row['saved_ratio'], 3):>6}  {row['skipped']}"
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
