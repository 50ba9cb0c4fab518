"""One folder per training run, under one knob: `trainer.default_root_dir`.

A fit writes everything into `<default_root_dir>/version_<n>/`: TensorBoard curves, `hparams.yaml`, `config.yaml`,
`checkpoints/` (with `last.ckpt`), sample grids. `test`, `predict` and a resumed fit given a checkpoint of that
run write into the same folder (`config_test.yaml`, `predictions.csv`, `samples/`, ...), so a resumed fit's
curves go on where they stopped. `--ckpt_path last` is the `last.ckpt` of the newest run under the root, for any
config; a fit that finds none starts a new run and says so.
"""

import os
import re
import warnings
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

_VERSION = re.compile(r"version_(\d+)")


def runs_under(root: str | Path) -> list[Path]:
    """The run folders `version_<n>` under `root`, oldest (lowest n) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [path for path in root.iterdir() if path.is_dir() and _VERSION.fullmatch(path.name)]
    return sorted(runs, key=lambda path: int(_VERSION.fullmatch(path.name).group(1)))


def newest_last_checkpoint(root: str | Path) -> str | None:
    """`last.ckpt` of the newest run under `root` that has one, else None."""
    for run in reversed(runs_under(root)):
        last = run / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
    return None


def resolve_last(root: str | Path, subcommand: str, checkpoint_dirs: list[str] = ()) -> str | None:
    """`last.ckpt` of the newest run under `root` that has one, else of a checkpoint folder the config names
    (`checkpoint_dirs`, or `<root>/checkpoints` when a fit logs nowhere). None (with a warning) for a fit that finds
    none; an error for any other subcommand, which has nothing to start from."""
    last = newest_last_checkpoint(root)
    if last is not None:
        return last
    for folder in [*checkpoint_dirs, Path(root) / "checkpoints"]:
        if (Path(folder) / "last.ckpt").is_file():
            return str(Path(folder) / "last.ckpt")
    if subcommand == "fit":
        warnings.warn(f"--ckpt_path last: no run under {root} has a last.ckpt yet; starting a new run", stacklevel=2)
        return None
    raise FileNotFoundError(
        f"--ckpt_path last: no run under {root} has a last.ckpt (set --trainer.default_root_dir to the folder of "
        "the fit, or give the checkpoint's path)"
    )


def run_of_checkpoint(ckpt_path: str | Path | None, root: str | Path) -> str | None:
    """The version folder name of a checkpoint that lies in `<root>/version_<n>/checkpoints/`, else None."""
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).resolve()
    if path.parent.name != "checkpoints" or path.parent.parent.parent != Path(root).resolve():
        return None
    version = path.parent.parent.name
    return version if _VERSION.fullmatch(version) else None


def run_logger(root: str | Path, version: str | None) -> TensorBoardLogger:
    """TensorBoard logging into `<root>/version_<n>`: the given run's folder, or a new one."""
    return TensorBoardLogger(save_dir=str(root), name="", version=version, default_hp_metric=False)


def place_checkpoints(trainer: Trainer) -> None:
    """Checkpoints without a folder of their own go to the run's `checkpoints/`, and one of them writes
    `last.ckpt`, which `--ckpt_path last` resumes from."""
    callbacks = [callback for callback in trainer.callbacks if isinstance(callback, ModelCheckpoint)]
    if callbacks and not any(callback.save_last for callback in callbacks):
        callbacks[0].save_last = True


class SaveRunConfig(SaveConfigCallback):
    """Saves the config of each subcommand into the run's folder: `config.yaml` for `fit`, `config_<stage>.yaml`
    for the others, so that testing or predicting with a run's checkpoint keeps the config of its fit."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # a TrainerFn member or its value
        self.config_filename = "config.yaml" if stage == "fit" else f"config_{stage}.yaml"
        super().setup(trainer, pl_module, stage)


def run_root(config: Namespace) -> str:
    """Where runs go: `trainer.default_root_dir` (the working directory when unset, as in Lightning)."""
    return os.path.abspath(config["trainer"].get("default_root_dir") or os.getcwd())


def resolve_last_checkpoint(config: Namespace, subcommand: str, quiet: bool = False) -> None:
    """`--ckpt_path last` becomes the newest run's `last.ckpt` under the run root, for any config (None for a fit
    that finds none, which starts a new run)."""
    if config.get("ckpt_path") == "last":
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            config["ckpt_path"] = resolve_last(run_root(config), subcommand, checkpoint_dirs(config))


def checkpoint_dirs(config: Namespace) -> list[str]:
    """The folders the config's `ModelCheckpoint` callbacks name (most write into the run's folder and name none)."""
    callbacks = config["trainer"].get("callbacks") or []
    folders = []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        init_args = callback.get("init_args") if isinstance(callback, Namespace) else None
        if init_args is not None and str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            if init_args.get("dirpath"):
                folders.append(str(init_args["dirpath"]))
    return folders
