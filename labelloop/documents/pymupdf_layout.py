"""The CPU document backend's core: pymupdf4llm's layout analysis, plus RapidOCR for scans.

Pages with a text layer go through ``pymupdf4llm``'s document parser (the pymupdf-layout graph
model classifies regions; tables are rebuilt as HTML from the text layer), one pass that gives both
the typed regions and the Markdown. Pages whose text layer has fewer than ``ocr_min_chars``
characters are scans: they are rendered and read by RapidOCR, whose line scores become the block
scores. pymupdf4llm's own OCR path is switched off, because it discards the recognition scores.

Block scores: the layout model's region score where it gives one (see
:mod:`labelloop.documents.layout_scores`); OCR blocks take the minimum of their lines' scores. A
text-layer block the layout model could not score (no region matched it, or the score hook could
not be installed) gets :data:`UNSCORED_BLOCK_SCORE`, 0: the characters come from the text layer,
but its type and box are a model's decision with no evidence behind it, so it goes to review
(MinerU does the same, ``mineru_parse.UNSCORED_BLOCK_SCORE``). The detail counts such blocks per
page (``unscored_blocks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import pymupdf

from labelloop.config import DocumentSettings
from labelloop.documents import layout_scores
from labelloop.documents.memory import limit_heap_retention
from labelloop.documents.ocr import PageOCR, group_lines, ocr_version
from labelloop.documents.record import Block, make_block
from labelloop.documents.render import PYMUPDF_LOCK, PageGeometry, free_page_memory
from labelloop.documents.text import join_fragments, markdown_table_to_html, rows_to_html

#: the score of a block nothing scored: unknown is review, never 1.0
UNSCORED_BLOCK_SCORE = 0.0
#: pymupdf-layout region classes -> record block types (headings of any level are "title", as
#: in MinerU; running headers and footers are "discarded")
CLASS_MAP: dict[str, str] = {
    "title": "title",
    "section-header": "title",
    "text": "text",
    "list-item": "list",
    "footnote": "footnote",
    "caption": "caption",
    "picture": "image",
    "formula": "equation",
    "table": "table",
    "page-header": "discarded",
    "page-footer": "discarded",
}


@dataclass
class LayoutResult:
    """Blocks per page (indexed like the document's pages), the Markdown, and score evidence."""

    blocks: list[list[Block]]
    markdown: str
    detail: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str]:
    """Versions of the packages whose output this is (they go into the model version)."""
    return {
        "pymupdf4llm": version("pymupdf4llm"),
        "pymupdf_layout": version("pymupdf-layout"),
        "rapidocr": ocr_version(),
    }


def text_layer_chars(page: pymupdf.Page) -> int:
    """Non-whitespace characters in the page's text layer."""
    with PYMUPDF_LOCK:
        return sum(1 for ch in page.get_text("text") if not ch.isspace())


