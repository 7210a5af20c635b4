"""Celery wiring shared by the API (producer) and the workers: broker from the settings, queues by task.

Redis by URL in production; Celery's filesystem transport in the embedded mode, where producer and workers
exchange message files in one folder.
"""

from __future__ import annotations

from celery import Celery

from nearcaipi.config import StackSettings

EXPLAIN_QUEUE = "explain"
TRAIN_QUEUE = "train"
EXPLAIN_TASK = "nearcaipi.explain_image"
TRAIN_TASK = "nearcaipi.train_model"


def create_celery_app(settings: StackSettings, name: str) -> Celery:
    """Build a Celery app for the configured broker, with tasks routed to the explain and train queues."""
    app = Celery(name, broker=settings.broker_url)
    app.conf.update(
        task_routes={EXPLAIN_TASK: {"queue": EXPLAIN_QUEUE}, TRAIN_TASK: {"queue": TRAIN_QUEUE}},
        task_default_queue=EXPLAIN_QUEUE,
        # Results live in the records and the object store, not in a result backend.
        task_ignore_result=True,
        # A worker that dies mid-task leaves its message unacknowledged, so the broker hands it out again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    if (settings.broker_url or "").startswith("filesystem://"):
        folder = settings.queue_folder
        for sub in ("messages", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "processed_folder": str(folder / "processed"),
            # Without it, kombu writes its exchange tables to ./control of whatever the current folder is.
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    elif (settings.broker_url or "").startswith("redis"):
        # Hours, not the default hour: an explanation queue behind a slow CPU worker can be long.
        app.conf.broker_transport_options = {"visibility_timeout": 6 * 3600}
    return app
