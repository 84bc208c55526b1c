"""Object store on MinIO / any S3-compatible server, through the ``minio`` SDK.

Every failure names the server's URL, the bucket, the key and the step (``S3 get of
labelloop/items/ab.jpg at http://minio:9000: ...``): the SDK's own errors (an ``S3Error`` code, or
urllib3's "Max retries exceeded" once its own retries of 5xx and connection errors are spent) say
neither where nor what. A missing object stays :class:`ObjectNotFound`.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from minio import Minio
from minio.error import MinioException, S3Error
from urllib3.exceptions import HTTPError as Urllib3Error

from labelloop.config import StorageSettings
from labelloop.storage.base import ObjectInfo, ObjectNotFound, ObjectStore, StorageError, check_key

_MISSING = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}
PART_SIZE = 16 * 1024 * 1024


class S3Store(ObjectStore):
    scheme = "s3"

    def __init__(self, settings: StorageSettings, client: Minio | None = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._own_client = client is None
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

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.settings.secure else 'http'}://{self.settings.endpoint}"

    def _error(self, step: str, key: str | None, e: Exception) -> StorageError:
        where = f"{self.bucket}/{key}" if key is not None else f"bucket {self.bucket}"
        # an S3 error code, or: connection refused, timeouts, retries exhausted, a non-S3 answer
        why = f"{e.code}: {e.message}" if isinstance(e, S3Error) else f"{type(e).__name__}: {e}"
        return StorageError(f"S3 {step} of {where} at {self.endpoint_url}: {why}")

    def ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        try:
            if not self.client.bucket_exists(self.bucket):
                if not self.settings.create_bucket:
                    raise StorageError(f"bucket {self.bucket!r} does not exist at {self.endpoint_url}")
                self.client.make_bucket(self.bucket, location=self.settings.region)
        except S3Error as e:
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error("bucket check", None, e) from e
        except (MinioException, Urllib3Error, OSError) as e:
            raise self._error("bucket check", None, e) from e
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
        try:
            self.client.put_object(
                self.bucket,
                key,
                stream,
                length=length if length is not None else -1,
                part_size=PART_SIZE if length is None else 0,
                content_type=content_type or "application/octet-stream",
            )
        except (MinioException, Urllib3Error) as e:
            raise self._error("put", key, e) from e
        return self.stat(key)

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        self.ensure_bucket()
        try:
            self.client.fput_object(
                self.bucket, check_key(key), str(path), content_type=content_type or "application/octet-stream"
            )
        except (MinioException, Urllib3Error) as e:
            raise self._error("put", key, e) from e
        return self.stat(key)

    def get(self, key: str) -> bytes:
        self.ensure_bucket()
        try:
            resp = self.client.get_object(self.bucket, check_key(key))
        except S3Error as e:
            raise self._translate(e, key, "get") from e
        except (MinioException, Urllib3Error) as e:
            raise self._error("get", key, e) from e
        try:
            return resp.read()
        except (Urllib3Error, OSError) as e:  # the connection died mid-body
            raise self._error("get", key, e) from e
        finally:
            resp.close()
            resp.release_conn()

    def get_head(self, key: str, length: int) -> bytes:
        self.ensure_bucket()
        try:
            resp = self.client.get_object(self.bucket, check_key(key), offset=0, length=length)
        except S3Error as e:
            raise self._translate(e, key, "get head") from e
        except (MinioException, Urllib3Error) as e:
            raise self._error("get head", key, e) from e
        try:
            return resp.read()
        except (Urllib3Error, OSError) as e:
            raise self._error("get head", key, e) from e
        finally:
            resp.close()
            resp.release_conn()

    def get_file(self, key: str, path: Path) -> Path:
        self.ensure_bucket()
        try:
            self.client.fget_object(self.bucket, check_key(key), str(path))
        except S3Error as e:
            raise self._translate(e, key, "get") from e
        except (MinioException, Urllib3Error) as e:
            raise self._error("get", key, e) from e
        return Path(path)

    def stat(self, key: str) -> ObjectInfo:
        self.ensure_bucket()
        try:
            st = self.client.stat_object(self.bucket, check_key(key))
        except S3Error as e:
            raise self._translate(e, key, "stat") from e
        except (MinioException, Urllib3Error) as e:
            raise self._error("stat", key, e) from e
        return ObjectInfo(
            key=key, size=st.size or 0, modified=st.last_modified, etag=st.etag, content_type=st.content_type
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.ensure_bucket()
        try:
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.is_dir:
                    continue
                yield ObjectInfo(
                    key=obj.object_name or "", size=obj.size or 0, modified=obj.last_modified, etag=obj.etag
                )
        except (MinioException, Urllib3Error) as e:
            raise self._error("list", prefix + "*", e) from e

    def __reduce__(self) -> tuple[type[S3Store], tuple[StorageSettings]]:
        """Pickled as its settings (a worker process builds its own client); a store built around
        a client given by the caller cannot be re-created elsewhere, so it refuses."""
        if not self._own_client:
            raise TypeError("an S3Store with a caller-supplied client cannot be pickled")
        return (type(self), (self.settings,))

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
                raise self._error("delete", key, e) from e
        except (MinioException, Urllib3Error) as e:
            raise self._error("delete", key, e) from e

    def presigned_url(self, key: str, expires_s: int | None = None) -> str:
        self.stat(key)  # a URL for a missing object would only fail later, in a browser
        return self._presign_client.presigned_get_object(
            self.bucket, key, expires=dt.timedelta(seconds=expires_s or self.settings.presign_expiry_s)
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{check_key(key)}"

    def _translate(self, e: S3Error, key: str, step: str) -> Exception:
        if e.code in _MISSING:
            return ObjectNotFound(key)
        return self._error(step, key, e)
