"""Parse MinerU's classic output into record blocks in our page pixels.

MinerU writes three JSON views of a document, each in its own coordinates
(``docs/../shared/reference/mineru-qwen-vllm.md`` section 1):

* ``*_middle.json``: typed blocks in **PDF points** (``pdf_info[].page_size``), span ``score``
  (1.0 for the text layer, the OCR recognition score otherwise), table HTML, equation LaTeX and
  ``discarded_blocks``. The preferred source.
* ``*_model.json`` (pipeline): raw detections, ``poly`` in **render pixels** of MinerU's own
  rendering (200 dpi, capped) with ``page_info.width/height``; the layout ``score`` of each region
  lives here. Converted via points: ``x_pt = x_px * page_w_pt / page_info.width``.
* ``*_content_list.json``: reading-order items; magic-pdf 1.3 has no boxes, mineru 2.x has
  ``bbox`` in 0-1000 of the page.
* MinerU 4.x: one ``<stem>.json`` in DocVortex ``docvortex.middle`` 2.0 (boxes 0-1 of the page, no
  scores), read by :mod:`labelloop.documents.docvortex`.

Generations: magic-pdf 1.3 marks middle.json with ``_parse_type`` (txt|ocr) and names image
captions ``img_caption``; mineru 2.x uses ``_backend`` (pipeline|vlm) and ``image_caption``.

Block confidence = layout score x the minimum OCR span score where the text came from OCR. A
block for which MinerU gives no layout score at all (the VLM backends) gets
``UNSCORED_BLOCK_SCORE`` (0.0): without evidence it must go to review rather than be
auto-accepted; the detail counts such blocks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelloop.documents import docvortex
from labelloop.documents.record import Block, make_block
from labelloop.documents.render import PageGeometry, iou
from labelloop.documents.text import join_fragments

UNSCORED_BLOCK_SCORE = 0.0
MIN_MATCH_IOU = 0.5

#: model.json category_id -> our block type (layout regions only: inline formulas (13), OCR
#: lines (15), equation numbers (9) and low-score text (16) are content, not blocks)
MODEL_CATEGORIES: dict[int, str] = {
    0: "title",
    1: "text",
    2: "discarded",
    3: "image",
    4: "caption",
    5: "table",
    6: "caption",
    7: "footnote",
    8: "equation",
    14: "equation",
    101: "footnote",
}
_OCR_LINE, _INTERLINE_FORMULA = 15, 14

#: middle.json block types (both generations, incl. mineru 2.x VLM types) -> our block type
MIDDLE_TYPES: dict[str, str] = {
    "title": "title",
    "text": "text",
    "list": "list",
    "index": "list",
    "interline_equation": "equation",
    "image_body": "image",
    "image_caption": "caption",
    "image_footnote": "footnote",
    "table_body": "table",
    "table_caption": "caption",
    "table_footnote": "footnote",
    "chart_body": "image",
    "chart_caption": "caption",
    "chart_footnote": "footnote",
    "code_body": "text",
    "code_caption": "caption",
    "ref_text": "text",
    "phonetic": "text",
    "algorithm": "text",
    "page_footnote": "footnote",
    "footnote": "footnote",
    "header": "discarded",
    "footer": "discarded",
    "page_number": "discarded",
    "aside_text": "discarded",
    "discarded": "discarded",
}

#: content_list item types -> our block type (text with text_level becomes a title)
CONTENT_TYPES: dict[str, str] = {
    "text": "text",
    "image": "image",
    "table": "table",
    "equation": "equation",
    "list": "list",
    "code": "text",
    "header": "discarded",
    "footer": "discarded",
    "page_number": "discarded",
    "aside_text": "discarded",
    "page_footnote": "footnote",
}

_TABLE = re.compile(r"<table\b.*?</table>", re.IGNORECASE | re.DOTALL)


class MinerUOutputError(ValueError):
    """MinerU's output is missing or unusable."""


