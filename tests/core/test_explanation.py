"""RISE and InvRISE on tiny models whose correct saliency map is known."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from nearcaipi.explanation import (
    ExplanationParameters,
    MaskBank,
    decode_map,
    encode_map,
    render_overlay,
    saliency_at_input,
    upsample_map,
)

SIZE = 32
PATCH = (slice(4, 12), slice(18, 28))  # rows 4..11, columns 18..27


def patch_model(batch: torch.Tensor) -> torch.Tensor:
    """p_nok is the mean brightness inside PATCH, and no other pixel affects it."""
    p_nok = batch[:, :, PATCH[0], PATCH[1]].mean(dim=(1, 2, 3))
    return torch.stack([1 - p_nok, p_nok], dim=1)


def constant_model(batch: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[0.3, 0.7]]).expand(batch.shape[0], 2)


def white_image(height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    return torch.ones(1, 3, height, width)


PARAMETERS = ExplanationParameters(masks=400, cells=4, batch_size=64, seed=3)


@pytest.mark.parametrize("method", ["invrise", "rise"])
def test_patch_model_peak_inside_patch(method: str) -> None:
    saliency, flat, spread = saliency_at_input(patch_model, white_image(), 1, method, PARAMETERS)

    row, column = np.unravel_index(int(saliency.argmax()), saliency.shape)
    assert PATCH[0].start <= row < PATCH[0].stop
    assert PATCH[1].start <= column < PATCH[1].stop
    assert not flat
    assert spread > 0.1


@pytest.mark.parametrize("method", ["invrise", "rise"])
def test_patch_model_inside_beats_far_corner(method: str) -> None:
    saliency, _, _ = saliency_at_input(patch_model, white_image(), 1, method, PARAMETERS)

    inside = saliency[PATCH[0], PATCH[1]].mean().item()
    far_corner = saliency[24:, :6].mean().item()
    assert inside > far_corner + 0.05


@pytest.mark.parametrize(("method", "expected"), [("invrise", 0.3), ("rise", 0.7)])
def test_constant_model_gives_flat_map(method: str, expected: float) -> None:
    saliency, flat, spread = saliency_at_input(constant_model, white_image(), 1, method, PARAMETERS)

    assert flat
    assert spread == pytest.approx(0.0, abs=1e-7)
    assert float(saliency.max() - saliency.min()) == 0.0
    assert saliency[0, 0].item() == pytest.approx(expected, abs=1e-6)


def test_flat_map_overlay_is_not_stretched() -> None:
    image = np.full((20, 30, 3), 100, dtype=np.uint8)
    saliency = np.full((20, 30), 0.3, dtype=np.float32)

    overlay = np.asarray(Image.open(io.BytesIO(render_overlay(image, saliency, flat=True))))
    assert overlay.shape == (20, 30, 3)
    assert (overlay == 100).all()


def test_overlay_colours_the_peak_red() -> None:
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    saliency = np.zeros((20, 30), dtype=np.float32)
    saliency[5, 7] = 1.0

    overlay = np.asarray(Image.open(io.BytesIO(render_overlay(image, saliency, flat=False))))

    # Jet maps the maximum to dark red (0.5, 0, 0) and the minimum to dark blue (0, 0, 0.5); opacity is 0.5.
    assert tuple(overlay[5, 7]) == (64, 0, 0)
    assert tuple(overlay[0, 0]) == (0, 0, 64)


@pytest.mark.parametrize("method", ["invrise", "rise"])
def test_same_seed_same_map(method: str) -> None:
    first, _, _ = saliency_at_input(patch_model, white_image(), 1, method, PARAMETERS)
    second, _, _ = saliency_at_input(patch_model, white_image(), 1, method, PARAMETERS)
    other_seed, _, _ = saliency_at_input(
        patch_model, white_image(), 1, method, ExplanationParameters(masks=400, cells=4, batch_size=64, seed=4)
    )

    assert torch.equal(first, second)
    assert not torch.equal(first, other_seed)


def test_chunk_size_does_not_change_map() -> None:
    whole, _, _ = saliency_at_input(
        patch_model, white_image(), 1, "invrise", ExplanationParameters(masks=200, cells=4, batch_size=200, seed=1)
    )
    chunked, _, _ = saliency_at_input(
        patch_model, white_image(), 1, "invrise", ExplanationParameters(masks=200, cells=4, batch_size=7, seed=1)
    )

    torch.testing.assert_close(whole, chunked, rtol=0, atol=1e-6)


def test_non_square_input_keeps_rows_and_columns() -> None:
    saliency, _, _ = saliency_at_input(patch_model, white_image(24, 40), 1, "invrise", PARAMETERS)
    assert tuple(saliency.shape) == (24, 40)

    upsampled = upsample_map(saliency, 90, 301)
    assert upsampled.shape == (90, 301)
    assert upsampled.dtype == np.float32


def test_masks_follow_the_rise_construction() -> None:
    bank = MaskBank.draw(ExplanationParameters(masks=64, cells=8, seed=0), 30, 45)
    masks = bank.render(0, len(bank))

    assert tuple(masks.shape) == (64, 30, 45)
    assert masks.min().item() >= 0.0
    assert masks.max().item() <= 1.0
    assert bank.offsets[:, 0].max().item() < 4  # cell height ceil(30 / 8)
    assert bank.offsets[:, 1].max().item() < 6  # cell width ceil(45 / 8)
    assert masks.mean().item() == pytest.approx(0.5, abs=0.1)


def test_keep_probability_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match=r"keep_probability must lie strictly between 0 and 1, got 1\.5"):
        ExplanationParameters(keep_probability=1.5)


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown explanation method 'gradcam'"):
        saliency_at_input(patch_model, white_image(), 1, "gradcam", PARAMETERS)  # type: ignore[arg-type]


def test_map_round_trips_through_npy() -> None:
    saliency = np.random.default_rng(0).random((7, 11)).astype(np.float32)
    decoded = decode_map(encode_map(saliency))
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, saliency)
