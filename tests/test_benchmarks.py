"""benchmarks/models.py: the helpers its numbers rest on, and a `--quick` run of every family on tiny shapes."""

import csv
import functools

import pytest
import torch

pytest.importorskip("timm", reason="the classifier peers are timm's DeiTs: pip install -e '.[dev]'")

from benchmarks import models as bench  # noqa: E402 (after the skip)


def test_throughput_takes_the_median_call_and_ratios_are_lightnet_over_peer() -> None:
    # One disturbed call (100 s) must not move the median; a mean would give 8 / 34.3 s.
    lightnet = bench.throughput([1.0, 100.0, 2.0], items_per_call=8)
    peer = bench.throughput([4.0, 5.0, 4.0], items_per_call=8)
    assert lightnet == 4.0
    assert peer == 2.0
    assert bench.ratio(lightnet, peer) == 2.0
    assert bench.ratio(None, peer) is None
    assert bench.ratio(lightnet, None) is None
    assert bench.throughput([], items_per_call=8) is None


def test_calls_alternate_and_warmup_rounds_are_not_kept() -> None:
    order = []
    calls = {"lightnet": lambda: order.append("lightnet"), "peer": lambda: order.append("peer")}
    timings, warmup, repeats = bench.time_interleaved(calls, repeats=3, warmup=2, device="cpu", max_seconds=60)
    assert order == ["lightnet", "peer"] * 5
    assert (warmup, repeats) == (2, 3)
    assert [len(timings[name].seconds) for name in calls] == [3, 3]


def test_a_side_out_of_memory_is_skipped_while_the_other_is_still_timed() -> None:
    def out_of_memory() -> None:
        raise torch.OutOfMemoryError("tried to allocate 1 TiB")

    calls = {"lightnet": lambda: None, "peer": out_of_memory}
    timings, _, _ = bench.time_interleaved(calls, repeats=3, warmup=1, device="cpu", max_seconds=60)
    assert timings["peer"].skipped.startswith("out of memory")
    assert timings["peer"].seconds == []
    assert len(timings["lightnet"].seconds) == 3 and not timings["lightnet"].skipped


def test_slow_calls_get_fewer_rounds_and_too_slow_calls_are_skipped(monkeypatch) -> None:
    monkeypatch.setattr(bench, "SLOW_CALL_SECONDS", 0.0)
    order = []
    calls = {"lightnet": lambda: order.append("lightnet"), "peer": lambda: order.append("peer")}
    timings, warmup, repeats = bench.time_interleaved(calls, repeats=5, warmup=2, device="cpu", max_seconds=60)
    assert (warmup, repeats) == (1, bench.SLOW_CALL_REPEATS)
    assert len(order) == 2 * (1 + bench.SLOW_CALL_REPEATS)

    timings, _, _ = bench.time_interleaved(calls, repeats=2, warmup=1, device="cpu", max_seconds=0.0)
    assert all("--max-seconds" in timing.skipped and not timing.seconds for timing in timings.values())


def allocating_step(mebibytes: int):
    def step() -> None:
        # Filled, so that every page is really resident.
        torch.ones(mebibytes * 2**20 // 4).sum()

    return step


def test_peak_memory_of_a_step_in_a_fresh_process_counts_torch_allocations() -> None:
    # The whole process holds hundreds of MiB (Python, torch): only the step's 64 MiB may be counted.
    peak = bench.measure_peak_memory(functools.partial(allocating_step, 64), "cpu", threads=1)
    assert 60 < peak < 80


def test_quick_run_writes_one_row_per_pair_size_and_mode(tmp_path) -> None:
    out = tmp_path / "models.csv"
    bench.main(["--quick", "--no-memory", "--out", str(out)])
    lines = out.read_text().splitlines()
    comments = {line[2:].split(":", 1)[0] for line in lines if line.startswith("#")}
    assert {"date", "command", "machine", "device", "threads", "dtype", "versions"} <= comments
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))

    expected = {
        (family, mode, str(size), lightnet, peer)
        for family, pairs in bench.PAIRS.items()
        for lightnet, peer in pairs
        for size in bench.QUICK_SIZES[family]
        for mode in bench.MODES
    }
    assert len(rows) == len(expected)
    assert {(row["family"], row["mode"], row["size"], row["lightnet"], row["peer"]) for row in rows} == expected
    for row in rows:
        lightnet, peer = float(row["lightnet_throughput"]), float(row["peer_throughput"])
        assert lightnet > 0 and peer > 0 and row["skipped"] == ""
        assert float(row["throughput_ratio"]) == pytest.approx(lightnet / peer, rel=2e-3)
        assert row["lightnet_peak_mib"] == row["memory_ratio"] == ""  # --no-memory
    mixer = next(row for row in rows if row["family"] == "mixer")
    assert mixer["unit"] == "tokens/s" and int(mixer["tokens"]) == int(mixer["size"]) ** 2
    assert out.with_suffix(".png").stat().st_size > 10_000
