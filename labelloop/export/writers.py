"""Streaming writers for the annotation files, so 100k samples never sit in memory at once.

Entries are encoded with msgspec (compact UTF-8 JSON, a tenth of ``json.dumps``'s cost; the export
writes three entries per sample). Only the files' whitespace depends on the encoder: the answer
strings inside the entries are serialised by :mod:`labelloop.export.answers`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

_encode = msgspec.json.Encoder().encode


class JsonArrayWriter:
    """A JSON list written one element at a time (qwen-vl-finetune and LLaMA-Factory read lists).

    ``fragment=True`` writes the elements only (``e1,\ne2``): a shard's part, which
    :func:`join_json_arrays` turns into the same bytes one writer would have written.
    """

    def __init__(self, path: Path, *, fragment: bool = False) -> None:
        self.path = path
        self.fragment = fragment
        self._f: BinaryIO = path.open("wb", buffering=1 << 20)
        if not fragment:
            self._f.write(b"[")
        self.count = 0

    def write(self, obj: Any) -> None:
        if self.count:
            self._f.write(b",\n")
        elif not self.fragment:
            self._f.write(b"\n")
        self._f.write(_encode(obj))
        self.count += 1

    def close(self) -> None:
        if not self.fragment:
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


def open_writer(path: Path, *, fragment: bool = False) -> JsonArrayWriter | JsonlWriter:
    return JsonlWriter(path) if path.suffix == ".jsonl" else JsonArrayWriter(path, fragment=fragment)


def _append(dst: BinaryIO, path: Path) -> None:
    with path.open("rb") as src:
        shutil.copyfileobj(src, dst, 1 << 20)


def join_json_arrays(path: Path, fragments: list[tuple[Path, int]]) -> Path:
    """One JSON list from shards' fragments ((path, element count), in order), byte for byte what
    a single :class:`JsonArrayWriter` writes."""
    with path.open("wb") as f:
        f.write(b"[")
        first = True
        for part, count in fragments:
            if not count:
                continue
            f.write(b"\n" if first else b",\n")
            _append(f, part)
            first = False
        f.write(b"]\n" if first else b"\n]\n")
    return path


def concat_files(path: Path, parts: list[Path]) -> Path:
    """Shards' JSONL parts, in order, as one file."""
    with path.open("wb") as f:
        for part in parts:
            _append(f, part)
    return path
