"""Reviewer console: inspections with their verdicts and InvRISE saliency overlays, reviews and training from them.

Run from the project root with the root on PYTHONPATH: ``streamlit run services/ui/app.py``. The console reads
and writes everything through the inference API over HTTP (``NEARCAIPI_API_URL``) and never opens the database or
the object store.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import streamlit as st
from pydantic import ValidationError

from nearcaipi.config import ConsoleSettings
from nearcaipi.selection import STRATEGY_TITLES
from services.ui.api_client import (
    ApiResponseError,
    _describe,
    api_client,
    fetch_current_model,
    fetch_image,
    fetch_inspections,
    fetch_neighbours,
    fetch_review_queue,
    fetch_training_runs,
    post_review,
    promote_model_version,
    start_training_run,
)
from services.ui.i18n import DEFAULT_LANGUAGE, LANGUAGES, translate

logger = logging.getLogger(__name__)

Texts = Callable[..., str]

# The API's rule for camera IDs. The console checks it too, so that a typo gets a message in the reviewer's
# language instead of the API's 422 validation body.
CAMERA_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
# The API's rule for reviewer names in POST /v1/images/{id}/reviews, checked here for the same reason.
REVIEWER_PATTERN = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MAX_INSPECTIONS = 500  # the API's largest page: GET /v1/images?limit= accepts 1 to 500
MAX_QUEUE_SIZE = 200  # GET /v1/review-queue?limit= accepts 1 to 200
DEFAULT_QUEUE_SIZE = 20
MAX_DEFECT_BOXES = 50  # the API's limit per review
MAX_COMMENT_CHARS = 2000  # the API's limit per review
MAX_REVIEWER_CHARS = 64  # as in REVIEWER_PATTERN
RECENT_TRAINING_RUNS = 5
THUMBNAIL_WIDTH = 240

VIEW_RECENT = "recent"
VIEW_QUEUE = "queue"
DEFAULT_QUEUE_STRATEGY = "al"
DEFAULT_TRAINING_STRATEGY = "near_caipi"
LABELS = ("OK", "NOK")
NOT_JUDGED = "not_judged"  # the radio option that sends explanation=null
EXPLANATION_CHOICES = ("right", "wrong", NOT_JUDGED)
RUN_STATUSES = ("queued", "running", "done", "failed")

# Session state that outlives one script run. Callbacks write these before the run that shows them.
REVIEWER_NAME_KEY = "reviewer_name"
SAVED_REVIEW_KEY = "saved_review"
TRAINING_OUTCOME_KEY = "training_outcome"
PROMOTION_OUTCOME_KEY = "promotion_outcome"


class InvalidReviewError(ValueError):
    """A review form entry that the API would reject, with the text key and values of the reviewer's message."""

    def __init__(self, text_key: str, **values: Any) -> None:
        super().__init__(f"{text_key}: {values}")
        self.text_key = text_key
        self.values = values


@dataclass(frozen=True)
class Choices:
    """The reviewer's choices in the sidebar."""

    language: str
    view: str
    limit: int
    camera_id: str | None
    queue_strategy: str = DEFAULT_QUEUE_STRATEGY


@dataclass(frozen=True)
class Outcome:
    """A message that a button callback leaves for the following script run, translated when it is shown."""

    level: str  # success, warning or error
    text_key: str
    values: dict[str, Any] = field(default_factory=dict)


# --- Review input ---


def parse_defect_boxes(text: str, width: int | None, height: int | None) -> list[list[int]]:
    """Parse ``"l, t, r, b; l, t, r, b"`` into boxes in pixels of the original image.

    Boxes are separated by semicolons or line breaks, and brackets around a box are allowed. Right and bottom are
    exclusive, as in the API. Without the image size only the order of the coordinates is checked, and the API
    checks the rest. Raises InvalidReviewError naming the first invalid box.
    """
    boxes = []
    for entry in re.split(r"[;\n]", text):
        written = entry.strip()
        if not written:
            continue

        numbers = [number.strip() for number in written.strip("[]()").split(",")]
        if len(numbers) != 4 or not all(re.fullmatch(r"[+-]?\d+", number) for number in numbers):
            raise InvalidReviewError("box_not_numbers", box=written)
        left, top, right, bottom = (int(number) for number in numbers)
        if not (0 <= left < right and 0 <= top < bottom):
            raise InvalidReviewError("box_unordered", box=written)
        if width is not None and height is not None and (right > width or bottom > height):
            raise InvalidReviewError("box_outside", box=written, width=width, height=height)
        boxes.append([left, top, right, bottom])

    if len(boxes) > MAX_DEFECT_BOXES:
        raise InvalidReviewError("too_many_boxes", count=len(boxes), maximum=MAX_DEFECT_BOXES)
    return boxes