@dataclass
class MinerUOutput:
    """The files of one MinerU run, loaded (from an output folder or a mineru-api response)."""

    markdown: str | None = None
    middle: dict[str, Any] | None = None
    model: list[Any] | None = None
    content_list: list[dict[str, Any]] | None = None
    origin: str = ""
    #: MinerU 4.x DocVortex ``docvortex.middle`` document
    docvortex: dict[str, Any] | None = None
    #: mineru.net ``layout.json`` (a 2.x-style middle.json whose blocks carry layout scores)
    layout: dict[str, Any] | None = None

    @property
    def version(self) -> str | None:
        """MinerU's own version label (``_version_name``), when the output carries it."""
        if self.docvortex is not None:
            return docvortex.producer_version(self.docvortex)
        v = (self.middle or {}).get("_version_name")
        return str(v) if v else None

    @property
    def generation(self) -> str:
        """'magic-pdf-1.3', 'mineru-2' or 'mineru-4' (unknown outputs are read with the 2.x rules)."""
        if self.docvortex is not None:
            return "mineru-4"
        m = self.middle or {}
        if "_parse_type" in m or (self.version or "").startswith(("0.", "1.")):
            return "magic-pdf-1.3"
        return "mineru-2"

    @property
    def backend(self) -> str | None:
        """2.x ``_backend`` (pipeline|vlm), 1.3's ``_parse_type`` (txt|ocr), 4.x's tier."""
        if self.docvortex is not None:
            tier = docvortex.mineru_extension(self.docvortex).get("tier")
            return str(tier) if tier else None
        m = self.middle or {}
        v = m.get("_backend") or m.get("_parse_type")
        return str(v) if v else None


@dataclass
class ParsedDocument:
    blocks: list[list[Block]]
    markdown: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Det:
    """A model.json detection, converted to PDF points."""

    type: str | None
    category: int
    bbox: tuple[float, float, float, float]
    score: float | None
    extra: dict[str, Any]


@dataclass
class _Raw:
    """A block before conversion to pixels: points, content and its two score factors."""

    type: str
    bbox: tuple[float, float, float, float]
    content: str
    layout_score: float | None
    ocr_score: float | None
    source: str


# --------------------------------------------------------------------------- loading


def _loads(value: Any) -> Any:
    """mineru-api returns its JSON files as strings; the CLI's files are parsed already."""
    if value is None or value == "":
        return None
    return json.loads(value) if isinstance(value, str | bytes) else value


def load_output_dir(path: Path) -> MinerUOutput:
    """Read the MinerU files in one output folder (``<out>/<stem>/<method>/``)."""

    def one(pattern: str, exclude: str | None = None) -> Path | None:
        found = sorted(p for p in path.glob(pattern) if not (exclude and p.name.endswith(exclude)))
        return found[0] if found else None

    middle = one("*_middle.json")
    model = one("*_model.json")
    content = one("*_content_list.json", exclude="_content_list_v2.json")
    mds = sorted(path.glob("*.md"))
    if not (middle or model or content):
        dv = _docvortex_file(path)
        if dv is not None:
            return load_docvortex(dv)
        raise MinerUOutputError(f"no *_middle.json, *_model.json or *_content_list.json in {path}")
    try:
        return MinerUOutput(
            markdown=mds[0].read_text(encoding="utf-8") if mds else None,
            middle=json.loads(middle.read_text(encoding="utf-8")) if middle else None,
            model=json.loads(model.read_text(encoding="utf-8")) if model else None,
            content_list=json.loads(content.read_text(encoding="utf-8")) if content else None,
            origin=str(path),
        )
    except (OSError, ValueError) as e:
        raise MinerUOutputError(f"unreadable MinerU output in {path}: {e}") from None


#: method folders in order of preference when a run left several
_METHOD_PREFERENCE = ("auto", "vlm", "hybrid_auto", "ocr", "txt")


def _docvortex_file(path: Path) -> Path | None:
    """The DocVortex document in a folder: mineru-kit names it ``<stem>.json`` (one per input)."""
    found = sorted(path.glob("*.json"))
    return found[0] if len(found) == 1 else None


