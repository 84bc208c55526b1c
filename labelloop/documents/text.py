"""Small text helpers shared by the document parsers: joining fragments and HTML tables.

Both backends assemble block text from pieces (spans, lines, OCR lines). Joining them with a blank
everywhere would put spaces inside Chinese sentences; joining them with nothing would glue English
words together, so the join depends on the characters at the seam.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f]")
_MD_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


def is_cjk(ch: str) -> bool:
    """True for CJK ideographs, kana, hangul and full-width punctuation."""
    return bool(ch) and bool(_CJK.match(ch))


def join_fragments(parts: Iterable[str]) -> str:
    """Join text fragments (spans or lines) the way a reader would.

    A space goes between two fragments unless either side of the seam is CJK or already
    whitespace. A Latin word hyphenated across a line break ("dura-" + "tion") is rejoined.
    """
    out = ""
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        if not out:
            out = part
            continue
        left, right = out[-1], part[0]
        if left == "-" and len(out) > 1 and out[-2].isalpha() and right.islower():
            out = out[:-1] + part
        elif is_cjk(left) or is_cjk(right):
            out += part
        else:
            out += " " + part
    return out


def rows_to_html(rows: Sequence[Sequence[str | None]], header: bool = True) -> str:
    """A ``<table>`` from a grid of cell texts; the first row becomes ``<th>`` when ``header``."""
    lines = ["<table>"]
    for i, row in enumerate(rows):
        tag = "th" if header and i == 0 else "td"
        cells = "".join(f"<{tag}>{html.escape(cell or '').replace(chr(10), '<br/>')}</{tag}>" for cell in row)
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</table>")
    return "".join(lines)


def markdown_table_to_html(markdown: str) -> str | None:
    """Convert a GitHub-style pipe table to HTML; None when the text holds no such table.

    Tables are stored as HTML everywhere (the richest form for both models and people), so a
    Markdown table from a converter is translated rather than kept.
    """
    rows: list[list[str]] = []
    has_separator = False
    for line in markdown.strip().splitlines():
        if not line.strip():
            continue
        if _MD_SEPARATOR.match(line):
            has_separator = True
            continue
        if "|" not in line:
            return None
        cells = line.strip()
        if cells.startswith("|"):
            cells = cells[1:]
        if cells.endswith("|"):
            cells = cells[:-1]
        rows.append([c.strip().replace("<br>", "\n").replace("<br/>", "\n") for c in cells.split("|")])
    if not rows:
        return None
    return rows_to_html(rows, header=has_separator)
