"""Checking and decoding uploaded image bytes."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF")
# Camera and part ids: 1 to 64 letters, digits, dots, underscores, colons or hyphens.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9._:\-]{1,64}$"


class InvalidImageError(ValueError):
    """Uploaded bytes that are not a usable image; ``reason`` is a fixed phrase for API clients."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    """An uploaded image, checked and decoded."""

    pixels: np.ndarray
    """(H, W, 3) uint8 RGB; grayscale is replicated to three channels."""
    format: str
    mode: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def suffix(self) -> str:
        return {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif"}[self.format]


def read_image_file(path: Path, max_pixels: int = 400_000_000) -> DecodedImage:
    """Read and decode an image file; raises InvalidImageError naming the file, or OSError if it is unreadable."""
    try:
        return decode_image(Path(path).read_bytes(), max_pixels)
    except InvalidImageError as error:
        raise InvalidImageError(error.reason, f"{path}: {error.detail}") from error


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode image bytes fully, so that truncated or corrupt files fail here and not later in a worker.

    Raises:
        InvalidImageError: with reason "empty file", "unsupported image format", "image too large" or
            "corrupt image".
    """
    if not data:
        raise InvalidImageError("empty file", "the upload contains no bytes")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise InvalidImageError(
            "unsupported image format", f"the bytes are not an image in one of {', '.join(ACCEPTED_FORMATS)}"
        ) from error
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise InvalidImageError("image too large", str(error)) from error

    if image.format not in ACCEPTED_FORMATS:
        raise InvalidImageError(
            "unsupported image format", f"{image.format} is not one of {', '.join(ACCEPTED_FORMATS)}"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImageError("image too large", f"{width}x{height} exceeds the limit of {max_pixels} pixels")

    try:
        image.load()
        pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        # Pillow raises OSError ("image file is truncated") for cut-off JPEG and PNG data.
        raise InvalidImageError("corrupt image", f"decoding failed: {error}") from error

    return DecodedImage(pixels=pixels, format=image.format, mode=image.mode)
