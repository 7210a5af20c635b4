"""Trainer worker: trains, evaluates and publishes model versions for the runs on the ``train`` queue.

Start with ``celery -A services.trainer.worker worker -Q train --pool solo``.
"""

from __future__ import annotations

import logging
from functools import cache

import torch

from nearcaipi.config import TrainerSettings
from nearcaipi.data import resolve_data_dir
from nearcaipi.logs import configure_logging
from nearcaipi.queue import TRAIN_TASK, create_celery_app
from nearcaipi.storage.objects import ObjectStore, open_object_store
from nearcaipi.storage.records import RecordStore
from nearcaipi.workflows import run_training

logger = logging.getLogger(__name__)

settings = TrainerSettings()
configure_logging(settings.log_level)
if settings.torch_threads:
    torch.set_num_threads(settings.torch_threads)
app = create_celery_app(settings, "nearcaipi-trainer")


@cache
def _adapters() -> tuple[RecordStore, ObjectStore]:
    records = RecordStore(settings.database_url)
    records.create_schema()
    return records, open_object_store(settings)


@app.task(name=TRAIN_TASK)
def train_model_task(training_run_id: int) -> int | None:
    """Carry out one recorded training run; returns the model version it produced."""
    records, objects = _adapters()
    return run_training(
        training_run_id,
        records,
        objects,
        progress=False,
        retrain_epochs=settings.retrain_epochs,
        max_image_pixels=settings.max_image_pixels,
        backgrounds_dir=settings.backgrounds_dir,
        default_data_dir=lambda: resolve_data_dir(settings.data_dir, settings.home / "datasets"),
    )
