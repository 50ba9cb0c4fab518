"""The `lightnet-vision` CLI end to end on configs/classification/debug.yaml: fit, test, predict, checkpoints."""

import csv
import sys
from pathlib import Path

import pytest
import torch
import yaml
from classification_helpers import write_digit_pngs

from lightnet_vision.cli import build_cli
from lightnet_vision.datamodules import DigitsDataModule
from lightnet_vision.tasks import ImageClassification

DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "classification" / "debug.yaml")
QUIET = "--trainer.accelerator cpu --trainer.enable_progress_bar false --trainer.enable_model_summary false".split()

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    # LightningCLI warns when it sees both `args` and a command line; the command line here is pytest's.
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])


def run(subcommand: str, root: Path, *extra: str):
    """The CLI on debug.yaml with every output under `root`."""
    outputs = ["--trainer.default_root_dir", str(root)]
    return build_cli([subcommand, "--config", DEBUG, *QUIET, *outputs, *extra])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One short fit (4 steps) shared by the tests that need a checkpoint."""
    root = tmp_path_factory.mktemp("fit")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["lightnet-vision"])
        cli = run("fit", root)
    (checkpoint,) = [path for path in root.rglob("*.ckpt") if path.name != "last.ckpt"]
    return cli, checkpoint


def test_fit_fast_dev_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", DEBUG, *QUIET, "--trainer.fast_dev_run", "true"])
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert cli.model.model.num_classes == 10 and cli.model.model.in_chans == 1 and cli.model.model.img_size == 16


def test_fit_writes_a_checkpoint_and_the_documented_metrics(fitted):
    cli, checkpoint = fitted
    assert cli.trainer.global_step == 4  # limit_train_batches in debug.yaml
    assert checkpoint.parent.name == "checkpoints"
    assert {"train/loss", "train/lr", "val/loss", "val/acc1", "val/acc5"} <= cli.trainer.callback_metrics.keys()


def test_checkpoint_round_trip_gives_identical_logits(fitted):
    cli, checkpoint = fitted
    loaded = ImageClassification.load_from_checkpoint(checkpoint).eval()
    assert isinstance(loaded.model, type(cli.model.model))
    assert loaded.class_names == [str(digit) for digit in range(10)]
    assert (loaded.model.num_classes, loaded.model.in_chans, loaded.model.img_size) == (10, 1, 16)
    assert loaded.hparams.mixup_alpha == 0.2 and loaded.hparams.cutmix_alpha == 1.0
    fitted_state = cli.model.state_dict()
    assert loaded.state_dict().keys() == fitted_state.keys()
    images = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), cli.model.eval()(images), rtol=0, atol=0)


def test_test_reports_the_accuracy_of_the_checkpoint(fitted, tmp_path):
    cli, checkpoint = fitted
    tested = run("test", tmp_path, "--ckpt_path", str(checkpoint))
    metrics = tested.trainer.callback_metrics
    assert {"test/acc1", "test/acc5"} <= metrics.keys()
    # The same two test batches (limit_test_batches: 2) scored by the fitted module itself.
    data = DigitsDataModule(image_size=16, batch_size=16)
    data.setup("test")
    correct = total = 0
    model = cli.model.eval()
    with torch.no_grad():
        for _, (images, labels) in zip(range(2), data.test_dataloader(), strict=False):
            correct += (model(images).argmax(-1) == labels).sum().item()
            total += len(labels)
    assert metrics["test/acc1"].item() == pytest.approx(correct / total)


@pytest.mark.parametrize("image_size", [24, 32])
def test_checkpoint_evaluates_at_another_size(fitted, tmp_path, image_size):
    _, checkpoint = fitted
    tested = run("test", tmp_path, "--ckpt_path", str(checkpoint), "--data.init_args.image_size", str(image_size))
    assert tested.model.model.img_size == image_size
    assert next(iter(tested.datamodule.test_dataloader()))[0].shape[-2:] == (image_size, image_size)
    assert 0 <= tested.trainer.callback_metrics["test/acc1"].item() <= 1


def test_predict_writes_one_csv_row_per_image(fitted, tmp_path):
    _, checkpoint = fitted
    images = write_digit_pngs(tmp_path / "to_predict", 5)
    predict_dir = ["--data.init_args.predict_dir", str(tmp_path / "to_predict")]
    run("predict", tmp_path / "run", "--ckpt_path", str(checkpoint), *predict_dir)
    (csv_path,) = (tmp_path / "run").rglob("predictions.csv")
    with open(csv_path, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["path", "class", "probability"]
    assert len(rows) == len(images)
    assert sorted(path for path, _, _ in rows) == sorted(str(path) for path in images)
    for _, name, probability in rows:
        assert name in [str(digit) for digit in range(10)]
        assert 0.1 <= float(probability) <= 1  # the top probability of 10 classes is at least 1/10


@pytest.mark.parametrize("logger", [True, False], ids=["logger", "no-logger"])
def test_rerun_in_the_same_folder_saves_each_config(tmp_path, logger):
    extra = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    if not logger:
        extra += ["--trainer.logger", "false"]  # both runs write config.yaml into the same folder
    for _ in range(2):
        run("fit", tmp_path, *extra)
    configs = sorted(tmp_path.rglob("config.yaml"))
    assert len(configs) == (2 if logger else 1)
    for path in configs:
        config = yaml.safe_load(path.read_text())
        assert config["trainer"]["limit_train_batches"] == 1
        assert config["data"]["class_path"] == "lightnet_vision.datamodules.DigitsDataModule"
        assert config["model"]["init_args"]["model"]["init_args"]["embed_dim"] == 32
