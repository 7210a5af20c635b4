"""Training runs end to end: data, training, evaluation on the test split, publication and promotion."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from nearcaipi.data import IMAGE_SUFFIXES, OK, discover_samples, split_samples
from nearcaipi.learning import collect_review_additions
from nearcaipi.models import Classifier, load_checkpoint, select_device
from nearcaipi.pipeline import publish_model
from nearcaipi.pool import embed_pool
from nearcaipi.storage.objects import ObjectStore
from nearcaipi.storage.records import RecordStore
from nearcaipi.training import (
    TRAINING_PROFILES,
    TrainingReport,
    evaluate,
    fit_classifier,
    load_images,
    train_classifier,
)

logger = logging.getLogger(__name__)


@dataclass
class PublishedModel:
    version: int
    promoted: bool
    classifier: Classifier
    report: TrainingReport
    test_metrics: dict[str, float]


def train_evaluate_publish(
    data_dir: Path,
    records: RecordStore,
    objects: ObjectStore,
    backbone: str = "resnet18",
    profile_name: str = "quick",
    seed: int = 0,
    progress: bool = True,
    overrides: dict | None = None,
) -> PublishedModel:
    """Train on a folder data set, evaluate on its test split, publish, and promote unless worse.

    A new version is promoted when no version is promoted yet or when its test MCC is at least the promoted
    version's. Otherwise it stays a candidate.
    """
    if profile_name not in TRAINING_PROFILES:
        raise ValueError(f"unknown training profile {profile_name!r}; choose one of {', '.join(TRAINING_PROFILES)}")
    profile = dataclasses.replace(TRAINING_PROFILES[profile_name], **(overrides or {}))

    splits = split_samples(discover_samples(data_dir), seed=seed)
    classifier, report = train_classifier(splits, data_dir, backbone, profile, seed=seed, progress=progress)
    test_metrics = evaluate(classifier, splits["test"])
    classifier.card.test_metrics = test_metrics
    logger.info(
        "Trained %s in %.0f s (%d epochs, best %d): test accuracy %.3f, F1 %.3f, MCC %.3f",
        backbone,
        report.seconds,
        report.epochs_run,
        report.best_epoch,
        test_metrics["accuracy"],
        test_metrics["f1"],
        test_metrics["mcc"],
    )

    return _publish_unless_worse(classifier, records, objects, test_metrics, report)


def train_from_reviews(
    training_run_id: int,
    records: RecordStore,
    objects: ObjectStore,
    strategy: str,
    data_dir: Path,
    profile_name: str = "quick",
    seed: int = 0,
    retrain_epochs: int = 10,
    max_image_pixels: int = 40_000_000,
    backgrounds_dir: Path | None = None,
    progress: bool = False,
) -> PublishedModel:
    """Fine-tune the promoted version on the data set's train split plus what ``strategy`` makes of the reviews.

    The new version is evaluated on the data set's test split and promoted unless its MCC is below the promoted
    version's, as in ``train_evaluate_publish``.

    Raises:
        LookupError: no model version is promoted.
        NothingToLearnError: no image has been reviewed.
    """
    current = records.promoted_model_version()
    if current is None:
        raise LookupError("no model version is promoted; train one first with nearcaipi train")
    profile_base = TRAINING_PROFILES[profile_name]
    classifier = load_checkpoint(objects.get(current.checkpoint_key), select_device("auto"))
    size = classifier.input_size

    # The codebook of the promoted version must cover the whole pool before near hits and misses are looked up.
    embed_pool(records, objects, current.version, classifier, max_image_pixels)

    splits = split_samples(discover_samples(data_dir), seed=seed)
    backgrounds = (
        [path for path in sorted(backgrounds_dir.rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES]
        if backgrounds_dir is not None
        else [sample.path for sample in splits["train"] if sample.label == OK]
    )
    additions = collect_review_additions(
        records,
        objects,
        strategy,
        current.version,
        size,
        training_run_id,
        backgrounds,
        np.random.default_rng(seed * 7919 + training_run_id),
        max_image_pixels,
    )

    train_images = torch.cat([load_images(splits["train"], size, progress), torch.stack(additions.images)])
    train_labels = torch.cat(
        [
            torch.tensor([sample.label for sample in splits["train"]], dtype=torch.long),
            torch.tensor(additions.labels, dtype=torch.long),
        ]
    )
    validation = splits["validation"]
    profile = dataclasses.replace(profile_base, input_size=size, max_epochs=retrain_epochs)
    report = fit_classifier(
        classifier,
        train_images,
        train_labels,
        load_images(validation, size, progress),
        torch.tensor([sample.label for sample in validation], dtype=torch.long),
        profile,
        seed=seed,
        progress=progress,
    )

    test_metrics = evaluate(classifier, splits["test"])
    summary = additions.summary(strategy)
    classifier.card.test_metrics = test_metrics
    classifier.card.training = {
        **dataclasses.asdict(profile),
        "seed": seed,
        "parent_version": current.version,
        "training_run": training_run_id,
        **summary,
    }
    logger.info(
        "Fine-tuned version %d on %d images in %.0f s: test accuracy %.3f, F1 %.3f, MCC %.3f",
        current.version,
        len(train_labels),
        report.seconds,
        test_metrics["accuracy"],
        test_metrics["f1"],
        test_metrics["mcc"],
    )

    published = _publish_unless_worse(classifier, records, objects, test_metrics, report)
    records.mark_reviews_trained(additions.review_ids, training_run_id)
    records.update_training_run(training_run_id, summary=summary)
    if published.promoted:
        embed_pool(records, objects, published.version, classifier, max_image_pixels)
    return published


def _publish_unless_worse(
    classifier: Classifier,
    records: RecordStore,
    objects: ObjectStore,
    test_metrics: dict[str, float],
    report: TrainingReport,
) -> PublishedModel:
    current = records.promoted_model_version()
    promote = current is None or test_metrics["mcc"] >= current.test_metrics.get("mcc", -1.0)
    version = publish_model(classifier, records, objects, promote=promote, test_metrics=test_metrics)
    if not promote:
        logger.warning(
            "Model version %d stays a candidate: test MCC %.3f is below the promoted version %d's %.3f",
            version,
            test_metrics["mcc"],
            current.version,
            current.test_metrics.get("mcc", -1.0),
        )
    return PublishedModel(version, promote, classifier, report, test_metrics)


def run_training(
    training_run_id: int,
    records: RecordStore,
    objects: ObjectStore,
    progress: bool = False,
    retrain_epochs: int = 10,
    max_image_pixels: int = 40_000_000,
    backgrounds_dir: Path | None = None,
    default_data_dir: Callable[[], Path] | None = None,
) -> int | None:
    """Carry out a recorded training run; a finished run is not repeated. Returns the model version.

    A run recorded without a data folder (queued through the API) uses ``default_data_dir()``, the trainer's
    own data set.
    """
    run = records.get_training_run(training_run_id)
    if run is None:
        logger.warning("Training run %d does not exist; nothing to do", training_run_id)
        return None
    if run.status == "done":
        logger.info("Training run %d is already done (model version %s)", training_run_id, run.model_version)
        return run.model_version

    records.update_training_run(training_run_id, status="running")
    try:
        if run.data_dir:
            data_dir = Path(run.data_dir)
        elif default_data_dir is not None:
            data_dir = default_data_dir()
        else:
            raise ValueError(f"training run {training_run_id} names no data folder and the trainer has no default")
        if run.strategy:
            published = train_from_reviews(
                training_run_id,
                records,
                objects,
                run.strategy,
                data_dir,
                run.profile,
                run.seed,
                retrain_epochs,
                max_image_pixels,
                backgrounds_dir,
                progress,
            )
        else:
            published = train_evaluate_publish(
                data_dir, records, objects, run.backbone, run.profile, run.seed, progress=progress
            )
            if published.promoted:
                embed_pool(records, objects, published.version, published.classifier, max_image_pixels)
    except Exception as error:
        records.update_training_run(
            training_run_id, status="failed", error=f"{type(error).__name__}: {error}", finished_at=datetime.now(UTC)
        )
        raise

    records.update_training_run(
        training_run_id, status="done", model_version=published.version, finished_at=datetime.now(UTC)
    )
    return published.version