def build_review_request(
    label: str | None,
    explanation: str | None,
    boxes_text: str,
    reviewer: str,
    comment: str,
    width: int | None,
    height: int | None,
) -> dict[str, Any]:
    """Check the review form's entries and return the JSON body of POST /v1/images/{id}/reviews.

    Raises InvalidReviewError for a missing label, an invalid box, boxes on an OK label or an invalid reviewer name.
    """
    if label not in LABELS:
        raise InvalidReviewError("label_missing")

    boxes = parse_defect_boxes(boxes_text or "", width, height)
    if boxes and label != "NOK":
        raise InvalidReviewError("boxes_need_nok")

    reviewer = (reviewer or "").strip()
    if reviewer and not REVIEWER_PATTERN.match(reviewer):
        raise InvalidReviewError("reviewer_invalid", reviewer=reviewer)

    comment = (comment or "").strip()
    return {
        "label": label,
        "explanation": None if explanation in (None, NOT_JUDGED) else explanation,
        "defect_boxes": boxes,
        "reviewer": reviewer or None,
        "comment": comment or None,
    }


def format_boxes(boxes: list[list[int]]) -> str:
    """Write boxes in the form that parse_defect_boxes reads."""
    return "; ".join(", ".join(str(value) for value in box) for box in boxes)


def _review_keys(image_id: str) -> dict[str, str]:
    """Session state keys of one inspection's review widgets, unique per image."""
    return {
        name: f"review_{name}_{image_id}"
        for name in ("open", "form", "label", "explanation", "boxes", "reviewer", "comment", "submit", "error")
    }


# --- Callbacks, which run before the script so that the page drawn afterwards already shows their effect ---


def submit_review(api_url: str, inspection: dict[str, Any]) -> None:
    """Check the review form of one inspection and post it. Store the saved review, or the error, for the page."""
    image_id = inspection["image_id"]
    keys = _review_keys(image_id)
    state = st.session_state
    state.pop(keys["error"], None)

    try:
        body = build_review_request(
            label=state.get(keys["label"]),
            explanation=state.get(keys["explanation"]),
            boxes_text=state.get(keys["boxes"], ""),
            reviewer=state.get(keys["reviewer"], ""),
            comment=state.get(keys["comment"], ""),
            width=inspection.get("width"),
            height=inspection.get("height"),
        )
    except InvalidReviewError as error:
        state[keys["error"]] = Outcome("error", error.text_key, error.values)
        return

    try:
        review = post_review(api_client(api_url), image_id, body)
    except ApiResponseError as error:
        logger.warning("The API rejected the review of image %s: %s", image_id, error)
        values = {"status": error.status_code, "message": error.message}
        state[keys["error"]] = Outcome("error", "review_rejected", values)
        return
    except httpx.HTTPError as error:
        logger.warning("Posting the review of image %s to %s failed: %s", image_id, api_url, error)
        state[keys["error"]] = Outcome("error", "request_failed", {"error": _describe(error)})
        return

    logger.info("Review %s of image %s saved by %s", review.get("id"), image_id, body["reviewer"] or "anonymous")
    state[SAVED_REVIEW_KEY] = review
    if body["reviewer"]:
        _remember_reviewer(body["reviewer"])


def _remember_reviewer(reviewer: str) -> None:
    """Keep the reviewer's name for forms opened later, and fill it into open forms whose name field is empty."""
    state = st.session_state
    state[REVIEWER_NAME_KEY] = reviewer
    for key in list(state.keys()):
        if isinstance(key, str) and key.startswith("review_reviewer_") and not state[key]:
            state[key] = reviewer


