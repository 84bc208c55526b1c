"""Ingest under ordinary faults: kill -9 mid-run, odd folder entries, damaged files, unchanged sources.

Real parts only: the `labelloop` CLI in a subprocess, SQLite/PostgreSQL, a local object folder, and
moto's S3 server over HTTP (its own process here, so its access log can be read to count GETs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import free_port, moto_server
from PIL import Image
from sqlalchemy import func, select

from labelloop.config import DatabaseSettings, Settings, StorageSettings
from labelloop.db import Database, Item, ItemAlias, Prediction, Reject, SourceObject
from labelloop.ingest import ingest, probe_file
from labelloop.ingest.probe import Rejected
from labelloop.storage import LocalStore


def _png(w: int, h: int, seed: int) -> bytes:
    img = Image.new("RGB", (w, h), (seed % 256, (seed // 256) % 256, 99))
    img.putpixel((seed % w, (seed // w) % h), (1, 2, 3))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(w: int = 80, h: int = 60) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((w, h), 50).convert("RGB").save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_with_bad_zlib(w: int = 1600, h: int = 1200) -> bytes:
    """Well framed, every CRC right, but the compressed pixels are garbage: only a decode sees it."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"\x78\x9c" + bytes(range(7, 200)))
        + _chunk(b"IEND", b"")
    )


def _pdf(sizes: list[tuple[float, float]]) -> bytes:
    import pymupdf

    doc = pymupdf.open()
    for w, h in sizes:
        doc.new_page(width=w, height=h).insert_text((36, 36), "hello")
    data = doc.tobytes()
    doc.close()
    return data


def _count(db: Database, model) -> int:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _with(settings: Settings, **ingest: object) -> Settings:
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(update=ingest)})


# --------------------------------------------------------------------------- kill -9 mid-ingest


def _labelloop_cli() -> str:
    exe = Path(sys.executable).with_name("labelloop")
    assert exe.exists(), f"console script not installed next to {sys.executable}"
    return str(exe)


