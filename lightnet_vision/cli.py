"""The `lightnet-vision` command: LightningCLI with the links that keep data and model in agreement."""

import sys
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lightnet_vision.callbacks import PredictionCSVWriter


class LightNetCLI(LightningCLI):
    """LightningCLI with the data-to-model links, where a checkpoint's hyperparameters never override what the
    user typed: defaults < checkpoint (`--ckpt_path`) < config files < command line."""

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        self._given_args = args
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        super()._parse_ckpt_path()  # the checkpoint's hyperparameters over the parsed config
        given = self._given_args
        if isinstance(given, (dict, Namespace)):
            self.config = self.parser.parse_object(given, self.config)
        else:
            self.config = self.parser.parse_args(sys.argv[1:] if given is None else given, namespace=self.config)

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


def build_cli(args: list[str] | None = None, run: bool = True) -> LightNetCLI:
    """The CLI on `args` (the command line when None); with `run=False` it only builds trainer, model and data."""
    return LightNetCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [PredictionCSVWriter()]},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main() -> None:
    build_cli()
