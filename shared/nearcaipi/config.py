"""Settings of the services, read once from the environment (prefix ``NEARCAIPI_``).

Two modes share one code path:

- ``embedded`` (the default): everything on one machine with no Docker. Records go to SQLite, objects to a
  local folder and queue messages to Celery's filesystem transport, all under ``NEARCAIPI_HOME``.
- ``production``: PostgreSQL, Redis and an S3 server (MinIO) by URL. Every URL and secret must then be set
  explicitly; nothing secret has a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nearcaipi.selection import STRATEGIES

if TYPE_CHECKING:
    from nearcaipi.explanation import ExplanationParameters

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "magnetic-tiles"

# Values that appear in examples and quick starts; a production stack must never run with them.
PLACEHOLDER_SECRETS = frozenset({"", "minioadmin", "changeme", "change-me", "password", "secret"})


class StackSettings(BaseSettings):
    """Locations of records, objects and queue messages; shared by every service."""

    model_config = SettingsConfigDict(env_prefix="NEARCAIPI_", extra="ignore")

    mode: Literal["embedded", "production"] = "embedded"
    home: Path = Field(
        default=PROJECT_ROOT / "var",
        description="State folder of the embedded mode; a relative path is taken from the current folder.",
    )
    database_url: str | None = None
    broker_url: str | None = None
    object_store_url: str | None = Field(
        default=None, description="file:///absolute/folder or s3://bucket (with the s3_* settings)."
    )
    s3_endpoint: str | None = Field(default=None, description="host:port of the S3 server, no scheme.")
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_secure: bool = False
    s3_region: str | None = None
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> StackSettings:
        self.home = self.home.expanduser().resolve()
        if self.mode == "embedded":
            self.database_url = self.database_url or f"sqlite:///{self.home / 'records.sqlite3'}"
            self.broker_url = self.broker_url or "filesystem://"
            self.object_store_url = self.object_store_url or (self.home / "objects").as_uri()
            return self

        missing = [
            f"NEARCAIPI_{name.upper()}"
            for name in ("database_url", "broker_url", "object_store_url")
            if not getattr(self, name)
        ]
        if missing:
            raise ValueError(f"production mode needs {', '.join(missing)} to be set")
        return self

    @model_validator(mode="after")
    def _check_s3_credentials(self) -> StackSettings:
        if not (self.object_store_url or "").startswith("s3://"):
            return self

        if not self.s3_endpoint:
            raise ValueError("an s3:// object store needs NEARCAIPI_S3_ENDPOINT (host:port)")
        if self.s3_access_key is None or self.s3_secret_key is None:
            raise ValueError("an s3:// object store needs NEARCAIPI_S3_ACCESS_KEY and NEARCAIPI_S3_SECRET_KEY")
        if self.mode == "production" and self.s3_secret_key.get_secret_value().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("NEARCAIPI_S3_SECRET_KEY is a placeholder; set a real secret in production mode")
        return self

    @property
    def queue_folder(self) -> Path:
        """Folder of the filesystem transport's messages (embedded mode)."""
        return self.home / "queue"


class ExplanationSettings(BaseSettings):
    """Parameters of InvRISE and RISE; the defaults are those of the NearCAIPI and RISE papers (N = 1000, s = 8)."""

    model_config = SettingsConfigDict(env_prefix="NEARCAIPI_EXPLANATION_", extra="ignore")

    masks: int = Field(default=1000, ge=1, description="Number of random masks N.")
    cells: int = Field(default=8, ge=2, description="Grid size s: each mask starts as an s x s grid.")
    keep_probability: float = Field(default=0.5, gt=0.0, lt=1.0, description="Probability p that a cell is kept.")
    batch_size: int = Field(default=100, ge=1, description="Masked images per forward pass.")
    seed: int = 0
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Data type of the masked forward passes; auto picks float16 on a GPU, bfloat16 on a CPU "
        "with native bfloat16, else float32.",
    )
    channels_last: bool = Field(default=True, description="Run the convolutions on NHWC tensors.")
    target_agreement: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Adaptive mode: stop once the map is predicted to correlate this well with the full-N map.",
    )
    min_masks: int = Field(default=200, ge=2, description="Adaptive mode: masks drawn before stopping is considered.")

    def parameters(self, device: str) -> ExplanationParameters:
        """Explanation parameters for a worker on ``device``, with "auto" precision resolved."""
        from nearcaipi.explanation import ExplanationParameters, resolve_precision
        from nearcaipi.models import select_device

        values = self.model_dump()
        values["precision"] = resolve_precision(self.precision, select_device(device))
        return ExplanationParameters(**values)


class InferenceSettings(StackSettings):
    """Settings of the inference API."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="Largest accepted width x height.")
    model_refresh_seconds: float = Field(default=2.0, ge=0.0, description="How often the served version is checked.")
    retrain_after_reviews: int = Field(
        default=0, ge=0, description="Queue a training run from reviews after this many new reviews; 0 turns it off."
    )
    # Subscripting Literal with the tuple lists its members, so only the known strategies pass validation.
    retrain_strategy: Literal[STRATEGIES] = Field(default="near_caipi", description="Selection strategy of those runs.")
    device: str = Field(default="auto", description="auto (CUDA when visible, else CPU), cpu, cuda or cuda:N.")
    torch_threads: int = Field(default=0, ge=0, description="0 leaves PyTorch's default.")


class ExplainerSettings(StackSettings):
    """Settings of the explainer worker."""

    device: str = Field(default="auto", description="auto (CUDA when visible, else CPU), cpu, cuda or cuda:N.")
    torch_threads: int = Field(default=0, ge=0, description="0 leaves PyTorch's default.")
    explanation: ExplanationSettings = Field(default_factory=ExplanationSettings)
    batch_images: int = Field(
        default=8, ge=1, description="Most images explained together when several are queued; 1 turns batching off."
    )
    claim_lease_seconds: float = Field(
        default=900.0,
        gt=0.0,
        description="How long an explanation claimed by one worker is left to it before another may take it over.",
    )


class TrainerSettings(StackSettings):
    """Settings of the trainer worker."""

    data_dir: Path | None = Field(default=None, description="Folder data set; see nearcaipi.data.resolve_data_dir.")
    training_profile: Literal["quick", "paper"] = "quick"
    backbone: str = "resnet18"
    split_seed: int = 0
    retrain_epochs: int = Field(default=10, ge=1, description="Epochs of fine-tuning in a training run from reviews.")
    backgrounds_dir: Path | None = Field(
        default=None,
        description="Images that refutations place defects on (such as NEU textures); default: OK training images.",
    )
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="Largest width x height read from the store.")
    device: str = Field(default="auto", description="auto (CUDA when visible, else CPU), cpu, cuda or cuda:N.")
    torch_threads: int = Field(default=0, ge=0, description="0 leaves PyTorch's default.")


class ConsoleSettings(BaseSettings):
    """Settings of the reviewer console, which reaches everything through the API."""

    model_config = SettingsConfigDict(env_prefix="NEARCAIPI_", extra="ignore")

    log_level: str = "INFO"
    api_url: str = "http://127.0.0.1:8000"
    page_size: int = Field(default=30, ge=1, le=500)
