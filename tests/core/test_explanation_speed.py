"""The adaptive stopping rule, reduced precision and channels-last: faster, with the same maps."""

from __future__ import annotations

import math

import pytest
import torch

from nearcaipi.explanation import (
    ADAPTIVE_CONFIRMATIONS,
    ExplanationParameters,
    compute_saliency,
    compute_saliency_batch,
    explain,
    explain_many,
    make_score_function,
    pearson,
    predicted_agreement,
    resolve_precision,
)
from nearcaipi.models import Classifier, ModelCard, build_network
from tests.core.test_explanation import constant_model, patch_model, white_image


def test_agreement_of_identical_halves_is_one() -> None:
    assert predicted_agreement(1.0, 100, 1000) == pytest.approx(1.0)


def test_agreement_without_correlation_is_zero() -> None:
    assert predicted_agreement(0.0, 100, 1000) == 0.0
    assert predicted_agreement(math.nan, 100, 1000) == 0.0


def test_agreement_follows_spearman_brown() -> None:
    # All N masks drawn: the map is the full map, whatever the halves' correlation.
    assert predicted_agreement(0.5, 1000, 1000) == pytest.approx(1.0)
    # A quarter drawn with R_n = 0.9: R_N = 4 * 0.9 / (1 + 3 * 0.9), and sqrt(R_n / R_N) = sqrt(3.7 / 4).
    r_half = 0.9 / (2 - 0.9)
    assert predicted_agreement(r_half, 250, 1000) == pytest.approx(math.sqrt(3.7 / 4))


def test_pearson_of_constant_map_is_nan() -> None:
    assert math.isnan(pearson(torch.ones(4, 4), torch.rand(4, 4)))
    assert pearson(torch.arange(16.0), 2 * torch.arange(16.0) + 1) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 5, 11])
def test_adaptive_invrise_stops_early_with_same_map(seed: int) -> None:
    full = ExplanationParameters(masks=2000, cells=4, batch_size=50, seed=seed)
    adaptive = ExplanationParameters(
        masks=2000, cells=4, batch_size=50, seed=seed, target_agreement=0.98, min_masks=100
    )

    reference = compute_saliency(patch_model, white_image(), 1, "invrise", full)
    early = compute_saliency(patch_model, white_image(), 1, "invrise", adaptive)

    assert reference.masks_used == 2000
    assert 100 <= early.masks_used < 1000
    assert early.masks_used % 50 == 0
    assert pearson(early.saliency, reference.saliency) >= 0.98


def test_adaptive_rise_keeps_same_map() -> None:
    full = ExplanationParameters(masks=2000, cells=4, batch_size=50, seed=5)
    adaptive = ExplanationParameters(masks=2000, cells=4, batch_size=50, seed=5, target_agreement=0.98, min_masks=100)

    reference = compute_saliency(patch_model, white_image(), 1, "rise", full)
    early = compute_saliency(patch_model, white_image(), 1, "rise", adaptive)

    assert early.masks_used <= 2000
    assert pearson(early.saliency, reference.saliency) >= 0.98


def test_adaptive_mode_respects_min_masks() -> None:
    adaptive = ExplanationParameters(masks=2000, cells=4, batch_size=50, seed=5, target_agreement=0.5, min_masks=600)

    early = compute_saliency(patch_model, white_image(), 1, "invrise", adaptive)

    # Checks start at 600 masks, and the rule must then hold at ADAPTIVE_CONFIRMATIONS chunks in a row.
    assert early.masks_used == 600 + (ADAPTIVE_CONFIRMATIONS - 1) * 50


def test_adaptive_mode_on_flat_model_draws_all_masks() -> None:
    adaptive = ExplanationParameters(masks=300, cells=4, batch_size=50, target_agreement=0.98, min_masks=100)

    result = compute_saliency(constant_model, white_image(), 1, "invrise", adaptive)

    assert result.masks_used == 300
    assert result.flat


def test_chunk_callback_sees_growing_mask_counts() -> None:
    seen: list[int] = []
    parameters = ExplanationParameters(masks=130, cells=4, batch_size=50)

    compute_saliency(patch_model, white_image(), 1, "invrise", parameters, on_chunk=lambda count, _: seen.append(count))

    assert seen == [50, 100, 130]


def tiny_classifier() -> Classifier:
    torch.manual_seed(0)
    network, _ = build_network("resnet18", pretrained=False)
    return Classifier(network, ModelCard(backbone="resnet18", input_size=32))


