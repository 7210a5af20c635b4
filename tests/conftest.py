"""Fixtures shared by the whole suite: sample data, tiny images and a tiny trained classifier."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nearcaipi.config import BUNDLED_DATA_DIR


@pytest.fixture(scope="session")
def magnetic_tiles() -> Path:
    """The magnetic-tile sample data beside the checkout; tests that need it skip elsewhere."""
    if not (BUNDLED_DATA_DIR / "MT_Free" / "Imgs").is_dir():
        pytest.skip(f"magnetic-tile sample data not found at {BUNDLED_DATA_DIR}")
    return BUNDLED_DATA_DIR


def encode(pixels: np.ndarray, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.fixture
def jpeg_bytes() -> bytes:
    rng = np.random.default_rng(0)
    return encode(rng.integers(0, 255, (40, 60), dtype=np.uint8))


@pytest.fixture(scope="session")
def plain_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain-layout data set: 20 OK, 10 NOK with masks; NOK images carry a bright square."""
    root = tmp_path_factory.mktemp("plain")
    rng = np.random.default_rng(1)
    for folder in ("ok", "nok", "masks"):
        (root / folder).mkdir()

    for index in range(20):
        pixels = rng.integers(60, 90, (48, 64), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "ok" / f"ok_{index:02d}.png")
    for index in range(10):
        pixels = rng.integers(60, 90, (48, 64), dtype=np.uint8)
        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[10:20, 30:42] = 255
        pixels[mask > 0] = 250
        Image.fromarray(pixels).save(root / "nok" / f"nok_{index:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"nok_{index:02d}.png")
    return root
