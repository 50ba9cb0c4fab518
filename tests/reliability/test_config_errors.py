"""Config mistakes: an unknown key, a wrong type or a missing required value stops the command before anything is
built, with a non-zero exit status and an error that names the key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightnet_vision.cli import build_cli

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
