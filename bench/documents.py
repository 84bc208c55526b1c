"""Pages per second of the CPU document backend, text-layer and scanned pages separately.

Usage: ``.venv/bin/python bench/documents.py [--data DIR] [--repeat N] [--engines-only] [--memory]``

``--memory``: peak RSS of the CPU backend (``PyMuPDFLayoutBackend.predict``, layout model and
RapidOCR loaded) over every PDF of the folder, one after another in one child process (``wait4``),
against the 800 MB budget; its last line is one JSON object (``peak_rss_mb``, ``under_budget``).

Then MinerU 4.x flash against the pymupdf layout backend on the same text-layer PDFs, each engine in a
child process of its own (``mineru-kit parse --tier flash -f middle_json`` from .venv-mineru; the
pymupdf analyzer), so pages/s and peak RSS (``wait4`` of the child) are on equal footing; office
documents (a DOCX and a PPTX made here) are reported separately: MinerU parses them natively, the
pymupdf backend reads the LibreOffice rendering to PDF (what both backends do for page geometry;
the renderer's peak RSS counts, as a waited-for descendant of the child). The run ends with one JSON
line.

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
import json
import os
import subprocess
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


REPO = Path(__file__).resolve().parents[1]
_PYMUPDF_CHILD = """
import sys, pymupdf
from labelloop.config import DocumentSettings
from labelloop.documents.pymupdf_layout import PyMuPDFLayoutAnalyzer
from labelloop.documents.render import page_geometry
a = PyMuPDFLayoutAnalyzer(DocumentSettings())
for path in sys.argv[1:]:
    d = pymupdf.open(path)
    a.analyze(d, [page_geometry(d[i], 144, "0" * 64) for i in range(len(d))])
"""

_PYMUPDF_OFFICE_CHILD = """
import sys, pymupdf
from pathlib import Path
from labelloop.config import DocumentSettings
from labelloop.documents import office
from labelloop.documents.pymupdf_layout import PyMuPDFLayoutAnalyzer
from labelloop.documents.render import page_geometry
a = PyMuPDFLayoutAnalyzer(DocumentSettings())
for path in map(Path, sys.argv[1:]):
    pdf, _ = office.to_pdf(path.read_bytes(), path.suffix[1:])
    d = pymupdf.open(stream=pdf, filetype="pdf")
    a.analyze(d, [page_geometry(d[i], 144, "0" * 64) for i in range(len(d))])
