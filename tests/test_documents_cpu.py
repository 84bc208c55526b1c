"""The CPU document backend (pymupdf4llm layout + RapidOCR) on the four sample PDFs, bad input
through the pre-label runner, reruns, and the Airflow operator.

The four sample documents are analysed once per module (OCR of the 8-page scan dominates the
runtime); each test then checks one property of the stored records and page images.
"""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from sqlalchemy import func, select
from synthetic import add_pdf_item, pdf_item

from labelloop.config import DatabaseSettings, DocumentSettings, IngestSettings, Settings, StorageSettings
from labelloop.db import Database, Item, Prediction
from labelloop.documents.record import DocumentRecord
from labelloop.documents.render import png_size
from labelloop.prelabel.base import PredictionResult
from labelloop.prelabel.documents.cpu import PyMuPDFLayoutBackend
from labelloop.prelabel.factory import make_backend
from labelloop.prelabel.runner import run_prelabel_sync
from labelloop.specs import SpecRegistry, TaskSpec
from labelloop.storage import LocalStore, ObjectStore

DOCS = {"mineru-demo1": 13, "mineru-demo2": 6, "mineru-demo3": 10, "mineru-small_ocr": 8}
TITLE = "The response of flow duration curves to afforestation"
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def spec() -> TaskSpec:
    return SpecRegistry().get("document_layout")


@pytest.fixture(scope="module")
def cpu_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, LocalStore]:
    root = tmp_path_factory.mktemp("cpu")
    settings = Settings(
        home=root,
        db=DatabaseSettings(url=f"sqlite:///{root / 'unused.db'}"),
        storage=StorageSettings(backend="local", root=root / "objects"),
    )
    return settings, LocalStore(root / "objects")


@pytest.fixture(scope="module")
def results(
    sample_data: Path, cpu_env: tuple[Settings, LocalStore], spec: TaskSpec
) -> dict[str, tuple[Item, PredictionResult]]:
    settings, store = cpu_env
    backend = PyMuPDFLayoutBackend(settings, store)
    out = {}
    for i, name in enumerate(DOCS, start=1):
        data = (sample_data / "documents" / f"{name}.pdf").read_bytes()
        item = pdf_item(data, i)
        out[name] = (item, asyncio.run(backend.predict(item, data, spec)))
    return out


def record_of(results: dict[str, tuple[Item, PredictionResult]], name: str) -> DocumentRecord:
    res = results[name][1]
    assert res.status == "ok", res.error
    return DocumentRecord.model_validate(res.record)


