"""Where files come from: a local folder (walked recursively) or an S3/MinIO prefix.

``files()`` is a generator in both cases, so a source with 100k files is never held in memory.
Every entry it meets comes out as a :class:`SourceFile`, never silently dropped: a file to read
(with size and mtime or ETag, so an unchanged one is recognised before reading), an entry that
is skipped on purpose (``skip``: hidden names, symbolic links that are not followed, sockets and
other non-files; counted and listed by the ingest), or one that cannot be read at all
(``problem``: a symlink loop, a dangling link, a folder that cannot be listed; a reject row).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from labelloop.config import StorageSettings

CHUNK = 1 << 20

#: SourceFile.skip values
SKIP_HIDDEN = "hidden"
SKIP_SYMLINK = "symlink"
SKIP_NOT_FILE = "not_a_file"

#: SourceFile.problem values (reject reasons, see labelloop.ingest.probe.RejectReason)
PROBLEM_SYMLINK_LOOP = "symlink_loop"
PROBLEM_UNREADABLE = "unreadable"


@dataclass(frozen=True)
class SourceFile:
    uri: str  # the original name, kept as the item's alias
    size: int | None
    ref: str  # local path, or object key
    #: local files: modification time (ns); S3: LastModified as ns since the epoch
    mtime_ns: int | None = None
    etag: str | None = None
    #: set for entries that are not read: why they are skipped, or why they cannot be read
    skip: str | None = None
    problem: str | None = None
    detail: str = ""


class SourceError(RuntimeError):
    """The source as a whole failed (server unreachable, listing broken): names where and the step."""


class Source:
    """A place files are read from; see :func:`open_source`."""

    description: str

    def files(self) -> Iterator[SourceFile]:
        raise NotImplementedError

    def _copy(self, src: SourceFile, out) -> None:  # type: ignore[no-untyped-def]
        for chunk in self.chunks(src):
            out.write(chunk)

    def chunks(self, src: SourceFile) -> Iterator[bytes]:
        """The object's bytes in chunks of up to 1 MiB, read once (a generator: close it, or
        exhaust it, to release the file or connection)."""
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
        """Entries in a stable (sorted, depth-first) order; hidden names are skipped (and said so).

        With ``follow_symlinks`` a folder reached twice on the same path (a symlink loop) is a
        problem entry, not an endless walk; without it every symlink is a skipped entry.
        """
        if self.root.is_file():
            st = self.root.stat()
            yield SourceFile(uri=self.root.as_uri(), size=st.st_size, ref=str(self.root), mtime_ns=st.st_mtime_ns)
            return
        root_st = self.root.stat()
        # (folder, device/inode of every folder above it): a loop revisits one of its ancestors
        stack: list[tuple[Path, frozenset[tuple[int, int]]]] = [
            (self.root, frozenset({(root_st.st_dev, root_st.st_ino)}))
        ]
        while stack:
            folder, ancestors = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                yield _problem(folder, PROBLEM_UNREADABLE, f"folder cannot be listed: {e.strerror or e}")
                continue
            subdirs = []
            for e in entries:
                path = Path(e.path)
                if e.name.startswith("."):
                    yield SourceFile(uri=path.as_uri(), size=None, ref=e.path, skip=SKIP_HIDDEN)
                    continue
                try:
                    is_link = e.is_symlink()
                    if is_link and not self.follow_symlinks:
                        yield SourceFile(uri=path.as_uri(), size=None, ref=e.path, skip=SKIP_SYMLINK)
                        continue
                    st = e.stat(follow_symlinks=True)
                except OSError as err:
                    if err.errno == errno.ELOOP:
                        yield _problem(path, PROBLEM_SYMLINK_LOOP, "symbolic link loop")
                    elif err.errno == errno.ENOENT and e.is_symlink():
                        yield _problem(path, PROBLEM_UNREADABLE, f"dangling symbolic link to {_readlink(path)}")
                    else:
                        yield _problem(path, PROBLEM_UNREADABLE, f"cannot stat: {err.strerror or err}")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    ident = (st.st_dev, st.st_ino)
                    if ident in ancestors:
                        yield _problem(path, PROBLEM_SYMLINK_LOOP, f"symbolic link loop back to {_readlink(path)}")
                        continue
                    subdirs.append((path, ancestors | {ident}))
                elif stat.S_ISREG(st.st_mode):
                    yield SourceFile(uri=path.as_uri(), size=st.st_size, ref=e.path, mtime_ns=st.st_mtime_ns)
                else:
                    yield SourceFile(uri=path.as_uri(), size=None, ref=e.path, skip=SKIP_NOT_FILE)
            stack.extend(reversed(subdirs))

    def chunks(self, src: SourceFile) -> Iterator[bytes]:
        with open(src.ref, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                yield chunk


def _problem(path: Path, problem: str, detail: str) -> SourceFile:
    return SourceFile(uri=path.as_uri(), size=None, ref=str(path), problem=problem, detail=detail)


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


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
        self.endpoint = storage.endpoint
        try:
            exists = self.client.bucket_exists(self.bucket)
        except Exception as e:  # connection refused, TLS, auth: name the server and the step
            raise SourceError(self._where("check the bucket", e)) from e
        if not exists:
            raise FileNotFoundError(f"source bucket {self.bucket!r} does not exist at {storage.endpoint}")
        self.description = uri

    def _where(self, step: str, e: BaseException) -> str:
        return f"S3 source s3://{self.bucket}/{self.prefix} at {self.endpoint} (step: {step}): {type(e).__name__}: {e}"

    def files(self) -> Iterator[SourceFile]:
        listing = self.client.list_objects(self.bucket, prefix=self.prefix, recursive=True)
        while True:
            try:
                obj = next(listing)
            except StopIteration:
                return
            except Exception as e:  # the server went away mid-listing: the run fails, loudly
                raise SourceError(self._where("list objects", e)) from e
            name = obj.object_name or ""
            if obj.is_dir or not name:
                continue
            uri = f"s3://{self.bucket}/{name}"
            if name.rsplit("/", 1)[-1].startswith("."):
                yield SourceFile(uri=uri, size=obj.size, ref=name, skip=SKIP_HIDDEN)
                continue
            modified = obj.last_modified
            yield SourceFile(
                uri=uri,
                size=obj.size,
                ref=name,
                mtime_ns=int(modified.timestamp() * 1e9) if modified is not None else None,
                etag=(obj.etag or "").strip('"') or None,
            )

    def chunks(self, src: SourceFile) -> Iterator[bytes]:
        resp = self.client.get_object(self.bucket, src.ref)
        try:
            yield from resp.stream(CHUNK)
        finally:
            resp.close()
            resp.release_conn()


def open_source(source: str, storage: StorageSettings, follow_symlinks: bool = False) -> Source:
    if source.startswith("s3://"):
        return S3Source(source, storage)
    path = Path(unquote(urlparse(source).path)) if source.startswith("file://") else Path(source)
    return LocalSource(path, follow_symlinks)
