"""Object store on a local folder (the embedded default)."""

from __future__ import annotations

import datetime as dt
import mimetypes
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from labelloop.storage.base import ObjectInfo, ObjectNotFound, ObjectStore, check_key

if TYPE_CHECKING:
    from labelloop.storage.batch import LocalBatchWriter


class LocalStore(ObjectStore):
    scheme = "file"
    remote_io = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _fspath(self, key: str) -> str:
        """``_path`` as a plain string: pathlib's joins cost more than a link syscall, and the
        export's pool makes one entry per image."""
        return f"{self._root}/{check_key(key)}"

    def _atomic_write(self, key: str, writer) -> ObjectInfo:  # type: ignore[no-untyped-def]
        # Write to a temp file in the destination folder, fsync, then rename: rename within one
        # filesystem is atomic, so readers never see a half-written object.
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.stat(key)

    def put(
        self, key: str, data: bytes | BinaryIO, *, length: int | None = None, content_type: str | None = None
    ) -> ObjectInfo:
        if isinstance(data, bytes | bytearray | memoryview):
            return self._atomic_write(key, lambda f: f.write(data))
        return self._atomic_write(key, lambda f: shutil.copyfileobj(data, f, 1 << 20))

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        with Path(path).open("rb") as src:
            return self.put(key, src)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def get_head(self, key: str, length: int) -> bytes:
        try:
            with open(self._fspath(key), "rb", buffering=0) as f:
                return f.read(length)
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def get_file(self, key: str, path: Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
        return path

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(key)
        return self._info(key, st)

    @staticmethod
    def _info(key: str, st: os.stat_result, *, linked: bool = False) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=st.st_size,
            modified=dt.datetime.fromtimestamp(st.st_mtime, dt.UTC),
            content_type=mimetypes.guess_type(key)[0],
            linked=linked,
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the folder the prefix points into, streaming entries in sorted order.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return
        yield from self._walk(start, prefix)

    def _walk(self, folder: Path, prefix: str) -> Iterator[ObjectInfo]:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith(".tmp-"):
                continue
            key = Path(e.path).relative_to(self.root).as_posix()
            if e.is_dir(follow_symlinks=False):
                if key.startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._walk(Path(e.path), prefix)
            elif key.startswith(prefix):
                st = e.stat()
                yield ObjectInfo(key=key, size=st.st_size, modified=dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, expires_s: int | None = None) -> str:
        # A local file needs no signature; the file URI is what a local reader can open.
        if not self.exists(key):
            raise ObjectNotFound(key)
        return self.uri(key)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def batch_writer(self, workdir: Path | None = None) -> LocalBatchWriter:
        """Staged in the store's own ``.tmp-staging`` folder (same filesystem: publishing is a
        rename); ``workdir`` is ignored. ``list`` never shows ``.tmp-*`` names."""
        from labelloop.storage.batch import LocalBatchWriter

        return LocalBatchWriter(self, self.root / ".tmp-staging")

    def copy(self, src: str, dst: str) -> ObjectInfo:
        """A hard link (no bytes written; ``linked`` in the result); a plain copy where the
        filesystem refuses links.

        ``dst`` appears atomically either way: a new name is linked in place (``link`` never
        overwrites), an existing one is replaced by a link made under a temporary name. The common
        case, a new pool entry, is one ``link`` and one ``stat``: at 100k images per export the
        syscalls are the cost.
        """
        source, dest = self._fspath(src), self._fspath(dst)
        try:
            try:
                os.link(source, dest)
            except FileNotFoundError:
                if not os.path.isfile(source):
                    raise ObjectNotFound(src) from None
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.link(source, dest)
        except FileExistsError:
            return self._replace_with_link(Path(source), dst)
        except OSError:  # another filesystem, links not allowed, or not a file
            if not os.path.isfile(source):
                raise ObjectNotFound(src) from None
            return self.put_file(dst, Path(source))
        return self._info(dst, os.stat(dest), linked=True)

    def _replace_with_link(self, source: Path, dst: str) -> ObjectInfo:
        dest = self._path(dst)
        tmp = dest.parent / f".tmp-link-{os.getpid()}-{threading.get_ident()}-{dest.name}"
        try:
            tmp.unlink(missing_ok=True)
            os.link(source, tmp)
        except OSError:
            tmp.unlink(missing_ok=True)
            return self.put_file(dst, source)
        try:
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._info(dst, dest.stat(), linked=True)
