"""Label Studio import and sync against raw HTTP, on Label Studio with SQLite and with PostgreSQL
(run on demand, not in CI).

    .venv/bin/python bench/review.py [--tasks 10000] [--rounds 2] [--ls-db sqlite,postgresql]
                                     [--pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres]

For each Label Studio database it starts a Label Studio server of its own (``.venv-ls``, fresh data
directory; for PostgreSQL a fresh database, dropped afterwards) and runs ``--rounds`` rounds. Each
round makes ``--tasks`` vehicle items with predictions in a fresh curation DB (SQLite), routes them
all to review, and measures on FRESH, EMPTY projects of equal size, labelloop first in odd rounds
and the baseline first in even rounds (so neither always meets the bigger Label Studio database):

* import     labelloop's ``import_pending`` (chunks, the orphan read, ids stored, DB commits)
             against ONE raw POST of the same task payloads (built by labelloop, outside the
             timing) through httpx: no lookups, no chunking, no DB;
* sync       two more fresh projects get the same tasks, each with one annotation (one raw POST
             of tasks with annotations: creating 10,000 annotations one API call at a time would
             measure that instead), a tenth of them corrected; the round's review rows are pointed
             at labelloop's one, as if imported there. labelloop's ``sync_project`` (annotations ->
             records and the correction log, deletion check included) against raw page-number
             paging of the other with the same fields, no DB work. Both start ``sync_overlap_s``
             + 1 s after the annotations were loaded, i.e. after the last edit, as any scheduled
             or sensor-triggered sync does;
* no-op      ``sync_project`` again with nothing new, after the settled sync above: its share of
             the full sync's time (the target: under 0.05);
* unsettled  the worst case kept for comparison: the cursor put back to the watermark less the
             overlap, as if the previous sync had run within seconds of 10,000 edits (or as every
             sync did before the cursor followed the server's clock): it re-reads them all.

Before the rounds, one small unmeasured round warms the fresh server up (lazy imports, caches).

Ratios are labelloop's throughput over the baseline's, from the summed times of all rounds. The
last line is one JSON object: the top-level ``import_ratio``/``sync_ratio`` are the WORST of the
Label Studio databases measured and ``noop_sync_share`` the largest; ``per_db`` has each one's.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labelloop.config import DatabaseSettings, LabelStudioSettings, Settings, StorageSettings  # noqa: E402
from labelloop.db import Database, Item, Prediction, ReviewTask, SyncState  # noqa: E402
from labelloop.review.client import make_client  # noqa: E402
from labelloop.review.importer import build_task, import_pending  # noqa: E402
from labelloop.review.media import MediaLinker  # noqa: E402
from labelloop.review.projects import ensure_project, project_for  # noqa: E402
from labelloop.review.routing import route_predictions  # noqa: E402
from labelloop.review.server import LocalLabelStudio  # noqa: E402
from labelloop.review.sync import SYNC_FIELDS, sync_key, sync_project  # noqa: E402
from labelloop.specs import SpecRegistry  # noqa: E402
from labelloop.storage import LocalStore  # noqa: E402
from tests.synthetic import synthetic_items  # noqa: E402

SPEC = "vehicle_extraction"
REGISTRY = SpecRegistry()


def make_predictions(db: Database, spec: Any, n: int, tag: str) -> None:
    with db.session() as s:
        items = synthetic_items(s, (f"bench-review-{tag}-{i}" for i in range(n)), width=1280, height=960)
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


def raw_post(url: str, token: str, pid: int, tasks: list[dict]) -> tuple[float, list[int]]:
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
    return time.perf_counter() - t0, r.json()["task_ids"]


def raw_read(url: str, token: str, pid: int, page_size: int) -> tuple[float, int]:
    """Page-number paging of every task with the fields the sync asks for."""
    t0 = time.perf_counter()
    n, page = 0, 1
    with httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=600) as c:
        while True:
            params = {
                "project": pid,
                "fields": "all",
                "include": SYNC_FIELDS,
                "resolve_uri": "false",
                "page": page,
                "page_size": page_size,
            }
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


def start_server(kind: str, tmp: Path, pg_admin_url: str) -> tuple[LocalLabelStudio, str | None]:
    extra: dict[str, str] = {}
    pg_db = None
    if kind == "postgresql":
        import psycopg

        pg_db = f"bench_ls_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_admin_url, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{pg_db}"')
        u = httpx.URL(pg_admin_url)
        extra = {
            "DJANGO_DB": "default",
            "POSTGRE_NAME": pg_db,
            "POSTGRE_USER": u.username or "postgres",
            "POSTGRE_PASSWORD": u.password or "",
            "POSTGRE_HOST": u.host or "127.0.0.1",
            "POSTGRE_PORT": str(u.port or 5432),
        }
    server = LocalLabelStudio(
        executable=REPO / ".venv-ls" / "bin" / "label-studio",
        data_dir=tmp / f"ls-{kind}",
        local_files_root=tmp / "files",
        extra_env=extra,
    )
    server.start(timeout=600)
    return server, pg_db


def drop_pg(pg_admin_url: str, name: str | None) -> None:
    if name is None:
        return
    import psycopg

    with psycopg.connect(pg_admin_url, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def one_round(
    server: LocalLabelStudio, tmp: Path, kind: str, rnd: int, n: int, labelloop_first: bool
) -> dict[str, float]:
    store = LocalStore(tmp / "files" / "objects")
    tag = f"{kind}-{rnd}-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        home=tmp,
        db=DatabaseSettings(url=f"sqlite:///{tmp / f'curation-{tag}.db'}"),
        storage=StorageSettings(backend="local", root=store.root),
        label_studio=LabelStudioSettings(
            url=server.url, token=server.token, local_files_root=tmp / "files", project_prefix=f"bench-{tag}"
        ),
    )
    db = Database(settings.db)
    db.upgrade()
    spec = REGISTRY.get(SPEC)
    config = REGISTRY.label_config(spec)
    ls = make_client(server.url, server.token)
    make_predictions(db, spec, n, tag)
    routed = route_predictions(db, settings.routing, spec)
    assert routed.review == n, routed.as_dict()
    out: dict[str, float] = {}

    # ---- import: two empty projects, labelloop's (created as its first import would) and the raw one
    own_pid = project_for(db, ls, server.url, settings.label_studio.project_prefix, spec, config)
    raw_pid = ensure_project(ls, f"bench-raw-{tag}", spec, config)
    tasks = payloads(db, settings, spec, store, ls, raw_pid)

    def labelloop_import() -> None:
        t = time.perf_counter()
        stats = import_pending(db, ls, settings, spec, config, store)
        out["import_s"] = time.perf_counter() - t
        assert (stats.imported, stats.project_id) == (n, own_pid), stats.as_dict()
        out["import_chunks"] = stats.chunks
        out["import_lookups"] = stats.lookups

    def raw_import() -> None:
        out["import_raw_s"] = raw_post(server.url, server.token, raw_pid, tasks)[0]

    for step in (labelloop_import, raw_import) if labelloop_first else (raw_import, labelloop_import):
        step()
    t = time.perf_counter()
    assert import_pending(db, ls, settings, spec, config, store).imported == 0
    out["import_rerun_s"] = time.perf_counter() - t

    # ---- sync: two more empty projects with the same tasks, annotated
    annotated = with_annotations(tasks)
    sync_pid = ensure_project(ls, f"bench-sync-{tag}", spec, config)
    read_pid = ensure_project(ls, f"bench-read-{tag}", spec, config)
    _, ids = raw_post(server.url, server.token, sync_pid, annotated)
    raw_post(server.url, server.token, read_pid, annotated)
    loaded_at = time.monotonic()
    with db.session() as s:  # the round's rows now point at the annotated project, as if imported there
        rows = list(s.scalars(select(ReviewTask).where(ReviewTask.spec == spec.name).order_by(ReviewTask.id)))
        for rt, tid in zip(rows, ids, strict=True):
            rt.ls_project_id, rt.ls_task_id = sync_pid, tid
        s.commit()
    settle = settings.label_studio.sync_overlap_s + 1.0
    time.sleep(max(0.0, settle - (time.monotonic() - loaded_at)))

    def labelloop_sync() -> None:
        t = time.perf_counter()
        synced = sync_project(db, ls, settings, spec, project_id=sync_pid)
        out["sync_s"] = time.perf_counter() - t
        assert (synced.completed, synced.rejected, synced.deleted) == (n, 0, 0), synced.as_dict()

    def raw_sync() -> None:
        secs, got = raw_read(server.url, server.token, read_pid, settings.label_studio.sync_page_size)
        assert got == n
        out["sync_raw_s"] = secs

    for step in (labelloop_sync, raw_sync) if labelloop_first else (raw_sync, labelloop_sync):
        step()
    t = time.perf_counter()
    noop = sync_project(db, ls, settings, spec, project_id=sync_pid)
    out["noop_s"] = time.perf_counter() - t
    assert (noop.annotations_new, noop.completed) == (0, 0), noop.as_dict()
    out["noop_tasks_read"] = noop.tasks_seen

    # the unsettled worst case: cursor back to watermark - overlap
    with db.session() as s:
        st = s.get(SyncState, sync_key(sync_pid))
        assert st is not None and st.watermark is not None
        back = st.watermark - dt.timedelta(seconds=settings.label_studio.sync_overlap_s)
        st.detail = {**st.detail, "cursor": back.isoformat()}
        s.commit()
    t = time.perf_counter()
    unsettled = sync_project(db, ls, settings, spec, project_id=sync_pid)
    out["noop_unsettled_s"] = time.perf_counter() - t
    out["noop_unsettled_tasks_read"] = unsettled.tasks_seen
    assert unsettled.annotations_new == 0
    db.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2, help="rounds per Label Studio DB; the order alternates")
    ap.add_argument("--ls-db", default="sqlite,postgresql", help="Label Studio databases to measure")
    ap.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (Label Studio data, DBs)")
    args = ap.parse_args()
    n = args.tasks
    per_db: dict[str, Any] = {}
    for kind in [k.strip() for k in args.ls_db.split(",") if k.strip()]:
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-review-{kind}-"))
        print(f"starting Label Studio on {kind} in {tmp} ...", flush=True)
        t0 = time.perf_counter()
        server, pg_db = start_server(kind, tmp, args.pg_admin_url)
        rounds = []
        try:
            print(f"  up in {time.perf_counter() - t0:.1f} s at {server.url}", flush=True)
            # warm-up, not measured: a fresh server's first import and sync pay for Django's lazy
            # imports and cold caches, which would fall on whichever side goes first
            one_round(server, tmp, kind, -1, min(300, n), labelloop_first=True)
            for rnd in range(args.rounds):
                first = rnd % 2 == 0
                r = one_round(server, tmp, kind, rnd, n, labelloop_first=first)
                r["labelloop_first"] = first
                rounds.append(r)
                print(
                    f"  round {rnd + 1} ({'labelloop' if first else 'baseline'} first): "
                    + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                    flush=True,
                )
        finally:
            server.stop()
            drop_pg(args.pg_admin_url, pg_db)
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)

        def total(key: str, rounds: list[dict[str, Any]] = rounds) -> float:
            return sum(r[key] for r in rounds)

        per_db[kind] = {
            "import_tasks_per_s": round(n * len(rounds) / total("import_s"), 1),
            "import_raw_tasks_per_s": round(n * len(rounds) / total("import_raw_s"), 1),
            "import_ratio": round(total("import_raw_s") / total("import_s"), 3),
            "sync_tasks_per_s": round(n * len(rounds) / total("sync_s"), 1),
            "sync_raw_tasks_per_s": round(n * len(rounds) / total("sync_raw_s"), 1),
            "sync_ratio": round(total("sync_raw_s") / total("sync_s"), 3),
            "noop_sync_s": round(total("noop_s") / len(rounds), 3),
            "noop_sync_share": round(total("noop_s") / total("sync_s"), 4),
            "noop_tasks_read": max(r["noop_tasks_read"] for r in rounds),
            "noop_unsettled_s": round(total("noop_unsettled_s") / len(rounds), 3),
            "noop_unsettled_share": round(total("noop_unsettled_s") / total("sync_s"), 4),
            "import_rerun_s": round(total("import_rerun_s") / len(rounds), 3),
            "rounds": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rounds],
        }

    print(f"\n{n} tasks per side per round, {args.rounds} rounds per Label Studio DB (order alternating)\n")
    print(
        f"{'Label Studio DB':<16} {'import/s':>9} {'raw/s':>7} {'ratio':>6} {'sync/s':>7} {'raw/s':>7} "
        f"{'ratio':>6} {'no-op s':>8} {'share':>7}"
    )
    for kind, f in per_db.items():
        print(
            f"{kind:<16} {f['import_tasks_per_s']:>9.0f} {f['import_raw_tasks_per_s']:>7.0f} "
            f"{f['import_ratio']:>6.2f} {f['sync_tasks_per_s']:>7.0f} {f['sync_raw_tasks_per_s']:>7.0f} "
            f"{f['sync_ratio']:>6.2f} {f['noop_sync_s']:>8.3f} {f['noop_sync_share']:>7.4f}"
        )
    summary = {
        "tasks": n,
        "rounds": args.rounds,
        "ls_db": "+".join(per_db),
        "import_ratio": min(f["import_ratio"] for f in per_db.values()),
        "sync_ratio": min(f["sync_ratio"] for f in per_db.values()),
        "noop_sync_share": max(f["noop_sync_share"] for f in per_db.values()),
        "top_level": "worst over ls_db",
        "per_db": per_db,
    }
    print("\n" + json.dumps(summary))


if __name__ == "__main__":
    main()
