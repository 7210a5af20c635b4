"""Settings: embedded defaults, and production settings that demand explicit URLs and real secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from nearcaipi.config import StackSettings


def test_embedded_mode_fills_local_defaults(tmp_path: Path) -> None:
    settings = StackSettings(home=tmp_path)

    assert settings.database_url == f"sqlite:///{tmp_path / 'records.sqlite3'}"
    assert settings.broker_url == "filesystem://"
    assert settings.object_store_url == (tmp_path / "objects").as_uri()


def test_production_mode_needs_every_url() -> None:
    with pytest.raises(ValidationError, match="NEARCAIPI_DATABASE_URL, NEARCAIPI_BROKER_URL"):
        StackSettings(mode="production", object_store_url="s3://parts", s3_endpoint="minio:9000")


def test_s3_store_needs_keys() -> None:
    with pytest.raises(ValidationError, match="NEARCAIPI_S3_ACCESS_KEY and NEARCAIPI_S3_SECRET_KEY"):
        StackSettings(object_store_url="s3://parts", s3_endpoint="minio:9000")


def test_placeholder_secret_is_rejected_in_production() -> None:
    with pytest.raises(ValidationError, match="NEARCAIPI_S3_SECRET_KEY is a placeholder"):
        StackSettings(
            mode="production",
            database_url="postgresql+psycopg://inspector@db/nearcaipi",
            broker_url="redis://redis:6379/0",
            object_store_url="s3://parts",
            s3_endpoint="minio:9000",
            s3_access_key="inspector",
            s3_secret_key="minioadmin",
        )


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEARCAIPI_HOME", str(tmp_path))
    monkeypatch.setenv("NEARCAIPI_BROKER_URL", "redis://127.0.0.1:6379/3")

    settings = StackSettings()

    assert settings.home == tmp_path
    assert settings.broker_url == "redis://127.0.0.1:6379/3"


def test_retrain_strategy_names_match_selection() -> None:
    from typing import get_args

    from nearcaipi.config import InferenceSettings
    from nearcaipi.selection import STRATEGIES

    allowed = get_args(InferenceSettings.model_fields["retrain_strategy"].annotation)

    assert allowed == STRATEGIES
