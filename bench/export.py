"""Validation + export throughput and memory on 100,000 records (run on demand, not in CI).

    .venv/bin/python bench/export.py [--records 100000] [--images 2000]

Generates ``vehicle_extraction`` records directly in a SQLite curation DB (2% with a defect, so
the quarantine path runs too), on items whose bytes are ``--images`` distinct small PNGs shared
among the items (each item keeps its own sha256, so the version still holds one image file per
record). Then, each in its own process (own peak RSS):

* labelloop: ``validate_spec`` (Great Expectations) + ``export_dataset`` (three formats, checker,
  card, images copied with fsync through the object store, manifest last);
* baseline: the same records streamed from the DB and written with plain ``json.dumps`` to a
  JSONL file; and the same plus a plain copy of each record's image (no fsync, no checks): the
  least any exporter must do; and each image copied through ``ObjectStore.put`` (atomic write +
  fsync) on 16 threads: the floor of the export's image step with this store.

Prints records/s of each, the ratios, and peak RSS at 1/10 and the full size (memory should not
grow with the number of records beyond the per-record bookkeeping).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
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


def generate(home: Path, n_records: int, n_images: int) -> None:
    from sqlalchemy import insert

    from labelloop.db import Database, Item, Record
    from labelloop.storage import LocalStore
    from labelloop.validation import record_hash

    settings = _settings(home)
    db = Database(settings.db)
    db.upgrade()
    store = LocalStore(settings.storage.root)
    keys = []
    for j in range(n_images):
        img = Image.new("RGB", (W, H), ((j * 7) % 256, (j * 13) % 256, (j * 29) % 256))
        img.putpixel((j % W, (j // W) % H), (255, 255, 255))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        sha = hashlib.sha256(buf.getvalue()).hexdigest()
        keys.append(f"raw/{sha[:2]}/{sha}.png")
        store.put(keys[-1], buf.getvalue())
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
                        "sha256": hashlib.sha256(f"bench-{i}".encode()).hexdigest(),
                        "media_type": "image",
                        "mime": "image/png",
                        "ext": "png",
                        "size_bytes": 1000,
                        "storage_key": keys[i % n_images],
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


def child_labelloop(home: Path, limit: int) -> dict:
    from sqlalchemy import delete, select

    from labelloop.db import Database, Record
    from labelloop.export import export_dataset
    from labelloop.specs import SpecRegistry
    from labelloop.storage import LocalStore
    from labelloop.validation import validate_spec

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

    t0 = time.perf_counter()
    summary = validate_spec(db, store, settings, spec)
    t1 = time.perf_counter()
    result = export_dataset(db, store, settings, spec, validation_run_id=summary.validation_run_id)
    t2 = time.perf_counter()
    assert result.created, result.reason
    return {
        "records": summary.n_records,
        "failed": summary.n_failed,
        "exported": result.counts["records"],
        "validate_s": t1 - t0,
        "export_s": t2 - t1,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child_store_copies(home: Path, threads: int = 16) -> dict:
    """Each record's image copied through ObjectStore.put (atomic, fsync) on a thread pool: what
    the export's image step costs at least with this store."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from labelloop.db import Database, Item
    from labelloop.storage import LocalStore

    settings = _settings(home)
    db = Database(settings.db)
    store = LocalStore(settings.storage.root)
    with db.session() as s:
        rows = s.execute(select(Item.sha256, Item.storage_key)).all()
    t0 = time.perf_counter()

    def copy(row: tuple[str, str]) -> None:
        store.put(f"baseline/images/{row[0]}.png", store.get(row[1]))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(copy, rows))
    return {"records": len(rows), "seconds": time.perf_counter() - t0, "peak_rss_mb": 0}


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
            res = child_labelloop(home, int(args.child[2]))
        elif kind == "store-copies":
            res = child_store_copies(home)
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
        base_put = run_child("store-copies", str(template))
    full, small = runs["full"], runs["small"]
    n = full["records"]
    rate = {
        "validate": n / full["validate_s"],
        "export": full["exported"] / full["export_s"],
        "total": n / (full["validate_s"] + full["export_s"]),
    }
    b_json = base["records"] / base["seconds"]
    b_img = base_img["records"] / base_img["seconds"]
    b_put = base_put["records"] / base_put["seconds"]
    print()
    print(f"records: {n} ({full['failed']} quarantined, {full['exported']} exported)")
    rows = [
        ("baseline json.dumps to JSONL", b_json, None, ""),
        ("baseline json.dumps + image copy", b_img, None, ""),
        ("baseline image copies via store.put", b_put, None, ""),
        ("labelloop validate (GX)", rate["validate"], b_json, "json"),
        ("labelloop export (3 formats + images)", rate["export"], b_img, "json+image"),
        ("labelloop export vs store.put copies", rate["export"], b_put, "store.put"),
        ("labelloop validate + export", rate["total"], b_img, "json+image"),
    ]
    for label, value, ref, ref_name in rows:
        ratio = f"  = {value / ref:.3f} x {ref_name} baseline" if ref else ""
        print(f"{label + ':':40s}{value:9.0f} records/s{ratio}")
    print(
        f"peak RSS: labelloop {small['peak_rss_mb']:.0f} MB at {small['records']} records, "
        f"{full['peak_rss_mb']:.0f} MB at {n} (x{full['peak_rss_mb'] / small['peak_rss_mb']:.2f}); "
        f"baseline {base['peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
