"""The images of a dataset version: a per-spec content-addressed pool the versions point into.

Every image a version uses lives once in ``datasets/<spec>/images/`` (videos in ``videos/``),
named by the item's sha256: ``<sha>.<ext>`` for the file as ingested, ``<sha>.png`` when an EXIF
orientation is baked in, ``<sha>_p<n>.png`` for a document's rendered page. A pool file is written
once and never changed; the ``pool_images`` table remembers its sha256, size and pixel size, so a
new version with one changed record stores one image, not 100,000 (``export.image_layout = "pool"``,
the default; annotation files then name ``../images/<sha>.<ext>``, which resolves from the version
folder the trainers are pointed at).

``export.image_layout = "self_contained"`` also gives each version its own ``images/`` folder, made
without copying bytes through this process: hard links on a local store, server-side copies
(``CopyObject``) on S3; the annotation files then name ``images/<sha>.<ext>``.

Boxes are stored in pixels *after* EXIF orientation, but trainers differ in whether they apply it
(older qwen-vl-finetune opens files with PIL and does not), so an image with an EXIF orientation
other than 1 goes into the pool with the rotation baked in (PNG, lossless): every trainer then sees
the pixel grid the boxes refer to. New pool entries on S3 are made on a thread pool (each call waits
on HTTP); on a local store a link is a few syscalls, made inline, since threads would only queue
for the GIL (only entries that decode and re-encode pixels go to the threads there). Entries
already in the pool cost one indexed query per batch.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import struct
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from PIL import Image
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from labelloop.db import Database, PoolImage
from labelloop.db.types import utcnow
from labelloop.image_size import PNG_SIGNATURE, png_size
from labelloop.prelabel.qwen_resize import load_oriented
from labelloop.storage import ObjectNotFound, ObjectStore

Layout = Literal["pool", "self_contained"]


@dataclass(frozen=True)
class ImageJob:
    src_key: str
    #: the pool name, relative to ``datasets/<spec>/`` (``images/<sha>.<ext>``)
    name: str
    #: EXIF orientation to bake in; None or 1 keeps the bytes unchanged
    orientation: int | None = None
    #: "video": kept as is, its size read with PyAV (display size, after rotation)
    media: str = "image"
    #: sha256 the source bytes must have (the item's, for files kept as ingested)
    expect_sha256: str | None = None
    #: the item's size in bytes and its probed pixel size: with both (and nothing to transform),
    #: the pool entry is a link made without reading the file
    expect_size: int | None = None
    probed: tuple[int, int] | None = None


@dataclass(frozen=True)
class PooledImage:
    name: str
    #: how the version's annotation files and manifest name it (``../images/...`` or ``images/...``)
    ref: str = ""
    sha256: str = ""
    size: int = 0
    width: int | None = None
    height: int | None = None
    error: str | None = None
    #: bytes this export stored for it (0 when the pool had it already, or for a hard link)
    written: int = 0
    #: made by this export (to be indexed)
    new: bool = False


@dataclass
class PoolBatch:
    """One batch's images: those the pool already had, and the work still running."""

    ready: dict[str, PooledImage] = field(default_factory=dict)
    #: made inline (local store): finished, but new pool entries still to be indexed
    made: list[PooledImage] = field(default_factory=list)
    futures: list[Future[PooledImage]] = field(default_factory=list)


def image_name(item_sha: str, ext: str, orientation: int | None) -> str:
    if orientation not in (None, 1):
        return f"images/{item_sha}.png"
    return f"images/{item_sha}.{ext.lower().lstrip('.') or 'bin'}"


def video_name(item_sha: str, ext: str) -> str:
    """``videos/<sha>.<ext>``: the container as ingested (the trainers' readers, decord and
    torchvision, take MP4, MOV, MKV and WebM alike)."""
    return f"videos/{item_sha}.{ext.lower().lstrip('.') or 'mp4'}"


def page_image_name(item_sha: str, page: int) -> str:
    return f"images/{item_sha}_p{page}.png"


def video_size(data: bytes) -> tuple[int, int]:
    """Display size of a video's first frame (after its rotation), as the probe computed it."""
    import av

    from labelloop.ingest.video_probe import normalise_rotation

    with av.open(io.BytesIO(data)) as c:
        frame = next(c.decode(video=0))
        w, h = frame.width, frame.height
        return (h, w) if normalise_rotation(getattr(frame, "rotation", 0)) in (90, 270) else (w, h)


