"""Ingest throughput and memory: 10,000 generated small images (run on demand, not in CI).

    .venv/bin/python bench/ingest.py [--files 10000]

Prints files/s for labelloop's ingest and for a baseline measured in the same run on the same
files (read + sha256 + copy into a content-addressed folder, i.e. the least work any ingest must
do), and peak RSS of separate runs at 1/10 and the full size, to show memory is flat in the
number of files.
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def make_images(folder: Path, n: int) -> None:
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


def baseline(src: Path, dest: Path) -> float:
    t0 = time.perf_counter()
    n = 0
    for root, _dirs, files in os.walk(src):
        for name in files:
            data = (Path(root) / name).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            out = dest / sha[:2] / f"{sha}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            n += 1
    return n / (time.perf_counter() - t0)


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
                "seconds": stats.seconds,
                "rss_before_mb": rss0 / 1024,
                "peak_rss_mb": rss1 / 1024,
            }
        )
    )


def run_child(src: Path, limit: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as home:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(src), home, str(limit)],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        print(f"generating {args.files} images ...", flush=True)
        make_images(src, args.files)
        base = baseline(src, Path(tmp) / "baseline")
        shutil.rmtree(Path(tmp) / "baseline")
        small = run_child(src, args.files // 10)
        full = run_child(src, args.files)
    rate = full["files"] / full["seconds"]
    print(f"baseline (read + sha256 + copy):  {base:8.0f} files/s")
    print(f"labelloop ingest ({full['files']} files): {rate:8.0f} files/s  = {rate / base:.2f} x baseline")
    print(
        f"peak RSS: {small['peak_rss_mb']:.0f} MB at {small['files']} files, {full['peak_rss_mb']:.0f} MB at "
        f"{full['files']} files  (ratio {full['peak_rss_mb'] / small['peak_rss_mb']:.2f})"
    )


if __name__ == "__main__":
    main()
