"""How varied and how real generated samples are, beyond whether a classifier recognises them.

A sampler that returns each class's mean image is recognised every time; these measures tell it apart from one that
draws the whole distribution:

- **Improved precision and recall** (Kynkäänniemi et al., "Improved Precision and Recall Metric for Assessing
  Generative Models", NeurIPS 2019). Each set of feature vectors stands for a manifold: the union of balls around its
  points, each ball as wide as the distance from its point to the k-th nearest other point of the same set.
  Precision is the share of generated points inside the real manifold (are the samples realistic?), recall the
  share of real points inside the generated manifold (is every kind of real image produced?).
- **In-class variety**: the mean pairwise distance between the feature vectors of one class, generated over real,
  averaged over the classes. 1 is as varied as the data; a sampler that collapses each class to a point scores 0.

The features are the caller's: they should come from a space the generator was not trained in (the digits demo uses
the digits' own 8×8 pixels, `lightnet_vision.demo.score_digit_samples`).
"""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float


def _distances(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(a.double(), b.double())


def knn_radii(features: Tensor, k: int) -> Tensor:
    """`[N]` distance from each of `features` `[N, d]` to its k-th nearest other point of the set."""
    if not 1 <= k < features.shape[0]:
        raise ValueError(f"k={k} needs 1 <= k < the number of points ({features.shape[0]})")
    distances = _distances(features, features)
    # The smallest distance of each row is the point to itself (0), so the k-th other point is at index k.
    return distances.kthvalue(k + 1, dim=1).values


def inside_manifold(points: Tensor, manifold: Tensor, radii: Tensor) -> Tensor:
    """`[P]` bool: whether each of `points` `[P, d]` lies in a ball of `manifold` `[M, d]` with `radii` `[M]`."""
    return (_distances(points, manifold) <= radii[None, :]).any(dim=1)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall of `fake` `[M, d]` against `real` `[N, d]` with k-NN balls of size `k`."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected features [N, d] and [M, d], got {tuple(real.shape)} and {tuple(fake.shape)}")
    precision = inside_manifold(fake, real, knn_radii(real, k)).double().mean()
    recall = inside_manifold(real, fake, knn_radii(fake, k)).double().mean()
    return PrecisionRecall(precision=float(precision), recall=float(recall))


def class_spread(features: Tensor, labels: Tensor) -> dict[int, float]:
    """Mean pairwise distance between the `features` `[N, d]` of each class in `labels` `[N]` (classes with at least
    two members)."""
    spread = {}
    for label in labels.unique().tolist():
        members = features[labels == label]
        if len(members) < 2:
            continue
        distances = _distances(members, members)
        count = len(members)
        spread[label] = float(distances.sum() / (count * (count - 1)))  # the zero diagonal left out
    return spread


def variety_ratio(fake: Tensor, fake_labels: Tensor, real: Tensor, real_labels: Tensor) -> float:
    """In-class spread of `fake` over that of `real`, averaged over the classes both sets hold."""
    fake_spread, real_spread = class_spread(fake, fake_labels), class_spread(real, real_labels)
    shared = sorted(set(fake_spread) & set(real_spread))
    if not shared:
        raise ValueError("no class has two or more samples in both the generated and the real set")
    return sum(fake_spread[c] / real_spread[c] for c in shared) / len(shared)
