"""Reviewer console: the newest inspections with their verdicts and InvRISE saliency overlays.

Run from the project root with the root on PYTHONPATH: ``streamlit run services/ui/app.py``. The console reads
everything from the inference API over HTTP (``NEARCAIPI_API_URL``) and never opens the database or the object
store.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import streamlit as st
from pydantic import ValidationError

from nearcaipi.config import ConsoleSettings
from services.ui.i18n import DEFAULT_LANGUAGE, LANGUAGES, translate

logger = logging.getLogger(__name__)

Texts = Callable[..., str]

# The API's rule for camera IDs. The console checks it too, so that a typo gets a message in the reviewer's
# language instead of the API's 422 validation body.
CAMERA_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
MAX_INSPECTIONS = 500  # the API's largest page: GET /v1/images?limit= accepts 1 to 500
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


@dataclass(frozen=True)
class Choices:
    """The reviewer's choices in the sidebar."""

    language: str
    limit: int
    camera_id: str | None


@st.cache_resource
def api_client(api_url: str) -> httpx.Client:
    """Open one connection pool per API address, shared by all sessions of this console process."""
    return httpx.Client(base_url=api_url, timeout=REQUEST_TIMEOUT)


def fetch_inspections(client: httpx.Client, limit: int, camera_id: str | None) -> list[dict[str, Any]]:
    """Return the newest inspections, newest first. Raises httpx.TransportError or ApiResponseError."""
    params: dict[str, Any] = {"limit": limit}
    if camera_id:
        params["camera_id"] = camera_id
    response = client.get("/v1/images", params=params)
    _raise_for_status(response)
    inspections = _json_of(response)
    if not isinstance(inspections, list):
        message = f"expected a JSON list of inspections, got {response.text[:200]!r}. {WRONG_SERVER_HINT}"
        raise ApiResponseError(response.status_code, message)
    return inspections


def fetch_current_model(client: httpx.Client) -> dict[str, Any] | None:
    """Return the promoted model version, or None while no version is promoted."""
    response = client.get("/v1/models/current")
    if response.status_code == 404 and _detail_of(response) == NO_MODEL_DETAIL:
        return None
    _raise_for_status(response)
    return _json_of(response)


# Image bytes behind one path stay the same: an original never changes, and an overlay's object key depends
# only on image, model version and method. The explanation's model version is part of the cache key so that
# an overlay recomputed under a newer model version is fetched again.
@st.cache_data(max_entries=IMAGE_CACHE_ENTRIES, show_spinner=False)
def fetch_image(api_url: str, path: str, model_version: int | None = None) -> bytes:
    """Download an image from the API. Errors raise, and Streamlit caches no exceptions, so a failure is retried."""
    response = api_client(api_url).get(path)
    _raise_for_status(response)
    return response.content


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


def format_time(timestamp: str) -> str:
    """Format an ISO 8601 time in UTC. A time without an offset counts as UTC because SQLite drops the offset."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return str(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def sidebar_ui(settings: ConsoleSettings) -> Choices:
    """Draw the language switch and the filters, and return the reviewer's choices."""
    sidebar = st.sidebar
    language = sidebar.radio(
        translate(DEFAULT_LANGUAGE, "language"),
        options=list(LANGUAGES),
        format_func=LANGUAGES.__getitem__,
        horizontal=True,
        key="language",
    )
    t = partial(translate, language)

    limit = sidebar.number_input(
        t("inspection_count"),
        min_value=1,
        max_value=MAX_INSPECTIONS,
        value=min(settings.page_size, MAX_INSPECTIONS),
        step=10,
        help=t("inspection_count_help", maximum=MAX_INSPECTIONS),
        key="inspection_count",
    )
    camera = sidebar.text_input(t("camera"), placeholder=t("camera_placeholder"), help=t("camera_help"), key="camera")
    # A click only has to rerun the script: inspections are fetched anew on every run.
    sidebar.button(t("refresh"), key="refresh", icon=":material/refresh:")
    return Choices(language=language, limit=int(limit), camera_id=camera.strip() or None)


def model_version_ui(client: httpx.Client, t: Texts) -> None:
    """Show the model version the API serves, in the sidebar."""
    try:
        model = fetch_current_model(client)
    except (httpx.HTTPError, ApiResponseError) as error:
        logger.warning("Reading the served model version from %s failed: %s", client.base_url, error)
        st.sidebar.warning(t("model_unknown", error=_describe(error)))
        return

    if model is None:
        st.sidebar.warning(t("no_model"))
        return
    version = model.get("version", t("unknown"))
    backbone = model.get("backbone", t("unknown"))
    st.sidebar.markdown(t("model_version", version=version, backbone=backbone))


def inspections_ui(api_url: str, inspections: list[dict[str, Any]], choices: Choices, t: Texts) -> None:
    """List the inspections, one bordered row each."""
    if not inspections:
        if choices.camera_id:
            st.info(t("no_inspections_camera", camera=choices.camera_id))
        else:
            st.info(t("no_inspections"))
        return

    nok_count = sum(1 for inspection in inspections if inspection.get("label") == "NOK")
    st.caption(t("summary", count=len(inspections), nok=nok_count))
    for inspection in inspections:
        inspection_ui(api_url, inspection, t)


