"""Ingest: content addressing, aliases, type sniffing, one reject row per bad file, reruns."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from labelloop.config import Settings
from labelloop.db import Database, Item, ItemAlias, Reject
from labelloop.ingest import ingest, raw_key
from labelloop.storage import LocalStore, open_store


def _png(w: int = 32, h: int = 24, color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG that claims to be w x h: a decompression bomb as far as the header goes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def _pdf(pages: int, password: str | None = None) -> bytes:
    import pymupdf

    doc = pymupdf.open()
    for i in range(pages):
        doc.new_page().insert_text((72, 72), f"page {i + 1}")
    kw = {}
    if password:
        kw = {"encryption": pymupdf.PDF_ENCRYPT_AES_256, "user_pw": password, "owner_pw": password + "o"}
    data = doc.tobytes(**kw)
    doc.close()
    return data


def _jpeg_with_orientation(w: int, h: int, orientation: int) -> bytes:
    img = Image.new("RGB", (w, h), (10, 120, 200))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _count(db: Database, model) -> int:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_sample_data_registers_every_file_and_rerun_adds_nothing(
    db: Database, settings: Settings, sample_data: Path
) -> None:
    store = open_store(settings.storage)
    files = [p for p in sample_data.rglob("*") if p.is_file()]
    first = ingest(db, store, settings, str(sample_data))
    media = [p for p in files if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".pdf"}]
    assert first.seen == len(files)
    assert first.new_items == len(media)
    assert first.rejected == len(files) - len(media)  # the README: text, not an image or PDF
    with db.session() as s:
        docs = s.scalars(select(Item).where(Item.media_type == "document")).all()
        assert {d.page_count for d in docs} and all(d.page_count and d.page_count > 0 for d in docs)
        for it in s.scalars(select(Item)):
            assert store.exists(it.storage_key) and it.storage_key == raw_key(it.sha256, it.ext)
            if it.media_type == "image":
                assert it.width and it.height
    second = ingest(db, store, settings, str(sample_data))
    assert (second.new_items, second.known, second.new_aliases) == (0, len(media), 0)
    assert _count(db, Item) == len(media)
    assert _count(db, Reject) == first.rejected  # upserted, not duplicated


def test_same_bytes_under_other_names_are_one_item_with_aliases(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(_png())
    (src / "sub" / "copy-of-a.PNG").write_bytes(_png())
    (src / "b.png").write_bytes(_png(color=(0, 255, 0)))
    stats = ingest(db, LocalStore(settings.storage.root), settings, str(src))
    assert (stats.new_items, stats.known, stats.new_aliases) == (2, 1, 1)
    with db.session() as s:
        a = s.scalars(select(Item).join(ItemAlias).where(ItemAlias.source_uri.like("%/a.png"))).one()
        names = sorted(al.source_uri.rsplit("/", 1)[-1] for al in a.aliases)
        assert names == ["a.png", "copy-of-a.PNG"]


def test_type_is_sniffed_from_content_not_extension(
    sqlite_db: Database, sqlite_settings: Settings, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "really-a-png.pdf").write_bytes(_png())
    (src / "really-a-pdf.jpg").write_bytes(_pdf(2))
    (src / "text.jpg").write_text("not an image at all\n" * 10)
    stats = ingest(sqlite_db, LocalStore(sqlite_settings.storage.root), sqlite_settings, str(src))
    assert stats.new_items == 2 and stats.rejected == 1
    with sqlite_db.session() as s:
        by_kind = {i.media_type: i for i in s.scalars(select(Item))}
        assert by_kind["image"].ext == "png" and by_kind["image"].mime == "image/png"
        assert by_kind["document"].ext == "pdf" and by_kind["document"].page_count == 2
        assert s.scalars(select(Reject.reason)).one() == "unsupported_type"


def test_one_reject_row_per_bad_file_and_good_files_beside_them(
    db: Database, settings: Settings, tmp_path: Path, sample_data: Path
) -> None:
    settings = settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"max_image_pixels": 50_000_000, "max_pdf_pages": 5})}
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    good_png = _png(40, 30)
    jpeg = (sample_data / "images" / "qwen-ocr_example1.jpg").read_bytes()
    demo1 = (sample_data / "documents" / "mineru-demo1.pdf").read_bytes()
    files = {
        "empty.jpg": (b"", "empty_file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
        "corrupt.png": (good_png[:16] + bytes(range(256)) * 4, "corrupt"),
        "notes.txt": (b"hello, not media\n", "unsupported_type"),
        "archive.zip": (b"PK\x03\x04" + b"\0" * 100, "unsupported_type"),
        "bomb.png": (_png_header_only(20_000, 20_000), "image_too_large"),
        "secret.pdf": (_pdf(1, password="s3cret"), "pdf_encrypted"),
        "long.pdf": (_pdf(6), "pdf_too_many_pages"),
        "truncated.pdf": (demo1[: len(demo1) // 2], "corrupt"),
    }
    for name, (data, _) in files.items():
        (bad / name).write_bytes(data)
    (bad / "good.png").write_bytes(good_png)
    (bad / "good.pdf").write_bytes(_pdf(3))

    stats = ingest(db, LocalStore(settings.storage.root), settings, str(bad))
    assert stats.new_items == 2
    assert stats.rejected == len(files)
    with db.session() as s:
        rows = {r.source_uri.rsplit("/", 1)[-1]: r for r in s.scalars(select(Reject))}
    assert {n: r.reason for n, r in rows.items()} == {n: reason for n, (_, reason) in files.items()}
    assert all(r.detail for r in rows.values())
    assert "400,000,000 pixels" in rows["bomb.png"].detail
    assert "6 pages" in rows["long.pdf"].detail
    again = ingest(db, LocalStore(settings.storage.root), settings, str(bad))
    assert again.new_items == 0 and again.rejected == len(files)
    assert _count(db, Reject) == len(files)


def test_exif_orientation_is_applied_to_dimensions(
    sqlite_db: Database, sqlite_settings: Settings, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "rot90.jpg").write_bytes(_jpeg_with_orientation(60, 20, 6))
    (src / "upright.jpg").write_bytes(_jpeg_with_orientation(60, 20, 1))
    ingest(sqlite_db, LocalStore(sqlite_settings.storage.root), sqlite_settings, str(src))
    with sqlite_db.session() as s:
        dims = {i.exif_orientation: (i.width, i.height) for i in s.scalars(select(Item))}
    assert dims == {6: (20, 60), 1: (60, 20)}


def test_crash_mid_ingest_then_rerun_loses_and_duplicates_nothing(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"commit_every": 3})})
    src = tmp_path / "in"
    src.mkdir()
    for i in range(10):
        (src / f"{i:02d}.png").write_bytes(_png(10 + i, 10))
    store = LocalStore(settings.storage.root)
    seen = 0

    def crash(_f, _outcome):  # type: ignore[no-untyped-def]
        nonlocal seen
        seen += 1
        if seen == 7:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        ingest(db, store, settings, str(src), progress=crash)
    committed = _count(db, Item)
    assert 0 < committed < 10
    stats = ingest(db, store, settings, str(src))
    assert stats.new_items == 10 - committed and stats.known == committed
    assert _count(db, Item) == 10 and _count(db, ItemAlias) == 10


def test_ingest_from_s3_prefix_into_s3_store(
    sqlite_db: Database,
    sqlite_settings: Settings,
    s3_store,  # type: ignore[no-untyped-def]
    s3_settings,
) -> None:
    settings = sqlite_settings.model_copy(update={"storage": s3_settings})
    s3_store.put("incoming/batch1/a.png", _png(12, 8))
    s3_store.put("incoming/batch1/deep/b.pdf", _pdf(3))
    s3_store.put("incoming/batch1/empty.jpg", b"")
    s3_store.put("incoming/other/c.png", _png(5, 5))
    stats = ingest(sqlite_db, s3_store, settings, f"s3://{s3_settings.bucket}/incoming/batch1/")
    assert (stats.seen, stats.new_items, stats.rejected) == (3, 2, 1)
    with sqlite_db.session() as s:
        items = s.scalars(select(Item)).all()
        assert sorted(a.source_uri for it in items for a in it.aliases) == [
            f"s3://{s3_settings.bucket}/incoming/batch1/a.png",
            f"s3://{s3_settings.bucket}/incoming/batch1/deep/b.pdf",
        ]
        for it in items:
            assert s3_store.exists(it.storage_key)
    assert ingest(sqlite_db, s3_store, settings, f"s3://{s3_settings.bucket}/incoming/batch1/").new_items == 0


def test_missing_source_is_a_clear_error(sqlite_db: Database, sqlite_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest(sqlite_db, LocalStore(tmp_path), sqlite_settings, str(tmp_path / "nope"))
