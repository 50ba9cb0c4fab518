"""What every task shares: its data description, hyperparameters a config can rebuild, optimizer groups and schedule,
compiling the backbone, and resuming a fit mid-epoch. Each task keeps only its own steps and checks."""

from typing import Any

from lightning.pytorch import LightningModule
from torch import nn

from lightnet_vision.datamodules.data_info import DataInfo
from lightnet_vision.lightning_compat import restore_train_loader_position, train_loader_states
from lightnet_vision.tasks.optim import OptimizerCallable, SchedulerCallable, configure_optimizers


class Task(LightningModule):
    """A LightningModule around an injected backbone `model`.

    Subclasses call `super().__init__(...)`, then `self.save_hyperparameters()` in their own `__init__` (Lightning
    reads the arguments from that frame) and `self.keep_config_hyperparameters()`.

    Args:
        model: The backbone.
        optimizer: Called with the backbone's parameter groups (no weight decay on biases, norms, 1-D parameters
            and the backbone's `no_weight_decay()` names).
        lr_scheduler: Called with the optimizer, the fit's total optimizer steps and the steps per epoch; stepped
            every optimizer step. None keeps the learning rate constant.
        data_info: The data's description (`DataInfo`, or its dict from a checkpoint); the CLI passes the
            DataModule's.
        compile: `torch.compile` the backbone in place before the first step (`nn.Module.compile`: parameter
            names, checkpoints and EMA weights stay those of the eager model).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable,
        lr_scheduler: SchedulerCallable | None,
        data_info: DataInfo | dict[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.data_info = DataInfo.coerce(data_info)
        self.compile_backbone = compile
        self._train_loader_states: list[dict] = []  # the loader position of the checkpoint a fit resumes from

    @classmethod
    def backbone_arguments(cls, data_info: DataInfo, task_arguments: dict[str, Any]) -> dict[str, Any]:
        """The backbone's keyword arguments that the data decides, in the backbone's own names. The CLI sets them
        in the backbone's config before it is built (`lightnet_vision/contract.py`), so a config never types them."""
        return {}

    #: Keywords of `backbone_arguments` the backbone must take (the others are passed where it takes them).
    required_backbone_arguments: tuple[str, ...] = ()

    def keep_config_hyperparameters(self) -> None:
        """Drops from the saved hyperparameters what no config can rebuild: objects given in Python (a backbone
        built in code, a lambda optimizer). Given through the CLI, they are configs (`class_path`, `init_args`),
        and stay. A `DataInfo` is kept as its dict."""
        for key in list(self.hparams):
            value = self.hparams[key]
            if isinstance(value, DataInfo):
                self.hparams[key] = value.as_dict()
            elif not key.startswith("_") and (isinstance(value, nn.Module) or callable(value)):
                del self.hparams[key]

    def check_data(self) -> None:
        """Raises when the trainer's data disagrees with the backbone; called in `setup`, before the first step."""

    def setup(self, stage: str) -> None:
        # In setup rather than configure_model: compiling in place shards nothing, and overriding configure_model
        # makes Lightning's weight averaging warn about sharded layers.
        if self.compile_backbone:
            self.model.compile()
        self.check_data()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # After `load_from_checkpoint` from objects, put back the config entries they could not give (the
        # backbone's class_path and init_args), so that this module saves a loadable checkpoint again.
        for key, value in checkpoint.get("hyper_parameters", {}).items():
            if key not in self.hparams:
                self.hparams[key] = value
        self._train_loader_states = train_loader_states(checkpoint)

    def on_train_start(self) -> None:
        restore_train_loader_position(self.trainer, self._train_loader_states)
        self._train_loader_states = []

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self, self.model, self.optimizer, self.lr_scheduler)
