"""Office and web documents: rendered to PDF for geometry, MinerU's native parse for tables.

Review needs page images with boxes, and DOCX/XLSX/HTML/EPUB have no pages of their own: LibreOffice
(headless, Debian's packages, ``scripts/ensure-libreoffice.sh``) lays them out as PDF, which then
goes down the PDF path (page images, MinerU flash on the text layer, agreement with pymupdf). MinerU
4.x also parses the office file natively (DocVortex without boxes); its tables come straight from
the document's structure (colspan/rowspan kept) rather than from a layout guess on the rendering,
so :func:`apply_native_tables` puts them into the rendered PDF's table blocks, matched in reading
order and only where the cell texts agree (recorded in the detail; a mismatch keeps the PDF's).

LibreOffice runs with a private user profile per conversion (concurrent runs sharing one profile
block each other) in its own process group, killed on timeout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from labelloop.documents import agreement, docvortex
from labelloop.documents.mineru_parse import MinerUOutput
from labelloop.documents.record import Block

#: extensions we ingest as office/web documents (what MinerU 4.x's flash tier parses natively)
OFFICE_EXTS = ("docx", "pptx", "xlsx", "odt", "ods", "odp", "epub", "html")
#: tables whose normalised cell text agrees at least this much are taken from the native parse
MIN_TABLE_SIMILARITY = 0.6


class OfficeError(RuntimeError):
    """An office document could not be rendered to PDF."""


def soffice() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


def to_pdf(data: bytes, ext: str, *, timeout_s: float = 300.0) -> tuple[bytes, dict[str, Any]]:
    """Render an office document to PDF with LibreOffice; (pdf bytes, provenance)."""
    exe = soffice()
    if exe is None:
        raise OfficeError("office document: LibreOffice (soffice) is not installed; run scripts/ensure-libreoffice.sh")
    with tempfile.TemporaryDirectory(prefix="labelloop-office-") as tmp:
        src = Path(tmp) / f"in.{ext}"
        src.write_bytes(data)
        argv = [
            exe,
            f"-env:UserInstallation=file://{tmp}/profile",
            "--headless",
            "--norestore",
            "--convert-to",
            "pdf",
            "--outdir",
            str(Path(tmp) / "out"),
            str(src),
        ]
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=dict(os.environ)
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise OfficeError(f"LibreOffice timed out after {timeout_s:g} s converting the {ext} document") from None
        out = Path(tmp) / "out" / "in.pdf"
        if proc.returncode != 0 or not out.is_file():
            tail = (err or b"").decode("utf-8", "replace").strip()[-400:]
            raise OfficeError(f"LibreOffice could not convert the {ext} document (exit {proc.returncode}): {tail}")
        version = _version(exe)
        return out.read_bytes(), {"renderer": "libreoffice", "renderer_version": version, "source_ext": ext}


_VERSION_CACHE: dict[str, str] = {}


def _version(exe: str) -> str:
    if exe not in _VERSION_CACHE:
        try:
            v = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout.split()
            _VERSION_CACHE[exe] = v[1] if len(v) > 1 else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            _VERSION_CACHE[exe] = "unknown"
    return _VERSION_CACHE[exe]


def apply_native_tables(blocks: list[list[Block]], native: MinerUOutput) -> dict[str, Any]:
    """Replace the rendered PDF's table contents by MinerU's native office tables, in order, and
    type as titles the text blocks whose text is a heading in the native parse."""
    if native.docvortex is None:
        return {"tables": 0, "replaced": 0, "reason": "native parse is not DocVortex"}
    native_tables = [b.content for b in docvortex.native_blocks(native.docvortex) if b.type == "table"]
    pdf_tables = [(p, i) for p, page in enumerate(blocks) for i, b in enumerate(page) if b.type == "table"]
    decisions: list[dict[str, Any]] = []
    replaced = 0
    for k, (p, i) in enumerate(pdf_tables):
        if k >= len(native_tables):
            decisions.append({"page": p, "block": i, "replaced": False, "reason": "no native table left"})
            continue
        sim = agreement.text_similarity(blocks[p][i].content, native_tables[k])
        ok = sim >= MIN_TABLE_SIMILARITY
        if ok:
            blocks[p][i] = blocks[p][i].model_copy(update={"content": native_tables[k]})
            replaced += 1
        decisions.append({"page": p, "block": i, "replaced": ok, "text_similarity": round(sim, 4)})
    # headings: the document's own styles say what is a title; a layout guess on the rendering may not
    native_titles = {
        agreement.normalise(b.content) for b in docvortex.native_blocks(native.docvortex) if b.type == "title"
    }
    retitled = 0
    for page in blocks:
        for i, b in enumerate(page):
            if b.type in ("text", "discarded") and b.content and agreement.normalise(b.content) in native_titles:
                page[i] = b.model_copy(update={"type": "title"})
                retitled += 1
    return {
        "native_titles": len(native_titles),
        "retitled": retitled,
        "native_tables": len(native_tables),
        "pdf_tables": len(pdf_tables),
        "replaced": replaced,
        "tables": decisions,
    }
