"""The export checker: every serialised sample is checked before a version is published.

It checks what the trainers will trip over, on the exact dicts written to the files: placeholder
count equals image count, turns alternate and start with the user, no system turn, every image is
in the version, JSON answers parse, and every box lies inside its frame (the trainer frame for
Qwen-VL/LLaMA-Factory answers, the original image for ms-swift's ``objects``). A version with any
problem is refused with the list of records that broke it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from labelloop.export.answers import SWIFT_BBOX, SWIFT_REF, substitute_swift
from labelloop.specs import TaskSpec

#: parses answers (msgspec: several times json's speed, same Python values)
_loads = msgspec.json.decode
IMAGE_TOKEN = "<image>"
MAX_LISTED = 50
_ROLES = {
    "qwen": ("conversations", "from", "value", ("human", "gpt")),
    "llamafactory": ("messages", "role", "content", ("user", "assistant")),
    "swift": ("messages", "role", "content", ("user", "assistant")),
}


@dataclass(frozen=True)
class Problem:
    record_id: int
    page: int | None
    format: str
    message: str

    def __str__(self) -> str:
        where = f"record {self.record_id}" + (f" page {self.page}" if self.page is not None else "")
        return f"{where} [{self.format}]: {self.message}"


class ExportCheckError(RuntimeError):
    """The version is broken and was not published; ``problems`` says which records broke it."""

    def __init__(self, problems: Sequence[Problem], total: int | None = None) -> None:
        self.problems = list(problems)
        #: every problem counted; ``problems`` keeps the first ones (a bounded list)
        self.total = max(total or 0, len(self.problems))
        self.record_ids = sorted({p.record_id for p in self.problems})
        listed = "\n".join(f"  {p}" for p in self.problems[:MAX_LISTED])
        more = self.total - min(len(self.problems), MAX_LISTED)
        records = f"{len(self.record_ids)} record(s)" + ("" if self.total == len(self.problems) else " or more")
        super().__init__(
            f"export refused: {self.total} problem(s) in {records} "
            f"{self.record_ids[:MAX_LISTED]}\n{listed}" + (f"\n  ... and {more} more" if more > 0 else "")
        )


def _why(text: str) -> str:
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return str(e)
    return "rejected by the JSON parser"  # e.g. msgspec refuses what json accepts (NaN)


def iter_boxes(obj: Any, keys: frozenset[str]) -> Iterator[Any]:
    """Every value under a box key anywhere in a parsed answer."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys and v is not None:
                yield v
            else:
                yield from iter_boxes(v, keys)
    elif isinstance(obj, list):
        for v in obj:
            yield from iter_boxes(v, keys)


#: JSON numbers as parsed (``type(v) in`` rather than isinstance: a bool is not a coordinate)
_NUMBER = (int, float)


def box_problem(box: Any, width: float, height: float) -> str | None:
    """Why ``box`` is not an ordered [x1, y1, x2, y2] inside width x height, or None."""
    if type(box) is not list or len(box) != 4:
        return f"box {box!r} is not 4 numbers"
    x1, y1, x2, y2 = box
    if not (type(x1) in _NUMBER and type(y1) in _NUMBER and type(x2) in _NUMBER and type(y2) in _NUMBER):
        return f"box {box!r} is not 4 numbers"
    if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height):
        return f"box {box} is outside {width}x{height} or not ordered"
    return None


