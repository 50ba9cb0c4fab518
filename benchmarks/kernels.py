"""Additive attention kernels against the PyTorch path and softmax attention, on one CUDA GPU.

    python benchmarks/kernels.py [--lengths 1024 4096 16384 65536] [--lrpe cosine rotary]
        [--csv benchmarks/results/kernels.csv]

For each sequence length N and each MD-LRPE form (column `lrpe`: "cosine", the paper's, with angles `[N, K]`;
"rotary", channel pairs turned by angles `[N, K/2]`; see lightnet_vision/kernels/additive/README.md): forward and
forward+backward time (median of `--repeats` after warm-up, CUDA events) of the Triton kernel and of the PyTorch path
of `additive_attention`; and once per N, `scaled_dot_product_attention` (softmax attention, no positions: `lrpe`
"none"). All in bf16 with B=1, H=8 heads of K=V=64, plus the forward's achieved memory bandwidth (q, k, v read and o
written, over the time; the angles are not counted) and its share of `--peak-gbps`, 4,800 GB/s for an H200. Prints
a table with the Triton kernel's speed-up over each row (against the Triton row of the same N and form; the softmax
row against the cosine form's) and writes a CSV. `benchmarks/gpu_check.sh` runs it after the CUDA kernel tests.
"""

import argparse
import csv
import datetime
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lightnet_vision.kernels import additive_attention

LRPE_FORMS = ("cosine", "rotary")
# The form the softmax-attention row (no positions) is compared with.
SDPA_REFERENCE_FORM = "cosine"


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_angles(n: int, head_dim: int, lrpe: str, device: str = "cuda") -> Tensor:
    """Random MD-LRPE angles in [0, π) of the form's shape: `[N, K]` for "cosine", `[N, K/2]` for "rotary"."""
    width = head_dim if lrpe == "cosine" else head_dim // 2
    return torch.rand(n, width, device=device) * torch.pi


def bench_length(
    n: int,
    lrpe_forms: tuple[str, ...] = LRPE_FORMS,
    heads: int = 8,
    head_dim: int = 64,
    dtype: torch.dtype = torch.bfloat16,
    repeats: int = 20,
) -> list[dict]:
    shape = (1, n, heads, head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(shape, device="cuda", dtype=dtype)
    ops = {}
    for lrpe in lrpe_forms:
        angles = make_angles(n, head_dim, lrpe)
        for impl in ("triton", "torch"):
            ops[impl, lrpe] = lambda impl=impl, lrpe=lrpe, angles=angles: additive_attention(
                q, k, v, angles=angles, lrpe=lrpe, impl=impl
            )
    # SDPA works in [B, H, N, K]; transposed back so every op returns [B, N, H, V].
    ops["sdpa", "none"] = lambda: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ).transpose(1, 2)
    rows = []
    for (name, lrpe), op in ops.items():
        with torch.no_grad():
            forward = median_ms(op, repeats)
        backward = median_ms(lambda op=op: torch.autograd.grad(op(), (q, k, v), do), repeats)
        # The fused forward reads k and v (pass 1) and q (pass 2) once and writes o: four [B, N, H, 64] tensors.
        bytes_moved = 4 * q.numel() * q.element_size()
        rows.append(
            {
                "impl": name,
                "lrpe": lrpe,
                "N": n,
                "forward_ms": round(forward, 4),
                "forward_backward_ms": round(backward, 4),
                "forward_GBps": round(bytes_moved / forward / 1e6, 1),
            }
        )
    return rows


def add_speedups(rows: list[dict], peak_gbps: float) -> None:
    """Adds the share of peak bandwidth and, per row, how many times faster the Triton kernel is at the same N and
    MD-LRPE form (softmax attention, `lrpe` "none": against the Triton kernel in `SDPA_REFERENCE_FORM`)."""
    triton_rows = {(row["N"], row["lrpe"]): row for row in rows if row["impl"] == "triton"}
    for row in rows:
        form = SDPA_REFERENCE_FORM if row["lrpe"] == "none" else row["lrpe"]
        fastest = triton_rows.get((row["N"], form))
        row["forward_peak_share"] = round(row["forward_GBps"] / peak_gbps, 3)
        if fastest is None:  # that form was not run
            row["triton_speedup_forward"] = row["triton_speedup_forward_backward"] = None
            continue
        row["triton_speedup_forward"] = round(row["forward_ms"] / fastest["forward_ms"], 2)
        row["triton_speedup_forward_backward"] = round(row["forward_backward_ms"] / fastest["forward_backward_ms"], 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--lrpe", nargs="+", choices=LRPE_FORMS, default=list(LRPE_FORMS), help="MD-LRPE forms")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per op (after 5 warm-up calls)")
    parser.add_argument("--csv", default="benchmarks/results/kernels.csv")
    parser.add_argument("--peak-gbps", type=float, default=4800.0, help="the GPU's memory bandwidth (H200: 4,800)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU (the Triton kernels do not run natively on a CPU)")
    forms = tuple(form for form in LRPE_FORMS if form in args.lrpe)
    rows = [row for n in args.lengths for row in bench_length(n, forms, repeats=args.repeats)]
    add_speedups(rows, args.peak_gbps)
    device = torch.cuda.get_device_name()
    print(f"{device}, bf16, B=1, H=8, K=V=64, {datetime.date.today()}")
    columns = ["impl", "lrpe", "N", "forward_ms", "forward_backward_ms", "forward_GBps", "forward_peak_share"]
    columns += ["triton_speedup_forward", "triton_speedup_forward_backward"]
    print(" ".join(f"{name:>14.14}" for name in columns))
    for row in rows:
        print(" ".join(f"{row[name]!s:>14}" for name in columns))
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["device", *rows[0]])
        writer.writeheader()
        writer.writerows({"device": device, **row} for row in rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