def load_docvortex(path: Path) -> MinerUOutput:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MinerUOutputError(f"unreadable MinerU output {path}: {e}") from None
    try:
        docvortex.check(doc)
    except docvortex.DocVortexError as e:
        raise MinerUOutputError(f"{path}: {e}") from None
    return MinerUOutput(docvortex=doc, origin=str(path))


def find_output_dir(out_root: Path, stem: str) -> Path:
    """The folder holding MinerU's files for ``stem``.

    magic-pdf 1.3 writes ``<out>/<stem>/<method>/`` (the literal ``-m`` value); mineru 2.x writes
    ``<out>/<stem>/auto|txt|ocr/`` for the pipeline and ``<out>/<stem>/vlm/`` for every VLM
    backend (3.x adds ``hybrid_<method>``). Anything else is found by searching for the files.
    """
    base = out_root / stem
    if (out_root / f"{stem}.json").is_file():  # mineru 4.x: <out>/<stem>.json
        return out_root
    candidates = [d for d in base.iterdir() if d.is_dir()] if base.is_dir() else []
    with_files = [d for d in candidates if _has_outputs(d)]
    if with_files:
        rank = {name: i for i, name in enumerate(_METHOD_PREFERENCE)}
        return min(with_files, key=lambda d: (rank.get(d.name, len(rank)), d.name))
    if base.is_dir() and _has_outputs(base):
        return base
    hits = sorted(out_root.rglob("*_middle.json")) or sorted(out_root.rglob("*_content_list.json"))
    if hits:
        return hits[0].parent
    raise MinerUOutputError(f"MinerU wrote no output for {stem!r} under {out_root}")


def _has_outputs(d: Path) -> bool:
    return any(d.glob("*_middle.json")) or any(d.glob("*_content_list.json")) or any(d.glob("*_model.json"))


def output_from_api(response: dict[str, Any], stem: str | None = None) -> MinerUOutput:
    """The output of one file from a mineru-api ``/file_parse`` JSON response."""
    results = response.get("results")
    if not isinstance(results, dict) or not results:
        raise MinerUOutputError(f"mineru-api response has no results (keys: {sorted(response)})")
    if stem is not None and stem in results:
        result = results[stem]
    elif len(results) == 1:
        result = next(iter(results.values()))
    else:
        raise MinerUOutputError(f"mineru-api returned results for {sorted(results)}, not {stem!r}")
    try:
        out = MinerUOutput(
            markdown=result.get("md_content") or None,
            middle=_loads(result.get("middle_json")),
            model=_loads(result.get("model_output")),
            content_list=_loads(result.get("content_list")),
            origin="mineru-api",
        )
    except ValueError as e:
        raise MinerUOutputError(f"mineru-api returned invalid JSON: {e}") from None
    if out.middle is None and out.content_list is None and out.model is None:
        raise MinerUOutputError("mineru-api returned neither middle_json, content_list nor model_output")
    if out.middle is not None and not out.middle.get("_version_name") and response.get("version"):
        out.middle["_version_name"] = str(response["version"])
    return out


# --------------------------------------------------------------------------- coordinates


def model_px_to_pt(
    bbox_px: Sequence[float], page_info: dict[str, Any], width_pt: float, height_pt: float
) -> tuple[float, float, float, float]:
    """MinerU model.json render pixels -> PDF points, using the rendering's page_info size."""
    sx, sy = width_pt / float(page_info["width"]), height_pt / float(page_info["height"])
    x1, y1, x2, y2 = bbox_px
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def poly_to_bbox(poly: Sequence[float]) -> tuple[float, float, float, float]:
    """``[x0,y0,x1,y0,x1,y1,x0,y1]`` (or a plain 4-number box) -> ``(x1, y1, x2, y2)``."""
    if len(poly) == 4:
        x1, y1, x2, y2 = poly
        return (float(x1), float(y1), float(x2), float(y2))
    xs, ys = poly[0::2], poly[1::2]
    return (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))


