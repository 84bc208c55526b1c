"""Synthetic curation-DB rows for tests and benches: image items with no bytes in any store (enough
wherever nobody looks at pixels: routing, Label Studio import/sync, calibration, benches), and PDF
items for given bytes, stored or not (document backends and their batches). Kept
free of pytest and of any server so ``bench/`` can import it too (``from tests.synthetic import ...``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

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


def pdf_item(data: bytes, item_id: int = 1, ext: str = "pdf") -> Item:
    """A document item for ``data`` that is not in any database: what a backend's ``predict`` needs."""
    sha = hashlib.sha256(data).hexdigest()
    return Item(
        id=item_id,
        sha256=sha,
        media_type="document",
        mime="application/pdf",
        ext=ext,
        size_bytes=len(data),
        storage_key=f"raw/{sha[:2]}/{sha}.{ext}",
    )


def add_pdf_item(db: Any, store: Any, data: bytes, name: str | None = None) -> int:
    """Store ``data`` and add its document item (``meta.name`` when given); returns the item id."""
    item = pdf_item(data)
    item.id = None  # type: ignore[assignment]
    if name is not None:
        item.meta = {"name": name}
    store.put(item.storage_key, data)
    with db.transaction() as s:
        s.add(item)
        s.flush()
        return int(item.id)
