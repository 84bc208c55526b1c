"""Pre-labeling throughput against a saturated model server, and memory that stays flat.

Starts the vLLM test server (``tests/vllm_server.py``) as a subprocess with ``--slots`` x
``--latency-ms`` (64 x 200 ms: an ideal of 320 requests/s), generates images into a fresh curation
DB (SQLite) and local object store, then runs the real pre-label path (runner -> VLLMBackend ->
image preparation, base64, HTTP, schema check, confidence, DB insert) in a child process, once
per image count, so each run's memory is its own. Prints achieved/ideal throughput, client CPU
per image and the RSS high-water mark of each run.

    .venv/bin/python bench/prelabel_throughput.py                     # 2000 and 500 images
    .venv/bin/python bench/prelabel_throughput.py --resize-share 0.25  # a quarter need resizing

Images are model-ready by default (sides multiples of 28, as a dataset resized once already):
the client sends them untouched, so the run measures the platform's own overhead. With
``--resize-share`` that share has arbitrary sizes and is decoded, resized and re-encoded on the
client; on a 2-core machine that shares its cores with the test server, that CPU work is what
then limits throughput (see the printed CPU per image).

Exit status 1 when the largest run reaches less than ``--min-ratio`` (default 0.9) of the ideal,
any prediction fails, or the RSS high-water mark grows by more than ``--max-rss-growth-mb``
between the smallest and the largest run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = "vehicle_extraction"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"test server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def settings_for(home: Path, base_url: str, concurrency: int) -> Any:
    from labelloop.config import DatabaseSettings, Settings, StorageSettings, VLLMSettings

    return Settings(
        home=home,
        db=DatabaseSettings(url=f"sqlite:///{home / 'curation.db'}"),
        storage=StorageSettings(backend="local", root=home / "objects"),
        # top_logprobs=0: confidence uses the sampled tokens' logprobs only; alternatives would
        # double the response size for nothing
        vllm=VLLMSettings(base_url=base_url, concurrency=concurrency, timeout_s=60, max_retries=2, top_logprobs=0),
    )


def make_images(home: Path, n: int, resize_share: float = 0.0, seed: int = 7) -> None:
    """``n`` distinct JPEGs of 336-924 px a side, registered as items.

    ``1 - resize_share`` of them are model-ready (sides multiples of 28); the rest are a few
    pixels off and need the full decode, bicubic resize and JPEG encode on the client.
    """
    from PIL import Image, ImageDraw

    from labelloop.db import Database, Item
    from labelloop.storage import LocalStore

    settings = settings_for(home, "http://unused/v1", 1)
    db = Database(settings.db)
    db.upgrade()
    store = LocalStore(settings.storage.root)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        w, h = 28 * rng.randrange(12, 34), 28 * rng.randrange(12, 34)
        if rng.random() < resize_share:
            w, h = w + rng.randrange(1, 28), h + rng.randrange(1, 28)
        img = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = rng.randrange(w), rng.randrange(h)
            draw.rectangle([x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)], fill=rng.randrange(256))
        draw.text((10, 10), f"img {i}", fill=(255, 255, 255))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        key = f"raw/{sha[:2]}/{sha}.jpg"
        store.put(key, data)
        rows.append(
            Item(
                sha256=sha,
                media_type="image",
                mime="image/jpeg",
                ext="jpg",
                size_bytes=len(data),
                storage_key=key,
                width=w,
                height=h,
            )
        )
    with db.transaction() as s:
        s.add_all(rows)
    db.dispose()


def child(home: Path, base_url: str, concurrency: int, worker: int = 0, workers: int = 1) -> None:
    """Run the pre-labeling (this worker's share of the items) and print one JSON line."""
    import psutil

    from labelloop.db import Database
    from labelloop.prelabel.runner import run_prelabel
    from labelloop.prelabel.vllm import VLLMBackend
    from labelloop.specs import SpecRegistry
    from labelloop.storage import LocalStore

    settings = settings_for(home, base_url, concurrency)
    db = Database(settings.db)
    store = LocalStore(settings.storage.root)
    spec = SpecRegistry().get(SPEC)
    backend = VLLMBackend(settings, store)

    item_ids = None
    if workers > 1:  # a mapped batch: every `workers`-th item, as the DAG splits a run
        from sqlalchemy import select

        from labelloop.db import Item

        with db.session() as s:
            item_ids = [i for i in s.scalars(select(Item.id).order_by(Item.id)) if i % workers == worker]

    async def run() -> Any:
        try:
            return await run_prelabel(db, store, spec, backend, item_ids=item_ids, concurrency=concurrency)
        finally:
            await backend.aclose()

    proc = psutil.Process()
    rss_start = proc.memory_info().rss / 2**20
    peak = [rss_start]
    stop = threading.Event()

    def sample() -> None:  # the RSS high-water mark of the run itself, every 20 ms
        while not stop.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu0 = time.process_time()
    t_start = time.time()
    stats = asyncio.run(run())
    cpu = time.process_time() - cpu0
    t_end = time.time()
    stop.set()
    sampler.join()
    figures = {
        "ok": stats.ok,
        "failed": stats.failed,
        "seconds": stats.seconds,
        "cpu_s": cpu,
        "rss_start_mb": rss_start,
        "peak_rss_mb": peak[0],
        "t_start": t_start,
        "t_end": t_end,
    }
    print(json.dumps(figures))


def run_one(n: int, args: argparse.Namespace, base_url: str, ideal: float) -> dict[str, Any]:
    """One run of ``n`` images by ``args.workers`` worker processes sharing ``args.concurrency``."""
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-") as tmp:
        home = Path(tmp)
        make_images(home, n, args.resize_share)
        share = max(1, args.concurrency // args.workers)
        child_cmd = [sys.executable, __file__, "--child", "--home", str(home), "--base-url", base_url]
        procs = [
            subprocess.Popen(
                [*child_cmd, "--concurrency", str(share), "--worker", str(w), "--workers", str(args.workers)],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            for w in range(args.workers)
        ]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError("a bench worker failed")
    r = {
        "ok": sum(o["ok"] for o in outs),
        "failed": sum(o["failed"] for o in outs),
        # wall time from the first worker's start to the last one's end
        "seconds": max(o["t_end"] for o in outs) - min(o["t_start"] for o in outs),
        "cpu_s": sum(o["cpu_s"] for o in outs),
        "rss_start_mb": sum(o["rss_start_mb"] for o in outs),
        "peak_rss_mb": sum(o["peak_rss_mb"] for o in outs),
    }
    r["rps"] = r["ok"] / r["seconds"]
    r["ratio"] = r["rps"] / ideal
    print(
        f"{n:>6} images: {r['seconds']:.2f} s, {r['rps']:.1f} req/s of ideal {ideal:.0f} "
        f"-> achieved/ideal {r['ratio']:.3f}; ok={r['ok']} failed={r['failed']}; "
        f"client CPU {1000 * r['cpu_s'] / n:.2f} ms/image; "
        f"RSS {r['rss_start_mb']:.1f} MB at start, {r['peak_rss_mb']:.1f} MB peak during the run",
        flush=True,
    )
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, action="append", help="image counts to run (repeatable)")
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--concurrency", type=int, default=64, help="runner concurrency (settings.vllm.concurrency)")
    p.add_argument("--resize-share", type=float, default=0.0, help="share of images needing a client-side resize")
    p.add_argument("--min-ratio", type=float, default=0.9)
    p.add_argument("--max-rss-growth-mb", type=float, default=20.0)
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes, each running a share of the items (mapped batches)"
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.home, args.base_url, args.concurrency, args.worker, args.workers)
        return 0

    counts = sorted(set(args.images or [2000, 500]), reverse=True)
    port = free_port()
    server_cmd = [sys.executable, str(REPO / "tests" / "vllm_server.py"), "--port", str(port)]
    server = subprocess.Popen([*server_cmd, "--slots", str(args.slots), "--latency-ms", str(args.latency_ms)])
    ideal = min(args.slots, args.concurrency) / (args.latency_ms / 1000)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server)
        results = {n: run_one(n, args, f"http://127.0.0.1:{port}/v1", ideal) for n in counts}
    finally:
        server.terminate()
        server.wait(10)

    big, small = results[counts[0]], results[counts[-1]]
    growth = big["peak_rss_mb"] - small["peak_rss_mb"]
    print(f"achieved/ideal ({counts[0]} images): {big['ratio']:.3f} (target >= {args.min_ratio})")
    print(
        f"peak RSS: {small['peak_rss_mb']:.1f} MB with {counts[-1]} images, {big['peak_rss_mb']:.1f} MB with "
        f"{counts[0]} images (growth {growth:+.1f} MB)"
    )
    print(
        f"images needing a client-side resize: {args.resize_share:.0%}; {os.cpu_count()} cores shared by "
        "the client and the test server; load average before the run: " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    ok = big["ratio"] >= args.min_ratio and big["failed"] == 0 and growth <= args.max_rss_growth_mb
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
