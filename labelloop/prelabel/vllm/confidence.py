"""Per-field confidence from the token logprobs of a structured (JSON) answer.

Never a number the model writes about itself: we read how probable the model found the tokens it
actually generated, and only the tokens that wrote *values*.

How: rebuild the answer text from the logprob tokens with a character span per token, parse the
JSON with positions (:mod:`.jsonspans`), and for each field take the tokens that overlap the
field's value characters:

* strings: the characters between the quotes (a token that also carries a quote or comma still
  counts, because it is the token that chose the value's characters); an empty string takes the
  closing-quote token, the decision to write nothing;
* numbers, ``true``/``false``/``null``: their characters (``null`` for a box is a real choice
  between a box and no box);
* boxes: the four number tokens only, not the brackets, commas or spaces between them;
* lists (regions/objects): per element, the value tokens of every member (box numbers, text,
  label); plus the list's closing ``]``, whose probability says how sure the model was that
  there is no further element; an empty list therefore gets exactly that figure.

Keys, quotes, colons, commas, brackets and whitespace outside values are never counted. Under
structured outputs many of them are forced by the grammar (logprob ~ 0) and would only inflate a
mean; they carry no information about correctness.

Schema-forced tokens *inside* values (the tail of an enum choice once its first token is chosen,
a closing quote forced by maxLength) are kept: we cannot tell them apart from free tokens without
the grammar. A forced token has p ~ 1, so it leaves the joint probability (exp of the sum) and the
min probability unchanged; only the geometric mean is diluted by it.

Routing confidence per field (what :class:`~labelloop.prelabel.base.PredictionResult` carries):
the configured aggregator (``settings.vllm.confidence_aggregator``) over the value tokens for
scalar fields (text, choice, box), and for list fields the minimum over elements of each
element's score and the closing decision, because one bad region is enough to need a review.
The three aggregators:

* ``joint`` (product of the token probabilities): the probability of the exact string, which
  shrinks with every token, so a long caption or OCR line whose every token is a sure paraphrase
  or a 0.99 digit scores like a coin flip, and short fields look surer than they are;
* ``geomean`` (exp of the mean logprob): length-free, but one wrong digit among forty sure
  tokens barely moves it;
* ``min`` (the least probable token): the weakest decision in the value, which is where a value
  goes wrong, and no shrinking with length.

Which one is the default is not a matter of taste: ``tests/test_vllm_confidence_sim.py`` simulates
answers of many lengths with token logprobs and reviewer verdicts, over many seeds, and compares
the aggregators' Brier scores and reliability diagrams; the default is the best calibrated one,
and the test fails if that ever stops being true. The aggregator used is stored with every
prediction (``confidence_detail["aggregator"]``) and is part of its identity (thresholds are
on its scale).

Unknown is 0: a field whose tokens cannot be found (absent, unaligned, no logprobs) scores 0 and
goes to review, never 1.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from labelloop.prelabel.vllm.jsonspans import JSONSpanError, Node, parse_spans
from labelloop.specs import TaskSpec

LIST_KINDS = frozenset({"regions", "objects", "blocks", "events", "qa"})
AGGREGATORS = ("min", "geomean", "joint")
#: what ``settings.vllm.confidence_aggregator`` defaults to (see the module docstring)
DEFAULT_AGGREGATOR = "min"
_REPLACEMENT = "\ufffd"


class TokenLogprob(NamedTuple):
    """One generated token. A named tuple, not a dataclass: an answer has a hundred of them and
    they are built for every prediction."""

    token: str
    logprob: float
    #: the token's UTF-8 bytes as the server reports them (a list or tuple of ints), if it does
    bytes: Sequence[int] | None = None

    @classmethod
    def from_openai(cls, entry: Mapping[str, Any]) -> TokenLogprob:
        raw = entry.get("bytes")
        lp = entry.get("logprob")
        # vLLM reports -inf/-9999 for impossible tokens; clamp so sums stay finite
        lp = -1e4 if lp is None or not math.isfinite(lp) else max(float(lp), -1e4)
        return cls(str(entry.get("token", "")), lp, tuple(raw) if raw is not None else None)


@dataclass(frozen=True)
class SpanScore:
    joint: float
    min: float
    mean: float
    n_tokens: int

    def as_dict(self) -> dict[str, float | int]:
        return {"joint": self.joint, "min": self.min, "mean": self.mean, "n_tokens": self.n_tokens}

    def value(self, aggregator: str) -> float:
        """The score under ``aggregator``; 0 when no token was found (unknown is review)."""
        if not self.n_tokens:
            return 0.0
        if aggregator == "min":
            return self.min
        if aggregator == "geomean":
            return self.mean
        if aggregator == "joint":
            return self.joint
        raise ValueError(f"unknown confidence aggregator {aggregator!r}; known: {', '.join(AGGREGATORS)}")


class TokenAlignmentError(ValueError):
    """The logprob tokens do not spell the answer text."""


# --------------------------------------------------------------------------- alignment


def _cumulative(lengths: Iterable[int]) -> list[tuple[int, int]]:
    ends = list(itertools.accumulate(lengths))
    return list(zip([0, *ends[:-1]], ends, strict=True)) if ends else []


def _align_bytes(tokens: Sequence[TokenLogprob], text: str) -> list[tuple[int, int]] | None:
    """OpenAI-style byte tokens: a multi-byte character may be split across tokens."""
    if any(t.bytes is None for t in tokens):
        return None
    raw = b"".join(bytes(t.bytes or ()) for t in tokens)
    try:
        if raw.decode("utf-8") != text:
            return None
    except UnicodeDecodeError:
        return None
    char_at: list[int] = []  # byte offset -> index of the character it belongs to
    for i, ch in enumerate(text):
        char_at.extend([i] * len(ch.encode("utf-8")))
    out = []
    for b0, b1 in _cumulative(len(t.bytes or ()) for t in tokens):
        if b1 > b0:
            out.append((char_at[b0], char_at[b1 - 1] + 1))
        else:  # a token with no bytes writes nothing
            c = char_at[b0] if b0 < len(raw) else len(text)
            out.append((c, c))
    return out


def _align_fuzzy(tokens: Sequence[TokenLogprob], text: str) -> list[tuple[int, int]]:
    """Token strings with undecodable pieces (U+FFFD, ``bytes:`` tokens) or a trailing EOS.

    A run of undecodable tokens covers the characters up to where the next readable token is
    found (a few characters at most); readable tokens must otherwise follow each other exactly.
    """
    spans: list[tuple[int, int]] = [(0, 0)] * len(tokens)
    pos = 0
    pending: list[int] = []
    for i, t in enumerate(tokens):
        s = t.token
        if not s:
            spans[i] = (pos, pos)
            continue
        if _REPLACEMENT in s or s.startswith("bytes:"):
            pending.append(i)
            continue
        if pos >= len(text) and not pending:
            spans[i] = (pos, pos)  # trailing special tokens (e.g. <|im_end|>) write nothing
            continue
        p = text.find(s, pos, pos + len(s) + 4 * len(pending))
        if p < 0 or (p > pos and not pending):
            raise TokenAlignmentError(f"token {i} {s!r} does not continue the text at {pos}")
        for j in pending:
            spans[j] = (pos, p)
        pending = []
        spans[i] = (p, p + len(s))
        pos = p + len(s)
    for j in pending:
        spans[j] = (pos, len(text))
    return spans


def align_tokens(tokens: Sequence[TokenLogprob], text: str) -> list[tuple[int, int]]:
    """A ``[start, end)`` character span in ``text`` for each token."""
    strings = [t.token for t in tokens]
    if "".join(strings) == text:
        return _cumulative(map(len, strings))
    spans = _align_bytes(tokens, text)
    if spans is not None:
        return spans
    return _align_fuzzy(tokens, text)


# --------------------------------------------------------------------------- scoring


class _TokenIndex:
    """Find the tokens overlapping a character range quickly (tokens are in text order)."""

    def __init__(self, tokens: Sequence[TokenLogprob], spans: Sequence[tuple[int, int]]) -> None:
        keep = [(s, e, t.logprob) for (s, e), t in zip(spans, tokens, strict=True) if e > s]
        self.starts = [k[0] for k in keep]
        self.ends = [k[1] for k in keep]
        self.logprobs = [k[2] for k in keep]

    def overlapping(self, start: int, end: int) -> set[int]:
        if end <= start:
            return set()
        # spans are in text order, so both starts and ends are sorted: the overlapping tokens are
        # the run from the first one ending after `start` to the last one starting before `end`
        i = bisect.bisect_right(self.ends, start)
        return set(range(i, bisect.bisect_left(self.starts, end, i)))

    def score(self, idx: Iterable[int]) -> SpanScore:
        lps = [self.logprobs[i] for i in sorted(set(idx))]
        if not lps:
            return SpanScore(joint=0.0, min=0.0, mean=0.0, n_tokens=0)
        total = sum(lps)
        return SpanScore(
            joint=math.exp(total), min=math.exp(min(lps)), mean=math.exp(total / len(lps)), n_tokens=len(lps)
        )


def value_tokens(node: Node, index: _TokenIndex) -> set[int]:
    """Indices of the tokens that wrote this value's content (see the module docstring)."""
    if node.kind == "string":
        s, e = node.content_span
        return index.overlapping(s, e) if e > s else index.overlapping(node.end - 1, node.end)
    if node.kind in ("number", "literal"):
        return index.overlapping(node.start, node.end)
    if node.kind == "array":
        if not node.items:
            return index.overlapping(node.end - 1, node.end)
        return set().union(*(value_tokens(n, index) for n in node.items))
    return set().union(set(), *(value_tokens(n, index) for n in node.members.values()))


