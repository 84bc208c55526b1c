"""Build a Great Expectations suite from a task spec's declarations.

Nothing here is written per spec: required fields, choices, patterns and max lengths come from
``FieldSpec``; box, region, object and block checks come from the field kinds. Every expectation
carries ``meta`` (a stable ``check`` id, a human ``rule``, the spec field) because GX returns
results grouped by column, not in suite order, so results are matched back by ``meta``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from labelloop.specs import TaskSpec
from labelloop.validation.frames import TEXT_BLOCK_TYPES, box_fields, part_column

Frame = Literal["records", "parts"]
NON_EMPTY = r"\S"


@dataclass(frozen=True)
class Check:
    """One expectation on one frame, described for people (``rule``) and machines (``check``)."""

    frame: Frame
    check: str
    type: str  # GX expectation class name, e.g. "ExpectColumnValuesToNotBeNull"
    kwargs: tuple[tuple[str, Any], ...]
    rule: str
    field: str | None = None

    @property
    def column(self) -> str:
        return dict(self.kwargs)["column"]

    def build(self) -> Any:
        """The GX expectation object (GX is imported here: it takes seconds to import)."""
        import great_expectations.expectations as gxe

        cls = getattr(gxe, self.type)
        meta = {"check": self.check, "rule": self.rule, "field": self.field}
        return cls(**dict(self.kwargs), meta=meta)


def _c(frame: Frame, check: str, type_: str, rule: str, field: str | None = None, **kwargs: Any) -> Check:
    return Check(frame=frame, check=check, type=type_, kwargs=tuple(kwargs.items()), rule=rule, field=field)


def build_checks(spec: TaskSpec) -> list[Check]:
    """All checks of a spec: one record per item, the JSON schema, each field, each box."""
    checks = [
        _c(
            "records",
            "one_record_per_item",
            "ExpectColumnValuesToBeUnique",
            "exactly one record per item and spec",
            column="item_id",
        ),
        _c(
            "records",
            "schema",
            "ExpectColumnValuesToBeNull",
            "record matches the spec's JSON schema",
            column="schema_error",
        ),
    ]
    boxes = box_fields(spec)
    if spec.media == "image" and boxes:
        for col in ("image_width", "image_height"):
            checks.append(
                _c(
                    "records",
                    f"{col}_known",
                    "ExpectColumnValuesToNotBeNull",
                    f"{col.replace('_', ' ')} is known (boxes are checked against it)",
                    column=col,
                )
            )
    for name, f in spec.fields.items():
        checks += _field_checks(name, f.kind, f.required, f.choices, f.pattern, f.max_length)
    if boxes:
        checks += _box_checks()
    for name, f in spec.fields.items():
        checks += _part_text_checks(spec, name, f.kind, f.max_length)
    return checks


def _field_checks(
    name: str,
    kind: str,
    required: bool,
    choices: list[str] | None,
    pattern: str | None,
    max_length: int | None,
) -> list[Check]:
    out: list[Check] = []
    if required:
        out.append(
            _c(
                "records",
                f"{name}:required",
                "ExpectColumnValuesToNotBeNull",
                f"{name} is present",
                name,
                column=name,
            )
        )
    if kind == "text":
        if required:
            out.append(
                _c(
                    "records",
                    f"{name}:non_empty",
                    "ExpectColumnValuesToMatchRegex",
                    f"{name} is not empty",
                    name,
                    column=name,
                    regex=NON_EMPTY,
                )
            )
        if pattern:
            out.append(
                _c(
                    "records",
                    f"{name}:pattern",
                    "ExpectColumnValuesToMatchRegex",
                    f"{name} matches {pattern}",
                    name,
                    column=name,
                    regex=pattern,
                )
            )
        if max_length:
            out.append(
                _c(
                    "records",
                    f"{name}:max_length",
                    "ExpectColumnValueLengthsToBeBetween",
                    f"{name} has at most {max_length} characters",
                    name,
                    column=name,
                    min_value=0,
                    max_value=max_length,
                )
            )
    elif kind == "choice" and choices:
        out.append(
            _c(
                "records",
                f"{name}:choices",
                "ExpectColumnValuesToBeInSet",
                f"{name} is one of {', '.join(choices)}",
                name,
                column=name,
                value_set=list(choices),
            )
        )
    return out


def _box_checks() -> list[Check]:
    def between(check: str, column: str, rule: str, strict: bool = False) -> Check:
        return _c(
            "parts",
            check,
            "ExpectColumnValuesToBeBetween",
            rule,
            column=column,
            min_value=0,
            strict_min=strict,
        )

    return [
        _c(
            "parts",
            "box:shape",
            "ExpectColumnValuesToBeInSet",
            "a box is [x1, y1, x2, y2] (4 numbers)",
            column="n_coords",
            value_set=[4],
        ),
        between("box:x_order", "box_width", "x1 < x2 (box has a width)", strict=True),
        between("box:y_order", "box_height", "y1 < y2 (box has a height)", strict=True),
        between("box:left", "x1", "box inside the image: x1 >= 0"),
        between("box:top", "y1", "box inside the image: y1 >= 0"),
        between("box:right", "right_gap", "box inside the image: x2 <= width"),
        between("box:bottom", "bottom_gap", "box inside the image: y2 <= height"),
    ]


def _part_text_checks(spec: TaskSpec, name: str, kind: str, max_length: int | None) -> list[Check]:
    out: list[Check] = []
    if kind in ("regions", "objects"):
        attr = "text" if kind == "regions" else "label"
        col = part_column(name, attr)
        out.append(
            _c(
                "parts",
                f"{name}:{attr}_non_empty",
                "ExpectColumnValuesToMatchRegex",
                f"{name} {attr} is not empty",
                name,
                column=col,
                regex=NON_EMPTY,
            )
        )
        if max_length:
            out.append(
                _c(
                    "parts",
                    f"{name}:{attr}_max_length",
                    "ExpectColumnValueLengthsToBeBetween",
                    f"{name} {attr} has at most {max_length} characters",
                    name,
                    column=col,
                    min_value=0,
                    max_value=max_length,
                )
            )
    elif kind == "blocks":
        types = list(spec.options.get("block_types") or sorted(TEXT_BLOCK_TYPES | {"image", "discarded"}))
        out.append(
            _c(
                "parts",
                f"{name}:type",
                "ExpectColumnValuesToBeInSet",
                f"block type is one of {', '.join(types)}",
                name,
                column=part_column(name, "type"),
                value_set=types,
            )
        )
        out.append(
            _c(
                "parts",
                f"{name}:text_non_empty",
                "ExpectColumnValuesToMatchRegex",
                "text-bearing blocks have content",
                name,
                column=part_column(name, "text"),
                regex=NON_EMPTY,
            )
        )
    return out
