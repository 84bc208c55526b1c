"""Builders shared by the validation/export/training tests (no tests here).

Records are written straight into the curation DB, the way the review sync will: an Item whose
bytes are really in the object store (generated images, or the sample images), and a Record per
item and spec. Keeping this in one place keeps the tests about behaviour, not setup.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from PIL import Image

from labelloop.config import DatabaseSettings, Settings, StorageSettings
from labelloop.db import Database, Item, Record
from labelloop.storage import ObjectStore
from labelloop.validation import record_hash

VEHICLE_OK: dict[str, Any] = {
    "plate_number": "AB1234",
    "plate_color": "blue",
    "vehicle_type": "car",
    "brand": "Toyota",
    "color": "red",
    "plate_box": [400, 500, 520, 540],
    "vehicle_box": [100, 150, 900, 700],
}


def make_settings(tmp_path: Path, db_url: str | None = None, **export: Any) -> Settings:
    settings = Settings(
        home=tmp_path,
        db=DatabaseSettings(url=db_url or f"sqlite:///{tmp_path / 'curation.db'}"),
        storage=StorageSettings(backend="local", root=tmp_path / "objects"),
    )
    settings.training.workdir = tmp_path / "training"
    for k, v in export.items():
        setattr(settings.export, k, v)
    return settings


def image_bytes(
    width: int,
    height: int,
    seed: int = 0,
    fmt: str = "PNG",
    exif_orientation: int | None = None,
) -> bytes:
    """A small image whose bytes differ per seed (distinct sha256 = distinct items)."""
    img = Image.new("RGB", (width, height), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    img.putpixel((seed % width, (seed // width) % height), (255, 255, 255))
    buf = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, fmt, exif=exif.tobytes())
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def add_item(
    db: Database,
    store: ObjectStore,
    data: bytes,
    *,
    ext: str = "png",
    width: int | None = None,
    height: int | None = None,
    exif_orientation: int | None = None,
    media_type: str = "image",
    page_count: int | None = None,
) -> Item:
    sha = hashlib.sha256(data).hexdigest()
    key = f"raw/{sha[:2]}/{sha}.{ext}"
    store.put(key, data)
    if media_type == "image" and width is None:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    item = Item(
        sha256=sha,
        media_type=media_type,
        mime="application/pdf" if media_type == "document" else f"image/{ext}",
        ext=ext,
        size_bytes=len(data),
        storage_key=key,
        width=width,
        height=height,
        exif_orientation=exif_orientation,
        page_count=page_count,
    )
    with db.transaction() as s:
        s.add(item)
    return item


def add_record(
    db: Database,
    item: Item,
    spec: str,
    record: dict[str, Any],
    *,
    provenance: str = "human",
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct",
    model_version: str = "2025-01",
    annotator: str | None = "ann@example.com",
    confidence: float | None = 0.8,
) -> int:
    row = Record(
        item_id=item.id,
        spec=spec,
        provenance=provenance,
        model=model,
        model_version=model_version,
        annotator=annotator if provenance != "auto" else None,
        confidence=confidence,
        record=record,
        content_hash=record_hash(record),
    )
    with db.transaction() as s:
        s.add(row)
        s.flush()
        return row.id


def update_record(db: Database, record_id: int, record: dict[str, Any]) -> None:
    with db.transaction() as s:
        row = s.get(Record, record_id)
        assert row is not None
        row.record = record
        row.content_hash = record_hash(record)


def vehicle_items(db: Database, store: ObjectStore, n: int, start: int = 0) -> list[int]:
    """n valid vehicle_extraction records on distinct 1000x750 images; their record ids."""
    ids = []
    for i in range(start, start + n):
        item = add_item(db, store, image_bytes(1000, 750, seed=i))
        prov = ("human", "auto", "audited")[i % 3]
        color = ("red", "white", "black")[i % 3]
        ids.append(
            add_record(
                db,
                item,
                "vehicle_extraction",
                {**VEHICLE_OK, "color": color},
                provenance=prov,
                confidence=0.5 + (i % 5) / 10,
            )
        )
    return ids


def document_record(
    sha: str,
    pages: list[tuple[int, int]],
    blocks: list[list[dict[str, Any]]],
) -> dict[str, Any]:
    """A document_layout record (pages rendered at 72 dpi: points == pixels)."""
    return {
        "pages": [
            {
                "page": n,
                "width_pt": float(w),
                "height_pt": float(h),
                "dpi": 72,
                "width_px": w,
                "height_px": h,
                "image_key": f"pages/{sha}/{n}.png",
                "blocks": blocks[n],
            }
            for n, (w, h) in enumerate(pages)
        ],
        "markdown": "",
    }


def block(type_: str, bbox: list[float], content: str = "", score: float = 0.9) -> dict[str, Any]:
    return {"type": type_, "bbox": bbox, "content": content, "score": score, "source": "text_layer"}
