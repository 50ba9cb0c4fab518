"""Crash and resume: a fit killed with SIGKILL mid-epoch and resumed with `--ckpt_path last` ends exactly where an
uninterrupted fit ends, and a checkpoint being written when the process dies never leaves a partial `last.ckpt`."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusion_helpers import run_cli
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from reliability_helpers import (
    CLASSIFICATION_DEBUG,
    DETERMINISTIC,
    QUIET,
    callback,
    read_steps,
    run_lightnet,
    write_yaml,
)

from lightnet_vision.cli import build_cli
from lightnet_vision.plugins import AtomicCheckpointIO

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH, EPOCHS, CHECKPOINT_EVERY, KILLED_AT = 6, 2, 4, 10


def fit_args(root: Path, name: str, checkpoints: Path, *extra_callbacks: dict) -> list[str]:
    """The classification debug config for 2 epochs of 6 batches with EMA and 2 loader workers, `last.ckpt` every
    4 steps in `checkpoints`, and the labels and loss of every batch recorded in `root/<name>/steps.*`."""
    run = root / name
    run.mkdir()
    callbacks = [
        callback("lightning.pytorch.callbacks.EMAWeightAveraging", decay=0.9),
        callback(
            "lightning.pytorch.callbacks.ModelCheckpoint",
            dirpath=str(checkpoints),
            every_n_train_steps=CHECKPOINT_EVERY,
            save_top_k=0,
            save_last=True,
        ),
        callback("reliability_helpers.RecordSteps", path=str(run / "steps")),
        *extra_callbacks,
    ]
    trainer = {"max_epochs": EPOCHS, "limit_train_batches": STEPS_PER_EPOCH, "limit_val_batches": 1}
    trainer |= {"logger": False, "default_root_dir": str(run), "callbacks": callbacks}
    # Two loader workers, as real data has: the loader's state is then spread over worker processes.
    data = {"init_args": {"num_workers": 2}}
    overrides = write_yaml(run / "overrides.yaml", {"trainer": trainer, "data": data})
    return ["fit", "--config", CLASSIFICATION_DEBUG, "--config", overrides, *QUIET, *DETERMINISTIC]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_tensors(expected, actual, where: str) -> None:
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=where)
    elif isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        for key in expected:
            assert_same_tensors(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            assert_same_tensors(left, right, f"{where}[{index}]")
    else:
        assert expected == actual, where


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_fit(tmp_path):
    total = STEPS_PER_EPOCH * EPOCHS
    reference_checkpoints, checkpoints = tmp_path / "reference_checkpoints", tmp_path / "checkpoints"
    uninterrupted = run_cli(tmp_path, fit_args(tmp_path, "uninterrupted", reference_checkpoints))
    assert uninterrupted.trainer.global_step == total

    # Killed by SIGKILL as the batch after step 10 starts (epoch 1, batch 4): the last checkpoint is that of step 8,
    # in the middle of epoch 1.
    killer = callback("reliability_helpers.SigkillAtStep", step=KILLED_AT)
    killed = run_lightnet(fit_args(tmp_path, "crashed", checkpoints, killer), cwd=tmp_path, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    assert sorted(path.name for path in checkpoints.iterdir()) == ["last.ckpt"]
    assert load(checkpoints / "last.ckpt")["global_step"] == 8

    # The same command again, with --ckpt_path last.
    resumed = run_cli(tmp_path, [*fit_args(tmp_path, "resumed", checkpoints), "--ckpt_path", "last"])
    assert resumed.trainer.global_step == total

    # Data position: the resumed fit trains on exactly the batches the uninterrupted one trained on after step 8,
    # neither replaying the start of epoch 1 nor skipping into epoch 2.
    reference = read_steps(tmp_path / "uninterrupted" / "steps")
    before = read_steps(tmp_path / "crashed" / "steps")
    after = read_steps(tmp_path / "resumed" / "steps")
    assert [row["step"] for row in before] == list(range(1, KILLED_AT + 1))
    assert [row["step"] for row in after] == list(range(9, total + 1))
    assert [row["labels"] for row in before] == [row["labels"] for row in reference[:KILLED_AT]]
    assert [row["labels"] for row in after] == [row["labels"] for row in reference[8:]]
    # Model, optimizer and schedule restored: the same losses step by step.
    torch.testing.assert_close(
        torch.tensor([row["loss"] for row in after]), torch.tensor([row["loss"] for row in reference[8:]])
    )

    # Weights, EMA, optimizer moments, schedule, step and loop state at the end: those of the uninterrupted fit.
    final, expected = load(checkpoints / "last.ckpt"), load(reference_checkpoints / "last.ckpt")
    assert final["global_step"] == expected["global_step"] == total
    for key in ("state_dict", "current_model_state", "averaging_state", "optimizer_states", "lr_schedulers"):
        assert_same_tensors(expected[key], final[key], key)
    assert final["loops"]["fit_loop"]["epoch_progress"] == expected["loops"]["fit_loop"]["epoch_progress"]
    (ema_state,) = [value for key, value in final["callbacks"].items() if key.startswith("EMAWeightAveraging")]
    assert ema_state == {"latest_update_step": total}
    torch.testing.assert_close(
        resumed.trainer.callback_metrics["val/loss"], uninterrupted.trainer.callback_metrics["val/loss"]
    )


@pytest.fixture
def previous_checkpoint(tmp_path) -> tuple[Path, dict]:
    """`tmp_path/checkpoints/last.ckpt` written once by AtomicCheckpointIO, and what it holds."""
    content = {"state_dict": {"weight": torch.arange(6.0)}, "global_step": 4}
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(content, path)
    return path, content


def test_a_save_failing_half_way_keeps_the_previous_checkpoint(previous_checkpoint, monkeypatch):
    path, previous = previous_checkpoint
    real_save = torch.save

    def half_then_fail(obj, file, *args, **kwargs):
        real_save(obj, buffer := __import__("io").BytesIO())
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    new = {"state_dict": {"weight": torch.zeros(1000)}, "global_step": 8}
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint(new, path)
    assert [entry.name for entry in path.parent.iterdir()] == ["last.ckpt"]  # the partial file is gone too
    assert_same_tensors(previous, torch.load(path, weights_only=True), "last.ckpt")


_KILLED_WRITER = """
import io, sys, time, torch
from lightnet_vision.plugins import AtomicCheckpointIO
real_save = torch.save
def half_then_hang(obj, file, *args, **kwargs):
    real_save(obj, buffer := io.BytesIO())
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    file.flush()
    print("half written", flush=True)
    time.sleep(120)
