"""Lightning plugins the `lightnet-vision` command installs by default."""

from lightnet_vision.plugins.atomic_checkpoint_io import AtomicCheckpointIO

__all__ = ["AtomicCheckpointIO"]
