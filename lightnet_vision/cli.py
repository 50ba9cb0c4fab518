"""The `lightnet-vision` command: LightningCLI that hands the data's description to the task and its backbone."""

import os
import sys
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightnet_vision.callbacks import NonFiniteLoss, PredictionCSVWriter, SampleWriter
from lightnet_vision.checks import check_checkpoint_classes, check_checkpoint_task
from lightnet_vision.cli_messages import ShortErrorParser, help_parser_kwargs, short_error
from lightnet_vision.config_files import resolve_config_args
from lightnet_vision.contract import apply_data_info
from lightnet_vision.datamodules.image_datamodule import ImageDataModule
from lightnet_vision.lightning_compat import CheckpointConfigCLI
from lightnet_vision.plugins import AtomicCheckpointIO
from lightnet_vision.run_folder import (
    SaveRunConfig,
    place_checkpoints,
    resolve_last_checkpoint,
    run_logger,
    run_of_checkpoint,
    run_root,
)


class LightNetCLI(CheckpointConfigCLI):
    """LightningCLI where the data describes itself once and a checkpoint's hyperparameters never override what the
    user typed: defaults < checkpoint (`--ckpt_path`) < config files < command line.

    The DataModule is built first; its `data_info` goes to the task's `data_info`, and what it decides for the
    backbone (the task's `backbone_arguments`) into the backbone's config, before either is built
    (lightnet_vision/contract.py). A config never types the classes, channels or sizes of the data.

    Two defaults make a fit safe to kill: checkpoints are written atomically (`AtomicCheckpointIO`, unless the config
    names another CheckpointIO plugin), and a NaN or infinite loss stops the fit after saving the last good state
    (`NonFiniteLoss("stop")`, unless the config lists a `NonFiniteLoss` of its own, e.g. with `action: skip`).

    Checkpoints are read with `weights_only=True` (the default of `--weights_only`): one that carries pickled code
    is refused with an `UnsafeCheckpointError` naming it, and the code never runs. That and the order of the config
    come from `CheckpointConfigCLI`, which reaches into Lightning's CLI (lightnet_vision/lightning_compat.py).
    """

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        # Before the checkpoint's hyperparameters are merged into the config: another task's fail there as a type
        # error the length of the config.
        subcommand = self.config.get("subcommand")
        if subcommand is not None:
            config = self.config[subcommand]
            resolve_last_checkpoint(config, subcommand)
            check_checkpoint_task(config.get("ckpt_path"), getattr(config.get("model"), "class_path", None))

    def before_instantiate_classes(self) -> None:
        # Again: merging the checkpoint's hyperparameters re-applies the command line, and its `last`.
        if self.subcommand is not None:
            resolve_last_checkpoint(self.config[self.subcommand], self.subcommand, quiet=True)

    def instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        data_config = config.get("data")
        if data_config is None:
            super().instantiate_classes()
            return
        # The data describes itself before the task and its backbone are built. Lightning then builds its own
        # DataModule from the same config: a DataModule's __init__ runs twice and must stay cheap (reading a
        # folder's class names, an index file), as Lightning asks of it anyway.
        data_info = getattr(instantiate_datamodule(data_config), "data_info", None)  # a user's own may give none
        if data_info is not None:
            apply_data_info(config["model"], data_info)
        super().instantiate_classes()

    def after_instantiate_classes(self) -> None:
        # A checkpoint to restore must have been trained on the data's classes; see lightnet_vision/checks.py.
        if self.subcommand is not None:
            check_checkpoint_classes(self.datamodule, self.config_init[self.subcommand].get("ckpt_path"))
        if self.subcommand == "predict" and not has_predict_data(self.datamodule):
            # A generator samples from its own predict loader (which classes, how many): without images to
            # predict on, the data is left out of `predict` so that Lightning asks the task.
            self.datamodule = None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config.get(str(self.subcommand), self.config)
        if config["trainer"].get("logger") in (None, True):  # Lightning's default logger: one folder per run
            root = run_root(config)
            kwargs["logger"] = run_logger(root, run_of_checkpoint(config.get("ckpt_path"), root))
        trainer = super().instantiate_trainer(**kwargs)
        place_checkpoints(trainer)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: no other was asked for
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if not any(isinstance(callback, NonFiniteLoss) for callback in trainer.callbacks):
            trainer.callbacks.insert(0, NonFiniteLoss())
        if not any(isinstance(callback, SampleWriter) for callback in trainer.callbacks):
            trainer.callbacks.append(SampleWriter())  # generated samples go to the run's folder
        return trainer


def build_cli(
    args: list[str] | None = None,
    run: bool = True,
    parser_class: type[LightningArgumentParser] = LightningArgumentParser,
) -> LightNetCLI:
    """The CLI on `args` (the command line when None); with `run=False` it only builds trainer, model and data.
    `parser_class=ShortErrorParser` (the console command's) reports a config mistake in two lines."""
    # A --config that is not a file here may name a shipped config (lightnet_vision/config_files.py).
    if args is None:
        sys.argv[1:] = resolve_config_args(sys.argv[1:])  # LightningCLI reads the command line itself
    else:
        args = resolve_config_args(args)
    return LightNetCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            # No argparse prefix matching: a misspelt key such as --trainer.max_epoch is an error, not max_epochs.
            "allow_abbrev": False,
            # `--help` of the command and of each subcommand ends with how to list the model's and the data's options.
            **help_parser_kwargs(list(LightNetCLI.subcommands())),
        },
        parser_class=parser_class,
        trainer_defaults={"callbacks": [PredictionCSVWriter()]},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main() -> None:
    """The console entry point. A config mistake, or a file or key our code refuses while building or setting up
    model and data, is printed in a line or two and exits with status 2 (parsing) or 1, without a traceback; set
    LIGHTNET_VISION_DEBUG=1 for the full error."""
    # As under `python -m`, modules in the working directory are importable (`class_path: my_module.MyDataModule`);
    # appended, so that a folder there named like an installed package does not hide it.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        build_cli(parser_class=ShortErrorParser)
    except Exception as error:
        message = short_error(error)
        if message is None:
            raise
        sys.exit(message)


def instantiate_datamodule(data_config: Any) -> LightningDataModule:
    """The DataModule of a parsed `data` config (class_path and init_args)."""
    parser = LightningArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    return instantiate(Namespace(data=data_config)).data


def has_predict_data(datamodule: LightningDataModule | None) -> bool:
    """Whether `datamodule` gives images to predict on (an image DataModule only with its `predict_dir` set)."""
    if datamodule is None:
        return False
    if isinstance(datamodule, ImageDataModule):
        return datamodule.predict_dir is not None
    return is_overridden("predict_dataloader", datamodule)
