"""The steps of an inspection between the adapters and the domain core, shared by the services.

Routes and tasks stay thin: they call these functions with ids, and these load, compute and store.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from nearcaipi.data import CLASS_NAMES, NOK
from nearcaipi.explanation import Explanation, ExplanationParameters, Method, encode_map, explain_many, render_overlay
from nearcaipi.imaging import decode_image
from nearcaipi.models import Classifier, load_checkpoint, save_checkpoint, select_device
from nearcaipi.storage.objects import ObjectStore
from nearcaipi.storage.records import ExplanationRecord, ModelVersionRecord, RecordStore

logger = logging.getLogger(__name__)


def saliency_key(image_id: str, model_version: int, method: str) -> str:
    return f"saliency/{image_id}/v{model_version}-{method}.npy"


def overlay_key(image_id: str, model_version: int, method: str) -> str:
    return f"overlays/{image_id}/v{model_version}-{method}.png"


def label_of(p_nok: float) -> str:
    """Verdict of a NOK probability: NOK from 0.5 on, the argmax of two classes."""
    return CLASS_NAMES[NOK] if p_nok >= 0.5 else CLASS_NAMES[1 - NOK]


class ModelCache:
    """Classifiers by model version, loaded from the object store on first use (the newest few are kept)."""

    def __init__(self, records: RecordStore, objects: ObjectStore, capacity: int = 2, device: str = "cpu") -> None:
        self.records = records
        self.objects = objects
        self.capacity = capacity
        self.device = select_device(device)
        self._loaded: OrderedDict[int, Classifier] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: int) -> Classifier:
        with self._lock:
            if version in self._loaded:
                self._loaded.move_to_end(version)
                return self._loaded[version]

            record = self.records.get_model_version(version)
            if record is None:
                raise LookupError(f"model version {version} does not exist")
            started = time.perf_counter()
            classifier = load_checkpoint(self.objects.get(record.checkpoint_key), self.device)
            logger.info(
                "Loaded model version %d (%s, %d px) on %s in %.1f s",
                version,
                record.backbone,
                record.input_size,
                self.device,
                time.perf_counter() - started,
            )

            self._loaded[version] = classifier
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
            return classifier


class ServedModel:
    """The promoted model version, re-checked in the records at most every ``refresh_seconds`` (hot reload)."""

    def __init__(self, cache: ModelCache, refresh_seconds: float) -> None:
        self.cache = cache
        self.refresh_seconds = refresh_seconds
        self._version: int | None = None
        self._checked_at = -float("inf")
        self._lock = threading.Lock()

    def promoted_version(self) -> int | None:
        """Return the promoted version, read from the records at most every ``refresh_seconds``."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self.refresh_seconds:
                record = self.cache.records.promoted_model_version()
                version = record.version if record else None
                if version != self._version:
                    logger.info("Serving model version %s (was %s)", version, self._version)
                self._version, self._checked_at = version, now
            return self._version

    def current(self) -> tuple[int, Classifier] | None:
        """Return the served version and its classifier, or None while no version is promoted."""
        version = self.promoted_version()
        if version is None:
            return None
        return version, self.cache.get(version)


def publish_model(
    classifier: Classifier, records: RecordStore, objects: ObjectStore, promote: bool, test_metrics: dict | None = None
) -> int:
    """Store a checkpoint (keyed by its content hash) and register it as a model version."""
    checkpoint = save_checkpoint(classifier.network, classifier.card)
    key = f"checkpoints/{hashlib.sha256(checkpoint).hexdigest()[:24]}.pt"
    objects.put(key, checkpoint)

    card = classifier.card
    record = ModelVersionRecord(
        backbone=card.backbone,
        input_size=card.input_size,
        checkpoint_key=key,
        data_fingerprint=card.data_fingerprint,
        validation_metrics=card.validation_metrics,
        test_metrics=test_metrics or card.test_metrics,
        training={**card.training, "data_root": card.data_root, "pretrained": card.pretrained},
        splits=card.splits,
    )
    return records.register_model_version(record, promote=promote)