def thousandths_to_px(bbox: Sequence[float], geom: PageGeometry) -> tuple[float, float, float, float]:
    """content_list 0-1000 page coordinates -> our page pixels."""
    x1, y1, x2, y2 = bbox
    return (
        x1 * geom.width_px / 1000,
        y1 * geom.height_px / 1000,
        x2 * geom.width_px / 1000,
        y2 * geom.height_px / 1000,
    )


# --------------------------------------------------------------------------- model.json


def _model_pages(model: list[Any] | None) -> dict[int, dict[str, Any]]:
    """Pipeline model.json pages by page number (VLM model.json, which has no scores, is skipped)."""
    pages: dict[int, dict[str, Any]] = {}
    for i, page in enumerate(model or []):
        if isinstance(page, dict) and "layout_dets" in page and "page_info" in page:
            pages[int(page["page_info"].get("page_no", i))] = page
    return pages


def _model_dets(page: dict[str, Any], geom: PageGeometry) -> list[_Det]:
    dets = []
    for d in page.get("layout_dets", []):
        box = d.get("poly") or d.get("bbox")
        if not box:
            continue
        cat = int(d.get("category_id", d.get("cls_id", -1)))
        bbox = model_px_to_pt(poly_to_bbox(box), page["page_info"], geom.width_pt, geom.height_pt)
        score = d.get("score")
        dets.append(_Det(MODEL_CATEGORIES.get(cat), cat, bbox, None if score is None else float(score), d))
    return dets


def _match_layout_score(bbox: tuple[float, float, float, float], dets: list[_Det]) -> float | None:
    """Layout score of the region detection that best overlaps ``bbox`` (IoU >= 0.5)."""
    best, best_iou = None, MIN_MATCH_IOU
    for d in dets:
        if d.type is None or d.score is None:
            continue
        v = iou(bbox, d.bbox)
        if v >= best_iou:
            best, best_iou = d.score, v
    return best


def _blocks_from_model(dets: list[_Det]) -> list[_Raw]:
    """Fallback when only model.json exists: regions, filled with the OCR lines inside them."""
    lines = [d for d in dets if d.category == _OCR_LINE]
    layout_equations = [d for d in dets if d.category == 8]
    out = []
    for d in dets:
        if d.type is None:
            continue
        if d.category == _INTERLINE_FORMULA and any(iou(o.bbox, d.bbox) >= MIN_MATCH_IOU for o in layout_equations):
            continue  # the formula detector found the layout model's equation again
        ocr_score = None
        if d.type == "table":
            content, source = _table_html(str(d.extra.get("html", ""))), "layout"
        elif d.type == "equation":
            content, source = str(d.extra.get("latex", "")), "layout"
        elif d.type == "image":
            content, source = "", "layout"
        else:
            inside = [ln for ln in lines if _center_inside(ln.bbox, d.bbox)]
            content = join_fragments(str(ln.extra.get("text", "")) for ln in inside)
            ocr = [ln.score for ln in inside if ln.score is not None]
            ocr_score = min(ocr) if ocr else None
            source = "ocr" if inside else "layout"
        if d.type == "equation" and d.category == 8 and not content:
            mfd = [o for o in dets if o.category == _INTERLINE_FORMULA and iou(o.bbox, d.bbox) >= MIN_MATCH_IOU]
            content = str(mfd[0].extra.get("latex", "")) if mfd else ""
        out.append(_Raw(d.type, d.bbox, content, d.score, ocr_score, source))
    return out


def _center_inside(inner: Sequence[float], outer: Sequence[float]) -> bool:
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


# --------------------------------------------------------------------------- middle.json


def _table_html(html: str) -> str:
    """MinerU wraps tables as ``<html><body><table>..``; keep the ``<table>`` elements."""
    found = _TABLE.findall(html or "")
    return "\n".join(found) if found else (html or "")


