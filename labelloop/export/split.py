"""Deterministic train/validation split by item.

The split is a pure function of the item's sha256 (salted, so it is independent of any other
hash-based sampling such as the audit sample): the same item lands in the same split in every
version, an item's pages never straddle splits, and a re-export cannot leak validation items into
training.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "val"]
SALT = "labelloop-split-v1"


def split_of(item_sha256: str, val_fraction: float) -> Split:
    digest = hashlib.sha256(f"{SALT}:{item_sha256}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"
