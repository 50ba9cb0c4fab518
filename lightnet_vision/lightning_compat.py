"""Every use of a Lightning private name in lightnet-vision, behind one version guard.

Lightning promises nothing about `_`-prefixed names: any release may rename or drop one. This package needs a few,
for two things Lightning has no public hook for: letting the user's config win over a checkpoint's hyperparameters in
the CLI, and putting a resumed fit's training loader back where the checkpoint left it. They are used here and nowhere
else, and listed in `LIGHTNING_PRIVATES`, so that a Lightning upgrade is checked in one place:

- `pyproject.toml` bounds `lightning` below the first minor release not tested (`LIGHTNING_TESTED`);
- importing this module warns (`LightningVersionWarning`) on a Lightning outside `LIGHTNING_TESTED`, and raises an
  ImportError naming every listed private that the installed Lightning lacks, rather than an AttributeError mid-fit;
- `tests/test_lightning_compat.py` checks each listed private by name.
"""

import pickle
import sys
import warnings
from importlib import import_module
from pathlib import Path
from typing import Any

import lightning
from jsonargparse import Namespace
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lightnet_vision.checkpoints import unsafe_checkpoint_error

# The minor releases of Lightning this module was checked against; pyproject's bound stops below the next one.
LIGHTNING_TESTED = ("2.6",)

# Every Lightning private used below, as module path and attribute path. An attribute of a class is either set on the
# class or, for an instance attribute, named in one of its methods (`self.<name> = ...` in `__init__`, say).
LIGHTNING_PRIVATES = (
    "lightning.fabric.utilities.data:_set_sampler_epoch",
    "lightning.pytorch.cli:LightningCLI._parse_ckpt_path",
    "lightning.pytorch.cli:LightningCLI._prepare_subcommand_parser",
    "lightning.pytorch.cli:LightningCLI._subcommand_method_arguments",
    "lightning.pytorch.loops.fit_loop:_FitLoop._combined_loader",
    "lightning.pytorch.loops.fit_loop:_FitLoop._combined_loader_states_to_load",
    "lightning.pytorch.loops.fit_loop:_FitLoop._data_fetcher",
    "lightning.pytorch.utilities.combined_loader:CombinedLoader._load_state_dicts",
)


class LightningVersionWarning(UserWarning):
    """The installed Lightning is a release this package was not tested with."""


def lightning_has(private: str) -> bool:
    """Whether the installed Lightning has `private`, an entry of `LIGHTNING_PRIVATES`."""
    module_name, _, attribute_path = private.partition(":")
    try:
        owner: Any = import_module(module_name)
    except ImportError:
        return False
    *owners, name = attribute_path.split(".")
    for part in owners:
        if not hasattr(owner, part):
            return False
        owner = getattr(owner, part)
    if hasattr(owner, name):
        return True
    # An instance attribute: look for the name in the code of the class's methods.
    return isinstance(owner, type) and any(
        name in function.__code__.co_names
        for klass in owner.__mro__
        for function in vars(klass).values()
        if hasattr(function, "__code__")
    )


def check_lightning() -> None:
    """Warn if the installed Lightning is not a tested release; raise if it lacks a private this module uses."""
    version = lightning.__version__
    if ".".join(version.split(".")[:2]) not in LIGHTNING_TESTED:
        warnings.warn(
            f"lightnet-vision was tested with Lightning {', '.join(LIGHTNING_TESTED)}, not {version}: resuming a fit"
            " mid-epoch and the CLI's checkpoint handling rely on Lightning internals (lightnet_vision/"
            "lightning_compat.py) that may have changed.",
            LightningVersionWarning,
            stacklevel=2,
        )
    missing = [private for private in LIGHTNING_PRIVATES if not lightning_has(private)]
    if missing:
        raise ImportError(
            f"Lightning {version} lacks {', '.join(missing)}, which lightnet-vision uses (lightnet_vision/"
            f"lightning_compat.py; tested with Lightning {', '.join(LIGHTNING_TESTED)}). Install a tested Lightning:"
            " see the bound on `lightning` in pyproject.toml."
        )


check_lightning()


def train_loader_states(checkpoint: dict) -> list[dict]:
    """The states of the training loaders in a checkpoint (none for a loader without `state_dict`)."""
    return checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader", [])


def restore_train_loader_position(trainer: Trainer, states: list[dict]) -> None:
    """Put a resumed fit's training loader back where the checkpoint left it, mid-epoch.

    Called from `on_train_start`, with the `states` that `on_load_checkpoint` found. Lightning 2.6 gets this only
    partly right:

    - When `configure_optimizers` asks for `estimated_stepping_batches`, the loader is set up before the
      checkpoint's loop state is restored, and the saved state never reaches it (Lightning issue #20550).
    - Otherwise the state reaches the loader, but the loader's iterator starts before the sampler's epoch is set.
      Under DDP, a DistributedSampler would then replay the first epoch's order in a later epoch.

    Here, after the restore and before the first batch, the state is loaded, the epoch set, and the iterator
    restarted from them, as Lightning's own fix under review does (pull request #21765).
    """
    fit_loop = trainer.fit_loop
    if not states or fit_loop._combined_loader is None or fit_loop._data_fetcher is None:
        return
    fit_loop._combined_loader._load_state_dicts(states)
    fit_loop._combined_loader_states_to_load = []  # loaded here, not a second time by Lightning
    for loader in fit_loop._combined_loader.flattened:
        _set_sampler_epoch(loader, fit_loop.epoch_progress.current.processed)
    iter(fit_loop._data_fetcher)


class CheckpointConfigCLI(LightningCLI):
    """LightningCLI where a checkpoint's hyperparameters never override what the user typed, and checkpoints are
    read without running code.

    The order is defaults < checkpoint (`--ckpt_path`) < config files < command line: Lightning's own CLI puts the
    checkpoint last. A subcommand's `weights_only` defaults to True, and a checkpoint that carries pickled code is
    refused with an `UnsafeCheckpointError` naming it.
    """

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        self._given_args = args
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        try:
            super()._parse_ckpt_path()  # the checkpoint's hyperparameters over the parsed config
        except pickle.UnpicklingError as error:  # Lightning reads it with weights_only=True
            raise unsafe_checkpoint_error(ckpt_path, error) from error
        # The user's config files and command line again, over the checkpoint's hyperparameters.
        given = self._given_args
        if isinstance(given, (dict, Namespace)):
            self.config = self.parser.parse_object(given, self.config)
        else:
            self.config = self.parser.parse_args(sys.argv[1:] if given is None else given, namespace=self.config)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # The Trainer's own `weights_only=None` lets torch.load run pickled code in remote (http) checkpoints, and in
        # any checkpoint before torch 2.6.
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            parser.set_defaults(weights_only=True)
        return parser
