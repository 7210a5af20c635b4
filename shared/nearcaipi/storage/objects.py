"""Object storage for images, saliency maps, overlays and checkpoints: a local folder or an S3 bucket."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

from nearcaipi.config import StackSettings

logger = logging.getLogger(__name__)


class ObjectNotFoundError(KeyError):
    """No object is stored under the key."""


class ObjectStore(Protocol):
    """Bytes by key. Writing the same key twice replaces the object, so retried tasks are harmless."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid object key {key!r}: use relative keys like 'images/abc.jpg'")
    return key


class LocalObjectStore:
    """Objects as files below a folder; writes go through a temporary file and an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(scratch, path)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as error:
            raise ObjectNotFoundError(key) from error

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


class S3ObjectStore:
    """Objects in one bucket of an S3-compatible server (MinIO in production)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str | None = None,
    ) -> None:
        from minio import Minio

        self.bucket = bucket
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region)
        if not self.client.bucket_exists(bucket):
            self.client.make_bucket(bucket)
            logger.info("Created bucket %s on %s", bucket, endpoint)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(self.bucket, _check_key(key), io.BytesIO(data), len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, _check_key(key))
        except S3Error as error:
            if error.code == "NoSuchKey":
                raise ObjectNotFoundError(key) from error
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, _check_key(key))
        except S3Error as error:
            if error.code in ("NoSuchKey", "NotFound"):
                return False
            raise
        return True


def open_object_store(settings: StackSettings) -> ObjectStore:
    """Open the store that NEARCAIPI_OBJECT_STORE_URL names: file:///folder or s3://bucket."""
    url = urlparse(settings.object_store_url or "")
    if url.scheme == "file":
        return LocalObjectStore(Path(url2pathname(url.path)))

    if url.scheme == "s3":
        if not url.netloc:
            raise ValueError(f"object store URL {settings.object_store_url!r} names no bucket: use s3://bucket")
        # StackSettings has already rejected an s3:// URL without endpoint and keys.
        assert settings.s3_endpoint is not None
        assert settings.s3_access_key is not None
        assert settings.s3_secret_key is not None
        return S3ObjectStore(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            bucket=url.netloc,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )

    raise ValueError(f"unsupported object store URL {settings.object_store_url!r}: use file:///folder or s3://bucket")
