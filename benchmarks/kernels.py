"""Additive attention kernels against the PyTorch path and softmax attention, on one CUDA GPU.

    python benchmarks/kernels.py [--lengths 1024 4096 16384 65536] [--csv benchmarks/results/kernels.csv]

For each sequence length N: forward and forward+backward time (median of repeats after warm-up, CUDA events) of
the Triton kernel, the PyTorch path of `additive_attention` and `scaled_dot_product_attention` (softmax attention),
in bf16 with B=1, H=8 heads of K=V=64, plus the forward's achieved memory bandwidth (q, k, v read and o written,
over the time, and as a share of `--peak-gbps`, 4,800 GB/s for an H200). Prints a table with the Triton kernel's
speed-up over the other two and writes a CSV. `benchmarks/gpu_check.sh` runs it after the CUDA correctness tests.
"""

import argparse
import csv
import datetime
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from lightnet_vision.kernels import additive_attention


def median_ms(fn, repeats: int = 20, warmup: int = 5) -> float:
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


def bench_length(n: int, heads: int = 8, head_dim: int = 64, dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    shape = (1, n, heads, head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    angles = torch.rand(n, head_dim, device="cuda") * 3.14
    do = torch.randn(shape, device="cuda", dtype=dtype)
    ops = {
        "triton": lambda: additive_attention(q, k, v, angles=angles, impl="triton"),
        "torch": lambda: additive_attention(q, k, v, angles=angles, impl="torch"),
        # SDPA works in [B, H, N, K]; transposed back so every op returns [B, N, H, V].
        "sdpa": lambda: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2),
    }
    rows = []
    for name, op in ops.items():
        with torch.no_grad():
            forward = median_ms(op)
        backward = median_ms(lambda op=op: torch.autograd.grad(op(), (q, k, v), do))
        # The fused forward reads k and v (pass 1) and q (pass 2) once and writes o: four [B, N, H, 64] tensors.
        bytes_moved = 4 * q.numel() * q.element_size()
        rows.append(
            {
                "impl": name,
                "N": n,
                "forward_ms": round(forward, 4),
                "forward_backward_ms": round(backward, 4),
                "forward_GBps": round(bytes_moved / forward / 1e6, 1),
            }
        )
    return rows


def add_speedups(rows: list[dict], peak_gbps: float) -> None:
    """Adds the share of peak bandwidth and, per row, how many times faster the Triton kernel is at the same N."""
    triton_rows = {row["N"]: row for row in rows if row["impl"] == "triton"}
    for row in rows:
        fastest = triton_rows[row["N"]]
        row["forward_peak_share"] = round(row["forward_GBps"] / peak_gbps, 3)
        row["triton_speedup_forward"] = round(row["forward_ms"] / fastest["forward_ms"], 2)
        row["triton_speedup_forward_backward"] = round(row["forward_backward_ms"] / fastest["forward_backward_ms"], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--csv", default="benchmarks/results/kernels.csv")
    parser.add_argument("--peak-gbps", type=float, default=4800.0, help="the GPU's memory bandwidth (H200: 4,800)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU (the Triton kernels do not run natively on a CPU)")
    rows = [row for n in args.lengths for row in bench_length(n)]
    add_speedups(rows, args.peak_gbps)
    device = torch.cuda.get_device_name()
    print(f"{device}, bf16, B=1, H=8, K=V=64, {datetime.date.today()}")
    columns = ["impl", "N", "forward_ms", "forward_backward_ms", "forward_GBps", "forward_peak_share"]
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
