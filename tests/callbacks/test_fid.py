"""The FID callback's precision, recall and variety on generators with known answers: one that returns the real
batch itself and one that returns each class's mean image."""

import pytest
import torch
from classification_helpers import cpu_trainer
from diffusion_helpers import tiny_digits
from lightning.pytorch import LightningModule
from torch import nn

from lightnet_vision.callbacks import FID


class EchoGenerator(LightningModule):
    """Generates, for a validation batch, that batch's own images (`collapse`: one fixed image per label, the first
    that label's first batch held)."""

    class_conditional = True
    num_classes = 10

    def __init__(self, collapse: bool = False) -> None:
        super().__init__()
        self.collapse = collapse
        self.batch_images = None
        self.fixed = {}

    def validation_step(self, batch, batch_idx):
        self.batch_images = batch[0]

    def generate(self, labels, num_samples=None, generator=None, **unused):
        if not self.collapse:
            return self.batch_images
        for image, label in zip(self.batch_images, labels.tolist(), strict=True):
            self.fixed.setdefault(label, image)
        return torch.stack([self.fixed[label] for label in labels.tolist()])


def validate(tmp_path, generator: EchoGenerator) -> dict[str, float]:
    feature = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))  # a fixed random feature network
    fid = FID(feature=feature, image_size=(1, 8, 8), max_batches=8)
    (metrics,) = cpu_trainer(tmp_path, callbacks=[fid]).validate(generator, datamodule=tiny_digits(), verbose=False)
    assert fid.metric.fake_features_num_samples == 128
    return metrics


@pytest.mark.slow
def test_samples_equal_to_the_real_images_score_perfectly(tmp_path):
    metrics = validate(tmp_path, EchoGenerator())
    assert metrics["val/precision"] == metrics["val/recall"] == 1.0
    assert metrics["val/variety"] == pytest.approx(1.0)
    assert abs(metrics["val/fid"]) < 1e-3


@pytest.mark.slow
def test_class_means_have_no_variety(tmp_path):
    metrics = validate(tmp_path, EchoGenerator(collapse=True))
    assert metrics["val/variety"] < 1e-4
    assert metrics["val/recall"] < 0.5
    assert metrics["val/fid"] > 0


def test_precision_recall_can_be_turned_off():
    fid = FID(feature=nn.Flatten(), image_size=(1, 8, 8), precision_recall=False)
    assert not fid.metric.inception._forward_hooks