"""


def child(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.read().decode()[-1000:] if proc.stderr else ''}")
    return wall, usage.ru_maxrss / 1024


def engines(pdfs: list[Path]) -> dict[str, object]:
    kit = REPO / ".venv-mineru" / "bin" / "mineru-kit"
    if not kit.exists():
        subprocess.run([str(REPO / "scripts" / "ensure-mineru.sh")], check=True)
    text = [p for p in pdfs if all(len(pg.get_text().strip()) >= 16 for pg in pymupdf.open(p))]
    pages = sum(len(pymupdf.open(p)) for p in text)
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-engines-") as tmp:
        work = Path(tmp)
        m_s, m_mb = child(
            [str(kit), "parse", *map(str, text), "-o", str(work / "m"), "--tier", "flash", "-f", "middle_json"], work
        )
        p_s, p_mb = child([sys.executable, "-c", _PYMUPDF_CHILD, *map(str, text)], work)
        sys.path.insert(0, str(REPO / "tests"))
        from test_office import make_docx, make_pptx

        office = [make_docx(work / "report.docx"), make_pptx(work / "deck.pptx")]
        o_s, o_mb = child(
            [str(kit), "parse", *map(str, office), "-o", str(work / "o"), "--tier", "flash", "-f", "middle_json"], work
        )
        po_s, po_mb = child([sys.executable, "-c", _PYMUPDF_OFFICE_CHILD, *map(str, office)], work)
    print(f"text-layer: {len(text)} PDFs, {pages} pages")
    print(f"  mineru flash  {pages / m_s:6.3f} pages/s  peak {m_mb:6.0f} MB  (process start included)")
    print(f"  pymupdf       {pages / p_s:6.3f} pages/s  peak {p_mb:6.0f} MB  (model load included)")
    print(f"office (mineru flash, native): 2 documents in {o_s:.1f} s, peak {o_mb:.0f} MB")
    print(f"office (LibreOffice -> pymupdf): 2 documents in {po_s:.1f} s, peak {po_mb:.0f} MB")
    return {
        "bench": "documents",
        "text_pages": pages,
        "mineru_flash_pages_per_s": round(pages / m_s, 3),
        "mineru_flash_peak_rss_mb": round(m_mb),
        "pymupdf_pages_per_s": round(pages / p_s, 3),
        "pymupdf_peak_rss_mb": round(p_mb),
        "mineru_vs_pymupdf_speed": round(p_s / m_s, 3),
        "mineru_vs_pymupdf_rss": round(m_mb / p_mb, 3),
        "office_docs": 2,
        "office_seconds": round(o_s, 2),
        "office_peak_rss_mb": round(o_mb),
        "office_pymupdf_seconds": round(po_s, 2),
        "office_pymupdf_peak_rss_mb": round(po_mb),
        "office_mineru_vs_pymupdf_speed": round(po_s / o_s, 3),
    }


_MEMORY_CHILD = """
import asyncio, hashlib, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from documents import item_for
from labelloop.config import DatabaseSettings, Settings, StorageSettings
from labelloop.prelabel.documents.cpu import PyMuPDFLayoutBackend
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore
spec = SpecRegistry().get("document_layout")
with tempfile.TemporaryDirectory() as tmp:
    s = Settings(home=Path(tmp), db=DatabaseSettings(url=f"sqlite:///{tmp}/x.db"),
                 storage=StorageSettings(backend="local", root=Path(tmp) / "o"))
    backend = PyMuPDFLayoutBackend(s, LocalStore(Path(tmp) / "o"))
    for path in sys.argv[2:]:
        data = Path(path).read_bytes()
        res = asyncio.run(backend.predict(item_for(data), data, spec))
        if res.status != "ok":
            raise SystemExit(f"{path}: {res.error}")
        print(Path(path).name, len(res.record["pages"]), flush=True)
"""
MEMORY_BUDGET_MB = 800


def memory(pdfs: list[Path]) -> dict[str, object]:
    """Peak RSS of the CPU backend over all the PDFs in one process."""
    pages = sum(len(pymupdf.open(p)) for p in pdfs)
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-mem-") as tmp:
        wall, peak = child(
            [sys.executable, "-c", _MEMORY_CHILD, str(Path(__file__).resolve().parent), *map(str, pdfs)], Path(tmp)
        )
    print(f"CPU backend over {len(pdfs)} PDFs ({pages} pages): peak RSS {peak:.0f} MB, {wall:.1f} s")
    return {
        "bench": "documents_memory",
        "pdfs": len(pdfs),
        "pages": pages,
        "peak_rss_mb": round(peak),
        "budget_mb": MEMORY_BUDGET_MB,
        "under_budget": peak < MEMORY_BUDGET_MB,
        "seconds": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of PDFs")
    ap.add_argument("--repeat", type=int, default=1, help="runs per document (best is kept)")
    ap.add_argument("--engines-only", action="store_true", help="only the MinerU vs pymupdf comparison")
    ap.add_argument("--memory", action="store_true", help="only the CPU backend's peak RSS over the PDFs")
    args = ap.parse_args(argv)
    pdfs = sorted(args.data.glob("*.pdf"))
    if not pdfs:
        print(f"no PDFs in {args.data}", file=sys.stderr)
        return 1
    if args.engines_only:
        print(json.dumps(engines(pdfs)))
        return 0
    if args.memory:
        print(json.dumps(memory(pdfs)))
        return 0
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
    print(json.dumps(engines(pdfs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
