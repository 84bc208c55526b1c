"""Synthetic curation-DB rows for tests and benches: items with no bytes in any store.

Enough wherever nobody looks at pixels (routing, Label Studio import/sync, calibration, benches). Kept
free of pytest and of any server so ``bench/`` can import it too (``from tests.synthetic import ...``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy.orm import Session

from labelloop.db import Item


def synthetic_items(
    s: Session, names: Iterable[str], *, width: int = 640, height: int = 480, flush: bool = True
) -> list[Item]:
    """One image item per name (its sha256 is the name's), added to the session and flushed so ids
    are set. Names must be unique within a database: callers prefix them with what they test."""
    items = []
    for name in names:
        sha = hashlib.sha256(name.encode()).hexdigest()
        items.append(
            Item(
                sha256=sha,
                media_type="image",
                mime="image/png",
                ext="png",
                size_bytes=1,
                storage_key=f"raw/{sha[:2]}/{sha}.png",
                width=width,
                height=height,
            )
        )
    s.add_all(items)
    if flush:
        s.flush()
    return items
