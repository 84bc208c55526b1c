"""A tiny JSON parser that remembers where every value sits in the text.

``json.loads`` gives values but not positions; confidence needs positions to know which generated
tokens wrote which value. This parser accepts exactly JSON (RFC 8259) and returns a tree of
:class:`Node` with character offsets. It is only used on text that ``json.loads`` accepted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WS = " \t\n\r"


@dataclass
class Node:
    """A JSON value spanning ``text[start:end]`` (quotes and brackets included)."""

    kind: str  # "object" | "array" | "string" | "number" | "literal"
    start: int
    end: int
    #: object members by key, in order
    members: dict[str, Node] = field(default_factory=dict)
    #: array elements
    items: list[Node] = field(default_factory=list)

    @property
    def content_span(self) -> tuple[int, int]:
        """The characters the model chose freely: a string's content without its quotes."""
        if self.kind == "string":
            return self.start + 1, self.end - 1
        return self.start, self.end


class JSONSpanError(ValueError):
    pass


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WS:
            self.pos += 1

    def expect(self, ch: str) -> None:
        if self.text[self.pos : self.pos + 1] != ch:
            raise JSONSpanError(f"expected {ch!r} at {self.pos}")
        self.pos += 1

    def value(self) -> Node:
        self.ws()
        ch = self.text[self.pos : self.pos + 1]
        if ch == "{":
            return self.obj()
        if ch == "[":
            return self.arr()
        if ch == '"':
            return self.string()
        for lit in ("true", "false", "null"):
            if self.text.startswith(lit, self.pos):
                start = self.pos
                self.pos += len(lit)
                return Node("literal", start, self.pos)
        m = _NUMBER.match(self.text, self.pos)
        if not m:
            raise JSONSpanError(f"unexpected {ch!r} at {self.pos}")
        self.pos = m.end()
        return Node("number", m.start(), m.end())

    def string(self) -> Node:
        start = self.pos
        self.expect('"')
        while True:
            if self.pos >= len(self.text):
                raise JSONSpanError("unterminated string")
            ch = self.text[self.pos]
            if ch == "\\":
                self.pos += 2
            elif ch == '"':
                self.pos += 1
                return Node("string", start, self.pos)
            else:
                self.pos += 1

    def obj(self) -> Node:
        node = Node("object", self.pos, -1)
        self.expect("{")
        self.ws()
        if self.text[self.pos : self.pos + 1] == "}":
            self.pos += 1
            node.end = self.pos
            return node
        while True:
            self.ws()
            key_node = self.string()
            key = json.loads(self.text[key_node.start : key_node.end])
            self.ws()
            self.expect(":")
            node.members[key] = self.value()
            self.ws()
            if self.text[self.pos : self.pos + 1] == ",":
                self.pos += 1
                continue
            self.expect("}")
            node.end = self.pos
            return node

    def arr(self) -> Node:
        node = Node("array", self.pos, -1)
        self.expect("[")
        self.ws()
        if self.text[self.pos : self.pos + 1] == "]":
            self.pos += 1
            node.end = self.pos
            return node
        while True:
            node.items.append(self.value())
            self.ws()
            if self.text[self.pos : self.pos + 1] == ",":
                self.pos += 1
                continue
            self.expect("]")
            node.end = self.pos
            return node


def parse_spans(text: str) -> Node:
    """The span tree of a JSON document (surrounding whitespace allowed)."""
    p = _Parser(text)
    try:
        root = p.value()
    except IndexError as e:  # pragma: no cover - json.loads accepted the text first
        raise JSONSpanError(str(e)) from e
    p.ws()
    if p.pos != len(text):
        raise JSONSpanError(f"trailing data at {p.pos}")
    return root
