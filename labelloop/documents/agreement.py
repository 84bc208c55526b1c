"""Confidence from agreement: two independent parsers read the same page; where they agree, trust.

MinerU 4.x (DocVortex) gives no score at all. The pymupdf layout backend is an independent reader of
the same text-layer page (different layout model, different text assembly), so for each MinerU block
we look for what pymupdf found in the same place and compare three things:

* ``iou``: box overlap with the union of the reference blocks that lie (mostly) inside the block, or
  with the best-overlapping single block (pymupdf splits and merges paragraphs differently);
* ``type``: same type (1.0), both text-like (0.5: title vs text, list vs text...), else 0.0;
* ``text``: similarity of the normalised texts (NFKC, case-folded, tags and whitespace removed),
  difflib's ratio; None for images, which have no text to compare.

``score = type * min(box, text)``, with ``box = min(1, iou / IOU_FULL)``: a box that overlaps by
``IOU_FULL`` counts as full agreement, because the two parsers draw boxes with different margins.
The score is a ranking signal, not a probability: calibration (``labelloop calibrate``) turns it into
thresholds that hold the target error rate, like any other confidence. Every component goes into
``confidence_detail`` so a reviewer (and the calibration report) can see why a block scored low.
"""

from __future__ import annotations

import re
import unicodedata
from difflib import SequenceMatcher
from typing import Any

from labelloop.documents.record import Block
from labelloop.documents.render import iou

IOU_FULL = 0.75
#: fraction of a reference block's area inside the primary block for it to count as part of it
INSIDE = 0.6
_TEXTLIKE = {"title", "text", "list", "caption", "footnote"}
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
_MD = re.compile(r"[#*_`$|\\-]+")


def normalise(text: str) -> str:
    t = unicodedata.normalize("NFKC", text or "")
    t = _TAG.sub(" ", t)
    t = _MD.sub(" ", t)
    return _SPACE.sub("", t.casefold())


def text_similarity(a: str, b: str) -> float:
    na, nb = normalise(a), normalise(b)
    if not na and not nb:
        return 1.0
    if not na or not nb:
        return 0.0
    return SequenceMatcher(None, na, nb, autojunk=False).ratio()


def type_agreement(a: str, b: str) -> float:
    if a == b:
        return 1.0
    if a in _TEXTLIKE and b in _TEXTLIKE:
        return 0.5
    return 0.0


def _area(b: list[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _inside_share(inner: list[float], outer: list[float]) -> float:
    a = _area(inner)
    if a <= 0:
        return 0.0
    x1, y1 = max(inner[0], outer[0]), max(inner[1], outer[1])
    x2, y2 = min(inner[2], outer[2]), min(inner[3], outer[3])
    return _area([x1, y1, x2, y2]) / a


def _union(boxes: list[list[float]]) -> list[float]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def compare(block: Block, reference: list[Block]) -> dict[str, Any]:
    """Agreement components and score of one block against the other parser's blocks on its page."""
    ref = [r for r in reference if r.type != "discarded" or block.type == "discarded"]
    parts = [r for r in ref if _inside_share(r.bbox, block.bbox) >= INSIDE]
    if parts:
        box_iou = iou(block.bbox, _union([r.bbox for r in parts]))
        best_single = max(ref, key=lambda r: iou(block.bbox, r.bbox))
        if iou(block.bbox, best_single.bbox) > box_iou:
            parts, box_iou = [best_single], iou(block.bbox, best_single.bbox)
    else:
        best = max(ref, key=lambda r: iou(block.bbox, r.bbox), default=None)
        if best is None or iou(block.bbox, best.bbox) <= 0.05:
            return {"score": 0.0, "iou": 0.0, "type": 0.0, "text": None, "matched": 0, "reason": "no_counterpart"}
        parts, box_iou = [best], iou(block.bbox, best.bbox)
    types = [type_agreement(block.type, r.type) for r in parts]
    type_score = max(set(types), key=types.count) if len(parts) > 1 else types[0]
    text = None if block.type == "image" else text_similarity(block.content, " ".join(r.content for r in parts))
    box = min(1.0, box_iou / IOU_FULL)
    score = type_score * (box if text is None else min(box, text))
    return {
        "score": round(score, 5),
        "iou": round(box_iou, 4),
        "type": type_score,
        "text": None if text is None else round(text, 4),
        "matched": len(parts),
        "reference_types": sorted({r.type for r in parts}),
    }


def score_page(blocks: list[Block], reference: list[Block]) -> tuple[list[Block], list[dict[str, Any]]]:
    """The page's blocks with agreement scores, and the components per block."""
    out: list[Block] = []
    details: list[dict[str, Any]] = []
    for b in blocks:
        d = compare(b, reference)
        out.append(b.model_copy(update={"score": d["score"]}))
        details.append(d)
    return out, details