class TableShape(HTMLParser):
    """Counts rows and cells of the tables in an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = 0
        self.rows: list[int] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append(0)
        elif tag in ("td", "th") and self.rows:
            self.rows[-1] += 1

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.texts.append(data.strip())


# --------------------------------------------------------------------------- the four PDFs


def test_page_counts(results: dict[str, tuple[Item, PredictionResult]], sample_data: Path) -> None:
    for name, pages in DOCS.items():
        rec = record_of(results, name)
        assert len(rec.pages) == pages == pymupdf.open(sample_data / "documents" / f"{name}.pdf").page_count
        assert [p.page for p in rec.pages] == list(range(pages))


def test_demo1_title_block_on_first_page(results: dict[str, tuple[Item, PredictionResult]], sample_data: Path) -> None:
    rec = record_of(results, "mineru-demo1")
    page = rec.pages[0]
    titles = [b for b in page.blocks if b.type == "title" and TITLE.lower() in " ".join(b.content.split()).lower()]
    assert len(titles) == 1, [b.content for b in page.blocks if b.type == "title"]
    title = titles[0]
    assert title.source == "text_layer" and 0 < title.score <= 1
    # the box is where PyMuPDF finds the title's last word on the page, scaled to the image
    # (2 px/pt at 144 dpi); the word also occurs in the abstract, so one of the hits must fit
    hits = pymupdf.open(sample_data / "documents" / "mineru-demo1.pdf")[0].search_for("afforestation")
    s = page.dpi / 72
    x1, y1, x2, y2 = title.bbox
    assert any(x1 - 2 <= r.x0 * s and y1 - 2 <= r.y0 * s and r.x1 * s <= x2 + 2 and r.y1 * s <= y2 + 2 for r in hits), (
        title.bbox,
        hits,
    )
    assert TITLE in rec.markdown


def test_demo3_tables_are_html_tables(results: dict[str, tuple[Item, PredictionResult]]) -> None:
    rec = record_of(results, "mineru-demo3")
    tables = [b for p in rec.pages for b in p.blocks if b.type == "table"]
    assert len(tables) >= 5
    shapes = []
    for t in tables:
        assert t.content.lstrip().startswith("<table"), t.content[:80]
        shape = TableShape()
        shape.feed(t.content)
        assert shape.tables >= 1 and shape.rows and all(n >= 1 for n in shape.rows)
        shapes.append(shape)
    # a real grid, with the values in their cells (demo3 page 2: a medal table)
    assert any(len(s.rows) >= 3 and max(s.rows) >= 3 for s in shapes)
    medals = [s for s in shapes if "Great Britain" in s.texts]
    assert medals and {"Nation", "Gold", "Silver", "Bronze"} <= set(medals[0].texts)


def test_scan_is_read_by_ocr_with_scores(results: dict[str, tuple[Item, PredictionResult]]) -> None:
    _, res = results["mineru-small_ocr"]
    rec = record_of(results, "mineru-small_ocr")
    blocks = [b for p in rec.pages for b in p.blocks]
    chinese = sum(len(CJK.findall(b.content)) for b in blocks)
    assert chinese >= 2000, chinese
    assert all(p.blocks for p in rec.pages)  # every page yields text
    assert {b.source for b in blocks} == {"ocr"}
    scores = [b.score for b in blocks]
    assert all(0 < s <= 1 for s in scores) and min(scores) < 1.0
    assert sum(s < 1.0 for s in scores) >= len(scores) / 2
    assert "商品" in rec.markdown
    pages = res.confidence_detail["pages"]
    assert all(p["mode"] == "ocr" and p["ocr_lines"] > 0 for p in pages)
    assert [p["scores"] for p in pages] == [[b.score for b in page.blocks] for page in rec.pages]
    # a block's score is its weakest line's
    for page_detail, page in zip(pages, rec.pages, strict=True):
        for lines, block in zip(page_detail["line_scores"], page.blocks, strict=True):
            assert block.score == pytest.approx(min(lines), abs=1e-5)


def test_blocks_inside_pages_and_scores(results: dict[str, tuple[Item, PredictionResult]]) -> None:
    for name in DOCS:
        item, res = results[name]
        rec = record_of(results, name)
        for p in rec.pages:
            assert p.dpi == 144 and p.image_key == f"pages/{item.sha256}/{p.page}.png"
            for b in p.blocks:
                x1, y1, x2, y2 = b.bbox
                assert 0 <= x1 <= x2 <= p.width_px and 0 <= y1 <= y2 <= p.height_px
                assert 0 <= b.score <= 1
        scores = [b.score for p in rec.pages for b in p.blocks]
        assert res.field_confidence == {"blocks": min(scores)}
        assert res.confidence == min(scores)
    # text-layer documents carry the layout model's scores, not a blanket 1.0
    demo1 = [b.score for p in record_of(results, "mineru-demo1").pages for b in p.blocks if b.type == "text"]
    assert results["mineru-demo1"][1].confidence_detail["layout_scores"] is True
    assert min(demo1) < 0.99 and max(demo1) > 0.9


def test_page_images_in_store(results: dict[str, tuple[Item, PredictionResult]], cpu_env: Any) -> None:
    _, store = cpu_env
    for name in DOCS:
        rec = record_of(results, name)
        for p in rec.pages:
            w, h = png_size(store.get(p.image_key))
            assert (w, h) == (p.width_px, p.height_px)
            # pixels = points * dpi / 72 (rounded up to whole pixels)
            assert abs(w - p.width_pt * p.dpi / 72) < 1 and abs(h - p.height_pt * p.dpi / 72) < 1


def test_predict_again_writes_no_image(
    results: dict[str, tuple[Item, PredictionResult]], cpu_env: Any, sample_data: Path, spec: TaskSpec
) -> None:
    settings, store = cpu_env
    before = {o.key: o.modified for o in store.list("pages/")}
    data = (sample_data / "documents" / "mineru-demo2.pdf").read_bytes()
    res = asyncio.run(PyMuPDFLayoutBackend(settings, store).predict(pdf_item(data, 2), data, spec))
    assert res.status == "ok" and res.confidence_detail["images_written"] == 0
    assert res.record == results["mineru-demo2"][1].record  # deterministic
    assert {o.key: o.modified for o in store.list("pages/")} == before


# --------------------------------------------------------------------------- bad input, runner, rerun


def small_pdf(pages: int = 1, text: str = "Annual report 2024: revenue grew by 12 percent.") -> bytes:
    doc = pymupdf.open()
    for i in range(pages):
        page = doc.new_page(width=595, height=842)
        page.insert_text((72, 90), f"Chapter {i + 1}", fontsize=20)
        page.insert_text((72, 130), text, fontsize=11)
    return doc.tobytes()


def encrypted_pdf() -> bytes:
    doc = pymupdf.open(stream=small_pdf(), filetype="pdf")
    return doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")


ZERO_PAGES = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


def snapshot(store: ObjectStore) -> dict[str, Any]:
    return {o.key: (o.size, o.modified) for o in store.list("")}


def test_bad_documents_are_recorded_and_the_batch_goes_on(
    sqlite_settings: Settings, sqlite_db: Database, store: LocalStore, spec: TaskSpec
) -> None:
    settings = sqlite_settings.model_copy(update={"ingest": IngestSettings(max_pdf_pages=3)})
    ids = {
        "good": add_pdf_item(sqlite_db, store, small_pdf(2), "good"),
        "encrypted": add_pdf_item(sqlite_db, store, encrypted_pdf(), "encrypted"),
        "corrupt": add_pdf_item(sqlite_db, store, b"%PDF-1.7\n" + bytes(range(256)) * 8, "corrupt"),
        "zero": add_pdf_item(sqlite_db, store, ZERO_PAGES, "zero"),
        "long": add_pdf_item(sqlite_db, store, small_pdf(4), "long"),
    }
    backend = make_backend("pymupdf", settings, store)
    stats = run_prelabel_sync(sqlite_db, store, spec, backend, concurrency=3)
    assert (stats.considered, stats.ok, stats.failed) == (5, 1, 4)
    with sqlite_db.session() as s:
        rows = {p.item_id: p for p in s.scalars(select(Prediction))}
    assert rows[ids["good"]].status == "ok" and rows[ids["good"]].confidence is not None
    expected = {"encrypted": "encrypted", "corrupt": "corrupt", "zero": "no_pages", "long": "too_many_pages"}
    for name, reason in expected.items():
        row = rows[ids[name]]
        assert row.status == "failed" and row.record is None
        assert row.error.startswith(reason), (name, row.error)
    assert "4 pages" in rows[ids["long"]].error and "limit of 3" in rows[ids["long"]].error
    good = DocumentRecord.model_validate(rows[ids["good"]].record)
    assert [b.content for b in good.pages[1].blocks if b.type == "title"] == ["Chapter 2"]

    # a rerun predicts nothing and stores nothing new (no rows, no objects)
    before = snapshot(store)
    again = run_prelabel_sync(sqlite_db, store, spec, make_backend("pymupdf", settings, store))
    assert (again.considered, again.ok, again.failed) == (0, 0, 0)
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count(Prediction.id))) == 5
    assert snapshot(store) == before


def test_identity_follows_render_dpi(sqlite_settings: Settings, store: LocalStore, spec: TaskSpec) -> None:
    a = PyMuPDFLayoutBackend(sqlite_settings, store)
    b = PyMuPDFLayoutBackend(sqlite_settings.model_copy(update={"documents": DocumentSettings(render_dpi=200)}), store)
    assert a.supports(spec) and a.prompt_hash(spec) != b.prompt_hash(spec)
    c = PyMuPDFLayoutBackend(
        sqlite_settings.model_copy(update={"documents": DocumentSettings(ocr_detect_max_side_px=1000)}), store
    )
    assert c.prompt_hash(spec) != a.prompt_hash(spec), "the detector's scale changes the OCR, so the identity"
    assert a.model == "pymupdf4llm-layout" and re.match(
        r"pymupdf4llm-[\d.]+\+layout-[\d.]+\+rapidocr-[\d.]+", a.model_version
    )
    assert not a.supports(SpecRegistry().get("vehicle_extraction"))


# --------------------------------------------------------------------------- operator


def test_document_operator_runs_one_batch(
    sqlite_settings: Settings, sqlite_db: Database, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelloop_airflow.prelabel import PrelabelOperator

    monkeypatch.setenv("LABELLOOP_HOME", str(sqlite_settings.home))
    monkeypatch.setenv("LABELLOOP_DB__URL", sqlite_settings.db.url_value)
    monkeypatch.setenv("LABELLOOP_STORAGE__ROOT", str(sqlite_settings.storage.root))
    first = add_pdf_item(sqlite_db, store, small_pdf(1), "a")
    add_pdf_item(sqlite_db, store, small_pdf(1, "Another document entirely, about rivers."), "b")
    op = PrelabelOperator(task_id="prelabel_documents", spec="document_layout", backend="pymupdf", item_ids=[first])
    out = op.execute({})
    assert (out["considered"], out["ok"], out["failed"]) == (1, 1, 0)
    assert out["spec"] == "document_layout" and out["model"] == "pymupdf4llm-layout"
    with sqlite_db.session() as s:
        assert [p.item_id for p in s.scalars(select(Prediction))] == [first]
    with pytest.raises(ValueError, match="not a document backend"):
        PrelabelOperator(task_id="x", spec="document_layout", backend="vllm").execute({})


def test_a_block_the_layout_model_did_not_score_is_zero_not_one(
    sample_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown is review: with no layout region matched (here: the score hook gives none), every
    text-layer block scores 0 and the detail counts them, as MinerU does for unscored blocks."""
    from labelloop.config import DocumentSettings
    from labelloop.documents import layout_scores
    from labelloop.documents.pymupdf_layout import UNSCORED_BLOCK_SCORE, PyMuPDFLayoutAnalyzer
    from labelloop.documents.render import open_pdf, page_geometry

    monkeypatch.setattr(layout_scores, "match_score", lambda *_a, **_k: None)
    data = (sample_data / "documents" / "mineru-demo1.pdf").read_bytes()
    doc = open_pdf(data, max_pages=50)
    try:
        geoms = [page_geometry(doc[i], 72, "ab" * 32) for i in range(doc.page_count)]
        result = PyMuPDFLayoutAnalyzer(DocumentSettings()).analyze(doc, geoms, pages={0})
    finally:
        doc.close()
    text_blocks = [b for b in result.blocks[0] if b.source == "text_layer"]
    assert text_blocks and all(b.score == UNSCORED_BLOCK_SCORE == 0.0 for b in text_blocks)
    assert result.detail["pages"][0]["unscored_blocks"] == len(result.blocks[0])


