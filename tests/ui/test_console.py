"""The reviewer console against a small real HTTP server that plays the inference API on 127.0.0.1."""

from __future__ import annotations

import io
import json
import re
import socket
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from services.ui.app import InvalidReviewError, parse_defect_boxes
from services.ui.i18n import TEXTS

CONSOLE_SCRIPT = Path(__file__).resolve().parents[2] / "services" / "ui" / "app.py"
# The first run imports Streamlit's and the project's modules; later runs take well under a second.
RUN_TIMEOUT_SECONDS = 30


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _inspection(
    number: int,
    label: str,
    p_nok: float,
    camera_id: str | None,
    part_id: str | None,
    explanation: dict[str, Any] | None,
) -> dict[str, Any]:
    image_id = f"{number:032x}"
    return {
        "image_id": image_id,
        "camera_id": camera_id,
        "part_id": part_id,
        # Without an offset, as SQLite returns it.
        "received_at": f"2025-03-0{number}T10:15:0{number}",
        "width": 8,
        "height": 6,
        "label": label,
        "p_nok": p_nok,
        "model_version": 7,
        "explanation": explanation,
        "review": None,
        "image_url": f"http://127.0.0.1:1/v1/images/{image_id}/original",
        "url": f"http://127.0.0.1:1/v1/images/{image_id}",
    }


def _explanation(status: str, flat: bool | None = None, seconds: float | None = None, error: str | None = None) -> dict:
    done = status == "done"
    return {
        "status": status,
        "method": "invrise",
        "model_version": 7,
        "flat": flat,
        "seconds": seconds,
        "error": error,
        "overlay_url": "http://127.0.0.1:1/overlay" if done else None,
        "map_url": "http://127.0.0.1:1/map" if done else None,
    }


FAILURE = "RuntimeError: CUDA out of memory"


def _sample_inspections() -> list[dict[str, Any]]:
    """Newest first, one inspection per explanation state."""
    return [
        _inspection(5, "NOK", 0.931, "line-1", "P-0005", _explanation("done", flat=False, seconds=2.4)),
        _inspection(4, "OK", 0.042, "line-2", None, _explanation("queued")),
        _inspection(3, "NOK", 0.612, "line-1", "P-0003", _explanation("failed", error=FAILURE)),
        _inspection(2, "OK", 0.001, "line-1", "P-0002", _explanation("done", flat=True, seconds=1.9)),
        _inspection(1, "NOK", 0.777, "line-2", "P-0001", _explanation("running")),
    ]


def _sample_queue() -> list[dict[str, Any]]:
    """Unreviewed inspections, least confident first, as GET /v1/review-queue returns them."""
    return [
        _inspection(6, "NOK", 0.512, "line-1", "P-0006", None),
        _inspection(7, "OK", 0.455, "line-2", "P-0007", None),
    ]


def _training_run(run_id: int, status: str) -> dict[str, Any]:
    done = status == "done"
    return {
        "id": run_id,
        "status": status,
        "backbone": "resnet18",
        "profile": "quick",
        "strategy": "near_caipi",
        "seed": 0,
        "summary": {"strategy": "near_caipi", "reviewed_images": 3, "near_hits_and_misses": 4, "refutations": 30}
        if done
        else None,
        "model_version": 8 if done else None,
        "error": None,
        "requested_at": "2025-03-06T09:00:00",
        "finished_at": "2025-03-06T09:05:00" if done else None,
    }


def _neighbour(number: int, label: str, source: str, similarity: float) -> dict[str, Any]:
    image_id = f"{number:032x}"
    return {
        "image_id": image_id,
        "similarity": similarity,
        "label": label,
        "label_source": source,
        "image_url": f"http://127.0.0.1:1/v1/images/{image_id}/original",
        "url": f"http://127.0.0.1:1/v1/images/{image_id}",
    }


