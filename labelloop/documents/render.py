"""Open PDFs safely, render pages at the record's DPI, and convert between points and pixels.

Every document box is stored in pixels of the page image rendered here (``dpi / 72`` pixels per
point), so the review image and the boxes always agree. PyMuPDF is not thread-safe, and the
backends run their work in worker threads, so every PyMuPDF call goes through
:data:`PYMUPDF_LOCK`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pymupdf

from labelloop.documents.memory import release_memory
from labelloop.documents.record import page_image_key
from labelloop.image_size import png_size
from labelloop.storage import ObjectNotFound, ObjectStore

#: serialises PyMuPDF use across threads (MuPDF contexts are not shared-thread safe)
PYMUPDF_LOCK = threading.RLock()
POINTS_PER_INCH = 72.0


class DocumentError(ValueError):
    """A document that cannot be processed; ``reason`` is a short machine code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class PageGeometry:
    """Where a page's boxes live: its size in points and the pixel size of its stored image."""

    page: int
    width_pt: float
    height_pt: float
    dpi: int
    width_px: int
    height_px: int
    image_key: str

    @property
    def scale(self) -> float:
        """Pixels per point."""
        return self.dpi / POINTS_PER_INCH

    def pt_to_px(self, bbox: Sequence[float]) -> tuple[float, float, float, float]:
        return pt_to_px(bbox, self.dpi)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pt_to_px(bbox: Sequence[float], dpi: float) -> tuple[float, float, float, float]:
    """PDF points (1/72 inch, top-left origin as PyMuPDF reports) to pixels at ``dpi``."""
    s = dpi / POINTS_PER_INCH
    x1, y1, x2, y2 = bbox
    return (x1 * s, y1 * s, x2 * s, y2 * s)


def px_to_pt(bbox: Sequence[float], dpi: float) -> tuple[float, float, float, float]:
    """Pixels at ``dpi`` back to PDF points (the inverse of :func:`pt_to_px`)."""
    s = POINTS_PER_INCH / dpi
    x1, y1, x2, y2 = bbox
    return (x1 * s, y1 * s, x2 * s, y2 * s)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def open_pdf(data: bytes, *, max_pages: int) -> pymupdf.Document:
    """Open PDF bytes or raise :class:`DocumentError` saying why the document is unusable.

    Pages are de-rotated in memory (``remove_rotation``) so that the rendered image, the text
    layer and every parser see the same upright coordinate system.
    """
    with PYMUPDF_LOCK:
        try:
            doc = pymupdf.open(stream=data, filetype="pdf")
        except Exception as e:  # PyMuPDF raises several types for broken files
            raise DocumentError("corrupt", f"cannot open PDF: {e}") from None
        try:
            if doc.needs_pass:
                raise DocumentError("encrypted", "PDF is encrypted and needs a password")
            if not doc.is_pdf:
                raise DocumentError("corrupt", "not a PDF")
            n = doc.page_count
            if n == 0:
                raise DocumentError("no_pages", "PDF has no pages")
            if n > max_pages:
                raise DocumentError("too_many_pages", f"PDF has {n} pages, more than the limit of {max_pages}")
            for page in doc:
                if page.rotation:
                    page.remove_rotation()
                if page.rect.is_empty:
                    raise DocumentError("corrupt", f"page {page.number} has an empty page box")
        except DocumentError:
            doc.close()
            raise
        except Exception as e:
            doc.close()
            raise DocumentError("corrupt", f"cannot read PDF structure: {e}") from None
    return doc


def page_geometry(page: pymupdf.Page, dpi: int, sha256: str) -> PageGeometry:
    """Geometry of ``page`` at ``dpi``: the same pixel size ``get_pixmap(dpi=dpi)`` produces."""
    with PYMUPDF_LOCK:
        rect = page.rect
        irect = (rect * pymupdf.Matrix(dpi / POINTS_PER_INCH, dpi / POINTS_PER_INCH)).irect
        return PageGeometry(
            page=page.number,
            width_pt=round(rect.width, 3),
            height_pt=round(rect.height, 3),
            dpi=dpi,
            width_px=irect.width,
            height_px=irect.height,
            image_key=page_image_key(sha256, page.number),
        )


def render_png(page: pymupdf.Page, dpi: int) -> bytes:
    """The page as an RGB PNG at ``dpi`` (no alpha: review tools and VLMs want opaque pages)."""
    with PYMUPDF_LOCK:
        pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csRGB, alpha=False)
        return pix.tobytes("png")


def store_page_images(
    doc: pymupdf.Document, sha256: str, dpi: int, store: ObjectStore
) -> tuple[list[PageGeometry], int]:
    """Render every page into ``pages/<sha>/<n>.png``; return the geometries and how many were written.

    Idempotent: a page image that already exists with the expected pixel size is left alone (a
    rerun, or the other document backend, rendered it already); one with another size (the DPI
    setting changed) is replaced.
    """
    geometries: list[PageGeometry] = []
    written = 0
    for page in doc:
        geom = page_geometry(page, dpi, sha256)
        geometries.append(geom)
        if _has_image(store, geom):
            continue
        store.put(geom.image_key, render_png(page, dpi), content_type="image/png")
        written += 1
        free_page_memory()  # one page's pixmap and PNG at a time
    return geometries, written


def free_page_memory() -> None:
    """After a page: empty MuPDF's resource store (it keeps decoded page images, up to 256 MB by
    default, which for scans is every page so far) and hand freed heap back to the OS."""
    with PYMUPDF_LOCK:
        pymupdf.TOOLS.store_shrink(100)
    release_memory()


def _has_image(store: ObjectStore, geom: PageGeometry) -> bool:
    try:
        path = store.local_path(geom.image_key)
        if path is not None:  # a local folder: the 24-byte header is enough
            if not path.is_file():
                return False
            with path.open("rb") as f:
                head = f.read(24)
        else:
            head = store.get(geom.image_key)
        return png_size(head) == (geom.width_px, geom.height_px)
    except (ObjectNotFound, ValueError, OSError):
        return False
