"""Chinese licence plate syntax (GA 36-2018 and the 2016 new-energy amendment).

Why a strict grammar: OCR on a street photo reads every sign, sticker and fragment, and a loose
"alphanumeric run" pattern turned ``DDS32`` into a plate at 0.89. A plate number is therefore
accepted only in an official format, and only with a plate colour that format allows; anything
else is not a plate (confidence 0, the field stays empty and a human fills it in).

Formats (after :func:`normalise_plate`: uppercase, no spaces, dots or middle dots):

============== =============================================== ================
kind           shape                                           colours
============== =============================================== ================
ordinary       province + letter + 5 serial characters         blue, yellow
new_energy     province + letter + 6: ``[A-HJK]`` + 1 + 4 digits or green
               5 digits + ``[DF]`` (small / large vehicle)
police         province + letter + 4 + ``警``                   white
coach          province + letter + 4 + ``学``                   yellow
trailer        province + letter + 4 + ``挂``                   yellow
hk_macao       ``粤Z`` + 4 + ``港``/``澳``                        black
consulate      province + letter + 4 + ``领``                   black
embassy        ``使`` + 6 digits (or 3 digits + letter + 2 digits) black
============== =============================================== ================

Serial characters are digits and letters without ``I`` and ``O`` (never used on plates, so a
read ``O`` is an error to correct, not a plate to accept).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
LETTER = "A-HJ-NP-Z"
SERIAL = f"[{LETTER}0-9]"
SPECIAL_SUFFIXES = "警学挂港澳使领"

#: plate colours a format allows (values of the ``plate_color`` field)
_RULES: list[tuple[str, re.Pattern[str], frozenset[str]]] = [
    (
        "new_energy",
        re.compile(f"[{PROVINCES}][{LETTER}](?:[A-HJK]{SERIAL}[0-9]{{4}}|[0-9]{{5}}[DF])"),
        frozenset({"green"}),
    ),
    ("ordinary", re.compile(f"[{PROVINCES}][{LETTER}]{SERIAL}{{5}}"), frozenset({"blue", "yellow"})),
    ("police", re.compile(f"[{PROVINCES}][{LETTER}]{SERIAL}{{4}}警"), frozenset({"white"})),
    ("coach", re.compile(f"[{PROVINCES}][{LETTER}]{SERIAL}{{4}}学"), frozenset({"yellow"})),
    ("trailer", re.compile(f"[{PROVINCES}][{LETTER}]{SERIAL}{{4}}挂"), frozenset({"yellow"})),
    ("hk_macao", re.compile(f"粤Z{SERIAL}{{4}}[港澳]"), frozenset({"black"})),
    ("consulate", re.compile(f"[{PROVINCES}][{LETTER}]{SERIAL}{{4}}领"), frozenset({"black"})),
    ("embassy", re.compile("使(?:[0-9]{6}|[0-9]{3}[A-Z][0-9]{2})"), frozenset({"black"})),
]

_STRIP = re.compile(r"[\s.·•・_\-]+")


def normalise_plate(text: str) -> str:
    """How plates are compared: uppercase, without spaces, dots, middle dots or hyphens."""
    return _STRIP.sub("", text).upper()


@dataclass(frozen=True)
class PlateSyntax:
    plate: str
    kind: str
    colours: frozenset[str]

    @property
    def n_chars(self) -> int:
        return len(self.plate)


def parse_plate(text: str) -> PlateSyntax | None:
    """The plate's format, or ``None`` when the (normalised) text is no official plate number.

    A string can match more than one shape only between ``ordinary`` and ``new_energy``, which
    differ in length, so the first full match is the answer.
    """
    norm = normalise_plate(text)
    for kind, rx, colours in _RULES:
        if rx.fullmatch(norm):
            return PlateSyntax(norm, kind, colours)
    return None


def is_valid_plate(text: str, colour: str | None = None) -> bool:
    """Valid format, and (when a colour is given) a colour that format allows."""
    syn = parse_plate(text)
    if syn is None:
        return False
    return colour is None or colour in syn.colours


def colour_problem(text: str, colour: str | None) -> str | None:
    """Why ``text`` cannot be the plate number (with ``colour``), or ``None`` when it can.

    The reason is what a reviewer sees in ``confidence_detail``.
    """
    syn = parse_plate(text)
    if syn is None:
        return f"{normalise_plate(text)!r} is not an official plate format"
    if colour is not None and colour not in syn.colours:
        return (
            f"a {syn.kind} plate ({syn.n_chars} characters) is never {colour}; expected {'/'.join(sorted(syn.colours))}"
        )
    return None


#: a regex that matches exactly the valid plate numbers (for the spec's field pattern)
PLATE_REGEX = "^(?:" + "|".join(rx.pattern for _, rx, _ in _RULES) + ")$"
