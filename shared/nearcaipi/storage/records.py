"""Records of images, predictions, explanations, model versions and training runs (SQLAlchemy).

SQLite in the embedded mode, PostgreSQL in production; the URL decides.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

logger = logging.getLogger(__name__)

EXPLANATION_QUEUED = "queued"
EXPLANATION_RUNNING = "running"
EXPLANATION_DONE = "done"
EXPLANATION_FAILED = "failed"

REVIEW_LABELS = ("OK", "NOK")
EXPLANATION_VERDICTS = ("right", "wrong")

MODEL_CANDIDATE = "candidate"
MODEL_PROMOTED = "promoted"
MODEL_RETIRED = "retired"


def _now() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp; SQLite drops the offset, so it is attached again on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"timestamp {value} has no timezone; use datetime.now(UTC)")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ImageRecord(Base):
    """An image posted by a camera; the bytes live in the object store under ``object_key``."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    camera_id: Mapped[str | None] = mapped_column(String(64), index=True)
    part_id: Mapped[str | None] = mapped_column(String(128), index=True)
    object_key: Mapped[str] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=_now, index=True)

    predictions: Mapped[list[PredictionRecord]] = relationship(back_populates="image", order_by="PredictionRecord.id")
    explanations: Mapped[list[ExplanationRecord]] = relationship(
        back_populates="image", order_by="ExplanationRecord.id"
    )
    reviews: Mapped[list[ReviewRecord]] = relationship(back_populates="image", order_by="ReviewRecord.id")


class PredictionRecord(Base):
    """The verdict of one model version on one image."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("image_id", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    model_version: Mapped[int] = mapped_column(ForeignKey("model_versions.version"))
    label: Mapped[str] = mapped_column(String(8))
    p_nok: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    """Penultimate-layer embedding of the image under this model version: float32 bytes (D values)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=_now)

    image: Mapped[ImageRecord] = relationship(back_populates="predictions")


class ExplanationRecord(Base):
    """A saliency map of one image under one model version and method, and the state of its task."""

    __tablename__ = "explanations"
    __table_args__ = (UniqueConstraint("image_id", "model_version", "method"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    model_version: Mapped[int] = mapped_column(ForeignKey("model_versions.version"))
    method: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=EXPLANATION_QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    saliency_key: Mapped[str | None] = mapped_column(String(256))
    overlay_key: Mapped[str | None] = mapped_column(String(256))
    target_class: Mapped[int | None] = mapped_column(Integer)
    flat: Mapped[bool | None] = mapped_column(Boolean)
    masks: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=_now)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=_now, onupdate=_now)

    image: Mapped[ImageRecord] = relationship(back_populates="explanations")