def start_training(api_url: str) -> None:
    """Post a training run with the chosen strategy and store the outcome for the page."""
    strategy = st.session_state.get("training_strategy", DEFAULT_TRAINING_STRATEGY)
    try:
        run = start_training_run(api_client(api_url), strategy)
    except ApiResponseError as error:
        logger.warning("Starting a training run (strategy %s) failed: %s", strategy, error)
        if error.status_code == 409:
            outcome = Outcome("warning", "training_rejected", {"message": error.message})
        else:
            outcome = Outcome("error", "training_failed", {"status": error.status_code, "message": error.message})
    except httpx.HTTPError as error:
        logger.warning("Starting a training run at %s failed: %s", api_url, error)
        outcome = Outcome("error", "request_failed", {"error": _describe(error)})
    else:
        logger.info("Training run %s queued with strategy %s", run.get("id"), strategy)
        values = {"run_id": run.get("id"), "strategy": STRATEGY_TITLES.get(strategy, strategy)}
        outcome = Outcome("success", "training_queued", values)
    st.session_state[TRAINING_OUTCOME_KEY] = outcome


def promote_version(api_url: str) -> None:
    """Promote the model version entered for a rollback and store the outcome for the page."""
    version = st.session_state.get("rollback_version")
    if version is None:
        st.session_state[PROMOTION_OUTCOME_KEY] = Outcome("error", "rollback_missing")
        return

    version = int(version)
    try:
        promote_model_version(api_client(api_url), version)
    except ApiResponseError as error:
        logger.warning("Promoting model version %d failed: %s", version, error)
        values = {"version": version, "status": error.status_code, "message": error.message}
        outcome = Outcome("error", "rollback_failed", values)
    except httpx.HTTPError as error:
        logger.warning("Promoting model version %d at %s failed: %s", version, api_url, error)
        outcome = Outcome("error", "request_failed", {"error": _describe(error)})
    else:
        logger.info("Model version %d promoted from the console", version)
        outcome = Outcome("success", "rollback_done", {"version": version})
    st.session_state[PROMOTION_OUTCOME_KEY] = outcome


def show_outcome(outcome: Outcome | None, t: Texts) -> None:
    if outcome is None:
        return
    show = {"success": st.success, "warning": st.warning}.get(outcome.level, st.error)
    show(t(outcome.text_key, **outcome.values))


# --- Page ---


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
    """Draw the language switch, the view and its filters, and return the reviewer's choices."""
    sidebar = st.sidebar
    language = sidebar.radio(
        translate(DEFAULT_LANGUAGE, "language"),
        options=list(LANGUAGES),
        format_func=LANGUAGES.__getitem__,
        horizontal=True,
        key="language",
    )
    t = partial(translate, language)

    view = sidebar.radio(
        t("view"),
        options=[VIEW_RECENT, VIEW_QUEUE],
        format_func=lambda name: t(f"view_{name}"),
        key="view",
    )
    draw_filters = _queue_filters_ui if view == VIEW_QUEUE else partial(_recent_filters_ui, settings)
    choices = draw_filters(language, t)

    # A click only has to rerun the script: inspections are fetched anew on every run.
    sidebar.button(t("refresh"), key="refresh", icon=":material/refresh:")
    return choices


def _recent_filters_ui(settings: ConsoleSettings, language: str, t: Texts) -> Choices:
    limit = st.sidebar.number_input(
        t("inspection_count"),
        min_value=1,
        max_value=MAX_INSPECTIONS,
        value=min(settings.page_size, MAX_INSPECTIONS),
        step=10,
        help=t("inspection_count_help", maximum=MAX_INSPECTIONS),
        key="inspection_count",
    )
    camera = st.sidebar.text_input(
        t("camera"), placeholder=t("camera_placeholder"), help=t("camera_help"), key="camera"
    )
    return Choices(language=language, view=VIEW_RECENT, limit=int(limit), camera_id=camera.strip() or None)


def _queue_filters_ui(language: str, t: Texts) -> Choices:
    strategy = st.sidebar.selectbox(
        t("queue_strategy"),
        options=list(STRATEGY_TITLES),
        index=list(STRATEGY_TITLES).index(DEFAULT_QUEUE_STRATEGY),
        format_func=STRATEGY_TITLES.__getitem__,
        help=t("queue_strategy_help"),
        key="queue_strategy",
    )
    size = st.sidebar.number_input(
        t("queue_size"),
        min_value=1,
        max_value=MAX_QUEUE_SIZE,
        value=DEFAULT_QUEUE_SIZE,
        step=5,
        help=t("queue_size_help", maximum=MAX_QUEUE_SIZE),
        key="queue_size",
    )
    return Choices(language=language, view=VIEW_QUEUE, limit=int(size), camera_id=None, queue_strategy=strategy)


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


