"""`make demo`: fit, then test the best checkpoint, here on the debug config."""

import sys
from pathlib import Path

import pytest

from lightnet_vision import demo

DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "classification" / "debug.yaml")


@pytest.mark.slow
def test_demo_fits_and_tests_the_best_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])
    accuracy = demo.main(["--config", DEBUG, "--trainer.enable_progress_bar", "false"])
    assert 0 <= accuracy <= 1
    (checkpoint,) = (tmp_path / "runs" / "debug").rglob("*.ckpt")
    out = capsys.readouterr().out
    assert f"best checkpoint: {checkpoint.relative_to(tmp_path)}" in out
    assert f"test top-1 accuracy: {accuracy:.2%}" in out
