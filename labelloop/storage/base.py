"""The object store interface: the few operations the pipeline needs, nothing more.

Keys are '/'-separated relative paths (``raw/ab/<sha>.jpg``). Every ``put`` is atomic: a reader
sees either the old object or the whole new one. A dataset version is published with
:func:`publish`, which writes its manifest only after every file it lists is stored and checked,
so "manifest exists" is the one test for "version is complete".
"""

from __future__ import annotations

import abc
import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from labelloop.storage.batch import BatchWriter

_BAD_KEY = re.compile(r"(^/)|(^|/)\.\.?(/|$)|\\|//")


class StorageError(RuntimeError):
    pass


class ObjectNotFound(StorageError, KeyError):
    def __str__(self) -> str:
        return f"object not found: {self.args[0]}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: dt.datetime | None = None
    etag: str | None = None
    content_type: str | None = None
    #: set by ``copy`` when the copy is a hard link to the source (no bytes were written)
    linked: bool = False


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root or alias another key."""
    if not key or _BAD_KEY.search(key):
        raise ValueError(f"invalid object key {key!r}: use a relative 'a/b/c' path without '..'")
    return key


class ObjectStore(abc.ABC):
    """Local folder or MinIO/S3; see :mod:`labelloop.storage.local` and ``.s3``."""

    scheme: str
    #: whether calls wait on a network (S3: run many at once on threads) rather than on local
    #: syscalls, which cost microseconds and only fight over the GIL when threaded
    remote_io: bool = True

    @abc.abstractmethod
    def put(
        self, key: str, data: bytes | BinaryIO, *, length: int | None = None, content_type: str | None = None
    ) -> ObjectInfo: ...

    @abc.abstractmethod
    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo: ...

    @abc.abstractmethod
    def get(self, key: str) -> bytes: ...

    def get_head(self, key: str, length: int) -> bytes:
        """The first ``length`` bytes of the object (fewer when it is shorter): enough to read an
        image's header without fetching its pixels. Stores override it with a ranged read."""
        return self.get(key)[:length]

    @abc.abstractmethod
    def get_file(self, key: str, path: Path) -> Path: ...

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursive), streamed, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing one is not an error."""

    @abc.abstractmethod
    def presigned_url(self, key: str, expires_s: int | None = None) -> str: ...

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """A stable URI for the object (file:///... or s3://bucket/key)."""

    def local_path(self, key: str) -> Path | None:
        """The object's path on this machine, when the store is a local folder."""
        return None

    def batch_writer(self, workdir: Path) -> BatchWriter:
        """A writer that stages objects and makes a whole batch durable at once (see
        :mod:`labelloop.storage.batch`); ``workdir`` is a local folder for staged files."""
        from labelloop.storage.batch import BatchWriter

        return BatchWriter(self, workdir)

    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Make ``dst`` hold the bytes of ``src`` (atomically, like ``put``).

        Stores override this with something cheaper than reading and writing the bytes: a hard
        link on a local folder, a server-side copy on S3. Both only suit immutable objects (a hard
        link shares the file), which is all the export uses it for (content-addressed images).
        """
        return self.put(dst, self.get(src))

    def put_text(self, key: str, text: str, content_type: str = "text/plain; charset=utf-8") -> ObjectInfo:
        return self.put(key, text.encode("utf-8"), content_type=content_type)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish(
    store: ObjectStore,
    prefix: str,
    files: Iterable[tuple[str, bytes | Path]],
    manifest_name: str,
    make_manifest: callable,
) -> ObjectInfo:  # type: ignore[valid-type]
    """Store ``files`` under ``prefix``, verify them, then write the manifest last.

    ``make_manifest(checksums)`` receives {relative name: (sha256, size)} and returns the manifest
    bytes. A crash anywhere before the final put leaves no manifest, so readers (which look for
    the manifest first) never see a partial version; a rerun overwrites the stray files.
    """
    prefix = prefix.rstrip("/")
    checksums: dict[str, tuple[str, int]] = {}
    for name, payload in files:
        key = check_key(f"{prefix}/{name}")
        if isinstance(payload, Path):
            digest = sha256_file(payload)
            info = store.put_file(key, payload)
        else:
            digest = sha256_bytes(payload)
            info = store.put(key, payload)
        checksums[name] = (digest, info.size)
    for name, (_digest, size) in checksums.items():
        got = store.stat(f"{prefix}/{name}")
        if got.size != size:
            raise StorageError(f"{prefix}/{name}: stored {got.size} bytes, expected {size}")
    manifest = make_manifest(checksums)
    key = f"{prefix}/{manifest_name}"
    if isinstance(manifest, Path):
        return store.put_file(key, manifest, content_type="application/json")
    return store.put(key, manifest, content_type="application/json")


def sha256_file(path: Path) -> str:
    """The sha256 of a local file, read in 1 MiB chunks (memory stays flat for any size)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
