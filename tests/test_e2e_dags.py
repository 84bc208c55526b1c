"""The whole loop through the DAGs, end to end, with ``dag.test()`` on the migrated PostgreSQL metadata DB.

Real servers only: Label Studio (``fixtures_labelstudio``), the S3 test server (moto; the object
store *and* Label Studio's media, ``media_mode=s3``), the vLLM test server (``fixtures_vllm``) and a
PostgreSQL curation DB. The tasks read their configuration from ``LABELLOOP_*`` environment
variables exactly as a worker does; no Airflow Connection is defined, so the environment defaults
apply.

1. ``labelloop_prelabel`` on a folder with the sample images and two PDFs: ingest -> plan batches ->
   pre-label (mapped over batches of at most 4: images with ``grounding`` through the vLLM test
   server) -> route (confident images auto-accepted, the rest to review) -> import into Label
   Studio; then ``labelloop_prelabel`` for the PDFs (``document_layout``, CPU backend; no source:
   ingest skipped), a review task per page. (Not the nightly here: it calibrates before routing,
   and calibration puts a model without reviews under full review, so nothing would be
   auto-accepted.)
2. An annotator (a second Label Studio user with a personal access token) accepts some review
   tasks and corrects others through Label Studio's API.
3. ``labelloop_review_sync`` pulls the annotations into records and the correction log.
4. ``labelloop_export`` validates, passes the quality gate and publishes ``grounding`` v0001 to S3;
   the asset event carries the version's URI and ``labelloop_train`` is queued.
5. Two new images land in the folder; ``labelloop_nightly`` (ingest -> pre-label -> sync ->
   calibrate -> route and import -> trigger export) does work for those two only: one batch of
   exactly their item ids, two more predictions, two more routing decisions, two more Label Studio
   tasks; it asks for one ``labelloop_export`` run per spec.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image, ImageOps
from sqlalchemy import func, select

from labelloop.config import Settings
from labelloop.db import Database, FieldCorrection, Item, Prediction, Record, ReviewTask
from labelloop.export import read_manifest

pytest_plugins = ["fixtures_labelstudio", "fixtures_vllm"]
pytestmark = [pytest.mark.airflow, pytest.mark.labelstudio, pytest.mark.s3, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
TRUTH_DIR = Path(__file__).resolve().parent / "data" / "vllm_truth"
ASSET_URI = "labelloop://datasets/"
IMAGE_SPEC = "grounding"
DOC_SPEC = "document_layout"
#: two text-layer PDFs (the scanned small_ocr.pdf would make the CPU backend OCR 8 pages)
PDFS = ("mineru-demo2.pdf", "mineru-demo3.pdf")
JOBS = [{"spec": IMAGE_SPEC, "backend": "vllm"}, {"spec": DOC_SPEC, "backend": "cpu"}]
BATCH_SIZE = 4
THRESHOLD = 0.9
HIGH, LOW = 0.99, 0.5


# --------------------------------------------------------------------------- Airflow helpers


@pytest.fixture(autouse=True)
def _dags_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(DAGS))  # the bundle parser puts the DAG folder on sys.path


def _dag_bag() -> Any:
    """Parse dags/ as Airflow's bundle parser does and serialize it (dag.test runs serialized DAGs).

    The Params' defaults are kept aside (``bag.param_defaults``): in-process, the task SDK's
    ``process_params`` writes a run's conf into the DAG's own Param objects, so without a full conf
    a later ``dag.test`` of the same DAG object would inherit the previous run's values."""
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
    assert bag.import_errors == {}, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    bag.param_defaults = {dag_id: copy.deepcopy(d.params.dump()) for dag_id, d in bag.dags.items()}
    return bag


