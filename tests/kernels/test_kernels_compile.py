"""Ahead-of-time compiles of the Triton kernels for sm_90 and sm_80: no register spills, shared memory within limits.

A representative subset of `benchmarks/kernels_compile.py` (the full report is in the kernel README,
lightnet_vision/kernels/additive/README.md, "Triton compile report"): the head dims that spilled (64) or overflowed
shared memory (72, padded to 128) before the retuning, in fp32 and bf16, with MD-LRPE angles (the heavier variant),
every non-causal and causal launch of a forward and backward. No GPU is needed, only Triton's compiler and `ptxas`.
The report runs in a subprocess without `TRITON_INTERPRET`, which the test suite sets for the kernels it interprets.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is not installed")
from benchmarks.kernels_compile import SHARED_LIMIT, ptxas_available  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not ptxas_available(), reason="Triton's ptxas is not available")
def test_kernels_compile_without_spills_within_shared_memory(tmp_path):
    report = tmp_path / "compile.csv"
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    command = [sys.executable, "benchmarks/kernels_compile.py", "--dims", "64", "72", "--dtypes", "fp32", "bf16"]
    command += ["--angles", "with", "--jobs", str(min(2, os.cpu_count() or 1)), "--csv", str(report)]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    rows = list(csv.DictReader(report.open()))
    # 2 head dims x 2 dtypes x (6 non-causal + 4 causal launches) x 2 targets.
    assert len(rows) == 2 * 2 * 10 * 2
    assert {row["target"] for row in rows} == {"sm_90", "sm_80"}
    for row in rows:
        what = f"{row['target']} {row['path']} d={row['head_dim']} {row['dtype']} {row['kernel']} ({row['config']})"
        assert not row["error"], f"{what} does not compile: {row['error']}"
        assert int(row["registers"]) > 0, f"{what}: no register count from ptxas"
        assert int(row["spill_stores"]) == 0, f"{what} spills {row['spill_stores']} bytes"
        limit = SHARED_LIMIT[int(row["target"].removeprefix("sm_"))]
        assert int(row["shared"]) <= limit, f"{what} needs {row['shared']} B of shared memory, more than {limit}"
    assert run.returncode == 0, run.stdout[-3000:]
