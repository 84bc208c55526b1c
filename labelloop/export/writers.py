"""Streaming writers for the annotation files, so 100k samples never sit in memory at once.

Entries are encoded with msgspec (compact UTF-8 JSON, a tenth of ``json.dumps``'s cost; the export
writes three entries per sample). Only the files' whitespace depends on the encoder: the answer
strings inside the entries are serialised by :mod:`labelloop.export.answers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import msgspec

_encode = msgspec.json.Encoder().encode


class JsonArrayWriter:
    """A JSON list written one element at a time (qwen-vl-finetune and LLaMA-Factory read lists)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: BinaryIO = path.open("wb", buffering=1 << 20)
        self._f.write(b"[")
        self.count = 0

    def write(self, obj: Any) -> None:
        self._f.write(b",\n" if self.count else b"\n")
        self._f.write(_encode(obj))
        self.count += 1

    def close(self) -> None:
        self._f.write(b"\n]\n" if self.count else b"]\n")
        self._f.close()


class JsonlWriter:
    """One JSON object per line (ms-swift, provenance)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: BinaryIO = path.open("wb", buffering=1 << 20)
        self.count = 0

    def write(self, obj: Any) -> None:
        self._f.write(_encode(obj))
        self._f.write(b"\n")
        self.count += 1

    def close(self) -> None:
        self._f.close()


def open_writer(path: Path) -> JsonArrayWriter | JsonlWriter:
    return JsonlWriter(path) if path.suffix == ".jsonl" else JsonArrayWriter(path)
