"""benchmarks/models.py (with its catalogue peers.py, harness.py and report.py): the helpers its numbers rest on, and a
`--quick` run of every family on tiny shapes."""

import csv
import functools
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("timm", reason="the classifier peers are timm's DeiTs: pip install -e '.[dev]'")

from benchmarks import harness, peers  # noqa: E402 (after the skip)
from benchmarks import models as bench  # noqa: E402


def test_throughput_takes_the_median_call_and_ratios_are_lightnet_over_peer() -> None:
    # One disturbed call (100 s) must not move the median; a mean would give 8 / 34.3 s.
    lightnet = harness.throughput([1.0, 100.0, 2.0], items_per_call=8)
    peer = harness.throughput([4.0, 5.0, 4.0], items_per_call=8)
    assert lightnet == 4.0
    assert peer == 2.0
    assert harness.ratio(lightnet, peer) == 2.0
    assert harness.ratio(None, peer) is None
    assert harness.ratio(lightnet, None) is None
    assert harness.throughput([], items_per_call=8) is None


def test_calls_alternate_and_warmup_rounds_are_not_kept() -> None:
    order = []
    calls = {"lightnet": lambda: order.append("lightnet"), "peer": lambda: order.append("peer")}
    timings, warmup, repeats = harness.time_interleaved(calls, repeats=3, warmup=2, device="cpu", max_seconds=60)
    assert order == ["lightnet", "peer"] * 5
    assert (warmup, repeats) == (2, 3)
    assert [len(timings[name].seconds) for name in calls] == [3, 3]


def test_a_side_out_of_memory_is_skipped_while_the_other_is_still_timed() -> None:
    def out_of_memory() -> None:
        raise torch.OutOfMemoryError("tried to allocate 1 TiB")

    calls = {"lightnet": lambda: None, "peer": out_of_memory}
    timings, _, _ = harness.time_interleaved(calls, repeats=3, warmup=1, device="cpu", max_seconds=60)
    assert timings["peer"].skipped.startswith("out of memory")
    assert timings["peer"].seconds == []
    assert len(timings["lightnet"].seconds) == 3 and not timings["lightnet"].skipped


def test_slow_calls_get_fewer_rounds_and_too_slow_calls_are_skipped(monkeypatch) -> None:
    monkeypatch.setattr(harness, "SLOW_CALL_SECONDS", 0.0)
    order = []
    calls = {"lightnet": lambda: order.append("lightnet"), "peer": lambda: order.append("peer")}
    timings, warmup, repeats = harness.time_interleaved(calls, repeats=5, warmup=2, device="cpu", max_seconds=60)
    assert (warmup, repeats) == (1, harness.SLOW_CALL_REPEATS)
    assert len(order) == 2 * (1 + harness.SLOW_CALL_REPEATS)

    timings, _, _ = harness.time_interleaved(calls, repeats=2, warmup=1, device="cpu", max_seconds=0.0)
    assert all("--max-seconds" in timing.skipped and not timing.seconds for timing in timings.values())


def allocating_step(mebibytes: int):
    def step() -> None:
        # Filled, so that every page is really resident.
        torch.ones(mebibytes * 2**20 // 4).sum()

    return step


@pytest.mark.slow
def test_peak_memory_of_a_step_in_a_fresh_process_counts_torch_allocations() -> None:
    # The whole process holds hundreds of MiB (Python, torch): only the step's 64 MiB may be counted.
    peak = harness.measure_peak_memory(functools.partial(allocating_step, 64), "cpu", threads=1)
    assert 60 < peak < 80


@pytest.mark.slow
def test_quick_run_writes_one_row_per_pair_size_and_mode(tmp_path) -> None:
    out = tmp_path / "models.csv"
    bench.main(["--quick", "--no-memory", "--out", str(out)])
    lines = out.read_text().splitlines()
    comments = {line[2:].split(":", 1)[0] for line in lines if line.startswith("#")}
    assert {"date", "command", "machine", "device", "threads", "dtype", "versions"} <= comments
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))

    expected = {
        (family, mode, str(size), lightnet, peer)
        for family, pairs in peers.PAIRS.items()
        for lightnet, peer in pairs
        for size in peers.QUICK_SIZES[family]
        for mode in harness.MODES
    }
    assert len(rows) == len(expected)
    assert {(row["family"], row["mode"], row["size"], row["lightnet"], row["peer"]) for row in rows} == expected
    for row in rows:
        lightnet, peer = float(row["lightnet_throughput"]), float(row["peer_throughput"])
        assert lightnet > 0 and peer > 0 and row["skipped"] == ""
        assert float(row["throughput_ratio"]) == pytest.approx(lightnet / peer, rel=2e-3)
        assert row["lightnet_peak_mib"] == row["memory_ratio"] == ""  # --no-memory
        if row["mode"] == "train":  # counted without the memory measurement: one forward, no timing
            saved = float(row["lightnet_saved_mib"]), float(row["peer_saved_mib"])
            assert min(saved) > 0 and float(row["saved_ratio"]) == pytest.approx(saved[0] / saved[1], rel=2e-3)
        else:
            assert row["lightnet_saved_mib"] == row["saved_ratio"] == ""
    mixer = next(row for row in rows if row["family"] == "mixer")
    assert mixer["unit"] == "tokens/s" and int(mixer["tokens"]) == int(mixer["size"]) ** 2
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_cuda_batches_hold_more_tokens() -> None:
    assert peers.default_batch_size("classifier", 224) == 8
    assert peers.default_batch_size("classifier", 224, "cuda") == 8 * peers.CUDA_TOKEN_SCALE
    assert peers.default_batch_size("denoiser", 128, "cuda:0") == 4


