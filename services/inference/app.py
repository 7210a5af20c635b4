"""Inference API: cameras post images and get an OK/NOK verdict at once; explanations follow from the queue.

Run with ``uvicorn services.inference.app:create_app --factory``; settings come from the environment.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from nearcaipi.config import InferenceSettings
from nearcaipi.data import CLASS_NAMES
from nearcaipi.imaging import IDENTIFIER_PATTERN, InvalidImageError, decode_image
from nearcaipi.logs import configure_logging
from nearcaipi.pipeline import ModelCache, ServedModel, label_of
from nearcaipi.queue import EXPLAIN_TASK, create_celery_app
from nearcaipi.similarity import embed
from nearcaipi.storage.objects import ObjectNotFoundError, open_object_store
from nearcaipi.storage.records import ExplanationRecord, ImageRecord, PredictionRecord, RecordStore
from services.inference.schemas import ExplanationPublic, InspectionPublic, ModelVersionPublic

logger = logging.getLogger(__name__)

EXPLANATION_METHOD = "invrise"
# A failed explanation is queued again at each start of the API until it has been tried this often.
MAX_EXPLANATION_ATTEMPTS = 3
IMAGE_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
UPLOAD_READ_CHUNK = 1024 * 1024
UPLOAD_ERROR_STATUS = {
    "empty file": 400,
    "unsupported image format": 415,
    "image too large": 413,
    "corrupt image": 422,
}


class ApiError(Exception):
    """An error returned with a fixed ``detail`` phrase and a ``message`` naming the bad value."""

    def __init__(self, status_code: int, detail: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail
        self.message = message


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    settings = settings or InferenceSettings()
    configure_logging(settings.log_level)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)

    records = RecordStore(settings.database_url)
    records.create_schema()
    objects = open_object_store(settings)
    served = ServedModel(ModelCache(records, objects, device=settings.device), settings.model_refresh_seconds)
    celery = create_celery_app(settings, "nearcaipi-inference")

    def enqueue_explanation(image_id: str, model_version: int, method: str) -> bool:
        try:
            celery.send_task(EXPLAIN_TASK, args=[image_id, model_version, method])
        except Exception:
            # The record stays "queued"; the next start of the API queues it again.
            logger.exception("Queueing the explanation of image %s failed; it stays queued", image_id)
            return False
        return True

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Messages can be lost with a crashed worker or broker; the records remember what is still owed.
        pending = records.unfinished_explanations(max_attempts=MAX_EXPLANATION_ATTEMPTS)
        for item in pending:
            enqueue_explanation(item.image_id, item.model_version, item.method)
        if pending:
            logger.info("Queued %d unfinished explanations again", len(pending))
        logger.info("Inference API ready (mode %s, records %s)", settings.mode, records.engine.url.render_as_string())
        yield

    app = FastAPI(
        title="NearCAIPI inference API",
        version="1",
        summary="OK/NOK verdicts for images of parts, with InvRISE explanations computed by the explainer workers.",
        lifespan=lifespan,
    )

    @app.exception_handler(ApiError)
    async def _answer_api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(status_code=error.status_code, content={"detail": error.detail, "message": error.message})

    @app.exception_handler(RequestValidationError)
    async def _answer_validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        # Same shape as the other errors: a fixed detail, and a message that names each bad field.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'][1:]) or 'request'}: {problem['msg']}"
            for problem in error.errors()
        )
        return JSONResponse(status_code=422, content={"detail": "invalid request", "message": problems})

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict:
        return {"status": "ok", "model_version": served.promoted_version()}

    @app.post("/v1/images", status_code=201, response_model=InspectionPublic, tags=["inspections"])
    def post_image(
        request: Request,
        file: Annotated[UploadFile, File(description="The image: JPEG, PNG, BMP or TIFF.")],
        camera_id: Annotated[str | None, Form(pattern=IDENTIFIER_PATTERN)] = None,
        part_id: Annotated[str | None, Form(pattern=IDENTIFIER_PATTERN)] = None,
    ) -> InspectionPublic:
        """Classify one image of a part; its explanation is queued for the explainer workers."""
        data = _read_upload(file, settings.max_upload_bytes)
        try:
            decoded = decode_image(data, settings.max_image_pixels)
        except InvalidImageError as error:
            status = UPLOAD_ERROR_STATUS[error.reason]
            logger.warning("Rejected upload %r from camera %s: %s", file.filename, camera_id, error)
            raise ApiError(status, error.reason, f"{file.filename or 'upload'}: {error.detail}") from error

        current = served.current()
        if current is None:
            raise ApiError(503, "no model version is promoted", "train a model first: nearcaipi train")
        model_version, classifier = current

        # One forward pass yields the verdict and the embedding that near hits and misses are found with.
        started = time.perf_counter()
        embeddings, p_values = embed(classifier, classifier.to_input(decoded.pixels))
        p_nok = float(p_values[0])
        latency_ms = (time.perf_counter() - started) * 1000.0

        # The bytes go to the object store before the record exists, so no record points at a missing image.
        image_id = uuid.uuid4().hex
        object_key = f"images/{image_id}.{decoded.suffix}"
        objects.put(object_key, data, f"image/{decoded.format.lower()}")
        image = ImageRecord(
            id=image_id,
            camera_id=camera_id,
            part_id=part_id,
            object_key=object_key,
            format=decoded.format,
            width=decoded.width,
            height=decoded.height,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        prediction = PredictionRecord(
            image_id=image_id,
            model_version=model_version,
            label=label_of(p_nok),
            p_nok=p_nok,
            latency_ms=latency_ms,
            embedding=embeddings[0].tobytes(),
        )
        records.add_inspection(image, prediction, EXPLANATION_METHOD)
        enqueue_explanation(image_id, model_version, EXPLANATION_METHOD)

        logger.info(
            "Image %s from camera %s: %s (p_nok %.3f, model version %d, %.0f ms)",
            image_id,
            camera_id,
            prediction.label,
            p_nok,
            model_version,
            latency_ms,
        )
        return _inspection(request, records.get_image(image_id))

    @app.get("/v1/images", response_model=list[InspectionPublic], tags=["inspections"])
    def list_images(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
        camera_id: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
    ) -> list[InspectionPublic]:
        """Recent inspections, newest first."""
        return [_inspection(request, image) for image in records.list_images(limit, offset, camera_id)]

    @app.get("/v1/images/{image_id}", response_model=InspectionPublic, tags=["inspections"])
    def get_image(request: Request, image_id: str) -> InspectionPublic:
        """One inspection: verdict, explanation status and links."""
        return _inspection(request, _find_image(image_id))

    @app.get("/v1/images/{image_id}/original", tags=["inspections"])
    def get_original(image_id: str) -> Response:
        """The image as the camera posted it."""
        image = _find_image(image_id)
        return Response(objects.get(image.object_key), media_type=f"image/{image.format.lower()}")

    @app.get("/v1/images/{image_id}/saliency.png", tags=["explanations"])
    def get_overlay(image_id: str) -> Response:
        """The InvRISE saliency map over the image, as a colour PNG."""
        return Response(_explanation_object(image_id, "overlay_key"), media_type="image/png")

    @app.get("/v1/images/{image_id}/saliency.npy", tags=["explanations"])
    def get_saliency_map(image_id: str) -> Response:
        """The raw saliency map: a NumPy .npy file of float32 with the image's H rows and W columns."""
        return Response(_explanation_object(image_id, "saliency_key"), media_type="application/octet-stream")

    @app.get("/v1/models/current", response_model=ModelVersionPublic, tags=["models"])
    def get_current_model() -> ModelVersionPublic:
        """The promoted model version and its metrics."""
        record = records.promoted_model_version()
        if record is None:
            raise ApiError(404, "no model version is promoted", "train a model first: nearcaipi train")
        return ModelVersionPublic.model_validate(record, from_attributes=True)

    def _find_image(image_id: str) -> ImageRecord:
        image = records.get_image(image_id) if IMAGE_ID_PATTERN.match(image_id) else None
        if image is None:
            raise ApiError(404, "image not found", f"no image has id {image_id!r}")
        return image

    def _explanation_object(image_id: str, key_field: str) -> bytes:
        image = _find_image(image_id)
        explanation = _latest_explanation(image)
        key = getattr(explanation, key_field) if explanation else None
        if key is None:
            status = explanation.status if explanation else "none"
            raise ApiError(404, "explanation not ready", f"the explanation of image {image_id} is {status}")
        try:
            return objects.get(key)
        except ObjectNotFoundError as error:
            raise HTTPException(500, "explanation object missing") from error

    return app