def learning_ui(api_url: str, t: Texts) -> None:
    """Draw the sidebar section that starts training runs from reviews, lists them and rolls back a version.

    The section fetches the training runs only while it is open, so a closed section costs no request.
    """
    panel = st.sidebar.expander(t("learning"), key="learning_open", on_change="rerun", icon=":material/model_training:")
    with panel:
        if not panel.open:
            return

        st.caption(t("learning_intro"))
        st.selectbox(
            t("training_strategy"),
            options=list(STRATEGY_TITLES),
            index=list(STRATEGY_TITLES).index(DEFAULT_TRAINING_STRATEGY),
            format_func=STRATEGY_TITLES.__getitem__,
            help=t("training_strategy_help"),
            key="training_strategy",
        )
        st.button(t("train"), key="train", on_click=start_training, args=(api_url,), icon=":material/play_arrow:")
        show_outcome(st.session_state.pop(TRAINING_OUTCOME_KEY, None), t)

        st.markdown(f"**{t('training_runs')}**")
        training_runs_ui(api_client(api_url), t)

        st.markdown(f"**{t('rollback_title')}**")
        st.number_input(
            t("rollback_version"),
            min_value=1,
            value=None,
            step=1,
            placeholder=t("rollback_placeholder"),
            help=t("rollback_help"),
            key="rollback_version",
        )
        st.button(t("rollback"), key="rollback", on_click=promote_version, args=(api_url,), icon=":material/undo:")
        show_outcome(st.session_state.pop(PROMOTION_OUTCOME_KEY, None), t)


def training_runs_ui(client: httpx.Client, t: Texts) -> None:
    try:
        runs = fetch_training_runs(client, RECENT_TRAINING_RUNS)
    except (httpx.HTTPError, ApiResponseError) as error:
        logger.warning("Listing training runs from %s failed: %s", client.base_url, error)
        st.warning(t("training_runs_failed", error=_describe(error)))
        return

    if not runs:
        st.caption(t("no_training_runs"))
        return
    for run in runs:
        status = run.get("status")
        status_text = t(f"run_status_{status}") if status in RUN_STATUSES else str(status)
        strategy = STRATEGY_TITLES.get(run.get("strategy") or "", run.get("strategy") or t("unknown"))
        time = format_time(run.get("requested_at"))
        st.markdown(t("training_run", run_id=run.get("id"), status=status_text, strategy=strategy, time=time))

        details = []
        summary = run.get("summary")
        if summary:
            details.append(
                t(
                    "training_run_summary",
                    reviewed=summary.get("reviewed_images", 0),
                    neighbours=summary.get("near_hits_and_misses", 0),
                    refutations=summary.get("refutations", 0),
                )
            )
        if run.get("model_version") is not None:
            details.append(t("training_run_model", version=run["model_version"]))
        if run.get("error"):
            details.append(t("training_run_error", error=run["error"]))
        if details:
            st.caption(" · ".join(details))


def inspections_ui(api_url: str, inspections: list[dict[str, Any]], choices: Choices, t: Texts) -> None:
    """List the inspections, one bordered row each, after the confirmation of a review saved just before."""
    saved = st.session_state.pop(SAVED_REVIEW_KEY, None)
    shown_ids = {inspection["image_id"] for inspection in inspections}
    # A reviewed image leaves the review queue, so its confirmation goes above the list instead of into its row.
    if saved is not None and saved.get("image_id") not in shown_ids:
        st.success(review_saved_text(saved, t))

    if not inspections:
        if choices.view == VIEW_QUEUE:
            st.info(t("queue_empty"))
        elif choices.camera_id:
            st.info(t("no_inspections_camera", camera=choices.camera_id))
        else:
            st.info(t("no_inspections"))
        return

    if choices.view == VIEW_QUEUE:
        strategy = STRATEGY_TITLES[choices.queue_strategy]
        key = "queue_summary_random" if choices.queue_strategy == "random" else "queue_summary"
        st.caption(t(key, count=len(inspections), strategy=strategy))
    else:
        nok_count = sum(1 for inspection in inspections if inspection.get("label") == "NOK")
        st.caption(t("summary", count=len(inspections), nok=nok_count))

    for inspection in inspections:
        just_saved = saved if saved is not None and saved.get("image_id") == inspection["image_id"] else None
        inspection_ui(api_url, inspection, t, just_saved)


