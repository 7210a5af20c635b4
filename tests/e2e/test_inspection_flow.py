"""A camera posts real magnetic-tile images; verdicts come back at once and explanations follow from a worker.

The same flow runs against the production adapters (PostgreSQL, Redis, an S3 server) and the embedded ones
(SQLite, a local folder, Celery's filesystem transport).
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import RunningStack

EXPLANATION_TIMEOUT = 180.0


@pytest.fixture(params=["production_stack", "embedded_stack"])
def stack(request: pytest.FixtureRequest) -> RunningStack:
    return request.getfixturevalue(request.param)


def post_image(stack: RunningStack, path: Path, camera_id: str = "line-4-cam-2") -> httpx.Response:
    return httpx.post(
        f"{stack.api_url}/v1/images",
        files={"file": (path.name, path.read_bytes(), "image/jpeg")},
        data={"camera_id": camera_id, "part_id": path.stem},
        timeout=60,
    )


def wait_for_explanation(stack: RunningStack, image_id: str) -> dict:
    deadline = time.monotonic() + EXPLANATION_TIMEOUT
    while time.monotonic() < deadline:
        inspection = httpx.get(f"{stack.api_url}/v1/images/{image_id}", timeout=10).json()
        if inspection["explanation"]["status"] in ("done", "failed"):
            return inspection
        time.sleep(0.5)
    pytest.fail(f"no explanation for image {image_id} within {EXPLANATION_TIMEOUT} s\n{stack.logs()}")


def test_verdict_then_explanation_with_image_shape(stack: RunningStack, sample_images: list[Path]) -> None:
    verdicts = []
    for path in sample_images:
        response = post_image(stack, path)
        assert response.status_code == 201, response.text
        verdicts.append((path, response.json()))

    for path, verdict in verdicts:
        assert re.fullmatch(r"[0-9a-f]{32}", verdict["image_id"])
        assert verdict["label"] in ("OK", "NOK")
        assert 0.0 <= verdict["p_nok"] <= 1.0
        assert verdict["label"] == ("NOK" if verdict["p_nok"] >= 0.5 else "OK")
        assert verdict["model_version"] == stack.model_version
        assert verdict["camera_id"] == "line-4-cam-2"
        assert verdict["part_id"] == path.stem
        assert verdict["explanation"]["status"] in ("queued", "running", "done")
        assert verdict["explanation"]["method"] == "invrise"

    for path, verdict in verdicts:
        with Image.open(path) as image:
            width, height = image.size
        assert (verdict["width"], verdict["height"]) == (width, height)

        inspection = wait_for_explanation(stack, verdict["image_id"])
        assert inspection["explanation"]["status"] == "done", inspection["explanation"]
        assert inspection["label"] == verdict["label"]
        assert inspection["p_nok"] == pytest.approx(verdict["p_nok"])

        saliency_response = httpx.get(inspection["explanation"]["map_url"], timeout=10)
        assert saliency_response.status_code == 200
        saliency = np.load(io.BytesIO(saliency_response.content), allow_pickle=False)
        assert saliency.shape == (height, width)
        assert saliency.dtype == np.float32
        assert np.isfinite(saliency).all()

        overlay_response = httpx.get(inspection["explanation"]["overlay_url"], timeout=10)
        assert overlay_response.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(overlay_response.content)) as overlay:
            assert overlay.size == (width, height)

        original = httpx.get(inspection["image_url"], timeout=10)
        assert original.content == path.read_bytes()

        prediction = stack.records.get_image(verdict["image_id"]).predictions[-1]
        embedding = np.frombuffer(prediction.embedding, dtype=np.float32)
        assert embedding.shape == (512,)
        assert np.isfinite(embedding).all()


def test_listing_returns_newest_first(stack: RunningStack, sample_images: list[Path]) -> None:
    first = post_image(stack, sample_images[0], camera_id="listing-cam").json()
    second = post_image(stack, sample_images[1], camera_id="listing-cam").json()

    listed = httpx.get(f"{stack.api_url}/v1/images", params={"camera_id": "listing-cam"}, timeout=10).json()

    assert [item["image_id"] for item in listed] == [second["image_id"], first["image_id"]]


def test_saliency_of_unknown_image_is_not_found(stack: RunningStack) -> None:
    response = httpx.get(f"{stack.api_url}/v1/images/{'0' * 32}/saliency.png", timeout=10)
    assert response.status_code == 404
    assert response.json()["detail"] == "image not found"


@pytest.mark.parametrize(
    ("name", "make_content", "status", "detail"),
    [
        ("notes.txt", lambda jpeg: b"shift report, not an image", 415, "unsupported image format"),
        ("empty.jpg", lambda jpeg: b"", 400, "empty file"),
        ("cut.jpg", lambda jpeg: jpeg[: len(jpeg) // 3], 422, "corrupt image"),
    ],
)
def test_bad_upload_gets_clear_4xx(
    stack: RunningStack, sample_images: list[Path], name: str, make_content, status: int, detail: str
) -> None:
    content = make_content(sample_images[0].read_bytes())

    response = httpx.post(f"{stack.api_url}/v1/images", files={"file": (name, content)}, timeout=30)

    assert response.status_code == status
    assert response.json()["detail"] == detail
    assert name in response.json()["message"]


def test_invalid_camera_id_is_rejected(stack: RunningStack, sample_images: list[Path]) -> None:
    response = post_image(stack, sample_images[0], camera_id="camera with spaces/../")

    assert response.status_code == 422
    assert response.json()["detail"] == "invalid request"
    assert response.json()["message"].startswith("camera_id: String should match pattern")


def test_upload_without_file_is_rejected(stack: RunningStack) -> None:
    response = httpx.post(f"{stack.api_url}/v1/images", data={"camera_id": "cam-1"}, timeout=10)

    assert response.status_code == 422
    assert response.json() == {"detail": "invalid request", "message": "file: Field required"}


def test_openapi_lists_the_image_routes(stack: RunningStack) -> None:
    spec = httpx.get(f"{stack.api_url}/openapi.json", timeout=10).json()
    assert "/v1/images" in spec["paths"]
    assert "/v1/images/{image_id}/saliency.png" in spec["paths"]
    assert "/healthz" in spec["paths"]
