"""Response bodies of the inference API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from nearcaipi.selection import STRATEGIES

# Subscripting Literal with the tuple lists its members, so the API accepts exactly the known strategies.
Strategy = Literal[STRATEGIES]


class ExplanationPublic(BaseModel):
    """State of an image's saliency map; the URLs appear once it is done."""

    status: str = Field(description="queued, running, done or failed")
    method: str
    model_version: int
    target_class: str | None = Field(
        default=None, description="The class whose evidence the map shows: the predicted one, OK or NOK"
    )
    flat: bool | None = Field(default=None, description="True when the model ignored the masks: no evidence shown")
    seconds: float | None = None
    error: str | None = None
    overlay_url: str | None = None
    map_url: str | None = None


class ReviewRequest(BaseModel):
    """A reviewer's judgement: the right label, whether the explanation points at the defect, the defect region."""

    label: Literal["OK", "NOK"]
    explanation: Literal["right", "wrong"] | None = Field(
        default=None, description="right when the saliency map points at the defect, wrong otherwise"
    )
    defect_boxes: list[tuple[int, int, int, int]] = Field(
        default_factory=list,
        max_length=50,
        description="Defect regions as [left, top, right, bottom] in pixels of the original image; "
        "right and bottom are exclusive. Only for NOK.",
    )
    reviewer: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    comment: str | None = Field(default=None, max_length=2000)


class ReviewPublic(BaseModel):
    id: int
    image_id: str
    model_version: int
    predicted_label: str
    label: str
    explanation_verdict: str | None
    defect_boxes: list[list[int]]
    reviewer: str | None
    comment: str | None
    training_run_id: int | None = Field(description="The first training run that learnt from this review")
    created_at: datetime


class InspectionPublic(BaseModel):
    """An image, the served model's verdict on it and its explanation."""

    image_id: str
    camera_id: str | None
    part_id: str | None
    received_at: datetime
    width: int
    height: int
    label: str | None = Field(description="OK or NOK")
    p_nok: float | None = Field(description="Probability of NOK in [0, 1]")
    model_version: int | None
    explanation: ExplanationPublic | None
    review: ReviewPublic | None = Field(default=None, description="The latest review, if any")
    image_url: str
    url: str


class NeighbourPublic(BaseModel):
    image_id: str
    similarity: float = Field(description="Cosine similarity of the penultimate-layer embeddings, in [-1, 1]")
    label: str
    label_source: str = Field(description="review or prediction")
    image_url: str
    url: str


class NeighboursPublic(BaseModel):
    """Near hit (most similar image of the same class) and near miss (most similar of the other class)."""

    image_id: str
    model_version: int
    label: str = Field(description="The class the neighbours were searched by")
    label_source: str = Field(description="review or prediction")
    pool_size: int
    near_hit: NeighbourPublic | None
    near_miss: NeighbourPublic | None


class TrainingRunRequest(BaseModel):
    """A training run that learns from all reviews so far."""

    strategy: Strategy = "near_caipi"
    profile: Literal["quick", "paper"] = "quick"


class TrainingRunPublic(BaseModel):
    id: int
    status: str
    backbone: str
    profile: str
    strategy: str | None
    seed: int
    summary: dict[str, Any] | None
    model_version: int | None
    model_status: str | None = Field(
        default=None, description="promoted, candidate (worse than the served version, kept) or retired"
    )
    error: str | None
    requested_at: datetime
    finished_at: datetime | None


class RefutationPublic(BaseModel):
    """A generated training image and where it came from."""

    id: int
    source_image_id: str
    review_id: int | None
    training_run_id: int
    generator: str
    parameters: dict[str, Any]
    label: str
    object_key: str
    created_at: datetime


class ModelVersionPublic(BaseModel):
    version: int
    backbone: str
    input_size: int
    status: str
    created_at: datetime
    promoted_at: datetime | None
    validation_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
