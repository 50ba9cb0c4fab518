"""The summary of a `benchmarks/gpu_check.sh` run: `gpu_check.md` and the merged `models_gpu.csv`, from its results.

    python benchmarks/gpu_report.py benchmarks/results

Reads what the steps left in the results folder (any of it may be missing: a step that failed or ran out of time
leaves nothing, and the summary says so): `gpu_steps.tsv` (one line per step: name, status, seconds, budget,
command), `gpu.txt` (machine and versions), `gpu_kernel_tests.txt` (pytest's output), `kernels.csv`,
`models_gpu_*.csv` (benchmarks/models.py, one file per step) and `gpu_fit_check.md` (benchmarks/gpu_fit_check.py).
Writes `gpu_check.md` (machine, date, each step's status and time, the tables) and `models_gpu.csv` (the rows of
every `models_gpu_*.csv` under a first column `run`, the file's name without the prefix, e.g. `eager`), so that few
files carry everything back. Standard library only: it runs in a second, after every step.
"""

import csv
import datetime
import io
import sys
from pathlib import Path

STEPS_FILE = "gpu_steps.tsv"
MODELS_PREFIX = "models_gpu_"
STEP_COLUMNS = {"step": "step", "status": "status", "seconds": "seconds", "budget": "budget s", "command": "command"}
# Columns of benchmarks/models.py's CSV in the summary table, with their headings.
MODEL_COLUMNS = {
    "run": "run",
    "family": "family",
    "size": "size",
    "batch": "batch",
    "lightnet": "LightNet",
    "peer": "peer",
    "lightnet_throughput": "LN throughput",
    "peer_throughput": "peer throughput",
    "throughput_ratio": "ratio",
    "lightnet_peak_mib": "LN MiB",
    "peer_peak_mib": "peer MiB",
    "memory_ratio": "ratio",
    "lightnet_compile_s": "LN compile s",
    "peer_compile_s": "peer compile s",
    "skipped": "skipped",
}


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    """The `#` lines and the rows of a CSV; nothing for a missing or empty file."""
    if not path.is_file():
        return [], []
    lines = path.read_text().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if line and not line.startswith("#")))
    return comments, rows


def markdown_table(rows: list[dict], columns: dict[str, str]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = (str(row.get(key) or "").replace("|", "/") for key in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def merge_models(results: Path) -> list[dict]:
    """The rows of every `models_gpu_*.csv` with a `run` column first; written to `models_gpu.csv`."""
    merged, comments = [], []
    paths = sorted(results.glob(f"{MODELS_PREFIX}*.csv"), key=lambda path: ("compiled" in path.stem, path.stem))
    for path in paths:  # eager runs first
        run = path.stem.removeprefix(MODELS_PREFIX)
        file_comments, rows = read_csv(path)
        comments += [f"# [{run}] {line[1:].strip()}" for line in file_comments]
        merged += [{"run": run, **row} for row in rows]
    if merged:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in merged for key in row)))
        writer.writeheader()
        writer.writerows(merged)
        (results / "models_gpu.csv").write_text("\n".join(comments) + "\n" + buffer.getvalue())
    return merged


def read_steps(results: Path) -> list[dict]:
    path = results / STEPS_FILE
    if not path.is_file():
        return []
    names = ("step", "status", "seconds", "budget", "command")
    return [dict(zip(names, line.split("\t"), strict=False)) for line in path.read_text().splitlines() if line]


def kernel_test_summary(results: Path) -> str:
    """pytest's last summary line ("3 failed, 150 passed in 60.1s") and the exit status line, if any."""
    path = results / "gpu_kernel_tests.txt"
    if not path.is_file():
        return "no output"
    lines = [line.strip("= ") for line in path.read_text().splitlines() if line.strip()]
    summary = [line for line in lines if " in " in line and ("passed" in line or "failed" in line or "error" in line)]
    status = [line for line in lines if line.startswith("exit status")]
    return "; ".join((summary[-1:] or ["no pytest summary line"]) + status[-1:])


def write_report(results: Path) -> Path:
    steps = read_steps(results)
    machine = (results / "gpu.txt").read_text().strip() if (results / "gpu.txt").is_file() else "(no machine info)"
    lines = [
        "# GPU check",
        "",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} by benchmarks/gpu_report.py from "
        "`bash benchmarks/gpu_check.sh`.",
        "",
        "## Machine",
        "",
        "```",
        machine,
        "```",
        "",
        "## Steps",
        "",
        *markdown_table(steps, STEP_COLUMNS),
        "",
        "## CUDA kernel tests",
        "",
        kernel_test_summary(results),
        "",
        "## Kernel benchmark (benchmarks/kernels.py)",
        "",
    ]
    kernel_comments, kernel_rows = read_csv(results / "kernels.csv")
    if kernel_rows:
        lines += [f"{kernel_rows[0].get('device', '')}, bf16, B=1, H=8, K=V=64; speed-up: this row / Triton", ""]
        kernel_columns = {key: key for key in kernel_rows[0] if key != "device"}
        lines += markdown_table(kernel_rows, kernel_columns)
    else:
        lines.append("(no results)")
    lines += ["", "## Train step of the models (benchmarks/models.py, bf16 autocast)", ""]
    model_rows = merge_models(results)
    units = sorted({row.get("unit", "") for row in model_rows})
    if model_rows:
        lines += [
            f"Throughput in {', '.join(units)}; ratios LightNet / peer; peak MiB above the resident weights, inputs "
            "and optimiser state. Every row's settings are in models_gpu.csv.",
            "",
        ]
    lines += markdown_table(model_rows, MODEL_COLUMNS)
    lines += ["", "## Fit check (benchmarks/gpu_fit_check.py)", ""]
    fit = results / "gpu_fit_check.md"
    lines.append(fit.read_text().strip() if fit.is_file() else "(no results)")
    path = results / "gpu_check.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_report(Path(sys.argv[1] if len(sys.argv) > 1 else 'benchmarks/results'))}")
