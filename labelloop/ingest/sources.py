"""Where files come from: a local folder (walked recursively) or an S3/MinIO prefix.

``files()`` is a generator in both cases, so a source with 100k files is never held in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from labelloop.config import StorageSettings


@dataclass(frozen=True)
class SourceFile:
    uri: str  # the original name, kept as the item's alias
    size: int | None
    ref: str  # local path, or object key


class Source:
    """A place files are read from; see :func:`open_source`."""

    description: str

    def files(self) -> Iterator[SourceFile]:
        raise NotImplementedError

    def _copy(self, src: SourceFile, out) -> None:  # type: ignore[no-untyped-def]
        raise NotImplementedError

    @contextmanager
    def materialize(self, src: SourceFile, workdir: Path) -> Iterator[Path]:
        """A private local copy of the bytes, read once: hashing, probing and storing then all
        see the same content even if the source changes meanwhile. Removed afterwards."""
        fd, tmp = tempfile.mkstemp(dir=workdir, prefix="ingest-")
        tmp_path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                self._copy(src, out)
            yield tmp_path
        finally:
            tmp_path.unlink(missing_ok=True)


class LocalSource(Source):
    def __init__(self, root: Path, follow_symlinks: bool = False) -> None:
        self.root = root.expanduser().resolve()
        self.follow_symlinks = follow_symlinks
        if not self.root.exists():
            raise FileNotFoundError(f"source {self.root} does not exist")
        self.description = str(self.root)

    def files(self) -> Iterator[SourceFile]:
        """Files in a stable (sorted, depth-first) order; hidden files and folders are skipped."""
        if self.root.is_file():
            yield SourceFile(uri=self.root.as_uri(), size=self.root.stat().st_size, ref=str(self.root))
            return
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            subdirs = []
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=self.follow_symlinks):
                    subdirs.append(Path(e.path))
                elif e.is_file(follow_symlinks=self.follow_symlinks):
                    try:
                        size: int | None = e.stat(follow_symlinks=self.follow_symlinks).st_size
                    except OSError:
                        size = None
                    yield SourceFile(uri=Path(e.path).as_uri(), size=size, ref=e.path)
            stack.extend(reversed(subdirs))

    def _copy(self, src: SourceFile, out) -> None:  # type: ignore[no-untyped-def]
        with open(src.ref, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")


class S3Source(Source):
    """Objects under an S3 prefix, on the object store's endpoint and with its credentials."""

    def __init__(self, uri: str, storage: StorageSettings) -> None:
        from minio import Minio

        self.bucket, self.prefix = parse_s3_uri(uri)
        self.client = Minio(
            storage.endpoint,
            access_key=storage.access_key.get_secret_value(),
            secret_key=storage.secret_key.get_secret_value(),
            secure=storage.secure,
            region=storage.region,
        )
        if not self.client.bucket_exists(self.bucket):
            raise FileNotFoundError(f"source bucket {self.bucket!r} does not exist at {storage.endpoint}")
        self.description = uri

    def files(self) -> Iterator[SourceFile]:
        for obj in self.client.list_objects(self.bucket, prefix=self.prefix, recursive=True):
            name = obj.object_name or ""
            if obj.is_dir or not name or name.rsplit("/", 1)[-1].startswith("."):
                continue
            yield SourceFile(uri=f"s3://{self.bucket}/{name}", size=obj.size, ref=name)

    def _copy(self, src: SourceFile, out) -> None:  # type: ignore[no-untyped-def]
        resp = self.client.get_object(self.bucket, src.ref)
        try:
            for chunk in resp.stream(1 << 20):
                out.write(chunk)
        finally:
            resp.close()
            resp.release_conn()


def open_source(source: str, storage: StorageSettings, follow_symlinks: bool = False) -> Source:
    if source.startswith("s3://"):
        return S3Source(source, storage)
    path = Path(unquote(urlparse(source).path)) if source.startswith("file://") else Path(source)
    return LocalSource(path, follow_symlinks)
