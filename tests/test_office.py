"""Office documents: ingest probe (type from the container, zip-bomb and page checks), then the real
pipeline on a DOCX and a PPTX built here: LibreOffice renders them to PDF (page images, geometry),
real MinerU 4.x flash parses the rendering and the office file natively (its CLI, and a real
`mineru-api` server), and the native tables (colspan kept) replace the rendering's where their texts
agree. The offline pymupdf backend reads the same rendering; office documents go through ingest,
pre-label, validation and export like PDFs, into a version both dataset checkers accept.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import zipfile
from pathlib import Path

import docx
import pptx
import pytest
from pptx.util import Inches
from sqlalchemy import select
from test_export_support import add_record, make_settings

from labelloop.config import IngestSettings, MinerUSettings, Settings
from labelloop.db import Database
from labelloop.db.models import Item
from labelloop.documents.office import soffice
from labelloop.documents.record import DocumentRecord
from labelloop.documents.render import png_size
from labelloop.export import export_dataset, read_manifest, verify_version
from labelloop.ingest import ingest
from labelloop.ingest.probe import Rejected, probe_file
from labelloop.prelabel.base import PredictionResult
from labelloop.prelabel.documents.cpu import PyMuPDFLayoutBackend
from labelloop.prelabel.documents.mineru import MinerUBackend
from labelloop.prelabel.runner import latest_predictions, run_prelabel_sync
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore
from labelloop.training.check_dataset import check_dataset
from labelloop.validation import validate_spec

pytest_plugins = ["fixtures_mineru"]


def make_docx(path: Path) -> Path:
    d = docx.Document()
    d.add_heading("Quarterly Fleet Report", 0)
    d.add_paragraph("The fleet grew by twelve vehicles in the third quarter. Fuel costs fell slightly.")
    t = d.add_table(rows=3, cols=3)
    t.style = "Table Grid"
    t.cell(0, 0).merge(t.cell(0, 1)).text = "Vehicle type"
    t.cell(0, 2).text = "Count"
    for i, row in enumerate([("Vans", "Diesel", "14"), ("Cars", "Petrol", "30")], 1):
        for j, v in enumerate(row):
            t.cell(i, j).text = v
    d.add_page_break()
    d.add_heading("Outlook", level=1)
    d.add_paragraph("Next quarter we expect further growth in electric vehicles across all depots.")
    d.save(path)
    return path


def make_pptx(path: Path) -> Path:
    p = pptx.Presentation()
    s = p.slides.add_slide(p.slide_layouts[1])
    s.shapes.title.text = "Fleet Overview"
    s.placeholders[1].text = "Twelve new vehicles this quarter\nLower fuel costs per kilometre"
    s = p.slides.add_slide(p.slide_layouts[5])
    s.shapes.title.text = "Counts by type"
    tbl = s.shapes.add_table(3, 2, Inches(1), Inches(2), Inches(6), Inches(1.5)).table
    for r, (a, b) in enumerate([("Type", "Count"), ("Vans", "14"), ("Cars", "30")]):
        tbl.cell(r, 0).text, tbl.cell(r, 1).text = a, b
    p.save(path)
    return path


# --------------------------------------------------------------------------- probe


def test_probe_office_types_from_the_container(tmp_path: Path) -> None:
    limits = IngestSettings()
    d = probe_file(make_docx(tmp_path / "report.bin"), limits)  # the name says nothing
    assert (d.media_type, d.ext) == ("document", "docx")
    p = probe_file(make_pptx(tmp_path / "deck.pptx"), limits)
    assert (p.ext, p.page_count) == ("pptx", 2)
    html = tmp_path / "page.txt"
    html.write_text("<!DOCTYPE html><html><body><h1>Hi</h1></body></html>")
    assert probe_file(html, limits).ext == "html"
    with pytest.raises(Rejected, match="pdf_too_many_pages"):
        probe_file(tmp_path / "deck.pptx", IngestSettings(max_pdf_pages=1))
    with pytest.raises(Rejected, match="unsupported"):
        probe_file(tmp_path / "deck.pptx", IngestSettings(office=False))


def test_probe_rejects_zip_bombs_and_unsafe_paths(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", b"\0" * 50_000_000)  # ~1000x compression
    with pytest.raises(Rejected, match=r"zip bomb: 'word/document\.xml' expands"):
        probe_file(bomb, IngestSettings())
    with pytest.raises(Rejected, match="zip bomb: expands to"):
        probe_file(bomb, IngestSettings(max_office_uncompressed_bytes=1_000_000, max_office_ratio=1e6))
    evil = tmp_path / "evil.docx"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("../../etc/passwd", "x")
    with pytest.raises(Rejected, match="unsafe path"):
        probe_file(evil, IngestSettings())


# --------------------------------------------------------------------------- real pipeline


@pytest.fixture(scope="module")
def office_backend(
    tmp_path_factory: pytest.TempPathFactory, mineru_venv: Path, mineru_home: Path
) -> tuple[MinerUBackend, LocalStore]:
    if soffice() is None:
        pytest.fail("LibreOffice is not installed: run scripts/ensure-libreoffice.sh (scripts/test.sh does)")
    home = tmp_path_factory.mktemp("office")
    settings = Settings(
        home=home,
        storage={"root": home / "objects"},
        mineru=MinerUSettings(venv=mineru_venv, home=mineru_home, timeout_s=600),
    )
    store = LocalStore(settings.storage.root)
    return MinerUBackend(settings, store), store


@pytest.mark.parametrize("kind", ["docx", "pptx"])
def test_office_document_through_libreoffice_and_mineru(
    kind: str, tmp_path: Path, office_backend: tuple[MinerUBackend, LocalStore]
) -> None:
    b, store = office_backend
    path = (make_docx if kind == "docx" else make_pptx)(tmp_path / f"doc.{kind}")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    item = Item(id=1, sha256=sha, media_type="document", mime="x", ext=kind, size_bytes=len(data), storage_key="k")
    res = asyncio.run(b.predict(item, data, SpecRegistry().get("document_layout")))
    check_office_result(res, store, kind)


@pytest.mark.parametrize("kind", ["docx", "pptx"])
def test_office_document_through_a_real_mineru_api_server(
    kind: str, tmp_path: Path, office_backend: tuple[MinerUBackend, LocalStore], mineru_api: str
) -> None:
    """The same documents through MinerU 4.x's own HTTP API (mode=http, a real `mineru-api`): the
    rendering's pages and the office file itself are submitted as tasks and polled to completion."""
    cli, store = office_backend
    settings = cli.settings.model_copy(
        update={"mineru": cli.settings.mineru.model_copy(update={"mode": "http", "api_url": mineru_api})}
    )
    b = MinerUBackend(settings, store)
    b._analyzer = cli.analyzer  # loading the layout model again costs seconds
    assert b.model_version == "mineru-4.0.12-flash"  # asked from the server's /v1/health
    path = (make_docx if kind == "docx" else make_pptx)(tmp_path / f"doc.{kind}")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    item = Item(id=1, sha256=sha, media_type="document", mime="x", ext=kind, size_bytes=len(data), storage_key="k")
    res = asyncio.run(b.predict(item, data, SpecRegistry().get("document_layout")))
    check_office_result(res, store, kind)
    assert res.confidence_detail["origin"].startswith("mineru-api task ")


