"""One folder per run: a fit, its resumption, its test and its predictions all write into `version_<n>`, and
`--ckpt_path last` finds the newest run's last.ckpt for any config."""

import sys
from pathlib import Path

import pytest
from classification_helpers import write_digit_pngs

from lightnet_vision.cli import build_cli
from lightnet_vision.models.first_stage import FirstStage
from lightnet_vision.run_folder import resolve_last, run_of_checkpoint

DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "classification" / "debug.yaml")
QUIET = "--trainer.accelerator cpu --trainer.enable_progress_bar false --trainer.enable_model_summary false".split()

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])


def run(root: Path, subcommand: str, *extra: str):
    return build_cli([subcommand, "--config", DEBUG, *QUIET, "--trainer.default_root_dir", str(root), *extra])


def test_resume_test_and_predict_write_into_the_run_of_the_checkpoint(tmp_path):
    root = tmp_path / "runs"
    first = run(root, "fit", "--trainer.max_steps", "2", "--ckpt_path", "last")  # nothing to resume: a new run
    assert Path(first.trainer.log_dir) == root / "version_0"
    # debug.yaml names no checkpoint that keeps last.ckpt: the run's own does.
    assert (root / "version_0" / "checkpoints" / "last.ckpt").is_file()

    resumed = run(root, "fit", "--trainer.max_epochs", "2", "--trainer.max_steps", "6", "--ckpt_path", "last")
    assert resumed.trainer.global_step > 2 and Path(resumed.trainer.log_dir) == root / "version_0"
    assert len(list((root / "version_0").glob("events.out.tfevents.*"))) == 2  # one curve, continued

    tested = run(root, "test", "--ckpt_path", "last")
    assert Path(tested.trainer.log_dir) == root / "version_0"
    predict_dir = tmp_path / "to_predict"
    write_digit_pngs(predict_dir, 3)
    run(root, "predict", "--ckpt_path", "last", "--data.init_args.predict_dir", str(predict_dir))
    assert sorted(path.name for path in root.iterdir()) == ["version_0"]  # no folder per test or predict
    written = {path.name for path in (root / "version_0").iterdir()}
    assert {"config.yaml", "config_test.yaml", "config_predict.yaml", "predictions.csv", "checkpoints"} <= written

    fresh = run(root, "fit", "--trainer.max_steps", "1")  # a fit without a checkpoint is a new run
    assert Path(fresh.trainer.log_dir) == root / "version_1"


def test_last_prefers_the_newest_run_and_names_the_root_when_there_is_none(tmp_path):
    for version in (0, 1, 2):
        folder = tmp_path / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        if version < 2:  # the newest run has not written a last.ckpt yet
            (folder / "last.ckpt").touch()
    assert resolve_last(tmp_path, "fit") == str(tmp_path / "version_1" / "checkpoints" / "last.ckpt")
    assert run_of_checkpoint(tmp_path / "version_1" / "checkpoints" / "last.ckpt", tmp_path) == "version_1"
    assert run_of_checkpoint(tmp_path / "elsewhere.ckpt", tmp_path) is None
    with pytest.warns(UserWarning, match="starting a new run"):
        assert resolve_last(tmp_path / "empty", "fit") is None
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        resolve_last(tmp_path / "empty", "test")


def test_a_first_stage_named_by_its_run_root_is_the_newest_last_checkpoint(tiny_autoencoder, tmp_path):
    _, checkpoint = tiny_autoencoder  # <root>/runs/autoencoder_digits/version_0/checkpoints/last.ckpt
    run_root = Path(checkpoint).parents[2]
    assert FirstStage.load(str(run_root)).scale == FirstStage.load(str(checkpoint)).scale
    with pytest.raises(FileNotFoundError, match="no run under it has a checkpoints/last.ckpt"):
        (tmp_path / "version_0").mkdir()
        FirstStage.load(str(tmp_path))