@dataclass(frozen=True)
class ExplanationOutcome:
    image_id: str
    model_version: int
    method: str
    computed: bool
    seconds: float = 0.0


def run_explanation(
    image_id: str,
    model_version: int,
    method: Method,
    records: RecordStore,
    objects: ObjectStore,
    models: ModelCache,
    parameters: ExplanationParameters,
    batch_images: int = 1,
    lease_seconds: float | None = None,
) -> list[ExplanationOutcome]:
    """Compute, store and record one explanation, and with ``batch_images`` > 1 up to that many in one batch.

    The companions are other queued explanations of the same model version and method, claimed from the
    records. Their own queue messages later find them done and do nothing. Already done: nothing is
    recomputed. Storing is idempotent: the map and overlay keys depend only on image, model version and method.

    Raises:
        ExplanationBusyError: another worker claimed this explanation less than ``lease_seconds`` ago.
    """
    image = records.get_image(image_id)
    if image is None:
        raise LookupError(f"image {image_id} does not exist")
    claimed = records.claim_explanation(image_id, model_version, method, lease_seconds)
    if claimed is None:
        logger.info("Explanation of image %s (model version %d, %s) is already done", image_id, model_version, method)
        return [ExplanationOutcome(image_id, model_version, method, computed=False)]
    jobs = [(image, claimed)]
    for companion in records.claim_queued_explanations(model_version, method, batch_images - 1):
        companion_image = records.get_image(companion.image_id)
        if companion_image is not None:
            jobs.append((companion_image, companion))

    started = time.perf_counter()
    decoded = []
    for job_image, record in jobs:
        try:
            pixels = decode_image(
                objects.get(job_image.object_key), max_pixels=job_image.width * job_image.height
            ).pixels
        except Exception as error:
            records.fail_explanation(record.id, f"{type(error).__name__}: {error}")
            if record is claimed:
                raise
            logger.error("Explanation of image %s failed while loading it: %s", job_image.id, error)
            continue
        decoded.append((job_image, record, pixels))

    try:
        explanations = explain_many(models.get(model_version), [pixels for _, _, pixels in decoded], method, parameters)
    except Exception as error:
        for _, record, _ in decoded:
            records.fail_explanation(record.id, f"{type(error).__name__}: {error}")
        raise
    seconds = (time.perf_counter() - started) / max(len(decoded), 1)

    outcomes = []
    for (job_image, record, pixels), explanation in zip(decoded, explanations, strict=True):
        outcomes.append(_store_explanation(job_image.id, record, pixels, explanation, seconds, records, objects))
    if len(decoded) > 1:
        logger.info("Explained %d images of model version %d in one batch", len(decoded), model_version)
    return outcomes


def _store_explanation(
    image_id: str,
    record: ExplanationRecord,
    pixels: np.ndarray,
    explanation: Explanation,
    seconds: float,
    records: RecordStore,
    objects: ObjectStore,
) -> ExplanationOutcome:
    explanation_id, model_version, method = record.id, record.model_version, record.method
    try:
        map_key = saliency_key(image_id, model_version, method)
        picture_key = overlay_key(image_id, model_version, method)
        objects.put(map_key, encode_map(explanation.saliency))
        objects.put(picture_key, render_overlay(pixels, explanation.saliency, explanation.flat), "image/png")
    except Exception as error:
        records.fail_explanation(explanation_id, f"{type(error).__name__}: {error}")
        raise

    records.finish_explanation(
        explanation_id,
        saliency_key=map_key,
        overlay_key=picture_key,
        target_class=explanation.target_class,
        flat=explanation.flat,
        masks=explanation.masks_used,
        seed=explanation.parameters.seed,
        seconds=seconds,
    )
    logger.info(
        "Explained image %s with %s under model version %d in %.1f s (%d masks%s)",
        image_id,
        method,
        model_version,
        seconds,
        explanation.masks_used,
        ", flat map" if explanation.flat else "",
    )
    return ExplanationOutcome(image_id, model_version, method, computed=True, seconds=seconds)