def _set_paused(dag_id: str, paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as s:
        s.query(DagModel).filter(DagModel.dag_id == dag_id).update({"is_paused": paused})


def _task_instances(dr: Any) -> list[Any]:
    from airflow.utils.session import create_session

    with create_session() as s:
        tis = dr.get_task_instances(session=s)
        for ti in tis:
            s.expunge(ti)
        return tis


def _states(dr: Any) -> dict[str, str]:
    """task_id (task_id[i] for mapped ones) -> state."""
    return {
        ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": str(ti.state)
        for ti in sorted(_task_instances(dr), key=lambda t: (t.task_id, t.map_index))
    }


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
_STATE_UPDATE = re.compile(r"new_state=(\w+).*ti_id=([0-9a-f-]{36})")


def task_errors(output: str) -> dict[str, str]:
    """ti_id -> the exception that task instance logged, from dag.test's console output.

    dag.test runs the tasks in this process and logs to the console, not to per-task log files: a
    failure is logged as "Task failed with exception" and the traceback (lines without a
    timestamp), then the execution API logs "Task instance state updated ... new_state=failed
    ... ti_id=<id>" for it."""
    errors: dict[str, str] = {}
    block: list[str] | None = None
    pending: list[str] = []
    for line in output.splitlines():
        if block is not None and _LOG_LINE.match(line):
            pending, block = block, None
        if block is not None:
            block.append(line)
        elif "Task failed with exception" in line:
            block = [line]
        elif pending and (m := _STATE_UPDATE.search(line)):
            errors[m[2]] = "\n".join(pending[-40:])
            pending = []
    return errors


class Runner:
    """``dag.test()`` with a full conf, a success check, and the failed tasks' exceptions on failure.

    The console output of the run is read back from pytest's capture (and written out again, so a
    failing test still shows all of it)."""

    def __init__(self, bag: Any, capfd: pytest.CaptureFixture[str]) -> None:
        self.bag = bag
        self.capfd = capfd

    def _drain(self) -> str:
        out, err = self.capfd.readouterr()
        sys.stdout.write(out)
        sys.stderr.write(err)
        return out + err

    def __call__(self, dag_id: str, conf: dict[str, Any] | None = None) -> Any:
        from airflow.utils.state import DagRunState

        self._drain()
        t0 = time.monotonic()
        dr = self.bag.dags[dag_id].test(run_conf={**self.bag.param_defaults[dag_id], **(conf or {})})
        output = self._drain()
        states = _states(dr)
        print(f"{dag_id}: {dr.state} in {time.monotonic() - t0:.1f}s {states}")
        if dr.state != DagRunState.SUCCESS:
            failed = {k: v for k, v in states.items() if v in ("failed", "upstream_failed", "up_for_retry")}
            logged = task_errors(output)
            errors = "\n".join(
                f"--- {ti.task_id}[{ti.map_index}] {ti.state}\n{logged[str(ti.id)]}"
                for ti in _task_instances(dr)
                if str(ti.id) in logged
            )
            pytest.fail(f"{dag_id} run {dr.run_id} {dr.state}; tasks not done: {failed}\n{errors}", pytrace=False)
        return dr


def _xcom(dr: Any, task_id: str, map_index: int = -1) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        row = s.scalars(
            XComModel.get_many(
                run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, map_indexes=map_index, key="return_value"
            )
        ).first()
        assert row is not None, f"no XCom from {task_id}[{map_index}] in {dr.run_id}"
        return XComModel.deserialize_value(row)


def _mapped_xcoms(dr: Any, task_id: str) -> list[Any]:
    idx = sorted(ti.map_index for ti in _task_instances(dr) if ti.task_id == task_id)
    return [_xcom(dr, task_id, i) for i in idx]


def _asset_events() -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = s.execute(
            select(AssetEvent.extra, AssetEvent.source_dag_id, AssetEvent.source_run_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == ASSET_URI)
            .order_by(AssetEvent.id)
        ).all()
    return [{"extra": dict(extra), "dag_id": dag_id, "run_id": run_id} for extra, dag_id, run_id in rows]


def _queued_for(asset_uri: str) -> list[tuple[str, str | None]]:
    """(consumer DAG, URI in the newest event of the asset) per asset_dag_run_queue entry: what the
    scheduler hands the consumer's run as its triggering asset event."""
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as s:
        out = []
        for target, asset_id in s.execute(
            select(AssetDagRunQueue.target_dag_id, AssetDagRunQueue.asset_id)
            .join(AssetModel, AssetModel.id == AssetDagRunQueue.asset_id)
            .where(AssetModel.uri == asset_uri)
        ):
            newest = s.scalars(
                select(AssetEvent).where(AssetEvent.asset_id == asset_id).order_by(AssetEvent.id.desc()).limit(1)
            ).first()
            out.append((target, (newest.extra or {}).get("uri") if newest else None))
        return out


def _clear_queue() -> None:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as s:
        s.query(AssetDagRunQueue).delete()


def _triggered_runs(dr: Any) -> list[tuple[str, dict[str, Any]]]:
    """(dag_id, conf) of the runs that the mapped ``trigger_export`` of ``dr`` created."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        ids = [
            XComModel.deserialize_value(row)
            for row in s.scalars(
                XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids="trigger_export", key="trigger_run_id")
            )
        ]
        runs = s.scalars(select(DagRun).where(DagRun.run_id.in_(ids))).all()
        return sorted(((r.dag_id, dict(r.conf or {})) for r in runs), key=lambda x: (x[0], json.dumps(x[1])))


# --------------------------------------------------------------------------- data helpers


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _oriented_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return ImageOps.exif_transpose(img).size


def _objects(width: int, height: int) -> list[dict[str, Any]]:
    """Two objects well inside the image, in original pixels."""
    return [
        {"bbox_2d": [width // 8, height // 8, width // 2, height // 2], "label": "person"},
        {"bbox_2d": [width // 2, height // 2, width * 7 // 8, height * 7 // 8], "label": "sign"},
    ]


def _sidecars() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(TRUTH_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        out[data["sha256"]] = data
    return out


class Teacher:
    """Gives the (session-wide) vLLM test server grounding answers, and takes them back afterwards."""

    def __init__(self, vllm: Any) -> None:
        self.vllm = vllm
        self.sidecars = _sidecars()
        self.taught: set[str] = set()

    def has_truth(self, data: bytes) -> bool:
        return IMAGE_SPEC in self.sidecars.get(_sha(data), {}).get("records", {})

    def __call__(self, data: bytes, confidence: float) -> None:
        """Every object of this image's answer at ``confidence``; a sidecar's other specs are kept."""
        sha = _sha(data)
        w, h = _oriented_size(data)
        objects = _objects(w, h)
        truth = copy.deepcopy(self.sidecars.get(sha) or {"sha256": sha, "width": w, "height": h, "records": {}})
        truth["records"][IMAGE_SPEC] = {"objects": objects, "_confidence": {"objects": [confidence] * len(objects)}}
        self.vllm.truth(sha, truth)
        self.taught.add(sha)

    def restore(self) -> None:
        """The sidecar again, or no record at all (the server then answers its default record)."""
        for sha in self.taught:
            self.vllm.truth(sha, self.sidecars.get(sha) or {"sha256": sha, "records": {}})


@pytest.fixture
def teach(vllm_server: Any) -> Iterator[Teacher]:
    teacher = Teacher(vllm_server)
    yield teacher
    teacher.restore()


def _new_image(src: Path, seed: int) -> bytes:
    """A new file derived from a sample image (mirrored, re-encoded): new content, new sha256."""
    with Image.open(src) as img:
        out = ImageOps.mirror(ImageOps.exif_transpose(img).convert("RGB"))
    out.putpixel((seed, seed), (seed, 0, 0))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _items(db: Database) -> dict[str, Item]:
    with db.session() as s:
        return {it.sha256: it for it in s.scalars(select(Item))}


def _predictions(db: Database, spec: str) -> list[Prediction]:
    with db.session() as s:
        return list(s.scalars(select(Prediction).where(Prediction.spec == spec).order_by(Prediction.id)))


def _review_tasks(db: Database, spec: str) -> list[ReviewTask]:
    with db.session() as s:
        return list(s.scalars(select(ReviewTask).where(ReviewTask.spec == spec).order_by(ReviewTask.id)))


def _records(db: Database, spec: str) -> dict[int, Record]:
    with db.session() as s:
        return {r.item_id: r for r in s.scalars(select(Record).where(Record.spec == spec))}


def _ls_task_count(ls: Any, project_id: int) -> int:
    return int(ls.tasks.list(project=project_id, fields="task_only", include="id", page_size=1).response.total)


# --------------------------------------------------------------------------- environment


@pytest.fixture
def e2e(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    airflow_db: str,
    pg_url: str,
    s3_settings: Any,
    label_studio: Any,
    vllm_server: Any,
) -> Iterator[tuple[Settings, Database]]:
    """LABELLOOP_* for the tasks: PostgreSQL curation DB, S3 store, Label Studio, vLLM, routing."""
    env = {
        "LABELLOOP_HOME": str(tmp_path / "home"),
        "LABELLOOP_DB__URL": pg_url,
        "LABELLOOP_STORAGE__BACKEND": "s3",
        "LABELLOOP_STORAGE__ENDPOINT": s3_settings.endpoint,
        "LABELLOOP_STORAGE__BUCKET": s3_settings.bucket,
        "LABELLOOP_STORAGE__ACCESS_KEY": s3_settings.access_key.get_secret_value(),
        "LABELLOOP_STORAGE__SECRET_KEY": s3_settings.secret_key.get_secret_value(),
        "LABELLOOP_STORAGE__SECURE": "false",
        "LABELLOOP_STORAGE__REGION": s3_settings.region,
        "LABELLOOP_LABEL_STUDIO__URL": label_studio.url,
        "LABELLOOP_LABEL_STUDIO__TOKEN": label_studio.token,
        "LABELLOOP_LABEL_STUDIO__PROJECT_PREFIX": f"e2e{uuid.uuid4().hex[:8]}",
        "LABELLOOP_LABEL_STUDIO__MEDIA_MODE": "s3",
        # Label Studio's own key (moto does not enforce policies; a real bucket gives it read-only)
        "LABELLOOP_LABEL_STUDIO__S3_ACCESS_KEY": "ls-read-only",
        "LABELLOOP_LABEL_STUDIO__S3_SECRET_KEY": "ls-read-only-secret",
        "LABELLOOP_VLLM__BASE_URL": vllm_server.base_url,
        "LABELLOOP_VLLM__MODEL": vllm_server.config.model,
        "LABELLOOP_VLLM__COORDINATE_MODE": vllm_server.config.coordinate_mode,
        "LABELLOOP_VLLM__CONCURRENCY": "8",
        "LABELLOOP_VLLM__TIMEOUT_S": "30",
        "LABELLOOP_VLLM__MAX_RETRIES": "2",
        "LABELLOOP_VLLM__RETRY_BACKOFF_S": "0.05",
        "LABELLOOP_ROUTING__USE_MANUAL_THRESHOLDS": "true",
        "LABELLOOP_ROUTING__DEFAULT_THRESHOLD": str(THRESHOLD),
        "LABELLOOP_ROUTING__AUDIT_RATE": "0",
        "LABELLOOP_TRAINING__WORKDIR": str(tmp_path / "training"),
    }
    monkeypatch.delenv("LABELLOOP_CONFIG_FILE", raising=False)
    for k in [k for k in os.environ if k.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(k)  # environment defaults only: no Connection overrides them
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings()
    assert settings.storage.backend == "s3" and settings.db.url_value == pg_url
    db = Database(settings.db)
    yield settings, db
    db.dispose()


@pytest.fixture
def run(e2e: Any, capfd: pytest.CaptureFixture[str]) -> Iterator[Runner]:
    """The DAGs serialized into the metadata DB, labelloop_train unpaused (asset events queue a
    consumer only while it is unpaused; paused again afterwards)."""
    runner = Runner(_dag_bag(), capfd)
    _set_paused("labelloop_train", False)
    yield runner
    _set_paused("labelloop_train", True)


# --------------------------------------------------------------------------- the test


def test_nightly_review_export_then_incremental_nightly(
    e2e: tuple[Settings, Database],
    sample_data: Path,
    label_studio: Any,
    vllm_server: Any,
    tmp_path: Path,
    run: Runner,
    teach: Teacher,
) -> None:
    from labelloop.storage import open_store

    t_start = time.monotonic()
    settings, db = e2e
    store = open_store(settings.storage)
    ls = label_studio.client()

    # ---------------------------------------------------------------- source folder and model truth
    inbox = tmp_path / "inbox"
    (inbox / "images").mkdir(parents=True)
    (inbox / "documents").mkdir()
    images = sorted((sample_data / "images").iterdir())
    for p in images:
        shutil.copy(p, inbox / "images" / p.name)
    for name in PDFS:
        shutil.copy(sample_data / "documents" / name, inbox / "documents" / name)
    image_sha = {p.name: _sha(p.read_bytes()) for p in images}
    pdf_sha = {n: _sha((sample_data / "documents" / n).read_bytes()) for n in PDFS}
    # the images without a grounding sidecar get one: the first half confident, the rest not
    taught = [p for p in images if not teach.has_truth(p.read_bytes())]
    assert len(taught) >= 4, "expected most sample images to lack a grounding sidecar"
    confident = {image_sha[p.name] for p in taught[: len(taught) // 2]}
    for p in taught:
        teach(p.read_bytes(), HIGH if image_sha[p.name] in confident else LOW)
    unsure = {image_sha[p.name] for p in taught} - confident

    # ---------------------------------------------------------------- 1. pre-label: images, then documents
    # labelloop_prelabel routes with the configured thresholds. (labelloop_nightly calibrates first,
    # which puts a model without reviews under full review: nothing would be auto-accepted.)
    images_run = run(
        "labelloop_prelabel",
        {"source": str(inbox), "spec": IMAGE_SPEC, "backend": "vllm", "batch_size": BATCH_SIZE},
    )
    ingest1 = _xcom(images_run, "ingest")
    assert (ingest1["new_items"], ingest1["rejected"]) == (len(images) + len(PDFS), 0), ingest1
    assert _xcom(images_run, "check_params") == [{"spec": IMAGE_SPEC, "backend": "vllm"}]
    items = _items(db)
    image_ids = {items[s].id for s in image_sha.values()}
    pdf_ids = {items[s].id for s in pdf_sha.values()}
    plan1 = _xcom(images_run, "plan_batches")
    assert {(b["spec"], b["backend"]) for b in plan1} == {(IMAGE_SPEC, "vllm")}
    assert len(plan1) == -(-len(images) // BATCH_SIZE)  # one mapped task per batch of at most BATCH_SIZE
    assert all(len(b["item_ids"]) <= BATCH_SIZE for b in plan1)
    assert sorted(i for b in plan1 for i in b["item_ids"]) == sorted(image_ids)
    prelabel_stats = _mapped_xcoms(images_run, "prelabel")
    assert len(prelabel_stats) == len(plan1)
    assert sum(s["ok"] for s in prelabel_stats) == len(images), prelabel_stats
    assert set(vllm_server.stats()["by_key"]) == set(image_sha.values())  # every image went to the model

    docs_run = run("labelloop_prelabel", {"spec": DOC_SPEC, "backend": "cpu"})
    assert _states(docs_run)["ingest"] == "skipped"  # no source: the items are already in
    assert _xcom(docs_run, "check_params") == [{"spec": DOC_SPEC, "backend": "pymupdf"}]  # cpu -> pymupdf
    plan_docs = _xcom(docs_run, "plan_batches")
    assert [sorted(b["item_ids"]) for b in plan_docs] == [sorted(pdf_ids)]

    preds = _predictions(db, IMAGE_SPEC)
    assert len(preds) == len(images) and {p.status for p in preds} == {"ok"}
    assert {p.backend for p in preds} == {"vllm"} and {p.item_id for p in preds} == image_ids
    doc_preds = _predictions(db, DOC_SPEC)
    assert len(doc_preds) == len(PDFS) and {p.status for p in doc_preds} == {"ok"}
    assert {p.backend for p in doc_preds} == {"pymupdf"}
    sha_of = {it.id: sha for sha, it in items.items()}
    conf_of = {sha_of[p.item_id]: p.confidence for p in preds}
    for sha in confident:
        assert conf_of[sha] >= THRESHOLD, (sha, conf_of[sha])
    for sha in unsure:
        assert conf_of[sha] < THRESHOLD, (sha, conf_of[sha])

    # routing: below the threshold to review, above it auto-accepted (audit off); documents: a task per page
    routes = {sha_of[r.item_id]: r for r in _review_tasks(db, IMAGE_SPEC)}
    assert set(routes) == set(image_sha.values())
    for sha, rt in routes.items():
        expect = "auto" if conf_of[sha] >= THRESHOLD else "review"
        assert rt.route == expect, (sha, conf_of[sha], rt.route, rt.reason)
    auto = {s for s, rt in routes.items() if rt.route == "auto"}
    review = {s for s, rt in routes.items() if rt.route == "review"}
    assert confident <= auto and unsure <= review
    assert {routes[s].status for s in auto} == {"auto_accepted"}
    assert {routes[s].status for s in review} == {"imported"}
    assert {items[s].id for s in auto} == {i for i, r in _records(db, IMAGE_SPEC).items() if r.provenance == "auto"}
    routed = _xcom(images_run, "route_and_import")
    assert routed["import"]["imported"] == len(review), routed
    doc_tasks = _review_tasks(db, DOC_SPEC)
    n_pages = sum(items[s].page_count for s in pdf_sha.values())
    assert len(doc_tasks) == n_pages and {t.status for t in doc_tasks} == {"imported"}

    (image_project,) = {routes[s].ls_project_id for s in review}
    (doc_project,) = {t.ls_project_id for t in doc_tasks}
    assert _ls_task_count(ls, image_project) == len(review)
    assert _ls_task_count(ls, doc_project) == n_pages
    # media from the S3 store: Label Studio resolves the task's s3:// URI to a presigned URL (303)
    some = items[next(iter(review))]
    resolved = ls.tasks.get(id=str(routes[some.sha256].ls_task_id)).data["image"]
    fileuri = base64.b64decode(parse_qs(urlsplit(resolved).query)["fileuri"][0]).decode()
    assert fileuri == f"s3://{settings.storage.bucket}/{some.storage_key}"
    redirect = httpx.get(label_studio.url + resolved, headers={"Authorization": f"Token {label_studio.token}"})
    assert redirect.status_code == 303
    assert httpx.get(redirect.headers["location"]).content == store.get(some.storage_key)

    # ---------------------------------------------------------------- 2. annotators review in Label Studio
    annotator = label_studio.signup(f"ann-{uuid.uuid4().hex[:8]}@example.com")
    ann = annotator.client()
    accepted, corrected = [], []
    for n, sha in enumerate(sorted(review, key=lambda s: routes[s].ls_task_id)):
        task_id = routes[sha].ls_task_id
        result = copy.deepcopy(ann.tasks.get(id=str(task_id)).predictions[0].result)
        rects = [r for r in result if r["type"] == "rectanglelabels"]
        assert rects, f"task {task_id} has no pre-labeled boxes"
        if n % 2 == 0:  # accept the model's boxes as they are
            accepted.append(sha)
        else:  # relabel the first box and delete the last one
            rects[0]["value"]["rectanglelabels"] = ["other"]
            result = [r for r in result if r["id"] != rects[-1]["id"]]
            corrected.append(sha)
        ann.annotations.create(id=task_id, result=result, lead_time=12.5)
    assert accepted and corrected

    # ---------------------------------------------------------------- 3. review sync
    sync = run("labelloop_review_sync")
    synced = {s["spec"]: s for s in _mapped_xcoms(sync, "sync")}
    assert synced[IMAGE_SPEC]["completed"] == len(review), synced[IMAGE_SPEC]
    assert synced[DOC_SPEC]["completed"] == 0
    records = _records(db, IMAGE_SPEC)
    assert set(records) == image_ids
    for sha in accepted + corrected:
        rec = records[items[sha].id]
        assert rec.provenance == "human" and rec.annotator == annotator.email
    with db.session() as s:
        changed = {
            rt_id
            for (rt_id,) in s.execute(
                select(FieldCorrection.review_task_id).where(
                    FieldCorrection.is_latest, FieldCorrection.changed, FieldCorrection.spec == IMAGE_SPEC
                )
            )
        }
    assert changed == {routes[s].id for s in corrected}
    for sha in corrected:
        model_objects = next(p.record for p in preds if p.item_id == items[sha].id)["objects"]
        human_objects = records[items[sha].id].record["objects"]
        assert len(human_objects) == len(model_objects) - 1 and human_objects[0]["label"] == "other"
    for sha in accepted:
        model_objects = next(p.record for p in preds if p.item_id == items[sha].id)["objects"]
        assert records[items[sha].id].record["objects"] == model_objects

    # ---------------------------------------------------------------- 4. export -> asset event -> train queued
    _clear_queue()
    n_events = len(_asset_events())
    export = run("labelloop_export", {"spec": IMAGE_SPEC})
    validated = _xcom(export, "validate")
    assert validated["n_records"] == len(images) and validated["n_failed"] == 0, validated
    events = _asset_events()[n_events:]
    assert len(events) == 1, events
    extra = events[0]["extra"]
    prefix = f"datasets/{IMAGE_SPEC}/v0001"
    assert (extra["spec"], extra["version"], extra["created"]) == (IMAGE_SPEC, "v0001", True)
    assert extra["prefix"] == prefix and extra["uri"] == store.uri(prefix)
    assert extra["uri"].startswith(f"s3://{settings.storage.bucket}/")
    assert extra["counts"]["records"] == len(images)
    assert (events[0]["dag_id"], events[0]["run_id"]) == ("labelloop_export", export.run_id)
    assert _xcom(export, "export")["uri"] == extra["uri"]
    assert read_manifest(store, prefix) is not None  # published: the manifest is written last
    # labelloop_train is queued, and the asset event it will be handed carries the version's URI
    assert _queued_for(ASSET_URI) == [("labelloop_train", extra["uri"])]
    print(f"first loop done in {time.monotonic() - t_start:.1f}s")

    # ---------------------------------------------------------------- 5. two new files, second nightly
    new_files = {
        "new-1.jpg": _new_image(images[0], 1),
        "new-2.jpg": _new_image(images[1], 2),
    }
    for i, (name, data) in enumerate(new_files.items()):
        (inbox / "images" / name).write_bytes(data)
        teach(data, HIGH if i == 0 else LOW)
    new_sha = {_sha(d) for d in new_files.values()}
    vllm_server.reset()  # request counters only
    n_preds = len(_predictions(db, IMAGE_SPEC)) + len(_predictions(db, DOC_SPEC))
    n_routes = len(_review_tasks(db, IMAGE_SPEC))

    night2 = run("labelloop_nightly", {"source": str(inbox), "jobs": JOBS, "batch_size": BATCH_SIZE})
    assert _xcom(night2, "check_params") == [
        {"spec": IMAGE_SPEC, "backend": "vllm"},
        {"spec": DOC_SPEC, "backend": "pymupdf"},
    ]
    ingest2 = _xcom(night2, "ingest")
    assert (ingest2["new_items"], ingest2["known"]) == (2, len(images) + len(PDFS)), ingest2
    items = _items(db)
    new_ids = sorted(items[s].id for s in new_sha)
    # work for the two new files only: one batch of exactly their ids, nothing for the documents
    assert _xcom(night2, "plan_batches") == [{"spec": IMAGE_SPEC, "backend": "vllm", "item_ids": new_ids}]
    assert [s["ok"] for s in _mapped_xcoms(night2, "prelabel")] == [2]
    assert set(vllm_server.stats()["by_key"]) == new_sha  # the model saw the two new images only
    assert len(_predictions(db, IMAGE_SPEC)) + len(_predictions(db, DOC_SPEC)) == n_preds + 2
    new_routes = _review_tasks(db, IMAGE_SPEC)[n_routes:]
    assert sorted(r.item_id for r in new_routes) == new_ids
    assert len(_review_tasks(db, DOC_SPEC)) == n_pages
    # the nightly calibrated before routing: a handful of reviews is too little evidence (min_samples),
    # so the field is under full review and even the confident new image goes to a person
    calibrated = {(f["spec"], f["field"]): f for f in _xcom(night2, "calibrate")["fields"]}
    assert calibrated[(IMAGE_SPEC, "objects")]["threshold"] is None, calibrated
    assert [(r.route, r.status) for r in new_routes] == [("review", "imported")] * 2
    assert all("full review" in (r.reason or "") for r in new_routes), [r.reason for r in new_routes]
    imported = {o["import"]["project_id"]: o["import"] for o in _mapped_xcoms(night2, "route_and_import")}
    assert (imported[image_project]["imported"], imported[doc_project]["imported"]) == (2, 0), imported
    assert _ls_task_count(ls, image_project) == len(review) + 2
    assert _ls_task_count(ls, doc_project) == n_pages
    synced2 = {s["spec"]: s for s in _mapped_xcoms(night2, "sync")}
    assert synced2[IMAGE_SPEC]["annotations_new"] == 0  # labelloop_review_sync already took them
    # and it asked for one export run per spec (queued: a scheduler would run them)
    assert _triggered_runs(night2) == [
        ("labelloop_export", {"spec": DOC_SPEC}),
        ("labelloop_export", {"spec": IMAGE_SPEC}),
    ]
    with db.session() as s:
        assert s.scalar(select(func.count(Item.id))) == len(images) + len(PDFS) + 2
    print(f"e2e done in {time.monotonic() - t_start:.1f}s")
