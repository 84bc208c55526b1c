"""Parse MinerU 4.x output, DocVortex ``docvortex.middle`` 2.0, into record blocks in our page pixels.

MinerU 4.x (``mineru-kit parse ... -f middle_json``, ``mineru-api`` ``middle_json``) writes one JSON
document: ``pages[].blocks[]`` with a ``type`` (doc_title, paragraph_title, text, list, index,
table, image, chart, code, equation, header, footer, page_number, aside_text, page_footnote, ref_text),
a ``bbox`` in **0-1 of the page** (x0, y0, x1, y1, top-left origin) and a ``content`` that is either a
string (table/equation/image bodies: HTML, LaTeX, "") or a list of inline spans (``text`` with
``styles``, ``equation_inline``, ``code_inline``, ``hyperlink`` nesting spans) or, for visual blocks
and lists, nested blocks. ``extensions.mineru.tier`` / ``parse_mode`` say how it was made.

DocVortex blocks carry **no score**. A block's score is left to the caller (agreement with a second,
independent parser: :mod:`labelloop.documents.agreement`); a block that nothing scores gets
:data:`~labelloop.documents.mineru_parse.UNSCORED_BLOCK_SCORE`, so it goes to review.

Office documents parsed natively have blocks **without** bbox (there are no pages to put them on);
:func:`native_blocks` returns their content in reading order for :mod:`labelloop.documents.office`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SCHEMA = "docvortex.middle"
SUPPORTED_VERSIONS = ("2.0",)

#: DocVortex page-level block type -> our block type
TYPES: dict[str, str] = {
    "doc_title": "title",
    "paragraph_title": "title",
    "text": "text",
    "ref_text": "text",
    "list": "list",
    "index": "list",
    "table": "table",
    "image": "image",
    "chart": "image",
    "code": "text",
    "equation": "equation",
    "page_footnote": "footnote",
    "header": "discarded",
    "footer": "discarded",
    "page_number": "discarded",
    "aside_text": "discarded",
}
#: children of visual blocks (image/table/chart/code) -> our block type
CHILD_TYPES: dict[str, str] = {
    "image_body": "image",
    "chart_body": "image",
    "table_body": "table",
    "code_body": "text",
    "algorithm_body": "text",
    "image_caption": "caption",
    "table_caption": "caption",
    "chart_caption": "caption",
    "code_caption": "caption",
    "image_footnote": "footnote",
    "table_footnote": "footnote",
    "chart_footnote": "footnote",
    "code_footnote": "footnote",
}
_TEXT_CHILDREN = ("text", "ref_text", "doc_title", "paragraph_title")
_TABLE = re.compile(r"<table\b.*?</table>", re.IGNORECASE | re.DOTALL)


class DocVortexError(ValueError):
    """Not a DocVortex middle document we can read."""


@dataclass
class DVBlock:
    """One block of a DocVortex page, flattened: our type, 0-1 box (or None), content."""

    type: str
    bbox: tuple[float, float, float, float] | None
    content: str
    dv_type: str
    level: int | None = None


def is_docvortex(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA


def check(doc: dict[str, Any]) -> None:
    if not is_docvortex(doc):
        raise DocVortexError(f"not a {SCHEMA} document (schema={doc.get('schema')!r})")
    if str(doc.get("schema_version")) not in SUPPORTED_VERSIONS:
        raise DocVortexError(
            f"{SCHEMA} schema_version {doc.get('schema_version')!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    if not isinstance(doc.get("pages"), list):
        raise DocVortexError(f"{SCHEMA} document has no pages list")


def producer_version(doc: dict[str, Any]) -> str | None:
    v = ((doc.get("metadata") or {}).get("producer") or {}).get("version")
    return str(v) if v else None


def mineru_extension(doc: dict[str, Any]) -> dict[str, Any]:
    """``extensions.mineru``: tier and parse_mode (txt|ocr) of the run."""
    ext = (doc.get("extensions") or {}).get("mineru") or {}
    return dict(ext) if isinstance(ext, dict) else {}


def spans_text(spans: Any) -> str:
    """Plain text of an inline span list; inline equations keep ``$..$`` as MinerU's Markdown does."""
    if isinstance(spans, str):
        return spans
    out: list[str] = []
    for s in spans or []:
        if not isinstance(s, dict):
            continue
        t = s.get("type")
        if t == "equation_inline":
            out.append(f"${s.get('content', '')}$")
        elif t == "hyperlink" or isinstance(s.get("content"), list):
            out.append(spans_text(s.get("content")))
        else:
            out.append(str(s.get("content", "")))
    return "".join(out)