def _list_detail(node: Node, index: _TokenIndex, aggregator: str) -> tuple[float, dict[str, Any]]:
    elements = [index.score(value_tokens(el, index)) for el in node.items]
    close = index.score(index.overlapping(node.end - 1, node.end))
    close_p = close.value(aggregator)  # one token (or none found: 0, unknown)
    routing = min([e.value(aggregator) for e in elements] + [close_p])
    all_idx = value_tokens(node, index)
    whole = index.score(all_idx)
    detail = {
        **whole.as_dict(),
        "routing": routing,
        "close": close_p,
        "elements": [
            {"joint": e.joint, "min": e.min, "mean": e.mean, "n_tokens": e.n_tokens, "routing": e.value(aggregator)}
            for e in elements
        ],
    }
    return routing, detail


def field_confidences(
    text: str, tokens: Sequence[TokenLogprob], spec: TaskSpec, *, aggregator: str = DEFAULT_AGGREGATOR
) -> tuple[dict[str, float], dict[str, Any]]:
    """(routing confidence per field, detail per field) for the spec's fields.

    A field the answer lacks, or every field when the tokens cannot be aligned with the text,
    gets 0 so it goes to review; the detail says why.
    """
    if aggregator not in AGGREGATORS:
        raise ValueError(f"unknown confidence aggregator {aggregator!r}; known: {', '.join(AGGREGATORS)}")
    if not tokens:
        return {f: 0.0 for f in spec.fields}, {f: {"error": "no logprobs in the answer"} for f in spec.fields}
    try:
        spans = align_tokens(tokens, text)
        root = parse_spans(text)
    except (TokenAlignmentError, JSONSpanError) as e:
        reason = f"confidence unavailable: {e}"
        return {f: 0.0 for f in spec.fields}, {f: {"error": reason} for f in spec.fields}
    index = _TokenIndex(tokens, spans)
    routing: dict[str, float] = {}
    detail: dict[str, Any] = {}
    for name, fspec in spec.fields.items():
        node = root.members.get(name) if root.kind == "object" else None
        if node is None:
            routing[name], detail[name] = 0.0, {"error": "field absent from the answer"}
            continue
        if fspec.kind in LIST_KINDS and node.kind == "array":
            routing[name], detail[name] = _list_detail(node, index, aggregator)
            continue
        score = index.score(value_tokens(node, index))
        routing[name] = score.value(aggregator)
        detail[name] = {**score.as_dict(), "routing": routing[name]}
    return routing, detail


def parse_logprobs(content: Sequence[Mapping[str, Any]] | None) -> list[TokenLogprob]:
    """``choices[0].logprobs.content`` of a chat completion as :class:`TokenLogprob` objects."""
    out = []
    append = out.append
    for e in content or ():
        lp = e.get("logprob")
        if lp is None or not -1e4 <= lp <= 0:  # -inf/-9999 for impossible tokens, None, NaN
            append(TokenLogprob.from_openai(e))
        else:
            append(TokenLogprob(e.get("token") or "", lp, e.get("bytes")))
    return out
