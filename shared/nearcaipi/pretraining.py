"""Backbone weights learnt on a surface-texture data set, for machines where ImageNet weights are unavailable.

A backbone is trained to tell the texture classes apart (for NEU surface defects: crazing, inclusion, patches,
pitted surface, rolled-in scale, scratches). Its convolutional layers then start an OK/NOK classifier; the
class head is dropped. The classes come from the image names (``<class>_<number>.jpg`` in one folder) or
from the folders the images lie in.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nearcaipi.data import IMAGE_SUFFIXES, load_rgb
from nearcaipi.models import IMAGENET_MEAN, IMAGENET_STD, build_network, replace_head
from nearcaipi.training import resize_image

logger = logging.getLogger(__name__)

NUMBERED_NAME = re.compile(r"^(?P<label>.+?)_\d+$")
VALIDATION_FRACTION = 0.15


@dataclass
class PretrainingReport:
    classes: list[str]
    images: int
    epochs: int
    validation_accuracy: float
    seconds: float


def texture_samples(folder: Path) -> tuple[list[Path], list[str]]:
    """Find the images of a texture data set and the class name of each.

    Raises:
        ValueError: the folder has no images, or fewer than two classes.
    """
    paths = sorted(path for path in Path(folder).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"texture folder {folder} contains no images")

    parents = {path.parent for path in paths}
    if len(parents) > 1:
        labels = [path.parent.name for path in paths]
    else:
        matches = [NUMBERED_NAME.match(path.stem) for path in paths]
        labels = [match.group("label") if match else path.stem for match, path in zip(matches, paths, strict=True)]
    if len(set(labels)) < 2:
        raise ValueError(
            f"texture folder {folder} has one class ({labels[0]}); name images <class>_<number> or put each "
            "class in its own folder"
        )
    return paths, labels


def load_backbone_weights(network: nn.Module, path: Path) -> None:
    """Load pretrained backbone weights into a network of the same architecture, keeping its own class head.

    Raises:
        ValueError: the file was made for another backbone.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    own = network.state_dict()
    # The texture classes' head never carries over, even where it has as many outputs as the new one.
    head = _head_prefix(network)
    weights = {
        name: value
        for name, value in payload["state_dict"].items()
        if name in own and own[name].shape == value.shape and not name.startswith(head)
    }
    skipped = sorted(set(payload["state_dict"]) - set(weights))
    missing = sorted(set(own) - set(weights))
    if len(weights) < len(own) // 2:
        raise ValueError(
            f"weights in {path} fit only {len(weights)} of {len(own)} tensors; they were made for "
            f"{payload.get('backbone', 'another backbone')}"
        )
    network.load_state_dict(weights, strict=False)
    logger.info(
        "Loaded %d pretrained tensors from %s (%s); %d left at their start values (%s), %d skipped",
        len(weights),
        path,
        payload.get("source", "unknown source"),
        len(missing),
        ", ".join(missing) or "none",
        len(skipped),
    )


def _head_prefix(network: nn.Module) -> str:
    last = [name for name, module in network.named_modules() if isinstance(module, nn.Linear)][-1]
    return f"{last}."


def pretrain_backbone(
    folder: Path,
    output: Path,
    backbone: str = "resnet18",
    input_size: int = 64,
    epochs: int = 15,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> PretrainingReport:
    """Train ``backbone`` to classify the textures in ``folder`` and save its weights to ``output``."""
    started = time.perf_counter()
    paths, labels = texture_samples(folder)
    classes = sorted(set(labels))
    targets = torch.tensor([classes.index(label) for label in labels])
    images = torch.stack(
        [resize_image(load_rgb(path), input_size) for path in tqdm(paths, desc="load textures", disable=not progress)]
    )

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(paths), generator=generator)
    validation_count = max(len(classes), int(len(paths) * VALIDATION_FRACTION))
    validation, train = order[:validation_count], order[validation_count:]

    torch.manual_seed(seed)
    network, _ = build_network(backbone, pretrained=False)
    replace_head(network, len(classes))
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def normalized(indices: torch.Tensor) -> torch.Tensor:
        return (images[indices].float() / 255.0 - mean) / std

    best_accuracy, best_state = -1.0, None
    for epoch in tqdm(range(1, epochs + 1), desc=f"pretrain {backbone}", disable=not progress):
        network.train()
        shuffled = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(shuffled), batch_size):
            indices = shuffled[start : start + batch_size]
            batch = normalized(indices)
            # Textures have no orientation: flips are free extra data.
            if torch.rand(1, generator=generator).item() < 0.5:
                batch = batch.flip(-1)
            if torch.rand(1, generator=generator).item() < 0.5:
                batch = batch.flip(-2)
            loss = F.cross_entropy(network(batch), targets[indices])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        accuracy = _accuracy(network, normalized(validation), targets[validation])
        logger.info("Pretraining epoch %d: validation accuracy %.3f", epoch, accuracy)
        if accuracy > best_accuracy:
            best_accuracy = accuracy
            best_state = {name: value.clone() for name, value in network.state_dict().items()}

    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "backbone": backbone,
            "source": str(folder),
            "classes": classes,
            "input_size": input_size,
            "validation_accuracy": best_accuracy,
            "state_dict": best_state,
        },
        output,
    )
    report = PretrainingReport(classes, len(paths), epochs, best_accuracy, time.perf_counter() - started)
    logger.info(
        "Pretrained %s on %d texture images (%d classes) in %.0f s: validation accuracy %.3f; weights in %s",
        backbone,
        report.images,
        len(classes),
        report.seconds,
        best_accuracy,
        output,
    )
    return report


@torch.inference_mode()
def _accuracy(network: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    network.eval()
    predictions = torch.cat(
        [network(images[start : start + 128]).argmax(dim=1) for start in range(0, len(images), 128)]
    )
    return float((predictions == targets).float().mean())


def describe(report: PretrainingReport) -> str:
    return (
        f"{report.images} images, classes {', '.join(report.classes)}, {report.epochs} epochs in "
        f"{report.seconds:.0f} s, validation accuracy {report.validation_accuracy:.3f}"
    )
