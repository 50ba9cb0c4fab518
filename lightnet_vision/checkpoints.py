"""Reading checkpoints without running code that may be stored in them.

A `.ckpt` file is a pickle, and unpickling can call any importable function: a file that carries such a call runs
it on load. `torch.load(weights_only=True)` only rebuilds tensors and plain data (dicts, lists, strings, numbers and
a short list of torch types), which is everything a checkpoint of this project holds: weights, optimizer and
callback states, and the hyperparameters as the config wrote them. Every checkpoint this package reads goes through
`load_checkpoint`; the CLI passes `weights_only=True` to the Trainer as well (see `CheckpointConfigCLI` in
`lightnet_vision/lightning_compat.py`).
"""

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that holds Python objects other than tensors and plain data, refused without running them."""


def unsafe_checkpoint_error(path: str | Path, error: pickle.UnpicklingError) -> UnsafeCheckpointError:
    """The error to raise for `path` when `torch.load(weights_only=True)` refused it with `error`."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    what = f"a reference to {found.group(1)}" if found else "objects other than tensors and plain data"
    return UnsafeCheckpointError(
        f"refusing to load {path}: it holds {what}, which unpickling would call or import. Checkpoints are read "
        "with torch.load(weights_only=True) so that a file cannot run code; a checkpoint written by lightnet-vision "
        "never needs more. Load it only if you trust where it came from, and then re-save what you need (the "
        "state_dict) as plain tensors."
    )


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` onto the CPU; a file carrying pickled code raises
    `UnsafeCheckpointError` naming it. `mmap=True` maps the tensors instead of reading them (cheap for a look at
    the hyperparameters)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise unsafe_checkpoint_error(path, error) from error
