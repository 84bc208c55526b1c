"""Copy the items' images into a dataset version, in trainer-ready form.

A version is self-contained: its ``images/`` holds copies named by the item's sha256
(documents: the rendered page ``pages/<sha>/<n>.png`` as ``images/<sha>_p<n>.png``). Boxes are
stored in pixels *after* EXIF orientation, but trainers differ in whether they apply it (older
qwen-vl-finetune opens files with PIL and does not), so an image with an EXIF orientation other
than 1 is written with the rotation baked in (PNG, lossless): every trainer then sees the pixel
grid the boxes refer to. Copies run on a thread pool: object stores are I/O-bound (fsync, HTTP).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from labelloop.prelabel.qwen_resize import load_oriented
from labelloop.storage import ObjectStore


@dataclass(frozen=True)
class ImageJob:
    src_key: str
    name: str
    #: EXIF orientation to bake in; None or 1 copies the bytes unchanged
    orientation: int | None = None
    #: "video": copied as is, its size read with PyAV (display size, after rotation)
    media: str = "image"


@dataclass(frozen=True)
class CopiedImage:
    name: str
    sha256: str = ""
    size: int = 0
    width: int | None = None
    height: int | None = None
    error: str | None = None


def image_name(item_sha: str, ext: str, orientation: int | None) -> str:
    if orientation not in (None, 1):
        return f"images/{item_sha}.png"
    return f"images/{item_sha}.{ext.lower().lstrip('.') or 'bin'}"


def video_name(item_sha: str, ext: str) -> str:
    """``videos/<sha>.<ext>``: the container as ingested (the trainers' readers, decord and
    torchvision, take MP4, MOV, MKV and WebM alike)."""
    return f"videos/{item_sha}.{ext.lower().lstrip('.') or 'mp4'}"


def video_size(data: bytes) -> tuple[int, int]:
    """Display size of a video's first frame (after its rotation), as the probe computed it."""
    import av

    from labelloop.ingest.video_probe import normalise_rotation

    with av.open(io.BytesIO(data)) as c:
        frame = next(c.decode(video=0))
        w, h = frame.width, frame.height
        return (h, w) if normalise_rotation(getattr(frame, "rotation", 0)) in (90, 270) else (w, h)


def page_image_name(item_sha: str, page: int) -> str:
    return f"images/{item_sha}_p{page}.png"


class ImageCopier:
    """Copies images into ``prefix/`` once each; remembers (sha256, size) for the manifest."""

    def __init__(self, store: ObjectStore, prefix: str, threads: int = 16) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")
        #: name -> (sha256, size) of every image written: the manifest's image entries
        self.written: dict[str, tuple[str, int]] = {}
        self._submitted: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="labelloop-export")

    def __enter__(self) -> ImageCopier:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, jobs: Iterable[ImageJob]) -> list[Future[CopiedImage]]:
        """Start copying the jobs not started before; collect them with :meth:`collect`.

        Submitting the next batch before processing the current one keeps the pool busy with
        I/O while the caller builds samples (the two overlap instead of alternating).
        """
        futures = []
        for job in jobs:
            if job.name not in self._submitted:
                self._submitted.add(job.name)
                futures.append(self._pool.submit(self._copy, job))
        return futures

    def collect(self, futures: Iterable[Future[CopiedImage]]) -> dict[str, CopiedImage]:
        """Wait for the copies; their results by name (``written`` gains the successful ones)."""
        out = {}
        for fut in futures:
            res = fut.result()
            out[res.name] = res
            if res.error is None:
                self.written[res.name] = (res.sha256, res.size)
        return out

    def copy_many(self, jobs: Iterable[ImageJob]) -> dict[str, CopiedImage]:
        return self.collect(self.submit(jobs))

    def _copy(self, job: ImageJob) -> CopiedImage:
        try:
            data = self.store.get(job.src_key)
        except Exception as e:  # a missing source must be reported per record, not crash the batch
            return CopiedImage(job.name, error=f"cannot read {job.src_key}: {e}")
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
                data = buf.getvalue()
        except Exception as e:
            what = "video" if job.media == "video" else "image"
            return CopiedImage(job.name, error=f"{job.src_key} is not a readable {what}: {e}")
        info = self.store.put(f"{self.prefix}/{job.name}", data)
        if info.size != len(data):
            return CopiedImage(job.name, error=f"stored {info.size} bytes of {len(data)}")
        return CopiedImage(job.name, hashlib.sha256(data).hexdigest(), len(data), width, height)
