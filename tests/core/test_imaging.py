"""Decoding of uploaded bytes: good images pass, everything else fails with a fixed reason."""

from __future__ import annotations

import numpy as np
import pytest

from nearcaipi.imaging import InvalidImageError, decode_image
from tests.conftest import encode


def test_grayscale_jpeg_decodes_to_rgb(jpeg_bytes: bytes) -> None:
    decoded = decode_image(jpeg_bytes, max_pixels=10_000)
    assert decoded.pixels.shape == (40, 60, 3)
    assert decoded.format == "JPEG"
    assert decoded.suffix == "jpg"
    assert (decoded.pixels[..., 0] == decoded.pixels[..., 2]).all()


def test_png_keeps_its_size() -> None:
    decoded = decode_image(encode(np.zeros((7, 9, 3), dtype=np.uint8), "PNG"), max_pixels=100)
    assert (decoded.height, decoded.width) == (7, 9)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file, not an image", "unsupported image format"),
        (b"GIF89a" + b"\x00" * 40, "unsupported image format"),
    ],
)
def test_non_images_are_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidImageError) as raised:
        decode_image(data, max_pixels=10_000)
    assert raised.value.reason == reason


def test_truncated_jpeg_is_rejected(jpeg_bytes: bytes) -> None:
    with pytest.raises(InvalidImageError) as raised:
        decode_image(jpeg_bytes[: len(jpeg_bytes) // 2], max_pixels=10_000)
    assert raised.value.reason == "corrupt image"
    assert "truncated" in raised.value.detail


def test_too_many_pixels_are_rejected(jpeg_bytes: bytes) -> None:
    with pytest.raises(InvalidImageError, match=r"60x40 exceeds the limit of 1000 pixels") as raised:
        decode_image(jpeg_bytes, max_pixels=1000)
    assert raised.value.reason == "image too large"
