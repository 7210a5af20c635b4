"""Classification metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from nearcaipi.metrics import classification_metrics


def test_metrics_of_a_known_confusion_matrix() -> None:
    # 3 true positives, 1 false negative, 1 false positive, 5 true negatives.
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    predictions = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]

    metrics = classification_metrics(labels, predictions)

    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["precision"] == pytest.approx(0.75)
    assert metrics["recall"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx(0.75)
    assert metrics["mcc"] == pytest.approx((3 * 5 - 1 * 1) / math.sqrt(4 * 4 * 6 * 6))


def test_constant_predictor_has_zero_mcc() -> None:
    metrics = classification_metrics([1, 0, 0, 1], [0, 0, 0, 0])
    assert metrics["mcc"] == 0.0
    assert metrics["f1"] == 0.0
    assert metrics["accuracy"] == 0.5


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="got 2 labels but 1 predictions"):
        classification_metrics([0, 1], [0])
