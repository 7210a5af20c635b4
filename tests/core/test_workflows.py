"""Training runs end to end on a tiny data set: SQLite records and a local object store, no services."""

from __future__ import annotations

from pathlib import Path

import pytest

from nearcaipi.pipeline import ModelCache, ServedModel
from nearcaipi.storage.objects import LocalObjectStore
from nearcaipi.storage.records import MODEL_PROMOTED, RecordStore, TrainingRunRecord
from nearcaipi.workflows import run_training


@pytest.fixture
def records(tmp_path: Path) -> RecordStore:
    store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    store.create_schema()
    return store


def test_training_run_publishes_and_promotes(records: RecordStore, tmp_path: Path, plain_dataset: Path) -> None:
    objects = LocalObjectStore(tmp_path / "objects")
    run_id = records.add_training_run(
        TrainingRunRecord(backbone="resnet18", profile="quick", data_dir=str(plain_dataset), seed=0)
    )

    version = run_training(run_id, records, objects)

    run = records.get_training_run(run_id)
    assert run.status == "done"
    assert run.model_version == version
    promoted = records.promoted_model_version()
    assert promoted.version == version
    assert promoted.status == MODEL_PROMOTED
    assert set(promoted.test_metrics) >= {"accuracy", "f1", "mcc"}
    assert sum(len(paths) for paths in promoted.splits.values()) == 30
    assert objects.exists(promoted.checkpoint_key)

    served = ServedModel(ModelCache(records, objects), refresh_seconds=0)
    served_version, classifier = served.current()
    assert served_version == version
    assert classifier.input_size == 128
    assert run_training(run_id, records, objects) == version


def test_failed_training_run_is_recorded(records: RecordStore, tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path / "objects")
    run_id = records.add_training_run(
        TrainingRunRecord(backbone="resnet18", profile="quick", data_dir=str(tmp_path / "absent"), seed=0)
    )

    with pytest.raises(ValueError, match="does not exist"):
        run_training(run_id, records, objects)

    run = records.get_training_run(run_id)
    assert run.status == "failed"
    assert "does not exist" in run.error
    assert records.promoted_model_version() is None