def inspection_ui(api_url: str, inspection: dict[str, Any], t: Texts) -> None:
    """Draw one inspection: the picture on the left, and verdict, origin and explanation status on the right."""
    with st.container(border=True):
        picture_column, details_column = st.columns([2, 3])
        with details_column:
            st.markdown(verdict_markdown(inspection, t))
            camera = inspection.get("camera_id") or t("unknown")
            part = inspection.get("part_id") or t("unknown")
            st.markdown(t("camera_part", camera=camera, part=part))
            version = inspection.get("model_version")
            st.caption(t("received", time=format_time(inspection["received_at"]), version=version or t("unknown")))
            explanation_status_ui(inspection.get("explanation"), t)
        with picture_column:
            picture_ui(api_url, inspection, t)


def verdict_markdown(inspection: dict[str, Any], t: Texts) -> str:
    label = inspection.get("label")
    p_nok = inspection.get("p_nok")
    if label == "NOK":
        verdict = f":red[**{t('verdict_nok')}**]"
    elif label == "OK":
        verdict = f":green[**{t('verdict_ok')}**]"
    else:
        verdict = f"**{t('verdict_missing')}**"
    if p_nok is None:
        return f"### {verdict}"
    return f"### {verdict} · p_nok = {p_nok:.3f}"


def explanation_status_ui(explanation: dict[str, Any] | None, t: Texts) -> None:
    if explanation is None:
        st.caption(t("explanation_missing"))
        return

    status = explanation.get("status")
    if status == "done" and explanation.get("flat"):
        st.info(t("explanation_flat"))
    elif status == "done":
        seconds = explanation.get("seconds")
        duration = f"{seconds:.1f} s" if seconds is not None else t("unknown")
        st.caption(t("explanation_done", seconds=duration))
    elif status == "queued":
        st.caption(t("explanation_queued"))
    elif status == "running":
        st.caption(t("explanation_running"))
    elif status == "failed":
        st.warning(t("explanation_failed", error=explanation.get("error") or t("unknown")))
    else:
        st.caption(t("explanation_unknown", status=status))


def picture_ui(api_url: str, inspection: dict[str, Any], t: Texts) -> None:
    """Show the overlay once the explanation is done, else the original image with the reason as caption."""
    image_id = inspection["image_id"]
    explanation = inspection.get("explanation")
    status = explanation.get("status") if explanation else None

    # Paths are built from the configured API address rather than the URLs in the response, because the API
    # builds those from the address it was reached at, which a proxy in between may change.
    model_version = None
    if status == "done" and explanation and explanation.get("overlay_url"):
        path = f"/v1/images/{image_id}/saliency.png"
        model_version = explanation.get("model_version")
        caption = t("caption_flat") if explanation.get("flat") else t("caption_overlay")
    else:
        path = f"/v1/images/{image_id}/original"
        caption = t(f"caption_{status}") if status in ("queued", "running", "failed") else t("caption_missing")

    try:
        data = fetch_image(api_url, path, model_version)
    except (httpx.HTTPError, ApiResponseError) as error:
        logger.warning("Loading image %s from %s%s failed: %s", image_id, api_url, path, error)
        st.warning(t("image_failed", image_id=image_id, url=f"{api_url}{path}", error=_describe(error)))
        return
    st.image(data, caption=caption, width="stretch")


def main() -> None:
    st.set_page_config(page_title="NearCAIPI", layout="wide")
    try:
        settings = ConsoleSettings()
    except ValidationError as error:
        logger.error("Invalid console settings: %s", error)
        language = st.session_state.get("language", DEFAULT_LANGUAGE)
        st.error(translate(language, "settings_invalid", error=error))
        return

    choices = sidebar_ui(settings)
    t = partial(translate, choices.language)
    st.title(t("page_title"))

    if choices.camera_id and not CAMERA_ID_PATTERN.match(choices.camera_id):
        st.error(t("camera_invalid", camera=choices.camera_id))
        return

    # The first request tells whether the API is reachable at all. Without it the page has nothing to show.
    client = api_client(settings.api_url)
    try:
        inspections = fetch_inspections(client, choices.limit, choices.camera_id)
    except httpx.TransportError as error:
        logger.warning("The inference API at %s is unreachable: %s", settings.api_url, error)
        st.error(t("api_unreachable", url=settings.api_url, error=_describe(error)))
        return
    except ApiResponseError as error:
        logger.warning("Listing inspections from %s failed: %s", settings.api_url, error)
        st.error(t("api_failed", url=settings.api_url, status=error.status_code, message=error.message))
        return

    model_version_ui(client, t)
    st.sidebar.caption(t("refreshed_at", time=datetime.now(UTC).strftime("%H:%M:%S UTC")))
    inspections_ui(settings.api_url, inspections, choices, t)


if __name__ == "__main__":
    main()
