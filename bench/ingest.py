"""Ingest throughput and memory on small PNGs and on real-size photos, in one run (on demand, not CI).

    .venv/bin/python bench/ingest.py [--files 10000] [--photos 240] [--rounds 3]

Two corpora, generated here:

* ``small``: ``--files`` 64x48 PNGs (distinct bytes each), in folders of 1,000;
* ``photo``: ``--photos`` JPEGs of 1 to 12 megapixels (cycling through the sizes, ~0.25 to 3 MB,
  the size of phone photos), a third of them with an EXIF orientation that turns them (3, 6, 8).
  Twelve pictures are encoded once per size; every file then gets its own EXIF block (a serial
  number), so every file has distinct bytes and labelloop hashes, stores and probes each one, as
  it would a real photo.

For each corpus the baseline is the least work any ingest must do, measured in the same run on
the same files and on equal footing (its own child process, the same warm page cache): read each
file, sha256 it, copy it into a content-addressed folder. It is timed before and after labelloop's
ingest and averaged, so load drifting on a shared machine hits both sides; ``--rounds`` such rounds
are run and the median ratio reported (files/s figures are medians too). labelloop's ingest runs
in a child process too (fresh SQLite DB and object folder, each time), with its timing taken
inside ``ingest()`` (process start and the DB migration are not counted; the probe pool's start
is). The baseline writes to the page cache only; labelloop's objects are durable (flushed to disk)
before their rows are committed, which the figure includes.

Memory: peak RSS of the small-PNG ingest at 1/10 and at the full count (``rss_growth`` = full /
tenth; flat memory is ~1.0).

The last line is one JSON object: ``small_ratio``, ``photo_ratio`` (labelloop / baseline files/s),
``rss_growth`` and the figures behind them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def make_pngs(folder: Path, n: int) -> None:
    rng = random.Random(42)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        img = Image.new("RGB", (64, 48), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        img.putpixel((i % 64, (i // 64) % 48), (i % 256, (i // 256) % 256, 7))  # unique bytes per file
        buf = io.BytesIO()
        img.save(buf, "PNG")
        (sub / f"img{i:06d}.png").write_bytes(buf.getvalue())


def _picture(megapixels: int, seed: int) -> bytes:
    """A 4:3 JPEG with photo-like statistics (smooth structure plus sensor-like noise), no EXIF."""
    w = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    h = w * 3 // 4
    random.seed(seed)
    bands = [
        Image.effect_noise((max(1, w // 8), max(1, h // 8)), 60).resize((w, h), Image.Resampling.BILINEAR),
        Image.linear_gradient("L").rotate(seed * 37 % 360).resize((w, h)),
        Image.effect_noise((max(1, w // 4), max(1, h // 4)), 40).resize((w, h), Image.Resampling.BILINEAR),
    ]
    grain = Image.effect_noise((w, h), 12)
    img = Image.merge("RGB", [Image.blend(b, grain, 0.3) for b in bands])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _with_exif(jpeg: bytes, serial: int, orientation: int | None) -> bytes:
    """``jpeg`` with an APP1 EXIF segment (serial number, optional orientation) after SOI."""
    exif = Image.Exif()
    exif[0x010E] = f"bench photo {serial:06d}"  # ImageDescription: makes the bytes unique
    exif[0x0110] = "labelloop bench camera"  # Model
    if orientation:
        exif[0x0112] = orientation
    payload = exif.tobytes()  # b"Exif\0\0" + TIFF
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def make_photos(folder: Path, n: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    bases = {mp: _picture(mp, mp) for mp in range(1, 13)}
    total = 0
    for i in range(n):
        mp = i % 12 + 1
        orientation = (3, 6, 8)[i // 3 % 3] if i % 3 == 0 else None
        data = _with_exif(bases[mp], i, orientation)
        (folder / f"IMG_{i:05d}.jpg").write_bytes(data)
        total += len(data)
    return total


def baseline(src: str, dest: str) -> None:
    """Read + sha256 + copy into a content-addressed folder; prints files/s (own process)."""
    t0 = time.perf_counter()
    n = 0
    for root, _dirs, files in os.walk(src):
        for name in sorted(files):
            data = (Path(root) / name).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            out = Path(dest) / sha[:2] / f"{sha}{Path(name).suffix}"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            n += 1
    print(json.dumps({"files": n, "seconds": time.perf_counter() - t0}))


def child(src: str, home: str, limit: int) -> None:
    """Run one ingest in this process and print JSON figures (own process: own peak RSS)."""
    from labelloop.config import DatabaseSettings, Settings, StorageSettings
    from labelloop.db import Database
    from labelloop.ingest import ingest
    from labelloop.storage import open_store

    settings = Settings(
        home=Path(home),
        db=DatabaseSettings(url=f"sqlite:///{home}/bench.db"),
        storage=StorageSettings(root=Path(home) / "objects"),
    )
    db = Database(settings.db)
    db.upgrade()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = ingest(db, open_store(settings.storage), settings, src, limit=limit)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "files": stats.seen,
                "new": stats.new_items,
                "rejected": stats.rejected,
                "seconds": stats.seconds,
                "rss_before_mb": rss0 / 1024,
                "peak_rss_mb": rss1 / 1024,
            }
        )
    )


def _run(args: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_baseline(src: Path, scratch: Path) -> float:
    dest = scratch / "baseline"
    res = _run(["--baseline", str(src), str(dest)])
    shutil.rmtree(dest)
    return res["files"] / res["seconds"]


def run_ingest(src: Path, scratch: Path, limit: int) -> dict[str, float]:
    home = scratch / "home"
    try:
        res = _run(["--child", str(src), str(home), str(limit)])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if res["rejected"]:
        raise SystemExit(f"bench corpus had {res['rejected']} rejects: {res}")
    return res


def measure(src: Path, scratch: Path, n: int, rounds: int) -> tuple[float, float, float, dict[str, float]]:
    """(median ratio, labelloop files/s, baseline files/s, the last ingest's figures).

    Each round times the baseline right before and right after one labelloop ingest and takes
    labelloop / mean(baseline); the median over rounds is the ratio. On a shared machine the load
    moves by a factor of several within minutes, and this keeps both sides in the same minute.
    """
    ratios, rates, bases = [], [], []
    res: dict[str, float] = {}
    for _ in range(rounds):
        before = run_baseline(src, scratch)
        res = run_ingest(src, scratch, n)
        after = run_baseline(src, scratch)
        rate, base = res["files"] / res["seconds"], (before + after) / 2
        ratios.append(rate / base)
        rates.append(rate)
        bases.append(base)
    return statistics.median(ratios), statistics.median(rates), statistics.median(bases), res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--photos", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=3)
    ap.add_argument("--baseline", nargs=2)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    if args.baseline:
        baseline(*args.baseline)
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("LABELLOOP_BENCH_TMP")) as tmp:
        scratch = Path(tmp)
        print(f"generating {args.files} PNGs and {args.photos} photos ...", flush=True)
        make_pngs(scratch / "small", args.files)
        photo_bytes = make_photos(scratch / "photos", args.photos)
        small_ratio, small_rate, small_base, small = measure(scratch / "small", scratch, args.files, args.rounds)
        tenth = run_ingest(scratch / "small", scratch, max(1, args.files // 10))
        photo_ratio, photo_rate, photo_base, _photo = measure(scratch / "photos", scratch, args.photos, args.rounds)
    mb = photo_bytes / 1e6
    print(f"small PNGs: labelloop {small_rate:8.0f} files/s, baseline {small_base:8.0f}, ratio {small_ratio:.2f}")
    print(
        f"photos ({mb / args.photos:.1f} MB avg): labelloop {photo_rate:6.1f} files/s "
        f"({photo_rate * mb / args.photos:.0f} MB/s), baseline {photo_base:6.1f}, ratio {photo_ratio:.2f}"
    )
    print(
        f"peak RSS: {tenth['peak_rss_mb']:.0f} MB at {tenth['files']} files, {small['peak_rss_mb']:.0f} MB at "
        f"{small['files']} files"
    )
    print(
        json.dumps(
            {
                "small_ratio": round(small_ratio, 3),
                "photo_ratio": round(photo_ratio, 3),
                "rss_growth": round(small["peak_rss_mb"] / tenth["peak_rss_mb"], 3),
                "small_files": args.files,
                "small_files_per_s": round(small_rate, 1),
                "small_baseline_files_per_s": round(small_base, 1),
                "photos": args.photos,
                "photo_mb": round(mb, 1),
                "photo_files_per_s": round(photo_rate, 2),
                "photo_baseline_files_per_s": round(photo_base, 2),
                "peak_rss_mb_tenth": round(tenth["peak_rss_mb"], 1),
                "peak_rss_mb_full": round(small["peak_rss_mb"], 1),
                "rounds": args.rounds,
                "cores": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
