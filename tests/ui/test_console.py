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


@dataclass
class FakeApi:
    """State and request log of the fake inference API."""

    url: str = ""
    inspections: list[dict[str, Any]] = field(default_factory=_sample_inspections)
    model: dict[str, Any] | None = field(
        default_factory=lambda: {"version": 7, "backbone": "resnet18", "input_size": 224, "status": "promoted"}
    )
    list_status: int = 200
    requests: list[str] = field(default_factory=list)

    def requested_paths(self) -> list[str]:
        return [urlsplit(target).path for target in self.requests]

    def list_queries(self) -> list[dict[str, list[str]]]:
        return [parse_qs(urlsplit(target).query) for target in self.requests if urlsplit(target).path == "/v1/images"]


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
            elif re.fullmatch(r"/v1/images/[0-9a-f]{32}/saliency\.png", target.path):
                self._send_bytes(OVERLAY_PNG)
            elif re.fullmatch(r"/v1/images/[0-9a-f]{32}/original", target.path):
                self._send_bytes(ORIGINAL_PNG)
            else:
                self._send_json(404, {"detail": "not found"})

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
