"""Grad-CAM, deletion and insertion scores, and the evaluate-explanations command on tiny hand-made data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nearcaipi.cli import main
from nearcaipi.data import NOK, OK, describe_splits, discover_samples, split_samples
from nearcaipi.evaluation import (
    CSV_COLUMNS,
    blur_for_insertion,
    explain_at_input,
    perturbation_curves,
    select_defective,
)
from nearcaipi.explanation import ExplanationParameters, saliency_at_input, upsample_map
from nearcaipi.gradcam import find_gradcam_layer, gradcam_at_input
from nearcaipi.models import Classifier, ModelCard, build_network, save_checkpoint

SIZE = 16
PATCH = (slice(8, 12), slice(4, 8))  # rows 8-11, columns 4-7: 16 of the 256 pixels


class PatchNetwork(nn.Module):
    """Two feature channels, brightness and twice as strong darkness. The NOK logit reads brightness in PATCH only.

    The OK logit is the mean darkness of the whole image, so a map that ignores the gradient weights, or that
    follows the OK class, peaks on the dark background instead of the patch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, kernel_size=1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[1 / 3] * 3, [-2 / 3] * 3]).view(2, 3, 1, 1))
            self.features.bias.copy_(torch.tensor([0.0, 2.0]))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.features(batch))
        nok = features[:, 0, PATCH[0], PATCH[1]].mean(dim=(1, 2))
        ok = features[:, 1].mean(dim=(1, 2))
        return torch.stack([ok, nok], dim=1)


