"""Real services for end-to-end tests: uvicorn, Celery workers, PostgreSQL, Redis and an S3 server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from nearcaipi.config import PROJECT_ROOT, StackSettings
from nearcaipi.data import NOK, OK, discover_samples
from nearcaipi.models import Classifier
from nearcaipi.pipeline import publish_model
from nearcaipi.storage.objects import open_object_store
from nearcaipi.storage.records import RecordStore
from nearcaipi.training import TrainingProfile, train_classifier

POSTGRES_ADMIN_URL = os.environ.get("NEARCAIPI_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("NEARCAIPI_TEST_REDIS", "redis://127.0.0.1:6379/9")

TINY_PROFILE = TrainingProfile("tiny", input_size=32, max_epochs=2, patience=1, batch_size=8, learning_rate=0.01)

# Few masks keep each explanation at a fraction of a second on a CPU; the map's shape does not depend on N.
EXPLANATION_ENVIRONMENT = {"NEARCAIPI_EXPLANATION_MASKS": "48", "NEARCAIPI_EXPLANATION_BATCH_SIZE": "24"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServiceProcess:
    """A service started as its own process, with its output in a log file."""

    name: str
    process: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, name: str, command: list[str], environment: dict[str, str], log_dir: Path) -> ServiceProcess:
        log_path = log_dir / f"{name}.log"
        env = {**os.environ, **environment, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"}
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return cls(name, process, log_path)

    def log_tail(self, characters: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def api_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "services.inference.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def worker_command(module: str, queue: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", module, "worker", "-Q", queue, "--pool", "solo",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO", "-n", f"{queue}-{uuid.uuid4().hex[:6]}@%h",
    ]  # fmt: skip


@dataclass
class RunningStack:
    """A stack under test: its settings, the API's URL and the service processes."""

    environment: dict[str, str]
    api_url: str
    records: RecordStore
    model_version: int
    services: list[ServiceProcess] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(f"--- {service.name} ---\n{service.log_tail()}" for service in self.services)

    def wait_until_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for service in self.services:
                if service.process.poll() is not None:
                    pytest.fail(f"{service.name} exited with {service.process.returncode}\n{self.logs()}")
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"the API did not become healthy within {timeout} s\n{self.logs()}")


@pytest.fixture(scope="session")
def tiny_classifier(magnetic_tiles: Path) -> Classifier:
    """A ResNet-18 trained for two epochs on 24 real magnetic tiles at 32 x 32: small, fast and real."""
    samples = discover_samples(magnetic_tiles)
    ok = [sample for sample in samples if sample.label == OK][:16]
    nok = [sample for sample in samples if sample.label == NOK][:16]
    splits = {"train": ok[:12] + nok[:12], "validation": ok[12:] + nok[12:], "test": [], "pool": []}
    classifier, _ = train_classifier(splits, magnetic_tiles, "resnet18", TINY_PROFILE, pretrained=False, progress=False)
    return classifier


@pytest.fixture(scope="session")
def sample_images(magnetic_tiles: Path) -> list[Path]:
    """Three real images of different sizes: a blowhole, a crack and a defect-free tile."""
    samples = discover_samples(magnetic_tiles)
    picks = [
        next(sample for sample in samples if sample.group == "Blowhole"),
        next(sample for sample in samples if sample.group == "Crack"),
        next(sample for sample in samples if sample.group == "Free"),
    ]
    return [sample.path for sample in picks]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    import psycopg

    name = f"nearcaipi_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {error}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis database 9, emptied so that no message of an earlier run is delivered."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.ConnectionError as error:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable: {error}")
    return REDIS_URL


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An S3-compatible server on loopback: MinIO through testcontainers where a Docker engine runs, else moto."""
    minio = _start_minio_container()
    if minio is not None:
        container, settings = minio
        yield settings
        container.stop()
        return

    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"the S3 server did not start: {log_path.read_text(errors='replace')}")

    yield {
        "NEARCAIPI_S3_ENDPOINT": f"127.0.0.1:{port}",
        "NEARCAIPI_S3_ACCESS_KEY": "test-access-key",
        "NEARCAIPI_S3_SECRET_KEY": "test-secret-key",
        "NEARCAIPI_S3_REGION": "us-east-1",
    }
    process.terminate()
    process.wait(10)


def _start_minio_container():
    try:
        import docker
        from testcontainers.community.minio import MinioContainer
    except ImportError:
        return None
    try:
        docker.from_env().ping()
    except Exception:
        # No Docker engine here: the caller falls back to a local S3 server.
        return None

    container = MinioContainer("minio/minio:RELEASE.2024-06-13T22-53-53Z").start()
    config = container.get_config()
    return container, {
        "NEARCAIPI_S3_ENDPOINT": config["endpoint"],
        "NEARCAIPI_S3_ACCESS_KEY": config["access_key"],
        "NEARCAIPI_S3_SECRET_KEY": config["secret_key"],
    }


def start_stack(
    environment: dict[str, str], classifier: Classifier, log_dir: Path, workers: tuple[str, ...] = ("explainer",)
) -> RunningStack:
    """Publish the classifier into the stack's records and objects, then start the API and the workers."""
    settings = StackSettings(**{name.removeprefix("NEARCAIPI_").lower(): value for name, value in environment.items()})

    records = RecordStore(settings.database_url)
    records.create_schema()
    version = publish_model(classifier, records, open_object_store(settings), promote=True)

    port = free_port()
    stack = RunningStack(environment, f"http://127.0.0.1:{port}", records, version)
    stack.services.append(ServiceProcess.start("api", api_command(port), environment, log_dir))
    for worker in workers:
        command = worker_command(f"services.{worker}.worker", "explain" if worker == "explainer" else "train")
        stack.services.append(ServiceProcess.start(worker, command, environment, log_dir))
    stack.wait_until_healthy()
    return stack


@pytest.fixture(scope="module")
def production_stack(
    tiny_classifier: Classifier,
    postgres_url: str,
    redis_url: str,
    s3_server: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningStack]:
    environment = {
        "NEARCAIPI_MODE": "production",
        "NEARCAIPI_HOME": str(tmp_path_factory.mktemp("production-home")),
        "NEARCAIPI_DATABASE_URL": postgres_url,
        "NEARCAIPI_BROKER_URL": redis_url,
        "NEARCAIPI_OBJECT_STORE_URL": f"s3://nearcaipi-{uuid.uuid4().hex[:8]}",
        **s3_server,
        **EXPLANATION_ENVIRONMENT,
    }
    stack = start_stack(environment, tiny_classifier, tmp_path_factory.mktemp("production-logs"))
    yield stack
    for service in stack.services:
        service.stop()


@pytest.fixture(scope="module")
def embedded_stack(tiny_classifier: Classifier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    environment = {
        "NEARCAIPI_MODE": "embedded",
        "NEARCAIPI_HOME": str(tmp_path_factory.mktemp("embedded-home")),
        **EXPLANATION_ENVIRONMENT,
    }
    stack = start_stack(environment, tiny_classifier, tmp_path_factory.mktemp("embedded-logs"))
    yield stack
    for service in stack.services:
        service.stop()
