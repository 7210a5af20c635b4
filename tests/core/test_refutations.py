"""Refutation generators keep the defect where it belongs and keep the source's label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nearcaipi.data import NOK, OK
from nearcaipi.refutations import (
    RefutationError,
    augment,
    box_to_mask,
    defect_box,
    place_on_background,
    read_voc_boxes,
    zoom_in,
    zoom_out,
)


@pytest.fixture
def defective() -> tuple[np.ndarray, np.ndarray]:
    """A 120 x 200 grey part with a bright 10 x 14 defect at rows 50..59, columns 120..133."""
    pixels = np.full((120, 200, 3), 80, dtype=np.uint8)
    mask = np.zeros((120, 200), dtype=bool)
    mask[50:60, 120:134] = True
    pixels[mask] = 240
    return pixels, mask


def test_zoom_in_keeps_whole_defect(defective: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, mask = defective

    refutation = zoom_in(pixels, mask, NOK, "images/a.jpg", margin=0.5)

    assert refutation.mask.sum() == mask.sum()
    assert (refutation.pixels[refutation.mask] == 240).all()
    assert refutation.pixels.shape[:2] == refutation.mask.shape
    assert refutation.pixels.shape[0] < 120
    assert refutation.pixels.shape[1] < 200
    assert refutation.label == NOK
    assert refutation.source == "images/a.jpg"
    assert refutation.generator == "zoom_in"
    assert refutation.parameters["margin"] == 0.5


def test_zoom_in_of_maskless_ok_image_is_rejected() -> None:
    pixels = np.zeros((50, 50, 3), dtype=np.uint8)

    with pytest.raises(RefutationError, match=r"zoom_in of images/ok\.jpg needs a marked defect region"):
        zoom_in(pixels, np.zeros((50, 50), dtype=bool), OK, "images/ok.jpg")


def test_zoom_out_keeps_defect_centre(defective: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, mask = defective

    refutation = zoom_out(pixels, mask, NOK, "images/a.jpg", scale=0.5)

    assert refutation.pixels.shape == pixels.shape
    top, left, bottom, right = defect_box(refutation.mask)
    # The defect centre (55, 127) maps to (30 + 55 / 2, 50 + 127 / 2) on the half-size image centred on the canvas.
    assert abs((top + bottom) / 2 - 57.5) <= 1.5
    assert abs((left + right) / 2 - 113.5) <= 1.5
    assert refutation.pixels[57, 113].mean() > 200
    assert refutation.label == NOK


def test_zoom_out_of_ok_image_keeps_empty_mask() -> None:
    pixels = np.full((40, 60, 3), 100, dtype=np.uint8)

    refutation = zoom_out(pixels, np.zeros((40, 60), dtype=bool), OK, "images/ok.jpg")

    assert not refutation.mask.any()
    assert refutation.label == OK


def test_augment_keeps_defect_inside(defective: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, mask = defective
    rng = np.random.default_rng(0)

    for _ in range(10):
        refutation = augment(pixels, mask, NOK, "images/a.jpg", rng)

        assert refutation.mask.sum() >= 0.9 * mask.sum()
        assert refutation.pixels.shape == pixels.shape
        assert refutation.label == NOK
        defect_brightness = refutation.pixels[refutation.mask].mean()
        background_brightness = refutation.pixels[~refutation.mask].mean()
        assert defect_brightness > background_brightness + 50
        assert set(refutation.parameters) == {"flip_horizontal", "flip_vertical", "degrees", "brightness", "contrast"}


def test_background_receives_only_the_defect(defective: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, mask = defective
    background = np.full((60, 60, 3), 20, dtype=np.uint8)

    refutation = place_on_background(pixels, mask, NOK, "images/a.jpg", background, "neu/crazing_1.jpg", feather=0)

    assert (refutation.pixels[mask] == 240).all()
    assert (refutation.pixels[~mask] == 20).all()
    assert refutation.parameters["background"] == "neu/crazing_1.jpg"
    assert refutation.label == NOK


def test_box_annotations_become_coarse_masks(tmp_path: Path) -> None:
    annotation = tmp_path / "scratches_1.xml"
    annotation.write_text(
        "<annotation><object><name>scratches</name><bndbox><xmin>11</xmin><ymin>21</ymin>"
        "<xmax>30</xmax><ymax>25</ymax></bndbox></object></annotation>"
    )

    boxes = read_voc_boxes(annotation)
    mask = box_to_mask(boxes[0], (200, 200))

    assert boxes == [(10, 20, 29, 24)]
    assert mask.sum() == 20 * 5
    assert defect_box(mask) == (20, 10, 25, 30)


def test_box_outside_image_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"box \(0, 0, 250, 10\) does not lie inside an image of 200x200 pixels"):
        box_to_mask((0, 0, 250, 10), (200, 200))