class ExportChecker:
    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        box_fields = {n for n, f in spec.fields.items() if f.kind == "box"}
        self.box_keys = frozenset({"bbox_2d", "bbox"} | box_fields)
        self.json_answers = spec.export.answer in ("json", "grounding")
        self.video = spec.media == "video"
        self.token = "<video>" if self.video else IMAGE_TOKEN
        self._answer_tags = tuple(sorted({self.token, IMAGE_TOKEN}))
        self._last: tuple[Any, list[str]] = (None, [])
        media = "video" if self.video else "image"
        #: per format: turns key, role key, text key, (user, assistant), media key, allowed keys
        self._layout = {
            fmt: (
                t,
                r,
                x,
                roles,
                media + ("" if fmt == "qwen" else "s"),
                frozenset({t, media + ("" if fmt == "qwen" else "s")} | ({"objects"} if fmt == "swift" else set())),
            )
            for fmt, (t, r, x, roles) in _ROLES.items()
        }

    def check(
        self,
        fmt: str,
        entry: dict[str, Any],
        *,
        record_id: int,
        page: int | None,
        images_present: set[str] | frozenset[str],
        bounds: tuple[int, int],
        original: tuple[int, int],
    ) -> list[Problem]:
        msgs = self._check(fmt, entry, images_present, bounds, original)
        return [Problem(record_id, page, fmt, m) for m in msgs]

    def _check(
        self,
        fmt: str,
        entry: dict[str, Any],
        present: set[str] | frozenset[str],
        bounds: tuple[int, int],
        original: tuple[int, int],
    ) -> list[str]:
        turns_key, role_key, text_key, (user, assistant), image_key, allowed = self._layout[fmt]
        token = self.token
        out: list[str] = []
        if not allowed.issuperset(entry) or turns_key not in entry:
            out.append(f"keys {sorted(entry)} are not {sorted(allowed)}")
            return out
        images = entry.get(image_key)
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
            out.append(f"{image_key} must name at least one image, got {entry.get(image_key)!r}")
            images = []
        turns = entry[turns_key]
        if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
            return [*out, f"{turns_key} must be user/assistant pairs, got {turns!r}"]
        n_tags = 0
        answers: list[str] = []
        for i, turn in enumerate(turns):
            want = user if i % 2 == 0 else assistant
            turn = turn if isinstance(turn, dict) else {}
            role, text = turn.get(role_key), turn.get(text_key)
            if role != want:
                out.append(f"turn {i} is {role!r}, expected {want!r} (alternating, no system turn)")
            if not isinstance(text, str):
                out.append(f"turn {i} has no text")
                continue
            if i % 2 == 0:
                n_tags += text.count(token)
                if self.video and IMAGE_TOKEN in text:
                    out.append(f"turn {i} has an {IMAGE_TOKEN} placeholder in a video sample")
            else:
                for tag in self._answer_tags:
                    if tag in text:
                        out.append(f"answer turn {i} contains {tag}")
                answers.append(text)
        if n_tags != len(images):
            what = "video(s)" if self.video else "image(s)"
            out.append(f"{n_tags} {token} placeholder(s) for {len(images)} {what}")
        out += [f"image {name} is not in the version" for name in images if name not in present]
        if fmt == "swift":
            out += self._check_swift(entry, answers, original)
        else:
            out += self._check_answers(answers, bounds)
        return out

    def _check_answers(self, answers: list[str], bounds: tuple[int, int]) -> list[str]:
        if not self.json_answers:
            return []
        out: list[str] = []
        for text in answers:
            key = (text, bounds)
            if key != self._last[0]:  # Qwen-VL and LLaMA-Factory carry the same answer: check once
                self._last = (key, self._answer_problems(text, bounds))
            out += self._last[1]
        return out

    def _answer_problems(self, text: str, bounds: tuple[int, int]) -> list[str]:
        try:
            parsed = _loads(text)
        except ValueError:  # msgspec is fast but terse: say why in json's words
            return [f"answer is not valid JSON: {_why(text)}"]
        return [msg for box in iter_boxes(parsed, self.box_keys) if (msg := box_problem(box, *bounds))]

    def _check_swift(self, entry: dict[str, Any], answers: list[str], original: tuple[int, int]) -> list[str]:
        out: list[str] = []
        objects = entry.get("objects") or {}
        boxes, refs = list(objects.get("bbox") or []), list(objects.get("ref") or [])
        text = "".join(answers)
        if text.count(SWIFT_BBOX) != len(boxes):
            out.append(f"{text.count(SWIFT_BBOX)} {SWIFT_BBOX} placeholder(s) for {len(boxes)} objects.bbox")
        if text.count(SWIFT_REF) != len(refs):
            out.append(f"{text.count(SWIFT_REF)} {SWIFT_REF} placeholder(s) for {len(refs)} objects.ref")
        if objects and objects.get("bbox_type") != "real":
            out.append(f"objects.bbox_type is {objects.get('bbox_type')!r}, expected 'real'")
        for box in boxes:
            msg = box_problem(box, *original)
            if msg:
                out.append(msg)
        if self.json_answers:
            for answer in answers:
                filled = substitute_swift(answer, objects)
                try:
                    _loads(filled)
                except ValueError:
                    out.append(f"answer is not valid JSON once ms-swift fills it in: {_why(filled)}")
        return out
