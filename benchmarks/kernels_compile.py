"""Ahead-of-time compile report of the additive-attention Triton kernels: registers, spills, shared memory.

    python benchmarks/kernels_compile.py [--targets 90 80] [--dims 16 32 64 72 96 128 33] [--dtypes fp32 bf16 fp16]
        [--paths noncausal causal] [--jobs 2] [--csv PATH] [--markdown PATH]

No GPU is needed: Triton's compiler and `ptxas` (shipped in `triton/backends/nvidia/bin/`) run on the CPU. For every
head dim (K = V), input dtype, with and without MD-LRPE angles, the host wrappers of `triton_noncausal.py` and
`triton_causal.py` run their forward and backward on `meta` tensors with every kernel launch intercepted: what is
recorded is exactly what those wrappers launch (the kernel, its constexprs from the wrappers' own `launch_config`,
`num_warps`, `num_stages`). Each distinct launch is compiled with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", cc, 32))` for sm_90 (H100/H200) and sm_80 (A100); the log of Triton's own `ptxas -v` run
gives the registers and spill bytes (it is kept in Triton's cache for later runs); shared memory is the compiled
kernel's `metadata.shared`, against the per-block limit of the target (sm_90: 232448 B, sm_80: 166912 B). A launch
passes if it compiles, spills nothing and fits that limit. Pointer arguments are taken as 16-byte aligned (as PyTorch
allocates them), integer ones (the sequence length) as arbitrary. Rotary angles use the same kernels as the cosine
form (host-side maps), so they add no specialisation. `impl="auto"` launches the non-causal kernels only;
`impl="triton"` launches both.

The first run compiles everything (a few minutes on 2 cores); Triton's cache makes later runs take seconds. The
exit status is 1 if any launch fails. `tests/kernels/test_kernels_compile.py` checks a subset of the same launches.
"""

import argparse
import contextlib
import csv
import functools
import importlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

HEAD_DIMS = (16, 32, 64, 72, 96, 128, 33)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGETS = (90, 80)
# Largest dynamic shared memory one block may opt in to, in bytes.
SHARED_LIMIT = {90: 232448, 80: 166912}
PATHS = ("noncausal", "causal")
KERNEL_MODULES = {
    "noncausal": "lightnet_vision.kernels.additive.triton_noncausal",
    "causal": "lightnet_vision.kernels.additive.triton_causal",
}
# Constexpr flags that tell two launches of one kernel apart in the report.
FLAGS = ("SOFTMAX", "KEY_GRAD")
TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
OPTIONS = ("num_warps", "num_stages")


@dataclass(frozen=True)
class Launch:
    """One kernel specialisation as a host wrapper launches it."""

    module: str
    kernel: str
    signature: tuple[tuple[str, str], ...]  # (argument, Triton type or "constexpr")
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int
    num_stages: int

    @property
    def label(self) -> str:
        flags = [name for name, value in self.constexprs if name in FLAGS and value]
        return self.kernel.strip("_") + "".join(f"[{flag}]" for flag in flags)

    @property
    def config(self) -> str:
        values = dict(self.constexprs)
        return f"BT={values['BT']} BK={values['BK']} BV={values['BV']} w={self.num_warps} s={self.num_stages}"


@dataclass
class Row:
    path: str
    head_dim: int
    dtype: str
    angles: bool
    kernel: str
    config: str
    target: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    shared_limit: int
    compile_s: float
    ok: bool
    error: str = ""


def _argument_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + TRITON_TYPES[value.dtype]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return "constexpr"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    raise TypeError(f"cannot describe a kernel argument of type {type(value).__name__}")


def _recorder(kernel, module: str, launches: list[Launch]):
    def run(*args, grid, warmup, **kwargs):
        # Triton's defaults where a wrapper leaves an option out.
        options = {name: kwargs.pop(name, default) for name, default in _default_options().items()}
        bound = dict(zip(kernel.arg_names, args, strict=False)) | kwargs
        signature, constexprs = [], []
        for name in kernel.arg_names:
            value, is_constexpr = bound[name], name in kernel.constexprs_names
            kind = "constexpr" if is_constexpr else _argument_type(value)
            signature.append((name, kind))
            if kind == "constexpr":
                constexprs.append((name, value))
        launches.append(Launch(module, kernel.__name__, tuple(signature), tuple(constexprs), **options))

    return run


@functools.cache
def _default_options() -> dict[str, int]:
    from triton.backends.nvidia.compiler import CUDAOptions

    return {name: getattr(CUDAOptions, name) for name in OPTIONS}


