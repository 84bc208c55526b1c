"""Did the reviewer change a field? One function per comparison named in a spec.

Each returns ``(changed, distance)``: ``changed`` feeds the correction log and calibration (the
change rate among auto-acceptable items is the error rate routing controls); ``distance`` is the
figure behind it, kept so thresholds on it can be revisited later without re-syncing:

  exact  0 or 1
  text   normalised Levenshtein distance in [0, 1] (0 = identical)
  iou    1 - IoU (1 when exactly one side has no box)
  set    1 - matched / max(len(a), len(b)): the share of list items without an equal partner

Strings are compared after collapsing whitespace (a reviewer retyping a value with a trailing
space did not correct the model); ``exact`` also ignores case, ``text`` does not (a transcription
with the wrong case is wrong).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein
from scipy.optimize import linear_sum_assignment

from labelloop.specs.model import FieldSpec

_WS = re.compile(r"\s+")
#: keys that hold an item's box inside regions/objects/blocks
BOX_KEYS = ("bbox_2d", "bbox")
#: keys compared by text edit distance; every other non-box key is compared exactly (labels, types)
TEXT_KEYS = frozenset({"text", "content", "description", "question", "answer"})


def normalise_text(value: Any) -> str:
    return _WS.sub(" ", str(value)).strip() if value is not None else ""


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def compare_exact(a: Any, b: Any) -> tuple[bool, float]:
    """Equality; strings ignore case and surrounding/duplicate whitespace, None equals ""."""
    if _is_empty(a) and _is_empty(b):
        return False, 0.0
    if isinstance(a, str) and isinstance(b, str):
        same = normalise_text(a).casefold() == normalise_text(b).casefold()
    else:
        same = a == b
    return (not same), (0.0 if same else 1.0)


def text_distance(a: Any, b: Any) -> float:
    return float(Levenshtein.normalized_distance(normalise_text(a), normalise_text(b)))


def compare_text(a: Any, b: Any, tolerance: float = 0.0) -> tuple[bool, float]:
    """Changed when the normalised edit distance exceeds ``tolerance`` (0: any edit)."""
    d = text_distance(a, b)
    return d > tolerance, d


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if union <= 0:  # two degenerate boxes: equal iff identical
        return 1.0 if list(a) == list(b) else 0.0
    return inter / union


def compare_iou(a: Sequence[float] | None, b: Sequence[float] | None, threshold: float = 0.5) -> tuple[bool, float]:
    """Changed when IoU < ``threshold`` or exactly one side has no box."""
    if a is None and b is None:
        return False, 0.0
    if a is None or b is None:
        return True, 1.0
    v = iou(a, b)
    return v < threshold, 1.0 - v


#: a video event's interval; matched as the 1-D box [start, 0, end, 1] so IoU is temporal IoU
TIME_KEYS = ("start", "end")


def _box_of(item: Any) -> Sequence[float] | None:
    if isinstance(item, Mapping):
        for k in BOX_KEYS:
            if k in item:
                return item[k]
        start, end = item.get("start"), item.get("end")
        if isinstance(start, int | float) and isinstance(end, int | float):
            return [float(start), 0.0, float(end), 1.0]
    return None


def _items_equal(a: Any, b: Any, tolerance: float) -> bool:
    """Two list items agree apart from their boxes (boxes were matched already)."""
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
        return not compare_exact(a, b)[0]
    for key in (set(a) | set(b)) - set(BOX_KEYS) - set(TIME_KEYS):
        if key in TEXT_KEYS:
            if compare_text(a.get(key), b.get(key), tolerance)[0]:
                return False
        elif compare_exact(a.get(key), b.get(key))[0]:
            return False
    return True


def compare_set(
    a: Sequence[Any] | None,
    b: Sequence[Any] | None,
    *,
    iou_threshold: float = 0.5,
    tolerance: float = 0.0,
) -> tuple[bool, float]:
    """Multiset equality of regions/objects/blocks (or plain values).

    Items are paired one-to-one by an optimal assignment on IoU (pairs below ``iou_threshold``
    do not count); a pair agrees when its labels are equal and its texts within ``tolerance``.
    Items without boxes pair by equality alone. Order does not matter: a reviewer who only
    reorders regions did not change anything.
    """
    a, b = list(a or []), list(b or [])
    if not a and not b:
        return False, 0.0
    used_b: set[int] = set()
    agree = 0
    boxed_a = [i for i, x in enumerate(a) if _box_of(x) is not None]
    boxed_b = [j for j, y in enumerate(b) if _box_of(y) is not None]
    if boxed_a and boxed_b:
        ious = np.array([[iou(_box_of(a[i]), _box_of(b[j])) for j in boxed_b] for i in boxed_a])
        # pairs that agree in content win ties over mere overlap
        content = np.array([[_items_equal(a[i], b[j], tolerance) for j in boxed_b] for i in boxed_a])
        score = np.where(ious >= iou_threshold, ious + content, -1.0)
        rows, cols = linear_sum_assignment(score, maximize=True)
        for r, c in zip(rows, cols, strict=True):
            if score[r, c] >= 0:
                used_b.add(boxed_b[c])
                agree += bool(content[r, c])
    unboxed_b = [j for j, y in enumerate(b) if _box_of(y) is None]
    for i, x in enumerate(a):
        if i in boxed_a:
            continue
        for j in unboxed_b:
            if j not in used_b and _items_equal(x, b[j], tolerance):
                used_b.add(j)
                agree += 1
                break
    n = max(len(a), len(b))
    distance = 1.0 - agree / n
    return agree != len(a) or agree != len(b), distance


def compare_field(field: FieldSpec, model_value: Any, human_value: Any) -> tuple[bool, float]:
    """Apply the comparison the spec names for ``field``; returns (changed, distance)."""
    if field.compare == "exact":
        return compare_exact(model_value, human_value)
    if field.compare == "text":
        return compare_text(model_value, human_value, field.tolerance)
    if field.compare == "iou":
        return compare_iou(model_value, human_value, field.iou_threshold)
    if field.compare == "set":
        return compare_set(model_value, human_value, iou_threshold=field.iou_threshold, tolerance=field.tolerance)
    raise ValueError(f"unknown comparison {field.compare!r}")  # pragma: no cover - Literal guards it


def compare_record(
    fields: Mapping[str, FieldSpec], model_record: Mapping[str, Any] | None, human_record: Mapping[str, Any]
) -> dict[str, tuple[bool, float]]:
    """Per-field (changed, distance) for every field of a spec."""
    model_record = model_record or {}
    return {name: compare_field(spec, model_record.get(name), human_record.get(name)) for name, spec in fields.items()}