def inspection_ui(api_url: str, inspection: dict[str, Any], t: Texts, just_saved: dict[str, Any] | None) -> None:
    """Draw one inspection: picture, verdict, origin, explanation status, review state and the review panel."""
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
            review_state_ui(inspection.get("review"), t)
            if just_saved is not None:
                st.success(review_saved_text(just_saved, t))
        with picture_column:
            picture_ui(api_url, inspection, t)
        review_panel_ui(api_url, inspection, t)


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


def review_state_ui(review: dict[str, Any] | None, t: Texts) -> None:
    """Show the latest review of an inspection: label, explanation verdict, defect boxes, reviewer and training."""
    if review is None:
        st.caption(t("not_reviewed"))
        return

    st.markdown(
        t(
            "review_state",
            label=review.get("label"),
            predicted=review.get("predicted_label") or t("unknown"),
            reviewer=review.get("reviewer") or t("reviewer_anonymous"),
            time=format_time(review.get("created_at")),
        )
    )
    boxes = review.get("defect_boxes") or []
    run = review.get("training_run_id")
    details = [
        explanation_verdict_text(review.get("explanation_verdict"), t),
        t("review_boxes", boxes=format_boxes(boxes)) if boxes else t("review_no_boxes"),
        t("review_trained", run_id=run) if run is not None else t("review_not_trained"),
    ]
    st.caption(" · ".join(details))
    if review.get("comment"):
        st.caption(t("review_comment", comment=review["comment"]))


def explanation_verdict_text(verdict: str | None, t: Texts) -> str:
    choice = verdict if verdict in EXPLANATION_CHOICES else NOT_JUDGED
    return t("review_verdict", verdict=t(f"explanation_{choice}"))


def review_saved_text(review: dict[str, Any], t: Texts) -> str:
    return t(
        "review_saved",
        review_id=review.get("id"),
        image_id=review.get("image_id"),
        label=review.get("label"),
        verdict=explanation_verdict_text(review.get("explanation_verdict"), t),
    )


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


def review_panel_ui(api_url: str, inspection: dict[str, Any], t: Texts) -> None:
    """Draw the review panel of one inspection: near hit, near miss and the review form.

    The panel runs only while it is open, so a closed panel makes no neighbour request and draws no form.
    """
    keys = _review_keys(inspection["image_id"])
    panel = st.expander(t("review_open"), key=keys["open"], on_change="rerun", icon=":material/rate_review:")
    with panel:
        if not panel.open:
            return
        neighbours_ui(api_url, inspection["image_id"], t)
        review_form_ui(api_url, inspection, t)


def neighbours_ui(api_url: str, image_id: str, t: Texts) -> None:
    try:
        found = fetch_neighbours(api_client(api_url), image_id)
    except (httpx.HTTPError, ApiResponseError) as error:
        logger.warning("Loading the neighbours of image %s from %s failed: %s", image_id, api_url, error)
        if isinstance(error, ApiResponseError) and error.status_code == 503:
            st.info(t("neighbours_no_model"))
        else:
            st.warning(t("neighbours_failed", error=_describe(error)))
        return

    st.caption(
        t(
            "neighbours_intro",
            label=found.get("label"),
            source=label_source_text(found.get("label_source"), t),
            count=found.get("pool_size"),
            version=found.get("model_version"),
        )
    )
    hit_column, miss_column = st.columns(2)
    with hit_column:
        neighbour_ui(api_url, found.get("near_hit"), "near_hit", t)
    with miss_column:
        neighbour_ui(api_url, found.get("near_miss"), "near_miss", t)


def label_source_text(source: str | None, t: Texts) -> str:
    """Name where a label comes from: a reviewer's review or the model's prediction."""
    return t(f"source_{source}") if source in ("review", "prediction") else str(source)