def _constexpr_names(kernel) -> set[str]:
    return {param.name for param in kernel.params if param.is_constexpr}


def record_launches(path: str, head_dim: int, dtype: torch.dtype, use_angles: bool) -> list[Launch]:
    """The kernel launches of one forward and backward of `path`, run by its host wrappers on `meta` tensors."""
    from triton.runtime.jit import JITFunction

    module_name = KERNEL_MODULES[path]
    module = importlib.import_module(module_name)
    kernels = [value for value in vars(module).values() if isinstance(value, JITFunction)]
    if not kernels:
        raise RuntimeError("the kernels are not JIT functions: is TRITON_INTERPRET set?")
    batch, n, heads = 1, 300, 2
    q, k, v, do = (torch.empty(batch, n, heads, head_dim, dtype=dtype, device="meta") for _ in range(4))
    angles = torch.empty(n, head_dim, device="meta") if use_angles else None
    launches: list[Launch] = []
    for kernel in kernels:
        kernel.constexprs_names = _constexpr_names(kernel)
        kernel.run = _recorder(kernel, module_name, launches)
    try:
        if path == "noncausal":
            _, state, row_max, log_sum = module.additive_fwd(q, k, v, angles)
            module.additive_bwd(q, k, v, angles, do, state, row_max, log_sum)
        else:
            _, z_max, z_log = module.causal_fwd(q, k, v, angles)
            module.causal_bwd(q, k, v, angles, do, z_max, z_log)
    finally:
        for kernel in kernels:
            del kernel.run, kernel.constexprs_names
    return list(dict.fromkeys(launches))  # distinct launches, in launch order


def _parse_ptxas_log(log: str) -> dict[str, int]:
    def number(pattern: str) -> int:
        match = re.search(pattern, log)
        return int(match.group(1)) if match else 0

    return dict(
        registers=number(r"Used (\d+) registers"),
        spill_stores=number(r"(\d+) bytes spill stores"),
        spill_loads=number(r"(\d+) bytes spill loads"),
        stack=number(r"(\d+) bytes stack frame"),
    )


def _ptxas_log(ptx: str, capability: int) -> str:
    # `ptxas -v` on the PTX, as Triton assembles it: for a kernel Triton's cache held without its log.
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        command = [get_ptxas(capability).path, "-v", "--regAllocOptLevel=2"]
        command += [f"--gpu-name={sm_arch_from_capability(capability)}", str(source), "-o", str(Path(tmp) / "k.cubin")]
        return subprocess.run(command, capture_output=True, text=True, check=True).stderr


