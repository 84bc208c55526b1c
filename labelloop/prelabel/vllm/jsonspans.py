"""A tiny JSON parser that remembers where every value sits in the text.

``json.loads`` gives values but not positions; confidence needs positions to know which generated
tokens wrote which value. This parser accepts exactly JSON (RFC 8259) and returns a tree of
:class:`Node` with character offsets. It is only used on text that ``json.loads`` accepted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?").match
_WS = re.compile(r"[ \t\n\r]*").match
#: the rest of a string after its opening quote, closing quote included (escapes skipped whole)
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S).match


@dataclass(slots=True)
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
    """Recursive descent with a regular expression per token (strings, numbers, whitespace):
    the answer is parsed for every prediction, so character-at-a-time Python would cost."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def ws(self) -> None:
        self.pos = _WS(self.text, self.pos).end()

    def expect(self, ch: str) -> None:
        if self.text[self.pos : self.pos + 1] != ch:
            raise JSONSpanError(f"expected {ch!r} at {self.pos}")
        self.pos += 1

    def value(self) -> Node:
        text = self.text
        pos = self.pos = _WS(text, self.pos).end()
        ch = text[pos : pos + 1]
        if ch == '"':
            return self.string()
        if ch == "{":
            return self.obj()
        if ch == "[":
            return self.arr()
        for lit in ("true", "false", "null"):
            if text.startswith(lit, pos):
                self.pos = pos + len(lit)
                return Node("literal", pos, self.pos)
        m = _NUMBER(text, pos)
        if not m:
            raise JSONSpanError(f"unexpected {ch!r} at {pos}")
        self.pos = m.end()
        return Node("number", pos, self.pos)

    def string(self) -> Node:
        start = self.pos
        self.expect('"')
        m = _STRING_REST(self.text, self.pos)
        if m is None:
            raise JSONSpanError("unterminated string")
        self.pos = m.end()
        return Node("string", start, self.pos)

    def obj(self) -> Node:
        text = self.text
        node = Node("object", self.pos, -1)
        self.expect("{")
        self.ws()
        if text[self.pos : self.pos + 1] == "}":
            self.pos += 1
            node.end = self.pos
            return node
        while True:
            self.ws()
            key_node = self.string()
            raw_key = text[key_node.start + 1 : key_node.end - 1]
            key = json.loads(text[key_node.start : key_node.end]) if "\\" in raw_key else raw_key
            self.ws()
            self.expect(":")
            node.members[key] = self.value()
            self.ws()
            if text[self.pos : self.pos + 1] == ",":
                self.pos += 1
                continue
            self.expect("}")
            node.end = self.pos
            return node

    def arr(self) -> Node:
        text = self.text
        node = Node("array", self.pos, -1)
        self.expect("[")
        self.ws()
        if text[self.pos : self.pos + 1] == "]":
            self.pos += 1
            node.end = self.pos
            return node
        while True:
            node.items.append(self.value())
            self.ws()
            if text[self.pos : self.pos + 1] == ",":
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
