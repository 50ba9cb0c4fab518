"""Measures of generated samples (`sample_quality`)."""

from lightnet_vision.metrics.sample_quality import (
    PrecisionRecall,
    class_spread,
    precision_recall,
    variety_ratio,
)

__all__ = ["PrecisionRecall", "class_spread", "precision_recall", "variety_ratio"]