@dataclass
class FakeApi:
    """State and request log of the fake inference API."""

    url: str = ""
    inspections: list[dict[str, Any]] = field(default_factory=_sample_inspections)
    model: dict[str, Any] | None = field(
        default_factory=lambda: {"version": 7, "backbone": "resnet18", "input_size": 224, "status": "promoted"}
    )
    list_status: int = 200
    queue: list[dict[str, Any]] = field(default_factory=_sample_queue)
    queue_status: int = 200
    neighbours_status: int = 200
    # Status and body of POST /v1/images/{id}/reviews when it fails. None stores the review.
    review_failure: tuple[int, dict[str, Any]] | None = None
    training_runs: list[dict[str, Any]] = field(default_factory=lambda: [_training_run(11, "done")])
    training_status: int = 202
    model_versions: tuple[int, ...] = (5, 6, 7)
    requests: list[str] = field(default_factory=list)
    posts: list[tuple[str, Any]] = field(default_factory=list)
    """Path and JSON body of each POST, in order. The body is None when the request had none."""

    def requested_paths(self) -> list[str]:
        return [urlsplit(target).path for target in self.requests]

    def queries_of(self, path: str) -> list[dict[str, list[str]]]:
        return [parse_qs(urlsplit(target).query) for target in self.requests if urlsplit(target).path == path]

    def list_queries(self) -> list[dict[str, list[str]]]:
        return self.queries_of("/v1/images")

    def store_review(self, image_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Store a review as the API does: it becomes the inspection's latest review and leaves the queue."""
        inspection = next(item for item in self.inspections + self.queue if item["image_id"] == image_id)
        review = {
            "id": len(self.posts),
            "image_id": image_id,
            "model_version": 7,
            "predicted_label": inspection["label"],
            "label": body["label"],
            "explanation_verdict": body.get("explanation"),
            "defect_boxes": body.get("defect_boxes", []),
            "reviewer": body.get("reviewer"),
            "comment": body.get("comment"),
            "training_run_id": None,
            "created_at": "2025-03-06T08:00:00",
        }
        for item in self.inspections:
            if item["image_id"] == image_id:
                item["review"] = review
        self.queue = [item for item in self.queue if item["image_id"] != image_id]
        return review


OVERLAY_PNG = _png((255, 0, 0))
ORIGINAL_PNG = _png((128, 128, 128))


def _handler_for(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            api.requests.append(self.path)
            target = urlsplit(self.path)
            query = parse_qs(target.query)

            if target.path == "/v1/images":
                if api.list_status != 200:
                    self._send_json(api.list_status, {"detail": "internal error", "message": "database is down"})
                    return
                camera_id = query.get("camera_id", [None])[0]
                limit = int(query.get("limit", ["50"])[0])
                selected = [item for item in api.inspections if camera_id in (None, item["camera_id"])]
                self._send_json(200, selected[:limit])
            elif target.path == "/v1/models/current":
                if api.model is None:
                    body = {"detail": "no model version is promoted", "message": "train a model first"}
                    self._send_json(404, body)
                else:
                    self._send_json(200, api.model)
            elif target.path == "/v1/review-queue":
                if api.queue_status != 200:
                    body = {"detail": "no model version is promoted", "message": "train a model first"}
                    self._send_json(api.queue_status, body)
                    return
                self._send_json(200, api.queue[: int(query.get("limit", ["20"])[0])])
            elif match := re.fullmatch(r"/v1/images/([0-9a-f]{32})/neighbours", target.path):
                self._send_neighbours(match.group(1))
            elif target.path == "/v1/training-runs":
                self._send_json(200, api.training_runs[: int(query.get("limit", ["50"])[0])])
            elif re.fullmatch(r"/v1/images/[0-9a-f]{32}/saliency\.png", target.path):
                self._send_bytes(OVERLAY_PNG)
            elif re.fullmatch(r"/v1/images/[0-9a-f]{32}/original", target.path):
                self._send_bytes(ORIGINAL_PNG)
            else:
                self._send_json(404, {"detail": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            body = json.loads(data) if data else None
            path = urlsplit(self.path).path
            api.posts.append((path, body))

            if match := re.fullmatch(r"/v1/images/([0-9a-f]{32})/reviews", path):
                if api.review_failure is not None:
                    self._send_json(*api.review_failure)
                else:
                    self._send_json(201, api.store_review(match.group(1), body))
            elif path == "/v1/training-runs":
                if api.training_status == 409:
                    message = "review at least one image before training from reviews"
                    self._send_json(409, {"detail": "no reviews yet", "message": message})
                else:
                    run = _training_run(12, "queued") | {"strategy": body["strategy"]}
                    api.training_runs.insert(0, run)
                    self._send_json(202, run)
            elif match := re.fullmatch(r"/v1/models/(\d+)/promote", path):
                version = int(match.group(1))
                if version not in api.model_versions:
                    message = f"no model version {version} exists"
                    self._send_json(404, {"detail": "model version not found", "message": message})
                else:
                    api.model = {"version": version, "backbone": "resnet18", "input_size": 224, "status": "promoted"}
                    self._send_json(200, api.model)
            else:
                self._send_json(404, {"detail": "not found"})

        def _send_neighbours(self, image_id: str) -> None:
            if api.neighbours_status != 200:
                body = {"detail": "no model version is promoted", "message": "train a model first"}
                self._send_json(api.neighbours_status, body)
                return
            body = {
                "image_id": image_id,
                "model_version": 7,
                "label": "NOK",
                "label_source": "prediction",
                "pool_size": 42,
                "near_hit": _neighbour(2, "NOK", "review", 0.912345),
                "near_miss": _neighbour(3, "OK", "prediction", 0.7341),
            }
            self._send_json(200, body)

        def _send_json(self, status: int, body: Any) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send_bytes(self, data: bytes) -> None:
            self._send(200, data, "image/png")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def console_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Settings that the developer's shell may have set differently, fixed for the console under test."""
    monkeypatch.setenv("NEARCAIPI_MODE", "embedded")
    monkeypatch.delenv("NEARCAIPI_PAGE_SIZE", raising=False)
    return monkeypatch


@pytest.fixture
def fake_api(console_environment: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    """A fresh server per test, so that the console's image cache, keyed by API address, starts empty."""
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(api))
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll interval keeps shutdown() from adding half a second to every test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    console_environment.setenv("NEARCAIPI_API_URL", api.url)
    yield api
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _run_console() -> AppTest:
    app = AppTest.from_file(str(CONSOLE_SCRIPT), default_timeout=RUN_TIMEOUT_SECONDS)
    app.run()
    return app


def _verdicts(app: AppTest) -> list[str]:
    return [element.value for element in app.main.markdown if element.value.startswith("### ")]


def _captions(app: AppTest) -> list[str]:
    return [element.value for element in app.main.caption]


def _image_captions(app: AppTest) -> list[str]:
    return [caption for image in app.main.image for caption in image.captions]


def test_console_lists_inspections_newest_first(fake_api: FakeApi) -> None:
    app = _run_console()

    assert not app.exception
    assert not app.error
    assert app.title[0].value == "Recent inspections"
    assert _verdicts(app) == [
        "### :red[**NOK**] · p_nok = 0.931",
        "### :green[**OK**] · p_nok = 0.042",
        "### :red[**NOK**] · p_nok = 0.612",
        "### :green[**OK**] · p_nok = 0.001",
        "### :red[**NOK**] · p_nok = 0.777",
    ]
    assert "5 inspections shown, 3 of them NOK." in _captions(app)
    assert "Camera **line-1** · part **P-0005**" in [element.value for element in app.main.markdown]
    assert "Camera **line-2** · part **unknown**" in [element.value for element in app.main.markdown]
    assert "Received 2025-03-05 10:15:05 UTC · model version 7" in _captions(app)


def test_console_requests_page_size_from_settings(fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEARCAIPI_PAGE_SIZE", "3")
    app = _run_console()

    assert not app.exception
    assert fake_api.list_queries()[-1]["limit"] == ["3"]
    assert len(_verdicts(app)) == 3
    assert app.sidebar.number_input(key="inspection_count").value == 3


def test_console_shows_overlay_only_when_done(fake_api: FakeApi) -> None:
    app = _run_console()

    assert not app.exception
    assert _image_captions(app) == [
        "Saliency map (InvRISE): red marks where hiding the image most changes the verdict.",
        "Original image: the explanation is queued.",
        "Original image: the explanation failed.",
        "Original image: the saliency map is flat and shows no evidence.",
        "Original image: the explanation is being computed.",
    ]
    image_paths = [path for path in fake_api.requested_paths() if path.endswith((".png", "/original"))]
    assert sorted(image_paths) == sorted(
        [
            f"/v1/images/{5:032x}/saliency.png",
            f"/v1/images/{4:032x}/original",
            f"/v1/images/{3:032x}/original",
            f"/v1/images/{2:032x}/saliency.png",
            f"/v1/images/{1:032x}/original",
        ]
    )


def test_console_shows_explanation_statuses(fake_api: FakeApi) -> None:
    app = _run_console()

    captions = _captions(app)
    assert "Explanation done in 2.4 s" in captions
    assert "Explanation queued" in captions
    assert "Explanation running" in captions
    assert [element.value for element in app.main.warning] == ["Explanation failed: RuntimeError: CUDA out of memory"]
    assert [element.value for element in app.main.info] == [
        "Explanation done, but flat: the model ignored the masks, so the overlay shows no evidence."
    ]


def test_console_shows_served_model_version(fake_api: FakeApi) -> None:
    app = _run_console()

    sidebar_markdown = [element.value for element in app.sidebar.markdown]
    assert "Served model version: **7** (resnet18)" in sidebar_markdown
    assert not app.sidebar.warning


def test_console_without_promoted_model_warns(fake_api: FakeApi) -> None:
    fake_api.model = None
    app = _run_console()

    assert not app.exception
    warnings = [element.value for element in app.sidebar.warning]
    assert len(warnings) == 1
    assert warnings[0].startswith("No model version is promoted")
    assert len(_verdicts(app)) == 5


def test_console_in_german(fake_api: FakeApi) -> None:
    app = _run_console()
    app.sidebar.radio(key="language").set_value("de").run()

    assert not app.exception
    assert app.title[0].value == "Letzte Prüfungen"
    assert app.sidebar.number_input(key="inspection_count").label == "Anzahl Prüfungen"
    assert app.sidebar.button(key="refresh").label == "Aktualisieren"
    assert "5 Prüfungen angezeigt, davon 3 NOK." in _captions(app)
    assert "Erklärung in der Warteschlange" in _captions(app)
    assert "Erklärung wird berechnet" in _captions(app)
    assert "Kamera **line-2** · Teil **unbekannt**" in [element.value for element in app.main.markdown]
    assert "Empfangen 2025-03-05 10:15:05 UTC · Modellversion 7" in _captions(app)
    assert [element.value for element in app.main.warning] == [
        "Erklärung fehlgeschlagen: RuntimeError: CUDA out of memory"
    ]
    assert "Originalbild: Die Erklärung ist in der Warteschlange." in _image_captions(app)
    assert "Aktive Modellversion: **7** (resnet18)" in [element.value for element in app.sidebar.markdown]


def test_console_keeps_filter_across_language_switch(fake_api: FakeApi) -> None:
    app = _run_console()
    app.sidebar.text_input(key="camera").input("line-2").run()
    app.sidebar.radio(key="language").set_value("de").run()

    assert not app.exception
    assert app.sidebar.text_input(key="camera").value == "line-2"
    assert fake_api.list_queries()[-1]["camera_id"] == ["line-2"]
    assert len(_verdicts(app)) == 2


def test_console_filters_by_camera(fake_api: FakeApi) -> None:
    app = _run_console()
    app.sidebar.text_input(key="camera").input("line-2").run()

    assert not app.exception
    assert fake_api.list_queries()[-1]["camera_id"] == ["line-2"]
    assert _verdicts(app) == ["### :green[**OK**] · p_nok = 0.042", "### :red[**NOK**] · p_nok = 0.777"]


def test_console_limits_number_of_inspections(fake_api: FakeApi) -> None:
    app = _run_console()
    app.sidebar.number_input(key="inspection_count").set_value(2).run()

    assert not app.exception
    assert fake_api.list_queries()[-1]["limit"] == ["2"]
    assert len(_verdicts(app)) == 2


def test_console_rejects_invalid_camera_id(fake_api: FakeApi) -> None:
    app = _run_console()
    requests_before = len(fake_api.list_queries())
    app.sidebar.text_input(key="camera").input("line 2!").run()

    assert not app.exception
    assert len(app.error) == 1
    assert "'line 2!'" in app.error[0].value
    assert "is invalid" in app.error[0].value
    assert len(fake_api.list_queries()) == requests_before
    assert _verdicts(app) == []


def test_console_reports_unknown_camera(fake_api: FakeApi) -> None:
    app = _run_console()
    app.sidebar.text_input(key="camera").input("line-9").run()

    assert not app.exception
    assert [element.value for element in app.main.info] == [
        "No inspections from camera 'line-9'. Check the camera ID or clear the filter."
    ]


def test_console_without_inspections(fake_api: FakeApi) -> None:
    fake_api.inspections = []
    app = _run_console()

    assert not app.exception
    assert app.main.info[0].value.startswith("No inspections yet.")
    assert _verdicts(app) == []


def test_console_refresh_fetches_again(fake_api: FakeApi) -> None:
    app = _run_console()
    assert len(_verdicts(app)) == 5

    fake_api.inspections.insert(0, _inspection(6, "OK", 0.2, "line-1", "P-0006", None))
    app.sidebar.button(key="refresh").click().run()

    assert not app.exception
    assert len(fake_api.list_queries()) == 2
    assert _verdicts(app)[0] == "### :green[**OK**] · p_nok = 0.200"
    assert "No explanation requested" in _captions(app)


def test_console_with_api_down_shows_error(console_environment: pytest.MonkeyPatch) -> None:
    url = _closed_port_url()
    console_environment.setenv("NEARCAIPI_API_URL", url)
    app = _run_console()

    assert not app.exception
    assert len(app.error) == 1
    assert app.error[0].value.startswith(f"The inference API at {url} is unreachable")
    assert "NEARCAIPI_API_URL" in app.error[0].value
    assert _verdicts(app) == []
    assert not app.sidebar.markdown


def test_console_with_api_down_in_german(console_environment: pytest.MonkeyPatch) -> None:
    url = _closed_port_url()
    console_environment.setenv("NEARCAIPI_API_URL", url)
    app = _run_console()
    app.sidebar.radio(key="language").set_value("de").run()

    assert not app.exception
    assert app.error[0].value.startswith(f"Die Inferenz-API unter {url} ist nicht erreichbar")


def test_console_reports_api_error_status(fake_api: FakeApi) -> None:
    fake_api.list_status = 500
    app = _run_console()

    assert not app.exception
    assert [element.value for element in app.error] == [
        f"The inference API at {fake_api.url} answered HTTP 500: database is down"
    ]
    assert _verdicts(app) == []


def test_console_rejects_invalid_page_size(fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEARCAIPI_PAGE_SIZE", "0")
    app = _run_console()

    assert not app.exception
    assert len(app.error) == 1
    assert app.error[0].value.startswith("The console settings are invalid.")
    assert "page_size" in app.error[0].value
    assert fake_api.requests == []


def test_texts_have_same_keys_in_both_languages() -> None:
    assert TEXTS["de"].keys() == TEXTS["en"].keys()


@pytest.mark.parametrize("key", sorted(TEXTS["en"]))
def test_texts_have_same_placeholders(key: str) -> None:
    def placeholders(text: str) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}

    assert placeholders(TEXTS["de"][key]) == placeholders(TEXTS["en"][key])


# --- Reviews, near hits and misses, the review queue and training runs ---

IMAGE_5 = f"{5:032x}"
IMAGE_4 = f"{4:032x}"


def _open_review_panel(app: AppTest, image_id: str) -> AppTest:
    """Open an inspection's review panel as a click on it does; AppTest has no click for expanders."""
    app.session_state[f"review_open_{image_id}"] = True
    return app.run()


def _open_learning_section(app: AppTest) -> AppTest:
    app.session_state["learning_open"] = True
    return app.run()


def _fill_review(
    app: AppTest,
    image_id: str,
    label: str = "NOK",
    explanation: str = "wrong",
    boxes: str = "",
    reviewer: str = "",
    comment: str = "",
) -> None:
    app.radio(key=f"review_label_{image_id}").set_value(label)
    app.radio(key=f"review_explanation_{image_id}").set_value(explanation)
    app.text_input(key=f"review_boxes_{image_id}").input(boxes)
    app.text_input(key=f"review_reviewer_{image_id}").input(reviewer)
    app.text_area(key=f"review_comment_{image_id}").input(comment)


def _submit_review(app: AppTest, image_id: str) -> AppTest:
    return app.button(key=f"review_submit_{image_id}").click().run()


def _review_posts(api: FakeApi) -> list[tuple[str, Any]]:
    return [(path, body) for path, body in api.posts if path.endswith("/reviews")]


def _markdown(app: AppTest) -> list[str]:
    return [element.value for element in app.main.markdown]


def test_review_panels_closed_make_no_requests(fake_api: FakeApi) -> None:
    app = _run_console()

    assert not app.exception
    assert [expander.label for expander in app.main.expander] == ["Review · near hit and near miss"] * 5
    assert not [path for path in fake_api.requested_paths() if path.endswith("/neighbours")]
    assert not app.main.get("form")
    assert "/v1/training-runs" not in fake_api.requested_paths()


def test_review_form_prefilled_from_prediction(fake_api: FakeApi) -> None:
    app = _open_review_panel(_run_console(), IMAGE_4)

    assert not app.exception
    assert app.radio(key=f"review_label_{IMAGE_4}").value == "OK"
    assert app.radio(key=f"review_explanation_{IMAGE_4}").value == "not_judged"
    assert app.text_input(key=f"review_boxes_{IMAGE_4}").value == ""
    assert app.text_input(key=f"review_boxes_{IMAGE_4}").label == (
        "Defect boxes in pixels of the original image (8 x 6)"
    )


def test_review_form_posts_expected_json(fake_api: FakeApi) -> None:
    app = _open_review_panel(_run_console(), IMAGE_5)
    _fill_review(
        app, IMAGE_5, "NOK", "wrong", boxes=" 1, 1, 4, 3; [5,2,8,6] ;", reviewer="anna.k", comment="scratch at edge"
    )
    _submit_review(app, IMAGE_5)

    assert not app.exception
    assert _review_posts(fake_api) == [
        (
            f"/v1/images/{IMAGE_5}/reviews",
            {
                "label": "NOK",
                "explanation": "wrong",
                "defect_boxes": [[1, 1, 4, 3], [5, 2, 8, 6]],
                "reviewer": "anna.k",
                "comment": "scratch at edge",
            },
        )
    ]
    assert [element.value for element in app.main.success] == [
        f"Review 1 of image {IMAGE_5} saved: NOK, explanation wrong."
    ]
    assert not app.main.error


def test_review_form_sends_nulls_for_empty_fields(fake_api: FakeApi) -> None:
    app = _open_review_panel(_run_console(), IMAGE_4)
    _fill_review(app, IMAGE_4, "OK", "not_judged")
    _submit_review(app, IMAGE_4)

    assert not app.exception
    assert _review_posts(fake_api) == [
        (
            f"/v1/images/{IMAGE_4}/reviews",
            {"label": "OK", "explanation": None, "defect_boxes": [], "reviewer": None, "comment": None},
        )
    ]


def test_review_saved_shows_review_state(fake_api: FakeApi) -> None:
    app = _open_review_panel(_run_console(), IMAGE_5)
    _fill_review(app, IMAGE_5, "OK", "right", reviewer="anna.k")
    _submit_review(app, IMAGE_5)

    assert not app.exception
    assert "Reviewed as **OK** (the model said NOK) by anna.k, 2025-03-06 08:00:00 UTC" in _markdown(app)
    assert "explanation right · no defect boxes · not learnt yet" in _captions(app)
    assert _captions(app).count("Not reviewed yet") == 4


def test_review_remembers_reviewer_name(fake_api: FakeApi) -> None:
    app = _open_review_panel(_run_console(), IMAGE_5)
    _fill_review(app, IMAGE_5, reviewer="anna.k")
    _submit_review(app, IMAGE_5)
    _open_review_panel(app, IMAGE_4)

    assert not app.exception
    assert app.text_input(key=f"review_reviewer_{IMAGE_4}").value == "anna.k"


@pytest.mark.parametrize(
    ("label", "boxes", "reviewer", "message"),
    [
        (
            "NOK",
            "1, 1, 4",
            "",
            "Defect box '1, 1, 4' is invalid: enter four whole numbers left, top, right, bottom separated by "
            "commas, for example 120, 40, 180, 95.",
        ),
        ("NOK", "1, 1, 4, x", "", "Defect box '1, 1, 4, x' is invalid: enter four whole numbers"),
        (
            "NOK",
            "4, 1, 1, 3",
            "",
            "Defect box '4, 1, 1, 3' is invalid: it needs 0 <= left < right and 0 <= top < bottom.",
        ),
        ("NOK", "-1, 1, 4, 3", "", "Defect box '-1, 1, 4, 3' is invalid: it needs 0 <= left < right"),
        (
            "NOK",
            "1, 1, 4, 3; 1, 1, 9, 3",
            "",
            "Defect box '1, 1, 9, 3' lies outside the image: it needs right <= 8 and bottom <= 6, "
            "because the original image is 8 x 6 pixels.",
        ),
        ("NOK", "1, 1, 4, 7", "", "Defect box '1, 1, 4, 7' lies outside the image"),
        ("OK", "1, 1, 4, 3", "", "Defect boxes are only allowed with the label NOK."),
        ("NOK", "", "anna k", "Reviewer name 'anna k' is invalid."),
    ],
)
def test_review_form_rejects_invalid_entry(
    fake_api: FakeApi, label: str, boxes: str, reviewer: str, message: str
) -> None:
    app = _open_review_panel(_run_console(), IMAGE_5)
    _fill_review(app, IMAGE_5, label, "wrong", boxes=boxes, reviewer=reviewer)
    _submit_review(app, IMAGE_5)

    assert not app.exception
    assert _review_posts(fake_api) == []
    assert len(app.main.error) == 1
    assert app.main.error[0].value.startswith(message)
    assert not app.main.success


def test_review_form_keeps_entries_after_error(fake_api: FakeApi) -> None:
    app = _open_review_panel(_run_console(), IMAGE_5)
    _fill_review(app, IMAGE_5, boxes="1, 1, 4", reviewer="anna.k")
    _submit_review(app, IMAGE_5)

    assert app.text_input(key=f"review_boxes_{IMAGE_5}").value == "1, 1, 4"
    assert app.text_input(key=f"review_reviewer_{IMAGE_5}").value == "anna.k"

    app.text_input(key=f"review_boxes_{IMAGE_5}").input("1, 1, 4, 3")
    _submit_review(app, IMAGE_5)

    assert not app.main.error
    assert len(_review_posts(fake_api)) == 1


def test_review_shows_api_rejection(fake_api: FakeApi) -> None:
    message = "box [1, 1, 4, 3] is not [left, top, right, bottom] with 0 <= left < right <= 8"
    fake_api.review_failure = (422, {"detail": "invalid defect box", "message": message})
    app = _open_review_panel(_run_console(), IMAGE_5)
    _fill_review(app, IMAGE_5, boxes="1, 1, 4, 3")
    _submit_review(app, IMAGE_5)

    assert not app.exception
    assert len(_review_posts(fake_api)) == 1
    assert [element.value for element in app.main.error] == [f"The API rejected the review (HTTP 422): {message}"]
    assert not app.main.success


def test_review_shows_image_not_found(fake_api: FakeApi) -> None:
    fake_api.review_failure = (404, {"detail": "image not found", "message": f"no image has id '{IMAGE_5}'"})
    app = _open_review_panel(_run_console(), IMAGE_5)
    _submit_review(app, IMAGE_5)

    assert [element.value for element in app.main.error] == [
        f"The API rejected the review (HTTP 404): no image has id '{IMAGE_5}'"
    ]


def test_existing_review_shown_and_prefilled(fake_api: FakeApi) -> None:
    fake_api.inspections[1]["review"] = {
        "id": 9,
        "image_id": IMAGE_4,
        "model_version": 7,
        "predicted_label": "OK",
        "label": "NOK",
        "explanation_verdict": "wrong",
        "defect_boxes": [[1, 1, 4, 3], [5, 2, 8, 6]],
        "reviewer": "lee",
        "comment": "crack at the gate",
        "training_run_id": 3,
        "created_at": "2025-03-05T11:00:00",
    }
    app = _open_review_panel(_run_console(), IMAGE_4)

    assert not app.exception
    assert "Reviewed as **NOK** (the model said OK) by lee, 2025-03-05 11:00:00 UTC" in _markdown(app)
    assert "explanation wrong · defect boxes 1, 1, 4, 3; 5, 2, 8, 6 · learnt in training run 3" in _captions(app)
    assert "Comment: crack at the gate" in _captions(app)
    assert app.radio(key=f"review_label_{IMAGE_4}").value == "NOK"
    assert app.radio(key=f"review_explanation_{IMAGE_4}").value == "wrong"
    assert app.text_input(key=f"review_boxes_{IMAGE_4}").value == "1, 1, 4, 3; 5, 2, 8, 6"


def test_neighbours_shown_with_similarity(fake_api: FakeApi) -> None:
    app = _open_review_panel(_run_console(), IMAGE_5)

    assert not app.exception
    neighbour_paths = [path for path in fake_api.requested_paths() if path.endswith("/neighbours")]
    assert neighbour_paths == [f"/v1/images/{IMAGE_5}/neighbours"]
    captions = _image_captions(app)
    assert "Near hit: NOK (label from a review), similarity 0.912" in captions
    assert "Near miss: OK (predicted label), similarity 0.734" in captions
    assert f"/v1/images/{2:032x}/original" in fake_api.requested_paths()
    assert (
        "Compared as **NOK** (predicted label) with 42 images under model version 7. The near hit is the most "
        "similar image of the same class, the near miss the most similar of the other."
    ) in _captions(app)


def test_neighbours_without_model_shows_info(fake_api: FakeApi) -> None:
    fake_api.neighbours_status = 503
    app = _open_review_panel(_run_console(), IMAGE_5)

    assert not app.exception
    assert "Near hit and near miss need a promoted model version, and none is promoted." in [
        element.value for element in app.main.info
    ]
    assert app.button(key=f"review_submit_{IMAGE_5}").label == "Save review"


def test_review_queue_requests_chosen_strategy(fake_api: FakeApi) -> None:
    app = _run_console()
    app.sidebar.radio(key="view").set_value("queue").run()

    assert not app.exception
    assert app.title[0].value == "Review queue"
    assert fake_api.queries_of("/v1/review-queue")[-1] == {"strategy": ["al"], "limit": ["20"]}
    assert _verdicts(app) == ["### :red[**NOK**] · p_nok = 0.512", "### :green[**OK**] · p_nok = 0.455"]
    assert "2 unreviewed images, least confident first (AL)." in _captions(app)

    app.sidebar.selectbox(key="queue_strategy").set_value("near_caipi").run()

    assert fake_api.queries_of("/v1/review-queue")[-1] == {"strategy": ["near_caipi"], "limit": ["20"]}
    assert "2 unreviewed images, least confident first (Near CAIPI)." in _captions(app)

    app.sidebar.selectbox(key="queue_strategy").set_value("random").run()

    assert fake_api.queries_of("/v1/review-queue")[-1]["strategy"] == ["random"]
    assert "2 unreviewed images, chosen at random (Random add)." in _captions(app)


def test_review_queue_drops_reviewed_image(fake_api: FakeApi) -> None:
    image_6 = f"{6:032x}"
    app = _run_console()
    app.sidebar.radio(key="view").set_value("queue").run()
    _open_review_panel(app, image_6)
    _fill_review(app, image_6, "NOK", "right", boxes="0, 0, 8, 6")
    _submit_review(app, image_6)

    assert not app.exception
    assert _review_posts(fake_api)[0][1]["defect_boxes"] == [[0, 0, 8, 6]]
    assert _verdicts(app) == ["### :green[**OK**] · p_nok = 0.455"]
    assert [element.value for element in app.main.success] == [
        f"Review 1 of image {image_6} saved: NOK, explanation right."
    ]


def test_review_queue_empty_and_failing(fake_api: FakeApi) -> None:
    fake_api.queue = []
    app = _run_console()
    app.sidebar.radio(key="view").set_value("queue").run()

    assert [element.value for element in app.main.info] == [
        "The review queue is empty: every image that the served model version classified has a review."
    ]

    fake_api.queue_status = 503
    app.sidebar.button(key="refresh").click().run()

    assert [element.value for element in app.error] == [
        f"The inference API at {fake_api.url} answered HTTP 503: train a model first"
    ]


def test_training_runs_listed(fake_api: FakeApi) -> None:
    app = _open_learning_section(_run_console())

    assert not app.exception
    assert fake_api.queries_of("/v1/training-runs")[-1] == {"limit": ["5"]}
    sidebar_markdown = [element.value for element in app.sidebar.markdown]
    assert "**Run 11** · done · Near CAIPI · 2025-03-06 09:00:00 UTC" in sidebar_markdown
    assert "3 reviewed images, 4 near hits and misses, 30 refutations · model version 8" in [
        element.value for element in app.sidebar.caption
    ]


def test_train_button_posts_strategy(fake_api: FakeApi) -> None:
    app = _open_learning_section(_run_console())
    app.sidebar.selectbox(key="training_strategy").set_value("caipi")
    app.sidebar.button(key="train").click().run()

    assert not app.exception
    assert fake_api.posts == [("/v1/training-runs", {"strategy": "caipi"})]
    assert [element.value for element in app.sidebar.success] == [
        "Training run 12 queued with strategy CAIPI. It runs in the background: press Refresh to see its status."
    ]
    assert "**Run 12** · queued · CAIPI · 2025-03-06 09:00:00 UTC" in [
        element.value for element in app.sidebar.markdown
    ]


def test_train_button_default_strategy(fake_api: FakeApi) -> None:
    app = _open_learning_section(_run_console())
    app.sidebar.button(key="train").click().run()

    assert fake_api.posts == [("/v1/training-runs", {"strategy": "near_caipi"})]


def test_train_without_reviews_shows_message(fake_api: FakeApi) -> None:
    fake_api.training_status = 409
    app = _open_learning_section(_run_console())
    app.sidebar.button(key="train").click().run()

    assert not app.exception
    assert len(fake_api.posts) == 1
    assert [element.value for element in app.sidebar.warning] == [
        "No training run started: review at least one image before training from reviews"
    ]
    assert not app.sidebar.success


def test_rollback_promotes_version(fake_api: FakeApi) -> None:
    app = _open_learning_section(_run_console())
    app.sidebar.number_input(key="rollback_version").set_value(6)
    app.sidebar.button(key="rollback").click().run()

    assert not app.exception
    assert fake_api.posts == [("/v1/models/6/promote", None)]
    assert [element.value for element in app.sidebar.success] == [
        "Model version 6 is promoted and classifies new images from now on."
    ]
    assert "Served model version: **6** (resnet18)" in [element.value for element in app.sidebar.markdown]


def test_rollback_unknown_version_shows_message(fake_api: FakeApi) -> None:
    app = _open_learning_section(_run_console())
    app.sidebar.number_input(key="rollback_version").set_value(99)
    app.sidebar.button(key="rollback").click().run()

    assert [element.value for element in app.sidebar.error] == [
        "Promoting model version 99 failed (HTTP 404): no model version 99 exists"
    ]


def test_rollback_without_version_posts_nothing(fake_api: FakeApi) -> None:
    app = _open_learning_section(_run_console())
    app.sidebar.button(key="rollback").click().run()

    assert fake_api.posts == []
    assert [element.value for element in app.sidebar.error] == ["Enter the model version to promote."]


def test_review_console_in_german(fake_api: FakeApi) -> None:
    app = _run_console()
    app.sidebar.radio(key="language").set_value("de").run()
    _open_review_panel(app, IMAGE_5)

    assert not app.exception
    assert app.sidebar.radio(key="view").label == "Anzeigen"
    assert app.sidebar.radio(key="view").options == ["Letzte Prüfungen", "Review-Warteschlange"]
    assert app.radio(key=f"review_label_{IMAGE_5}").label == "Richtiges Label"
    assert app.radio(key=f"review_explanation_{IMAGE_5}").options == ["stimmt", "falsch", "nicht beurteilt"]
    assert app.text_input(key=f"review_reviewer_{IMAGE_5}").label == "Ihr Name oder Kürzel"
    assert app.button(key=f"review_submit_{IMAGE_5}").label == "Review speichern"
    assert "Near Hit: NOK (Label aus einem Review), Ähnlichkeit 0.912" in _image_captions(app)
    assert "Noch kein Review" in _captions(app)

    _fill_review(app, IMAGE_5, "OK", "right", boxes="1, 1, 4, 3")
    _submit_review(app, IMAGE_5)

    assert _review_posts(fake_api) == []
    assert [element.value for element in app.main.error] == [
        "Fehlerbereiche sind nur beim Label NOK erlaubt. NOK wählen oder die Fehlerbereiche leeren."
    ]


def test_learning_section_in_german(fake_api: FakeApi) -> None:
    fake_api.training_status = 409
    app = _run_console()
    app.sidebar.radio(key="language").set_value("de").run()
    _open_learning_section(app)
    app.sidebar.button(key="train").click().run()

    assert not app.exception
    assert [expander.label for expander in app.sidebar.expander] == ["Aus Reviews lernen"]
    assert app.sidebar.button(key="train").label == "Trainingslauf starten"
    assert "**Lauf 11** · fertig · Near CAIPI · 2025-03-06 09:00:00 UTC" in [
        element.value for element in app.sidebar.markdown
    ]
    assert [element.value for element in app.sidebar.warning] == [
        "Kein Trainingslauf gestartet: review at least one image before training from reviews"
    ]


@pytest.mark.parametrize(
    ("text", "boxes"),
    [
        ("", []),
        (" ; ", []),
        ("0, 0, 8, 6", [[0, 0, 8, 6]]),
        ("1,1,4,3;5,2,8,6", [[1, 1, 4, 3], [5, 2, 8, 6]]),
        ("[1, 1, 4, 3]\n(5, 2, 8, 6)", [[1, 1, 4, 3], [5, 2, 8, 6]]),
    ],
)
def test_parse_defect_boxes_accepts(text: str, boxes: list[list[int]]) -> None:
    assert parse_defect_boxes(text, 8, 6) == boxes


@pytest.mark.parametrize(
    ("text", "text_key"),
    [
        ("1, 1, 4", "box_not_numbers"),
        ("1, 1, 4, 3, 5", "box_not_numbers"),
        ("1.5, 1, 4, 3", "box_not_numbers"),
        ("1, 1, 1, 3", "box_unordered"),
        ("1, 3, 4, 3", "box_unordered"),
        ("0, 0, 9, 6", "box_outside"),
        ("0, 0, 8, 7", "box_outside"),
        ("; ".join(["0, 0, 1, 1"] * 51), "too_many_boxes"),
    ],
)
def test_parse_defect_boxes_rejects(text: str, text_key: str) -> None:
    with pytest.raises(InvalidReviewError) as raised:
        parse_defect_boxes(text, 8, 6)

    assert raised.value.text_key == text_key


def test_parse_defect_boxes_without_image_size() -> None:
    assert parse_defect_boxes("0, 0, 900, 700", None, None) == [[0, 0, 900, 700]]
    with pytest.raises(InvalidReviewError):
        parse_defect_boxes("5, 0, 2, 7", None, None)