def compile_launch(launch: Launch, capability: int) -> dict:
    """Compiles one launch for `sm_<capability>`: registers, spill bytes, stack, shared memory (bytes), seconds."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.runtime.cache import get_cache_manager

    kernel = getattr(importlib.import_module(launch.module), launch.kernel)
    signature = dict(launch.signature)
    constexprs = dict(launch.constexprs)
    # Pointers 16-byte aligned, as PyTorch allocates them (Triton's own specialisation of aligned pointers).
    attrs = {(i,): [["tt.divisibility", 16]] for i, (_, kind) in enumerate(launch.signature) if kind.startswith("*")}
    start = time.perf_counter()
    # A fresh compile prints the log of Triton's own `ptxas -v` run (TRITON_DUMP_PTXAS_LOG), captured here.
    log = io.StringIO()
    with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(
            triton.compiler.ASTSource(kernel, signature, constexprs, attrs),
            target=GPUTarget("cuda", capability, 32),
            options=dict(num_warps=launch.num_warps, num_stages=launch.num_stages),
        )
    # The log is kept beside the kernel in Triton's cache, so that a later report needs no second ptxas run.
    cache = get_cache_manager(compiled.hash)
    text = log.getvalue()
    if "Used" in text:
        cache.put(text, "ptxas.log", binary=False)
    elif stored := cache.get_file("ptxas.log"):
        text = Path(stored).read_text()
    else:
        text = _ptxas_log(compiled.asm["ptx"], capability)
        cache.put(text, "ptxas.log", binary=False)
    report = _parse_ptxas_log(text)
    return dict(report, shared=compiled.metadata.shared, compile_s=time.perf_counter() - start)


def _compile_row(case: tuple, launch: Launch, capability: int) -> Row:
    path, head_dim, dtype, angles = case
    limit = SHARED_LIMIT[capability]
    common = dict(path=path, head_dim=head_dim, dtype=dtype, angles=angles, kernel=launch.label)
    common.update(config=launch.config, target=f"sm_{capability}", shared_limit=limit)
    try:
        result = compile_launch(launch, capability)
    except Exception as error:  # a failed compile is a row of the report, not the end of it
        message = str(error).strip().splitlines()
        return Row(
            **common,
            registers=0,
            spill_stores=0,
            spill_loads=0,
            stack=0,
            shared=0,
            compile_s=0.0,
            ok=False,
            error=message[0][:200] if message else type(error).__name__,
        )
    ok = result["spill_stores"] == 0 and result["shared"] <= limit
    return Row(**common, **result, ok=ok)


def collect(
    dims=HEAD_DIMS,
    dtypes=tuple(DTYPES),
    targets=TARGETS,
    paths=PATHS,
    angles=(False, True),
    jobs: int = 1,
    progress: bool = False,
) -> list[Row]:
    """Compiles every launch of every case; rows in case order. `progress` prints one line per row to stderr."""
    tasks = []
    for path in paths:
        for head_dim in dims:
            for dtype in dtypes:
                for use_angles in angles:
                    case = (path, head_dim, dtype, use_angles)
                    for launch in record_launches(path, head_dim, DTYPES[dtype], use_angles):
                        tasks.extend((case, launch, capability) for capability in targets)
    with ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else contextlib.nullcontext() as pool:
        mapper = pool.map if pool else map
        results = mapper(_compile_row, *zip(*tasks, strict=True))
        rows = []
        for row in results:
            rows.append(row)
            if progress:
                status = "ok" if row.ok else "FAIL"
                print(
                    f"[{len(rows)}/{len(tasks)}] {row.target} {row.path} d={row.head_dim} {row.dtype} "
                    f"angles={row.angles} {row.kernel}: {status}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def summary(rows: list[Row]) -> list[dict]:
    """Per target and head dim: the worst registers, spills and shared memory over kernels, dtypes and angles."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault((row.target, row.path, row.head_dim), []).append(row)
    table = []
    for (target, path, head_dim), group in groups.items():
        top = max(group, key=lambda row: row.shared)
        table.append(
            dict(
                target=target,
                path=path,
                head_dim=head_dim,
                launches=len(group),
                passed=sum(row.ok for row in group),
                max_registers=max(row.registers for row in group),
                spill_stores=sum(row.spill_stores for row in group),
                max_shared_kib=round(top.shared / 1024, 1),
                limit_kib=round(top.shared_limit / 1024, 1),
                largest=top.kernel,
            )
        )
    return table


def format_table(records: list[dict], markdown: bool = False) -> str:
    columns = list(records[0])
    cells = [[str(record[name]) for name in columns] for record in records]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(name), *(len(row[i]) for row in cells)) for i, name in enumerate(columns)]
    lines = ["  ".join(name.rjust(width) for name, width in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--angles", choices=["both", "with", "without"], default="both")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--csv", type=Path, help="write every launch as a CSV row")
    parser.add_argument("--markdown", type=Path, help="write the summary and every launch as markdown tables")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: the kernels would be interpreted, not compiled; unset it")
    angles = {"both": (False, True), "with": (True,), "without": (False,)}[args.angles]
    start = time.perf_counter()
    rows = collect(args.dims, args.dtypes, args.targets, args.paths, angles, args.jobs, progress=True)
    records = [asdict(row) for row in rows]
    print(format_table([{k: v for k, v in record.items() if k != "error"} for record in records]))
    failed = [row for row in rows if not row.ok]
    for row in failed:
        print(
            f"FAIL {row.target} {row.path} d={row.head_dim} {row.dtype} angles={row.angles} {row.kernel}: "
            f"spills {row.spill_stores} B, shared {row.shared} B {row.error}"
        )
    table = summary(rows)
    print()
    print(format_table(table))
    print(f"\n{len(rows) - len(failed)}/{len(rows)} launches pass, in {time.perf_counter() - start:.0f} s")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        text = "## Summary\n\n" + format_table(table, markdown=True) + "\n\n## Every launch\n\n"
        args.markdown.write_text(text + format_table(records, markdown=True) + "\n")
    return 0 if not failed else 1


@functools.cache
def ptxas_available() -> bool:
    """Whether Triton and its `ptxas` are here (the report needs both, not a GPU)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return os.access(get_ptxas(90).path, os.X_OK)
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