def _bbox(b: dict[str, Any], where: str) -> tuple[float, float, float, float] | None:
    box = b.get("bbox")
    if box is None:
        return None
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise DocVortexError(f"{where}: bbox {box!r} is not four numbers")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1):
        raise DocVortexError(f"{where}: bbox {box!r} is not x0<=x1, y0<=y1 within 0-1")
    return (x0, y0, x1, y1)


def _list_text(content: Any) -> str:
    """List items one per line (nested lists indented by their own lines)."""
    lines: list[str] = []
    for child in content or []:
        if not isinstance(child, dict):
            continue
        if child.get("type") == "list":
            lines.append(_list_text(child.get("content")))
        elif isinstance(child.get("content"), list) and child.get("type") in _TEXT_CHILDREN:
            lines.append(spans_text(child.get("content")))
        else:
            lines.append(spans_text([child]))
    return "\n".join(x for x in lines if x)


def table_html(html: str) -> str:
    found = _TABLE.findall(html or "")
    return "\n".join(found) if found else (html or "")


def flatten_page(page: dict[str, Any], page_no: int) -> list[DVBlock]:
    """A page's blocks in reading order; visual blocks become their body plus captions/footnotes."""
    out: list[DVBlock] = []
    for i, b in enumerate(page.get("blocks") or []):
        if not isinstance(b, dict):
            raise DocVortexError(f"page {page_no} block {i} is not an object")
        where = f"page {page_no} block {i} ({b.get('type')})"
        dv = str(b.get("type"))
        if dv not in TYPES:
            raise DocVortexError(f"{where}: unknown DocVortex block type")
        if dv in ("image", "table", "chart", "code"):
            for j, child in enumerate(b.get("content") or []):
                ct = str(child.get("type"))
                ours = CHILD_TYPES.get(ct)
                if ours is None:
                    raise DocVortexError(f"{where} child {j}: unknown type {ct!r}")
                raw = child.get("content")
                if ours == "table":
                    content = table_html(str(raw or ""))
                elif ours == "image":
                    content = ""
                else:
                    content = spans_text(raw)
                box = _bbox(child, f"{where} child {j}") or (_bbox(b, where) if ours in ("image", "table") else None)
                out.append(DVBlock(ours, box, content, ct))
            continue
        raw = b.get("content")
        if dv in ("list", "index"):
            content = _list_text(raw)
        elif dv == "equation":
            content = str(raw or "")
        else:
            content = spans_text(raw)
        out.append(DVBlock(TYPES[dv], _bbox(b, where), content, dv, b.get("level")))
    return out


def pages(doc: dict[str, Any]) -> dict[int, list[DVBlock]]:
    """Blocks per page index."""
    check(doc)
    result: dict[int, list[DVBlock]] = {}
    for i, p in enumerate(doc["pages"]):
        idx = int(p.get("page_idx", i))
        result[idx] = flatten_page(p, idx)
    return result


def native_blocks(doc: dict[str, Any]) -> list[DVBlock]:
    """All blocks of a document in reading order (office documents: boxes may be None)."""
    return [b for _, blocks in sorted(pages(doc).items()) for b in blocks]


def markdown(blocks: Iterable[DVBlock]) -> str:
    """Markdown of our own from the blocks: MinerU's Markdown inlines images as data URIs (MBs)."""
    parts: list[str] = []
    for b in blocks:
        if b.type == "discarded" or (not b.content and b.type != "image"):
            continue
        if b.type == "title":
            parts.append("#" * max(1, min(6, b.level or 1)) + " " + b.content)
        elif b.type == "equation":
            parts.append(f"$$\n{b.content}\n$$")
        elif b.type == "image":
            continue
        else:
            parts.append(b.content)
    return "\n\n".join(parts)
