"""`make demo`: fit, then test the best checkpoint, here on the debug config."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightnet_vision import demo
from lightnet_vision.datamodules import DigitsDataModule
from lightnet_vision.metrics.digits import digits_judge, judge_agreement

DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "classification" / "debug.yaml")


@pytest.mark.slow
def test_demo_fits_and_tests_the_best_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])
    accuracy = demo.main(["--config", DEBUG, "--trainer.enable_progress_bar", "false"])
    assert 0 <= accuracy <= 1
    (checkpoint,) = [path for path in (tmp_path / "runs" / "debug").rglob("*.ckpt") if path.name != "last.ckpt"]
    out = capsys.readouterr().out
    assert f"best checkpoint: {checkpoint.relative_to(tmp_path)}" in out
    assert f"test top-1 accuracy: {accuracy:.2%}" in out


def test_the_digits_judge_knows_real_digits_from_noise():
    judge = digits_judge()
    images, labels = DigitsDataModule().split()
    test = torch.from_numpy(images["test"]).permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, 1, 8, 8] in [-1, 1]
    # Upsampled as the generator's 16x16 samples are, then pooled back by the judge.
    upsampled = torch.nn.functional.interpolate(test, scale_factor=2, mode="nearest")
    assert judge_agreement(judge, upsampled, torch.from_numpy(labels["test"])) > 0.97
    noise = torch.rand(200, 1, 16, 16) * 2 - 1
    assert judge_agreement(judge, noise, torch.arange(10).repeat(20)) < 0.3


@pytest.mark.slow
def test_generate_quickstart_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(Path(DEBUG).parents[1])
    scores = demo.main(["generate", "--fast"])
    assert set(scores) == {"agreement", "precision", "recall", "variety"}
    assert all(0 <= scores[key] <= 1 for key in ("agreement", "precision", "recall"))
    out = capsys.readouterr().out
    assert f"agreement {scores['agreement']:.1%}" in out
    assert f"recall    {scores['recall']:.2f}" in out
    assert f"variety   {scores['variety']:.2f}" in out
    (grid,) = (tmp_path / "runs" / "diffusion_digits").rglob("samples.png")
    assert grid.stat().st_size > 0
    saved = np.load(grid.with_name("samples.npz"))
    assert saved["images"].shape == (20, 1, 16, 16) and saved["labels"].tolist() == [d for d in range(10) for _ in "ab"]
    assert (tmp_path / "runs" / "autoencoder_digits" / "version_0" / "checkpoints" / "last.ckpt").is_file()
