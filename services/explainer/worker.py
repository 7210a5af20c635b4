"""Explainer worker: computes InvRISE maps for the images on the ``explain`` queue.

Start with ``celery -A services.explainer.worker worker -Q explain --pool solo``; add workers to go faster.
"""

from __future__ import annotations

import logging
from functools import cache

import torch

from nearcaipi.config import ExplainerSettings
from nearcaipi.explanation import ExplanationParameters
from nearcaipi.logs import configure_logging
from nearcaipi.pipeline import ModelCache, run_explanation
from nearcaipi.queue import EXPLAIN_TASK, create_celery_app
from nearcaipi.storage.objects import ObjectStore, open_object_store
from nearcaipi.storage.records import RecordStore

logger = logging.getLogger(__name__)

settings = ExplainerSettings()
configure_logging(settings.log_level)
if settings.torch_threads:
    torch.set_num_threads(settings.torch_threads)
app = create_celery_app(settings, "nearcaipi-explainer")


@cache
def _adapters() -> tuple[RecordStore, ObjectStore, ModelCache]:
    records = RecordStore(settings.database_url)
    records.create_schema()
    objects = open_object_store(settings)
    return records, objects, ModelCache(records, objects, device=settings.device)


@app.task(name=EXPLAIN_TASK)
def explain_image_task(image_id: str, model_version: int, method: str = "invrise") -> str:
    """Explain one image under the model version that classified it; returns the image id."""
    records, objects, models = _adapters()
    parameters = ExplanationParameters(**settings.explanation.model_dump())
    run_explanation(image_id, model_version, method, records, objects, models, parameters)  # type: ignore[arg-type]
    return image_id
