"""The callbacks rely on declared protocols: a task that follows them works, one that does not is named."""

from types import SimpleNamespace

import pytest
import torch
from diffusion_helpers import tiny_dit

from lightnet_vision.callbacks import SampleImages
from lightnet_vision.callbacks.protocols import NamedClasses, SampleGenerator
from lightnet_vision.tasks import ImageClassification, LatentDiffusion


def test_the_tasks_follow_the_protocols_the_callbacks_need():
    denoiser = LatentDiffusion(tiny_dit())
    assert isinstance(denoiser, SampleGenerator) and isinstance(denoiser, NamedClasses)
    backbone = torch.nn.Linear(4, 3)
    backbone.num_classes = 3  # timm's interface, all the task needs
    classifier = ImageClassification(backbone)
    assert isinstance(classifier, NamedClasses) and not isinstance(classifier, SampleGenerator)


def test_a_task_that_does_not_generate_is_named():
    not_a_generator = SimpleNamespace(class_conditional=True, num_classes=3, device="cpu")
    with pytest.raises(TypeError, match=r"SampleImages needs a task that follows SampleGenerator.*lacks generate"):
        SampleImages().labels(not_a_generator)
