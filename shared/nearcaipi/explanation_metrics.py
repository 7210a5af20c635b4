"""Judging a saliency map against an expert's defect mask: Dice, Jaccard and the pointing game.

The map is binarised by keeping its top 10 % of pixels as "important", then compared with the mask at the
mask's resolution (the map is upsampled first when it is smaller):

    Dice = 2 |B n G| / (|B| + |G|)        Jaccard = |B n G| / |B u G|

Hit accuracy is the share of defective images whose single most salient pixel lies inside the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nearcaipi.explanation import upsample_map

TOP_FRACTION = 0.1


def binarise_top(saliency: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Mark the ``fraction`` most salient pixels. (H, W) float -> (H, W) bool.

    Exactly round(fraction x H x W) pixels are marked, at least one. Ties at the threshold are broken in
    row-major pixel order, so a flat map marks its first pixels rather than all or none of them.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    flat = saliency.reshape(-1)
    count = max(1, round(fraction * flat.size))
    order = np.argsort(-flat, kind="stable")
    marked = np.zeros(flat.size, dtype=bool)
    marked[order[:count]] = True
    return marked.reshape(saliency.shape)


def resize_map(saliency: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a map to ``shape`` (H, W); returns it unchanged when it already has that shape."""
    if saliency.shape == shape:
        return saliency
    return upsample_map(torch.from_numpy(np.ascontiguousarray(saliency, dtype=np.float32)), *shape)


@dataclass(frozen=True)
class MaskAgreement:
    """Agreement of one saliency map with one expert mask."""

    dice: float
    jaccard: float
    hit: bool


def compare_with_mask(saliency: np.ndarray, mask: np.ndarray, fraction: float = TOP_FRACTION) -> MaskAgreement:
    """Dice and Jaccard of the binarised map, and whether the map's peak lies in the mask.

    Args:
        saliency: (h, w) float map; resized to the mask's shape first.
        mask: (H, W) bool expert mask.

    The binarised map always marks at least one pixel, so an empty mask scores Dice and Jaccard 0 and is never
    a hit. Ties for the peak go to the first pixel in row-major order.
    """
    saliency = resize_map(saliency, mask.shape)
    important = binarise_top(saliency, fraction)

    overlap = int(np.logical_and(important, mask).sum())
    union = int(np.logical_or(important, mask).sum())
    total = int(important.sum()) + int(mask.sum())
    peak = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return MaskAgreement(
        dice=2.0 * overlap / total,
        jaccard=overlap / union,
        hit=bool(mask[peak]),
    )


def hit_accuracy(agreements: list[MaskAgreement]) -> float:
    """Share of hits (the pointing game); raises ValueError for no images."""
    if not agreements:
        raise ValueError("hit accuracy needs at least one defective image")
    return sum(agreement.hit for agreement in agreements) / len(agreements)
