"""Response bodies of the inference API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


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
    image_url: str
    url: str


class ModelVersionPublic(BaseModel):
    version: int
    backbone: str
    input_size: int
    status: str
    created_at: datetime
    promoted_at: datetime | None
    validation_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