def test_pairs_keep_the_default_run_and_add_xl_only_when_named() -> None:
    assert peers.select_pairs(["denoiser"], None) == {"denoiser": [("lightnet_dit_s_2", "diffusers_dit_s_2")]}
    selected = peers.select_pairs(["classifier", "denoiser"], ["lightnet_tiny", "lightnet_dit_xl_2"])
    assert selected == {
        "classifier": [("lightnet_tiny", "deit_tiny_patch16_224")],
        "denoiser": [("lightnet_dit_xl_2", "diffusers_dit_xl_2")],
    }
    with pytest.raises(SystemExit, match="mixer"):
        peers.select_pairs(["mixer"], ["lightnet_tiny"])


@pytest.mark.slow
def test_xl_pair_is_dit_xl_2_on_both_sides() -> None:
    # On the meta device: the shapes without the 2 × 700M parameters' memory.
    with torch.device("meta"):
        lightnet = peers.build_model("denoiser", "lightnet_dit_xl_2", 32)
        peer = peers.build_model("denoiser", "diffusers_dit_xl_2", 32)
    config = peer.config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim) == (28, 16, 72)
    assert (config.patch_size, config.in_channels, config.out_channels) == (2, 4, 4)
    assert (config.sample_size, config.num_embeds_ada_norm) == (32, 1000)
    assert len(lightnet.blocks) == 28 and lightnet.num_classes == 1000
    assert lightnet.x_embedder.proj.weight.shape == (1152, 4, 2, 2) == peer.pos_embed.proj.weight.shape
    # DiT-XL/2 is 675M parameters; diffusers' form holds a timestep and class embedding in each of its 28 blocks.
    assert 650 < harness.parameter_millions(lightnet) < 700
    assert 700 < harness.parameter_millions(peer) < 760


@pytest.mark.slow
def test_compile_blocks_compiles_each_repeated_block_once(monkeypatch) -> None:
    model = peers.build_model("classifier", "lightnet_tiny", 32)
    blocks = harness.repeated_blocks(model)
    assert len(blocks) == 12 and all(block is layer for block, layer in zip(blocks, model.blocks, strict=True))
    harness.compile_in_place(model, "blocks")
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert model._compiled_call_impl is None
    # A mixer has no stack of identical blocks (its gate's two Linears differ in shape): compiled whole.
    mixer = peers.build_model("mixer", "lightnet_attention_tiny", 4)
    assert harness.repeated_blocks(mixer) == []
    harness.compile_in_place(mixer, "blocks")
    assert mixer._compiled_call_impl is not None


@pytest.mark.slow
def test_a_side_that_fails_to_compile_is_skipped_with_the_reason(tmp_path, monkeypatch) -> None:
    def backend(graph: torch.fx.GraphModule, example_inputs):
        # Compiles (runs as traced) every graph but softmax attention's.
        if "scaled_dot_product_attention" in graph.code:
            raise RuntimeError("this backend does not take softmax attention")
        return graph.forward

    monkeypatch.setattr(harness, "COMPILE_OPTIONS", {"backend": backend})
    out = tmp_path / "models.csv"
    argv = ["--quick", "--no-memory", "--compile", "--only", "mixer", "--sizes", "4", "--modes", "train"]
    bench.main([*argv, "--pairs", "lightnet_attention_tiny", "--out", str(out)])
    lines = out.read_text().splitlines()
    assert "# compile: torch.compile of the whole model on both sides" in lines
    (row,) = csv.DictReader(line for line in lines if not line.startswith("#"))
    assert row["compile"] == "model" and row["mode"] == "train"
    assert float(row["lightnet_throughput"]) > 0 and float(row["lightnet_compile_s"]) > 0
    assert row["peer_throughput"] == row["peer_compile_s"] == row["throughput_ratio"] == ""
    assert row["skipped"].startswith("softmax_attention_tiny: torch.compile failed (BackendCompilerFailed")


