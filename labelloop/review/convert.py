"""Spec records <-> Label Studio results, generic over the spec's field kinds.

Records keep boxes in original-image pixels (documents: page pixels); Label Studio keeps regions
in percent of the image it shows, with ``original_width``/``original_height`` beside them. This
module is the only place that converts between the two, and it is driven by the spec alone (the
field's kind and its ``ls`` mapping), so a new spec needs no code here:

  text     a TextArea result without geometry (``value.text``)
  choice   a Choices result (``value.choices``)
  box      one rectangle of a RectangleLabels control, the one carrying the field's ``ls.label``
  regions  rectangles of ``ls.from_name`` plus a per-region TextArea (``ls.text_from_name``)
           sharing the rectangle's region id
  objects  rectangles of ``ls.from_name`` whose label is the object's label
  blocks   like regions, the rectangle's label being the block type (one page per task)
  events   TimelineLabels regions on the Video (``value.ranges`` in 1-based frames at the task's
           ``fps``) plus a per-region TextArea for the description; seconds <-> frames here
  qa       two TextAreas, ``ls.from_name`` (questions) and ``ls.text_from_name`` (answers), one
           pair per row

A document is reviewed a page per task: :func:`task_view` cuts one page out of the record and
:func:`merge_page` puts the reviewed page back. Every conversion has a round-trip test
(tests/test_review_convert.py); a silent coordinate error would ruin a fine-tune.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labelloop.specs import FieldSpec, TaskSpec

RECT_TYPES = ("rectanglelabels", "rectangle")
#: what a human-drawn block gets where the record needs a provenance the human cannot give
HUMAN_BLOCK_SCORE = 1.0
DEFAULT_BLOCK_SOURCE = "layout"
#: keys of a block that say where it came from, not what it is; comparisons ignore them
BLOCK_META_KEYS = ("score", "source")


@dataclass(frozen=True)
class ImageSize:
    """Pixel size of the image a task shows (after EXIF orientation; documents: the page render;
    videos: the display size, with the frame rate Label Studio's timeline counts frames at)."""

    width: int
    height: int
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"frame rate must be positive, got {self.fps}")


# --------------------------------------------------------------------------- time


def seconds_to_frames(start: float, end: float, fps: float) -> dict[str, int]:
    """An interval in seconds as Label Studio's timeline range: 1-based frame numbers, both ends
    included, frame n showing [(n-1)/fps, n/fps). Times snap to the frames the reviewer sees."""
    first = math.floor(start * fps + 1e-6) + 1
    last = max(first, math.ceil(end * fps - 1e-6))
    return {"start": first, "end": last}


def frames_to_seconds(rng: Mapping[str, Any], fps: float) -> tuple[float, float]:
    """A timeline range back to seconds (start of its first frame, end of its last)."""
    first, last = int(rng["start"]), int(rng["end"])
    if first < 1 or last < first:
        raise ValueError(f"timeline range {first}..{last} is not a frame range")
    return round((first - 1) / fps, 6), round(last / fps, 6)


# --------------------------------------------------------------------------- geometry


