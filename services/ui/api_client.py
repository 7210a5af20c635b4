"""The console's calls to the inference API: every request and the errors a reviewer can be shown."""

from __future__ import annotations

from typing import Any

import httpx
import streamlit as st

NO_MODEL_DETAIL = "no model version is promoted"
# A closed port fails at once, but an unreachable host only after the connect timeout, which blocks the page.
REQUEST_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
IMAGE_CACHE_ENTRIES = 1000
WRONG_SERVER_HINT = "Check that NEARCAIPI_API_URL points at the NearCAIPI inference API."


class ApiResponseError(Exception):
    """An API response the console cannot use: an HTTP error status, or a body that is not the expected JSON."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message


@st.cache_resource
def api_client(api_url: str) -> httpx.Client:
    """Open one connection pool per API address, shared by all sessions of this console process."""
    return httpx.Client(base_url=api_url, timeout=REQUEST_TIMEOUT)


def fetch_inspections(client: httpx.Client, limit: int, camera_id: str | None) -> list[dict[str, Any]]:
    """Return the newest inspections, newest first. Raises httpx.TransportError or ApiResponseError."""
    params: dict[str, Any] = {"limit": limit}
    if camera_id:
        params["camera_id"] = camera_id
    return _fetch_list(client, "/v1/images", params, "inspections")


def fetch_review_queue(client: httpx.Client, strategy: str, limit: int) -> list[dict[str, Any]]:
    """Return unreviewed inspections in the order the selection strategy chooses them."""
    return _fetch_list(client, "/v1/review-queue", {"strategy": strategy, "limit": limit}, "inspections")


def fetch_current_model(client: httpx.Client) -> dict[str, Any] | None:
    """Return the promoted model version, or None while no version is promoted."""
    response = client.get("/v1/models/current")
    if response.status_code == 404 and _detail_of(response) == NO_MODEL_DETAIL:
        return None
    _raise_for_status(response)
    return _json_of(response)


def fetch_neighbours(client: httpx.Client, image_id: str) -> dict[str, Any]:
    """Return the near hit and near miss of an image under the served model version."""
    response = client.get(f"/v1/images/{image_id}/neighbours")
    return _json_object_of(response, "neighbours")


def post_review(client: httpx.Client, image_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Store a review of an image and return it as the API stored it."""
    response = client.post(f"/v1/images/{image_id}/reviews", json=body)
    return _json_object_of(response, "review")


def fetch_training_runs(client: httpx.Client, limit: int) -> list[dict[str, Any]]:
    """Return the newest training runs, newest first."""
    return _fetch_list(client, "/v1/training-runs", {"limit": limit}, "training runs")


def start_training_run(client: httpx.Client, strategy: str) -> dict[str, Any]:
    """Queue a training run that learns from all reviews so far, and return it."""
    response = client.post("/v1/training-runs", json={"strategy": strategy})
    return _json_object_of(response, "training run")


def promote_model_version(client: httpx.Client, version: int) -> dict[str, Any]:
    """Make the API serve ``version`` from now on, and return that model version."""
    response = client.post(f"/v1/models/{version}/promote")
    return _json_object_of(response, "model version")


# Image bytes behind one path stay the same: an original never changes, and an overlay's object key depends
# only on image, model version and method. The explanation's model version is part of the cache key so that
# an overlay recomputed under a newer model version is fetched again.
@st.cache_data(max_entries=IMAGE_CACHE_ENTRIES, show_spinner=False)
def fetch_image(api_url: str, path: str, model_version: int | None = None) -> bytes:
    """Download an image from the API. Errors raise, and Streamlit caches no exceptions, so a failure is retried."""
    response = api_client(api_url).get(path)
    _raise_for_status(response)
    return response.content


def _fetch_list(client: httpx.Client, path: str, params: dict[str, Any], items: str) -> list[dict[str, Any]]:
    response = client.get(path, params=params)
    _raise_for_status(response)
    body = _json_of(response)
    if not isinstance(body, list):
        message = f"expected a JSON list of {items}, got {response.text[:200]!r}. {WRONG_SERVER_HINT}"
        raise ApiResponseError(response.status_code, message)
    return body


def _json_object_of(response: httpx.Response, item: str) -> dict[str, Any]:
    _raise_for_status(response)
    body = _json_of(response)
    if not isinstance(body, dict):
        message = f"expected a JSON object ({item}), got {response.text[:200]!r}. {WRONG_SERVER_HINT}"
        raise ApiResponseError(response.status_code, message)
    return body


def _raise_for_status(response: httpx.Response) -> None:
    if response.is_error:
        raise ApiResponseError(response.status_code, _message_of(response))


def _json_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as error:
        message = f"the body is not JSON: {response.text[:200]!r}. {WRONG_SERVER_HINT}"
        raise ApiResponseError(response.status_code, message) from error


def _detail_of(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail")
    except (ValueError, AttributeError):
        return None


def _message_of(response: httpx.Response) -> str:
    """Extract the API's error text: ``message`` of its own errors, else FastAPI's ``detail``, else the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)
    return str(body)


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__
