"""The ready-made configs ship inside the package, and `--config` finds them from any working directory."""

import fnmatch
import sys
from pathlib import Path

import pytest
import yaml

from lightnet_vision.cli import build_cli
from lightnet_vision.config_files import CONFIG_DIR, resolve_config, resolve_config_args, shipped_configs

REPO_ROOT = Path(__file__).resolve().parents[1]


def configs_in_repository() -> list[str]:
    return sorted(
        path.relative_to(REPO_ROOT / "configs").as_posix() for path in (REPO_ROOT / "configs").rglob("*.yaml")
    )


def test_the_package_holds_every_config_of_the_repository():
    # lightnet_vision/configs links to configs/: a copy instead of the link would drift.
    assert CONFIG_DIR.resolve() == (REPO_ROOT / "configs").resolve()
    assert shipped_configs() == configs_in_repository()
    assert "classification/digits.yaml" in shipped_configs()


def test_a_wheel_ships_every_config():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    # What a wheel holds is what pyproject's package data names: every config must match one of its patterns.
    in_repository = configs_in_repository()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["lightnet_vision"]
    unmatched = [name for name in in_repository if not any(fnmatch.fnmatch(f"configs/{name}", p) for p in patterns)]
    assert not unmatched, f"add a package-data pattern for {unmatched}"


def test_a_shipped_config_is_found_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = str(CONFIG_DIR / "classification" / "digits.yaml")
    assert resolve_config("classification/digits.yaml") == shipped
    assert resolve_config("configs/classification/digits.yaml") == shipped  # as the README writes it
    assert resolve_config("classification/absent.yaml") == "classification/absent.yaml"  # left for the parser
    assert resolve_config("trainer: {max_epochs: 1}") == "trainer: {max_epochs: 1}"  # a config as a string
    assert resolve_config("x" * 300) == "x" * 300  # too long for a file name


def test_a_local_file_wins_over_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "configs" / "classification" / "digits.yaml"
    local.parent.mkdir(parents=True)
    local.write_text("seed_everything: 1\n")
    assert resolve_config("configs/classification/digits.yaml") == "configs/classification/digits.yaml"


def test_only_config_arguments_are_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "-c", "diffusion/debug.yaml", "--config=classification/debug.yaml", "--data.init_args.root", "x"]
    assert resolve_config_args(args) == [
        "fit",
        "-c",
        str(CONFIG_DIR / "diffusion" / "debug.yaml"),
        f"--config={CONFIG_DIR / 'classification' / 'debug.yaml'}",
        "--data.init_args.root",
        "x",
    ]


@pytest.mark.slow
def test_the_cli_builds_a_shipped_config_outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightnet-vision"])
    tiny = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    cli = build_cli(["--config", "configs/classification/debug.yaml", *tiny], run=False)
    config = yaml.safe_load((CONFIG_DIR / "classification" / "debug.yaml").read_text())
    assert cli.model.model.embed_dim == config["model"]["init_args"]["model"]["init_args"]["embed_dim"]