def check_office_result(res: PredictionResult, store: LocalStore, kind: str) -> None:
    """Two pages with images of their own size, MinerU flash on every page, the title found, the
    native office table (colspan kept) in place of the rendering's."""
    assert res.status == "ok", res.error
    rec = DocumentRecord.model_validate(res.record)
    assert len(rec.pages) == 2  # the page break / two slides
    for p in rec.pages:
        assert png_size(store.get(p.image_key)) == (p.width_px, p.height_px)
    d = res.confidence_detail
    assert d["office"]["renderer"] == "libreoffice" and d["office"]["source_ext"] == kind
    assert all(p["engine"] == "mineru" and p["tier"] == "flash" for p in d["pages"])
    titles = [bl.content for p in rec.pages for bl in p.blocks if bl.type == "title"]
    tables = [bl for p in rec.pages for bl in p.blocks if bl.type == "table"]
    assert tables and all(t.content.startswith("<table") for t in tables)
    native = d["office"]["native"]
    assert native["native_tables"] == 1 and native["replaced"] == 1
    if kind == "docx":
        assert "Quarterly Fleet Report" in titles
        assert 'colspan="2"' in tables[0].content and "Vehicle type" in tables[0].content
    else:
        assert "Fleet Overview" in titles and "Vans" in tables[0].content


# --------------------------------------------------------------------------- CPU backend and export