def _read_upload(file: UploadFile, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := file.file.read(UPLOAD_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "file too large", f"{file.filename or 'upload'} exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _latest_explanation(image: ImageRecord) -> ExplanationRecord | None:
    explanations = [item for item in image.explanations if item.method == EXPLANATION_METHOD]
    return explanations[-1] if explanations else None


def _inspection(request: Request, image: ImageRecord | None) -> InspectionPublic:
    assert image is not None
    prediction = image.predictions[-1] if image.predictions else None
    explanation = _latest_explanation(image)
    base = str(request.base_url).rstrip("/") + f"/v1/images/{image.id}"
    explanation_public = None
    if explanation is not None:
        done = explanation.status == "done"
        explanation_public = ExplanationPublic(
            status=explanation.status,
            method=explanation.method,
            model_version=explanation.model_version,
            target_class=CLASS_NAMES[explanation.target_class] if explanation.target_class is not None else None,
            flat=explanation.flat,
            seconds=explanation.seconds,
            error=explanation.error,
            overlay_url=f"{base}/saliency.png" if done else None,
            map_url=f"{base}/saliency.npy" if done else None,
        )
    return InspectionPublic(
        image_id=image.id,
        camera_id=image.camera_id,
        part_id=image.part_id,
        received_at=image.received_at,
        width=image.width,
        height=image.height,
        label=prediction.label if prediction else None,
        p_nok=prediction.p_nok if prediction else None,
        model_version=prediction.model_version if prediction else None,
        explanation=explanation_public,
        image_url=f"{base}/original",
        url=base,
    )
