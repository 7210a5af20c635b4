"""Reviews, near hits and misses, the review queue, and a training run that learns from the reviews."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from nearcaipi.data import NOK, OK, discover_samples
from nearcaipi.models import Classifier
from nearcaipi.storage.records import RecordStore
from tests.e2e.conftest import EXPLANATION_ENVIRONMENT, RunningStack, start_stack

TRAINING_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def tile_paths(magnetic_tiles: Path) -> list[Path]:
    """Four defective and four defect-free tiles."""
    samples = discover_samples(magnetic_tiles)
    nok = [sample.path for sample in samples if sample.label == NOK][:4]
    ok = [sample.path for sample in samples if sample.label == OK][:4]
    return nok + ok


def post_images(stack: RunningStack, paths: list[Path]) -> list[dict]:
    inspections = []
    for path in paths:
        response = httpx.post(
            f"{stack.api_url}/v1/images",
            files={"file": (path.name, path.read_bytes(), "image/jpeg")},
            data={"camera_id": "line-1", "part_id": path.stem},
            timeout=60,
        )
        assert response.status_code == 201, response.text
        inspections.append(response.json())
    return inspections


def post_review(stack: RunningStack, image_id: str, body: dict) -> httpx.Response:
    return httpx.post(f"{stack.api_url}/v1/images/{image_id}/reviews", json=body, timeout=30)


def brute_force_neighbours(records: RecordStore, version: int, image_id: str) -> tuple[str | None, str | None]:
    """Near hit and miss computed directly from the stored embeddings, reviews and predictions."""
    predictions = {row.image_id: row for row in records.embedded_predictions(version)}
    reviews = records.latest_reviews()
    label = {key: reviews[key].label if key in reviews else row.label for key, row in predictions.items()}
    query = np.frombuffer(predictions[image_id].embedding, dtype=np.float32)

    best: dict[bool, tuple[float, str | None]] = {True: (-np.inf, None), False: (-np.inf, None)}
    for key, row in predictions.items():
        if key == image_id:
            continue
        embedding = np.frombuffer(row.embedding, dtype=np.float32)
        similarity = float(embedding @ query / (np.linalg.norm(embedding) * np.linalg.norm(query)))
        same = label[key] == label[image_id]
        if similarity > best[same][0]:
            best[same] = (similarity, key)
    return best[True][1], best[False][1]


def test_box_touching_image_edges_is_accepted(production_stack: RunningStack, tile_paths: list[Path]) -> None:
    inspection = post_images(production_stack, tile_paths[:1])[0]
    whole_image = [0, 0, inspection["width"], inspection["height"]]

    response = post_review(production_stack, inspection["image_id"], {"label": "NOK", "defect_boxes": [whole_image]})

    assert response.status_code == 201, response.text
    assert response.json()["defect_boxes"] == [whole_image]


def test_review_is_stored_and_shown(production_stack: RunningStack, tile_paths: list[Path]) -> None:
    inspection = post_images(production_stack, tile_paths[:1])[0]
    box = [10, 5, 40, 30]

    response = post_review(
        production_stack,
        inspection["image_id"],
        {"label": "NOK", "explanation": "wrong", "defect_boxes": [box], "reviewer": "anna.k", "comment": "crack"},
    )

    assert response.status_code == 201, response.text
    review = response.json()
    assert review["label"] == "NOK"
    assert review["predicted_label"] == inspection["label"]
    assert review["explanation_verdict"] == "wrong"
    assert review["defect_boxes"] == [box]
    assert review["model_version"] == production_stack.model_version
    shown = httpx.get(f"{production_stack.api_url}/v1/images/{inspection['image_id']}").json()
    assert shown["review"]["id"] == review["id"]
    history = httpx.get(f"{production_stack.api_url}/v1/images/{inspection['image_id']}/reviews").json()
    assert [item["id"] for item in history] == [review["id"]]


@pytest.mark.parametrize(
    ("body", "detail", "message_part"),
    [
        ({"label": "MAYBE"}, "invalid request", "label"),
        ({"label": "NOK", "defect_boxes": [[0, 0, 5000, 10]]}, "invalid defect box", "[0, 0, 5000, 10]"),
        ({"label": "NOK", "defect_boxes": [[20, 10, 20, 30]]}, "invalid defect box", "0 <= left < right"),
        ({"label": "OK", "defect_boxes": [[1, 1, 5, 5]]}, "invalid defect box", "only allowed with the label NOK"),
        ({"label": "OK", "explanation": "fine"}, "invalid request", "explanation"),
        ({"label": "OK", "reviewer": "anna; drop"}, "invalid request", "reviewer"),
    ],
)
def test_bad_review_is_rejected(
    production_stack: RunningStack, tile_paths: list[Path], body: dict, detail: str, message_part: str
) -> None:
    inspection = post_images(production_stack, tile_paths[:1])[0]

    response = post_review(production_stack, inspection["image_id"], body)

    assert response.status_code == 422
    assert response.json()["detail"] == detail
    assert message_part in response.json()["message"]
    assert httpx.get(f"{production_stack.api_url}/v1/images/{inspection['image_id']}").json()["review"] is None


def test_review_of_unknown_image_is_not_found(production_stack: RunningStack) -> None:
    response = post_review(production_stack, "f" * 32, {"label": "OK"})

    assert response.status_code == 404
    assert response.json()["detail"] == "image not found"


def test_neighbours_match_brute_force(production_stack: RunningStack, tile_paths: list[Path]) -> None:
    inspections = post_images(production_stack, tile_paths)
    reviewed = inspections[0]["image_id"]
    assert post_review(production_stack, reviewed, {"label": "OK"}).status_code == 201
    # The API embeds images of earlier tests under the served version in the background (those whose bytes lie
    # in another test module's bucket stay out). Wait until the codebook stops growing.
    version = production_stack.model_version
    deadline = time.monotonic() + 120
    previous, current = -1, len(production_stack.records.embedded_predictions(version))
    while current != previous:
        if time.monotonic() > deadline:
            pytest.fail(f"the pool kept growing under the served version\n{production_stack.logs()}")
        time.sleep(2)
        previous, current = current, len(production_stack.records.embedded_predictions(version))

    for inspection in inspections[:3]:
        response = httpx.get(f"{production_stack.api_url}/v1/images/{inspection['image_id']}/neighbours", timeout=30)
        assert response.status_code == 200, response.text
        found = response.json()
        expected_hit, expected_miss = brute_force_neighbours(
            production_stack.records, production_stack.model_version, inspection["image_id"]
        )

        assert found["model_version"] == production_stack.model_version
        assert found["pool_size"] >= len(tile_paths)
        assert (found["near_hit"] or {}).get("image_id") == expected_hit
        assert (found["near_miss"] or {}).get("image_id") == expected_miss
        if found["near_hit"]:
            assert found["near_hit"]["label"] == found["label"]
        if found["near_miss"]:
            assert found["near_miss"]["label"] != found["label"]

    reviewed_found = httpx.get(f"{production_stack.api_url}/v1/images/{reviewed}/neighbours").json()
    assert reviewed_found["label"] == "OK"
    assert reviewed_found["label_source"] == "review"


def test_review_queue_least_confident_first(production_stack: RunningStack, tile_paths: list[Path]) -> None:
    inspections = post_images(production_stack, tile_paths)
    reviewed = inspections[1]["image_id"]
    assert post_review(production_stack, reviewed, {"label": "NOK"}).status_code == 201

    response = httpx.get(f"{production_stack.api_url}/v1/review-queue", params={"strategy": "al", "limit": 200})

    assert response.status_code == 200, response.text
    queue = response.json()
    assert queue
    assert reviewed not in {item["image_id"] for item in queue}
    assert all(item["review"] is None for item in queue)
    confidence = [max(item["p_nok"], 1 - item["p_nok"]) for item in queue]
    assert confidence == sorted(confidence)


def test_review_queue_rejects_unknown_strategy(production_stack: RunningStack) -> None:
    response = httpx.get(f"{production_stack.api_url}/v1/review-queue", params={"strategy": "best"})

    assert response.status_code == 422
    assert "strategy" in response.json()["message"]


@pytest.fixture
def learning_stack(tiny_classifier: Classifier, plain_dataset: Path, tmp_path: Path) -> Iterator[RunningStack]:
    environment = {
        "NEARCAIPI_MODE": "embedded",
        "NEARCAIPI_HOME": str(tmp_path / "home"),
        "NEARCAIPI_DATA_DIR": str(plain_dataset),
        "NEARCAIPI_RETRAIN_EPOCHS": "1",
        "NEARCAIPI_MODEL_REFRESH_SECONDS": "0",
        **EXPLANATION_ENVIRONMENT,
    }
    stack = start_stack(environment, tiny_classifier, tmp_path, workers=("trainer",))
    yield stack
    for service in stack.services:
        service.stop()


def wait_for_training_run(stack: RunningStack, run_id: int) -> dict:
    deadline = time.monotonic() + TRAINING_TIMEOUT
    while time.monotonic() < deadline:
        run = httpx.get(f"{stack.api_url}/v1/training-runs/{run_id}", timeout=10).json()
        if run["status"] in ("done", "failed"):
            return run
        time.sleep(1)
    pytest.fail(f"training run {run_id} did not finish within {TRAINING_TIMEOUT} s\n{stack.logs()}")


def test_training_run_learns_from_reviews(learning_stack: RunningStack, tile_paths: list[Path]) -> None:
    stack = learning_stack
    api = stack.api_url
    conflict = httpx.post(f"{api}/v1/training-runs", json={"strategy": "near_caipi"})
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == "no reviews yet"

    inspections = post_images(stack, tile_paths)
    # The corrected image shares its prediction with at least three unreviewed images, so its near miss (the
    # most similar image of the predicted class) is one that no reviewer has seen yet. The confirmed image, if
    # any, has the other prediction.
    by_label: dict[str, list[dict]] = {}
    for inspection in inspections:
        by_label.setdefault(inspection["label"], []).append(inspection)
    majority = max(by_label.values(), key=len)
    corrected = majority[0]
    confirmed = next((item for item in inspections if item["label"] != corrected["label"]), None)
    corrected_label = "NOK" if corrected["label"] == "OK" else "OK"
    corrected_body = {"label": corrected_label, "explanation": "wrong"}
    if corrected_label == "NOK":
        corrected_body["defect_boxes"] = [[20, 20, 60, 60]]
    assert post_review(stack, corrected["image_id"], corrected_body).status_code == 201
    reviewed_ids = {corrected["image_id"]}
    if confirmed is not None:
        confirmed_body = {"label": confirmed["label"], "explanation": "right"}
        assert post_review(stack, confirmed["image_id"], confirmed_body).status_code == 201
        reviewed_ids.add(confirmed["image_id"])

    queued = httpx.post(f"{api}/v1/training-runs", json={"strategy": "near_caipi"})
    assert queued.status_code == 202, queued.text
    run = wait_for_training_run(stack, queued.json()["id"])

    assert run["status"] == "done", run["error"]
    assert run["strategy"] == "near_caipi"
    summary = run["summary"]
    assert summary["reviewed_images"] == len(reviewed_ids)
    assert summary["near_hits_and_misses"] >= 1
    # near_caipi refutes the reviewed images and their neighbours: zoom out and an augmented copy each, plus a
    # zoom-in and a background refutation for a NOK image with a marked region.
    marked = 1 if corrected_label == "NOK" else 0
    assert summary["refutations"] == 2 * (len(reviewed_ids) + summary["near_hits_and_misses"]) + 2 * marked

    lineage = httpx.get(f"{api}/v1/training-runs/{run['id']}/refutations").json()
    assert len(lineage) == summary["refutations"]
    from_corrected = [item for item in lineage if item["source_image_id"] == corrected["image_id"]]
    expected_generators = {"zoom_out", "augment"} | ({"zoom_in", "background"} if marked else set())
    assert {item["generator"] for item in from_corrected} == expected_generators
    assert {item["label"] for item in from_corrected} == {corrected_label}
    assert all(item["review_id"] is not None for item in from_corrected)
    neighbour_items = [item for item in lineage if item["source_image_id"] not in reviewed_ids]
    assert neighbour_items
    assert all(item["review_id"] is None for item in neighbour_items)
    stored = Path(stack.environment["NEARCAIPI_HOME"]) / "objects" / lineage[0]["object_key"]
    with Image.open(stored) as refutation_image:
        assert refutation_image.format == "PNG"

    new_version = run["model_version"]
    assert new_version == stack.model_version + 1
    assert run["model_status"] == "promoted"
    model = httpx.get(f"{api}/v1/models/current").json()
    assert model["version"] == new_version
    for inspection in inspections:
        assert stack.records.get_prediction(inspection["image_id"], new_version) is not None
    neighbours = httpx.get(f"{api}/v1/images/{corrected['image_id']}/neighbours").json()
    assert neighbours["model_version"] == new_version
    assert neighbours["label"] == corrected_label
    assert stack.records.latest_reviews()[corrected["image_id"]].training_run_id == run["id"]

    # An image posted under the new version has no prediction under the old one until the rollback embeds it.
    late = post_images(stack, tile_paths[:1])[0]
    assert late["model_version"] == new_version
    rolled_back = httpx.post(f"{api}/v1/models/{stack.model_version}/promote")
    assert rolled_back.status_code == 200
    assert httpx.get(f"{api}/healthz").json()["model_version"] == stack.model_version
    deadline = time.monotonic() + 60
    while stack.records.get_prediction(late["image_id"], stack.model_version) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the rollback did not embed the pool under the old version\n{stack.logs()}")
        time.sleep(0.5)
    assert httpx.post(f"{api}/v1/models/999/promote").status_code == 404


def test_training_run_queued_after_enough_reviews(
    tiny_classifier: Classifier, tile_paths: list[Path], tmp_path: Path
) -> None:
    environment = {
        "NEARCAIPI_MODE": "embedded",
        "NEARCAIPI_HOME": str(tmp_path / "home"),
        "NEARCAIPI_RETRAIN_AFTER_REVIEWS": "2",
        "NEARCAIPI_RETRAIN_STRATEGY": "caipi",
        **EXPLANATION_ENVIRONMENT,
    }
    stack = start_stack(environment, tiny_classifier, tmp_path, workers=())
    try:
        inspections = post_images(stack, tile_paths[:3])

        assert post_review(stack, inspections[0]["image_id"], {"label": "OK"}).status_code == 201
        assert httpx.get(f"{stack.api_url}/v1/training-runs").json() == []

        assert post_review(stack, inspections[1]["image_id"], {"label": "NOK"}).status_code == 201
        runs = httpx.get(f"{stack.api_url}/v1/training-runs").json()
        assert len(runs) == 1
        assert runs[0]["strategy"] == "caipi"
        assert runs[0]["status"] == "queued"

        # A run is still queued (no trainer runs here), so a further review queues no second one.
        assert post_review(stack, inspections[2]["image_id"], {"label": "OK"}).status_code == 201
        assert len(httpx.get(f"{stack.api_url}/v1/training-runs").json()) == 1
    finally:
        for service in stack.services:
            service.stop()