class PyMuPDFLayoutAnalyzer:
    """Turns an open document (pages de-rotated, see ``render.open_pdf``) into record blocks."""

    def __init__(self, settings: DocumentSettings) -> None:
        self.settings = settings
        self.ocr = PageOCR(settings)
        self.layout_scores = layout_scores.install()
        limit_heap_retention()

    def analyze(self, doc: pymupdf.Document, geoms: list[PageGeometry], pages: set[int] | None = None) -> LayoutResult:
        """Blocks of every page, or only of ``pages`` (the others come back empty, mode "skipped")."""
        chars = [text_layer_chars(doc[g.page]) for g in geoms]
        text_pages = [
            g.page
            for g, n in zip(geoms, chars, strict=True)
            if n >= self.settings.ocr_min_chars and (pages is None or g.page in pages)
        ]
        blocks: list[list[Block]] = [[] for _ in geoms]
        page_md: list[str] = ["" for _ in geoms]
        pages_detail: list[dict[str, Any]] = [
            {"page": g.page, "text_chars": n, "mode": "text_layer" if g.page in text_pages else "ocr"}
            for g, n in zip(geoms, chars, strict=True)
        ]
        if text_pages:
            # one pymupdf4llm pass over the text pages (it analyses a page at a time, but heading
            # levels come from the font sizes of the whole document, so the pass stays one)
            unscored = self._text_layer_pages(doc, geoms, text_pages, blocks, page_md)
            free_page_memory()
            for n in text_pages:
                pages_detail[n]["unscored_blocks"] = unscored.get(n, 0)
        for g in geoms:
            if g.page in text_pages:
                continue
            if pages is not None and g.page not in pages:
                pages_detail[g.page]["mode"] = "skipped"
                continue
            lines, dpi = self.ocr.read_page(doc[g.page], g)
            free_page_memory()  # the page's rendering and the detector's activations are freed
            grouped = group_lines(lines, g)
            blocks[g.page] = [b for b, _ in grouped]
            page_md[g.page] = "\n\n".join(b.content for b in blocks[g.page])
            pages_detail[g.page].update(
                ocr_dpi=round(dpi, 2),
                ocr_lines=len(lines),
                line_scores=[[round(ln.score, 5) for ln in group] for _, group in grouped],
            )
        markdown = "\n\n".join(md.strip() for md in page_md if md.strip())
        return LayoutResult(
            blocks=blocks,
            markdown=markdown,
            detail={"layout_scores": self.layout_scores, "pages": pages_detail},
        )

    def _text_layer_pages(
        self,
        doc: pymupdf.Document,
        geoms: list[PageGeometry],
        pages: list[int],
        blocks: list[list[Block]],
        page_md: list[str],
    ) -> dict[int, int]:
        """Fill the text-layer pages; returns the number of unscored blocks per page."""
        from pymupdf4llm.helpers.document_layout import parse_document
        from pymupdf4llm.ocr import OCRMode

        with PYMUPDF_LOCK, layout_scores.capture() as regions:
            parsed = parse_document(
                doc,
                pages=pages,
                use_ocr=OCRMode.NEVER,
                render_html_tables=True,
                force_text=True,
            )
            chunks = parsed.to_markdown(header=False, footer=False, page_chunks=True)
        unscored: dict[int, int] = {}
        for layout, chunk in zip(parsed.pages, chunks, strict=True):
            n = layout.page_number - 1  # pymupdf4llm counts pages from 1
            geom = geoms[n]
            page_regions = regions.get(n, [])
            for box in layout.boxes:
                blocks[n].extend(self._convert_box(doc[n], box, geom, page_regions, unscored))
            page_md[n] = chunk["text"]
        return unscored

    def _convert_box(
        self,
        page: pymupdf.Page,
        box: Any,
        geom: PageGeometry,
        regions: list[layout_scores.RawRegion],
        unscored: dict[int, int],
    ) -> list[Block]:
        type_ = CLASS_MAP.get(box.boxclass, "text")
        bbox_pt = (box.x0, box.y0, box.x1, box.y1)
        score = layout_scores.match_score(bbox_pt, regions)
        if score is None:
            score = UNSCORED_BLOCK_SCORE
            unscored[geom.page] = unscored.get(geom.page, 0) + 1

        def block(bbox: tuple[float, ...], content: str, source: str = "text_layer") -> Block:
            return make_block(
                type_,
                geom.pt_to_px(bbox),
                geom.width_px,
                geom.height_px,
                content=content,
                score=score,
                source=source,
            )

        if type_ == "table":
            return [block(bbox, content) for bbox, content in _table_parts(page, box, bbox_pt)]
        if type_ == "image":
            return [block(bbox_pt, "", source="layout")]
        content = _box_text(box.textlines or [])
        if not content:
            return []  # an empty text region is noise, not a block to review
        return [block(bbox_pt, content)]


def _box_text(textlines: list[dict[str, Any]]) -> str:
    """Plain text of a region. pymupdf4llm's reconstructed spans are words or runs without the
    separating blanks (as in its own ``get_plain_text``), so they are joined, not concatenated."""
    return join_fragments(span.get("text", "") for line in textlines for span in line.get("spans", []))


def _table_parts(
    page: pymupdf.Page, box: Any, bbox_pt: tuple[float, float, float, float]
) -> list[tuple[tuple[float, ...], str]]:
    """(bbox in points, HTML) for a table region; several when the HTML engine split it."""
    table = box.table or {}
    parts = table.get("html_tables") or []
    if len(parts) > 1 and all(p.get("bbox") and p.get("html") for p in parts):
        return [(tuple(p["bbox"]), p["html"]) for p in parts]
    if table.get("html"):
        return [(bbox_pt, table["html"])]
    if table.get("markdown"):
        converted = markdown_table_to_html(table["markdown"])
        if converted:
            return [(bbox_pt, converted)]
    if table.get("extract"):
        return [(bbox_pt, rows_to_html(table["extract"]))]
    # no structure recognised: keep the region's text lines as one-cell rows
    with PYMUPDF_LOCK:
        text = page.get_text("text", clip=pymupdf.Rect(bbox_pt))
    rows = [[line] for line in text.splitlines() if line.strip()] or [[""]]
    return [(bbox_pt, rows_to_html(rows, header=False))]