def test_rows_reach_the_csv_as_they_are_measured(tmp_path, monkeypatch) -> None:
    measured = []

    def measure_pair(family, mode, size, batch, models, inputs, settings, skipped_before) -> dict:
        if measured:
            raise KeyboardInterrupt  # the run is stopped while it measures the second row
        measured.append(mode)
        row = dict.fromkeys(["lightnet_throughput", "peer_throughput", "throughput_ratio", "memory_ratio"])
        row |= dict.fromkeys(
            ["lightnet_peak_mib", "peer_peak_mib", "lightnet_saved_mib", "peer_saved_mib", "saved_ratio"]
        )
        return row | {
            "family": family,
            "mode": mode,
            "size": size,
            "batch": batch,
            "lightnet": "a",
            "peer": "b",
            "skipped": "",
        }

    monkeypatch.setattr(bench, "measure_pair", measure_pair)
    monkeypatch.setattr(bench, "build_on_device", lambda *args: torch.nn.Identity())
    out = tmp_path / "models.csv"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--quick", "--only", "mixer", "--out", str(out)])
    rows = list(csv.DictReader(line for line in out.read_text().splitlines() if not line.startswith("#")))
    assert [(row["family"], row["mode"]) for row in rows] == [("mixer", "train")]


@pytest.mark.parametrize("lrpe", ["cosine", "rotary"])
def test_kernel_bench_gives_each_lrpe_form_its_angles(lrpe) -> None:
    from benchmarks import kernels

    angles = kernels.make_angles(16, 8, lrpe, device="cpu")
    assert angles.shape == ((16, 8) if lrpe == "cosine" else (16, 4))
    q, k, v = torch.randn(3, 1, 16, 2, 8).unbind(0)
    assert kernels.additive_attention(q, k, v, angles=angles, lrpe=lrpe, impl="torch").shape == (1, 16, 2, 8)


def test_kernel_bench_speedups_are_against_triton_of_the_same_form() -> None:
    from benchmarks import kernels

    def row(impl: str, lrpe: str, forward_ms: float) -> dict:
        return {"impl": impl, "lrpe": lrpe, "N": 1024, "forward_ms": forward_ms, "forward_backward_ms": 2 * forward_ms}

    rows = [row("triton", "cosine", 1.0), row("torch", "cosine", 3.0), row("triton", "rotary", 2.0)]
    rows += [row("torch", "rotary", 3.0), row("sdpa", "none", 5.0)]
    for r in rows:
        r["forward_GBps"] = 480.0
    kernels.add_speedups(rows, peak_gbps=4800.0)
    assert [r["triton_speedup_forward"] for r in rows] == [1.0, 3.0, 1.0, 1.5, 5.0]  # sdpa: against cosine
    assert [r["triton_speedup_forward_backward"] for r in rows] == [1.0, 3.0, 1.0, 1.5, 5.0]
    assert all(r["forward_peak_share"] == 0.1 for r in rows)


def curve_run(name: str, losses: list[float]):
    from benchmarks import gpu_fit_check

    return gpu_fit_check.Run(name, "auto", False, losses=losses, status="ok")


def test_fit_check_verdict_catches_a_different_start_a_different_end_and_nan() -> None:
    from benchmarks import gpu_fit_check as fit

    reference = [2.3 - 1.5 * step / 199 + 0.05 * (-1) ** step for step in range(200)]  # 2.3 → 0.8, noisy
    torch_run = curve_run("torch", reference)
    close = curve_run("auto", [loss + 0.02 for loss in reference])
    assert fit.compare(close, torch_run, 200)["agree"]
    wrong_start = curve_run("auto", [loss + (0.1 if step < 3 else 0.0) for step, loss in enumerate(reference)])
    assert not fit.compare(wrong_start, torch_run, 200)["agree"]
    wrong_end = curve_run("auto", [loss * (1.0 if step < 150 else 1.2) for step, loss in enumerate(reference)])
    assert fit.compare(wrong_end, torch_run, 200)["relative_difference"] > fit.MAX_RELATIVE_DIFFERENCE
    assert not fit.compare(wrong_end, torch_run, 200)["agree"]
    nan = curve_run("auto", reference[:100] + [float("nan")] * 100)
    assert not fit.compare(nan, torch_run, 200)["agree"]
    assert not fit.compare(curve_run("auto", reference[:150]), torch_run, 200)["agree"]  # stopped early
    rows = fit.summary_rows([close, torch_run, wrong_end], 200)
    assert fit.verdict(rows) == "DISAGREE: auto against torch (agree: auto)"
    assert fit.verdict(fit.summary_rows([close], 200)).startswith("no verdict")


