"""A fast JSON-schema check for the keyword subset task specs use, with jsonschema as the referee.

``jsonschema`` costs ~300 us per small record (it re-dispatches every keyword through generic
machinery), which made it three quarters of validating 100k records. Spec schemas use a small
subset of the standard, so :func:`compile_schema` turns such a schema into nested closures once;
a record it accepts is valid. Anything it rejects is re-checked by ``jsonschema``, which has the
final word and writes the error message, so a bug here can only cost time, never hide an error
the referee would report... as long as "accepted" is never wrong, which the tests check against
jsonschema on valid and mutated records. A schema using any other keyword is not compiled and
``jsonschema`` checks every record.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

#: keywords that do not constrain values
_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "$schema", "$id"})
_SUPPORTED = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "anyOf",
    }
)


class Unsupported(ValueError):
    """The schema uses a keyword outside the compiled subset."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": _is_number,
    "integer": lambda v: _is_number(v) and (isinstance(v, int) or v.is_integer()),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true/false are not 1/0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def compile_schema(schema: Any) -> Check:
    """A predicate "definitely valid"; raises :class:`Unsupported` outside the subset."""
    if schema is True or schema == {}:
        return lambda v: True
    if schema is False:
        return lambda v: False
    if not isinstance(schema, dict):
        raise Unsupported(f"schema {schema!r}")
    unknown = set(schema) - _SUPPORTED - _ANNOTATIONS
    if unknown:
        raise Unsupported(f"keywords {sorted(unknown)}")
    checks: list[Check] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        checks.append(_any_of([_TYPES[n] for n in names]))
    if "enum" in schema:
        allowed = list(schema["enum"])
        checks.append(lambda v: any(_same(v, a) for a in allowed))
    if "const" in schema:
        const = schema["const"]
        checks.append(lambda v: _same(v, const))
    checks += _object_checks(schema) + _array_checks(schema) + _scalar_checks(schema)
    if "anyOf" in schema:
        checks.append(_any_of([compile_schema(s) for s in schema["anyOf"]]))
    return _all_of(checks)


def _all_of(checks: list[Check]) -> Check:
    # plain loops, not all()/any() over generators: this runs ~20 times per record
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]

    def every(v: Any) -> bool:
        for c in checks:  # noqa: SIM110 - a loop is faster than all()/any() on a generator
            if not c(v):
                return False
        return True

    return every


def _any_of(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]

    def some(v: Any) -> bool:
        for c in checks:  # noqa: SIM110 - a loop is faster than all()/any() on a generator
            if c(v):
                return True
        return False

    return some


def _object_checks(schema: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    props = {k: compile_schema(s) for k, s in (schema.get("properties") or {}).items()}
    required = list(schema.get("required") or [])
    extra = schema.get("additionalProperties", True)
    extra_check = compile_schema(extra)
    if props or required or extra is not True:

        def obj(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            if any(r not in v for r in required):
                return False
            for k, item in v.items():
                check = props.get(k)
                if check is not None:
                    if not check(item):
                        return False
                elif not extra_check(item):
                    return False
            return True

        out.append(obj)
    return out


def _array_checks(schema: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    if "items" in schema:
        item = compile_schema(schema["items"])

        def items(v: Any) -> bool:
            if isinstance(v, list):
                for i in v:
                    if not item(i):
                        return False
            return True

        out.append(items)
    lo, hi = schema.get("minItems"), schema.get("maxItems")
    if lo is not None:
        out.append(lambda v: not isinstance(v, list) or len(v) >= lo)
    if hi is not None:
        out.append(lambda v: not isinstance(v, list) or len(v) <= hi)
    return out


def _scalar_checks(schema: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    if lo is not None:
        out.append(lambda v: not isinstance(v, str) or len(v) >= lo)
    if hi is not None:
        out.append(lambda v: not isinstance(v, str) or len(v) <= hi)
    if "pattern" in schema:
        rx = re.compile(schema["pattern"])
        out.append(lambda v: not isinstance(v, str) or rx.search(v) is not None)
    for key, ok in (
        ("minimum", lambda v, b: v >= b),
        ("maximum", lambda v, b: v <= b),
        ("exclusiveMinimum", lambda v, b: v > b),
        ("exclusiveMaximum", lambda v, b: v < b),
    ):
        if key in schema:
            bound = schema[key]
            out.append(lambda v, ok=ok, bound=bound: not _is_number(v) or ok(v, bound))
    return out


def compile_check(schema: Any) -> Check | None:
    """:func:`compile_schema`, or None when the schema is outside the subset (jsonschema decides alone)."""
    try:
        return compile_schema(schema)
    except Unsupported:
        return None