def _items_in_sqlite(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("select count(*) from items").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # not migrated yet, or locked for a moment
        return 0


def _check_every_row_has_its_bytes(db: Database, store: LocalStore) -> int:
    with db.session() as s:
        items = s.scalars(select(Item)).all()
    for it in items:
        path = store.local_path(it.storage_key)
        assert path is not None and path.is_file(), f"item {it.id} has no bytes at {it.storage_key}"
        data = path.read_bytes()
        assert len(data) == it.size_bytes and hashlib.sha256(data).hexdigest() == it.sha256, it.storage_key
    return len(items)


def test_kill_9_mid_ingest_then_rerun_gives_exact_counts_and_every_rows_bytes(tmp_path: Path) -> None:
    src = tmp_path / "inbox"
    n_good = 1200
    for i in range(n_good):
        sub = src / f"{i // 300:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"p{i:05d}.png").write_bytes(_png(24 + i % 7, 16, i))
    # five copies of earlier files under other names, and six bad files
    for i in range(5):
        (src / f"copy{i}.png").write_bytes(_png(24 + i % 7, 16, i))
    jpeg = _jpeg()
    bad = {
        "cut.jpg": jpeg[: len(jpeg) // 2],
        "notes.txt": b"not an image\n",
        "empty.png": b"",
        "cut.png": _png(30, 30, 1)[:-12],
        "crc.png": _png(30, 30, 2)[:40] + b"\x00" + _png(30, 30, 2)[41:],
        "cut.pdf": _pdf([(200, 200)])[:-30],
    }
    for name, data in bad.items():
        (src / name).write_bytes(data)
    n_files = n_good + 5 + len(bad)

    home = tmp_path / "home"
    db_path = home / "curation.db"
    env = {
        **os.environ,
        "LABELLOOP_HOME": str(home),
        "LABELLOOP_DB__URL": f"sqlite:///{db_path}",
        "LABELLOOP_STORAGE__ROOT": str(home / "objects"),
        "LABELLOOP_INGEST__COMMIT_EVERY": "30",
    }
    cmd = [_labelloop_cli(), "ingest", str(src), "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _items_in_sqlite(db_path) == 0:
            assert proc.poll() is None, f"ingest ended before it could be killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "no batch committed within 120 s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its probe workers: its own session
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    db = Database(DatabaseSettings(url=f"sqlite:///{db_path}"))
    store = LocalStore(home / "objects")
    try:
        committed = _check_every_row_has_its_bytes(db, store)  # the killed run left no row without bytes
        assert 0 < committed < n_good, committed

        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        rerun = json.loads(out.stdout)
        assert rerun["seen"] == n_files and rerun["skipped"] == 0
        assert rerun["new_items"] == n_good - committed
        assert rerun["rejected"] == len(bad)
        assert rerun["new_items"] + rerun["known"] + rerun["rejected"] == n_files

        assert _check_every_row_has_its_bytes(db, store) == n_good
        assert _count(db, ItemAlias) == n_good + 5
        with db.session() as s:
            reasons = dict(s.execute(select(Reject.source_uri, Reject.reason)).tuples().all())
        assert {u.rsplit("/", 1)[-1]: r for u, r in reasons.items()} == {
            "cut.jpg": "corrupt",
            "notes.txt": "unsupported_type",
            "empty.png": "empty_file",
            "cut.png": "corrupt",
            "crc.png": "corrupt",
            "cut.pdf": "corrupt",
        }
        assert _count(db, SourceObject) == n_files

        # a third run reads nothing: every name is unchanged
        third = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
        assert (third["unchanged"], third["bytes_read"], third["new_items"]) == (n_files, 0, 0)
        assert (third["known"], third["rejected"]) == (n_good + 5, len(bad))
    finally:
        db.dispose()


# --------------------------------------------------------------------------- folder entries


def test_odd_entries_are_rejects_or_listed_skips_never_an_abort(
    db: Database, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "good.png").write_bytes(_png(20, 10, 1))
    (src / "sub" / "good2.png").write_bytes(_png(20, 10, 2))
    (src / ".hidden.png").write_bytes(_png(20, 10, 3))
    (src / ".git").mkdir()
    (src / ".git" / "x.png").write_bytes(_png(20, 10, 4))
    (src / "link.png").symlink_to(src / "good.png")
    (src / "sub" / "loop").symlink_to(src)  # a folder link back to an ancestor
    (src / "self").symlink_to(src / "self")  # ELOOP
    (src / "dangling.png").symlink_to(src / "missing.png")
    os.mkfifo(src / "pipe")
    (src / "locked").mkdir()
    (src / "locked" / "never.png").write_bytes(_png(20, 10, 5))

    # a folder that cannot be listed (as root chmod does not stop reading: the OS error is injected)
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if str(path).endswith("/locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)

    store = LocalStore(settings.storage.root)
    plain = ingest(db, store, settings, str(src))
    assert (plain.new_items, dict(plain.reject_reasons)) == (2, {"unreadable": 1})
    assert plain.skipped_reasons == {"hidden": 2, "symlink": 4, "not_a_file": 1}
    assert plain.skipped == 7 and len(plain.skipped_names) == 7
    assert {n.rsplit("/", 1)[-1] for n in plain.skipped_names} == {
        ".hidden.png", ".git", "link.png", "loop", "self", "dangling.png", "pipe",
    }  # fmt: skip
    assert plain.as_dict()["skipped_names"] == plain.skipped_names

    # following links: the loops and the dangling link are rejects too, and the run goes on
    follow = ingest(db, store, _with(settings, follow_symlinks=True), str(src))
    assert follow.new_items == 0 and follow.known == 3
    assert follow.new_aliases == 1  # link.png: the same bytes as good.png under another name
    assert follow.reject_reasons == {"symlink_loop": 2, "unreadable": 2}
    with db.session() as s:
        rows = {r.source_uri.rsplit("/", 1)[-1]: r for r in s.scalars(select(Reject))}
    assert {n: r.reason for n, r in rows.items()} == {
        "loop": "symlink_loop",
        "self": "symlink_loop",
        "dangling.png": "unreadable",
        "locked": "unreadable",
    }
    assert "Permission denied" in rows["locked"].detail and "missing.png" in rows["dangling.png"].detail
    assert follow.skipped_reasons == {"hidden": 2, "not_a_file": 1}


# --------------------------------------------------------------------------- damaged files


def test_structural_checks_find_truncation_and_corruption_without_decoding(tmp_path: Path) -> None:
    limits = Settings().ingest
    png = _png(64, 48, 7)
    jpeg = _jpeg(120, 90)
    pdf = _pdf([(300, 400), (300, 400)])
    idat = png.index(b"IDAT")
    cases = {
        "png-no-iend.png": (png[:-12], "without an IEND chunk"),
        "png-cut-in-idat.png": (png[: idat + 10], "the file ends first"),
        "png-flipped-byte.png": (png[: idat + 6] + bytes([png[idat + 6] ^ 0xFF]) + png[idat + 7 :], "CRC"),
        "jpeg-no-eoi.jpg": (jpeg[:-2], "no end-of-image marker"),
        "jpeg-cut-in-header.jpg": (jpeg[:100], "runcated"),  # Pillow's header reader sees it first
        "pdf-cut.pdf": (pdf[:-40], "no startxref"),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(Rejected) as err:
            probe_file(path, limits)
        assert err.value.reason.value == "corrupt", name
        assert expected in err.value.detail, (name, err.value.detail)

    # what real files carry is accepted: bytes after EOI (camera trailers), a moved xref (repaired)
    ok = tmp_path / "trailer.jpg"
    ok.write_bytes(jpeg + b"\x00" * 100 + b"SEFT trailer")
    assert probe_file(ok, limits).width == 120
    moved = tmp_path / "moved-xref.pdf"
    moved.write_bytes(re.sub(rb"startxref\s+\d+", b"startxref\n12", pdf))
    probe = probe_file(moved, limits)
    assert probe.page_count == 2 and "not a cross-reference" in probe.meta["xref"]

    # damage inside the compressed pixels with intact framing passes the structure check, and is
    # caught when asked to decode everything
    bad_pixels = tmp_path / "bad-zlib.png"
    bad_pixels.write_bytes(_png_with_bad_zlib())
    assert probe_file(bad_pixels, limits).width == 1600
    with pytest.raises(Rejected, match="cannot be decoded"):
        probe_file(bad_pixels, limits.model_copy(update={"verify": "decode"}))


def test_png_exif_orientation_after_the_pixels_is_read_without_a_decode(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    png = _png(50, 20, 3)
    iend = png.rindex(b"IEND") - 4
    path = tmp_path / "late-exif.png"
    path.write_bytes(png[:iend] + _chunk(b"eXIf", exif.tobytes()[6:]) + png[iend:])
    probe = probe_file(path, Settings().ingest)
    assert (probe.exif_orientation, probe.width, probe.height) == (6, 20, 50)


def test_decode_failure_at_prelabel_is_a_permanent_named_failure(
    sqlite_db: Database, sqlite_settings: Settings, tmp_path: Path
) -> None:
    """The one kind of damage ingest lets through (see above) fails at pre-label, for good, by name."""
    from labelloop.prelabel.factory import make_backend
    from labelloop.prelabel.runner import run_prelabel_sync
    from labelloop.specs.registry import SpecRegistry

    src = tmp_path / "in"
    src.mkdir()
    (src / "bad-zlib.png").write_bytes(_png_with_bad_zlib())
    store = LocalStore(sqlite_settings.storage.root)
    assert ingest(sqlite_db, store, sqlite_settings, str(src)).new_items == 1
    # no model server is needed: the image (above max_pixels: resized client-side) fails to
    # decode before any request is made
    settings = sqlite_settings.model_copy(
        update={"vllm": sqlite_settings.vllm.model_copy(update={"base_url": f"http://127.0.0.1:{free_port()}/v1"})}
    )
    spec = SpecRegistry().get("caption")
    stats = run_prelabel_sync(sqlite_db, store, spec, make_backend("vllm", settings, store))
    assert (stats.failed, stats.permanent) == (1, 1)
    with sqlite_db.session() as s:
        pred = s.scalars(select(Prediction)).one()
    assert pred.status == "failed" and pred.failure_kind == "permanent"
    assert "image could not be prepared" in pred.error and "bad-zlib" not in pred.error
    assert re.search(r"(?i)decompress|truncated|broken|decod", pred.error), pred.error


# --------------------------------------------------------------------------- PDF page size


def test_pdf_page_above_the_pixel_budget_at_render_dpi_is_rejected_at_ingest(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "letter.pdf").write_bytes(_pdf([(612, 792), (612, 792)]))
    (src / "poster.pdf").write_bytes(_pdf([(612, 792), (14_400, 14_400)]))
    store = LocalStore(settings.storage.root)
    stats = ingest(db, store, settings, str(src))
    assert (stats.new_items, dict(stats.reject_reasons)) == (1, {"pdf_page_too_large": 1})
    with db.session() as s:
        row = s.scalars(select(Reject)).one()
    assert row.source_uri.endswith("/poster.pdf")
    assert "page 2 is 14,400 x 14,400 pt = 829,440,000 pixels at 144 DPI" in row.detail
    assert "40,000,000" in row.detail

    # an unchanged file keeps its reject without being read ...
    again = ingest(db, store, settings, str(src))
    assert (again.unchanged, again.bytes_read, again.rejected) == (2, 0, 1)
    # ... until the limits it was judged under change
    roomy = ingest(db, store, _with(settings, max_page_pixels=900_000_000), str(src))
    assert (roomy.new_items, roomy.rejected, roomy.unchanged) == (1, 0, 1)
    with db.session() as s:
        assert sorted(a.source_uri.rsplit("/", 1)[-1] for a in s.scalars(select(ItemAlias))) == [
            "letter.pdf",
            "poster.pdf",
        ]


# --------------------------------------------------------------------------- unchanged sources


def test_unchanged_local_files_are_not_read_again(db: Database, settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.png").write_bytes(_png(20, 20, i))
    store = LocalStore(settings.storage.root)
    first = ingest(db, store, settings, str(src))
    assert first.new_items == 6 and first.bytes_read > 0

    second = ingest(db, store, settings, str(src))
    assert (second.unchanged, second.known, second.bytes_read, second.new_items) == (6, 6, 0, 0)

    touched = src / "0.png"
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))  # same bytes, new mtime
    (src / "1.png").write_bytes(_png(20, 20, 100))  # new bytes under an old name
    third = ingest(db, store, settings, str(src))
    assert (third.unchanged, third.known, third.new_items) == (4, 5, 1)
    assert third.bytes_read == touched.stat().st_size + (src / "1.png").stat().st_size

    # an item deleted since is not taken as present: its name is read and registered again
    with db.session() as s, s.begin():
        s.delete(s.scalars(select(Item).join(ItemAlias).where(ItemAlias.source_uri.like("%/2.png"))).one())
    fourth = ingest(db, store, settings, str(src))
    assert (fourth.unchanged, fourth.new_items) == (5, 1)


# --------------------------------------------------------------------------- S3: unchanged prefix


@pytest.fixture(scope="module")
def counted_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A moto S3 server of our own, whose access log (one line per request) we can read."""
    log = tmp_path_factory.mktemp("moto-counted") / "access.log"
    with moto_server(log) as address:
        yield address, log


def _object_gets(log: Path, bucket: str, since: int) -> list[str]:
    """Object-body GETs (not listings: those carry a query string) logged after byte ``since``."""
    with log.open("rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return re.findall(rf'"GET /{re.escape(bucket)}/([^ ?"]+) HTTP', text)


def test_second_ingest_of_an_unchanged_s3_prefix_downloads_no_object(
    counted_s3: tuple[str, Path], sqlite_settings: Settings, tmp_path: Path
) -> None:
    from minio import Minio

    endpoint, log = counted_s3
    s3 = StorageSettings(
        backend="s3",
        endpoint=endpoint,
        bucket=f"src-{uuid.uuid4().hex[:8]}",
        access_key="testing",
        secret_key="testing",
        secure=False,
    )
    client = Minio(endpoint, access_key="testing", secret_key="testing", secure=False, region="us-east-1")
    client.make_bucket(s3.bucket)
    n = 2000

    def put(i: int) -> None:
        data = _png(8, 8, i)
        client.put_object(s3.bucket, f"nightly/{i // 500}/img{i:05d}.png", io.BytesIO(data), len(data))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n)))
    settings = sqlite_settings.model_copy(update={"storage": s3})
    db = Database(settings.db)
    db.upgrade()
    store = LocalStore(tmp_path / "objects")  # the items' store; the source is the S3 prefix
    prefix = f"s3://{s3.bucket}/nightly/"
    try:
        mark = log.stat().st_size
        first = ingest(db, store, settings, prefix)
        assert (first.seen, first.new_items) == (n, n)
        time.sleep(0.5)  # let the server flush its log
        assert len(_object_gets(log, s3.bucket, mark)) == n  # the test counts what it should

        mark = log.stat().st_size
        second = ingest(db, store, settings, prefix)
        time.sleep(0.5)
        assert _object_gets(log, s3.bucket, mark) == []
        assert (second.seen, second.unchanged, second.known, second.bytes_read) == (n, n, n, 0)

        # one object replaced, one added: exactly those two are downloaded
        changed = _png(9, 9, 1)
        client.put_object(s3.bucket, "nightly/0/img00007.png", io.BytesIO(changed), len(changed))
        client.put_object(s3.bucket, "nightly/9/new.png", io.BytesIO(changed[::-1][::-1]), len(changed))
        mark = log.stat().st_size
        third = ingest(db, store, settings, prefix)
        time.sleep(0.5)
        assert sorted(_object_gets(log, s3.bucket, mark)) == ["nightly/0/img00007.png", "nightly/9/new.png"]
        assert (third.seen, third.unchanged, third.new_items, third.known) == (n + 1, n - 1, 1, n)
    finally:
        db.dispose()


def test_cli_lists_skipped_names_and_unchanged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from labelloop.cli.app import app

    monkeypatch.chdir(tmp_path)
    env = {
        "LABELLOOP_HOME": str(tmp_path / "home"),
        "LABELLOOP_DB__URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "LABELLOOP_STORAGE__ROOT": str(tmp_path / "objects"),
    }
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(_png(20, 10, 1))
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "b.png").symlink_to(src / "a.png")
    first = CliRunner().invoke(app, ["ingest", str(src)], env=env)
    assert first.exit_code == 0, first.output
    assert "1 new items" in first.output
    assert "skipped (not files of the run): 2 (1 hidden, 1 symlink)" in first.output
    assert f"{(src / '.DS_Store').as_uri()}\n" in first.output and (src / "b.png").as_uri() in first.output
    again = CliRunner().invoke(app, ["ingest", str(src)], env=env)
    assert again.exit_code == 0, again.output
    assert "unchanged since the last ingest (not read): 1" in again.output


def test_probe_pool_and_duplicates_across_batches(
    sqlite_db: Database, sqlite_settings: Settings, tmp_path: Path
) -> None:
    """Probing in worker processes gives the same items and rejects; bytes seen again in the next
    batch (read while the batch before is not committed yet) are one item with two names."""
    from labelloop.ingest.run import Ingestor

    src = tmp_path / "in"
    src.mkdir()
    for i in range(60):  # 000-a, 000-b, 001-a, ...: with batches of 7, every other pair straddles two
        (src / f"{i:03d}-a.png").write_bytes(_png(16, 16, i))
        (src / f"{i:03d}-b.png").write_bytes(_png(16, 16, i))
    (src / "999-cut.png").write_bytes(_png(16, 16, 500)[:-12])
    (src / "999-cut-again.png").write_bytes(_png(16, 16, 500)[:-12])
    settings = _with(sqlite_settings, commit_every=7, probe_workers=2)
    ing = Ingestor(sqlite_db, LocalStore(settings.storage.root), settings)
    ing._start_pool()
    assert ing._pool_ready.wait(120), "probe pool did not start"
    stats = ing.run(str(src))
    assert (stats.seen, stats.new_items, stats.known, stats.new_aliases) == (122, 60, 60, 60)
    assert dict(stats.reject_reasons) == {"corrupt": 2}
    assert _count(sqlite_db, Item) == 60 and _count(sqlite_db, ItemAlias) == 120
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count()).select_from(Reject).where(Reject.reason == "corrupt")) == 2
    again = Ingestor(sqlite_db, LocalStore(settings.storage.root), settings).run(str(src))
    assert (again.unchanged, again.new_items, again.known, again.rejected) == (122, 0, 120, 2)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_batch_writer_publishes_on_commit_and_leaves_nothing_staged(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = LocalStore(tmp_path / "objects") if kind == "local" else request.getfixturevalue("s3_store")
    staging = tmp_path / "staging"
    with store.batch_writer(staging) as w:
        kept, out = w.new_file()
        with out:
            out.write(b"kept bytes")
        dropped, out = w.new_file()
        with out:
            out.write(b"dropped")
        loose, out = w.new_file()
        with out:
            out.write(b"never added")
        w.add(kept, "raw/ab/kept.bin", content_type="application/octet-stream")
        w.discard(dropped)
        assert not store.exists("raw/ab/kept.bin")  # nothing is visible before commit
        w.commit()
        assert store.get("raw/ab/kept.bin") == b"kept bytes"
        assert not kept.path.exists() and not dropped.path.exists() and loose.path.exists()
    assert not loose.path.exists()  # close() removes what was staged and never added
    if kind == "local":
        assert [o.key for o in store.list("")] == ["raw/ab/kept.bin"]  # .tmp-staging is not listed
    else:
        assert list(staging.iterdir()) == []


def test_two_ingests_of_one_folder_at_once_give_exact_counts(db_url: str, tmp_path: Path) -> None:
    """Overlapping runs (the prelabel DAG and the nightly): each batch that races the other is
    redone row by row; nothing is duplicated or lost, and every row has its bytes. On SQLite the
    second writer waits for the lock (it used to fail with "database is locked")."""
    import threading

    src = tmp_path / "in"
    src.mkdir()
    for i in range(400):
        (src / f"{i:04d}.png").write_bytes(_png(16, 16, i))
    for i in range(20):
        (src / f"dup{i:02d}.png").write_bytes(_png(16, 16, i * 7))
    settings = Settings(
        home=tmp_path / "home",
        db=DatabaseSettings(url=db_url),
        storage=StorageSettings(backend="local", root=tmp_path / "objects"),
    )
    settings = _with(settings, commit_every=25)
    migrate = Database(settings.db)
    migrate.upgrade()  # a new SQLite file: migrate before the race, not during it
    migrate.dispose()
    start = threading.Barrier(2)
    results: list[object] = []

    def one() -> None:
        db = Database(settings.db)
        try:
            start.wait()
            results.append(ingest(db, LocalStore(settings.storage.root), settings, str(src)))
        except BaseException as e:  # reported below
            results.append(e)
        finally:
            db.dispose()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 2 and not [r for r in results if isinstance(r, BaseException)], results
    a, b = results
    assert a.new_items + b.new_items == 400  # type: ignore[attr-defined]
    db = Database(settings.db)
    try:
        assert _check_every_row_has_its_bytes(db, LocalStore(settings.storage.root)) == 400
        assert _count(db, ItemAlias) == 420 and _count(db, SourceObject) == 420
    finally:
        db.dispose()


def test_unreachable_s3_source_fails_loudly_naming_the_server_and_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from labelloop.cli.app import app

    monkeypatch.chdir(tmp_path)
    port = free_port()  # nothing listens there
    env = {
        "LABELLOOP_HOME": str(tmp_path / "home"),
        "LABELLOOP_DB__URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "LABELLOOP_STORAGE__ROOT": str(tmp_path / "objects"),
        "LABELLOOP_STORAGE__ENDPOINT": f"127.0.0.1:{port}",
    }
    r = CliRunner().invoke(app, ["ingest", "s3://inbox/photos/"], env=env)
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert f"S3 source s3://inbox/photos/ at 127.0.0.1:{port} (step: check the bucket)" in text
