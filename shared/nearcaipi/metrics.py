"""Classification metrics with NOK as the positive class."""

from __future__ import annotations

import math
from collections.abc import Sequence


def classification_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and Matthews correlation (MCC) for labels 0 = OK, 1 = NOK.

    Undefined ratios (no positives predicted, a constant predictor for MCC) are reported as 0.0.
    """
    if len(labels) != len(predictions):
        raise ValueError(f"got {len(labels)} labels but {len(predictions)} predictions")
    if not labels:
        raise ValueError("metrics need at least one labelled image")

    pairs = list(zip(labels, predictions, strict=True))
    true_positive = sum(1 for label, predicted in pairs if label == 1 and predicted == 1)
    true_negative = sum(1 for label, predicted in pairs if label == 0 and predicted == 0)
    false_positive = sum(1 for label, predicted in pairs if label == 0 and predicted == 1)
    false_negative = sum(1 for label, predicted in pairs if label == 1 and predicted == 0)

    precision = _ratio(true_positive, true_positive + false_positive)
    recall = _ratio(true_positive, true_positive + false_negative)
    mcc_denominator = math.sqrt(
        (true_positive + false_positive)
        * (true_positive + false_negative)
        * (true_negative + false_positive)
        * (true_negative + false_negative)
    )
    return {
        "accuracy": (true_positive + true_negative) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "mcc": _ratio(true_positive * true_negative - false_positive * false_negative, mcc_denominator),
    }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0
