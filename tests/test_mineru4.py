"""MinerU 4.x for real: ``mineru-kit parse`` (CLI) and a real ``mineru-api`` server (v1 /v1/tasks),
from .venv-mineru, flash tier, on the shared text-layer PDFs; scans through the CPU OCR path
because MinerU's OCR models are absent here (MINERU_HOME is empty); the DocVortex parser and the
agreement confidence on small hand-made inputs.

Golden checks are made against what MinerU prints in this same run (no stored output): the title
text of the demo paper, its tables as HTML, every block inside its page, page images stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from synthetic import pdf_item

from labelloop.config import MinerUSettings, Settings
from labelloop.documents import agreement, docvortex
from labelloop.documents.mineru_parse import MinerUOutput, MinerUOutputError, parse_docvortex
from labelloop.documents.record import DocumentRecord, make_block
from labelloop.documents.render import page_geometry, png_size
from labelloop.prelabel.base import PredictionResult
from labelloop.prelabel.documents.mineru import MinerUBackend, page_ranges
from labelloop.specs import SpecRegistry, TaskSpec
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_mineru"]


@pytest.fixture(scope="module")
def spec() -> TaskSpec:
    return SpecRegistry().get("document_layout")


def backend(settings: Settings, store: LocalStore, venv: Path, home: Path, **kw: Any) -> MinerUBackend:
    cfg = MinerUSettings(venv=venv, home=home, **kw)
    b = MinerUBackend(settings.model_copy(update={"mineru": cfg}), store)
    b.retry_wait_s = 0.01
    return b


def run(b: MinerUBackend, data: bytes, spec: TaskSpec, ext: str = "pdf") -> PredictionResult:
    return asyncio.run(b.predict(pdf_item(data, ext=ext), data, spec))


def check_record(res: PredictionResult, store: LocalStore, n_pages: int) -> DocumentRecord:
    assert res.status == "ok", res.error
    rec = DocumentRecord.model_validate(res.record)
    assert len(rec.pages) == n_pages
    for p in rec.pages:
        assert png_size(store.get(p.image_key)) == (p.width_px, p.height_px)
    scores = [b.score for p in rec.pages for b in p.blocks]
    assert res.field_confidence == {"blocks": min(scores)}
    return rec


def pages_of(path: Path, pages: list[int]) -> bytes:
    src = pymupdf.open(path)
    out = pymupdf.open()
    for p in pages:
        out.insert_pdf(src, from_page=p, to_page=p)
    return out.tobytes()


def scan_strip(sample_data: Path) -> pymupdf.Document:
    """The top fifth of the shared scanned PDF's first page: a real scan, small enough to OCR fast."""
    doc = pymupdf.open(stream=pages_of(sample_data / "documents" / "mineru-small_ocr.pdf", [0]), filetype="pdf")
    r = doc[0].rect
    doc[0].set_cropbox(pymupdf.Rect(r.x0, r.y0, r.x1, r.y0 + r.height / 5))
    return pymupdf.open(stream=doc.tobytes(), filetype="pdf")


# --------------------------------------------------------------------------- real MinerU


@pytest.fixture(scope="module")
def cli_result(
    sample_data: Path, make_backend: Callable[..., MinerUBackend], spec: TaskSpec
) -> tuple[MinerUBackend, PredictionResult]:
    b = make_backend(mode="cli")
    # the title page and the page with Table 1 keep the run short (13 pages take minutes on 2 cores)
    return b, run(b, pages_of(sample_data / "documents" / "mineru-demo1.pdf", [0, 4]), spec)


