"""Object storage: a local folder (default) or MinIO/S3, behind one interface."""

from __future__ import annotations

from labelloop.config import StorageSettings
from labelloop.storage.base import ObjectInfo, ObjectNotFound, ObjectStore, StorageError, publish
from labelloop.storage.local import LocalStore


def open_store(settings: StorageSettings) -> ObjectStore:
    if settings.backend == "local":
        return LocalStore(settings.root)
    from labelloop.storage.s3 import S3Store

    return S3Store(settings)


__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "StorageError",
    "open_store",
    "publish",
]
