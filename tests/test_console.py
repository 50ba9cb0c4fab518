"""The `lightnet-vision` console command where a newcomer meets it: modules of their own in the working directory,
and a `--help` that leads to the model's and the data's options."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn

from lightnet_vision import cli_messages
from lightnet_vision.cli import main

DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "classification" / "debug.yaml")
COMMAND = Path(sys.executable).with_name("lightnet-vision")  # the console script, as pip installed it

MY_MODULE = '''
from lightnet_vision.datamodules import DigitsDataModule


class MyDataModule(DigitsDataModule):
    """The digits under a name of the user's own, with an argument of its own."""

    def __init__(self, flavour: str = "plain", **kwargs) -> None:
        super().__init__(**kwargs)
        self.flavour = flavour
'''


def run_main(monkeypatch, capsys, argv: list[str]) -> tuple[object, str]:
    """`lightnet-vision <argv>` in this process: the exit code and what it printed."""
    monkeypatch.setattr(sys, "argv", ["lightnet-vision", *argv])
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() adds the working directory
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not COMMAND.is_file(), reason="the console script is not installed next to this interpreter")
def test_a_module_in_the_working_directory_is_importable(tmp_path):
    # The console script, not `python -m` or `python -c`: those put the working directory on sys.path themselves.
    (tmp_path / "my_module.py").write_text(MY_MODULE)
    data = ["--data", "my_module.MyDataModule", "--data.init_args.flavour", "spicy"]
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    command = [str(COMMAND), "fit", "--config", DEBUG, *data, "--print_config"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # jsonargparse read the class's signature: the module was imported.
    data_config = yaml.safe_load(result.stdout)["data"]
    assert data_config["class_path"] == "my_module.MyDataModule"
    assert data_config["init_args"]["flavour"] == "spicy"


def test_main_puts_the_working_directory_on_the_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_module.py").write_text(MY_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_module", raising=False)
    argv = ["fit", "--config", DEBUG, "--data", "my_module.MyDataModule", "--print_config"]
    code, out = run_main(monkeypatch, capsys, argv)
    assert code in (0, None)
    assert yaml.safe_load(out)["data"]["init_args"]["flavour"] == "plain"


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_help_ends_with_how_to_list_model_and_data_options(monkeypatch, capsys, subcommand):
    code, out = run_main(monkeypatch, capsys, [subcommand, "--help"])
    assert code in (0, None)
    epilog = out[out.index("The model's and the data's options") :]
    assert f"lightnet-vision {subcommand} --model.help lightnet_vision.tasks.ImageClassification" in epilog
    assert f"lightnet-vision {subcommand} --data.help lightnet_vision.datamodules.DigitsDataModule" in epilog
    assert "LIGHTNET_VISION_DEBUG=1" in epilog
    # Kept as written, one command a line.
    assert f"\n  lightnet-vision {subcommand} --data.help" in epilog


def test_the_commands_the_help_shows_list_the_options(monkeypatch, capsys):
    code, out = run_main(monkeypatch, capsys, ["fit", "--model.help", "lightnet_vision.tasks.ImageClassification"])
    assert code in (0, None) and "--model.label_smoothing" in out
    code, out = run_main(monkeypatch, capsys, ["fit", "--data.help", "lightnet_vision.datamodules.DigitsDataModule"])
    assert code in (0, None) and "--data.batch_size" in out
    task, backbone = "lightnet_vision.tasks.ImageClassification", "lightnet_vision.models.LightNet"
    code, out = run_main(monkeypatch, capsys, ["fit", "--model", task, "--model.init_args.model.help", backbone])
    assert code in (0, None) and "--model.embed_dim" in out


def test_the_help_lists_every_task_and_datamodule_shipped():
    tasks = importlib.import_module("lightnet_vision.tasks")
    datamodules = importlib.import_module("lightnet_vision.datamodules")
    models = importlib.import_module("lightnet_vision.models")
    shipped_tasks = {name for name in tasks.__all__ if issubclass(getattr(tasks, name), LightningModule)}
    # ImageDataModule is the base the others share, not a data source.
    shipped_data = {
        name
        for name in datamodules.__all__
        if issubclass(getattr(datamodules, name), LightningDataModule) and name != "ImageDataModule"
    }
    assert set(cli_messages.TASKS) == shipped_tasks
    assert set(cli_messages.DATAMODULES) == shipped_data
    assert all(issubclass(getattr(models, name), nn.Module) for name in cli_messages.BACKBONES)


def test_the_command_help_points_at_the_subcommand_help(monkeypatch, capsys):
    code, out = run_main(monkeypatch, capsys, ["--help"])
    assert code in (0, None) and out.rstrip().endswith("lightnet-vision fit --help")
