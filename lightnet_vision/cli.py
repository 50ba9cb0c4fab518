"""The `lightnet-vision` command: LightningCLI with the links that keep data and model in agreement."""

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightnet_vision.callbacks import PredictionCSVWriter


class LightNetCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Values the data decides are linked into the model, never typed twice in a config.
        for source, target in [
            ("data.num_classes", "model.init_args.model.init_args.num_classes"),
            ("data.in_chans", "model.init_args.model.init_args.in_chans"),
            ("data.image_size", "model.init_args.model.init_args.img_size"),
            ("data.class_names", "model.init_args.class_names"),
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