@pytest.mark.parametrize("kind", ["docx", "pptx"])
def test_pymupdf_backend_renders_office_documents_first(kind: str, tmp_path: Path) -> None:
    """The offline CPU backend takes office documents through the same LibreOffice rendering as
    MinerU: two pages with images and geometry, the title and the table found on the rendering,
    and the renderer in the provenance."""
    if soffice() is None:
        pytest.fail("LibreOffice is not installed: run scripts/ensure-libreoffice.sh (scripts/test.sh does)")
    settings = Settings(home=tmp_path, storage={"root": tmp_path / "objects"})
    store = LocalStore(settings.storage.root)
    data = (make_docx if kind == "docx" else make_pptx)(tmp_path / f"doc.{kind}").read_bytes()
    item = Item(id=1, sha256=hashlib.sha256(data).hexdigest(), media_type="document", mime="x", ext=kind,
                size_bytes=len(data), storage_key="k")  # fmt: skip
    res = asyncio.run(PyMuPDFLayoutBackend(settings, store).predict(item, data, SpecRegistry().get("document_layout")))
    assert res.status == "ok", res.error
    rec = DocumentRecord.model_validate(res.record)
    assert len(rec.pages) == 2
    for p in rec.pages:
        assert png_size(store.get(p.image_key)) == (p.width_px, p.height_px)
    assert res.confidence_detail["office"]["renderer"] == "libreoffice"
    assert res.confidence_detail["office"]["source_ext"] == kind
    text = " ".join(bl.content for p in rec.pages for bl in p.blocks)
    assert ("Quarterly Fleet Report" if kind == "docx" else "Fleet Overview") in text
    assert "Vans" in text


def test_pymupdf_backend_without_libreoffice_fails_the_item_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelloop.documents import office

    monkeypatch.setattr(office, "soffice", lambda: None)
    settings = Settings(home=tmp_path, storage={"root": tmp_path / "objects"})
    data = make_docx(tmp_path / "doc.docx").read_bytes()
    item = Item(id=1, sha256=hashlib.sha256(data).hexdigest(), media_type="document", mime="x", ext="docx",
                size_bytes=len(data), storage_key="k")  # fmt: skip
    backend = PyMuPDFLayoutBackend(settings, LocalStore(settings.storage.root))
    res = asyncio.run(backend.predict(item, data, SpecRegistry().get("document_layout")))
    assert res.status == "failed" and "LibreOffice (soffice) is not installed" in (res.error or "")


def test_office_documents_are_exported_like_pdfs(sqlite_db: Database, tmp_path: Path) -> None:
    """DOCX and PPTX: ingested, pre-labelled by the CPU backend (rendered to PDF), accepted as
    reviewed, validated and exported: one sample per rendered page with its page image, a version
    the export checker and the trainer-side dataset checker accept."""
    if soffice() is None:
        pytest.fail("LibreOffice is not installed: run scripts/ensure-libreoffice.sh (scripts/test.sh does)")
    settings = make_settings(tmp_path, db_url=str(sqlite_db.engine.url))
    store = LocalStore(settings.storage.root)
    spec = SpecRegistry().get("document_layout")
    src = tmp_path / "src"
    src.mkdir()
    make_docx(src / "report.docx")
    make_pptx(src / "slides.pptx")
    stats = ingest(sqlite_db, store, settings, str(src))
    assert stats.new_items == 2 and stats.rejected == 0, stats.reject_reasons
    with sqlite_db.session() as s:
        items = {it.ext: it for it in s.scalars(select(Item))}
        for it in items.values():
            s.expunge(it)
    assert {it.media_type for it in items.values()} == {"document"}

    pre = run_prelabel_sync(sqlite_db, store, spec, PyMuPDFLayoutBackend(settings, store))
    assert (pre.ok, pre.failed) == (2, 0)
    pages = {}
    with sqlite_db.session() as s:
        for it in items.values():
            (pred,) = latest_predictions(s, it.id, spec.name)
            assert pred.confidence_detail["office"]["source_ext"] == it.ext
            pages[it.sha256] = len(pred.record["pages"])
            add_record(sqlite_db, it, spec.name, pred.record, model=pred.model, model_version=pred.model_version)
    assert sorted(pages.values()) == [2, 2]

    summary = validate_spec(sqlite_db, store, settings, spec)
    assert summary.n_failed == 0 and summary.passed_gate, summary.failed_checks
    result = export_dataset(sqlite_db, store, settings, spec, validation_run_id=summary.validation_run_id)
    assert result.created and verify_version(store, result.prefix) == []
    manifest = read_manifest(store, result.prefix)
    assert manifest is not None and manifest["counts"] == {**manifest["counts"], "records": 2, "samples": 4}
    # page images live in the spec's pool beside the version, named from it as ../images/...
    expected = {f"../images/{sha}_p{n}.png" for sha, k in pages.items() for n in range(k)}
    assert {f for f in manifest["files"] if f.startswith("../images/")} == expected
    root = settings.storage.root.resolve() / result.prefix
    samples = [smp for p in sorted(root.glob("qwen_*.json")) for smp in json.loads(p.read_text())]
    assert sorted(smp["image"] for smp in samples) == sorted(expected)
    answers = " ".join(smp["conversations"][1]["value"] for smp in samples)
    assert "Quarterly Fleet Report" in answers and "Fleet Overview" in answers
    checked = [check_dataset(ann, root) for ann in sorted(root.glob("qwen_*.json"))]
    assert [p for _, problems, _ in checked for p in problems] == []
    assert sum(n for n, _, _ in checked) == 4