def patch_classifier() -> Classifier:
    # Mean 0 and standard deviation 1 pass raw pixels to the network unchanged.
    card = ModelCard(backbone="resnet18", input_size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return Classifier(PatchNetwork(), card)


def bright_patch_image() -> torch.Tensor:
    """A dark, slightly noisy background with a bright PATCH. Returns (1, 3, 16, 16) float32 in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    image = 0.1 + 0.05 * torch.rand(1, 3, SIZE, SIZE, generator=generator)
    image[:, :, PATCH[0], PATCH[1]] = 0.9
    return image


def in_patch(saliency: torch.Tensor) -> bool:
    row, column = np.unravel_index(int(saliency.argmax()), tuple(saliency.shape))
    return PATCH[0].start <= row < PATCH[0].stop and PATCH[1].start <= column < PATCH[1].stop


def test_gradcam_peaks_inside_evidence_patch() -> None:
    saliency, flat = gradcam_at_input(patch_classifier(), bright_patch_image(), NOK)

    assert saliency.shape == (SIZE, SIZE)
    assert flat is False
    assert in_patch(saliency)
    assert float(saliency.min()) >= 0.0


def test_gradcam_of_ok_class_peaks_outside_patch() -> None:
    saliency, _ = gradcam_at_input(patch_classifier(), bright_patch_image(), OK)

    assert not in_patch(saliency)


def test_gradcam_layer_per_backbone() -> None:
    resnet, _ = build_network("resnet18", pretrained=False)
    alexnet, _ = build_network("alexnet", pretrained=False)

    assert find_gradcam_layer(resnet)[0] == "layer4"
    assert find_gradcam_layer(alexnet)[0] == "features.10"
    assert find_gradcam_layer(PatchNetwork())[0] == "features"


def test_gradcam_rejects_network_without_convolution() -> None:
    with pytest.raises(ValueError, match=r"Linear has no nn\.Conv2d layer"):
        find_gradcam_layer(nn.Linear(3, 2))


def test_alexnet_gradcam_weighs_rectified_features() -> None:
    torch.manual_seed(0)
    network, _ = build_network("alexnet", pretrained=False)
    classifier = Classifier(network, ModelCard(backbone="alexnet", input_size=64))
    image = torch.rand(1, 3, 64, 64)

    saliency, _ = gradcam_at_input(classifier, image, NOK)

    # The same map by hand: features.10 is the last convolution and features.11 its ReLU.
    rectified = F.relu(network.features[:11](classifier.normalize(image))).detach().requires_grad_()
    logits = network.classifier(torch.flatten(network.avgpool(network.features[12:](rectified)), 1))
    (gradients,) = torch.autograd.grad(logits[0, NOK], rectified)
    grid = F.relu((gradients.mean(dim=(2, 3), keepdim=True) * rectified).sum(dim=1))[0].detach()
    expected = upsample_map(grid, 64, 64)
    assert expected.max() > 0.0
    np.testing.assert_allclose(saliency.numpy(), expected, rtol=1e-4, atol=1e-7)


def patch_brightness(batch: torch.Tensor) -> torch.Tensor:
    """A model whose p_nok is the mean brightness of PATCH: (B, 3, 16, 16) -> (B, 2) probabilities."""
    p_nok = batch[:, :, PATCH[0], PATCH[1]].mean(dim=(1, 2, 3))
    return torch.stack([1.0 - p_nok, p_nok], dim=1)


def patch_on_black() -> tuple[torch.Tensor, torch.Tensor]:
    """A white PATCH on black, and a map that ranks the patch first. Returns (1, 3, 16, 16) and (16, 16)."""
    image = torch.zeros(1, 3, SIZE, SIZE)
    image[:, :, PATCH[0], PATCH[1]] = 1.0
    saliency = torch.zeros(SIZE, SIZE)
    saliency[PATCH] = 1.0
    return image, saliency


def test_deletion_is_lower_when_evidence_goes_first() -> None:
    image, saliency = patch_on_black()

    # 16 steps of 16 pixels: the patch goes in the first step, or in the last one for the reversed map.
    evidence_first = perturbation_curves(patch_brightness, image, saliency, NOK, steps=16)
    evidence_last = perturbation_curves(patch_brightness, image, -saliency, NOK, steps=16)

    np.testing.assert_allclose(evidence_first.fractions, np.arange(17) / 16)
    assert evidence_first.deletion[0] == pytest.approx(1.0)
    assert evidence_first.deletion[1:].max() == pytest.approx(0.0)
    assert evidence_first.deletion_auc == pytest.approx(1 / 32)
    assert evidence_last.deletion_auc == pytest.approx(31 / 32)


def test_insertion_is_higher_when_evidence_goes_first() -> None:
    image, saliency = patch_on_black()
    blurred_patch = float(blur_for_insertion(image)[:, :, PATCH[0], PATCH[1]].mean())

    evidence_first = perturbation_curves(patch_brightness, image, saliency, NOK, steps=16)
    evidence_last = perturbation_curves(patch_brightness, image, -saliency, NOK, steps=16)

    assert 0.0 < blurred_patch < 0.5
    assert evidence_first.insertion[0] == pytest.approx(blurred_patch)
    assert evidence_first.insertion_auc == pytest.approx(1.0 - (1.0 - blurred_patch) / 32)
    assert evidence_last.insertion_auc == pytest.approx(blurred_patch + (1.0 - blurred_patch) / 32)
    assert evidence_first.insertion_auc > evidence_last.insertion_auc


@pytest.mark.parametrize("steps", [1, 7, 32])
def test_constant_model_scores_its_probability(steps: int) -> None:
    def constant(batch: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.7, 0.3]]).expand(len(batch), 2)

    saliency = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    curves = perturbation_curves(constant, torch.rand(1, 3, SIZE, SIZE), saliency, NOK, steps=steps, batch_size=5)

    assert len(curves.fractions) == steps + 1
    assert curves.fractions[0] == 0.0
    assert curves.fractions[-1] == 1.0
    assert curves.deletion_auc == pytest.approx(0.3)
    assert curves.insertion_auc == pytest.approx(0.3)


def test_perturbation_rejects_mismatched_map() -> None:
    with pytest.raises(ValueError, match=r"saliency map is \(8, 8\) but the image is \(16, 16\)"):
        perturbation_curves(patch_brightness, torch.rand(1, 3, SIZE, SIZE), torch.rand(8, 8), NOK)


def test_invrise_replay_matches_own_forward_passes() -> None:
    classifier = patch_classifier()
    image = bright_patch_image()
    parameters = ExplanationParameters(masks=30, cells=4, batch_size=7, seed=3)

    maps = explain_at_input(classifier, image, ["rise", "invrise", "gradcam"], parameters)

    for method in ("rise", "invrise"):
        expected, flat, _ = saliency_at_input(classifier.probabilities, image, NOK, method, parameters)
        torch.testing.assert_close(maps[method].saliency, expected)
        assert maps[method].flat is flat
    assert set(maps) == {"rise", "invrise", "gradcam"}


def write_plain_dataset(root: Path, with_masks: bool = True, empty_last_mask: bool = False) -> Path:
    """10 OK and 10 NOK images of 40 x 48 pixels in the plain layout; NOK images have a bright square."""
    rng = np.random.default_rng(2)
    for folder in ("ok", "nok", "masks"):
        (root / folder).mkdir(parents=True)
    for index in range(10):
        Image.fromarray(rng.integers(40, 80, (40, 48), dtype=np.uint8)).save(root / "ok" / f"ok_{index}.png")

        pixels = rng.integers(40, 80, (40, 48), dtype=np.uint8)
        mask = np.zeros((40, 48), dtype=np.uint8)
        if index < 9 or not empty_last_mask:
            mask[5 + index : 15 + index, 20:30] = 255
        pixels[mask > 0] = 240
        Image.fromarray(pixels).save(root / "nok" / f"nok_{index}.png")
        if with_masks:
            Image.fromarray(mask).save(root / "masks" / f"nok_{index}.png")
    return root


def test_select_defective_skips_empty_masks(tmp_path: Path) -> None:
    root = write_plain_dataset(tmp_path / "data", empty_last_mask=True)
    samples = discover_samples(root)

    chosen = select_defective(samples, None, seed=0)
    limited = select_defective(samples, 3, seed=0)

    assert len(chosen) == 9
    assert all(sample.label == NOK for sample in chosen)
    assert "nok_9.png" not in {sample.path.name for sample in chosen}
    assert limited == chosen[:3]
    assert select_defective(samples, 3, seed=0) == limited


def write_checkpoint(path: Path, root: Path) -> Path:
    torch.manual_seed(0)
    network, _ = build_network("resnet18", pretrained=False)
    splits = split_samples(discover_samples(root), seed=0)
    card = ModelCard(backbone="resnet18", input_size=64, splits=describe_splits(splits, root), data_root=str(root))
    path.write_bytes(save_checkpoint(network, card))
    return path


def test_evaluate_explanations_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_plain_dataset(tmp_path / "data")
    checkpoint = write_checkpoint(tmp_path / "model.pt", root)
    output = tmp_path / "evaluation"

    code = main(
        [
            "evaluate-explanations", "--data", str(root), "--checkpoint", str(checkpoint),
            "--masks", "8", "--steps", "4", "--limit", "2", "--examples", "2", "--output", str(output),
        ]
    )  # fmt: skip

    assert code == 0, capsys.readouterr().err
    with (output / "results.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert len(rows) == 2 * 3
    assert {row["method"] for row in rows} == {"rise", "invrise", "gradcam"}
    assert {row["model"] for row in rows} == {"ResNet-18"}
    assert all(0.0 <= float(row["dice"]) <= 1.0 for row in rows)
    assert all(0.0 <= float(row["deletion_auc"]) <= 1.0 for row in rows)

    table = (output / "table.md").read_text()
    assert "| ResNet-18 | Model acc. " in table
    for title in ("RISE", "InvRISE", "Grad-CAM"):
        assert f"| | {title} | " in table
    with Image.open(output / "examples.png") as figure:
        assert figure.format == "PNG"
        assert figure.size[0] > figure.size[1]
    assert "6 rows in" in capsys.readouterr().out


def test_evaluate_explanations_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_plain_dataset(tmp_path / "data")
    absent = tmp_path / "absent.pt"

    code = main(["evaluate-explanations", "--data", str(root), "--checkpoint", str(absent)])

    assert code == 2
    assert f"checkpoint file {absent} not found" in capsys.readouterr().err


def test_evaluate_explanations_needs_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_plain_dataset(tmp_path / "data", with_masks=False)
    checkpoint = write_checkpoint(tmp_path / "model.pt", root)

    code = main(["evaluate-explanations", "--data", str(root), "--checkpoint", str(checkpoint)])

    assert code == 2
    assert f"{root} has no defect masks for its NOK images" in capsys.readouterr().err


def test_evaluate_explanations_unknown_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate-explanations", "--checkpoint", str(tmp_path / "model.pt"), "--methods", "rise", "lime"])

    assert exit_info.value.code == 2
    assert "invalid choice: 'lime'" in capsys.readouterr().err
