"""Small callbacks, one per file."""

from lightnet_vision.callbacks.prediction_csv import PredictionCSVWriter

__all__ = ["PredictionCSVWriter"]
