"""The `lightnet-vision` command: LightningCLI with the links that keep data and model in agreement."""

import os
import sys
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightnet_vision.callbacks import NonFiniteLoss, PredictionCSVWriter
from lightnet_vision.checks import check_checkpoint_classes, check_checkpoint_task
from lightnet_vision.cli_messages import ShortErrorParser, help_parser_kwargs, short_error
from lightnet_vision.config_files import resolve_config_args
from lightnet_vision.lightning_compat import CheckpointConfigCLI
from lightnet_vision.plugins import AtomicCheckpointIO


class LightNetCLI(CheckpointConfigCLI):
    """LightningCLI with the data-to-model links, where a checkpoint's hyperparameters never override what the
    user typed: defaults < checkpoint (`--ckpt_path`) < config files < command line.

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
            check_checkpoint_task(config.get("ckpt_path"), getattr(config.get("model"), "class_path", None))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Values the data decides are linked into the model, never typed twice in a config. A link whose target
        # the chosen backbone does not have is skipped.
        for source, target in [
            ("data.num_classes", "model.init_args.model.init_args.num_classes"),
            ("data.in_chans", "model.init_args.model.init_args.in_chans"),
            ("data.image_size", "model.init_args.model.init_args.img_size"),
            ("data.class_names", "model.init_args.class_names"),
            ("data.image_size", "model.init_args.image_size"),
        ]:
            parser.link_arguments(source, target, apply_on="instantiate")

    def after_instantiate_classes(self) -> None:
        # A checkpoint to restore must have been trained on the data's classes; see lightnet_vision/checks.py.
        if self.subcommand is not None:
            check_checkpoint_classes(self.datamodule, self.config_init[self.subcommand].get("ckpt_path"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: no other was asked for
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if not any(isinstance(callback, NonFiniteLoss) for callback in trainer.callbacks):
            trainer.callbacks.insert(0, NonFiniteLoss())
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
