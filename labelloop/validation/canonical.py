"""One canonical JSON form and hash for a record.

Validation snapshots, quarantine rows, dataset membership and the dataset content hash all name a
record's content by this hash, so "the record that passed validation" and "the record we export"
can be compared exactly, whoever wrote the row and whatever key order its JSON came back in.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: one encoder for every call (``json.dumps`` with options builds a new one each time)
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept, NaN refused (JSON has no NaN)."""
    return _encode(value)


def record_hash(record: Any) -> str:
    """sha256 of the canonical JSON of a record."""
    return hashlib.sha256(canonical_json(record).encode("utf-8")).hexdigest()
