"""Label Studio import and sync throughput for 10,000 review tasks (run on demand, not in CI).

    .venv/bin/python bench/review.py [--tasks 10000] [--chunk 500] [--db-url postgresql+psycopg://...]

Starts its own Label Studio server (``.venv-ls``, fresh SQLite data dir), makes ``--tasks`` vehicle
items with predictions in a fresh curation DB (SQLite unless ``--db-url``), routes them all to
review, then measures, in one run:

* import    labelloop's ``import_pending`` (chunks of ``--chunk``, an external-id lookup before each
            chunk, retries off, ids stored), a rerun (nothing pending), and a crash recovery at its
            worst (every row pending again, every task already in Label Studio: lookups only);
* baseline  the same task payloads in ONE raw POST through httpx into another project: no lookups,
            no chunking, no DB -- the floor any importer pays for Label Studio's own work;
* sync      labelloop's ``sync_project`` over the same tasks, each with one annotation (imported
            with the tasks into a third project: creating 10,000 annotations one API call at a time
            would measure that instead), 10% of them corrected; then a rerun. The bulk import stamps
            every task's ``updated_at`` within a few seconds, so the rerun re-reads them all inside
            the overlap window and drops them by (annotation id, updated_at): a worst case;
* read      the baseline for sync: paging the same tasks with their annotations through httpx
            (the same fields the sync asks for), no DB work.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labelloop.config import DatabaseSettings, LabelStudioSettings, Settings, StorageSettings  # noqa: E402
from labelloop.db import Database, Item, Prediction, ReviewTask  # noqa: E402
from labelloop.review.client import make_client  # noqa: E402
from labelloop.review.importer import build_task, import_pending  # noqa: E402
from labelloop.review.media import MediaLinker  # noqa: E402
from labelloop.review.projects import ensure_project  # noqa: E402
from labelloop.review.routing import route_predictions  # noqa: E402
from labelloop.review.server import LocalLabelStudio  # noqa: E402
from labelloop.review.sync import SYNC_FIELDS, sync_project  # noqa: E402
from labelloop.specs import SpecRegistry  # noqa: E402
from labelloop.storage import LocalStore  # noqa: E402
from tests.synthetic import synthetic_items  # noqa: E402

SPEC = "vehicle_extraction"


def make_predictions(db: Database, spec: Any, n: int) -> None:
    with db.session() as s:
        items = synthetic_items(s, (f"bench-review-{i}" for i in range(n)), width=1280, height=960)
        colors = ["blue", "yellow", "green", "white"]
        for i, it in enumerate(items):
            conf = 0.3 + 0.5 * ((i * 7919) % n) / n
            record = {
                "plate_number": f"AB{i:05d}",
                "plate_color": colors[i % 4],
                "vehicle_type": "car",
                "brand": "Toyota",
                "color": "white",
                "plate_box": [400 + i % 100, 700, 560 + i % 100, 750],
                "vehicle_box": [40, 120, 1240, 920],
            }
            s.add(
                Prediction(
                    item_id=it.id,
                    spec=spec.name,
                    backend="bench",
                    model="bench-model",
                    model_version="v1",
                    prompt_hash=spec.prompt_hash,
                    status="ok",
                    record=record,
                    field_confidence={f: conf for f in spec.fields},
                    confidence=conf,
                )
            )
        s.commit()


def payloads(db: Database, settings: Settings, spec: Any, store: LocalStore, ls: Any, pid: int) -> list[dict]:
    media = MediaLinker(settings, store, ls, pid)
    with db.session() as s:
        rows = s.execute(
            select(ReviewTask, Prediction, Item)
            .join(Prediction, Prediction.id == ReviewTask.prediction_id)
            .join(Item, Item.id == ReviewTask.item_id)
            .where(ReviewTask.spec == spec.name)
            .order_by(ReviewTask.id)
        )
        return [build_task(spec, rt, p, it, media)[0] for rt, p, it in rows]


def raw_post(url: str, token: str, pid: int, tasks: list[dict]) -> float:
    t0 = time.perf_counter()
    r = httpx.post(
        f"{url}/api/projects/{pid}/import",
        params={"return_task_ids": "true"},
        json=tasks,
        headers={"Authorization": f"Token {token}"},
        timeout=1800,
    )
    r.raise_for_status()
    assert r.json()["task_count"] == len(tasks), r.text[:300]
    return time.perf_counter() - t0


def raw_read(url: str, token: str, pid: int, page_size: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    n, page = 0, 1
    with httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=600) as c:
        while True:
            params = {"project": pid, "fields": "all", "include": SYNC_FIELDS, "page": page, "page_size": page_size}
            r = c.get("/api/tasks/", params=params)
            if r.status_code == 404:
                break
            got = r.json()["tasks"]
            n += len(got)
            if len(got) < page_size:
                break
            page += 1
    return time.perf_counter() - t0, n


def with_annotations(tasks: list[dict]) -> list[dict]:
    out = []
    for i, t in enumerate(tasks):
        t = copy.deepcopy(t)
        result = copy.deepcopy(t["predictions"][0]["result"])
        if i % 10 == 0:  # a tenth corrected
            for r in result:
                if r["id"] == "plate_number":
                    r["value"]["text"] = [f"ZZ{i:05d}"]
        t["annotations"] = [{"result": result, "lead_time": 3.0}]
        out.append(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--db-url", default=None, help="curation DB (default: a fresh SQLite file)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (Label Studio data, DB)")
    args = ap.parse_args()
    n = args.tasks
    tmp = Path(tempfile.mkdtemp(prefix="bench-review-"))
    server = LocalLabelStudio(
        executable=REPO / ".venv-ls" / "bin" / "label-studio", data_dir=tmp / "ls", local_files_root=tmp / "files"
    )
    print(f"starting Label Studio in {tmp} ...", flush=True)
    t0 = time.perf_counter()
    with server:
        print(f"  up in {time.perf_counter() - t0:.1f} s at {server.url}", flush=True)
        store = LocalStore(tmp / "files" / "objects")
        settings = Settings(
            home=tmp,
            db=DatabaseSettings(url=args.db_url or f"sqlite:///{tmp / 'curation.db'}"),
            storage=StorageSettings(backend="local", root=store.root),
            label_studio=LabelStudioSettings(
                url=server.url,
                token=server.token,
                local_files_root=tmp / "files",
                import_chunk=args.chunk,
                project_prefix="bench",
            ),
        )
        db = Database(settings.db)
        db.upgrade()
        registry = SpecRegistry()
        spec = registry.get(SPEC)
        config = registry.label_config(spec)
        ls = make_client(server.url, server.token)
        make_predictions(db, spec, n)
        t = time.perf_counter()
        routed = route_predictions(db, settings.routing, spec)
        route_s = time.perf_counter() - t
        assert routed.review == n, routed.as_dict()

        t = time.perf_counter()
        stats = import_pending(db, ls, settings, spec, config, store)
        import_s = time.perf_counter() - t
        assert stats.imported == n, stats.as_dict()
        t = time.perf_counter()
        rerun = import_pending(db, ls, settings, spec, config, store)
        rerun_s = time.perf_counter() - t
        assert rerun.imported == 0
        # crash recovery at its worst: every row lost its commit, every task is already there
        with db.session() as s:
            s.execute(update(ReviewTask).values(status="pending_import", ls_task_id=None))
            s.commit()
        t = time.perf_counter()
        recovered = import_pending(db, ls, settings, spec, config, store)
        recover_s = time.perf_counter() - t
        assert (recovered.imported, recovered.already_there) == (0, n), recovered.as_dict()

        base_pid = ensure_project(ls, "bench-baseline", spec, config)
        tasks = payloads(db, settings, spec, store, ls, base_pid)
        base_s = raw_post(server.url, server.token, base_pid, tasks)

        sync_pid = ensure_project(ls, "bench-sync", spec, config)
        load_s = raw_post(server.url, server.token, sync_pid, with_annotations(tasks))
        t = time.perf_counter()
        synced = sync_project(db, ls, settings, spec, project_id=sync_pid, detect_deleted=False)
        sync_s = time.perf_counter() - t
        assert synced.completed == n, synced.as_dict()
        t = time.perf_counter()
        resync = sync_project(db, ls, settings, spec, project_id=sync_pid, detect_deleted=False)
        resync_s = time.perf_counter() - t
        assert resync.annotations_new == 0
        read_s, read_n = raw_read(server.url, server.token, sync_pid, settings.label_studio.sync_page_size)
        assert read_n == n
        db.dispose()

    rows = [
        ("route (curation DB only)", n, route_s),
        (f"import, labelloop (chunks of {args.chunk}, lookups)", n, import_s),
        ("import rerun (nothing pending)", n, rerun_s),
        ("import recovery (all pending, all there: lookups)", n, recover_s),
        ("import baseline: one raw POST, no lookups", n, base_s),
        ("sync, labelloop (annotations -> records, log)", n, sync_s),
        ("sync rerun (overlap re-read, dedupe, 0 new)", n, resync_s),
        ("sync baseline: raw paging of tasks+annotations", n, read_s),
        ("(setup: raw POST of tasks with annotations)", n, load_s),
    ]
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    db_kind = "PostgreSQL" if args.db_url else "SQLite"
    print(f"\n{n} tasks, curation DB {db_kind}, Label Studio 1.23.2 on SQLite\n")
    print(f"{'step':<52} {'seconds':>9} {'tasks/s':>9}")
    for name, count, secs in rows:
        print(f"{name:<52} {secs:>9.2f} {count / secs:>9.0f}")
    summary = {name: {"seconds": round(secs, 3), "tasks_per_s": round(count / secs, 1)} for name, count, secs in rows}
    print("\n" + json.dumps({"tasks": n, "db": db_kind, "chunk": args.chunk, "results": summary}))


if __name__ == "__main__":
    main()
