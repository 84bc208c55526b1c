"""Office and web documents at ingest: what they are (from their bytes), and whether they are safe.

DOCX/PPTX/XLSX (OOXML), ODT/ODS/ODP (ODF) and EPUB are zip containers: the type comes from the
container's own declaration (``[Content_Types].xml`` parts, the ODF/EPUB ``mimetype`` member), never
the file name. Before anything opens one for real (LibreOffice, MinerU), the zip directory is checked
for bombs: total expanded size, per-member compression ratio, member count, and absolute or ``..``
paths. Page counts come from the container where it states them (slides in a PPTX, sheets in an
XLSX, ``docProps/app.xml`` Pages in a DOCX) and are checked against the PDF page limit, because the
rendering will be reviewed page by page like a PDF. HTML is recognised by its opening tag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labelloop.config import IngestSettings

import re
import zipfile
from pathlib import Path

from labelloop.ingest.probe import Probe, Rejected, RejectReason

MIMES = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "odp": "application/vnd.oasis.opendocument.presentation",
    "epub": "application/epub+zip",
    "html": "text/html",
}
_ODF = {v: k for k, v in MIMES.items() if k in ("odt", "ods", "odp", "epub")}
_OOXML_MAIN = {"word/document.xml": "docx", "ppt/presentation.xml": "pptx", "xl/workbook.xml": "xlsx"}
_HTML = re.compile(rb"^\s*(<!--.*?-->\s*)*(<!doctype\s+html|<html[\s>])", re.IGNORECASE | re.DOTALL)
MAX_MEMBERS = 20_000


def looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf")
    return bool(_HTML.match(text[:4096]))


def probe_office(path: Path, head: bytes, settings: IngestSettings) -> Probe | None:
    """A Probe for an office/web document, None if the file is none, Rejected if it is unsafe."""
    if looks_like_html(head):
        return Probe(media_type="document", mime=MIMES["html"], ext="html", meta={"container": "html"})
    if not head.startswith(b"PK\x03\x04"):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            _check_bomb(infos, settings)
            names = {i.filename for i in infos}
            ext = _container_type(z, names)
            if ext is None:
                return None
            pages = _page_count(z, names, ext)
    except zipfile.BadZipFile:
        return None  # not a readable container: not an office document either (unsupported type)
    if pages is not None and pages > settings.max_pdf_pages:
        raise Rejected(RejectReason.PDF_TOO_MANY_PAGES, f"{ext} has {pages} pages (limit {settings.max_pdf_pages})")
    if pages == 0 and ext in ("pptx", "xlsx"):
        raise Rejected(RejectReason.PDF_NO_PAGES, f"{ext} has no {'slides' if ext == 'pptx' else 'sheets'}")
    return Probe(media_type="document", mime=MIMES[ext], ext=ext, page_count=pages, meta={"container": "zip"})


def _check_bomb(infos: list[zipfile.ZipInfo], settings: IngestSettings) -> None:
    if len(infos) > MAX_MEMBERS:
        raise Rejected(RejectReason.CORRUPT, f"zip bomb: {len(infos)} members (limit {MAX_MEMBERS})")
    total = 0
    for i in infos:
        if i.filename.startswith(("/", "\\")) or ".." in Path(i.filename).parts:
            raise Rejected(RejectReason.CORRUPT, f"zip member with an unsafe path: {i.filename!r}")
        total += i.file_size
        if i.file_size > 1_000_000 and i.file_size / max(i.compress_size, 1) > settings.max_office_ratio:
            raise Rejected(
                RejectReason.CORRUPT,
                f"zip bomb: {i.filename!r} expands {i.file_size / max(i.compress_size, 1):.0f}x "
                f"(limit {settings.max_office_ratio:g}x)",
            )
    if total > settings.max_office_uncompressed_bytes:
        raise Rejected(
            RejectReason.CORRUPT,
            f"zip bomb: expands to {total} bytes (limit {settings.max_office_uncompressed_bytes})",
        )


def _container_type(z: zipfile.ZipFile, names: set[str]) -> str | None:
    if "mimetype" in names:
        declared = z.read("mimetype")[:200].decode("ascii", "replace").strip()
        return _ODF.get(declared)
    if "[Content_Types].xml" in names:
        for part, ext in _OOXML_MAIN.items():
            if part in names:
                return ext
    return None


def _page_count(z: zipfile.ZipFile, names: set[str], ext: str) -> int | None:
    if ext == "pptx":
        return sum(1 for n in names if re.fullmatch(r"ppt/slides/slide\d+\.xml", n))
    if ext == "xlsx":
        return sum(1 for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
    if ext == "docx" and "docProps/app.xml" in names:
        m = re.search(rb"<Pages>(\d+)</Pages>", z.read("docProps/app.xml")[:100_000])
        return int(m.group(1)) if m else None
    return None
