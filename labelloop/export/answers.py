"""The assistant answer of a training sample, built from the spec's export template.

Modes (``ExportTemplate.answer``): ``json`` (the record as JSON, minus ``exclude``), ``text:<field>``
(that field's text), ``grounding`` (``[{"bbox_2d": [...], "label": ...}]``), ``markdown``
(documents: the page as Markdown). Every box in an answer goes through one ``box`` callback, so
the same code writes trainer coordinates (Qwen-VL, LLaMA-Factory) or ms-swift ``<bbox>``
placeholders whose original-pixel boxes ms-swift converts per model itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labelloop.specs import TaskSpec

BoxFn = Callable[[Any], Any]
LabelFn = Callable[[Any], Any]

SWIFT_BBOX = "<bbox>"
SWIFT_REF = "<ref-object>"
_MARK = re.compile(r'"@@llbox(\d+)@@"|@@llref(\d+)@@')


class AnswerError(ValueError):
    """The record cannot be written with this template (missing field, wrong mode)."""


def page_markdown(page: dict[str, Any]) -> str:
    """A document page as Markdown, from its blocks in reading order.

    Titles become headings, tables stay HTML and equations LaTeX (as the prompt asks), images
    have no text, and ``discarded`` blocks (running headers, footers, page numbers) are left out.
    """
    parts: list[str] = []
    for block in page.get("blocks") or []:
        btype, content = block.get("type"), (block.get("content") or "").strip()
        if btype in ("image", "discarded") or not content:
            continue
        if btype == "title":
            parts.append(f"# {content}")
        elif btype == "equation" and not content.startswith("$"):
            parts.append(f"$$\n{content}\n$$")
        else:
            parts.append(content)
    return "\n\n".join(parts)


def _objects_field(spec: TaskSpec) -> str:
    for name, f in spec.fields.items():
        if f.kind == "objects":
            return name
    raise AnswerError(f"spec {spec.name}: answer 'grounding' needs a field of kind 'objects'")


def answer_object(
    spec: TaskSpec, record: dict[str, Any], page: int | None, box: BoxFn, label: LabelFn = lambda v: v
) -> Any:
    """The answer before serialisation: a str (text/markdown) or a JSON-able object."""
    mode = spec.export.answer
    if mode.startswith("text:"):
        name = mode.split(":", 1)[1]
        value = record.get(name)
        if not isinstance(value, str):
            raise AnswerError(f"answer {mode}: field {name!r} is not text")
        return value
    if spec.media == "document":
        if page is None:
            raise AnswerError("a document answer needs a page")
        pg = record["pages"][page]
        if mode == "markdown":
            return page_markdown(pg)
        if mode == "json":
            return {
                "blocks": [
                    {"type": b["type"], "bbox": box(b["bbox"]), "content": b.get("content", "")}
                    for b in pg.get("blocks") or []
                ]
            }
        raise AnswerError(f"answer mode {mode!r} is not supported for documents")
    if mode == "grounding":
        objs = record.get(_objects_field(spec)) or []
        return [{"bbox_2d": box(o["bbox_2d"]), "label": label(o["label"])} for o in objs]
    if mode == "markdown":
        value = record.get("markdown")
        if not isinstance(value, str):
            raise AnswerError("answer markdown: the record has no 'markdown' text")
        return value
    if mode == "json":
        return _json_record(spec, record, box)
    raise AnswerError(f"unknown answer mode {mode!r}")


def _json_record(spec: TaskSpec, record: dict[str, Any], box: BoxFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in spec.export.exclude:
            continue
        f = spec.fields.get(key)
        kind = f.kind if f else None
        if kind == "box" and value is not None:
            value = box(value)
        elif kind == "regions" and isinstance(value, list):
            value = [{**r, "bbox": box(r["bbox"])} for r in value]
        elif kind == "objects" and isinstance(value, list):
            value = [{**o, "bbox_2d": box(o["bbox_2d"])} for o in value]
        out[key] = value
    return out


#: ``json.dumps(obj, ensure_ascii=False)``, without building an encoder per call (three answers a record)
_encode = json.JSONEncoder(ensure_ascii=False).encode


def serialize(obj: Any) -> str:
    return obj if isinstance(obj, str) else _encode(obj)


def trainer_answer(spec: TaskSpec, record: dict[str, Any], page: int | None, box: BoxFn) -> str:
    """The answer with boxes already in the trainer's frame (Qwen-VL, LLaMA-Factory)."""
    return serialize(answer_object(spec, record, page, box))


@dataclass
class SwiftAnswer:
    text: str
    refs: list[str] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)

    def objects(self) -> dict[str, Any] | None:
        if not self.boxes and not self.refs:
            return None
        return {"ref": self.refs, "bbox": self.boxes, "bbox_type": "real"}


def swift_answer(spec: TaskSpec, record: dict[str, Any], page: int | None) -> SwiftAnswer:
    """The answer with ``<bbox>``/``<ref-object>`` placeholders and ms-swift's ``objects``.

    ms-swift substitutes the i-th ``<bbox>`` with ``objects.bbox[i]`` converted for the model
    (absolute resized pixels for Qwen2.5-VL, 0-1000 for Qwen2/Qwen3-VL); with
    ``QWENVL_BBOX_FORMAT=new`` it writes ``[x1, y1, x2, y2]``, so the answer stays the same JSON.
    Boxes here are original pixels (``bbox_type: real``).
    """
    boxes: list[Any] = []
    labels: list[Any] = []

    def box(v: Any) -> str:
        boxes.append([round(float(c), 2) for c in v])
        return f"@@llbox{len(boxes) - 1}@@"

    def label(v: Any) -> str:
        labels.append(v)
        return f"@@llref{len(labels) - 1}@@"

    grounding = spec.export.answer == "grounding"
    text = serialize(answer_object(spec, record, page, box, label if grounding else (lambda v: v)))
    out = SwiftAnswer(text="")
    # placeholders are substituted in order of appearance, so list the boxes in that order
    pieces: list[str] = []
    last = 0
    for m in _MARK.finditer(text):
        pieces.append(text[last : m.start()])
        if m.group(1) is not None:
            pieces.append(SWIFT_BBOX)
            out.boxes.append(_int_if_whole(boxes[int(m.group(1))]))
        else:
            pieces.append(SWIFT_REF)
            # inside a JSON string: escape as JSON would, so the substituted answer still parses
            out.refs.append(_encode(str(labels[int(m.group(2))]))[1:-1])
        last = m.end()
    pieces.append(text[last:])
    out.text = "".join(pieces)
    return out


def _int_if_whole(box: list[float]) -> list[float]:
    return [int(c) if float(c).is_integer() else c for c in box]


def substitute_swift(text: str, objects: dict[str, Any] | None, boxes: list[Any] | None = None) -> str:
    """What ms-swift (QWENVL_BBOX_FORMAT=new) makes of an answer: placeholders filled in order."""
    refs = list((objects or {}).get("ref") or [])
    bbox = list(boxes if boxes is not None else (objects or {}).get("bbox") or [])
    out: list[str] = []
    for token in re.split(r"(<bbox>|<ref-object>)", text):
        if token == SWIFT_BBOX:
            out.append(str(bbox.pop(0)) if bbox else token)
        elif token == SWIFT_REF:
            out.append(refs.pop(0) if refs else token)
        else:
            out.append(token)
    return "".join(out)
