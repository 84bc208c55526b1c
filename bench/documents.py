"""Pages per second of the CPU document backend, text-layer and scanned pages separately.

Usage: ``.venv/bin/python bench/documents.py [--data DIR] [--repeat N]``

Each PDF goes through ``PyMuPDFLayoutBackend.predict`` end to end (checks, page images rendered
and stored at the render DPI, layout analysis or OCR, record validation) into a fresh temporary
store, after a warm-up that loads the layout and OCR models. Documents are bucketed by how their
pages were read. Absolute numbers depend on the machine, so each bucket is also compared with a
baseline measured in the same run on the same pages: plain PyMuPDF text extraction
(``page.get_text()``) for text-layer pages, and rendering at the OCR resolution for scans (the
least work any OCR needs).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pymupdf

from labelloop.config import DatabaseSettings, Settings, StorageSettings
from labelloop.db.models import Item
from labelloop.documents.ocr import PageOCR
from labelloop.documents.render import open_pdf, page_geometry
from labelloop.prelabel.documents.cpu import PyMuPDFLayoutBackend
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("LABELLOOP_SAMPLE_DATA", REPO.parent / "shared" / "data")) / "documents"


def item_for(data: bytes) -> Item:
    sha = hashlib.sha256(data).hexdigest()
    return Item(
        id=1,
        sha256=sha,
        media_type="document",
        mime="application/pdf",
        ext="pdf",
        size_bytes=len(data),
        storage_key=f"raw/{sha[:2]}/{sha}.pdf",
    )


def warm_up_pdfs() -> list[bytes]:
    """A text page and a scanned (image-only) page, to load both models before timing."""
    text = pymupdf.open()
    page = text.new_page()
    page.insert_text((72, 90), "Warm-up page with a text layer. " * 3)
    scan = pymupdf.open()
    pix = page.get_pixmap(dpi=150)
    scan.new_page().insert_image(scan[0].rect, pixmap=pix)
    return [text.tobytes(), scan.tobytes()]


def baseline_seconds(data: bytes, scanned: bool, settings: Settings) -> float:
    """Plain PyMuPDF on the same pages: text extraction, or rendering at the OCR resolution."""
    ocr = PageOCR(settings.documents)
    t0 = time.perf_counter()
    doc = open_pdf(data, max_pages=settings.ingest.max_pdf_pages)
    for page in doc:
        if scanned:
            zoom = ocr.dpi_for(page_geometry(page, settings.documents.render_dpi, "0" * 64)) / 72
            page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom))
        else:
            page.get_text()
    doc.close()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of PDFs")
    ap.add_argument("--repeat", type=int, default=1, help="runs per document (best is kept)")
    args = ap.parse_args(argv)
    pdfs = sorted(args.data.glob("*.pdf"))
    if not pdfs:
        print(f"no PDFs in {args.data}", file=sys.stderr)
        return 1
    spec = SpecRegistry().get("document_layout")
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # pages, seconds, baseline seconds
    print(f"{'document':<28}{'pages':>6}{'mode':>12}{'seconds':>10}{'pages/s':>10}{'baseline p/s':>14}")
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-") as tmp:
        settings = Settings(
            home=Path(tmp),
            db=DatabaseSettings(url=f"sqlite:///{tmp}/unused.db"),
            storage=StorageSettings(backend="local", root=Path(tmp) / "warm"),
        )
        backend = PyMuPDFLayoutBackend(settings, LocalStore(Path(tmp) / "warm"))
        for data in warm_up_pdfs():
            asyncio.run(backend.predict(item_for(data), data, spec))
        for run, path in enumerate(pdfs):
            data = path.read_bytes()
            best = float("inf")
            for rep in range(args.repeat):
                backend.store = LocalStore(Path(tmp) / f"run{run}-{rep}")  # fresh: images rendered each time
                t0 = time.perf_counter()
                res = asyncio.run(backend.predict(item_for(data), data, spec))
                best = min(best, time.perf_counter() - t0)
                if res.status != "ok":
                    print(f"{path.name}: failed: {res.error}", file=sys.stderr)
                    return 1
            modes = {p["mode"] for p in res.confidence_detail["pages"]}
            mode = "scanned" if modes == {"ocr"} else "text-layer" if modes == {"text_layer"} else "mixed"
            pages = len(res.confidence_detail["pages"])
            base = min(baseline_seconds(data, mode == "scanned", settings) for _ in range(3))
            t = totals[mode]
            t[0], t[1], t[2] = t[0] + pages, t[1] + best, t[2] + base
            print(f"{path.name:<28}{pages:>6}{mode:>12}{best:>10.2f}{pages / best:>10.2f}{pages / base:>14.1f}")
    print()
    for mode, (pages, secs, base) in totals.items():
        print(
            f"{mode:<11} {int(pages):>3} pages  {pages / secs:6.2f} pages/s  "
            f"(baseline {pages / base:7.1f} pages/s; the backend takes {secs / base:,.0f}x the baseline time)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
