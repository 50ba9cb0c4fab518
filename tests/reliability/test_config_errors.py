"""Config mistakes: an unknown key, a wrong type or a missing required value stops the command before anything is
built, with a non-zero exit status and an error that names the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightnet_vision.checks import check_checkpoint_task
from lightnet_vision.cli import build_cli, main
from lightnet_vision.tasks import ImageClassification

REPO_ROOT = Path(__file__).resolve().parents[2]
DEBUG = REPO_ROOT / "configs" / "classification" / "debug.yaml"


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])


def edited_debug_config(tmp_path: Path, edit) -> str:
    """configs/classification/debug.yaml after `edit(config)`, written under `tmp_path`."""
    config = yaml.safe_load(DEBUG.read_text())
    edit(config)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def backbone(config: dict) -> dict:
    return config["model"]["init_args"]["model"]["init_args"]


# (arguments after `fit --config <debug.yaml or its edit>`, edit of the config, what the error must name)
MISTAKES = {
    "unknown-key-on-command-line": (["--trainer.no_such_key", "3"], None, "trainer.no_such_key"),
    # A prefix of a real key (max_epochs) is still a mistake: argparse would take it as the abbreviation.
    "misspelt-key-on-command-line": (["--trainer.max_epoch", "3"], None, "trainer.max_epoch"),
    "unknown-key-in-backbone": ([], lambda c: backbone(c).update(dept=3), "'dept'"),
    "unknown-key-in-data": ([], lambda c: c["data"]["init_args"].update(batchsize=8), "'batchsize'"),
    "wrong-type-on-command-line": (["--data.init_args.batch_size", "many"], None, '"batch_size"'),
    "wrong-type-in-trainer": ([], lambda c: c["trainer"].update(max_epochs="ten"), '"trainer.max_epochs"'),
    "wrong-type-in-task": ([], lambda c: c["model"]["init_args"].update(label_smoothing="lots"), '"label_smoothing"'),
    "missing-data-root": (["--data", "lightnet_vision.datamodules.ImageFolderDataModule"], None, "required: root"),
    "missing-backbone": ([], lambda c: c["model"]["init_args"].pop("model"), "required: model"),
}


@pytest.mark.parametrize(("extra", "edit", "key"), MISTAKES.values(), ids=MISTAKES.keys())
@pytest.mark.slow
def test_mistake_exits_non_zero_naming_the_key(tmp_path, capsys, extra, edit, key):
    config = edited_debug_config(tmp_path, edit) if edit else str(DEBUG)
    with pytest.raises(SystemExit) as exit_:
        build_cli(["fit", "--config", config, *extra])
    assert exit_.value.code not in (0, None)
    # The usage text above the error lists every valid key, so only the error itself counts.
    error = capsys.readouterr().err.split("error:", 1)[-1]
    assert key in error


@pytest.mark.slow
def test_the_command_exits_with_status_2(tmp_path):
    # The console entry point itself: what a shell script or a job scheduler sees.
    command = [sys.executable, "-m", "lightnet_vision", "fit", "--config", str(DEBUG), "--trainer.max_epoch", "3"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "trainer.max_epoch" in result.stderr.split("error:", 1)[-1]
    # The command's short form: the error and a hint, not the usage block of every key.
    assert len(result.stderr.strip().splitlines()) <= 3 and "usage:" not in result.stderr


# The same mistakes given to the console command (`main`): one line that names the key by its dotted path, one
# line of hint, status 2; no usage block, no union dump.
SHORT = {
    "unknown-key-on-command-line": "--trainer.no_such_key",
    "misspelt-key-on-command-line": "--trainer.max_epoch 3 (did you mean --trainer.max_epochs?)",
    "unknown-key-in-backbone": "model.init_args.model.init_args.dept: not an argument of",
    "unknown-key-in-data": "data.init_args.batchsize: not an argument of",
    "wrong-type-on-command-line": "data.init_args.batch_size: Expected a <class 'int'>. Got value: many",
    "wrong-type-in-trainer": "trainer.max_epochs: Expected a <class 'int'>. Got value: ten",
    "wrong-type-in-task": "model.init_args.label_smoothing: Expected a <class 'float'>",
    "missing-data-root": "required: root",
    "missing-backbone": "required: model",
}


def run_main(monkeypatch, argv: list[str]) -> object:
    """`lightnet-vision <argv>` in this process; the exit code (a message is exit status 1)."""
    monkeypatch.setattr(sys, "argv", ["lightnet-vision", *argv])
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() adds the working directory
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_command_reports_a_mistake_in_two_lines(tmp_path, capsys, monkeypatch, mistake):
    extra, edit, _ = MISTAKES[mistake]
    config = edited_debug_config(tmp_path, edit) if edit else str(DEBUG)
    code = run_main(monkeypatch, ["fit", "--config", config, *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 2 and lines[0].startswith("error: ")
    assert SHORT[mistake] in lines[0]
    assert "LIGHTNET_VISION_DEBUG=1" in lines[1]


def test_a_missing_data_root_is_one_line_naming_the_folder(tmp_path, capsys, monkeypatch):
    root = tmp_path / "nope"
    data = ["--data", "lightnet_vision.datamodules.ImageFolderDataModule", "--data.init_args.root", str(root)]
    code = run_main(monkeypatch, ["fit", "--config", str(DEBUG), *data])
    # Raised by the DataModule, wrapped by jsonargparse in its union error: only the DataModule's message is left.
    assert isinstance(code, str) and code.startswith("error: ") and len(code.splitlines()) == 2
    assert f"{root / 'train'} does not exist" in code and "Union" not in code
    assert "Traceback" not in capsys.readouterr().err


def test_debug_variable_gives_the_whole_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNET_VISION_DEBUG", "1")
    data = ["--data", "lightnet_vision.datamodules.ImageFolderDataModule", "--data.init_args.root", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["lightnet-vision", "fit", "--config", str(DEBUG), *data])
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(ValueError) as raised:
        main()
    assert isinstance(raised.value.__cause__, FileNotFoundError)


def save_checkpoint(path: Path, hparams: dict) -> Path:
    """A checkpoint laid out as Lightning writes one, with no weights."""
    torch.save({"state_dict": {}, "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0"}, path)
    return path


def test_a_checkpoint_of_another_task_is_named_as_such(tmp_path, monkeypatch):
    hparams = {"_class_path": "lightnet_vision.tasks.LatentDiffusion", "first_stage": "pixel", "sampler": "ddim"}
    checkpoint = save_checkpoint(tmp_path / "diffusion.ckpt", hparams)
    code = run_main(monkeypatch, ["fit", "--config", str(DEBUG), "--ckpt_path", str(checkpoint)])
    assert isinstance(code, str) and len(code.splitlines()) == 2
    assert f"checkpoint {checkpoint} was saved by task LatentDiffusion, this config trains ImageClassification" in code


def test_a_checkpoint_saved_from_python_is_judged_by_its_hyperparameters(tmp_path, monkeypatch):
    # No `_class_path`: saved by a task built in Python; its hyperparameters are not ImageClassification's.
    checkpoint = save_checkpoint(tmp_path / "python.ckpt", {"first_stage": "pixel", "sampler": "ddim"})
    code = run_main(monkeypatch, ["test", "--config", str(DEBUG), "--ckpt_path", str(checkpoint)])
    assert isinstance(code, str)
    assert "was not saved by task ImageClassification: its hyperparameters first_stage, sampler" in code


def test_a_checkpoint_of_the_same_task_or_its_parent_passes(tmp_path):
    same = save_checkpoint(tmp_path / "same.ckpt", {"_class_path": "lightnet_vision.tasks.ImageClassification"})
    check_checkpoint_task(same, "lightnet_vision.tasks.ImageClassification")
    check_checkpoint_task(same, f"{__name__}.MyClassification")  # a subclass resuming its parent's checkpoint
    plain = save_checkpoint(tmp_path / "plain.ckpt", {"label_smoothing": 0.1, "mixup_alpha": 0.0})
    check_checkpoint_task(plain, "lightnet_vision.tasks.ImageClassification")
    with pytest.raises(ValueError, match="saved by task ImageClassification, this config trains LatentDiffusion"):
        check_checkpoint_task(same, "lightnet_vision.tasks.LatentDiffusion")


class MyClassification(ImageClassification):
    """A user's own task on top of ImageClassification."""