@pytest.fixture(scope="module")
def sqlite_settings_module(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("ll-home")
    return Settings(
        home=home,
        db={"url": f"sqlite:///{home / 'c.db'}"},
        storage={"root": home / "objects"},
        documents={"ocr_dpi": 100, "ocr_max_side_px": 1000},  # OCR cost: the tests check routing, not accuracy
    )


@pytest.fixture(scope="module")
def module_store(sqlite_settings_module: Settings) -> LocalStore:
    return LocalStore(sqlite_settings_module.storage.root)


@pytest.fixture(scope="module")
def make_backend(
    sqlite_settings_module: Settings, module_store: LocalStore, mineru_venv: Path, mineru_home: Path
) -> Callable[..., MinerUBackend]:
    """A backend on this module's settings, store and MinerU install; keywords are MinerU settings."""
    return lambda **kw: backend(sqlite_settings_module, module_store, mineru_venv, mineru_home, **kw)


def test_cli_flash_on_the_demo_paper(
    cli_result: tuple[MinerUBackend, PredictionResult], module_store: LocalStore
) -> None:
    b, res = cli_result
    assert b.model_version == "mineru-4.0.12-flash"  # asked from mineru-kit --version
    assert b.models_present is False
    rec = check_record(res, module_store, 2)
    d = res.confidence_detail
    assert (d["mineru_version"], d["generation"], d["engines"]) == ("4.0.12", "mineru-4", ["mineru"])
    assert all(p["engine"] == "mineru" and p["tier"] == "flash" for p in d["pages"])
    titles = [b for b in rec.pages[0].blocks if b.type == "title"]
    assert any(t.content == "The response of flow duration curves to afforestation" for t in titles)
    tables = [b for p in rec.pages for b in p.blocks if b.type == "table"]
    assert len(tables) >= 1 and all(t.content.startswith("<table") for t in tables)
    assert any("Traralgon" in t.content for t in tables)
    # DocVortex gives no score: every block's score is the agreement with pymupdf, its parts recorded
    page0 = d["pages"][0]
    assert len(page0["agreement"]) == len(rec.pages[0].blocks)
    assert [a["score"] for a in page0["agreement"]] == [bl.score for bl in rec.pages[0].blocks]
    title_i = next(
        i for i, bl in enumerate(rec.pages[0].blocks) if bl.type == "title" and "flow duration" in bl.content
    )
    assert page0["agreement"][title_i]["text"] == 1.0 and page0["agreement"][title_i]["score"] > 0.9
    assert "# The response of flow duration curves to afforestation" in rec.markdown
    assert "data:image" not in rec.markdown


def test_http_mineru_api_mixed_text_and_scan(
    cli_result: tuple[MinerUBackend, PredictionResult],
    sample_data: Path,
    make_backend: Callable[..., MinerUBackend],
    module_store: LocalStore,
    mineru_api: str,
    spec: TaskSpec,
) -> None:
    """A text page goes to the real mineru-api (page_range 1), the scan page to RapidOCR."""
    docs = sample_data / "documents"
    mixed = pymupdf.open()
    mixed.insert_pdf(pymupdf.open(docs / "mineru-demo2.pdf"), from_page=0, to_page=0)
    mixed.insert_pdf(scan_strip(sample_data))
    b = make_backend(mode="http", api_url=mineru_api)
    b._analyzer = cli_result[0].analyzer  # loading the layout model again costs seconds
    assert b.model_version == "mineru-4.0.12-flash" and b.models_present is False  # from /v1/health, /v1/tiers
    assert b.identity_config()["scan_engine"] == "rapidocr"
    res = run(b, mixed.tobytes(), spec)
    rec = check_record(res, module_store, 2)
    text_page, scan_page = res.confidence_detail["pages"]
    assert (text_page["engine"], text_page["tier"]) == ("mineru", "flash")
    assert text_page["from"] == "docvortex"
    assert res.confidence_detail["origin"].startswith("mineru-api task ")
    assert scan_page["engine"] == "rapidocr" and "OCR models are not installed" in scan_page["reason"]
    assert rec.pages[0].blocks[0].type == "title" and "Temporal Stereo" in rec.pages[0].blocks[0].content
    assert rec.pages[1].blocks and all(bl.source == "ocr" for bl in rec.pages[1].blocks)


def test_http_task_failure_is_a_failed_prediction(
    make_backend: Callable[..., MinerUBackend], mineru_api: str, spec: TaskSpec
) -> None:
    """The real server refuses a tier it does not serve: the prediction fails with its words."""
    b = make_backend(mode="http", api_url=mineru_api, tier="advanced")
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "A text layer long enough to count as one.")
    res = run(b, doc.tobytes(), spec)
    assert res.status == "failed" and "mineru-api" in res.error


