"""Backbones, ImageNet weights from the local cache, and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from nearcaipi.models import BACKBONES, Classifier, ModelCard, build_network, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_has_two_outputs(backbone: str) -> None:
    network, loaded = build_network(backbone, pretrained=False)

    with torch.inference_mode():
        logits = network.eval()(torch.rand(1, 3, 64, 64))

    assert tuple(logits.shape) == (1, 2)
    assert loaded is False


def test_unknown_backbone_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'; choose one of resnet18, alexnet"):
        build_network("resnet19")


def test_imagenet_weights_come_from_the_torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = torchvision.models.resnet18(weights=None)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    file_name = Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    torch.save(reference.state_dict(), checkpoints / file_name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    network, loaded = build_network("resnet18", pretrained=True)

    assert loaded is True
    torch.testing.assert_close(network.conv1.weight, reference.conv1.weight)
    assert network.fc.out_features == 2


def test_missing_weights_train_from_scratch_with_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    _, loaded = build_network("alexnet", pretrained=True)

    assert loaded is False
    assert "No ImageNet weights for alexnet" in caplog.text


def test_checkpoint_round_trip_keeps_card_and_outputs() -> None:
    network, _ = build_network("resnet18", pretrained=False)
    card = ModelCard(backbone="resnet18", input_size=48, data_fingerprint="abc", validation_metrics={"mcc": 0.5})
    classifier = Classifier(network, card)
    image = torch.randint(0, 255, (30, 50, 3), dtype=torch.uint8).numpy()

    restored = load_checkpoint(save_checkpoint(classifier.network, card))

    assert restored.card == card
    assert restored.predict([image]) == pytest.approx(classifier.predict([image]), abs=1e-6)


def test_non_checkpoint_bytes_are_rejected() -> None:
    import io

    import pytest
    import torch

    from nearcaipi.models import load_checkpoint

    with pytest.raises(ValueError, match="not a NearCAIPI checkpoint"):
        load_checkpoint(b"# README\n")
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    with pytest.raises(ValueError, match="has no model card and weights"):
        load_checkpoint(buffer.getvalue())
