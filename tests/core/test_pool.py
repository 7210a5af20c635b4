"""The pool codebook of a model version: grows with new embeddings, and classes follow the latest reviews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nearcaipi.pool import PoolIndex
from nearcaipi.similarity import SimilarityIndex
from nearcaipi.storage.records import (
    ImageRecord,
    ModelVersionRecord,
    PredictionRecord,
    RecordStore,
    ReviewRecord,
)


def image_id(number: int) -> str:
    return f"{number:032x}"


@pytest.fixture
def records(tmp_path: Path) -> RecordStore:
    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    store.create_schema()
    store.register_model_version(
        ModelVersionRecord(backbone="resnet18", input_size=32, checkpoint_key="checkpoints/a.pt", data_fingerprint=""),
        promote=True,
    )
    return store


def add_image(records: RecordStore, number: int, label: str, embedding: list[float]) -> None:
    image = ImageRecord(
        id=image_id(number),
        object_key=f"images/{number}.png",
        format="PNG",
        width=4,
        height=4,
        size_bytes=1,
        sha256="0" * 64,
    )
    prediction = PredictionRecord(
        image_id=image_id(number),
        model_version=1,
        label=label,
        p_nok=0.9 if label == "NOK" else 0.1,
        latency_ms=1.0,
        embedding=np.asarray(embedding, dtype=np.float32).tobytes(),
    )
    records.add_inspection(image, prediction, None)


def test_near_hit_and_miss_by_prediction(records: RecordStore) -> None:
    add_image(records, 1, "NOK", [1.0, 0.0])
    add_image(records, 2, "NOK", [0.9, 0.1])
    add_image(records, 3, "OK", [0.8, 0.3])
    add_image(records, 4, "OK", [0.0, 1.0])
    pool = PoolIndex(records, 1)

    found = pool.neighbours(image_id(1))

    assert found.query_label == "NOK"
    assert found.query_label_source == "prediction"
    assert found.found.near_hit.key == image_id(2)
    assert found.found.near_miss.key == image_id(3)
    assert found.labels[image_id(3)] == ("OK", "prediction")


def test_review_changes_class_of_image(records: RecordStore) -> None:
    add_image(records, 1, "NOK", [1.0, 0.0])
    add_image(records, 2, "NOK", [0.9, 0.1])
    add_image(records, 3, "OK", [0.8, 0.3])
    pool = PoolIndex(records, 1)
    assert pool.neighbours(image_id(1)).found.near_hit.key == image_id(2)

    records.add_review(
        ReviewRecord(image_id=image_id(2), model_version=1, predicted_label="NOK", label="OK", defect_boxes=[])
    )
    found = pool.neighbours(image_id(1))

    assert found.found.near_hit is None
    assert found.found.near_miss.key == image_id(2)
    assert found.labels[image_id(2)] == ("OK", "review")


def test_latest_review_counts(records: RecordStore) -> None:
    add_image(records, 1, "NOK", [1.0, 0.0])
    for label in ("OK", "NOK"):
        records.add_review(
            ReviewRecord(image_id=image_id(1), model_version=1, predicted_label="NOK", label=label, defect_boxes=[])
        )

    latest = records.latest_reviews()

    assert list(latest) == [image_id(1)]
    assert latest[image_id(1)].label == "NOK"


def test_refresh_adds_new_images(records: RecordStore) -> None:
    add_image(records, 1, "NOK", [1.0, 0.0])
    add_image(records, 2, "OK", [0.0, 1.0])
    pool = PoolIndex(records, 1)
    pool.refresh()
    assert len(pool) == 2

    add_image(records, 3, "NOK", [0.95, 0.05])
    found = pool.neighbours(image_id(1))

    assert len(pool) == 3
    assert found.found.near_hit.key == image_id(3)


def test_unknown_image_is_rejected(records: RecordStore) -> None:
    add_image(records, 1, "NOK", [1.0, 0.0])

    with pytest.raises(LookupError, match="no embedding under model version 1"):
        PoolIndex(records, 1).neighbours(image_id(9))


def test_extended_index_equals_one_built_at_once() -> None:
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(50, 8)).astype(np.float32)
    classes = rng.integers(0, 2, 50)
    keys = [f"image-{index}" for index in range(50)]
    whole = SimilarityIndex(keys, embeddings, classes)
    grown = SimilarityIndex(keys[:20], embeddings[:20], classes[:20])

    grown.extend(keys[20:], embeddings[20:], classes[20:])

    for key in keys[::7]:
        assert grown.nearest_to_key(key, 1) == whole.nearest_to_key(key, 1)
    with pytest.raises(ValueError, match="unique"):
        grown.extend(keys[:1], embeddings[:1], classes[:1])


def test_review_boxes_exclude_right_and_bottom_edges() -> None:
    from nearcaipi.learning import defect_mask

    review = ReviewRecord(label="NOK", defect_boxes=[[1, 2, 4, 5], [0, 0, 8, 6]])
    whole = defect_mask(ReviewRecord(label="NOK", defect_boxes=[[0, 0, 8, 6]]), 6, 8)
    small = defect_mask(ReviewRecord(label="NOK", defect_boxes=[[1, 2, 4, 5]]), 6, 8)

    assert whole.all()
    assert small.sum() == 9
    assert small[2:5, 1:4].all()
    assert defect_mask(review, 6, 8).all()
    assert not defect_mask(ReviewRecord(label="OK", defect_boxes=[]), 6, 8).any()