torch.save = half_then_hang
AtomicCheckpointIO().save_checkpoint({"state_dict": {"weight": torch.zeros(100_000)}}, sys.argv[1])
"""


def test_a_save_killed_half_way_keeps_the_previous_checkpoint(previous_checkpoint):
    path, previous = previous_checkpoint
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert writer.stdout.readline().strip() == "half written"
        writer.kill()  # SIGKILL while the new checkpoint is half on disk
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            os.killpg(writer.pid, signal.SIGKILL)
    assert_same_tensors(previous, torch.load(path, weights_only=True), "last.ckpt")
    # The half-written bytes sit in a hidden temporary file that `--ckpt_path last` (last*.ckpt) never picks.
    (leftover,) = [entry for entry in path.parent.iterdir() if entry != path]
    assert leftover.name.startswith(".last.ckpt.") and leftover.suffix == ".tmp" and leftover.stat().st_size > 0
    assert sorted(path.parent.glob("last*.ckpt")) == [path]


def test_the_new_file_is_synced_then_renamed_within_its_directory(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", fd)) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: events.append(("replace", src, dst)) or real_replace(src, dst))
    path = tmp_path / "deep" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, path)
    assert [event[0] for event in events] == ["fsync", "replace", "fsync"]  # file, rename, directory
    _, source, target = events[1]
    assert Path(source).parent == Path(target).parent == path.parent  # a rename, never a copy across filesystems
    assert torch.load(path, weights_only=True) == {"global_step": 1}


def test_the_cli_saves_atomically_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])
    base = ["--config", CLASSIFICATION_DEBUG, "--trainer.logger", "false"]
    cli = build_cli(base, run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    # A CheckpointIO the config names is kept.
    cli = build_cli([*base, "--trainer.plugins", "lightning.pytorch.plugins.io.AsyncCheckpointIO"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AsyncCheckpointIO)
