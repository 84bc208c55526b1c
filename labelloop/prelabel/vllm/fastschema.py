"""A fast yes for the JSON schemas task specs use; jsonschema still has the last word.

Every model answer is checked against its spec's schema. jsonschema's general validator costs
~80 us per vehicle record, a good share of the client's CPU per request at hundreds of requests
per second. Specs use a small, plain subset of JSON Schema (types, enums, required and
additional properties, item and length bounds, ``anyOf``, ``pattern``, numeric bounds), which
compiles to a few nested closures that answer in a few microseconds.

:func:`compile_check` returns ``check(instance) -> bool`` or ``None`` when the schema uses
anything outside that subset (``$ref``, ``$schema``, ``const``, ``uniqueItems``, ...). The check
is only trusted to say *valid*: callers run jsonschema whenever it says no (for the error
messages, and as the reference), so a check that is too strict costs time, never correctness.
The semantics follow jsonschema's Draft 2020-12 (the draft ``validator_for`` picks for a schema
without ``$schema``): ``integer`` accepts integral floats, booleans are neither integers nor
numbers, keywords only constrain the types they apply to, ``pattern`` is an unanchored search,
``format`` is an annotation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

#: keywords that never constrain (annotations); ``format`` asserts nothing without a format checker
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly", "format"}
)
_SUPPORTED = _ANNOTATIONS | {
    "type",
    "enum",
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


def _is_integer(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


_TYPES: dict[str, Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}


class _Unsupported(Exception):
    pass


def compile_check(schema: Any) -> Check | None:
    """A function telling whether an instance is valid, or None for schemas outside the subset."""
    try:
        return _compile(schema)
    except _Unsupported:
        return None


def _number(value: Any) -> float:
    if not _is_number(value):
        raise _Unsupported
    return value


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Unsupported
    return value


def _compile(schema: Any) -> Check:
    if schema is True or schema == {}:
        return lambda x: True
    if schema is False:
        return lambda x: False
    if not isinstance(schema, dict) or not set(schema) <= _SUPPORTED:
        raise _Unsupported
    checks: list[Check] = []
    obj: list[Check] = []  # constraints that apply to objects only
    arr: list[Check] = []
    txt: list[Check] = []
    num: list[Check] = []

    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not names or any(n not in _TYPES for n in names):
            raise _Unsupported
        tests = [_TYPES[n] for n in names]
        checks.append(tests[0] if len(tests) == 1 else (lambda x, tests=tests: any(t(x) for t in tests)))
    if "enum" in schema:
        enum = schema["enum"]
        # strings and null only: other values need jsonschema's bool-vs-int equality rules
        if not isinstance(enum, list) or not all(e is None or isinstance(e, str) for e in enum):
            raise _Unsupported
        strings, null_ok = frozenset(e for e in enum if e is not None), None in enum
        checks.append(lambda x: (isinstance(x, str) and x in strings) or (null_ok and x is None))
    if "anyOf" in schema:
        if not isinstance(schema["anyOf"], list) or not schema["anyOf"]:
            raise _Unsupported
        options = [_compile(s) for s in schema["anyOf"]]
        checks.append(lambda x: any(o(x) for o in options))

    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise _Unsupported
    prop_checks = {k: _compile(v) for k, v in props.items()}
    if prop_checks:
        obj.append(lambda x: all(c(x[k]) for k, c in prop_checks.items() if k in x))
    if "required" in schema:
        required = schema["required"]
        if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
            raise _Unsupported
        obj.append(lambda x: all(k in x for k in required))
    if "additionalProperties" in schema:
        extra = _compile(schema["additionalProperties"])
        known = frozenset(props)
        obj.append(lambda x: all(extra(v) for k, v in x.items() if k not in known))

    if "items" in schema:
        item = _compile(schema["items"])
        arr.append(lambda x: all(item(v) for v in x))
    if "minItems" in schema:
        lo = _count(schema["minItems"])
        arr.append(lambda x: len(x) >= lo)
    if "maxItems" in schema:
        hi = _count(schema["maxItems"])
        arr.append(lambda x: len(x) <= hi)

    if "minLength" in schema:
        lo_s = _count(schema["minLength"])
        txt.append(lambda x: len(x) >= lo_s)
    if "maxLength" in schema:
        hi_s = _count(schema["maxLength"])
        txt.append(lambda x: len(x) <= hi_s)
    if "pattern" in schema:
        if not isinstance(schema["pattern"], str):
            raise _Unsupported
        try:
            rx = re.compile(schema["pattern"])
        except re.error as e:
            raise _Unsupported from e
        txt.append(lambda x: rx.search(x) is not None)

    for key, holds in (
        ("minimum", lambda x, b: x >= b),
        ("maximum", lambda x, b: x <= b),
        ("exclusiveMinimum", lambda x, b: x > b),
        ("exclusiveMaximum", lambda x, b: x < b),
    ):
        if key in schema:
            bound = _number(schema[key])
            num.append(lambda x, holds=holds, bound=bound: holds(x, bound))

    if obj:
        checks.append(lambda x: not isinstance(x, dict) or all(c(x) for c in obj))
    if arr:
        checks.append(lambda x: not isinstance(x, list) or all(c(x) for c in arr))
    if txt:
        checks.append(lambda x: not isinstance(x, str) or all(c(x) for c in txt))
    if num:
        checks.append(lambda x: not _is_number(x) or all(c(x) for c in num))
    if not checks:
        return lambda x: True
    if len(checks) == 1:
        return checks[0]
    return lambda x: all(c(x) for c in checks)
