"""The one description of its data that every DataModule gives, and that a task maps onto its backbone."""

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class DataInfo:
    """What a task must know of the images it is given.

    The CLI hands it from the DataModule (`datamodule.data_info`) to the task (`data_info`) once; the task sets its
    backbone's keywords from it (`Task.backbone_arguments`) and keeps it in its checkpoint, so `predict` knows the
    class names, image size and normalisation without the training data.

    Args:
        image_size: Side of the square images the model sees.
        in_chans: Channels of those images.
        num_classes: Classes of the labels (None: unlabelled data).
        class_names: Names of the classes in label order.
        mean: Per-channel mean the images are normalised with (None: the images are used as they are).
        std: Per-channel standard deviation the images are normalised with.
    """

    image_size: int
    in_chans: int
    num_classes: int | None = None
    class_names: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def __post_init__(self) -> None:
        # Typed again: a config of plain values (YAML, a checkpoint's hyperparameters) may read "0" as 0.
        self.image_size, self.in_chans = int(self.image_size), int(self.in_chans)
        if self.num_classes is not None:
            self.num_classes = int(self.num_classes)
        if self.class_names is not None:
            self.class_names = [str(name) for name in self.class_names]
        self.mean = None if self.mean is None else [float(x) for x in self.mean]
        self.std = None if self.std is None else [float(x) for x in self.std]

    @classmethod
    def coerce(cls, value: "DataInfo | dict[str, Any] | None") -> "DataInfo | None":
        """A `DataInfo` from itself, a dict (a checkpoint's hyperparameters) or None."""
        if value is None or isinstance(value, DataInfo):
            return value
        if hasattr(value, "as_dict"):  # a jsonargparse Namespace
            value = value.as_dict()
        if not isinstance(value, dict):
            raise TypeError(f"data_info must be a DataInfo or a dict, got {type(value).__name__}")
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"data_info has unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
