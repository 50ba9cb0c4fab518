"""Checkpoints that are complete or absent: written beside the target, flushed to disk, then renamed over it."""

import os
import secrets
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves to a local disk never leave a truncated file under the checkpoint's name.

    Lightning's own save already writes through a temporary file, but that file lives in the system temp directory:
    when it is on another filesystem than the checkpoints (a node-local /tmp, checkpoints on a shared disk), the final
    move is a copy, and a process killed during the copy leaves a partial `last.ckpt` behind, which the next
    `--ckpt_path last` then fails to read. Nor is the file flushed to disk before it takes the name.

    Here the bytes go to a hidden `.<name>.<random>.tmp` in the checkpoint's own directory, are flushed with `fsync`,
    and `os.replace` gives them the final name; a rename within one directory is atomic, so a reader sees the old
    checkpoint or the new one, never a part. A process killed while writing leaves only the hidden temporary file,
    which nothing reads and which can be deleted. Remote paths (s3://, gs://, ...) go through Lightning's save: an
    object store makes an upload visible only once it is complete.

    The `lightnet-vision` command uses this plugin unless the config names another CheckpointIO; with a plain
    `Trainer`, pass `plugins=[AtomicCheckpointIO()]`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        fs = get_filesystem(path)
        if storage_options is not None or not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(os.fspath(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        # Mode 0o666 lets the umask decide the permissions, as for any file the process creates.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(descriptor, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry itself is on disk. Not possible on every OS (Windows).
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