def test_the_detector_sees_the_page_at_ocr_detect_max_side_px(sample_data: Path) -> None:
    """The detector's input tensor is scaled to the setting (the memory lever, see
    bench/documents.py --memory) while the lines are still read: recorded at RapidOCR's session."""
    from labelloop.documents.ocr import PageOCR
    from labelloop.documents.render import page_geometry

    doc = pymupdf.open(sample_data / "documents" / "mineru-small_ocr.pdf")
    try:
        geom = page_geometry(doc[0], 144, "0" * 64)
        for cap in (1600, 640):
            ocr = PageOCR(DocumentSettings(ocr_detect_max_side_px=cap))
            ocr.read_page(doc[0], geom)  # RapidOCR builds its detector on first use
            det = ocr._get_engine().text_det
            shapes: list[tuple[int, ...]] = []
            run = det.session

            def record(x: Any, run: Any = run, shapes: list[tuple[int, ...]] = shapes) -> Any:
                shapes.append(tuple(x.shape))
                return run(x)

            det.session = record
            lines, _ = ocr.read_page(doc[0], geom)
            assert len(shapes) == 1 and cap - 32 < max(shapes[0][2:]) <= cap, (cap, shapes)
            assert sum(len(CJK.findall(ln.text)) for ln in lines) > 300
    finally:
        doc.close()