def neighbour_ui(api_url: str, neighbour: dict[str, Any] | None, kind: str, t: Texts) -> None:
    """Show one neighbour as a thumbnail with its label, the label's source and its similarity."""
    if neighbour is None:
        st.caption(t(f"{kind}_none"))
        return

    path = f"/v1/images/{neighbour['image_id']}/original"
    caption = t(
        "neighbour_caption",
        kind=t(kind),
        label=neighbour.get("label"),
        source=label_source_text(neighbour.get("label_source"), t),
        similarity=f"{neighbour.get('similarity', 0.0):.3f}",
    )
    try:
        data = fetch_image(api_url, path)
    except (httpx.HTTPError, ApiResponseError) as error:
        logger.warning("Loading neighbour %s from %s%s failed: %s", neighbour["image_id"], api_url, path, error)
        st.warning(t("image_failed", image_id=neighbour["image_id"], url=f"{api_url}{path}", error=_describe(error)))
        st.caption(caption)
        return
    st.image(data, caption=caption, width=THUMBNAIL_WIDTH)


def review_form_ui(api_url: str, inspection: dict[str, Any], t: Texts) -> None:
    """Draw the review form of one inspection, prefilled from its latest review, else from the prediction."""
    image_id = inspection["image_id"]
    keys = _review_keys(image_id)
    review = inspection.get("review") or {}
    # Set before the widget exists, so that the field starts with the name the reviewer entered last.
    if keys["reviewer"] not in st.session_state:
        st.session_state[keys["reviewer"]] = st.session_state.get(REVIEWER_NAME_KEY, "")

    label = review.get("label") or inspection.get("label")
    verdict = review.get("explanation_verdict")
    size = {"width": inspection.get("width") or t("unknown"), "height": inspection.get("height") or t("unknown")}

    with st.form(key=keys["form"], border=False):
        label_column, explanation_column = st.columns(2)
        label_column.radio(
            t("review_label"),
            options=list(LABELS),
            index=LABELS.index(label) if label in LABELS else None,
            horizontal=True,
            help=t("review_label_help"),
            key=keys["label"],
        )
        explanation_column.radio(
            t("review_explanation"),
            options=list(EXPLANATION_CHOICES),
            index=EXPLANATION_CHOICES.index(verdict if verdict in EXPLANATION_CHOICES else NOT_JUDGED),
            format_func=lambda choice: t(f"explanation_{choice}"),
            horizontal=True,
            help=t("review_explanation_help"),
            key=keys["explanation"],
        )
        st.text_input(
            t("review_boxes_input", **size),
            value=format_boxes(review.get("defect_boxes") or []),
            placeholder=t("review_boxes_placeholder"),
            help=t("review_boxes_help", **size),
            key=keys["boxes"],
        )
        st.text_input(
            t("review_reviewer"), max_chars=MAX_REVIEWER_CHARS, help=t("review_reviewer_help"), key=keys["reviewer"]
        )
        st.text_area(t("review_comment_input"), max_chars=MAX_COMMENT_CHARS, height=68, key=keys["comment"])
        st.form_submit_button(
            t("review_submit"),
            key=keys["submit"],
            type="primary",
            on_click=submit_review,
            args=(api_url, inspection),
        )
    show_outcome(st.session_state.get(keys["error"]), t)


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
    st.title(t("queue_title") if choices.view == VIEW_QUEUE else t("page_title"))

    if choices.camera_id and not CAMERA_ID_PATTERN.match(choices.camera_id):
        st.error(t("camera_invalid", camera=choices.camera_id))
        return

    # The first request tells whether the API is reachable at all. Without it the page has nothing to show.
    client = api_client(settings.api_url)
    try:
        if choices.view == VIEW_QUEUE:
            inspections = fetch_review_queue(client, choices.queue_strategy, choices.limit)
        else:
            inspections = fetch_inspections(client, choices.limit, choices.camera_id)
    except httpx.TransportError as error:
        logger.warning("The inference API at %s is unreachable: %s", settings.api_url, error)
        st.error(t("api_unreachable", url=settings.api_url, error=_describe(error)))
        return
    except ApiResponseError as error:
        logger.warning("Listing the %s view from %s failed: %s", choices.view, settings.api_url, error)
        st.error(t("api_failed", url=settings.api_url, status=error.status_code, message=error.message))
        return

    model_version_ui(client, t)
    learning_ui(settings.api_url, t)
    st.sidebar.caption(t("refreshed_at", time=datetime.now(UTC).strftime("%H:%M:%S UTC")))
    inspections_ui(settings.api_url, inspections, choices, t)


if __name__ == "__main__":
    main()
