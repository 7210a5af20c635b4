"""Inference API: cameras post images and get an OK/NOK verdict at once; explanations follow from the queue.

Run with ``uvicorn services.inference.app:create_app --factory``; settings come from the environment.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from nearcaipi.config import InferenceSettings
from nearcaipi.data import CLASS_NAMES
from nearcaipi.imaging import IDENTIFIER_PATTERN, InvalidImageError, decode_image
from nearcaipi.learning import defect_mask, encode_mask
from nearcaipi.logs import configure_logging
from nearcaipi.pipeline import ModelCache, ServedModel
from nearcaipi.pool import PoolIndex, embed_pool, predict_and_embed
from nearcaipi.queue import EXPLAIN_TASK, TRAIN_TASK, create_celery_app
from nearcaipi.selection import choose_for_review
from nearcaipi.storage.objects import ObjectNotFoundError, open_object_store
from nearcaipi.storage.records import (
    ExplanationRecord,
    ImageRecord,
    RecordStore,
    ReviewRecord,
    TrainingRunRecord,
)
from services.inference.schemas import (
    ExplanationPublic,
    InspectionPublic,
    ModelVersionPublic,
    NeighbourPublic,
    NeighboursPublic,
    RefutationPublic,
    ReviewPublic,
    ReviewRequest,
    Strategy,
    TrainingRunPublic,
    TrainingRunRequest,
)

logger = logging.getLogger(__name__)

EXPLANATION_METHOD = "invrise"
# A failed explanation is queued again at each start of the API until it has been tried this often.
MAX_EXPLANATION_ATTEMPTS = 3
IMAGE_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# The review queue ranks at most this many of the newest unreviewed images, so its cost stays bounded.
REVIEW_QUEUE_WINDOW = 10_000
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

    pools: dict[int, PoolIndex] = {}
    embedding_versions: set[int] = set()
    embedding_lock = threading.Lock()

    def embed_pool_in_background(version: int) -> None:
        """Embed every stored image that lacks a prediction under ``version``, in one thread per version at a time.

        A version promoted by a training run arrives embedded already. A version promoted by hand (a rollback)
        and images posted while another version was served are caught up here. A call while a run for the same
        version is going does nothing.
        """
        with embedding_lock:
            if version in embedding_versions:
                return
            embedding_versions.add(version)

        def work() -> None:
            try:
                embed_pool(records, objects, version, served.cache.get(version), settings.max_image_pixels)
            except Exception:
                logger.exception("Embedding the pool under model version %d failed; the next query retries", version)
            finally:
                with embedding_lock:
                    embedding_versions.discard(version)

        threading.Thread(target=work, name=f"embed-pool-v{version}", daemon=True).start()

    def pool_of(version: int) -> PoolIndex:
        # One codebook per served version; an older one is dropped when the served version changes.
        if version not in pools:
            pools.clear()
            pools[version] = PoolIndex(records, version)
            # Images posted while another version was served have no embedding under this one yet.
            embed_pool_in_background(version)
        return pools[version]

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
        promoted = records.promoted_model_version()
        if promoted is not None:
            embed_pool_in_background(promoted.version)
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
        image_id = uuid.uuid4().hex
        prediction = predict_and_embed(classifier, decoded.pixels, image_id, model_version)

        # The bytes go to the object store before the record exists, so no record points at a missing image.
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
        records.add_inspection(image, prediction, EXPLANATION_METHOD)
        enqueue_explanation(image_id, model_version, EXPLANATION_METHOD)

        logger.info(
            "Image %s from camera %s: %s (p_nok %.3f, model version %d, %.0f ms)",
            image_id,
            camera_id,
            prediction.label,
            prediction.p_nok,
            model_version,
            prediction.latency_ms,
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

    @app.get("/v1/images/{image_id}/neighbours", response_model=NeighboursPublic, tags=["reviews"])
    def get_neighbours(request: Request, image_id: str) -> NeighboursPublic:
        """Near hit and near miss of an image among all posted images, under the served model version.

        The class searched by is the image's reviewed label where one exists, else its prediction.
        """
        image = _find_image(image_id)
        version, classifier = _served_model()
        if records.get_prediction(image.id, version) is None:
            # Posted under an older version and not re-embedded yet: embed it now, once.
            _predict_and_store(image, version, classifier)

        pool = pool_of(version)
        found = pool.neighbours(image.id)
        base = str(request.base_url).rstrip("/") + "/v1/images/"

        def public(neighbour) -> NeighbourPublic | None:
            if neighbour is None:
                return None
            label, source = found.labels[neighbour.key]
            return NeighbourPublic(
                image_id=neighbour.key,
                similarity=round(neighbour.similarity, 6),
                label=label,
                label_source=source,
                image_url=f"{base}{neighbour.key}/original",
                url=f"{base}{neighbour.key}",
            )

        return NeighboursPublic(
            image_id=image.id,
            model_version=version,
            label=found.query_label,
            label_source=found.query_label_source,
            pool_size=len(pool),
            near_hit=public(found.found.near_hit),
            near_miss=public(found.found.near_miss),
        )

    @app.post("/v1/images/{image_id}/reviews", status_code=201, response_model=ReviewPublic, tags=["reviews"])
    def post_review(image_id: str, review: ReviewRequest) -> ReviewPublic:
        """Record a reviewer's label, explanation verdict and defect region for an image.

        The latest review of an image counts. Training runs from reviews learn from it.
        """
        image = _find_image(image_id)
        prediction = image.predictions[-1] if image.predictions else None
        if prediction is None:
            raise ApiError(409, "image has no prediction", f"image {image_id} was never classified")
        _check_defect_boxes(review, image)

        record = ReviewRecord(
            image_id=image.id,
            model_version=prediction.model_version,
            predicted_label=prediction.label,
            label=review.label,
            explanation_verdict=review.explanation,
            defect_boxes=[list(box) for box in review.defect_boxes],
            reviewer=review.reviewer,
            comment=review.comment,
        )
        if review.defect_boxes:
            # The mask beside the boxes is what training and later tooling read; it is stored before the record.
            mask = defect_mask(record, image.height, image.width)
            record.mask_key = f"masks/{image.id}/{uuid.uuid4().hex[:12]}.png"
            objects.put(record.mask_key, encode_mask(mask), "image/png")
        stored = records.add_review(record)
        logger.info(
            "Review %d of image %s by %s: %s (predicted %s), explanation %s, %d defect boxes",
            stored.id,
            image.id,
            review.reviewer or "an anonymous reviewer",
            review.label,
            prediction.label,
            review.explanation or "not judged",
            len(review.defect_boxes),
        )
        _maybe_queue_training_from_reviews()
        return ReviewPublic.model_validate(stored, from_attributes=True)

    @app.get("/v1/images/{image_id}/reviews", response_model=list[ReviewPublic], tags=["reviews"])
    def list_reviews(image_id: str) -> list[ReviewPublic]:
        """Return all reviews of an image, oldest first. The last one counts."""
        image = _find_image(image_id)
        return [ReviewPublic.model_validate(review, from_attributes=True) for review in image.reviews]

    @app.get("/v1/review-queue", response_model=list[InspectionPublic], tags=["reviews"])
    def get_review_queue(
        request: Request,
        strategy: Strategy = "al",
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        seed: Annotated[int, Query(ge=0)] = 0,
    ) -> list[InspectionPublic]:
        """Unreviewed images for the reviewer, as the selection strategy chooses them.

        random picks at random (reproducible with ``seed``); every other strategy puts the least confident
        predictions of the served version first. Only the newest 10,000 unreviewed images are ranked.
        """
        version, _ = _served_model()
        candidates = records.review_candidates(version, REVIEW_QUEUE_WINDOW)
        if not candidates:
            return []
        keys = [image_id for image_id, _ in candidates]
        p_nok = np.array([value for _, value in candidates], dtype=np.float64)
        chosen = choose_for_review(strategy, keys, p_nok, limit, np.random.default_rng(seed))
        return [_inspection(request, records.get_image(image_id)) for image_id in chosen]

    @app.post("/v1/training-runs", status_code=202, response_model=TrainingRunPublic, tags=["training"])
    def post_training_run(request_body: TrainingRunRequest) -> TrainingRunPublic:
        """Queue a training run that fine-tunes the served version on the data set plus all reviews so far."""
        if records.count_reviews() == 0:
            raise ApiError(409, "no reviews yet", "review at least one image before training from reviews")
        run = _queue_training_from_reviews(request_body.strategy, request_body.profile)
        return _training_run_public(run)

    @app.get("/v1/training-runs", response_model=list[TrainingRunPublic], tags=["training"])
    def list_training_runs(limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[TrainingRunPublic]:
        """Training runs, newest first."""
        return [_training_run_public(run) for run in records.list_training_runs(limit)]

    @app.get("/v1/training-runs/{run_id}", response_model=TrainingRunPublic, tags=["training"])
    def get_training_run(run_id: int) -> TrainingRunPublic:
        return _training_run_public(_find_training_run(run_id))

    @app.get("/v1/training-runs/{run_id}/refutations", response_model=list[RefutationPublic], tags=["training"])
    def list_refutations(run_id: int) -> list[RefutationPublic]:
        """The refutations a training run generated, each with its source image, review, generator and parameters."""
        _find_training_run(run_id)
        return [
            RefutationPublic.model_validate(refutation, from_attributes=True)
            for refutation in records.refutations_of_run(run_id)
        ]

    @app.post("/v1/models/{version}/promote", response_model=ModelVersionPublic, tags=["models"])
    def promote_model(version: int) -> ModelVersionPublic:
        """Serve this version from now on, for example to roll back to an earlier one."""
        if records.get_model_version(version) is None:
            raise ApiError(404, "model version not found", f"no model version {version} exists")
        records.promote(version)
        embed_pool_in_background(version)
        return ModelVersionPublic.model_validate(records.get_model_version(version), from_attributes=True)

    @app.get("/v1/models/current", response_model=ModelVersionPublic, tags=["models"])
    def get_current_model() -> ModelVersionPublic:
        """The promoted model version and its metrics."""
        record = records.promoted_model_version()
        if record is None:
            raise ApiError(404, "no model version is promoted", "train a model first: nearcaipi train")
        return ModelVersionPublic.model_validate(record, from_attributes=True)

    def _served_model():
        current = served.current()
        if current is None:
            raise ApiError(503, "no model version is promoted", "train a model first: nearcaipi train")
        return current

    def _predict_and_store(image: ImageRecord, version: int, classifier) -> None:
        pixels = decode_image(objects.get(image.object_key), settings.max_image_pixels).pixels
        records.add_prediction(predict_and_embed(classifier, pixels, image.id, version))

    def _queue_training_from_reviews(strategy: str, profile: str) -> TrainingRunRecord:
        promoted = records.promoted_model_version()
        if promoted is None:
            raise ApiError(503, "no model version is promoted", "train a model first: nearcaipi train")
        # No data folder is recorded: the trainer worker fine-tunes on its own configured data set.
        run_id = records.add_training_run(
            TrainingRunRecord(backbone=promoted.backbone, profile=profile, data_dir="", strategy=strategy)
        )
        try:
            celery.send_task(TRAIN_TASK, args=[run_id])
        except Exception as error:
            records.update_training_run(run_id, status="failed", error=f"queueing failed: {error}")
            logger.exception("Queueing training run %d failed", run_id)
            raise ApiError(503, "queue unavailable", f"training run {run_id} could not be queued: {error}") from error
        logger.info("Queued training run %d from reviews (strategy %s, profile %s)", run_id, strategy, profile)
        return records.get_training_run(run_id)

    def _maybe_queue_training_from_reviews() -> None:
        threshold = settings.retrain_after_reviews
        if threshold <= 0 or records.count_reviews_not_trained() < threshold:
            return
        if records.has_unfinished_training_run():
            return
        try:
            _queue_training_from_reviews(settings.retrain_strategy, "quick")
        except ApiError as error:
            # The review is stored either way; the next review tries again.
            logger.warning("Automatic training run not queued: %s", error.message)

    def _training_run_public(run: TrainingRunRecord) -> TrainingRunPublic:
        public = TrainingRunPublic.model_validate(run, from_attributes=True)
        if run.model_version is not None:
            version = records.get_model_version(run.model_version)
            public.model_status = version.status if version is not None else None
        return public

    def _find_training_run(run_id: int) -> TrainingRunRecord:
        run = records.get_training_run(run_id)
        if run is None:
            raise ApiError(404, "training run not found", f"no training run has id {run_id}")
        return run

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


def _check_defect_boxes(review: ReviewRequest, image: ImageRecord) -> None:
    if review.defect_boxes and review.label != "NOK":
        raise ApiError(422, "invalid defect box", "defect boxes are only allowed with the label NOK")
    for box in review.defect_boxes:
        left, top, right, bottom = box
        if not (0 <= left < right <= image.width and 0 <= top < bottom <= image.height):
            raise ApiError(
                422,
                "invalid defect box",
                f"box {list(box)} is not [left, top, right, bottom] with 0 <= left < right <= {image.width} "
                f"and 0 <= top < bottom <= {image.height} (the image is {image.width} x {image.height} pixels)",
            )


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
        review=ReviewPublic.model_validate(image.reviews[-1], from_attributes=True) if image.reviews else None,
        image_url=f"{base}/original",
        url=base,
    )