def test_fit_check_judges_a_run_stopped_by_its_time_limit_on_its_first_steps() -> None:
    from benchmarks import gpu_fit_check as fit

    reference = [2.3 - step / 200 for step in range(200)]
    torch_run = curve_run("torch", reference)
    stopped = curve_run("auto_compiled", reference[:30])
    stopped.status = "stopped by --run-seconds 40"
    assert fit.compare(stopped, torch_run, 200)["agree"]
    too_short = curve_run("auto_compiled", reference[:5])
    too_short.status = stopped.status
    assert fit.compare(too_short, torch_run, 200)["agree"] is None
    wrong = curve_run("auto_compiled", [loss + 0.2 for loss in reference[:30]])
    wrong.status = stopped.status
    rows = fit.summary_rows([curve_run("auto", reference), torch_run, too_short, wrong], 200)
    assert fit.verdict(rows) == "DISAGREE: auto_compiled (first 30 steps) against torch (agree: auto)"
    torch_run.status = stopped.status  # a stopped reference: nothing to judge against
    assert fit.verdict(fit.summary_rows([curve_run("auto", reference), torch_run], 200)).startswith("no verdict")
    assert (fit.max_time(40), fit.max_time(3700)) == ("00:00:00:40", "00:01:01:40")


def test_fit_check_forces_the_pytorch_path_in_every_layer_and_puts_it_back(monkeypatch) -> None:
    from benchmarks import gpu_fit_check as fit
    from lightnet_vision.layers import attention
    from lightnet_vision.layers.attention import LightNetAttention

    calls, original = [], attention.additive_attention

    def spy(*args, **kwargs):  # the op, recording the impl each call asks for
        calls.append(kwargs.get("impl", "auto"))
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "additive_attention", spy)
    layer = LightNetAttention(16, 2)
    x = torch.randn(1, 4, 16)
    with fit.forced_impl("torch"):
        layer(x)
    with fit.forced_impl("auto"):
        layer(x)
    layer(x)
    assert calls == ["torch", "auto", "auto"]
    assert attention.additive_attention is spy


@pytest.mark.slow
def test_fit_check_smoke_run_on_cpu_gives_two_identical_curves(tmp_path) -> None:
    # On a CPU impl="auto" takes the PyTorch path too, so the two runs must agree to the bit: the harness (seeds,
    # augmentation, loss recording) adds no difference of its own.
    from benchmarks import gpu_fit_check as fit

    out = tmp_path / "fit.csv"
    argv = ["--device", "cpu", "--steps", "4", "--precision", "32-true", "--runs", "auto", "torch", "--out", str(out)]
    assert fit.main(argv) == "agree: auto against torch"
    lines = out.read_text().splitlines()
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert [row["step"] for row in rows] == ["1", "2", "3", "4"]
    assert all(row["loss_auto"] == row["loss_torch"] and 1.0 < float(row["loss_auto"]) < 4.0 for row in rows)
    assert any(line.startswith("# run run=auto") and "triton_calls=0" in line for line in lines)
    assert "agree: auto against torch" in out.with_suffix(".md").read_text()


def test_gpu_report_summarises_the_steps_and_merges_the_model_csvs(tmp_path) -> None:
    from benchmarks import gpu_report

    (tmp_path / "gpu_steps.tsv").write_text(
        "info\tok\t1\t60\tnvidia-smi\nkernel_tests\ttimed out after 120 s\t125\t120\tpytest\n"
    )
    (tmp_path / "gpu.txt").write_text("NVIDIA H200, 143771 MiB\n")
    (tmp_path / "gpu_kernel_tests.txt").write_text(
        "..F\nFAILED test_x\n=== 1 failed, 2 passed in 3.1s ===\nexit status: 1\n"
    )
    (tmp_path / "kernels.csv").write_text("device,impl,lrpe,N,forward_ms\nH200,triton,rotary,1024,0.3\n")
    header = "family,mode,size,lightnet,peer,lightnet_throughput,skipped\n"
    (tmp_path / "models_gpu_eager.csv").write_text("# dtype: bf16\n" + header + "denoiser,train,32,a,b,10,\n")
    (tmp_path / "models_gpu_compiled_denoiser.csv").write_text(header + "denoiser,train,32,a,b,20,b: failed\n")
    (tmp_path / "gpu_fit_check.md").write_text("**Fit check**: agree: auto against torch\n")
    summary = gpu_report.write_report(tmp_path).read_text()
    assert "| kernel_tests | timed out after 120 s | 125 | 120 | pytest |" in summary
    assert "1 failed, 2 passed in 3.1s; exit status: 1" in summary
    assert "| triton | rotary | 1024 | 0.3 |" in summary
    assert "| compiled_denoiser | denoiser | 32 |" in summary and "| eager | denoiser | 32 |" in summary
    assert "**Fit check**: agree: auto against torch" in summary and "NVIDIA H200" in summary
    merged = (tmp_path / "models_gpu.csv").read_text().splitlines()
    assert merged[0] == "# [eager] dtype: bf16"
    rows = list(csv.DictReader(line for line in merged if not line.startswith("#")))
    assert [(row["run"], row["lightnet_throughput"]) for row in rows] == [("eager", "10"), ("compiled_denoiser", "20")]