class ReviewRecord(Base):
    """A reviewer's judgement of one image: the label, the explanation and the marked defect region.

    The latest review of an image counts; earlier ones stay as history.
    """

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    model_version: Mapped[int] = mapped_column(ForeignKey("model_versions.version"))
    """The model version whose prediction the reviewer saw."""
    predicted_label: Mapped[str] = mapped_column(String(8))
    label: Mapped[str] = mapped_column(String(8))
    explanation_verdict: Mapped[str | None] = mapped_column(String(8))
    """right or wrong; None when the reviewer did not judge the explanation."""
    defect_boxes: Mapped[list[list[int]]] = mapped_column(JSON, default=list)
    """Defect regions as [left, top, right, bottom] pixel boxes of the original image, right and bottom exclusive."""
    mask_key: Mapped[str | None] = mapped_column(String(256))
    reviewer: Mapped[str | None] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    """The first training run that used this review."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=_now)

    image: Mapped[ImageRecord] = relationship(back_populates="reviews")


class RefutationRecord(Base):
    """A training image generated from a reviewed image, with its lineage: source, review, generator, parameters."""

    __tablename__ = "refutations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"))
    """The review that gave the label and region; None for a near hit or miss that was not reviewed."""
    training_run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id"), index=True)
    generator: Mapped[str] = mapped_column(String(16))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    label: Mapped[str] = mapped_column(String(8))
    object_key: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=_now)


class ModelVersionRecord(Base):
    """A trained model; exactly one version is promoted (served) at a time."""

    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backbone: Mapped[str] = mapped_column(String(32))
    input_size: Mapped[int] = mapped_column(Integer)
    checkpoint_key: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default=MODEL_CANDIDATE, index=True)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    validation_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    test_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    training: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    splits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=_now)
    promoted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class TrainingRunRecord(Base):
    """A request to train a model and what became of it."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    backbone: Mapped[str] = mapped_column(String(32))
    profile: Mapped[str] = mapped_column(String(16))
    data_dir: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    strategy: Mapped[str | None] = mapped_column(String(16))
    """Selection strategy when the run learns from reviews; None trains from the data set alone."""
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Counts of the additions of a run from reviews: reviewed images, near hits and misses, refutations."""
    model_version: Mapped[int | None] = mapped_column(ForeignKey("model_versions.version"))
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ExplanationBusyError(RuntimeError):
    """Another worker claimed this explanation recently; it may try again after ``retry_in`` seconds."""

    def __init__(self, explanation_id: int, retry_in: float) -> None:
        super().__init__(f"explanation {explanation_id} is running elsewhere; its claim expires in {retry_in:.0f} s")
        self.explanation_id = explanation_id
        self.retry_in = retry_in


@dataclass(frozen=True)
class PendingExplanation:
    image_id: str
    model_version: int
    method: str


@dataclass(frozen=True)
class EmbeddedPrediction:
    id: int
    image_id: str
    label: str
    embedding: bytes


def _enable_sqlite_concurrency(engine: Engine) -> None:
    # Several processes (API, workers, console) share one SQLite file: WAL lets readers run beside a writer.
    @event.listens_for(engine, "connect")
    def _on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


class RecordStore:
    """Reads and writes records; every method runs in its own transaction."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"timeout": 30})
            _enable_sqlite_concurrency(self.engine)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create missing tables; safe when several services start at once."""
        try:
            Base.metadata.create_all(self.engine)
        except (IntegrityError, ProgrammingError) as error:
            # Two processes creating the same PostgreSQL table race on its catalogue entry; the loser retries
            # once, by which time the tables exist.
            logger.info("Schema creation raced with another process (%s); checking again", error.orig)
            Base.metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Add columns introduced after a database was created; create_all only creates whole tables.

        NOTE: a stopgap for nullable columns until the schema is managed with Alembic migrations.
        """
        inspector = inspect(self.engine)
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present or not column.nullable:
                    continue
                column_type = column.type.compile(dialect=self.engine.dialect)
                with self.engine.begin() as connection:
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {column_type}'))
                logger.info("Added column %s.%s to an existing database", table.name, column.name)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # Inspections

    def add_inspection(
        self,
        image: ImageRecord,
        prediction: PredictionRecord,
        explanation_method: str | None,
    ) -> None:
        """Record an image, its prediction and its queued explanation in one transaction."""
        with self.session() as session:
            session.add(image)
            session.add(prediction)
            if explanation_method:
                session.add(
                    ExplanationRecord(
                        image_id=image.id,
                        model_version=prediction.model_version,
                        method=explanation_method,
                        status=EXPLANATION_QUEUED,
                    )
                )

    def get_image(self, image_id: str) -> ImageRecord | None:
        with self.session() as session:
            image = session.get(ImageRecord, image_id)
            if image is not None:
                _ = image.predictions, image.explanations, image.reviews
            return image

    def list_images(self, limit: int, offset: int = 0, camera_id: str | None = None) -> list[ImageRecord]:
        """Newest images first, with their predictions and explanations loaded."""
        with self.session() as session:
            query = select(ImageRecord).order_by(ImageRecord.received_at.desc(), ImageRecord.id)
            if camera_id:
                query = query.where(ImageRecord.camera_id == camera_id)
            images = list(session.scalars(query.limit(limit).offset(offset)))
            for image in images:
                _ = image.predictions, image.explanations, image.reviews
            return images

    # Explanations

    def claim_explanation(
        self, image_id: str, model_version: int, method: str, lease_seconds: float | None = None
    ) -> ExplanationRecord | None:
        """Mark an explanation as running; returns None when it is already done, so repeats do no work.

        An explanation with no record yet (asked for directly, not by ingest) gets one. With ``lease_seconds``,
        an explanation that another worker claimed less than that long ago is left to it.

        Raises:
            ExplanationBusyError: the explanation is running under a claim younger than the lease.
        """
        with self.session() as session:
            record = session.scalar(
                select(ExplanationRecord).where(
                    ExplanationRecord.image_id == image_id,
                    ExplanationRecord.model_version == model_version,
                    ExplanationRecord.method == method,
                )
            )
            if record is None:
                record = ExplanationRecord(image_id=image_id, model_version=model_version, method=method, attempts=0)
                session.add(record)
            elif record.status == EXPLANATION_DONE:
                return None
            elif record.status == EXPLANATION_RUNNING and lease_seconds is not None:
                age = (_now() - record.updated_at).total_seconds()
                if age < lease_seconds:
                    raise ExplanationBusyError(record.id, lease_seconds - age)
            record.status = EXPLANATION_RUNNING
            record.attempts = (record.attempts or 0) + 1
            record.error = None
            record.updated_at = _now()
            session.flush()
            return record

    def claim_queued_explanations(self, model_version: int, method: str, limit: int) -> list[ExplanationRecord]:
        """Claim up to ``limit`` queued explanations of one model version and method, oldest first.

        Each is claimed by a conditional update, so two workers never claim the same one.
        """
        if limit < 1:
            return []
        with self.session() as session:
            candidates = list(
                session.scalars(
                    select(ExplanationRecord.id)
                    .where(
                        ExplanationRecord.model_version == model_version,
                        ExplanationRecord.method == method,
                        ExplanationRecord.status == EXPLANATION_QUEUED,
                    )
                    .order_by(ExplanationRecord.id)
                    .limit(limit)
                )
            )
        claimed: list[ExplanationRecord] = []
        for explanation_id in candidates:
            with self.session() as session:
                result = session.execute(
                    update(ExplanationRecord)
                    .where(ExplanationRecord.id == explanation_id, ExplanationRecord.status == EXPLANATION_QUEUED)
                    .values(
                        status=EXPLANATION_RUNNING,
                        attempts=ExplanationRecord.attempts + 1,
                        error=None,
                        updated_at=_now(),
                    )
                )
                if result.rowcount == 1:
                    claimed.append(session.get(ExplanationRecord, explanation_id))
        return claimed

    def finish_explanation(self, explanation_id: int, **fields: Any) -> None:
        with self.session() as session:
            session.execute(
                update(ExplanationRecord)
                .where(ExplanationRecord.id == explanation_id)
                .values(status=EXPLANATION_DONE, error=None, updated_at=_now(), **fields)
            )

    def fail_explanation(self, explanation_id: int, error: str) -> None:
        with self.session() as session:
            session.execute(
                update(ExplanationRecord)
                .where(ExplanationRecord.id == explanation_id)
                .values(status=EXPLANATION_FAILED, error=error[:4000], updated_at=_now())
            )

    def unfinished_explanations(self, max_attempts: int, limit: int = 10_000) -> list[PendingExplanation]:
        """Explanations whose task may have been lost, oldest first.

        These are the queued and running ones, and the failed ones tried fewer than ``max_attempts`` times.
        """
        with self.session() as session:
            unfinished = ExplanationRecord.status.in_((EXPLANATION_QUEUED, EXPLANATION_RUNNING))
            retryable = (ExplanationRecord.status == EXPLANATION_FAILED) & (ExplanationRecord.attempts < max_attempts)
            rows = session.execute(
                select(ExplanationRecord.image_id, ExplanationRecord.model_version, ExplanationRecord.method)
                .where(unfinished | retryable)
                .order_by(ExplanationRecord.id)
                .limit(limit)
            )
            return [PendingExplanation(*row) for row in rows]

    # Model versions

    def register_model_version(self, record: ModelVersionRecord, promote: bool) -> int:
        with self.session() as session:
            session.add(record)
            session.flush()
            version = record.version
        if promote:
            self.promote(version)
        logger.info("Registered model version %d (%s)%s", version, record.backbone, ", promoted" if promote else "")
        return version

    def promote(self, version: int) -> None:
        """Serve this version from now on; the previously promoted one is retired."""
        with self.session() as session:
            if session.get(ModelVersionRecord, version) is None:
                raise LookupError(f"model version {version} does not exist")
            session.execute(
                update(ModelVersionRecord)
                .where(ModelVersionRecord.status == MODEL_PROMOTED, ModelVersionRecord.version != version)
                .values(status=MODEL_RETIRED)
            )
            session.execute(
                update(ModelVersionRecord)
                .where(ModelVersionRecord.version == version)
                .values(status=MODEL_PROMOTED, promoted_at=_now())
            )
        logger.info("Promoted model version %d", version)

    def promoted_model_version(self) -> ModelVersionRecord | None:
        with self.session() as session:
            return session.scalar(
                select(ModelVersionRecord)
                .where(ModelVersionRecord.status == MODEL_PROMOTED)
                .order_by(ModelVersionRecord.version.desc())
            )

    def get_model_version(self, version: int) -> ModelVersionRecord | None:
        with self.session() as session:
            return session.get(ModelVersionRecord, version)

    # Training runs

    def add_training_run(self, record: TrainingRunRecord) -> int:
        with self.session() as session:
            session.add(record)
            session.flush()
            return record.id

    def get_training_run(self, run_id: int) -> TrainingRunRecord | None:
        with self.session() as session:
            return session.get(TrainingRunRecord, run_id)

    def update_training_run(self, run_id: int, **fields: Any) -> None:
        with self.session() as session:
            session.execute(update(TrainingRunRecord).where(TrainingRunRecord.id == run_id).values(**fields))

    def list_training_runs(self, limit: int = 50) -> list[TrainingRunRecord]:
        """Newest training runs first."""
        with self.session() as session:
            return list(session.scalars(select(TrainingRunRecord).order_by(TrainingRunRecord.id.desc()).limit(limit)))

    def has_unfinished_training_run(self) -> bool:
        with self.session() as session:
            return (
                session.scalar(
                    select(func.count())
                    .select_from(TrainingRunRecord)
                    .where(TrainingRunRecord.status.in_(("queued", "running")))
                )
                > 0
            )

    # Predictions under later model versions

    def add_prediction(self, prediction: PredictionRecord) -> bool:
        """Store a prediction; returns False when the image already has one under that model version."""
        try:
            with self.session() as session:
                session.add(prediction)
        except IntegrityError:
            return False
        return True

    def get_prediction(self, image_id: str, model_version: int) -> PredictionRecord | None:
        with self.session() as session:
            return session.scalar(
                select(PredictionRecord).where(
                    PredictionRecord.image_id == image_id, PredictionRecord.model_version == model_version
                )
            )

    def images_without_prediction(self, model_version: int, limit: int) -> list[ImageRecord]:
        """Images that have no prediction under ``model_version`` yet, oldest first."""
        with self.session() as session:
            predicted = select(PredictionRecord.image_id).where(PredictionRecord.model_version == model_version)
            return list(
                session.scalars(
                    select(ImageRecord)
                    .where(ImageRecord.id.not_in(predicted))
                    .order_by(ImageRecord.received_at, ImageRecord.id)
                    .limit(limit)
                )
            )

    def embedded_predictions(self, model_version: int, after_id: int = 0) -> list[EmbeddedPrediction]:
        """Predictions under ``model_version`` that carry an embedding, with ids above ``after_id``, in id order."""
        with self.session() as session:
            rows = session.execute(
                select(
                    PredictionRecord.id, PredictionRecord.image_id, PredictionRecord.label, PredictionRecord.embedding
                )
                .where(
                    PredictionRecord.model_version == model_version,
                    PredictionRecord.id > after_id,
                    PredictionRecord.embedding.is_not(None),
                )
                .order_by(PredictionRecord.id)
            )
            return [EmbeddedPrediction(*row) for row in rows]

    # Reviews

    def add_review(self, review: ReviewRecord) -> ReviewRecord:
        with self.session() as session:
            session.add(review)
            session.flush()
            return review

    def latest_reviews(self, image_ids: Iterable[str] | None = None) -> dict[str, ReviewRecord]:
        """Return the latest review of each reviewed image (of ``image_ids`` when given), keyed by image id."""
        with self.session() as session:
            latest = select(func.max(ReviewRecord.id)).group_by(ReviewRecord.image_id)
            query = select(ReviewRecord).where(ReviewRecord.id.in_(latest))
            if image_ids is not None:
                query = query.where(ReviewRecord.image_id.in_(list(image_ids)))
            return {review.image_id: review for review in session.scalars(query)}

    def count_reviews_not_trained(self) -> int:
        """Reviews that no training run has used yet."""
        with self.session() as session:
            return session.scalar(
                select(func.count()).select_from(ReviewRecord).where(ReviewRecord.training_run_id.is_(None))
            )

    def mark_reviews_trained(self, review_ids: Sequence[int], training_run_id: int) -> None:
        with self.session() as session:
            session.execute(
                update(ReviewRecord)
                .where(ReviewRecord.id.in_(list(review_ids)), ReviewRecord.training_run_id.is_(None))
                .values(training_run_id=training_run_id)
            )

    def review_candidates(self, model_version: int, limit: int) -> list[tuple[str, float]]:
        """Unreviewed images with a prediction under ``model_version``: (image id, p_nok), newest first."""
        with self.session() as session:
            reviewed = select(ReviewRecord.image_id)
            rows = session.execute(
                select(PredictionRecord.image_id, PredictionRecord.p_nok)
                .where(PredictionRecord.model_version == model_version, PredictionRecord.image_id.not_in(reviewed))
                .order_by(PredictionRecord.id.desc())
                .limit(limit)
            )
            return [(image_id, p_nok) for image_id, p_nok in rows]

    # Refutations

    def add_refutations(self, refutations: Sequence[RefutationRecord]) -> None:
        with self.session() as session:
            session.add_all(refutations)

    def refutations_of_run(self, training_run_id: int) -> list[RefutationRecord]:
        with self.session() as session:
            return list(
                session.scalars(
                    select(RefutationRecord)
                    .where(RefutationRecord.training_run_id == training_run_id)
                    .order_by(RefutationRecord.id)
                )
            )

    def count_reviews(self) -> int:
        with self.session() as session:
            return session.scalar(select(func.count()).select_from(ReviewRecord))
