"""Refutations: training images generated from a reviewed image and its defect region, CAIPI-style.

Each generator keeps the label of its source and records where the refutation came from (source, generator,
parameters), so that refutations can be traced and removed again. Generators:

- ``zoom_in``: a crop around the marked defect region; needs a defect region.
- ``zoom_out``: the whole image shrunk onto a canvas of the original size, padded with its mean grey.
- ``augment``: flips, a small rotation, brightness and contrast changes.
- ``background``: the defect region placed on another background, such as an OK image of the same product or
  a NEU surface texture. It needs a defect region.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

GENERATORS = ("zoom_in", "zoom_out", "augment", "background")


class RefutationError(ValueError):
    """A refutation that cannot be made from this image, for example a zoom-in without a defect region."""


@dataclass(frozen=True)
class Refutation:
    """A generated training image and its lineage."""

    pixels: np.ndarray
    """(H, W, 3) uint8 RGB."""
    mask: np.ndarray
    """(H, W) bool: where the source's defect lies in the refutation; all False for an OK source."""
    label: int
    source: str
    generator: str
    parameters: dict[str, Any] = field(default_factory=dict)


def defect_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (top, left, bottom, right), bottom and right exclusive, of a (H, W) bool mask; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1


def box_to_mask(box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """Turn a defect box (x_min, y_min, x_max, y_max), in pixels and inclusive, into a coarse (H, W) bool mask."""
    x_min, y_min, x_max, y_max = box
    height, width = shape
    if not (0 <= x_min <= x_max < width and 0 <= y_min <= y_max < height):
        raise ValueError(f"box {box} does not lie inside an image of {width}x{height} pixels")
    mask = np.zeros(shape, dtype=bool)
    mask[y_min : y_max + 1, x_min : x_max + 1] = True
    return mask


def read_voc_boxes(path: Path) -> list[tuple[int, int, int, int]]:
    """Read the defect boxes (x_min, y_min, x_max, y_max) of a Pascal VOC annotation file.

    VOC coordinates are 1-based and inclusive; the boxes returned are 0-based.
    """
    root = ElementTree.parse(path).getroot()
    boxes = []
    for element in root.iter("bndbox"):
        values = [int(float(element.findtext(name, "0"))) - 1 for name in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append((max(values[0], 0), max(values[1], 0), values[2], values[3]))
    return boxes


def _require_defect(mask: np.ndarray, source: str, generator: str) -> tuple[int, int, int, int]:
    box = defect_box(mask)
    if box is None:
        raise RefutationError(
            f"{generator} of {source} needs a marked defect region, but its mask is empty; "
            "mark the defect, or use zoom_out or augment for images without one"
        )
    return box


def zoom_in(
    pixels: np.ndarray, mask: np.ndarray, label: int, source: str, margin: float = 0.5, min_size: int = 32
) -> Refutation:
    """Crop around the defect region, widened by ``margin`` times its size on each side (at least ``min_size``)."""
    top, left, bottom, right = _require_defect(mask, source, "zoom_in")
    height, width = mask.shape

    pad_rows = max(math.ceil((bottom - top) * margin), (min_size - (bottom - top) + 1) // 2, 0)
    pad_columns = max(math.ceil((right - left) * margin), (min_size - (right - left) + 1) // 2, 0)
    crop = (
        max(top - pad_rows, 0),
        max(left - pad_columns, 0),
        min(bottom + pad_rows, height),
        min(right + pad_columns, width),
    )

    return Refutation(
        pixels=pixels[crop[0] : crop[2], crop[1] : crop[3]].copy(),
        mask=mask[crop[0] : crop[2], crop[1] : crop[3]].copy(),
        label=label,
        source=source,
        generator="zoom_in",
        parameters={"margin": margin, "crop_top_left_bottom_right": list(crop)},
    )


def zoom_out(pixels: np.ndarray, mask: np.ndarray, label: int, source: str, scale: float = 0.6) -> Refutation:
    """Shrink the image by ``scale`` and centre it on a canvas of the original size filled with its mean grey."""
    if not 0.1 <= scale < 1.0:
        raise ValueError(f"zoom_out scale must lie in [0.1, 1), got {scale}")
    height, width = mask.shape
    small_height, small_width = max(round(height * scale), 1), max(round(width * scale), 1)
    top, left = (height - small_height) // 2, (width - small_width) // 2

    canvas = np.empty_like(pixels)
    canvas[...] = pixels.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    canvas[top : top + small_height, left : left + small_width] = np.asarray(
        Image.fromarray(pixels).resize((small_width, small_height), Image.Resampling.BILINEAR)
    )
    new_mask = np.zeros_like(mask)
    new_mask[top : top + small_height, left : left + small_width] = _resize_mask(mask, small_height, small_width)

    return Refutation(canvas, new_mask, label, source, "zoom_out", {"scale": scale})


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    # Max-pooling style: a cell is defect if any source pixel in it was, so a thin crack survives shrinking.
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BOX)
    return np.asarray(resized) > 0


def augment(
    pixels: np.ndarray, mask: np.ndarray, label: int, source: str, rng: np.random.Generator, max_degrees: float = 10.0
) -> Refutation:
    """Flip, rotate by a small angle, and change brightness and contrast; the mask follows the geometry.

    A rotation that would push part of the defect out of the frame is dropped, so the defect stays whole.
    """
    flip_horizontal, flip_vertical = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    degrees = float(rng.uniform(-max_degrees, max_degrees))
    brightness, contrast = float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.8, 1.2))

    image, new_mask = pixels, mask
    if flip_horizontal:
        image, new_mask = image[:, ::-1], new_mask[:, ::-1]
    if flip_vertical:
        image, new_mask = image[::-1], new_mask[::-1]

    rotated = np.asarray(Image.fromarray(np.ascontiguousarray(image)).rotate(degrees, Image.Resampling.BILINEAR))
    rotated_mask = (
        np.asarray(
            Image.fromarray(np.ascontiguousarray(new_mask).astype(np.uint8) * 255).rotate(
                degrees, Image.Resampling.NEAREST
            )
        )
        > 0
    )
    if rotated_mask.sum() >= 0.9 * new_mask.sum():
        image, new_mask = rotated, rotated_mask
    else:
        degrees = 0.0

    mean = image.astype(np.float32).mean()
    adjusted = (image.astype(np.float32) - mean) * contrast + mean * brightness
    return Refutation(
        pixels=np.clip(adjusted, 0, 255).round().astype(np.uint8),
        mask=np.ascontiguousarray(new_mask),
        label=label,
        source=source,
        generator="augment",
        parameters={
            "flip_horizontal": flip_horizontal,
            "flip_vertical": flip_vertical,
            "degrees": degrees,
            "brightness": brightness,
            "contrast": contrast,
        },
    )


def place_on_background(
    pixels: np.ndarray,
    mask: np.ndarray,
    label: int,
    source: str,
    background: np.ndarray,
    background_name: str,
    feather: int = 2,
) -> Refutation:
    """Copy the defect region, grown by ``feather`` pixels, onto another background resized to the image's size."""
    _require_defect(mask, source, "background")
    height, width = mask.shape
    resized = np.asarray(Image.fromarray(background).convert("RGB").resize((width, height), Image.Resampling.BILINEAR))

    region = mask
    if feather > 0:
        # Grow the region so that the defect's soft edge comes along instead of a hard cut-out.
        grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(_max_filter(2 * feather + 1))
        region = np.asarray(grown) > 0
    composite = np.where(region[..., None], pixels, resized)

    return Refutation(
        composite.astype(np.uint8),
        mask.copy(),
        label,
        source,
        "background",
        {"background": background_name, "feather": feather},
    )


def generate_refutations(
    pixels: np.ndarray,
    mask: np.ndarray,
    label: int,
    source: str,
    rng: np.random.Generator,
    pick_background: Callable[[], tuple[np.ndarray, str]] | None = None,
) -> list[Refutation]:
    """Generate the refutations of one reviewed image: zoom out, augmented copy, zoom in, defect on a background.

    The zoom-in and the background refutation need a defect region, so an OK image (or a NOK one without a
    marked region) gets only the zoom-out and the augmented copy. ``pick_background`` returns an image and its
    name; it is called only when a background refutation is made, after the augmentation has drawn from ``rng``.
    """
    refutations = [zoom_out(pixels, mask, label, source), augment(pixels, mask, label, source, rng)]
    if label == 1 and mask.any():
        refutations.append(zoom_in(pixels, mask, label, source))
        if pick_background is not None:
            background_pixels, background_name = pick_background()
            refutations.append(place_on_background(pixels, mask, label, source, background_pixels, background_name))
    return refutations


def _max_filter(size: int):
    from PIL import ImageFilter

    return ImageFilter.MaxFilter(size)
