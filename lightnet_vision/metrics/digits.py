"""Scores of generated digits against scikit-learn's real ones: what `make demo-generate` prints.

- **agreement**: the share of samples that a judge trained on the real 8×8 training digits (an RBF SVM, about 99% on
  their test split) assigns to the class they were asked for;
- **precision** and **recall** (improved, k = 3, `lightnet_vision.metrics.sample_quality`) and **variety** (in-class
  spread, generated over real) against the real training digits.

Features are the digits' own 8×8 pixels in [0, 1]: samples are average-pooled back to 8×8, and the real digits take
the same path as the generator's training data (resized to the samples' side by the DataModule, then pooled), so
that the resize itself is no difference. Neither the judge nor the features were trained with the generator.
"""

import numpy as np
import torch
from sklearn.svm import SVC
from torch import Tensor

from lightnet_vision.datamodules import DigitsDataModule
from lightnet_vision.metrics.sample_quality import precision_recall, variety_ratio


def digits_judge(seed: int = 0) -> SVC:
    """An RBF SVM on the real 8×8 training digits (about 99% on their test split): the judge of generated digits."""
    images, labels = DigitsDataModule(seed=seed).split()
    features = images["train"].reshape(len(images["train"]), -1) / 255.0
    return SVC(gamma=0.05, C=10).fit(features, labels["train"])


def pixel_features(images: Tensor) -> Tensor:
    """`[B, 64]` 8×8 pixels in [0, 1] of `images` `[B, 1, H, W]` in [-1, 1] (H a multiple of 8)."""
    unit = (images.float().clamp(-1, 1) + 1) / 2
    return torch.nn.functional.adaptive_avg_pool2d(unit, 8).flatten(1).cpu()


def judge_agreement(judge: SVC, images: Tensor, labels: Tensor) -> float:
    """Share of generated images (`[B, 1, H, W]` in [-1, 1], H a multiple of 8) the judge assigns to their label."""
    predicted = judge.predict(pixel_features(images).numpy())
    return float(np.mean(predicted == labels.cpu().numpy()))


def real_digits(split: str = "train", image_size: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The real digits of `split` as the generator's DataModule gives them: `[N, 1, S, S]` in [-1, 1], labels `[N]`."""
    data = DigitsDataModule(image_size=image_size, augment=False, mean=(0.5,), std=(0.5,), seed=seed)
    images, labels = data.split()
    tensors = [data.eval_transform(image=image)["image"] for image in images[split]]
    return torch.stack(tensors), torch.from_numpy(labels[split])


def score_digit_samples(
    images: Tensor, labels: Tensor, reference: tuple[Tensor, Tensor] | None = None, judge: SVC | None = None
) -> dict[str, float]:
    """Agreement, precision, recall and variety of generated digits `images` `[B, 1, H, W]` in [-1, 1] asked for
    `labels` `[B]`, against `reference` (real images and labels; default: the training digits at side H)."""
    real_images, real_labels = reference if reference is not None else real_digits(image_size=images.shape[-1])
    judge = judge if judge is not None else digits_judge()
    fake, real = pixel_features(images), pixel_features(real_images)
    scores = precision_recall(real, fake, k=3)
    return {
        "agreement": judge_agreement(judge, images, labels),
        "precision": scores.precision,
        "recall": scores.recall,
        "variety": variety_ratio(fake, labels.cpu(), real, real_labels.cpu()),
    }
