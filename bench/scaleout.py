"""Scale-out figure: the same pre-label workload on one Celery worker and on two, in one run.

Starts what the scale-out test starts (tests/airflow_cluster.py: api-server, scheduler,
dag-processor, triggerer and Celery workers on the local Redis and PostgreSQL; a Label Studio
server; the S3 test server; the vLLM test server as a subprocess with enough slots that the
workers, not the server, are the limit), then runs ``labelloop_prelabel`` through the REST API:

1. one worker: ``--items`` new images in 4 mapped batches;
2. a second worker joins: as many other new images, same batches (equal footing: same sizes,
   same model latency, same per-task concurrency);
3. the kill run: more new images, worker1 ``kill -9``-ed in the middle of its batches; the
   duplicate and lost counts come from the curation DB and Label Studio afterwards.

items/s is this run's items over the pre-label phase's wall time (first mapped try's start to the
last one's end, from the task instances), so ingest and the Label Studio import are not in it; the
per-task start-up of Airflow's task runner is. Each worker runs ``--worker-concurrency`` tasks at
once and each task keeps ``--vllm-concurrency`` requests in flight.

    .venv/bin/python bench/scaleout.py                  # 600 images per phase, batches of 150
    .venv/bin/python bench/scaleout.py --items 200 --no-kill

The last line is one JSON object: items, one_worker_items_per_s, two_workers_items_per_s, ratio,
duplicates, lost (and the settings). Exit status 1 when the kill run lost or duplicated anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from airflow_cluster import AirflowCluster, free_port  # noqa: E402
from scaleout_workload import counts, labelloop_env, make_images, run_prelabel, teach  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from labelloop.config import DatabaseSettings  # noqa: E402
from labelloop.db import Database  # noqa: E402
from labelloop.review.server import LocalLabelStudio  # noqa: E402

PG_ADMIN_URL = os.environ.get("LABELLOOP_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def say(msg: str) -> None:
    print(f"[scaleout] {msg}", file=sys.stderr, flush=True)


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=600, help="images per phase")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--latency-ms", type=float, default=200)
    ap.add_argument("--vllm-concurrency", type=int, default=4, help="requests in flight per task")
    ap.add_argument("--worker-concurrency", type=int, default=2, help="tasks at once per worker")
    ap.add_argument("--no-kill", action="store_true", help="skip the kill run")
    args = ap.parse_args()
    batch = -(-args.items // args.batches)

    work = Path(tempfile.mkdtemp(prefix="labelloop-scaleout-"))
    procs: list[subprocess.Popen] = []
    ls = cluster = db = None
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    db_name = f"labelloop_bench_so_{uuid.uuid4().hex[:8]}"
    try:
        s3_port, vllm_port = free_port(), free_port()
        procs.append(
            spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], work / "s3.log")
        )
        wait_http(f"http://127.0.0.1:{s3_port}/moto-api/", procs[-1])
        slots = 2 * args.worker_concurrency * args.vllm_concurrency * 2  # twice what two workers can ask
        vllm_cmd = [sys.executable, str(REPO / "tests" / "vllm_server.py"), "--port", str(vllm_port)]
        vllm_cmd += ["--slots", str(slots), "--latency-ms", str(args.latency_ms)]
        procs.append(spawn(vllm_cmd, work / "vllm.log"))
        vllm_url = f"http://127.0.0.1:{vllm_port}"
        wait_http(f"{vllm_url}/v1/models", procs[-1])
        say("starting Label Studio")
        ls = LocalLabelStudio(
            executable=REPO / ".venv-ls" / "bin" / "label-studio",
            data_dir=work / "ls-data",
            local_files_root=work / "ls-files",
        )
        ls.start(timeout=300)
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{db_name}"'))
        db_url = make_url(PG_ADMIN_URL).set(database=db_name).render_as_string(hide_password=False)
        db = Database(DatabaseSettings(url=db_url))
        db.upgrade()
        env = labelloop_env(
            home=work / "labelloop-home",
            curation_db_url=db_url,
            s3={
                "endpoint": f"127.0.0.1:{s3_port}",
                "access_key": "testing",
                "secret_key": "testing",
                "bucket": "bench-scaleout",
                "region": "us-east-1",
            },
            label_studio_url=ls.url,
            label_studio_token=ls.token,
            vllm_base_url=f"{vllm_url}/v1",
            vllm_model="Qwen/Qwen2.5-VL-7B-Instruct",
            vllm_concurrency=args.vllm_concurrency,
        )
        say("starting the Airflow deployment with one worker")
        cluster = AirflowCluster(
            workdir=work / "cluster",
            env=env,
            workers=1,
            worker_concurrency=args.worker_concurrency,
            pg_admin_url=PG_ADMIN_URL,
        ).start()
        client = _ls_client(ls)

        rates: dict[int, float] = {}
        for n_workers, seed in ((1, 11), (2, 12)):
            if n_workers == 2:
                cluster.start_worker("worker2")
            wl = make_images(work / f"in-{seed}", args.items, seed=seed, low_every=10)
            teach(vllm_url, wl)
            r = run_prelabel(cluster, wl, batch_size=batch)
            if r.state != "success":
                raise SystemExit(f"run with {n_workers} worker(s) {r.state}: {r.tries}")
            span = r.prelabel_span_s()
            rates[n_workers] = args.items / span
            say(
                f"{n_workers} worker(s): {args.items} items in {span:.1f}s of pre-label "
                f"({rates[n_workers]:.1f} items/s; run {r.wall_s:.0f}s; hosts {sorted(r.hostnames())})"
            )

        duplicates = lost = None
        if not args.no_kill:
            wl = make_images(work / "in-kill", args.items, seed=13, low_every=10)
            teach(vllm_url, wl)
            r = run_prelabel(cluster, wl, batch_size=batch, db=db, kill="worker1", vllm_url=vllm_url)
            c = counts(db, wl, client)
            duplicates, lost = c.duplicates, c.lost + (args.items - c.ok_predictions)
            say(
                f"kill run: {r.state} in {r.wall_s:.0f}s, worker1 killed at {r.done_at_kill} items "
                f"running batches {r.killed_tis}; {c}"
            )
            if r.state != "success":
                lost = args.items - c.ok_predictions
        figures = {
            "items": args.items,
            "batches": args.batches,
            "one_worker_items_per_s": round(rates[1], 2),
            "two_workers_items_per_s": round(rates[2], 2),
            "ratio": round(rates[2] / rates[1], 3),
            "duplicates": duplicates,
            "lost": lost,
            "worker_concurrency": args.worker_concurrency,
            "vllm_concurrency_per_task": args.vllm_concurrency,
            "vllm_latency_ms": args.latency_ms,
            "vllm_slots": slots,
            "machine": f"{os.cpu_count()} cores shared by every process of the deployment and the test servers",
        }
        print(json.dumps(figures))
        return 1 if (duplicates or lost) else 0
    finally:
        if cluster is not None:
            cluster.stop()
        if ls is not None:
            ls.stop()
        for p in procs:
            stop(p)
        if db is not None:
            db.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()


def _ls_client(ls: LocalLabelStudio):  # type: ignore[no-untyped-def]
    from labelloop.review.client import make_client

    return make_client(ls.url, ls.token)


if __name__ == "__main__":
    sys.exit(main())