def test_scan_pdf_goes_to_cpu_ocr_without_models(
    cli_result: tuple[MinerUBackend, PredictionResult],
    sample_data: Path,
    make_backend: Callable[..., MinerUBackend],
    module_store: LocalStore,
    spec: TaskSpec,
) -> None:
    b = cli_result[0]  # same settings: reuse its (slow to load) pymupdf layout analyzer
    res = run(b, scan_strip(sample_data).tobytes(), spec)
    rec = check_record(res, module_store, 1)
    (page,) = res.confidence_detail["pages"]
    assert page["engine"] == "rapidocr" and page["tier"] is None and page["mode"] == "ocr"
    assert res.confidence_detail["engines"] == ["rapidocr"]
    assert rec.pages[0].blocks and 0 < res.field_confidence["blocks"] < 1
    # with models the same document is a different prediction (MinerU's OCR tier instead)
    with_models = make_backend(mode="cli", models_present=True)
    assert with_models.prompt_hash(spec_of()) != b.prompt_hash(spec_of())


def spec_of() -> TaskSpec:
    return SpecRegistry().get("document_layout")


# --------------------------------------------------------------------------- DocVortex parser


def dv(pages: list[list[dict[str, Any]]], **ext: Any) -> dict[str, Any]:
    return {
        "schema": "docvortex.middle",
        "schema_version": "2.0",
        "metadata": {"file_suffix": "pdf", "producer": {"name": "mineru", "version": "4.0.12"}},
        "extensions": {"mineru": {"tier": "flash", "parse_mode": "txt", **ext}},
        "pages": [{"page_idx": i, "blocks": b} for i, b in enumerate(pages)],
    }


def geoms(n: int = 1) -> list[Any]:
    doc = pymupdf.open()
    for _ in range(n):
        doc.new_page(width=600, height=800)
    return [
        page_geometry(
            doc[i],
            144,
            "a" * 64,
        )
        for i in range(n)
    ]


