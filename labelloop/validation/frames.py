"""Flatten records into the two tables Great Expectations checks.

GX validates columns of a DataFrame, while our records are nested JSON. So each spec's records
become two frames keyed by ``record_id``:

* ``records``: one row per record with its scalar fields (text, choice), the count of each list
  field, the image size, and the first JSON-schema error (or null);
* ``parts``: one row per box-bearing part (a ``box`` field, a region, an object, a document block)
  with the box split into coordinates and *derived* columns (``box_width = x2 - x1``,
  ``right_gap = frame_width - x2`` ...), so "box inside the image" becomes plain column ranges
  that GX can check and report with the failing value.

Text of regions/objects/blocks lands in per-field columns (``lines.text``, ``objects.label``,
``blocks.type``), each null on other fields' rows, because GX skips nulls in value checks.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from jsonschema import exceptions as js_exceptions
from jsonschema import validators as js_validators

from labelloop.specs import TaskSpec
from labelloop.specs.schema_check import Unsupported, compile_schema

RECORDS_INDEX = ["record_id", "item_sha"]
PARTS_INDEX = ["record_id", "path", "box", "frame"]
RESERVED_COLUMNS = frozenset(
    {
        "record_id",
        "item_id",
        "item_sha",
        "image_width",
        "image_height",
        "schema_error",
    }
)
BOX_KINDS = frozenset({"box", "regions", "objects", "blocks"})
#: document blocks whose content must not be empty (images and discarded headers may be)
TEXT_BLOCK_TYPES = frozenset({"title", "text", "list", "table", "equation", "caption", "footnote"})
_COORDS = ("x1", "y1", "x2", "y2")
_DERIVED = ("box_width", "box_height", "right_gap", "bottom_gap")


@dataclass(frozen=True)
class RecordRow:
    """What validation needs of one record: its JSON and its item's identity and size."""

    record_id: int
    item_id: int
    item_sha: str
    media: str
    width: int | None
    height: int | None
    record: Any


def part_column(field: str, attr: str) -> str:
    """Column of a region/object/block attribute, e.g. ``lines.text``."""
    return f"{field}.{attr}"


def box_fields(spec: TaskSpec) -> list[str]:
    return [name for name, f in spec.fields.items() if f.kind in BOX_KINDS]