@pytest.mark.slow
def test_gpu_check_dry_run_lists_every_step_and_skips_the_cuda_ones(tmp_path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "RESULTS": str(tmp_path), "OUT": ""}
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    steps = ["wheels", "kernel_tests", "kernel_bench", "models_eager_classifier", "models_eager_denoiser"]
    steps += ["models_compiled_classifier", "models_compiled_denoiser", "fit_check"]
    for step in steps:
        assert f"== step {step}: skipped (dry run: no CUDA)" in result.stdout
    assert "== step info: ok" in result.stdout  # the versions of the Python found, as a CPU smoke run
    summary = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {step} | skipped (dry run: no CUDA) |" in summary for step in steps)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "gpu.txt",
        "gpu_check.log",
        "gpu_check.md",
        "gpu_steps.tsv",
    ]  # nothing heavy


@pytest.mark.parametrize(
    ("family", "peer"), [("classifier", "deit_tiny_patch16_224"), ("denoiser", "diffusers_dit_s_2")]
)
def test_grad_checkpointing_gives_the_peer_its_own_checkpointing(family, peer):
    # timm's set_grad_checkpointing, diffusers' enable_gradient_checkpointing: the same loss and gradients as
    # without, on the peer's own blocks.
    name = peer + peers.GRAD_CHECKPOINTING
    size = 32 if family == "classifier" else 8
    inputs = peers.make_inputs(family, size, 2, "cpu")
    results = []
    for model_name in (peer, name):
        model = peers.build_model(family, model_name, size).train()
        loss = peers.training_loss(family, peers.run_forward(model, model_name, inputs), inputs)
        results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)))
    assert getattr(model, "grad_checkpointing", False) or getattr(model, "is_gradient_checkpointing", False)
    (loss, grads), (checkpointed_loss, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed_loss, loss)
    for grad, checkpointed in zip(grads, checkpointed_grads, strict=True):
        if grad is not None:
            torch.testing.assert_close(checkpointed, grad, rtol=1e-4, atol=1e-6)


def test_saved_bytes_counts_each_storage_once_and_leaves_out_parameters() -> None:
    from benchmarks.saved_bytes import model_saved_bytes, saved_bytes

    layer = torch.nn.Linear(64, 32)
    x = torch.randn(10, 64, requires_grad=True)
    # The linear layer keeps its input (its weight is a parameter); the product keeps x twice, one storage.
    assert model_saved_bytes(layer, lambda: layer(x)) == x.numel() * 4
    assert saved_bytes(lambda: (x * x).sum()) == x.numel() * 4
    # q, k and v cut out of one tensor are one storage.
    qkv = torch.randn(10, 3, 64, requires_grad=True)
    q, k, v = qkv.unbind(1)
    assert saved_bytes(lambda: q * k + v * v) == qkv.numel() * 4
    # Nothing is kept without a graph.
    with torch.no_grad():
        assert model_saved_bytes(layer, lambda: layer(x)) == 0


@pytest.mark.parametrize("family", ["classifier", "denoiser"])
def test_a_lightnet_block_keeps_no_more_per_image_than_its_peers(family):
    # The target, which does not depend on the device: the first block of each benchmark model, at DeiT-Ti's
    # and DiT-S/2's size, its input included.
    from benchmarks.saved_bytes import PAIRS, first_block_budget

    lightnet, peer, size = PAIRS[family]
    lightnet_bytes = sum(entry.nbytes for entry in first_block_budget(family, lightnet, size)[0])
    peer_bytes = sum(entry.nbytes for entry in first_block_budget(family, peer, size)[0])
    assert lightnet_bytes <= 0.8 * peer_bytes
