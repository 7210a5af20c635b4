"""Explainer worker: computes InvRISE maps for the images on the ``explain`` queue.

Start with ``celery -A services.explainer.worker worker -Q explain --pool solo``; add workers to go faster.
"""

from __future__ import annotations

import logging
from functools import cache

import torch
from celery import Task

from nearcaipi.config import ExplainerSettings
from nearcaipi.explanation import ExplanationParameters
from nearcaipi.logs import configure_logging
from nearcaipi.pipeline import ModelCache, run_explanation
from nearcaipi.queue import EXPLAIN_TASK, create_celery_app
from nearcaipi.storage.objects import ObjectStore, open_object_store
from nearcaipi.storage.records import ExplanationBusyError, RecordStore

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


@cache
def _parameters() -> ExplanationParameters:
    parameters = settings.explanation.parameters(settings.device)
    logger.info(
        "Explaining with %d masks in batches of %d, %s%s%s",
        parameters.masks,
        parameters.batch_size,
        parameters.precision,
        ", channels-last" if parameters.channels_last else "",
        f", adaptive (agreement {parameters.target_agreement})" if parameters.target_agreement else "",
    )
    return parameters


@app.task(name=EXPLAIN_TASK, bind=True, max_retries=None)
def explain_image_task(self: Task, image_id: str, model_version: int, method: str = "invrise") -> str:
    """Explain one image under the model version that classified it; returns the image id.

    When the queue is deep, the worker also takes up to ``NEARCAIPI_BATCH_IMAGES - 1`` other queued images of
    the same model version into the same forward batches.
    """
    records, objects, models = _adapters()
    try:
        run_explanation(
            image_id,
            model_version,
            method,  # type: ignore[arg-type]
            records,
            objects,
            models,
            _parameters(),
            batch_images=settings.batch_images,
            lease_seconds=settings.claim_lease_seconds,
        )
    except ExplanationBusyError as busy:
        # Another worker has it in a batch. Look again when its claim expires, in case that worker died.
        logger.info("Image %s: %s; checking again then", image_id, busy)
        raise self.retry(countdown=busy.retry_in + 1.0) from busy
    return image_id
