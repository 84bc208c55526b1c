"""Object store on MinIO / any S3-compatible server, through the ``minio`` SDK."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from minio import Minio
from minio.error import S3Error

from labelloop.config import StorageSettings
from labelloop.storage.base import ObjectInfo, ObjectNotFound, ObjectStore, StorageError, check_key

_MISSING = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}
PART_SIZE = 16 * 1024 * 1024


class S3Store(ObjectStore):
    scheme = "s3"

    def __init__(self, settings: StorageSettings, client: Minio | None = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.client = client or Minio(
            settings.endpoint,
            access_key=settings.access_key.get_secret_value(),
            secret_key=settings.secret_key.get_secret_value(),
            secure=settings.secure,
            region=settings.region,
        )
        # Presigned URLs are signed for the host that will fetch them (annotators' browsers).
        self._presign_client = self.client
        if settings.public_endpoint and settings.public_endpoint != settings.endpoint:
            self._presign_client = Minio(
                settings.public_endpoint,
                access_key=settings.access_key.get_secret_value(),
                secret_key=settings.secret_key.get_secret_value(),
                secure=settings.secure,
                region=settings.region,
            )
        self._bucket_checked = False

    def ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        try:
            if not self.client.bucket_exists(self.bucket):
                if not self.settings.create_bucket:
                    raise StorageError(f"bucket {self.bucket!r} does not exist at {self.settings.endpoint}")
                self.client.make_bucket(self.bucket, location=self.settings.region)
        except S3Error as e:
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"bucket {self.bucket!r}: {e.code}: {e.message}") from e
        self._bucket_checked = True

    def put(
        self, key: str, data: bytes | BinaryIO, *, length: int | None = None, content_type: str | None = None
    ) -> ObjectInfo:
        # A single PUT (or a completed multipart upload) becomes visible all at once in S3.
        self.ensure_bucket()
        check_key(key)
        if isinstance(data, bytes | bytearray | memoryview):
            stream: BinaryIO = io.BytesIO(bytes(data))
            length = len(data)
        else:
            stream = data
        self.client.put_object(
            self.bucket,
            key,
            stream,
            length=length if length is not None else -1,
            part_size=PART_SIZE if length is None else 0,
            content_type=content_type or "application/octet-stream",
        )
        return self.stat(key)

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        self.ensure_bucket()
        self.client.fput_object(
            self.bucket, check_key(key), str(path), content_type=content_type or "application/octet-stream"
        )
        return self.stat(key)

    def get(self, key: str) -> bytes:
        self.ensure_bucket()
        try:
            resp = self.client.get_object(self.bucket, check_key(key))
        except S3Error as e:
            raise self._translate(e, key) from e
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def get_file(self, key: str, path: Path) -> Path:
        self.ensure_bucket()
        try:
            self.client.fget_object(self.bucket, check_key(key), str(path))
        except S3Error as e:
            raise self._translate(e, key) from e
        return Path(path)

    def stat(self, key: str) -> ObjectInfo:
        self.ensure_bucket()
        try:
            st = self.client.stat_object(self.bucket, check_key(key))
        except S3Error as e:
            raise self._translate(e, key) from e
        return ObjectInfo(
            key=key, size=st.size or 0, modified=st.last_modified, etag=st.etag, content_type=st.content_type
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.ensure_bucket()
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            if obj.is_dir:
                continue
            yield ObjectInfo(key=obj.object_name or "", size=obj.size or 0, modified=obj.last_modified, etag=obj.etag)

    def copy(self, src: str, dst: str) -> ObjectInfo:
        """A server-side copy (``CopyObject``): the bytes never pass through this process."""
        from minio.commonconfig import CopySource

        self.ensure_bucket()
        try:
            self.client.copy_object(self.bucket, check_key(dst), CopySource(self.bucket, check_key(src)))
        except S3Error as e:
            raise self._translate(e, src) from e
        return self.stat(dst)

    def delete(self, key: str) -> None:
        self.ensure_bucket()
        try:
            self.client.remove_object(self.bucket, check_key(key))
        except S3Error as e:
            if e.code not in _MISSING:
                raise

    def presigned_url(self, key: str, expires_s: int | None = None) -> str:
        self.stat(key)  # a URL for a missing object would only fail later, in a browser
        return self._presign_client.presigned_get_object(
            self.bucket, key, expires=dt.timedelta(seconds=expires_s or self.settings.presign_expiry_s)
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{check_key(key)}"

    @staticmethod
    def _translate(e: S3Error, key: str) -> Exception:
        if e.code in _MISSING:
            return ObjectNotFound(key)
        return StorageError(f"{key}: {e.code}: {e.message}")
