"""Records on SQLite: timestamps stay UTC, and columns added later reach older databases."""

from __future__ import annotations

import sqlite3
from datetime import UTC
from pathlib import Path

from nearcaipi.storage.records import ImageRecord, ModelVersionRecord, PredictionRecord, RecordStore


def test_old_database_gets_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE predictions (id INTEGER PRIMARY KEY, image_id VARCHAR(32), model_version INTEGER, "
            "label VARCHAR(8), p_nok FLOAT, latency_ms FLOAT, created_at DATETIME)"
        )

    RecordStore(f"sqlite:///{path}").create_schema()

    with sqlite3.connect(path) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(predictions)")}
    assert "embedding" in columns


def test_timestamps_come_back_in_utc(tmp_path: Path) -> None:
    records = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    records.create_schema()
    version = records.register_model_version(
        ModelVersionRecord(backbone="resnet18", input_size=32, checkpoint_key="checkpoints/a.pt", data_fingerprint=""),
        promote=True,
    )
    image = ImageRecord(
        id="a" * 32, object_key="images/a.jpg", format="JPEG", width=4, height=3, size_bytes=10, sha256="0" * 64
    )
    prediction = PredictionRecord(image_id="a" * 32, model_version=version, label="OK", p_nok=0.1, latency_ms=5.0)
    records.add_inspection(image, prediction, "invrise")

    stored = records.get_image("a" * 32)

    assert stored.received_at.tzinfo == UTC
    assert stored.explanations[0].status == "queued"
    assert records.promoted_model_version().promoted_at.tzinfo == UTC
