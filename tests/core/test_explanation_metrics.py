"""Dice, Jaccard and hit accuracy on hand-made maps and masks."""

from __future__ import annotations

import numpy as np
import pytest

from nearcaipi.explanation_metrics import MaskAgreement, binarise_top, compare_with_mask, hit_accuracy


def test_top_ten_percent_of_a_ramp() -> None:
    saliency = np.arange(100, dtype=np.float32).reshape(10, 10)

    important = binarise_top(saliency)

    assert important.sum() == 10
    assert important[9].all()
    assert not important[:9].any()


def test_perfect_overlap() -> None:
    saliency = np.zeros((10, 10), dtype=np.float32)
    saliency[0] = 1.0
    mask = np.zeros((10, 10), dtype=bool)
    mask[0] = True

    agreement = compare_with_mask(saliency, mask)

    assert agreement == MaskAgreement(dice=1.0, jaccard=1.0, hit=True)


def test_half_overlap_has_known_values() -> None:
    saliency = np.zeros((10, 10), dtype=np.float32)
    saliency[0] = np.linspace(2.0, 1.0, 10)  # the top 10 % is row 0, its peak at column 0
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, 5:] = True
    mask[1, 5:] = True  # 10 mask pixels, 5 of them in row 0

    agreement = compare_with_mask(saliency, mask)

    assert agreement.dice == pytest.approx(2 * 5 / (10 + 10))
    assert agreement.jaccard == pytest.approx(5 / 15)
    assert agreement.hit is False


def test_empty_mask_is_never_a_hit() -> None:
    saliency = np.random.default_rng(0).random((8, 8)).astype(np.float32)

    agreement = compare_with_mask(saliency, np.zeros((8, 8), dtype=bool))

    assert agreement.dice == 0.0
    assert agreement.jaccard == 0.0
    assert agreement.hit is False


def test_ties_break_in_row_major_order() -> None:
    flat_map = np.ones((10, 10), dtype=np.float32)
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, 0] = True

    important = binarise_top(flat_map)
    agreement = compare_with_mask(flat_map, mask)

    assert important.sum() == 10
    assert important[0].all()
    assert agreement.hit is True
    assert agreement.dice == pytest.approx(2 * 1 / (10 + 1))


def test_small_map_is_compared_at_mask_resolution() -> None:
    saliency = np.zeros((4, 4), dtype=np.float32)
    saliency[0, 0] = 1.0
    mask = np.zeros((40, 40), dtype=bool)
    mask[:4, :4] = True

    agreement = compare_with_mask(saliency, mask)

    assert agreement.hit is True
    assert agreement.dice > 0.0


def test_hit_accuracy_is_share_of_hits() -> None:
    agreements = [MaskAgreement(0.1, 0.05, True), MaskAgreement(0.0, 0.0, False), MaskAgreement(0.2, 0.1, True)]

    assert hit_accuracy(agreements) == pytest.approx(2 / 3)


def test_hit_accuracy_needs_images() -> None:
    with pytest.raises(ValueError, match="at least one defective image"):
        hit_accuracy([])
