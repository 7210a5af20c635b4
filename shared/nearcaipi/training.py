"""Training and evaluation of OK/NOK classifiers.

The paper profile follows "Interactive Explainable Anomaly Detection for Industrial Settings" (the NearCAIPI
paper): SGD with learning rate 0.001 and momentum 0.9, 224 x 224 inputs, early stopping with a patience of
10 epochs on the validation loss, best checkpoint kept. The quick profile makes a serving model reachable on
a small CPU: see TRAINING_PROFILES for what it changes.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nearcaipi.data import Sample, dataset_fingerprint, describe_splits, load_rgb
from nearcaipi.metrics import classification_metrics
from nearcaipi.models import Classifier, ModelCard, build_network, select_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingProfile:
    """Hyperparameters of one training run."""

    name: str
    input_size: int
    max_epochs: int
    patience: int
    batch_size: int
    learning_rate: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    balance_classes: bool = True
    time_budget_seconds: float | None = None
    """No new epoch starts once training has run this long; None trains until max_epochs or early stopping."""

    def make_optimizer(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=self.learning_rate, momentum=self.momentum)
        if self.optimizer == "adam":
            return torch.optim.Adam(parameters, lr=self.learning_rate)
        raise ValueError(f"unknown optimizer {self.optimizer!r}; choose sgd or adam")


TRAINING_PROFILES = {
    "paper": TrainingProfile("paper", input_size=224, max_epochs=100, patience=10, batch_size=32, learning_rate=0.001),
    # Compared with the paper profile: 128 x 128 inputs (a third of the pixels), batches of 16, Adam with
    # learning rate 0.001, and no new epoch after 10 minutes. On a 2-core CPU an epoch over the magnetic
    # tiles' 538 training images takes about 15 s, so the budget allows about 40 epochs. Trained from
    # scratch, SGD at 0.001 or 0.01 left the training loss near chance for longer than Adam did.
    "quick": TrainingProfile(
        "quick",
        input_size=128,
        max_epochs=60,
        patience=10,
        batch_size=16,
        learning_rate=0.001,
        optimizer="adam",
        time_budget_seconds=600.0,
    ),
}


@dataclass
class TrainingReport:
    """Outcome of a training run."""

    epochs_run: int
    best_epoch: int
    seconds: float
    validation_metrics: dict[str, float]
    history: list[dict[str, float]]


def resize_image(pixels: np.ndarray, size: int) -> torch.Tensor:
    """Resize an RGB image to a square model input. (H, W, 3) uint8 -> (3, size, size) uint8."""
    image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0).float()
    resized = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)[0]


def load_images(samples: Sequence[Sample], size: int, progress: bool = False) -> torch.Tensor:
    """Load and resize images for training. Returns (B, 3, size, size) uint8."""
    tensors = [
        resize_image(load_rgb(sample.path), size)
        for sample in tqdm(samples, desc=f"load {size}px", disable=not progress, leave=False)
    ]
    return torch.stack(tensors) if tensors else torch.empty(0, 3, size, size, dtype=torch.uint8)


def _labels(samples: Sequence[Sample]) -> torch.Tensor:
    return torch.tensor([sample.label for sample in samples], dtype=torch.long)


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips: a part's defect class does not depend on its orientation."""
    flip_h = torch.rand(batch.shape[0], generator=generator) < 0.5
    flip_v = torch.rand(batch.shape[0], generator=generator) < 0.5
    batch = batch.clone()
    batch[flip_h] = batch[flip_h].flip(-1)
    batch[flip_v] = batch[flip_v].flip(-2)
    return batch


