"""Small callbacks, one per file."""

from typing import TYPE_CHECKING

from lightnet_vision.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lightnet_vision.callbacks.fid import FID
    from lightnet_vision.callbacks.nonfinite_loss import NonFiniteLoss, NonFiniteLossError
    from lightnet_vision.callbacks.prediction_csv import PredictionCSVWriter
    from lightnet_vision.callbacks.sample_images import SampleImages
    from lightnet_vision.callbacks.sample_writer import SampleWriter

# Imported on first use, so that the CLI loads only the callbacks it installs.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "FID": "fid",
        "NonFiniteLoss": "nonfinite_loss",
        "NonFiniteLossError": "nonfinite_loss",
        "PredictionCSVWriter": "prediction_csv",
        "SampleImages": "sample_images",
        "SampleWriter": "sample_writer",
    },
)

__all__ = ["FID", "NonFiniteLoss", "NonFiniteLossError", "PredictionCSVWriter", "SampleImages", "SampleWriter"]
