"""A line-camera simulator: posts image files to the inference API at a fixed rate."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from nearcaipi.data import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)


@dataclass
class CameraReport:
    posted: int = 0
    rejected: int = 0
    failed: int = 0
    nok: int = 0
    latencies_ms: list[float] | None = None


def image_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders into their image files (recursively); files are taken as given."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(child for child in path.rglob("*") if child.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"camera input {path} does not exist")
    return files


def _paced(files: Sequence[Path], rate: float, stop: threading.Event) -> Iterator[Path]:
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    for path in files:
        delay = next_at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return
        if stop.is_set():
            return
        next_at += interval
        yield path


def run_camera(
    files: Sequence[Path],
    api_url: str,
    rate: float,
    camera_id: str = "camera-1",
    stop: threading.Event | None = None,
    timeout: float = 60.0,
) -> CameraReport:
    """Post each file as ``POST /v1/images`` at ``rate`` images per second; log each verdict."""
    stop = stop or threading.Event()
    report = CameraReport(latencies_ms=[])
    with httpx.Client(base_url=api_url, timeout=timeout) as client:
        for index, path in enumerate(_paced(files, rate, stop), start=1):
            started = time.perf_counter()
            try:
                response = client.post(
                    "/v1/images",
                    files={"file": (path.name, path.read_bytes())},
                    data={"camera_id": camera_id, "part_id": f"part-{index:06d}"},
                )
            except httpx.HTTPError as error:
                report.failed += 1
                logger.warning("Camera %s could not post %s: %s", camera_id, path, error)
                continue

            elapsed_ms = (time.perf_counter() - started) * 1000.0
            if response.status_code != 201:
                report.rejected += 1
                logger.warning(
                    "Camera %s: %s was rejected with %d: %s", camera_id, path.name, response.status_code, response.text
                )
                continue

            verdict = response.json()
            report.posted += 1
            report.nok += verdict["label"] == "NOK"
            report.latencies_ms.append(elapsed_ms)
            logger.info(
                "Camera %s: %s -> %s (p_nok %.3f, model version %d, %.0f ms), image %s",
                camera_id,
                path.name,
                verdict["label"],
                verdict["p_nok"],
                verdict["model_version"],
                elapsed_ms,
                verdict["image_id"],
            )
    return report
