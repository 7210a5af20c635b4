"""Lost queue messages are recovered from the records, and a retrained model is served without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nearcaipi.config import StackSettings
from nearcaipi.models import Classifier
from nearcaipi.queue import TRAIN_TASK, create_celery_app
from nearcaipi.storage.records import EXPLANATION_DONE, EXPLANATION_QUEUED, TrainingRunRecord
from tests.e2e.conftest import (
    EXPLANATION_ENVIRONMENT,
    RunningStack,
    ServiceProcess,
    api_command,
    start_stack,
    worker_command,
)


@pytest.fixture
def embedded_environment(tmp_path: Path) -> dict[str, str]:
    return {"NEARCAIPI_MODE": "embedded", "NEARCAIPI_HOME": str(tmp_path / "home"), **EXPLANATION_ENVIRONMENT}


@pytest.fixture
def api_only_stack(
    embedded_environment: dict[str, str], tiny_classifier: Classifier, tmp_path: Path
) -> Iterator[RunningStack]:
    stack = start_stack(embedded_environment, tiny_classifier, tmp_path, workers=())
    yield stack
    for service in stack.services:
        service.stop()


def explanation_status(stack: RunningStack, image_id: str) -> str:
    return stack.records.get_image(image_id).explanations[-1].status


def test_lost_message_is_queued_again_at_api_start(
    api_only_stack: RunningStack, sample_images: list[Path], tmp_path: Path
) -> None:
    stack = api_only_stack
    response = httpx.post(
        f"{stack.api_url}/v1/images", files={"file": sample_images[0].open("rb")}, data={"camera_id": "cam-9"}
    )
    assert response.status_code == 201
    image_id = response.json()["image_id"]

    # Stop the API and drop every queued message, as a broker that lost its data would.
    stack.services[0].stop()
    messages = Path(stack.environment["NEARCAIPI_HOME"]) / "queue" / "messages"
    lost = list(messages.iterdir())
    assert len(lost) == 1
    for message in lost:
        message.unlink()

    worker = ServiceProcess.start(
        "explainer", worker_command("services.explainer.worker", "explain"), stack.environment, tmp_path
    )
    stack.services.append(worker)
    time.sleep(3)
    assert explanation_status(stack, image_id) == EXPLANATION_QUEUED

    port = int(stack.api_url.rsplit(":", 1)[1])
    stack.services[0] = ServiceProcess.start("api", api_command(port), stack.environment, tmp_path)
    stack.wait_until_healthy()

    deadline = time.monotonic() + 120
    while explanation_status(stack, image_id) != EXPLANATION_DONE:
        if time.monotonic() > deadline:
            pytest.fail(f"the explanation of {image_id} was not recovered\n{stack.logs()}")
        time.sleep(0.5)
    assert httpx.get(f"{stack.api_url}/v1/images/{image_id}/saliency.npy").status_code == 200
    assert httpx.get(f"{stack.api_url}/v1/images/{image_id}").json()["label"] == response.json()["label"]


def test_trainer_worker_publishes_and_api_serves_new_version(
    embedded_environment: dict[str, str], tiny_classifier: Classifier, plain_dataset: Path, tmp_path: Path
) -> None:
    environment = {**embedded_environment, "NEARCAIPI_MODEL_REFRESH_SECONDS": "0"}
    stack = start_stack(environment, tiny_classifier, tmp_path, workers=("trainer",))
    try:
        first_version = httpx.get(f"{stack.api_url}/healthz").json()["model_version"]
        assert first_version == stack.model_version

        run_id = stack.records.add_training_run(
            TrainingRunRecord(backbone="resnet18", profile="quick", data_dir=str(plain_dataset), seed=0)
        )
        settings = StackSettings(mode="embedded", home=environment["NEARCAIPI_HOME"])
        create_celery_app(settings, "test-client").send_task(TRAIN_TASK, args=[run_id])

        deadline = time.monotonic() + 300
        while stack.records.get_training_run(run_id).status not in ("done", "failed"):
            if time.monotonic() > deadline:
                pytest.fail(f"training run {run_id} did not finish\n{stack.logs()}")
            time.sleep(1)

        run = stack.records.get_training_run(run_id)
        assert run.status == "done", run.error
        assert run.model_version == first_version + 1
        promoted = stack.records.promoted_model_version()
        assert promoted.version == run.model_version
        assert promoted.input_size == 128
        assert httpx.get(f"{stack.api_url}/healthz").json()["model_version"] == run.model_version
        assert httpx.get(f"{stack.api_url}/v1/models/current").json()["version"] == run.model_version
    finally:
        for service in stack.services:
            service.stop()


def test_deep_queue_is_explained_in_batches(
    api_only_stack: RunningStack, sample_images: list[Path], tmp_path: Path
) -> None:
    stack = api_only_stack
    image_ids = []
    for index in range(6):
        path = sample_images[index % len(sample_images)]
        response = httpx.post(f"{stack.api_url}/v1/images", files={"file": path.open("rb")})
        assert response.status_code == 201
        image_ids.append(response.json()["image_id"])

    environment = {**stack.environment, "NEARCAIPI_BATCH_IMAGES": "4"}
    worker = ServiceProcess.start(
        "explainer", worker_command("services.explainer.worker", "explain"), environment, tmp_path
    )
    stack.services.append(worker)

    deadline = time.monotonic() + 180
    while any(explanation_status(stack, image_id) != EXPLANATION_DONE for image_id in image_ids):
        if time.monotonic() > deadline:
            pytest.fail(f"the queued explanations were not all done\n{stack.logs()}")
        time.sleep(0.5)

    log = worker.log_path.read_text(errors="replace")
    # Six queued images with batches of at most four: one batch of four, then the last two together.
    assert "Explained 4 images of model version" in log
    assert "Explained 2 images of model version" in log
    assert log.count("is already done") == 4
    for image_id in image_ids:
        overlay = httpx.get(f"{stack.api_url}/v1/images/{image_id}/saliency.png")
        assert overlay.status_code == 200