def spec_prefix(spec: str) -> str:
    return f"datasets/{spec}"


def pool_key(spec: str, name: str) -> str:
    return f"{spec_prefix(spec)}/{name}"


def image_ref(name: str, layout: Layout) -> str:
    """The path a version's files use for a pool image, relative to the version folder."""
    return f"../{name}" if layout == "pool" else name


def resolve_ref(prefix: str, ref: str) -> str:
    """Object key of a manifest entry (``../images/x`` resolves into the spec's pool).

    Raises ValueError for a name that would leave the spec folder (a forged manifest).
    """
    prefix = prefix.rstrip("/")
    key = posixpath.normpath(f"{prefix}/{ref}")
    spec_dir = posixpath.dirname(prefix)
    if not key.startswith(spec_dir + "/") or key.startswith(prefix + "/..") or ".." in key.split("/"):
        raise ValueError(f"manifest entry {ref!r} points outside {spec_dir}/")
    return key


class ImagePool:
    """Puts a version's images into the spec's pool (once each) and lists them for the manifest.

    Usage per batch: :meth:`submit` the batch's jobs (new pool entries start on the thread pool),
    then :meth:`collect` them. Manifest entries (ref, sha256, size) stream into a temporary file
    (:meth:`entries`), so memory does not grow with the number of images.
    """

    def __init__(
        self,
        store: ObjectStore,
        db: Database,
        spec: str,
        version_prefix: str,
        entries_path: Path,
        *,
        layout: Layout = "pool",
        threads: int = 16,
    ) -> None:
        self.store = store
        self.db = db
        self.spec = spec
        self.version_prefix = version_prefix.rstrip("/")
        self.layout: Layout = layout
        self.entries_path = entries_path
        self._entries: IO[str] = entries_path.open("w", encoding="utf-8")
        #: images listed in the manifest, and bytes of image data this export stored
        self.count = 0
        self.bytes_written = 0
        self.created = 0
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="labelloop-export")

    def __enter__(self) -> ImagePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if not self._entries.closed:
            self._entries.close()

    # ------------------------------------------------------------------ per batch

    def _known(self, names: list[str]) -> dict[str, Any]:
        """Index rows (name, sha256, size, width, height) of these names (Core rows: no ORM objects)."""
        if not names:
            return {}
        cols = (PoolImage.name, PoolImage.sha256, PoolImage.size, PoolImage.width, PoolImage.height)
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(*cols).where(PoolImage.spec == self.spec, PoolImage.name.in_(names)))
            return {r.name: r for r in rows}

    def submit(self, jobs: Iterable[ImageJob]) -> PoolBatch:
        """Start the batch: pool entries that exist resolve at once (one query for the batch);
        the others, and the self-contained links, run on the thread pool."""
        unique: dict[str, ImageJob] = {}
        for job in jobs:
            unique.setdefault(job.name, job)
        known = self._known(list(unique))
        batch = PoolBatch()
        inline = not self.store.remote_io
        for name, job in unique.items():
            row = known.get(name)
            if row is None:
                if inline and _is_link(job):
                    batch.made.append(self._create(job))
                else:
                    batch.futures.append(self._pool.submit(self._create, job))
                continue
            img = PooledImage(name, image_ref(name, self.layout), row.sha256, row.size, row.width, row.height)
            if self.layout == "self_contained":
                if inline:
                    batch.made.append(self._link(img))
                else:
                    batch.futures.append(self._pool.submit(self._link, img))
            else:
                batch.ready[name] = img
        return batch

    def collect(self, batch: PoolBatch) -> dict[str, PooledImage]:
        """Wait for the batch; index its new pool entries and list its images for the manifest."""
        out: dict[str, PooledImage] = dict(batch.ready)
        new: list[PooledImage] = []
        for res in [*batch.made, *(fut.result() for fut in batch.futures)]:
            out[res.name] = res
            if res.error is None and res.new:
                new.append(res)
        if new:
            out.update(self._index(new))
        for res in out.values():
            if res.error is None:
                self._entries.write(f"{res.ref}\t{res.sha256}\t{res.size}\n")
                self.count += 1
                self.bytes_written += res.written
        return out

    def _index(self, new: list[PooledImage]) -> dict[str, PooledImage]:
        """Insert the batch's new pool entries. A concurrent exporter that indexed the same name
        first wins; ours must then be the same bytes, or the record gets an error."""
        rows = [_row(self.spec, r) for r in new]
        try:
            # Core executemany: the ORM's bulk insert costs several times more per row
            with self.db.engine.begin() as conn:
                conn.execute(_POOL_INSERT, rows)
            self.created += len(rows)
            return {}
        except IntegrityError:
            pass
        fixed: dict[str, PooledImage] = {}
        known = self._known([r.name for r in new])
        for r in new:
            row = known.get(r.name)
            if row is None:
                with self.db.engine.begin() as conn:
                    conn.execute(_POOL_INSERT, [_row(self.spec, r)])
                self.created += 1
            elif row.sha256 != r.sha256:
                fixed[r.name] = PooledImage(
                    r.name, r.ref, error=f"pool image {r.name} was indexed by another export with other bytes"
                )
        return fixed

    # ------------------------------------------------------------------ workers

    def _create(self, job: ImageJob) -> PooledImage:
        ref = image_ref(job.name, self.layout)
        if _is_link(job):
            return self._link_ingested(job, ref)
        try:
            data = self.store.get(job.src_key)
        except Exception as e:  # a missing source must be reported per record, not crash the batch
            return PooledImage(job.name, ref, error=f"cannot read {job.src_key}: {e}")
        if job.expect_sha256 is not None and hashlib.sha256(data).hexdigest() != job.expect_sha256:
            return PooledImage(job.name, ref, error=f"{job.src_key}: bytes do not match the item's sha256")
        transformed = False
        try:
            if job.media == "video":
                width, height = video_size(data)
            elif job.orientation in (None, 1):
                with Image.open(io.BytesIO(data)) as img:  # header only: cheap
                    width, height = img.size
            else:
                img = load_oriented(data)
                width, height = img.size
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                data, transformed = buf.getvalue(), True
        except Exception as e:
            what = "video" if job.media == "video" else "image"
            return PooledImage(job.name, ref, error=f"{job.src_key} is not a readable {what}: {e}")
        key = pool_key(self.spec, job.name)
        try:
            if transformed:
                info = self.store.put(key, data)
                written = len(data)
            else:  # the bytes as stored: a link or server-side copy where the store can
                info = self.store.copy(job.src_key, key)
                written = 0 if info.linked else len(data)
        except Exception as e:
            return PooledImage(job.name, ref, error=f"cannot store {key}: {e}")
        if info.size != len(data):
            return PooledImage(job.name, ref, error=f"{key}: stored {info.size} bytes of {len(data)}")
        img = PooledImage(
            job.name, ref, hashlib.sha256(data).hexdigest(), len(data), width, height, written=written, new=True
        )
        return self._link(img) if self.layout == "self_contained" else img

    def _link_ingested(self, job: ImageJob, ref: str) -> PooledImage:
        """A file kept as ingested: its key is its sha256 and ingest probed its size, so the pool
        entry is a hard link / server-side copy, checked by byte count, without reading it
        (``verify_version`` and the trainer-side ``check_dataset`` hash every byte)."""
        key = pool_key(self.spec, job.name)
        try:
            info = self.store.copy(job.src_key, key)
        except ObjectNotFound as e:  # the ingested file is gone: name it, not the pool entry
            return PooledImage(job.name, ref, error=f"cannot read {job.src_key}: {e}")
        except Exception as e:
            return PooledImage(job.name, ref, error=f"cannot store {key} from {job.src_key}: {e}")
        if info.size != job.expect_size:
            self.store.delete(key)
            return PooledImage(
                job.name, ref, error=f"{job.src_key} has {info.size} bytes, the ingested item {job.expect_size}"
            )
        # the pixel size from the file's own header (a ranged read, not the pixels), so an entry
        # never says a size its file does not have, whatever the item row claims
        # (videos keep ingest's probe: their size needs a decode of the container, and the
        # trainer-side checker reads them whole anyway)
        try:
            w, h = job.probed if job.media == "video" else _header_size(self.store, job.src_key)  # type: ignore[misc]
        except Exception as e:
            self.store.delete(key)
            return PooledImage(job.name, ref, error=f"{job.src_key} is not a readable {job.media}: {e}")
        written = 0 if info.linked else info.size
        img = PooledImage(job.name, ref, job.expect_sha256 or "", info.size, w, h, written=written, new=True)
        return self._link(img) if self.layout == "self_contained" else img

    def _link(self, img: PooledImage) -> PooledImage:
        """The version's own copy of a pool image (self-contained layout): link or server-side copy."""
        key = f"{self.version_prefix}/{img.name}"
        try:
            info = self.store.copy(pool_key(self.spec, img.name), key)
        except Exception as e:
            return PooledImage(img.name, img.ref, error=f"cannot place {key}: {e}")
        if info.size != img.size:
            return PooledImage(img.name, img.ref, error=f"{key}: {info.size} bytes, the pool says {img.size}")
        return img

    # ------------------------------------------------------------------ manifest

    def entries(self) -> Iterator[tuple[str, str, int]]:
        """(ref, sha256, size) of every image listed, in the order they were collected."""
        if not self._entries.closed:
            self._entries.close()
        return self.summary().entries()

    def summary(self) -> PoolSummary:
        if not self._entries.closed:
            self._entries.flush()
        return PoolSummary(self.entries_path, self.count, self.created, self.bytes_written)


