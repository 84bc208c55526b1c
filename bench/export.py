"""Validation + export throughput and memory on 100,000 records with referenced images (on demand).

    .venv/bin/python bench/export.py [--records 100000] [--images 2000]

Generates ``vehicle_extraction`` records directly in a SQLite curation DB (2% with a defect, so
the quarantine path runs too), each on its own item whose bytes are one of ``--images`` small PNGs
made distinct by a text chunk carrying the item's number (so every item is honestly
content-addressed: its sha256 is that of its bytes). Then, each in its own process (own peak RSS):

* labelloop at 1/10 and at the full size: ``validate_spec`` (Great Expectations, streamed in
  chunks) + ``export_dataset`` (three formats, checker, card, images referenced in the spec's
  pool, manifest last; built by worker processes, ``export.workers``); peak RSS is that of the
  whole process tree, summed (sampled); then, at the full size, one record changed, validated and exported again:
  the second version's new image bytes (new inodes under ``datasets/``) and all its new bytes;
* baselines on the same DB: the records streamed and written with plain ``json.dumps`` to a JSONL
  file (the least an exporter does), and the same plus a plain copy of each record's image.

The last line is one JSON object: ``json_ratio`` (labelloop export records/s / json.dumps
records/s), ``rss_growth`` (peak RSS full / 1/10), ``second_version_image_bytes``, and more.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

from PIL import Image

W, H = 320, 240
SPEC = "vehicle_extraction"


def _settings(home: Path):  # type: ignore[no-untyped-def]
    from labelloop.config import DatabaseSettings, Settings, StorageSettings

    return Settings(
        home=home,
        db=DatabaseSettings(url=f"sqlite:///{home}/bench.db"),
        storage=StorageSettings(root=home / "objects"),
    )


def _record(rng: random.Random, i: int) -> dict:
    x1, y1 = rng.randrange(0, W - 60), rng.randrange(0, H - 30)
    rec = {
        "plate_number": f"AB{i % 100000:05d}",
        "plate_color": rng.choice(["blue", "yellow", "green", "white"]),
        "vehicle_type": rng.choice(["car", "suv", "van", "truck", "bus"]),
        "brand": rng.choice(["Toyota", "BYD", "Volvo", ""]),
        "color": rng.choice(["white", "black", "silver", "red", "blue"]),
        "plate_box": [x1, y1, x1 + 50, y1 + 20],
        "vehicle_box": [5, 5, W - 5, H - 5],
    }
    if i % 50 == 7:  # 2% defects: a box leaving the image
        rec["vehicle_box"] = [5, 5, W + 40, H - 5]
    return rec


def _png_text_chunk(text: bytes) -> bytes:
    body = b"tEXt" + b"labelloop\x00" + text
    return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))


def generate(home: Path, n_records: int, n_images: int) -> None:
    from sqlalchemy import insert

    from labelloop.db import Database, Item, Record
    from labelloop.validation import record_hash

    settings = _settings(home)
    db = Database(settings.db)
    db.upgrade()
    root = settings.storage.root
    bases = []
    for j in range(n_images):
        img = Image.new("RGB", (W, H), ((j * 7) % 256, (j * 13) % 256, (j * 29) % 256))
        img.putpixel((j % W, (j // W) % H), (255, 255, 255))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        bases.append(buf.getvalue())
    shas, sizes = [], []
    for i in range(n_records):  # distinct bytes per item: a tEXt chunk before IEND
        base = bases[i % n_images]
        data = base[:-12] + _png_text_chunk(f"item {i}".encode()) + base[-12:]
        sha = hashlib.sha256(data).hexdigest()
        path = root / "raw" / sha[:2] / f"{sha}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        shas.append(sha)
        sizes.append(len(data))
    rng = random.Random(7)
    chunk = 5000
    with db.transaction() as s:
        for start in range(0, n_records, chunk):
            ids = range(start, min(start + chunk, n_records))
            s.execute(
                insert(Item),
                [
                    {
                        "id": i + 1,
                        "sha256": shas[i],
                        "media_type": "image",
                        "mime": "image/png",
                        "ext": "png",
                        "size_bytes": sizes[i],
                        "storage_key": f"raw/{shas[i][:2]}/{shas[i]}.png",
                        "width": W,
                        "height": H,
                        "meta": {},
                    }
                    for i in ids
                ],
            )
            recs = [_record(rng, i) for i in ids]
            s.execute(
                insert(Record),
                [
                    {
                        "item_id": i + 1,
                        "spec": SPEC,
                        "provenance": ("human", "auto", "audited")[i % 3],
                        "model": "qwen2.5-vl-7b",
                        "model_version": "bench",
                        "annotator": None,
                        "confidence": rng.random(),
                        "record": r,
                        "content_hash": record_hash(r),
                    }
                    for i, r in zip(ids, recs, strict=True)
                ],
            )
    db.dispose()


def _inodes(root: Path) -> dict[int, int]:
    """{inode: size} of every file under ``root`` (hard links counted once)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[st.st_ino] = st.st_size
    return out


