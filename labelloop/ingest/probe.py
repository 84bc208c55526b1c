"""Decide what a file is from its bytes, and whether we can use it.

The type comes from the content (magic bytes), never the file name: a JPEG called ``x.pdf`` is an
image, and a text file called ``x.jpg`` is rejected. Anything we cannot use raises
:class:`Rejected` with a machine-readable reason and a sentence for people.

Images are not decoded here by default: the header gives the size and EXIF orientation, and the
structural checks of :mod:`labelloop.ingest.structure` find truncation and corruption at close to
disk speed (``ingest.verify = "decode"`` decodes every pixel instead). PDFs are opened with
PyMuPDF (page count, encryption, page sizes), after a structural check of their end.

:func:`probe_in_worker` is the entry point for ingest's process pool: it returns plain tuples,
which pickle (an exception with a custom ``__init__`` does not round-trip).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labelloop.config import IngestSettings

import re
import struct
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import filetype
from PIL import Image

from labelloop.ingest import structure
from labelloop.ingest.video_probe import VIDEO_TYPES, probe_video


class RejectReason(StrEnum):
    EMPTY = "empty_file"
    UNREADABLE = "unreadable"
    FILE_TOO_LARGE = "file_too_large"
    UNSUPPORTED = "unsupported_type"
    CORRUPT = "corrupt"
    IMAGE_TOO_LARGE = "image_too_large"
    PDF_ENCRYPTED = "pdf_encrypted"
    PDF_NO_PAGES = "pdf_no_pages"
    PDF_TOO_MANY_PAGES = "pdf_too_many_pages"
    PDF_PAGE_TOO_LARGE = "pdf_page_too_large"
    SYMLINK_LOOP = "symlink_loop"
    VIDEO_NO_STREAM = "video_no_stream"
    VIDEO_NO_FRAMES = "video_no_frames"
    VIDEO_TOO_LONG = "video_too_long"
    VIDEO_TOO_LARGE = "video_too_large"


class Rejected(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


#: what browsers (Label Studio), Pillow and Qwen-VL all read
IMAGE_TYPES = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
}
PDF_MIME = "application/pdf"
#: EXIF orientations that swap width and height (rotations by 90/270 degrees)
_SWAPS_SIDES = {5, 6, 7, 8}


@dataclass
class Probe:
    media_type: str  # "image" | "document" | "video"
    mime: str
    ext: str
    width: int | None = None
    height: int | None = None
    exif_orientation: int | None = None
    page_count: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def sniff(head: bytes) -> tuple[str, str] | None:
    """(mime, extension) from the first bytes, or None when unknown."""
    if head[:1024].lstrip(b"\x00\t\n\r ").startswith(b"%PDF-") or b"%PDF-" in head[:1024]:
        return PDF_MIME, "pdf"
    kind = filetype.guess(head)
    if kind is None:
        return None
    return kind.mime, kind.extension


#: the DPI page images are rendered at when the caller does not say (DocumentSettings' default)
DEFAULT_RENDER_DPI = 144


def probe_ready() -> bool:
    """A no-op for starting pool workers ahead of the first batch."""
    return True


def probe_in_worker(path: str, settings: IngestSettings, render_dpi: int) -> tuple[str, Probe] | tuple[str, str, str]:
    """``("ok", probe)`` or ``("rejected", reason, detail)``; never raises for a bad file."""
    try:
        return "ok", probe_file(Path(path), settings, render_dpi=render_dpi)
    except Rejected as r:
        return "rejected", r.reason.value, r.detail
    except OSError as e:
        return "rejected", RejectReason.UNREADABLE.value, f"cannot read: {e}"


def probe_file(path: Path, settings: IngestSettings, *, render_dpi: int = DEFAULT_RENDER_DPI) -> Probe:
    size = path.stat().st_size
    if size == 0:
        raise Rejected(RejectReason.EMPTY, "zero-byte file")
    with path.open("rb") as f:
        head = f.read(8192)
    kind = sniff(head)
    if settings.office and (kind is None or (kind[0] not in IMAGE_TYPES and kind[0] != PDF_MIME)):
        from labelloop.ingest.office_probe import probe_office

        office = probe_office(path, head, settings)
        if office is not None:
            return office
    if kind is None:
        raise Rejected(RejectReason.UNSUPPORTED, "content is not a recognised image, PDF, video or office document")
    mime, _ext = kind
    if mime == PDF_MIME:
        return _probe_pdf(path, settings, render_dpi)
    if mime in IMAGE_TYPES:
        return _probe_image(path, mime, settings)
    if mime in VIDEO_TYPES:
        return probe_video(path, mime, settings)
    raise Rejected(
        RejectReason.UNSUPPORTED,
        f"{mime} is not supported (images: JPEG, PNG, WebP, GIF, BMP; PDF; video: MP4, MOV, MKV, WebM)",
    )


_STRUCTURE_CHECKS = {
    "image/jpeg": structure.check_jpeg,
    "image/png": structure.check_png,
    "image/webp": structure.check_webp,
    "image/gif": structure.check_gif,
}


_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF", "image/bmp": "BMP"}


def _check_pixels(w: int, h: int, settings: IngestSettings) -> None:
    if w * h > settings.max_image_pixels:
        raise Rejected(
            RejectReason.IMAGE_TOO_LARGE,
            f"{w}x{h} = {w * h:,} pixels exceeds the limit of {settings.max_image_pixels:,}",
        )


def _orientation(exif: bytes | None) -> int | None:
    if not exif:
        return None
    parsed = Image.Exif()
    parsed.load(exif)
    return parsed.get(0x0112)


def _probe_image(path: Path, mime: str, settings: IngestSettings) -> Probe:
    allow_pillow_limit(settings.max_image_pixels)
    check = _STRUCTURE_CHECKS.get(mime) if settings.verify == "structure" else None
    try:
        if mime == "image/png" and check is not None:
            # the chunk walk has everything: size (IHDR), orientation (eXIf, wherever it is);
            # Pillow's PNG getexif() would decode the whole image to look past the pixels
            w, h, exif_chunk = structure.check_png(path)
            _check_pixels(w, h, settings)
            orientation = _orientation(exif_chunk)
        else:
            with warnings.catch_warnings():
                # Pillow warns (and past 2x its own limit raises) on huge images; we apply our limit.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path, formats=[_PIL_FORMATS[mime]]) as img:  # reads the header only
                    w, h = img.size
                    _check_pixels(w, h, settings)
                    if check is None:  # BMP (uncompressed: cheap) or verify="decode": every pixel
                        img.load()
                    orientation = img.getexif().get(0x0112)
                    if check is not None:
                        check(path)
    except Rejected:
        raise
    except structure.StructureError as e:
        raise Rejected(RejectReason.CORRUPT, f"{IMAGE_TYPES[mime].upper()} structure: {e}") from e
    except Image.DecompressionBombError as e:
        # Pillow refuses in Image.open above 2 x Image.MAX_IMAGE_PIXELS, before we see the size.
        m = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(m.group(1)):,} pixels" if m else "the image"
        raise Rejected(
            RejectReason.IMAGE_TOO_LARGE, f"{pixels} exceeds the limit of {settings.max_image_pixels:,}"
        ) from e
    except (OSError, SyntaxError, ValueError, struct.error, Image.UnidentifiedImageError) as e:
        raise Rejected(RejectReason.CORRUPT, f"image cannot be decoded: {e}") from e
    if w <= 0 or h <= 0:
        raise Rejected(RejectReason.CORRUPT, f"image has no pixels ({w}x{h})")
    orientation = int(orientation) if isinstance(orientation, int) and 1 <= orientation <= 8 else None
    if orientation in _SWAPS_SIDES:
        w, h = h, w
    return Probe(media_type="image", mime=mime, ext=IMAGE_TYPES[mime], width=w, height=h, exif_orientation=orientation)


def _probe_pdf(path: Path, settings: IngestSettings, render_dpi: int = DEFAULT_RENDER_DPI) -> Probe:
    import pymupdf

    try:
        xref_warning = structure.check_pdf(path)
    except structure.StructureError as e:
        raise Rejected(RejectReason.CORRUPT, f"PDF structure: {e}") from e
    pymupdf.TOOLS.reset_mupdf_warnings()
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as e:
        raise Rejected(RejectReason.CORRUPT, f"PDF cannot be opened: {e}") from e
    with doc:
        if doc.needs_pass:
            raise Rejected(RejectReason.PDF_ENCRYPTED, "PDF is password-protected")
        pages = doc.page_count
        repaired = bool(doc.is_repaired)
        warnings_text = pymupdf.TOOLS.mupdf_warnings().strip()
        if repaired and pages == 0:
            first = warnings_text.splitlines()[0] if warnings_text else "damaged structure"
            raise Rejected(RejectReason.CORRUPT, f"PDF is truncated or damaged ({first})")
        if pages == 0:
            raise Rejected(RejectReason.PDF_NO_PAGES, "PDF has no pages")
        if pages > settings.max_pdf_pages:
            raise Rejected(
                RejectReason.PDF_TOO_MANY_PAGES,
                f"{pages} pages exceeds the limit of {settings.max_pdf_pages}",
            )
        # the page images are rendered at render_dpi: a page beyond the pixel budget there would
        # become a review task without an image (or exhaust memory), so it is refused here
        scale = render_dpi / 72.0
        for i in range(pages):
            box = doc.page_cropbox(i)
            px = round(box.width * scale) * round(box.height * scale)
            if px > settings.max_page_pixels:
                raise Rejected(
                    RejectReason.PDF_PAGE_TOO_LARGE,
                    f"page {i + 1} is {box.width:,.0f} x {box.height:,.0f} pt = {px:,} pixels at {render_dpi} DPI, "
                    f"above the limit of {settings.max_page_pixels:,}",
                )
        meta: dict[str, Any] = {}
        if repaired:
            meta["repaired"] = warnings_text[:500]
        if xref_warning:
            meta["xref"] = xref_warning
        if doc.is_encrypted:
            meta["encrypted_no_user_password"] = True
        first_page = doc[0].rect
        meta["page_size_pt"] = [round(first_page.width, 2), round(first_page.height, 2)]
    return Probe(media_type="document", mime=PDF_MIME, ext="pdf", page_count=pages, meta=meta)


def allow_pillow_limit(max_pixels: int) -> None:
    """Pillow refuses images above 2 x ``Image.MAX_IMAGE_PIXELS`` (a process-wide setting meant to
    be set by applications); raise it when our configured limit is higher, never lower it."""
    if max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