@dataclass(frozen=True)
class PoolSummary:
    """What a build put into the pool: the manifest's image entries (a file) and the counts."""

    entries_path: Path
    count: int = 0
    created: int = 0
    bytes_written: int = 0

    def entries(self) -> Iterator[tuple[str, str, int]]:
        with self.entries_path.open(encoding="utf-8") as f:
            for line in f:
                ref, sha, size = line.rstrip("\n").split("\t")
                yield ref, sha, int(size)


_POOL_INSERT = insert(PoolImage.__table__)  # type: ignore[arg-type]


def _row(spec: str, r: PooledImage) -> dict[str, object]:
    return {
        "spec": spec,
        "name": r.name,
        "sha256": r.sha256,
        "size": r.size,
        "width": r.width,
        "height": r.height,
        "created_at": utcnow(),
    }


#: bytes read first for an image header: enough for PNG, WebP, GIF and most JPEGs; JPEG APP
#: segments (EXIF with a thumbnail) can reach 64 KB before the frame header, so a header not found
#: there is read again from 128 KB, then from the whole file
_HEAD_BYTES = (16 * 1024, 128 * 1024)
#: Pillow's format for an extension: naming it skips probing every registered plugin in turn,
#: which costs more than the read (a wrong name only falls back to the full probe)
_PIL_FORMATS = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "webp": "WEBP",
    "gif": "GIF",
    "bmp": "BMP",
    "tif": "TIFF",
    "tiff": "TIFF",
}


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless; not DHT/JPG/DAC)
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _direct_size(data: bytes) -> tuple[int, int] | None:
    """PNG and JPEG pixel size read straight from the header, or None to ask Pillow.

    Hand-written for the reason :mod:`labelloop.image_size` gives, once per image of a 100k-image
    export. Only the two fixed layouts are parsed (PNG: IHDR right after the signature, by
    :func:`~labelloop.image_size.png_size`; JPEG: the first SOF marker's height and width);
    anything unusual falls through to Pillow.
    """
    if data[:8] == PNG_SIGNATURE:
        try:
            w, h = png_size(data)
        except ValueError:
            return None
        return (w, h) if w and h else None
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > n or length < 7:
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return (w, h) if w and h else None
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or scan data before any frame
            return None
        i += 2 + length
    return None


def _pil_size(data: bytes, fmt: str | None) -> tuple[int, int]:
    direct = _direct_size(data)
    if direct is not None:
        return direct
    if fmt is not None:
        try:
            with Image.open(io.BytesIO(data), formats=[fmt]) as img:
                return img.size
        except Exception:
            pass
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def _header_size(store: ObjectStore, key: str) -> tuple[int, int]:
    """Pixel size of a stored image, from its header where that suffices."""
    fmt = _PIL_FORMATS.get(posixpath.splitext(key)[1].lower().lstrip("."))
    for length in _HEAD_BYTES:
        head = store.get_head(key, length)
        try:
            return _pil_size(head, fmt)
        except Exception:
            if len(head) < length:  # the whole file was read: it is not a readable image
                raise
    return _pil_size(store.get(key), fmt)


def _is_link(job: ImageJob) -> bool:
    """A file kept as ingested whose size and bytes ingest recorded: its pool entry is a link."""
    return job.orientation in (None, 1) and bool(job.expect_sha256) and job.expect_size is not None and bool(job.probed)

