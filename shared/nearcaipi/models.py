"""OK/NOK classifiers on torchvision backbones, and their checkpoints.

Every backbone gets its last layer replaced by two outputs (OK, NOK). A checkpoint carries everything needed
to use the model again: backbone, input size, class names, normalisation, training data fingerprint, splits
and validation metrics.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from nearcaipi.data import CLASS_NAMES

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    """A torchvision architecture and the ImageNet weights it starts from when they are available offline."""

    name: str
    builder: Callable[..., nn.Module]
    weights: Any


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("resnet18", torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "alexnet": Backbone("alexnet", torchvision.models.alexnet, torchvision.models.AlexNet_Weights.IMAGENET1K_V1),
    "vgg16": Backbone("vgg16", torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
    "resnext50_32x4d": Backbone(
        "resnext50_32x4d",
        torchvision.models.resnext50_32x4d,
        torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2,
    ),
}
# The method's paper used IMAGENET1K_V2 for ResNet-18; torchvision ships only V1 for that architecture.


@dataclass
class ModelCard:
    """Metadata that a checkpoint stores beside the weights."""

    backbone: str
    input_size: int
    class_names: tuple[str, ...] = CLASS_NAMES
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    data_fingerprint: str = ""
    data_root: str = ""
    splits: dict[str, list[str]] = field(default_factory=dict)
    validation_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False


def select_device(requested: str = "auto") -> torch.device:
    """Resolve "auto" to the first CUDA GPU when one is visible, else the CPU; other values pass to torch."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def check_backbone(name: str) -> Backbone:
    """Look up a backbone by name; raises ValueError listing the allowed names."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_network(backbone_name: str, pretrained: bool = True) -> tuple[nn.Module, bool]:
    """Build a two-class network; returns it and whether ImageNet weights were loaded.

    Weights are only taken from torch's local cache (``torch.hub.get_dir()/checkpoints``); nothing is downloaded.
    """
    backbone = check_backbone(backbone_name)
    network = backbone.builder(weights=None)
    loaded = False

    if pretrained:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(backbone.weights.url).name
        if cached.exists():
            network.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
            loaded = True
            logger.info("Loaded ImageNet weights for %s from %s", backbone_name, cached)
        else:
            logger.warning(
                "No ImageNet weights for %s at %s; training from scratch, which needs more epochs and data. "
                "Place %s there to start from ImageNet.",
                backbone_name,
                cached,
                Path(backbone.weights.url).name,
            )

    replace_head(network, len(CLASS_NAMES))
    return network, loaded


def replace_head(network: nn.Module, classes: int) -> None:
    """Replace the network's last layer with a fresh one of ``classes`` outputs."""
    if isinstance(network, torchvision.models.ResNet):
        network.fc = nn.Linear(network.fc.in_features, classes)
    else:
        # AlexNet and VGG end in a Sequential classifier whose last entry is the ImageNet layer.
        last = network.classifier[-1]
        network.classifier[-1] = nn.Linear(last.in_features, classes)


class Classifier:
    """A trained network with its model card: preprocessing, class probabilities and embeddings."""

    def __init__(self, network: nn.Module, card: ModelCard, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.card = card
        # Held by code that attaches forward hooks (embeddings), so a hook never captures another thread's pass.
        self.lock = threading.RLock()
        self._mean = torch.tensor(card.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(card.std, device=self.device).view(1, 3, 1, 1)

    @property
    def input_size(self) -> int:
        return self.card.input_size

    def to_input(self, image: np.ndarray) -> torch.Tensor:
        """Resize an RGB image to the model's square input. (H, W, 3) uint8 -> (1, 3, S, S) float32 in [0, 1].

        The result lies on the classifier's device.
        """
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0).to(self.device).float() / 255.0
        return F.interpolate(tensor, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation of raw pixels: (B, 3, S, S) in [0, 1] -> normalised."""
        return (batch - self._mean) / self._std

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax over (OK, NOK) for raw-pixel inputs. (B, 3, S, S) in [0, 1] -> (B, 2) float32."""
        return torch.softmax(self.network(self.normalize(batch.to(self.device))), dim=1)

    def predict(self, images: Sequence[np.ndarray]) -> list[float]:
        """Return p_nok, the NOK probability, of each (H, W, 3) uint8 image."""
        batch = torch.cat([self.to_input(image) for image in images])
        return self.probabilities(batch)[:, 1].tolist()


def save_checkpoint(network: nn.Module, card: ModelCard) -> bytes:
    """Serialise weights and model card into checkpoint bytes."""
    buffer = io.BytesIO()
    torch.save({"state_dict": network.state_dict(), "card": asdict(card)}, buffer)
    return buffer.getvalue()


def load_checkpoint(data: bytes, device: torch.device | str = "cpu") -> Classifier:
    """Rebuild a classifier from checkpoint bytes written by save_checkpoint.

    Raises:
        ValueError: the bytes are not a NearCAIPI checkpoint.
    """
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        # torch raises UnpicklingError, RuntimeError or EOFError depending on how the bytes are wrong.
        raise ValueError(
            f"not a NearCAIPI checkpoint ({type(error).__name__}); write one with nearcaipi train"
        ) from error
    if not isinstance(payload, dict) or "card" not in payload or "state_dict" not in payload:
        raise ValueError("not a NearCAIPI checkpoint: it has no model card and weights; write one with nearcaipi train")
    card_fields = dict(payload["card"])
    for name in ("class_names", "mean", "std"):
        card_fields[name] = tuple(card_fields[name])
    card = ModelCard(**card_fields)

    network, _ = build_network(card.backbone, pretrained=False)
    network.load_state_dict(payload["state_dict"])
    return Classifier(network, card, device)
