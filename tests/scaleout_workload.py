"""The scale-out workload, shared by tests/test_scaleout.py, tests/test_airflow_cluster.py and
bench/scaleout.py: images, model answers, the cluster's labelloop environment, one
``labelloop_prelabel`` run through the REST API (optionally with a worker killed mid-batch), and the
exact counts afterwards.

Images are synthetic (distinct content, so each run's items are new); the vLLM test server is
taught a low-confidence answer for every ``low_every``-th image, so routing sends exactly those to
review (plus the audit sample of the rest). Counts are read from the curation DB and from Label
Studio and cover only this run's items, so several runs can share one curation DB and project.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from sqlalchemy import func, select

from labelloop.db import Database, Item, Prediction, ReviewTask

SPEC = "grounding"
DAG_ID = "labelloop_prelabel"
THRESHOLD = 0.9
HIGH, LOW = 0.99, 0.5


@dataclass
class Workload:
    folder: Path
    shas: list[str]
    low: set[str]


def make_images(folder: Path, n: int, *, seed: int, low_every: int = 4, size: tuple[int, int] = (112, 84)) -> Workload:
    """``n`` distinct PNGs in ``folder``; every ``low_every``-th is to be answered with low confidence."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    shas, low = [], set()
    w, h = size
    for i in range(n):
        img = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        for j in range(6):  # a few pixels from the seed and index: distinct bytes for every image
            img.putpixel(((i + j * 7) % w, (i // w + j) % h), ((seed + j) % 256, i % 256, (i >> 8) % 256))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        (folder / f"img-{seed}-{i:05d}.png").write_bytes(data)
        shas.append(sha)
        if low_every and i % low_every == 0:
            low.add(sha)
    return Workload(folder, shas, low)


def teach(vllm_url: str, workload: Workload, size: tuple[int, int] = (112, 84)) -> None:
    """Ground truth for every image: two boxes, at LOW confidence for ``workload.low``, else HIGH."""
    w, h = size
    objects = [
        {"bbox_2d": [w // 8, h // 8, w // 2, h // 2], "label": "person"},
        {"bbox_2d": [w // 2, h // 2, w * 7 // 8, h * 7 // 8], "label": "sign"},
    ]
    with httpx.Client(base_url=vllm_url, timeout=30) as c:
        for sha in workload.shas:
            conf = LOW if sha in workload.low else HIGH
            record = {"objects": objects, "_confidence": {"objects": [conf] * len(objects)}}
            c.post(
                "/control/truth",
                json={"key": sha, "truth": {"sha256": sha, "width": w, "height": h, "records": {SPEC: record}}},
            ).raise_for_status()


def labelloop_env(
    *,
    home: Path,
    curation_db_url: str,
    s3: dict[str, Any],
    label_studio_url: str,
    label_studio_token: str,
    vllm_base_url: str,
    vllm_model: str,
    vllm_concurrency: int,
    project_prefix: str | None = None,
) -> dict[str, str]:
    """LABELLOOP_* settings and AIRFLOW_CONN_* connections for the cluster's components."""
    from airflow_cluster import connection_env

    return {
        "LABELLOOP_HOME": str(home),
        "LABELLOOP_ROUTING__DEFAULT_THRESHOLD": str(THRESHOLD),
        "LABELLOOP_LABEL_STUDIO__MEDIA_MODE": "s3",
        # Label Studio's own key (moto does not enforce policies; a real bucket gives it read-only)
        "LABELLOOP_LABEL_STUDIO__S3_ACCESS_KEY": "ls-read-only",
        "LABELLOOP_LABEL_STUDIO__S3_SECRET_KEY": "ls-read-only-secret",
        **connection_env(
            curation_db_url=curation_db_url,
            s3=s3,
            label_studio={
                "url": label_studio_url,
                "token": label_studio_token,
                "project_prefix": project_prefix or f"so{uuid.uuid4().hex[:8]}",
                "media_mode": "s3",
            },
            vllm={
                "base_url": vllm_base_url,
                "model": vllm_model,
                "coordinate_mode": "absolute_resized",
                "concurrency": vllm_concurrency,
                "timeout_s": 30,
                "max_retries": 2,
                "retry_backoff_s": 0.05,
            },
        ),
    }


@dataclass
class RunResult:
    run_id: str
    state: str
    wall_s: float
    tries: list[dict[str, Any]]
    killed: str | None = None
    killed_tis: list[int] = field(default_factory=list)
    #: this workload's predictions in the curation DB when the worker was killed
    done_at_kill: int = 0

    def prelabel_tries(self) -> list[dict[str, Any]]:
        return [t for t in self.tries if t["task_id"] == "prelabel"]

    def hostnames(self) -> set[str]:
        return {t["hostname"] for t in self.prelabel_tries() if t.get("hostname")}

    def prelabel_span_s(self) -> float:
        """From the first pre-label try's start to the last one's end (the mapped phase's wall time)."""
        tries = [t for t in self.prelabel_tries() if t.get("start_date") and t.get("end_date")]
        start = min(_ts(t["start_date"]) for t in tries)
        end = max(_ts(t["end_date"]) for t in tries)
        return (end - start).total_seconds()


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_prelabel(
    cluster: Any,
    workload: Workload,
    *,
    batch_size: int,
    db: Database | None = None,
    kill: str | None = None,
    vllm_url: str | None = None,
    timeout: float = 900,
) -> RunResult:
    """Trigger ``labelloop_prelabel`` over REST and wait for it.

    With ``kill`` (a worker name), that worker is ``kill -9``-ed in the middle of one of its
    pre-label batches: some of that batch's predictions stored in ``db``, not all. Polling alone
    cannot promise to see that moment (a batch lasts seconds, one look over REST takes a good part
    of one), so the look happens with the model server's gate closed (``vllm_url``): no new answer
    starts, the counts hold still while they are read, and the gate reopens after the kill or
    after a look that found no batch half done."""
    t0 = time.monotonic()
    run_id = cluster.trigger(
        DAG_ID, {"source": str(workload.folder), "spec": SPEC, "backend": "vllm", "batch_size": batch_size}
    )
    killed_tis: list[int] = []
    done = 0
    if kill is not None:
        assert db is not None and vllm_url is not None
        deadline = time.monotonic() + timeout
        batches: list[list[int]] | None = None
        with httpx.Client(base_url=vllm_url, timeout=30) as model:
            while not killed_tis:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{kill} never ran a pre-label batch of {run_id} long enough to be killed")
                if cluster.dag_run(DAG_ID, run_id)["state"] in ("success", "failed"):
                    raise AssertionError(f"{run_id} finished before {kill} could be killed mid-batch")
                if not _running_on(cluster, run_id, kill):
                    time.sleep(0.3)
                    continue
                if batches is None:
                    batches = [b["item_ids"] for b in cluster.xcom(DAG_ID, run_id, "plan_batches")]
                model.post("/control/gate", json={"closed": True}).raise_for_status()
                try:
                    time.sleep(1.0)  # answers already in a slot finish and their chunk is written
                    running = _running_on(cluster, run_id, kill)
                    half_done = [
                        t["map_index"]
                        for t in running
                        if 0 < _count_predictions(db, item_ids=batches[t["map_index"]]) < len(batches[t["map_index"]])
                    ]
                    if half_done:
                        done = _count_predictions(db, shas=workload.shas)
                        killed_tis = sorted(t["map_index"] for t in running)
                        cluster.kill_worker(kill)
                finally:
                    model.post("/control/gate", json={"closed": False}).raise_for_status()
                if not killed_tis:
                    time.sleep(0.5)  # let the batches move on before the next look
    state = cluster.wait_run(DAG_ID, run_id, timeout=timeout)
    wall = time.monotonic() - t0
    return RunResult(run_id, state, wall, cluster.tries(DAG_ID, run_id), kill, killed_tis, done)


def _running_on(cluster: Any, run_id: str, worker: str) -> list[dict[str, Any]]:
    return [
        t
        for t in cluster.task_instances(DAG_ID, run_id)
        if t["task_id"] == "prelabel" and t["state"] == "running" and t.get("hostname") == worker
    ]


def _count_predictions(db: Database, *, shas: list[str] | None = None, item_ids: list[int] | None = None) -> int:
    q = select(func.count(Prediction.id)).join(Item, Item.id == Prediction.item_id).where(Prediction.spec == SPEC)
    q = q.where(Item.sha256.in_(shas)) if shas is not None else q.where(Item.id.in_(item_ids or []))
    with db.session() as s:
        return int(s.scalar(q) or 0)


@dataclass
class Counts:
    items: int
    predictions: int
    ok_predictions: int
    duplicate_predictions: int
    lost: int
    routes: int
    duplicate_routes: int
    to_label_studio: int
    review_not_low: int
    low_not_review: int
    ls_tasks: int
    duplicate_ls_tasks: int
    ls_task_ids_missing: int

    @property
    def duplicates(self) -> int:
        return self.duplicate_predictions + self.duplicate_routes + self.duplicate_ls_tasks


def counts(db: Database, workload: Workload, ls: Any) -> Counts:
    """Exact counts of this workload's items in the curation DB and in Label Studio."""
    with db.session() as s:
        items = {sha: iid for iid, sha in s.execute(select(Item.id, Item.sha256).where(Item.sha256.in_(workload.shas)))}
        preds = s.execute(
            select(Prediction.id, Prediction.item_id, Prediction.status).where(
                Prediction.item_id.in_(items.values()), Prediction.spec == SPEC
            )
        ).all()
        pred_ids = [p.id for p in preds]
        routes = s.execute(
            select(
                ReviewTask.prediction_id,
                ReviewTask.item_id,
                ReviewTask.route,
                ReviewTask.ls_task_id,
                ReviewTask.ls_project_id,
                ReviewTask.external_id,
            ).where(ReviewTask.prediction_id.in_(pred_ids))
        ).all()
    per_item = Counter(p.item_id for p in preds)
    per_pred = Counter(r.prediction_id for r in routes)
    sha_of = {iid: sha for sha, iid in items.items()}
    sent = [r for r in routes if r.route != "auto"]
    review_items = {sha_of[r.item_id] for r in routes if r.route == "review"}
    ext_ids = {r.external_id for r in sent}
    projects = {r.ls_project_id for r in sent if r.ls_project_id is not None}
    ls_ext: list[str] = []
    for pid in projects:
        for task in ls.tasks.list(project=pid, fields="all", page_size=500):
            ext = (task.data or {}).get("external_id")
            if ext in ext_ids:
                ls_ext.append(ext)
    dup_ls = sum(c - 1 for c in Counter(ls_ext).values())
    return Counts(
        items=len(items),
        predictions=len(preds),
        ok_predictions=sum(1 for p in preds if p.status == "ok"),
        duplicate_predictions=sum(c - 1 for c in per_item.values()),
        lost=len(workload.shas) - len(per_item),
        routes=len(routes),
        duplicate_routes=sum(c - 1 for c in per_pred.values()),
        to_label_studio=len(sent),
        review_not_low=len(review_items - workload.low),
        low_not_review=len(workload.low - review_items),
        ls_tasks=len(ls_ext),
        duplicate_ls_tasks=dup_ls,
        ls_task_ids_missing=sum(1 for r in sent if r.ls_task_id is None),
    )
