"""The sample-quality measures on sets whose answers are known: real digits against themselves, a collapsed set of
class means, noise, and small hand-computed cases."""

import pytest
import torch

from lightnet_vision.metrics.digits import pixel_features, real_digits, score_digit_samples
from lightnet_vision.metrics.sample_quality import class_spread, knn_radii, precision_recall, variety_ratio


def test_knn_radii_by_hand():
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # The nearest other point of 0 is 1 (distance 1), the second nearest 3 (distance 3).
    assert knn_radii(points, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(points, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(ValueError, match="k=4"):
        knn_radii(points, 4)


def test_precision_and_recall_by_hand():
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # k=1 radii: 1, 1, 1, 8
    fake = torch.tensor([[0.5], [1.5], [30.0]])  # k=1 radii: 1, 1, 28.5
    scores = precision_recall(real, fake, k=1)
    # 0.5 and 1.5 lie within 1 of a real point; 30 is 20 from 10, whose ball is 8 wide.
    assert scores.precision == pytest.approx(2 / 3)
    # 0, 1, 2 lie within 1 of 0.5 or 1.5; 10 lies within 28.5 of 30.
    assert scores.recall == 1.0


def test_a_set_against_itself_is_perfect():
    points = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    scores = precision_recall(points, points, k=3)
    assert scores.precision == scores.recall == 1.0
    labels = torch.arange(200) % 5
    assert variety_ratio(points, labels, points, labels) == pytest.approx(1.0)


def test_class_spread_by_hand():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert class_spread(features, labels) == {0: pytest.approx(5.0), 1: pytest.approx(0.0)}


@pytest.fixture(scope="module")
def digits():
    return real_digits("train"), real_digits("test")


def test_held_out_real_digits_score_high(digits):
    (train_images, train_labels), (test_images, test_labels) = digits
    scores = score_digit_samples(test_images, test_labels, reference=(train_images, train_labels))
    assert scores["agreement"] > 0.97
    assert scores["precision"] > 0.8 and scores["recall"] > 0.6
    assert 0.85 < scores["variety"] < 1.15


def test_class_means_are_recognised_but_have_no_recall_or_variety(digits):
    (train_images, train_labels), _ = digits
    means = torch.stack([train_images[train_labels == c].mean(0) for c in range(10)])
    collapsed_labels = torch.arange(10).repeat_interleave(30)
    collapsed = means[collapsed_labels] + 1e-4 * torch.randn(300, *means.shape[1:])
    scores = score_digit_samples(collapsed, collapsed_labels, reference=(train_images, train_labels))
    assert scores["agreement"] > 0.95  # the judge recognises the class means...
    assert scores["recall"] < 0.05  # ...but they cover almost none of the real digits
    assert scores["variety"] < 0.01


def test_noise_is_neither_recognised_nor_realistic(digits):
    (train_images, train_labels), _ = digits
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.arange(10).repeat(30)
    scores = score_digit_samples(noise, labels, reference=(train_images, train_labels))
    assert scores["agreement"] < 0.3
    assert scores["precision"] < 0.05


def test_pixel_features_pool_to_the_digits_grid():
    images = torch.zeros(2, 1, 16, 16)
    images[:, :, :2, :2] = 1.0  # the top-left 8x8 pixel, white
    features = pixel_features(images)
    assert features.shape == (2, 64)
    assert features[0, 0] == 1.0 and features[0, 1:].eq(0.5).all()