def coords(box: Any) -> tuple[int, list[float | None]]:
    """(number of coordinates, [x1, y1, x2, y2]) of a box value; Nones unless it has exactly 4 numbers."""
    if not isinstance(box, list | tuple):
        return 0, [None] * 4
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    if not numeric:
        return 0, [None] * 4
    if len(box) != 4:
        return len(box), [None] * 4
    return 4, [float(v) for v in box]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class Flattener:
    """Accumulates records (streamed from the DB) into column lists, then builds the frames."""

    def __init__(self, spec: TaskSpec) -> None:
        clash = RESERVED_COLUMNS & set(spec.fields)
        if clash:
            raise ValueError(f"spec {spec.name}: field names {sorted(clash)} clash with validation columns")
        self.spec = spec
        cls = js_validators.validator_for(spec.json_schema)
        cls.check_schema(spec.json_schema)
        self._schema = cls(spec.json_schema)
        try:
            self._fast: Callable[[Any], bool] | None = compile_schema(spec.json_schema)
        except Unsupported:
            self._fast = None
        self._records: dict[str, list[Any]] = {c: [] for c in RESERVED_COLUMNS}
        for name in spec.fields:
            self._records[name] = []
        self._part_text_cols = self._text_columns()
        part_cols = ("record_id", "path", "field", "box", "frame", "n_coords", "frame_width", "frame_height")
        self._parts: dict[str, Any] = {c: [] for c in part_cols}
        # numbers in typed arrays (8 bytes each, NaN for missing): 100k records make 1M+ of them
        for c in (*_COORDS, *_DERIVED, "frame_width", "frame_height"):
            self._parts[c] = array("d")
        for c in self._part_text_cols:
            self._parts[c] = []
        self._frames_seen: dict[str, str] = {}
        self.n_records = 0

    def _text_columns(self) -> list[str]:
        cols: list[str] = []
        for name, f in self.spec.fields.items():
            if f.kind == "regions":
                cols.append(part_column(name, "text"))
            elif f.kind == "objects":
                cols.append(part_column(name, "label"))
            elif f.kind == "blocks":
                cols += [part_column(name, "type"), part_column(name, "text")]
        return cols

    # ------------------------------------------------------------------ records

    def schema_error(self, record: Any) -> str | None:
        """The most relevant JSON-schema violation as 'path: message', or None.

        The compiled fast path accepts valid records; jsonschema judges the rest and says why.
        """
        if self._fast is not None and self._fast(record):
            return None
        if self._schema.is_valid(record):
            return None
        err = js_exceptions.best_match(self._schema.iter_errors(record))
        if err is None:  # pragma: no cover - is_valid said otherwise
            return None
        where = "/".join(str(p) for p in err.absolute_path) or "(record)"
        return f"{where}: {err.message}"[:300]

    def add(self, row: RecordRow) -> None:
        rec = row.record if isinstance(row.record, dict) else {}
        r = self._records
        r["record_id"].append(row.record_id)
        r["item_id"].append(row.item_id)
        r["item_sha"].append(row.item_sha)
        r["image_width"].append(row.width)
        r["image_height"].append(row.height)
        r["schema_error"].append(
            self.schema_error(row.record) if isinstance(row.record, dict) else "(record): not a JSON object"
        )
        for name, f in self.spec.fields.items():
            value = rec.get(name)
            if f.kind in ("text", "choice"):
                text = _text(value)
                if text == "" and not f.required:
                    text = None  # an empty optional field is an absent one
                r[name].append(text)
            elif f.kind == "box":
                r[name].append(None if value is None else json.dumps(value))
                if value is not None:
                    self._add_part(row.record_id, name, name, value, row.width, row.height, {})
            elif f.kind == "blocks":
                pages = rec.get("pages")
                r[name].append(len(pages) if isinstance(pages, list) else None)
                self._add_blocks(row.record_id, name, pages if isinstance(pages, list) else [])
            else:  # regions, objects
                r[name].append(len(value) if isinstance(value, list) else None)
                for i, part in enumerate(value if isinstance(value, list) else []):
                    self._add_listed(row, name, f.kind, i, part)
        self.n_records += 1

    # ------------------------------------------------------------------ parts

    def _add_listed(self, row: RecordRow, name: str, kind: str, i: int, part: Any) -> None:
        part = part if isinstance(part, dict) else {}
        if kind == "regions":
            box, texts = part.get("bbox"), {part_column(name, "text"): _text(part.get("text")) or ""}
        else:
            box, texts = part.get("bbox_2d"), {part_column(name, "label"): _text(part.get("label")) or ""}
        self._add_part(row.record_id, name, f"{name}[{i}]", box, row.width, row.height, texts)

    def _add_blocks(self, record_id: int, name: str, pages: Sequence[Any]) -> None:
        for p, page in enumerate(pages):
            page = page if isinstance(page, dict) else {}
            w, h = page.get("width_px"), page.get("height_px")
            for i, block in enumerate(page.get("blocks") or []):
                block = block if isinstance(block, dict) else {}
                btype = _text(block.get("type"))
                texts = {
                    part_column(name, "type"): btype or "",
                    part_column(name, "text"): (_text(block.get("content")) or "")
                    if btype in TEXT_BLOCK_TYPES
                    else None,
                }
                self._add_part(record_id, name, f"pages[{p}].blocks[{i}]", block.get("bbox"), w, h, texts)

    def _add_part(
        self,
        record_id: int,
        field: str,
        path: str,
        box: Any,
        width: Any,
        height: Any,
        texts: dict[str, str | None],
    ) -> None:
        p = self._parts
        nan = math.nan
        n, (x1, y1, x2, y2) = coords(box)
        fw = float(width) if isinstance(width, int | float) else nan
        fh = float(height) if isinstance(height, int | float) else nan
        frame = f"{width}x{height}" if fw == fw and fh == fh else "unknown"
        p["record_id"].append(record_id)
        p["path"].append(path)
        p["field"].append(field)
        p["box"].append(json.dumps(box) if box is not None else None)
        p["frame"].append(self._frames_seen.setdefault(frame, frame))  # one str object per size
        p["n_coords"].append(n)
        p["frame_width"].append(fw)
        p["frame_height"].append(fh)
        if n == 4:
            for c, v in (("x1", x1), ("y1", y1), ("x2", x2), ("y2", y2)):
                p[c].append(v)
            p["box_width"].append(x2 - x1)  # type: ignore[operator]
            p["box_height"].append(y2 - y1)  # type: ignore[operator]
            # NaN when the image size is unknown: GX skips NaN, the "size known" check reports it
            p["right_gap"].append(fw - x2)  # type: ignore[operator]
            p["bottom_gap"].append(fh - y2)  # type: ignore[operator]
        else:
            for c in (*_COORDS, *_DERIVED):
                p[c].append(nan)
        for c in self._part_text_cols:
            p[c].append(texts.get(c))

    # ------------------------------------------------------------------ frames

    def frames(self) -> dict[str, pd.DataFrame]:
        """The ``records`` frame, and the ``parts`` frame when the spec has box-bearing fields.

        Drop the Flattener afterwards: its column lists are as big as the frames.
        """
        out = {"records": pd.DataFrame(self._records)}
        if box_fields(self.spec):
            numeric = {c: v for c, v in self._parts.items() if isinstance(v, array)}
            parts = pd.DataFrame({c: v for c, v in self._parts.items() if c not in numeric})
            for c, values in numeric.items():
                parts[c] = np.frombuffer(values, dtype="float64").copy() if len(values) else np.zeros(0)
            out["parts"] = parts
        return out
