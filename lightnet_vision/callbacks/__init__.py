"""Small callbacks, one per file."""

from lightnet_vision.callbacks.fid import FID
from lightnet_vision.callbacks.nonfinite_loss import NonFiniteLoss, NonFiniteLossError
from lightnet_vision.callbacks.prediction_csv import PredictionCSVWriter
from lightnet_vision.callbacks.sample_images import SampleImages

__all__ = ["FID", "NonFiniteLoss", "NonFiniteLossError", "PredictionCSVWriter", "SampleImages"]