class TreeRSS:
    """Peak of the summed RSS of this process and its descendants (the export's worker
    processes), sampled every 20 ms: ``ru_maxrss`` alone would leave the workers out."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        total = 0
        for p in [self.me, *self.me.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a worker that just exited
                total += p.memory_info().rss
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        # the sampler can miss a short spike of the main process: its own ru_maxrss bounds it
        return max(self.peak / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def child_labelloop(home: Path, limit: int, second: bool) -> dict:
    from sqlalchemy import delete, select

    from labelloop.db import Database, Record
    from labelloop.export import export_dataset
    from labelloop.specs import SpecRegistry
    from labelloop.storage import LocalStore
    from labelloop.validation import record_hash, validate_spec

    settings = _settings(home)
    db = Database(settings.db)
    if limit:  # a smaller run for the memory comparison: keep the first `limit` records
        with db.transaction() as s:
            cut = s.scalars(select(Record.id).order_by(Record.id).offset(limit).limit(1)).first()
            if cut is not None:
                s.execute(delete(Record).where(Record.id >= cut))
    store = LocalStore(settings.storage.root)
    spec = SpecRegistry().get(SPEC)
    import great_expectations  # noqa: F401  - import time (seconds) is not validation work

    with TreeRSS() as rss:
        t0 = time.perf_counter()
        summary = validate_spec(db, store, settings, spec)
        t1 = time.perf_counter()
        result = export_dataset(db, store, settings, spec, validation_run_id=summary.validation_run_id)
        t2 = time.perf_counter()
    assert result.created, result.reason
    out = {
        "records": summary.n_records,
        "failed": summary.n_failed,
        "exported": result.counts["records"],
        "validate_s": t1 - t0,
        "export_s": t2 - t1,
        "images_stored": result.counts["images_stored"],
        # every process of the export (the main one and its workers), summed
        "peak_rss_mb": rss.peak_mb,
        "main_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    if second:  # change one record, validate and export again: what does the new version write?
        datasets = settings.storage.root / "datasets"
        before = _inodes(datasets)
        with db.transaction() as s:
            row = s.scalars(select(Record).order_by(Record.id).limit(1)).one()
            row.record = {**row.record, "brand": "Volvo" if row.record.get("brand") != "Volvo" else "BYD"}
            row.content_hash = record_hash(row.record)
        summary2 = validate_spec(db, store, settings, spec)
        t3 = time.perf_counter()
        r2 = export_dataset(db, store, settings, spec, validation_run_id=summary2.validation_run_id)
        out["second_export_s"] = time.perf_counter() - t3
        assert r2.created and r2.version == "v0002", r2
        new = {ino: size for ino, size in _inodes(datasets).items() if ino not in before}
        image_dirs = (datasets / SPEC / "images", datasets / SPEC / r2.version / "images")
        image_inodes = {os.stat(p).st_ino for d in image_dirs if d.is_dir() for p in d.iterdir()}
        out["second_version_image_bytes"] = sum(size for ino, size in new.items() if ino in image_inodes)
        out["second_version_bytes"] = sum(new.values())
        out["second_version_images_stored"] = r2.counts["images_stored"]
    return out


def child_baseline(home: Path, copy_images: bool) -> dict:
    from sqlalchemy import select

    from labelloop.db import Database, Item, Record

    settings = _settings(home)
    db = Database(settings.db)
    out = home / "baseline"
    out.mkdir(exist_ok=True)
    root = settings.storage.root
    t0 = time.perf_counter()
    n = 0
    stmt = (
        select(Record.id, Record.record, Item.sha256, Item.storage_key)
        .join(Item, Item.id == Record.item_id)
        .execution_options(yield_per=2000)
    )
    with db.session() as s, (out / "records.jsonl").open("w") as f:
        for rid, rec, sha, key in s.execute(stmt):
            f.write(json.dumps({"id": rid, "image": f"images/{sha}.png", "record": rec}) + "\n")
            if copy_images:
                (out / f"{sha}.png").write_bytes((root / key).read_bytes())
            n += 1
    return {
        "records": n,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(*args: str) -> dict:
    argv = [sys.executable, __file__, "--child", *args]
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    if args.child:
        kind, home = args.child[0], Path(args.child[1])
        if kind == "labelloop":
            res = child_labelloop(home, int(args.child[2]), args.child[2] == "0")
        else:
            res = child_baseline(home, kind == "baseline-images")
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-") as tmp:
        template = Path(tmp) / "template"
        print(f"generating {args.records} records on {args.images} images ...", flush=True)
        t = time.perf_counter()
        generate(template, args.records, args.images)
        print(f"  {time.perf_counter() - t:.1f} s", flush=True)
        runs = {}
        for name, extra in (("small", str(args.records // 10)), ("full", "0")):
            home = Path(tmp) / name
            subprocess.run(["cp", "-a", str(template), str(home)], check=True)
            runs[name] = run_child("labelloop", str(home), extra)
            print(f"  labelloop {name}: {runs[name]}", flush=True)
        base = run_child("baseline", str(template))
        base_img = run_child("baseline-images", str(template))
    full, small = runs["full"], runs["small"]
    n = full["records"]
    rate = {
        "validate": n / full["validate_s"],
        "export": full["exported"] / full["export_s"],
        "total": n / (full["validate_s"] + full["export_s"]),
    }
    b_json = base["records"] / base["seconds"]
    b_img = base_img["records"] / base_img["seconds"]
    print()
    print(f"records: {n} ({full['failed']} quarantined, {full['exported']} exported)")
    rows = [
        ("baseline json.dumps to JSONL", b_json, None, ""),
        ("baseline json.dumps + image copy", b_img, None, ""),
        ("labelloop validate (GX)", rate["validate"], b_json, "json"),
        ("labelloop export (3 formats, pool)", rate["export"], b_json, "json"),
        ("labelloop export (3 formats, pool)", rate["export"], b_img, "json+image"),
        ("labelloop validate + export", rate["total"], b_json, "json"),
    ]
    for label, value, ref, ref_name in rows:
        ratio = f"  = {value / ref:.3f} x {ref_name} baseline" if ref else ""
        print(f"{label + ':':40s}{value:9.0f} records/s{ratio}")
    growth = full["peak_rss_mb"] / small["peak_rss_mb"]
    print(
        f"peak RSS: labelloop {small['peak_rss_mb']:.0f} MB at {small['records']} records, "
        f"{full['peak_rss_mb']:.0f} MB at {n} (x{growth:.2f}); baseline {base['peak_rss_mb']:.0f} MB"
    )
    print(
        f"second version (one record changed): {full['second_version_image_bytes']} image bytes, "
        f"{full['second_version_bytes']} bytes in all, {full['second_export_s']:.1f} s"
    )
    print(
        json.dumps(
            {
                "bench": "export",
                "records": n,
                "json_ratio": round(rate["export"] / b_json, 3),
                "json_image_ratio": round(rate["export"] / b_img, 3),
                "validate_export_json_ratio": round(rate["total"] / b_json, 3),
                "export_records_per_s": round(rate["export"]),
                "validate_records_per_s": round(rate["validate"]),
                "baseline_json_records_per_s": round(b_json),
                "baseline_json_image_records_per_s": round(b_img),
                "rss_growth": round(growth, 3),
                "peak_rss_mb_small": round(small["peak_rss_mb"]),
                "peak_rss_mb_full": round(full["peak_rss_mb"]),
                "second_version_image_bytes": full["second_version_image_bytes"],
                "second_version_bytes": full["second_version_bytes"],
                "second_export_s": round(full["second_export_s"], 2),
                # the steady state of a nightly: the pool holds the images already
                "second_version_json_ratio": round(full["exported"] / full["second_export_s"] / b_json, 3),
                "images_stored_first_version": full["images_stored"],
            }
        )
    )


if __name__ == "__main__":
    main()
