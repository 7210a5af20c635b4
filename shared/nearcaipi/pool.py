"""The interactive pool: every posted image, embedded under a model version and searchable by cosine similarity.

Each model version has its own codebook, because embeddings of different versions live in different spaces. An
image's class in the pool is its reviewer's label where one exists, else its prediction under that version.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from nearcaipi.imaging import decode_image
from nearcaipi.models import Classifier
from nearcaipi.pipeline import label_of
from nearcaipi.similarity import NearestNeighbours, SimilarityIndex, embed
from nearcaipi.storage.objects import ObjectStore
from nearcaipi.storage.records import PredictionRecord, RecordStore, ReviewRecord

logger = logging.getLogger(__name__)

CLASS_OF_LABEL = {"OK": 0, "NOK": 1}
LABEL_OF_CLASS = {0: "OK", 1: "NOK"}
EMBEDDING_BATCH = 32


@dataclass(frozen=True)
class PoolNeighbours:
    """Near hit and near miss of one image, and the class they were searched by."""

    image_id: str
    model_version: int
    query_label: str
    query_label_source: str
    """review or prediction"""
    found: NearestNeighbours
    labels: dict[str, tuple[str, str]]
    """Label and its source (review or prediction) of each neighbour found, keyed by image id."""


class PoolIndex:
    """The codebook of one model version, extended with newly embedded images on each refresh.

    Safe to share between the threads of one process.
    """

    def __init__(self, records: RecordStore, model_version: int) -> None:
        self.records = records
        self.model_version = model_version
        self._index: SimilarityIndex | None = None
        self._predicted: dict[str, str] = {}
        self._labels: dict[str, tuple[str, str]] = {}
        self._last_prediction_id = 0
        # _lock guards the codebook; _query_lock keeps one query's labels and search together.
        self._lock = threading.Lock()
        self._query_lock = threading.Lock()

    def refresh(self) -> None:
        """Add the images embedded under this version since the last refresh."""
        with self._lock:
            added = self.records.embedded_predictions(self.model_version, after_id=self._last_prediction_id)
            if not added:
                return
            keys = [row.image_id for row in added]
            embeddings = np.stack([np.frombuffer(row.embedding, dtype=np.float32) for row in added])
            classes = [CLASS_OF_LABEL[row.label] for row in added]
            if self._index is None:
                self._index = SimilarityIndex(keys, embeddings, classes)
            else:
                self._index.extend(keys, embeddings, classes)
            self._predicted.update({row.image_id: row.label for row in added})
            self._last_prediction_id = added[-1].id

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else 0

    def contains(self, image_id: str) -> bool:
        return self._index is not None and self._index.contains(image_id)

    def labelled_index(self) -> SimilarityIndex:
        """Return the codebook with each image's class set to its latest reviewed label, else its prediction.

        Raises:
            LookupError: no image is embedded under this version yet.
        """
        reviews = self.records.latest_reviews()
        with self._lock:
            if self._index is None:
                raise LookupError(f"no image is embedded under model version {self.model_version} yet")
            self._labels = {key: self._reviewed_or_predicted(key, reviews) for key in self._index.keys}
            self._index.classes = np.array(
                [CLASS_OF_LABEL[self._labels[key][0]] for key in self._index.keys], dtype=np.int64
            )
            return self._index

    def label_of(self, image_id: str) -> str:
        """OK or NOK, as of the last ``labelled_index`` call."""
        return self._labels[image_id][0]

    def neighbours(self, image_id: str) -> PoolNeighbours:
        """Near hit and near miss of an indexed image; classes follow the latest reviews.

        Raises:
            LookupError: the image has no embedding under this version.
        """
        self.refresh()
        if not self.contains(image_id):
            raise LookupError(f"image {image_id} has no embedding under model version {self.model_version}")

        with self._query_lock:
            index = self.labelled_index()
            query_label, query_source = self._labels[image_id]
            found = index.nearest_to_key(image_id, CLASS_OF_LABEL[query_label])
            neighbour_labels = {
                neighbour.key: self._labels[neighbour.key]
                for neighbour in (found.near_hit, found.near_miss)
                if neighbour is not None
            }
        return PoolNeighbours(image_id, self.model_version, query_label, query_source, found, neighbour_labels)

    def _reviewed_or_predicted(self, image_id: str, reviews: dict[str, ReviewRecord]) -> tuple[str, str]:
        if image_id in reviews:
            return reviews[image_id].label, "review"
        return self._predicted[image_id], "prediction"


def predict_and_embed(
    classifier: Classifier, pixels: np.ndarray, image_id: str, model_version: int
) -> PredictionRecord:
    """Classify and embed one (H, W, 3) uint8 image in one forward pass; returns the prediction, not yet stored.

    ``latency_ms`` is the time of that forward pass.
    """
    started = time.perf_counter()
    embeddings, p_values = embed(classifier, classifier.to_input(pixels))
    p_nok = float(p_values[0])
    return PredictionRecord(
        image_id=image_id,
        model_version=model_version,
        label=label_of(p_nok),
        p_nok=p_nok,
        latency_ms=(time.perf_counter() - started) * 1000.0,
        embedding=embeddings[0].tobytes(),
    )


def embed_pool(
    records: RecordStore, objects: ObjectStore, model_version: int, classifier: Classifier, max_image_pixels: int
) -> int:
    """Predict and embed every stored image that has no prediction under ``model_version`` yet.

    Runs after a version is promoted, so that its codebook covers the whole pool. Returns how many images were
    embedded. Images whose bytes cannot be read are logged and skipped.
    """
    embedded = 0
    skipped: set[str] = set()
    started = time.perf_counter()
    while True:
        batch = [
            image
            for image in records.images_without_prediction(model_version, EMBEDDING_BATCH + len(skipped))
            if image.id not in skipped
        ][:EMBEDDING_BATCH]
        if not batch:
            break

        for image in batch:
            try:
                pixels = decode_image(objects.get(image.object_key), max_image_pixels).pixels
            except Exception as error:
                logger.error("Cannot embed image %s under model version %d: %s", image.id, model_version, error)
                skipped.add(image.id)
                continue

            stored = records.add_prediction(predict_and_embed(classifier, pixels, image.id, model_version))
            embedded += int(stored)

    if embedded or skipped:
        logger.info(
            "Embedded %d pool images under model version %d in %.1f s (%d skipped)",
            embedded,
            model_version,
            time.perf_counter() - started,
            len(skipped),
        )
    return embedded