def test_docvortex_blocks_spans_and_coordinates() -> None:
    blocks = [
        {
            "type": "doc_title",
            "index": 0,
            "bbox": [0.1, 0.05, 0.9, 0.1],
            "level": 1,
            "content": [
                {"type": "text", "content": "Fleet "},
                {"type": "text", "content": "report", "styles": ["bold"]},
            ],
        },
        {
            "type": "text",
            "index": 1,
            "bbox": [0.1, 0.2, 0.9, 0.3],
            "content": [
                {"type": "text", "content": "Energy "},
                {"type": "equation_inline", "content": "E=mc^2"},
                {"type": "text", "content": " see "},
                {"type": "hyperlink", "url": "https://x.org", "content": [{"type": "text", "content": "x.org"}]},
            ],
        },
        {
            "type": "list",
            "index": 2,
            "bbox": [0.1, 0.3, 0.9, 0.4],
            "content": [
                {"type": "text", "content": [{"type": "text", "content": "- one"}]},
                {"type": "text", "content": [{"type": "text", "content": "- two"}]},
            ],
        },
        {
            "type": "table",
            "index": 3,
            "bbox": [0.1, 0.5, 0.9, 0.7],
            "content": [
                {
                    "type": "table_caption",
                    "index": 2,
                    "bbox": [0.1, 0.45, 0.5, 0.48],
                    "content": [{"type": "text", "content": "Table 1"}],
                },
                {
                    "type": "table_body",
                    "index": 3,
                    "bbox": [0.1, 0.5, 0.9, 0.7],
                    "content": '<html><table><tr><td colspan="2">a</td></tr></table></html>',
                },
            ],
        },
        {
            "type": "page_number",
            "index": 4,
            "bbox": [0.45, 0.95, 0.55, 0.98],
            "content": [{"type": "text", "content": "1"}],
        },
    ]
    (g,) = geoms()
    parsed = parse_docvortex(MinerUOutput(docvortex=dv([blocks])), [g])
    got = [(b.type, b.content, b.source) for b in parsed.blocks[0]]
    assert got == [
        ("title", "Fleet report", "text_layer"),
        ("text", "Energy $E=mc^2$ see x.org", "text_layer"),
        ("list", "- one\n- two", "text_layer"),
        ("caption", "Table 1", "text_layer"),
        ("table", '<table><tr><td colspan="2">a</td></tr></table>', "layout"),
        ("discarded", "1", "text_layer"),
    ]
    # 0-1 of the page -> page pixels at the render DPI (600 pt at 144 dpi = 1200 px)
    assert parsed.blocks[0][0].bbox == [120.0, 80.0, 1080.0, 160.0]
    assert all(b.score == 0.0 for b in parsed.blocks[0])  # nothing scored them yet
    assert parsed.detail["mineru_tier"] == "flash" and parsed.detail["unscored_blocks"] == 6
    assert parsed.markdown.startswith("# Fleet report\n\nEnergy $E=mc^2$")


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({**dv([[]]), "schema_version": "3.0"}, "schema_version '3.0' is not supported"),
        (dv([[{"type": "text", "bbox": [0.5, 0.1, 0.2, 0.3], "content": []}]]), "is not x0<=x1"),
        (dv([[{"type": "hologram", "bbox": [0.1, 0.1, 0.2, 0.3], "content": []}]]), "unknown DocVortex block type"),
        (dv([[], []]), "page 1 for a 1-page document"),
    ],
)
def test_docvortex_bad_output_is_rejected(doc: dict[str, Any], error: str) -> None:
    with pytest.raises(MinerUOutputError, match=error):
        parse_docvortex(MinerUOutput(docvortex=doc), geoms())


def test_page_ranges() -> None:
    assert page_ranges([0, 1, 2, 4, 6, 7]) == "1-3,5,7-8"
    assert page_ranges([3]) == "4"
    assert docvortex.spans_text([{"type": "code_inline", "content": "x()"}]) == "x()"


# --------------------------------------------------------------------------- agreement


def blk(t: str, box: list[float], text: str) -> Any:
    return make_block(t, box, 1000, 1000, content=text, score=0.0, source="text_layer")


def test_agreement_components_move_the_score_the_right_way() -> None:
    ref = [
        blk("title", [100, 100, 900, 150], "The response of flow"),
        blk("text", [100, 200, 900, 400], "Body text here"),
    ]
    same = agreement.compare(blk("title", [100, 100, 900, 150], "The response of flow"), ref)
    assert same["score"] == 1.0 and same["iou"] == 1.0 and same["text"] == 1.0 and same["type"] == 1.0
    shifted = agreement.compare(blk("title", [100, 125, 900, 175], "The response of flow"), ref)
    assert 0 < shifted["score"] < 1 and shifted["iou"] < 0.75
    misread = agreement.compare(blk("title", [100, 100, 900, 150], "Tha resp0nse af fl0w"), ref)
    assert misread["text"] < 0.9 and misread["score"] == pytest.approx(misread["text"], abs=1e-4)
    retyped = agreement.compare(blk("text", [100, 100, 900, 150], "The response of flow"), ref)
    assert retyped["type"] == 0.5 and retyped["score"] == 0.5
    nothing = agreement.compare(blk("text", [100, 600, 900, 700], "Elsewhere"), ref)
    assert nothing == {**nothing, "score": 0.0, "reason": "no_counterpart"}
    # one MinerU paragraph that pymupdf split in two still agrees
    split = [blk("text", [100, 200, 900, 300], "First half of it"), blk("text", [100, 300, 900, 400], "second half.")]
    merged = agreement.compare(blk("text", [100, 200, 900, 400], "First half of it second half."), split)
    assert merged["matched"] == 2 and merged["score"] > 0.95