def box_to_value(bbox: Sequence[float], size: ImageSize) -> dict[str, float]:
    """[x1, y1, x2, y2] in pixels -> Label Studio's rectangle value in percent."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return {
        "x": x1 / size.width * 100.0,
        "y": y1 / size.height * 100.0,
        "width": (x2 - x1) / size.width * 100.0,
        "height": (y2 - y1) / size.height * 100.0,
        "rotation": 0,
    }


#: how far (pixels) a box may reach past the image edge before it is rejected: the percent
#: round trip through Label Studio's float values is off by far less; a real overshoot is more
EDGE_TOLERANCE_PX = 0.5


class AnnotationError(ValueError):
    """An annotation that breaks the spec (malformed value, box outside the image, two choices
    on a single-choice field, an unknown control): rejected with this reason, never repaired."""


def _number(value: Mapping[str, Any], key: str, rid: Any) -> float:
    raw = value.get(key, 0.0 if key == "rotation" else None)
    try:
        if raw is None or isinstance(raw, bool):
            raise TypeError
        out = float(raw)
    except (TypeError, ValueError):
        raise AnnotationError(f"region {rid!r}: {key}={raw!r} is not a number") from None
    if not math.isfinite(out):
        raise AnnotationError(f"region {rid!r}: {key}={raw!r} is not a finite number")
    return out


def value_to_box(
    value: Mapping[str, Any], size: ImageSize, *, integer: bool, rid: Any = None
) -> list[float] | list[int]:
    """Label Studio's rectangle value -> [x1, y1, x2, y2] in pixels.

    A rotated rectangle (rotation in degrees, clockwise about its top-left corner, applied in
    pixel space) becomes its axis-aligned bounding box: records have no rotation. ``integer``
    rounds to whole pixels (image specs' schemas use integers); otherwise to 0.01 px. A box that
    reaches more than :data:`EDGE_TOLERANCE_PX` outside the image, or has no area, raises
    :class:`AnnotationError`: clamping it would store a box nobody drew.
    """
    x = _number(value, "x", rid) / 100.0 * size.width
    y = _number(value, "y", rid) / 100.0 * size.height
    w = _number(value, "width", rid) / 100.0 * size.width
    h = _number(value, "height", rid) / 100.0 * size.height
    if w <= 0 or h <= 0:
        raise AnnotationError(f"region {rid!r}: box of {w:.2f}x{h:.2f} px has no area")
    theta = math.radians(_number(value, "rotation", rid))
    if theta:
        c, s = math.cos(theta), math.sin(theta)
        xs = [x, x + w * c, x - h * s, x + w * c - h * s]
        ys = [y, y + w * s, y + h * c, y + w * s + h * c]
        box = [min(xs), min(ys), max(xs), max(ys)]
    else:
        box = [x, y, x + w, y + h]
    tol = EDGE_TOLERANCE_PX
    if box[0] < -tol or box[1] < -tol or box[2] > size.width + tol or box[3] > size.height + tol:
        shown = ", ".join(f"{v:.1f}" for v in box)
        raise AnnotationError(f"region {rid!r}: box [{shown}] lies outside the {size.width}x{size.height} image")
    # within the tolerance: the float round trip, not a drawing; snap to the edge
    box = [max(box[0], 0.0), max(box[1], 0.0), min(box[2], size.width), min(box[3], size.height)]
    if integer:
        return [round(v) for v in box]
    return [round(v, 2) for v in box]


# --------------------------------------------------------------------------- record -> result


def _region(
    rid: str, control: str, to_name: str, size: ImageSize, geom: dict[str, float], kind: str, payload: dict
) -> dict[str, Any]:
    return {
        "id": rid,
        "from_name": control,
        "to_name": to_name,
        "type": kind,
        "original_width": size.width,
        "original_height": size.height,
        "image_rotation": 0,
        "value": {**geom, **payload},
    }


def _score_at(scores: float | Sequence[float] | None, i: int) -> float | None:
    if scores is None:
        return None
    if isinstance(scores, int | float):
        return float(scores)
    return float(scores[i]) if i < len(scores) and scores[i] is not None else None


def _rect_and_text(
    rid: str,
    f: FieldSpec,
    size: ImageSize,
    bbox: Sequence[float],
    label: str,
    text: str | None,
    score: float | None,
) -> list[dict[str, Any]]:
    geom = box_to_value(bbox, size)
    rect = _region(rid, f.ls.from_name, f.ls.to_name, size, geom, "rectanglelabels", {"rectanglelabels": [label]})
    if score is not None:
        rect["score"] = score
    out = [rect]
    if f.ls.text_from_name and text:
        out.append(_region(rid, f.ls.text_from_name, f.ls.to_name, size, geom, "textarea", {"text": [text]}))
    return out


def field_to_results(
    name: str, f: FieldSpec, value: Any, size: ImageSize, scores: float | Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """One field's value as Label Studio result entries (empty values give none)."""
    ls = f.ls
    if f.kind == "text":
        if value is None or str(value) == "":
            return []
        return [
            {
                "id": name,
                "from_name": ls.from_name,
                "to_name": ls.to_name,
                "type": "textarea",
                "value": {"text": [str(value)]},
            }
        ]
    if f.kind == "choice":
        if value is None or value not in (f.choices or []):
            return []  # a value outside the config's choices could not be shown, only confuse
        return [
            {
                "id": name,
                "from_name": ls.from_name,
                "to_name": ls.to_name,
                "type": "choices",
                "value": {"choices": [value]},
            }
        ]
    if f.kind == "box":
        if not value:
            return []
        return _rect_and_text(name, f, size, value, ls.label or name, None, _score_at(scores, 0))
    if f.kind == "qa":
        pairs = list(value or [])
        if not pairs:
            return []
        return [
            {"id": f"{name}-q", "from_name": ls.from_name, "to_name": ls.to_name, "type": "textarea",
             "value": {"text": [str(p["question"]) for p in pairs]}},
            {"id": f"{name}-a", "from_name": ls.text_from_name, "to_name": ls.to_name, "type": "textarea",
             "value": {"text": [str(p["answer"]) for p in pairs]}},
        ]  # fmt: skip
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(value or []):
        rid = f"{name}-{i}"
        if f.kind == "events":
            if size.fps is None:
                raise ValueError(f"field {name}: events need the video's frame rate")
            rng = seconds_to_frames(float(entry["start"]), float(entry["end"]), size.fps)
            region = {"id": rid, "from_name": ls.from_name, "to_name": ls.to_name, "type": "timelinelabels",
                      "value": {"ranges": [rng], "timelinelabels": [entry["label"]]}}  # fmt: skip
            score = _score_at(scores, i)
            if score is not None:
                region["score"] = score
            out.append(region)
            if ls.text_from_name and entry.get("description"):
                out.append({"id": rid, "from_name": ls.text_from_name, "to_name": ls.to_name, "type": "textarea",
                            "value": {"ranges": [rng], "text": [str(entry["description"])]}})  # fmt: skip
            continue
        if f.kind == "regions":
            label = ls.label or "Text"
            out += _rect_and_text(rid, f, size, entry["bbox"], label, entry.get("text"), _score_at(scores, i))
        elif f.kind == "objects":
            label = entry.get("label") or ls.label or "object"
            out += _rect_and_text(rid, f, size, entry["bbox_2d"], label, None, _score_at(scores, i))
        elif f.kind == "blocks":
            score = entry.get("score") if scores is None else _score_at(scores, i)
            out += _rect_and_text(rid, f, size, entry["bbox"], entry["type"], entry.get("content"), score)
        else:  # pragma: no cover - FieldKind is a closed Literal
            raise ValueError(f"field {name}: unknown kind {f.kind!r}")
    return out


def to_result(
    spec: TaskSpec,
    view: Mapping[str, Any] | None,
    size: ImageSize,
    scores: Mapping[str, float | Sequence[float] | None] | None = None,
) -> list[dict[str, Any]]:
    """A task view (see :func:`task_view`) as a Label Studio result list."""
    view = view or {}
    scores = scores or {}
    out: list[dict[str, Any]] = []
    for name, f in spec.fields.items():
        out += field_to_results(name, f, view.get(name), size, scores.get(name))
    return out


# --------------------------------------------------------------------------- result -> record


def _texts(entries: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(str(t) for e in entries for t in (e.get("value", {}).get("text") or []))


def _labels(entry: Mapping[str, Any]) -> list[str]:
    return list(entry.get("value", {}).get("rectanglelabels") or entry.get("value", {}).get("labels") or [])


def _size_of(entry: Mapping[str, Any], size: ImageSize | None) -> ImageSize:
    if size is not None:
        return size
    try:
        return ImageSize(int(entry["original_width"]), int(entry["original_height"]))
    except (KeyError, TypeError, ValueError):
        raise AnnotationError(f"region {entry.get('id')!r}: no image size to convert percent to pixels") from None


class _Index:
    """Result entries by control name, keeping the annotator's order."""

    def __init__(self, result: Sequence[Mapping[str, Any]]) -> None:
        self.by_control: dict[str, list[Mapping[str, Any]]] = {}
        for entry in result:
            self.by_control.setdefault(entry.get("from_name", ""), []).append(entry)

    def plain(self, control: str) -> list[Mapping[str, Any]]:
        """Entries without geometry (whole-image TextArea/Choices)."""
        return [e for e in self.by_control.get(control, []) if "x" not in e.get("value", {})]

    def rects(self, control: str) -> list[Mapping[str, Any]]:
        return [e for e in self.by_control.get(control, []) if e.get("type") in RECT_TYPES]

    def region_text(self, control: str | None, rid: Any) -> str:
        if not control:
            return ""
        return _texts([e for e in self.by_control.get(control, []) if e.get("id") == rid])


def field_from_result(
    name: str,
    f: FieldSpec,
    index: _Index,
    size: ImageSize | None,
    *,
    integer: bool,
    model_value: Any = None,
) -> Any:
    ls = f.ls
    if f.kind == "text":
        return _texts(index.plain(ls.from_name))
    if f.kind == "choice":
        chosen = [c for e in index.plain(ls.from_name) for c in (e.get("value", {}).get("choices") or [])]
        if len(chosen) > 1:
            raise AnnotationError(f"{name}: {len(chosen)} choices {chosen!r} on a single-choice field")
        if chosen and f.choices and chosen[0] not in f.choices:
            raise AnnotationError(f"{name}: {chosen[0]!r} is not one of the spec's choices")
        return chosen[0] if chosen else None
    if f.kind == "qa":
        return _qa_from_result(name, f, index)
    if f.kind == "events":
        return _events_from_result(name, f, index, size)
    rects = index.rects(ls.from_name)
    if f.kind == "box":
        want = ls.label or name
        mine = [e for e in rects if want in _labels(e)]
        if len(mine) > 1:
            raise AnnotationError(f"{name}: {len(mine)} boxes labelled {want!r}, the field holds one")
        if mine:
            return value_to_box(mine[0]["value"], _size_of(mine[0], size), integer=integer, rid=mine[0].get("id"))
        return None
    out: list[dict[str, Any]] = []
    model_by_id = {f"{name}-{i}": m for i, m in enumerate(model_value or [])}
    for e in rects:
        box = value_to_box(e["value"], _size_of(e, size), integer=integer, rid=e.get("id"))
        labels = _labels(e)
        if f.kind == "regions":
            out.append({"bbox": box, "text": index.region_text(ls.text_from_name, e.get("id"))})
        elif f.kind == "objects":
            out.append({"bbox_2d": box, "label": labels[0] if labels else (ls.label or "object")})
        elif f.kind == "blocks":
            origin = model_by_id.get(str(e.get("id")), {})
            out.append(
                {
                    "type": labels[0] if labels else origin.get("type", "text"),
                    "bbox": box,
                    "content": index.region_text(ls.text_from_name, e.get("id")),
                    "score": HUMAN_BLOCK_SCORE,
                    "source": origin.get("source", DEFAULT_BLOCK_SOURCE),
                }
            )
    return out


def _events_from_result(name: str, f: FieldSpec, index: _Index, size: ImageSize | None) -> list[dict[str, Any]]:
    """Timeline regions back to events; a region we cannot read is an error naming it, not a drop."""
    if size is None or size.fps is None:
        raise ValueError(f"field {name}: the video's frame rate is unknown, timeline frames can't become seconds")
    out = []
    for e in index.by_control.get(f.ls.from_name, []):
        if e.get("type") != "timelinelabels":
            continue
        value = e.get("value") or {}
        ranges, labels = value.get("ranges") or [], value.get("timelinelabels") or []
        if len(ranges) != 1:
            raise ValueError(f"field {name}: region {e.get('id')!r} has {len(ranges)} ranges, expected one")
        if len(labels) != 1:
            raise ValueError(f"field {name}: region {e.get('id')!r} has {len(labels)} labels, expected one")
        start, end = frames_to_seconds(ranges[0], size.fps)
        desc = index.region_text(f.ls.text_from_name, e.get("id"))
        out.append({"start": start, "end": end, "label": labels[0], "description": desc})
    return sorted(out, key=lambda ev: (ev["start"], ev["end"]))


def _qa_from_result(name: str, f: FieldSpec, index: _Index) -> list[dict[str, Any]]:
    def rows(control: str | None) -> list[str]:
        return [str(t) for e in index.plain(control or "") for t in (e.get("value", {}).get("text") or [])]

    questions, answers = rows(f.ls.from_name), rows(f.ls.text_from_name)
    if len(questions) != len(answers):
        raise ValueError(
            f"field {name}: {len(questions)} question(s) but {len(answers)} answer(s); pairs go row by row"
        )
    empty = [i for i, (q, a) in enumerate(zip(questions, answers, strict=True)) if not q.strip() or not a.strip()]
    if empty:
        raise ValueError(f"field {name}: pair {empty[0] + 1} has an empty question or answer")
    return [{"question": q, "answer": a} for q, a in zip(questions, answers, strict=True)]


def _check_controls(spec: TaskSpec, result: Sequence[Mapping[str, Any]]) -> None:
    """Every region belongs to a control of the spec, and a box control's labels to its fields."""
    controls = {f.ls.from_name for f in spec.fields.values()} | {
        f.ls.text_from_name for f in spec.fields.values() if f.ls.text_from_name
    }
    box_labels: dict[str, set[str]] = {}
    for name, f in spec.fields.items():
        if f.kind == "box":
            box_labels.setdefault(f.ls.from_name, set()).add(f.ls.label or name)
        elif f.kind in ("regions", "objects", "blocks"):
            box_labels.pop(f.ls.from_name, None)  # a control shared with list fields is open
    for e in result:
        control = e.get("from_name")
        if e.get("type") == "relation" or control is None:
            continue
        if control not in controls:
            raise AnnotationError(f"region {e.get('id')!r}: unknown control {control!r} (not in spec {spec.name!r})")
        if control in box_labels and e.get("type") in RECT_TYPES:
            unknown = set(_labels(e)) - box_labels[control]
            if unknown:
                raise AnnotationError(f"region {e.get('id')!r}: unknown label(s) {sorted(unknown)} on {control!r}")


def from_result(
    spec: TaskSpec,
    result: Sequence[Mapping[str, Any]],
    size: ImageSize | None,
    model_view: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Label Studio result as a task view, boxes back in pixels.

    ``size`` None uses each region's ``original_width``/``original_height`` (for tasks whose
    prediction failed before the image size was known). Anything that breaks the spec raises
    :class:`AnnotationError` with the reason. ``model_view`` lets a reviewed block keep
    its model ``source``; every reviewed block gets score 1.0.
    """
    if not isinstance(result, Sequence) or not all(isinstance(e, Mapping) for e in result):
        raise AnnotationError("the result is not a list of regions")
    _check_controls(spec, result)
    index = _Index(result)
    integer = spec.media == "image"
    model_view = model_view or {}
    return {
        name: field_from_result(name, f, index, size, integer=integer, model_value=model_view.get(name))
        for name, f in spec.fields.items()
    }


# --------------------------------------------------------------------------- documents and views


def blocks_fields(spec: TaskSpec) -> list[str]:
    return [n for n, f in spec.fields.items() if f.kind == "blocks"]


def task_view(spec: TaskSpec, record: Mapping[str, Any] | None, page: int = 0) -> dict[str, Any]:
    """The part of a record one task shows: the record itself for images, one page for documents."""
    if record is None:
        return {}
    if spec.media != "document":
        return dict(record)
    pages = record.get("pages") or []
    page_rec = next((p for p in pages if p.get("page") == page), None)
    view: dict[str, Any] = {}
    for name in spec.fields:
        if name in blocks_fields(spec):
            view[name] = list(page_rec.get(name, page_rec.get("blocks", []))) if page_rec else []
        else:
            view[name] = record.get(name)
    return view


def page_size(spec: TaskSpec, record: Mapping[str, Any] | None, page: int) -> ImageSize | None:
    """Pixel size of a document page's render, from the record (None when unknown)."""
    if spec.media != "document" or not record:
        return None
    for p in record.get("pages") or []:
        if p.get("page") == page:
            return ImageSize(int(p["width_px"]), int(p["height_px"]))
    return None


def merge_page(
    spec: TaskSpec,
    record: Mapping[str, Any] | None,
    page: int,
    view: Mapping[str, Any],
    *,
    page_defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``record`` with the reviewed ``view`` of one task put back (a new dict).

    Images: the view is the record. Documents: the page's blocks are replaced; the Markdown is
    rebuilt from the blocks only when some page's blocks changed, so a model's richer Markdown
    survives a review that changed nothing.
    """
    if spec.media != "document":
        return copy.deepcopy(dict(view))
    out = copy.deepcopy(dict(record or {"pages": [], "markdown": ""}))
    pages = out.setdefault("pages", [])
    target = next((p for p in pages if p.get("page") == page), None)
    if target is None:
        target = {"page": page, **(page_defaults or {}), "blocks": []}
        pages.append(target)
        pages.sort(key=lambda p: p.get("page", 0))
    changed = False
    for name in blocks_fields(spec):
        new_blocks = list(view.get(name) or [])
        if comparable(spec.fields[name], target.get("blocks")) != comparable(spec.fields[name], new_blocks):
            changed = True
        target["blocks"] = new_blocks
    for name, value in view.items():
        if name not in blocks_fields(spec):
            out[name] = value
    if changed or not out.get("markdown"):
        out["markdown"] = blocks_markdown(pages)
    return out


def comparable(f: FieldSpec, value: Any) -> Any:
    """The part of a value a reviewer can change: blocks without their score and source."""
    if f.kind == "blocks" and isinstance(value, list):
        return [
            {k: v for k, v in b.items() if k not in BLOCK_META_KEYS} if isinstance(b, Mapping) else b for b in value
        ]
    return value


def blocks_markdown(pages: Sequence[Mapping[str, Any]]) -> str:
    """A plain Markdown rendering of reviewed pages (titles as headings, equations in $$)."""
    parts: list[str] = []
    for p in pages:
        for b in p.get("blocks") or []:
            content = str(b.get("content") or "").strip()
            kind = b.get("type")
            if not content or kind in ("discarded", "image"):
                continue
            if kind == "title":
                parts.append(f"# {content}")
            elif kind == "equation":
                parts.append(f"$$\n{content}\n$$")
            else:
                parts.append(content)
    return "\n\n".join(parts) + ("\n" if parts else "")


def object_labels(spec: TaskSpec, view: Mapping[str, Any]) -> dict[str, set[str]]:
    """Labels used by the view's ``objects`` fields, per RectangleLabels control."""
    out: dict[str, set[str]] = {}
    for name, f in spec.fields.items():
        if f.kind == "objects":
            labels = {str(o.get("label") or f.ls.label or "object") for o in view.get(name) or []}
            out.setdefault(f.ls.from_name, set()).update(labels)
    return out
