"""Streaming writers for the annotation files, so 100k samples never sit in memory at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO


class JsonArrayWriter:
    """A JSON list written one element at a time (qwen-vl-finetune and LLaMA-Factory read lists)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: TextIO = path.open("w", encoding="utf-8")
        self._f.write("[")
        self.count = 0

    def write(self, obj: Any) -> None:
        self._f.write(",\n" if self.count else "\n")
        self._f.write(json.dumps(obj, ensure_ascii=False))
        self.count += 1

    def close(self) -> None:
        self._f.write("\n]\n" if self.count else "]\n")
        self._f.close()


class JsonlWriter:
    """One JSON object per line (ms-swift, provenance)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: TextIO = path.open("w", encoding="utf-8")
        self.count = 0

    def write(self, obj: Any) -> None:
        self._f.write(json.dumps(obj, ensure_ascii=False))
        self._f.write("\n")
        self.count += 1

    def close(self) -> None:
        self._f.close()


def open_writer(path: Path) -> JsonArrayWriter | JsonlWriter:
    return JsonlWriter(path) if path.suffix == ".jsonl" else JsonArrayWriter(path)
