"""Backbone weights learnt on textures: classes from names or folders, and loading into an OK/NOK network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nearcaipi.models import build_network
from nearcaipi.pretraining import load_backbone_weights, pretrain_backbone, texture_samples


def write_textures(folder: Path, per_class: int = 12) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(per_class):
        stripes = np.zeros((40, 40), dtype=np.uint8)
        stripes[:, ::4] = 200
        Image.fromarray(stripes + rng.integers(0, 30, (40, 40), dtype=np.uint8)).save(folder / f"stripes_{index}.png")
        dots = rng.integers(0, 60, (40, 40), dtype=np.uint8)
        dots[rng.integers(0, 40, 30), rng.integers(0, 40, 30)] = 255
        Image.fromarray(dots).save(folder / f"dots_{index}.png")


def test_classes_from_numbered_names(tmp_path: Path) -> None:
    write_textures(tmp_path / "IMAGES", per_class=2)

    paths, labels = texture_samples(tmp_path)

    assert len(paths) == 4
    assert sorted(labels) == ["dots", "dots", "stripes", "stripes"]


def test_classes_from_folders(tmp_path: Path) -> None:
    for name in ("crazing", "scratches"):
        (tmp_path / name).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / name / "a.png")

    _, labels = texture_samples(tmp_path)

    assert sorted(labels) == ["crazing", "scratches"]


def test_single_class_is_rejected(tmp_path: Path) -> None:
    for index in range(3):
        Image.new("L", (8, 8)).save(tmp_path / f"crazing_{index}.png")

    with pytest.raises(ValueError, match="has one class"):
        texture_samples(tmp_path)


def test_pretrained_backbone_loads_into_classifier(tmp_path: Path) -> None:
    write_textures(tmp_path / "textures")
    weights = tmp_path / "resnet18-textures.pt"

    report = pretrain_backbone(tmp_path / "textures", weights, input_size=32, epochs=2, progress=False)
    network, _ = build_network("resnet18", pretrained=False)
    head_before = network.fc.weight.clone()
    load_backbone_weights(network, weights)

    saved = torch.load(weights, weights_only=True)
    assert report.classes == ["dots", "stripes"]
    assert saved["classes"] == ["dots", "stripes"]
    assert 0.0 <= report.validation_accuracy <= 1.0
    torch.testing.assert_close(network.conv1.weight, saved["state_dict"]["conv1.weight"])
    assert network.fc.out_features == 2
    torch.testing.assert_close(network.fc.weight, head_before)


def test_weights_of_other_backbone_are_rejected(tmp_path: Path) -> None:
    write_textures(tmp_path / "textures", per_class=3)
    weights = tmp_path / "resnet18-textures.pt"
    pretrain_backbone(tmp_path / "textures", weights, input_size=32, epochs=1, progress=False)
    network, _ = build_network("alexnet", pretrained=False)

    with pytest.raises(ValueError, match="made for resnet18"):
        load_backbone_weights(network, weights)
