"""Training runs end to end: data, training, evaluation on the test split, publication and promotion."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nearcaipi.data import discover_samples, split_samples
from nearcaipi.models import Classifier
from nearcaipi.pipeline import publish_model
from nearcaipi.storage.objects import ObjectStore
from nearcaipi.storage.records import RecordStore
from nearcaipi.training import TRAINING_PROFILES, TrainingReport, evaluate, train_classifier

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
    training_run_id: int, records: RecordStore, objects: ObjectStore, progress: bool = False
) -> int | None:
    """Carry out a recorded training run; a finished run is not repeated. Returns the model version."""
    run = records.get_training_run(training_run_id)
    if run is None:
        logger.warning("Training run %d does not exist; nothing to do", training_run_id)
        return None
    if run.status == "done":
        logger.info("Training run %d is already done (model version %s)", training_run_id, run.model_version)
        return run.model_version

    records.update_training_run(training_run_id, status="running")
    try:
        published = train_evaluate_publish(
            Path(run.data_dir), records, objects, run.backbone, run.profile, run.seed, progress=progress
        )
    except Exception as error:
        records.update_training_run(
            training_run_id, status="failed", error=f"{type(error).__name__}: {error}", finished_at=datetime.now(UTC)
        )
        raise

    records.update_training_run(
        training_run_id, status="done", model_version=published.version, finished_at=datetime.now(UTC)
    )
    return published.version