def test_channels_last_gives_same_probabilities() -> None:
    batch = torch.rand(6, 3, 32, 32)
    expected = make_score_function(tiny_classifier(), "float32", channels_last=False)(batch)

    actual = make_score_function(tiny_classifier(), "float32", channels_last=True)(batch)

    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_bfloat16_probabilities_close_to_float32() -> None:
    batch = torch.rand(6, 3, 32, 32)
    expected = make_score_function(tiny_classifier(), "float32")(batch)

    actual = make_score_function(tiny_classifier(), "bfloat16", channels_last=True)(batch)

    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=0, atol=0.03)


def test_bfloat16_map_matches_float32_map() -> None:
    image = torch.randint(0, 255, (48, 64, 3), dtype=torch.uint8).numpy()
    parameters = ExplanationParameters(masks=300, cells=4, batch_size=100)

    baseline = explain(tiny_classifier(), image, "invrise", parameters)
    reduced = explain(
        tiny_classifier(),
        image,
        "invrise",
        ExplanationParameters(masks=300, cells=4, batch_size=100, precision="bfloat16", channels_last=True),
    )

    assert reduced.saliency.shape == (48, 64)
    assert pearson(torch.from_numpy(reduced.saliency), torch.from_numpy(baseline.saliency)) >= 0.99


def test_resolve_precision() -> None:
    assert resolve_precision("auto", torch.device("cuda")) == "float16"
    assert resolve_precision("float32", torch.device("cpu")) == "float32"
    assert resolve_precision("auto", torch.device("cpu")) in ("bfloat16", "float32")
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        resolve_precision("int8", torch.device("cpu"))


def test_parameters_reject_bad_adaptive_settings() -> None:
    with pytest.raises(ValueError, match=r"target_agreement must lie strictly between 0 and 1, got 1\.0"):
        ExplanationParameters(target_agreement=1.0)
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        ExplanationParameters(precision="half")


def shifted_patch_model(batch: torch.Tensor) -> torch.Tensor:
    """p_nok is the mean brightness of rows 20..27, columns 2..9: another patch than patch_model's."""
    p_nok = batch[:, :, 20:28, 2:10].mean(dim=(1, 2, 3))
    return torch.stack([1 - p_nok, p_nok], dim=1)


def test_batch_of_images_gives_each_its_own_map() -> None:
    parameters = ExplanationParameters(masks=300, cells=4, batch_size=64, seed=2)
    images = torch.cat([white_image(), 0.5 * white_image()])

    together = compute_saliency_batch(patch_model, images, [1, 0], "invrise", parameters)
    alone = [
        compute_saliency(patch_model, white_image(), 1, "invrise", parameters),
        compute_saliency(patch_model, 0.5 * white_image(), 0, "invrise", parameters),
    ]

    for joint, single in zip(together, alone, strict=True):
        torch.testing.assert_close(joint.saliency, single.saliency, rtol=0, atol=1e-5)
        assert joint.masks_used == 300


def test_batch_adaptive_stops_each_image_separately() -> None:
    parameters = ExplanationParameters(masks=3000, cells=4, batch_size=64, seed=2, target_agreement=0.98)
    images = torch.cat([white_image(), 0.5 * white_image()])

    def mixed_model(batch: torch.Tensor) -> torch.Tensor:
        # Masked copies of the white image keep pixels above 0.5 and get the patch model. The grey image's
        # copies never exceed 0.5 and get a constant model.
        bright = batch.amax(dim=(1, 2, 3)) > 0.6
        return torch.where(bright[:, None], patch_model(batch), constant_model(batch))

    first, second = compute_saliency_batch(mixed_model, images, [1, 1], "invrise", parameters)

    assert first.masks_used < 3000
    assert second.flat
    assert second.masks_used == 3000


def test_explain_many_matches_explain() -> None:
    rng = torch.Generator().manual_seed(4)
    images = [
        torch.randint(0, 255, (40, 60, 3), dtype=torch.uint8, generator=rng).numpy(),
        torch.randint(0, 255, (50, 30, 3), dtype=torch.uint8, generator=rng).numpy(),
        torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8, generator=rng).numpy(),
    ]
    parameters = ExplanationParameters(masks=200, cells=4, batch_size=60)
    classifier = tiny_classifier()

    together = explain_many(classifier, images, "invrise", parameters)
    alone = [explain(classifier, image, "invrise", parameters) for image in images]

    for joint, single, image in zip(together, alone, images, strict=True):
        assert joint.saliency.shape == image.shape[:2]
        assert joint.target_class == single.target_class
        assert pearson(torch.from_numpy(joint.saliency), torch.from_numpy(single.saliency)) >= 0.999


def test_batch_needs_one_target_per_image() -> None:
    with pytest.raises(ValueError, match="got 2 images but 1 target classes"):
        compute_saliency_batch(
            patch_model, torch.cat([white_image(), white_image()]), [1], "invrise", ExplanationParameters(masks=10)
        )