def _spans(block: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for line in block.get("lines", []) or []:
        yield from line.get("spans", []) or []


def _span_text(span: dict[str, Any]) -> str:
    content = str(span.get("content", "") or "")
    if span.get("type") == "inline_equation" and content:
        return f"${content}$"
    return content


def _middle_raw(block: dict[str, Any], ours: str, doc_is_ocr: bool, parent_score: float | None) -> _Raw:
    """One middle.json block with its content and score factors.

    Layout score: the block's own ``score`` (mineru 3.x writes it), its parent's, or for
    tables/equations/images the score MinerU copies onto their single span; otherwise left for
    :func:`_finish_page` to match from model.json. OCR factor: the weakest text span that came from
    OCR (score < 1.0, or any span when magic-pdf ran in ``ocr`` mode).
    """
    spans = list(_spans(block))
    layout_score = block.get("score", parent_score)
    ocr_score: float | None = None
    if ours == "table":
        table = next((s for s in spans if s.get("type") == "table"), {})
        content = _table_html(str(table.get("html") or table.get("latex") or block.get("html") or ""))
        source = "layout"
        if layout_score is None:
            layout_score = table.get("score")
    elif ours == "equation":
        eq = [s for s in spans if s.get("type") in ("interline_equation", "inline_equation")]
        content = "\n".join(str(s.get("content", "")) for s in eq) or str(block.get("latex", ""))
        source = "layout"
        if layout_score is None and eq:
            layout_score = eq[0].get("score")
    elif ours == "image":
        content, source = "", "layout"
        if layout_score is None:
            layout_score = next((s.get("score") for s in spans if s.get("type") == "image"), None)
    else:
        if not spans and block.get("blocks"):  # VLM lists nest their items as blocks
            spans = [s for sub in block["blocks"] for s in _spans(sub)]
        lines = [join_fragments(_span_text(s) for s in line.get("spans", []) or []) for line in _lines_of(block)]
        # list items keep their line breaks; paragraph lines flow together as MinerU's Markdown does
        content = "\n".join(lines).strip() if ours == "list" else join_fragments(lines)
        text_scores = [float(s["score"]) for s in spans if s.get("type") == "text" and s.get("score") is not None]
        ocr_scores = [v for v in text_scores if v < 1.0 or doc_is_ocr]
        ocr_score = min(ocr_scores) if ocr_scores else None
        source = "ocr" if ocr_scores else "text_layer"
    return _Raw(
        ours,
        tuple(float(v) for v in block["bbox"]),  # type: ignore[arg-type]
        content,
        None if layout_score is None else float(layout_score),
        ocr_score,
        source,
    )


def _lines_of(block: dict[str, Any]) -> list[dict[str, Any]]:
    if block.get("lines"):
        return list(block["lines"])
    return [line for sub in block.get("blocks", []) or [] for line in sub.get("lines", []) or []]


def _blocks_from_middle(page: dict[str, Any], doc_is_ocr: bool) -> list[_Raw]:
    out: list[_Raw] = []
    for block in page.get("para_blocks") or page.get("preproc_blocks") or []:
        btype = str(block.get("type", "text"))
        nested = block.get("blocks")
        if btype in ("image", "table", "chart") and nested:
            for sub in nested:
                ours = MIDDLE_TYPES.get(str(sub.get("type")), "text")
                if sub.get("bbox"):
                    out.append(_middle_raw(sub, ours, doc_is_ocr, block.get("score")))
            continue
        if block.get("bbox"):
            out.append(_middle_raw(block, MIDDLE_TYPES.get(btype, "text"), doc_is_ocr, None))
    for block in page.get("discarded_blocks") or []:
        if block.get("bbox"):
            out.append(_middle_raw(block, "discarded", doc_is_ocr, None))
    return out


# --------------------------------------------------------------------------- content_list


def _blocks_from_content_list(items: list[dict[str, Any]], geom: PageGeometry) -> list[_Raw]:
    """mineru 2.x content_list items of one page (bbox 0-1000), in points."""
    out = []
    for it in items:
        if not it.get("bbox"):
            continue
        ctype = str(it.get("type", "text"))
        ours = CONTENT_TYPES.get(ctype, "text")
        if ctype == "text" and it.get("text_level"):
            ours = "title"
        if ours == "table":
            content, source = _table_html(str(it.get("table_body", ""))), "layout"
        elif ours == "equation":
            content, source = str(it.get("text", "")).strip().strip("$").strip(), "layout"
        elif ours == "image":
            content, source = "", "layout"
        elif ctype == "list":
            content, source = "\n".join(str(x) for x in it.get("list_items", [])), "text_layer"
        elif ctype == "code":
            content, source = str(it.get("code_body", "")), "text_layer"
        else:
            content, source = str(it.get("text", "")), "text_layer"
        px = thousandths_to_px(it["bbox"], geom)
        bbox_pt = tuple(v / geom.scale for v in px)
        out.append(_Raw(ours, bbox_pt, content, None, None, source))  # type: ignore[arg-type]
    return out


def _markdown_from_content_list(items: list[dict[str, Any]]) -> str:
    parts = []
    for it in items:
        ctype = it.get("type")
        if ctype == "text":
            level = int(it.get("text_level") or 0)
            parts.append(("#" * level + " " if level else "") + str(it.get("text", "")))
        elif ctype == "table":
            parts.append(str(it.get("table_body", "")))
        elif ctype == "equation":
            parts.append(str(it.get("text", "")))
        elif ctype == "list":
            parts.append("\n".join(str(x) for x in it.get("list_items", [])))
    return "\n\n".join(p for p in parts if p.strip())


# --------------------------------------------------------------------------- assembly


def parse_output(output: MinerUOutput, geoms: list[PageGeometry]) -> ParsedDocument:
    """Blocks per page (in our pixels), the Markdown and score evidence for one document."""
    if output.docvortex is not None:
        return parse_docvortex(output, geoms)
    middle_pages = list((output.middle or {}).get("pdf_info") or [])
    if len(middle_pages) > len(geoms):
        raise MinerUOutputError(f"MinerU returned {len(middle_pages)} pages for a {len(geoms)}-page PDF")
    model_pages = _model_pages(output.model)
    cl_by_page: dict[int, list[dict[str, Any]]] = {}
    for it in output.content_list or []:
        cl_by_page.setdefault(int(it.get("page_idx", 0)), []).append(it)
    doc_is_ocr = (output.middle or {}).get("_parse_type") == "ocr"
    middle_by_idx = {int(p.get("page_idx", i)): p for i, p in enumerate(middle_pages)}

    blocks: list[list[Block]] = []
    pages_detail: list[dict[str, Any]] = []
    for geom in geoms:
        dets = _model_dets(model_pages[geom.page], geom) if geom.page in model_pages else []
        if geom.page in middle_by_idx:
            page = middle_by_idx[geom.page]
            raws, origin = _blocks_from_middle(page, doc_is_ocr), "middle"
            raws = _rescale(raws, page.get("page_size"), geom)
        elif any(it.get("bbox") for it in cl_by_page.get(geom.page, [])):
            raws, origin = _blocks_from_content_list(cl_by_page[geom.page], geom), "content_list"
        elif dets:
            raws, origin = _blocks_from_model(dets), "model"
        else:
            raws, origin = [], "none"
        page_blocks, page_detail = _finish_page(raws, dets, geom)
        page_detail["from"] = origin
        blocks.append(page_blocks)
        pages_detail.append(page_detail)

    if all(d["from"] == "none" for d in pages_detail):
        raise MinerUOutputError(
            "MinerU output has no block coordinates (middle.json, a 2.x content_list or model.json)"
        )
    markdown = output.markdown
    if markdown is None:
        markdown = _markdown_from_content_list(output.content_list or []) or "\n\n".join(
            b.content for page in blocks for b in page if b.type != "discarded" and b.content
        )
    detail = {
        "mineru_version": output.version,
        "mineru_backend": output.backend,
        "generation": output.generation,
        "origin": output.origin,
        "unscored_blocks": sum(d["unscored"] for d in pages_detail),
        "pages": pages_detail,
    }
    return ParsedDocument(blocks=blocks, markdown=markdown.strip(), detail=detail)


def _rescale(raws: list[_Raw], page_size: Sequence[float] | None, geom: PageGeometry) -> list[_Raw]:
    """middle.json points -> our page's points (identical unless MinerU saw another page box)."""
    if not page_size or not page_size[0] or not page_size[1]:
        return raws
    sx, sy = geom.width_pt / float(page_size[0]), geom.height_pt / float(page_size[1])
    if abs(sx - 1) < 1e-3 and abs(sy - 1) < 1e-3:
        return raws
    for r in raws:
        x1, y1, x2, y2 = r.bbox
        r.bbox = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
    return raws


def _finish_page(raws: list[_Raw], dets: list[_Det], geom: PageGeometry) -> tuple[list[Block], dict[str, Any]]:
    out: list[Block] = []
    scores: list[dict[str, Any]] = []
    unscored = 0
    for r in raws:
        layout = r.layout_score if r.layout_score is not None else _match_layout_score(r.bbox, dets)
        if layout is None:
            unscored += 1
        score = (UNSCORED_BLOCK_SCORE if layout is None else layout) * (1.0 if r.ocr_score is None else r.ocr_score)
        out.append(
            make_block(
                r.type,
                geom.pt_to_px(r.bbox),
                geom.width_px,
                geom.height_px,
                content=r.content,
                score=score,
                source=r.source,
            )
        )
        scores.append({"layout": layout, "ocr": r.ocr_score})
    return out, {"page": geom.page, "unscored": unscored, "blocks": scores}


# --------------------------------------------------------------------------- MinerU 4.x


def parse_docvortex(output: MinerUOutput, geoms: list[PageGeometry]) -> ParsedDocument:
    """MinerU 4.x DocVortex output -> blocks in our pixels, unscored (see module docstring).

    Pages MinerU was not asked to parse (``-p``) are absent from its output and come back empty
    with ``from: "none"``; the caller fills them from another engine.
    """
    assert output.docvortex is not None
    try:
        by_page = docvortex.pages(output.docvortex)
    except docvortex.DocVortexError as e:
        raise MinerUOutputError(f"MinerU output: {e}") from None
    if by_page and max(by_page) >= len(geoms):
        raise MinerUOutputError(f"MinerU returned page {max(by_page)} for a {len(geoms)}-page document")
    ext = docvortex.mineru_extension(output.docvortex)
    text_source = "ocr" if ext.get("parse_mode") == "ocr" else "text_layer"
    blocks: list[list[Block]] = []
    pages_detail: list[dict[str, Any]] = []
    dv_all: list[docvortex.DVBlock] = []
    for geom in geoms:
        page_blocks: list[Block] = []
        missing_bbox = 0
        for b in by_page.get(geom.page, []):
            if b.bbox is None:
                missing_bbox += 1
                continue
            dv_all.append(b)
            x0, y0, x1, y1 = b.bbox
            px = (x0 * geom.width_px, y0 * geom.height_px, x1 * geom.width_px, y1 * geom.height_px)
            source = "layout" if b.type in ("table", "image", "equation") else text_source
            page_blocks.append(
                make_block(
                    b.type,
                    px,
                    geom.width_px,
                    geom.height_px,
                    content=b.content,
                    score=UNSCORED_BLOCK_SCORE,
                    source=source,
                )
            )
        blocks.append(page_blocks)
        detail: dict[str, Any] = {
            "page": geom.page,
            "from": "docvortex" if geom.page in by_page else "none",
            "unscored": len(page_blocks),
            "blocks": [{"layout": None, "ocr": None} for _ in page_blocks],
        }
        if missing_bbox:
            detail["blocks_without_bbox"] = missing_bbox
        pages_detail.append(detail)
    if not any(d["from"] == "docvortex" for d in pages_detail):
        raise MinerUOutputError("MinerU output has no pages")
    return ParsedDocument(
        blocks=blocks,
        markdown=docvortex.markdown(dv_all).strip(),
        detail={
            "mineru_version": output.version,
            "mineru_backend": output.backend,
            "mineru_tier": ext.get("tier"),
            "mineru_parse_mode": ext.get("parse_mode"),
            "generation": output.generation,
            "origin": output.origin,
            "unscored_blocks": sum(d["unscored"] for d in pages_detail),
            "pages": pages_detail,
        },
    )