@torch.inference_mode()
def _predict_tensor(classifier: Classifier, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    outputs = [
        classifier.probabilities(images[start : start + batch_size].float() / 255.0).cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0, 2)


def evaluate(classifier: Classifier, samples: Sequence[Sample], images: torch.Tensor | None = None) -> dict[str, float]:
    """Accuracy, F1 (NOK positive) and MCC of a classifier on labelled samples."""
    if images is None:
        images = load_images(samples, classifier.input_size)
    predictions = _predict_tensor(classifier, images).argmax(dim=1).tolist()
    return classification_metrics([sample.label for sample in samples], predictions)


def train_classifier(
    splits: dict[str, list[Sample]],
    data_root: Path,
    backbone: str = "resnet18",
    profile: TrainingProfile = TRAINING_PROFILES["quick"],
    seed: int = 0,
    pretrained: bool = True,
    progress: bool = True,
    device: str = "auto",
) -> tuple[Classifier, TrainingReport]:
    """Train on the train split with early stopping on the validation split; returns the best epoch's model."""
    if not splits.get("train") or not splits.get("validation"):
        raise ValueError("training needs non-empty train and validation splits")

    torch.manual_seed(seed)
    network, loaded_pretrained = build_network(backbone, pretrained=pretrained)
    card = ModelCard(
        backbone=backbone,
        input_size=profile.input_size,
        data_fingerprint=dataset_fingerprint(splits["train"] + splits["validation"], data_root),
        data_root=str(data_root),
        splits=describe_splits(splits, data_root),
        training={**asdict(profile), "seed": seed},
        pretrained=loaded_pretrained,
    )
    classifier = Classifier(network, card, select_device(device))

    report = fit_classifier(
        classifier,
        load_images(splits["train"], profile.input_size, progress),
        _labels(splits["train"]),
        load_images(splits["validation"], profile.input_size, progress),
        _labels(splits["validation"]),
        profile,
        seed=seed,
        progress=progress,
    )
    return classifier, report


def fit_classifier(
    classifier: Classifier,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    validation_images: torch.Tensor,
    validation_labels: torch.Tensor,
    profile: TrainingProfile,
    seed: int = 0,
    progress: bool = True,
) -> TrainingReport:
    """Fit a classifier in place with early stopping; it ends with the weights of its best validation epoch.

    Args:
        train_images, validation_images: (B, 3, S, S) uint8 at the classifier's input size.
        train_labels, validation_labels: (B,) int64, 0 = OK and 1 = NOK.
    """
    network = classifier.network
    generator = torch.Generator().manual_seed(seed)
    loss_weights = _class_weights(train_labels).to(classifier.device) if profile.balance_classes else None
    optimizer = profile.make_optimizer(network.parameters())

    best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(network.state_dict())
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    epochs = tqdm(range(1, profile.max_epochs + 1), desc=f"train {classifier.card.backbone}", disable=not progress)
    for epoch in epochs:
        train_loss = _train_one_epoch(
            classifier, train_images, train_labels, optimizer, loss_weights, profile, generator
        )
        validation_loss, validation_metrics = _validate(classifier, validation_images, validation_labels, loss_weights)
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss, **validation_metrics}
        )
        epochs.set_postfix(loss=f"{validation_loss:.3f}", mcc=f"{validation_metrics['mcc']:.3f}")
        logger.info(
            "Epoch %d: train loss %.4f, validation loss %.4f, validation MCC %.3f",
            epoch,
            train_loss,
            validation_loss,
            validation_metrics["mcc"],
        )

        if validation_loss < best_loss:
            best_loss, best_epoch, best_state = validation_loss, epoch, copy.deepcopy(network.state_dict())
        elif epoch - best_epoch >= profile.patience:
            logger.info("Early stop after epoch %d: no better validation loss for %d epochs", epoch, profile.patience)
            break
        elapsed = time.perf_counter() - started
        if profile.time_budget_seconds is not None and elapsed >= profile.time_budget_seconds:
            logger.info(
                "Stopping after epoch %d: the time budget of %.0f s is spent", epoch, profile.time_budget_seconds
            )
            break

    network.load_state_dict(best_state)
    network.eval()
    best = history[best_epoch - 1]
    classifier.card.validation_metrics = {
        key: best[key] for key in ("accuracy", "precision", "recall", "f1", "mcc", "validation_loss")
    }
    return TrainingReport(
        epochs_run=len(history),
        best_epoch=best_epoch,
        seconds=time.perf_counter() - started,
        validation_metrics=classifier.card.validation_metrics,
        history=history,
    )


def _class_weights(labels: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights, so that the rarer NOK class counts as much as OK in the loss."""
    counts = torch.bincount(labels, minlength=2).float().clamp(min=1)
    return counts.sum() / (2 * counts)


def _train_one_epoch(
    classifier: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_weights: torch.Tensor | None,
    profile: TrainingProfile,
    generator: torch.Generator,
) -> float:
    network = classifier.network.train()
    order = torch.randperm(len(images), generator=generator)
    total_loss = 0.0
    for start in range(0, len(order), profile.batch_size):
        indices = order[start : start + profile.batch_size]
        batch = _augment(images[indices], generator).to(classifier.device).float() / 255.0
        targets = labels[indices].to(classifier.device)
        loss = F.cross_entropy(network(classifier.normalize(batch)), targets, weight=loss_weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(indices)
    network.eval()
    return total_loss / len(images)


@torch.inference_mode()
def _validate(
    classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor | None
) -> tuple[float, dict[str, float]]:
    probabilities = _predict_tensor(classifier, images)
    weights = loss_weights.cpu() if loss_weights is not None else None
    loss = F.nll_loss(torch.log(probabilities.clamp(min=1e-8)), labels, weight=weights).item()
    return loss, classification_metrics(labels.tolist(), probabilities.argmax(dim=1).tolist())
