"""Integrity under ordinary faults, against the real servers (issue 11).

A model outage, a bad annotation, two overlapping importers: nothing lost, nothing duplicated,
nothing faked, a clear error, and a rerun converges. Exact counts throughout.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from fixtures_vllm import VLLMTestServer, make_image, predictions, run_batch, start_server
from sqlalchemy import select, update
from vllm_server import ModelServer, ServerConfig

from labelloop.config import PrelabelSettings, Settings
from labelloop.db import Database, Prediction, ReviewTask
from labelloop.ingest.run import ingest
from labelloop.prelabel.runner import PrelabelBatchError, count_pending
from labelloop.prelabel.vllm import VLLMBackend
from labelloop.review.routing import route_predictions
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_vllm", "fixtures_labelstudio"]

SPECS = SpecRegistry()
CAPTION = SPECS.get("caption")


# --------------------------------------------------------------------------- model server outage


def test_model_server_killed_mid_batch_then_rerun_every_item_ok_no_empty_review_task(
    sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    """200 items; the server dies after 64 answers. The run stops early (it does not burn the
    other 136 items in a second), fails loudly, and routes nothing empty; a rerun after the
    server is back predicts every missing or failed item, and all 200 are ok."""
    config = ServerConfig(slots=8, latency_ms=5, coordinate_mode="absolute_resized")
    server, stop = start_server(config)
    port = int(server.url.rsplit(":", 1)[1])
    settings = server.settings(sqlite_settings, max_retries=2)
    store = LocalStore(settings.storage.root)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(200):
        (folder / f"img{i:03d}.jpg").write_bytes(make_image(64 + i % 7, 48 + i % 5, seed=i))
    ingest(sqlite_db, store, settings, str(folder))
    policy = PrelabelSettings(retry_backoff_s=0.0, outage_after=10)

    answered = 0

    def kill_after_64(_item_id: int, res: Any) -> None:
        nonlocal answered
        if res.status != "ok":
            return
        answered += 1
        if answered == 64:
            stop()  # connections are aborted; nothing listens on the port any more

    with pytest.raises(PrelabelBatchError, match="stopped early, 10 transient failures in a row") as err:
        run_batch(
            sqlite_db,
            store,
            CAPTION,
            VLLMBackend(settings, store),
            concurrency=8,
            progress=kill_after_64,
            policy=policy,
        )
    stats = err.value.stats
    assert settings.vllm.base_url in str(err.value) and "chat completion" in str(err.value)
    assert stats.ok >= 64 and stats.transient >= 10 and stats.permanent == 0
    assert stats.considered < 100, "stopped early instead of failing every remaining item"
    rows = predictions(sqlite_db, spec="caption")
    failed = [r for r in rows if r.status == "failed"]
    assert len(failed) == stats.transient and all(r.failure_kind == "transient" and r.attempts == 1 for r in failed)
    assert all("connection error" in r.error or "timeout" in r.error for r in failed)

    # routing sends no failed prediction to review: no empty task first in the queue
    routed = route_predictions(sqlite_db, settings.routing, CAPTION)
    assert routed.considered == stats.ok
    with sqlite_db.session() as s:
        tasks = list(s.scalars(select(ReviewTask)))
    assert {t.prediction_id for t in tasks} <= {r.id for r in rows if r.status == "ok"}

    # the server is back (same address); the rerun retries the failed and takes the untried
    backend = VLLMBackend(settings, store)
    assert count_pending(sqlite_db, CAPTION, backend, policy=policy) == 200 - stats.ok
    again = ModelServer(config, "127.0.0.1", port)
    thread = again.start_thread()
    try:
        rerun = run_batch(sqlite_db, store, CAPTION, backend, concurrency=8, policy=policy)
    finally:
        again.stop()
        thread.join(10)
    assert (rerun.considered, rerun.ok, rerun.failed, rerun.retried) == (200 - stats.ok, 200 - stats.ok, 0, len(failed))
    rows = predictions(sqlite_db, spec="caption")
    assert len(rows) == 200 and {r.status for r in rows} == {"ok"}, "one row per item, every one ok"
    assert sorted(r.attempts for r in rows if r.attempts > 1) == [2] * len(failed)
    routed = route_predictions(sqlite_db, settings.routing, CAPTION)
    assert routed.considered == 200 - stats.ok
    with sqlite_db.session() as s:
        tasks = list(s.scalars(select(ReviewTask)))
    assert len(tasks) == 200 and {t.route for t in tasks} <= {"auto", "review", "audit"}
    assert not [t for t in tasks if t.reason.startswith("prediction failed")]


def test_transient_failures_are_retried_with_backoff_up_to_a_limit_permanent_on_request(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    from fixtures_vllm import ingest_images, sha256

    settings = vllm_server.settings(sqlite_settings, max_retries=0)
    store = LocalStore(settings.storage.root)
    images = {f"i{i}.jpg": make_image(80 + i, 60, seed=300 + i) for i in range(5)}
    flaky, broken = sha256(images["i0.jpg"]), sha256(images["i1.jpg"])
    vllm_server.faults(flaky, *["500"] * 10)
    vllm_server.faults(broken, "malformed")
    items = ingest_images(sqlite_db, store, settings, tmp_path / "in", images)
    policy = PrelabelSettings(max_attempts=3, retry_backoff_s=3600.0, max_transient_failure_share=1.0)
    first = run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), policy=policy)
    assert (first.ok, first.transient, first.permanent) == (3, 1, 1)
    # backoff: an hour before the next attempt, so an immediate rerun does nothing
    assert run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), policy=policy).considered == 0
    (row,) = predictions(sqlite_db, item_id=items["i0.jpg"].id)
    assert 3590 < (row.retry_after - row.created_at).total_seconds() < 3610

    def an_hour_later() -> None:
        with sqlite_db.session() as s:
            past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            s.execute(update(Prediction).where(Prediction.retry_after.is_not(None)).values(retry_after=past))
            s.commit()

    no_wait = policy.model_copy(update={"retry_backoff_s": 0.0})
    an_hour_later()
    for attempt in (2, 3):
        run = run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), policy=no_wait)
        assert (run.considered, run.transient, run.retried) == (1, 1, 1)
        (row,) = predictions(sqlite_db, item_id=items["i0.jpg"].id)
        assert (row.status, row.attempts) == ("failed", attempt)
    # the limit: three attempts, then only on request
    assert run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), policy=no_wait).considered == 0
    vllm_server.reset()  # the server is healthy again
    on_request = run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), policy=no_wait, retry_failed=True)
    assert (on_request.considered, on_request.ok, on_request.retried) == (2, 2, 2)
    rows = {r.item_id: r for r in predictions(sqlite_db, spec="caption")}
    assert len(rows) == 5 and {r.status for r in rows.values()} == {"ok"}
    assert rows[items["i0.jpg"].id].attempts == 4 and rows[items["i1.jpg"].id].attempts == 2


def test_a_batch_mostly_failing_for_transient_reasons_fails_loudly(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    from fixtures_vllm import ingest_images, sha256

    settings = vllm_server.settings(sqlite_settings, max_retries=0)
    store = LocalStore(settings.storage.root)
    images = {f"j{i}.jpg": make_image(90 + i, 60, seed=400 + i) for i in range(10)}
    for name in ("j0.jpg", "j3.jpg"):  # 2 of 10 > 10%: the output is materially missing
        vllm_server.faults(sha256(images[name]), "500")
    ingest_images(sqlite_db, store, settings, tmp_path / "in", images)
    with pytest.raises(PrelabelBatchError, match="2 of 10 items failed for transient reasons"):
        run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store))
    assert len(predictions(sqlite_db, status="ok")) == 8, "what finished is stored"


# --------------------------------------------------------------------------- bad annotations


def _bad_results(good: list[dict[str, Any]]) -> dict[str, tuple[list[dict[str, Any]], str]]:
    """One malformed and ten spec-breaking variants of a good vehicle result, with the reason
    each must be rejected for."""

    def edit(region_id: str, from_name: str | None = None, **value: Any) -> list[dict[str, Any]]:
        out = copy.deepcopy(good)
        for r in out:
            if r["id"] == region_id and (from_name is None or r["from_name"] == from_name):
                r["value"].update(value)
        return out

    plate = next(r for r in good if r["id"] == "plate_box")
    color = next(r for r in good if r["id"] == "plate_color")
    return {
        "malformed": (edit("plate_box", x="abc"), "x='abc' is not a number"),
        "outside_right": (edit("plate_box", x=95.0, width=10.0), "lies outside the 640x480 image"),
        "outside_top": (edit("vehicle_box", y=-5.0), "lies outside the 640x480 image"),
        "two_choices": (edit("plate_color", choices=["blue", "yellow"]), "2 choices"),
        "unknown_choice": (edit("plate_color", choices=["purple"]), "is not one of the spec's choices"),
        "unknown_control": (
            [*copy.deepcopy(good), {**copy.deepcopy(color), "id": "x1", "from_name": "wheel_count"}],
            "unknown control 'wheel_count'",
        ),
        "unknown_label": (
            [
                *copy.deepcopy(good),
                {**copy.deepcopy(plate), "id": "x2", "value": {**plate["value"], "rectanglelabels": ["wheel"]}},
            ],
            "unknown label(s) ['wheel']",
        ),
        "two_plates": (
            [*copy.deepcopy(good), {**copy.deepcopy(plate), "id": "x3"}],
            "2 boxes labelled 'plate'",
        ),
        "no_area": (edit("plate_box", width=0.0), "has no area"),
        "null_coordinate": (edit("vehicle_box", height=None), "height=None is not a number"),
        "too_long": (edit("plate_number", text=["X" * 40]), "breaks the spec's schema: plate_number"),
    }


@pytest.mark.labelstudio
def test_one_malformed_and_ten_spec_breaking_annotations_never_stop_sync_nor_reach_a_version(
    label_studio: Any, tmp_path: Path, pg_url: str, review_data: Any
) -> None:
    from labelloop.db import Annotation, AnnotationReject, FieldCorrection, Record
    from labelloop.review.convert import ImageSize, to_result
    from labelloop.review.importer import import_pending
    from labelloop.review.sync import sync_project
    from labelloop.status import pipeline_status

    vehicle = SPECS.get("vehicle_extraction")
    env = label_studio.review_env(tmp_path, pg_url, upgrade=False)
    store, settings, db, ls = env.store, env.settings, env.db, env.ls
    n_good = 9
    bad = _bad_results(to_result(vehicle, review_data.vehicle_record(0), ImageSize(640, 480)))
    review_data.add_vehicle_batch(db, vehicle, [0.5] * (n_good + len(bad)))
    route_predictions(db, settings.routing, vehicle)
    pid = import_pending(db, ls, settings, vehicle, SPECS.label_config(vehicle), store).project_id
    with db.session() as s:
        rts = list(s.scalars(select(ReviewTask).order_by(ReviewTask.id)))
    # bad annotations first, interleaved with good ones; the good ones after them must sync too
    order = list(bad) + ["good"] * n_good
    expected_reason = {}
    for rt, kind in zip(rts, order, strict=True):
        if kind == "good":
            with db.session() as s:
                record = s.get(Prediction, rt.prediction_id).record
            result = to_result(vehicle, record, ImageSize(640, 480))
        else:
            result, reason = bad[kind]
            expected_reason[rt.ls_task_id] = reason
        ls.annotations.create(id=rt.ls_task_id, result=result)

    stats = sync_project(db, ls, settings, vehicle)
    assert (stats.annotations_new, stats.rejected, stats.completed) == (n_good, len(bad), n_good)
    with db.session() as s:
        rejects = {r.ls_task_id: r for r in s.scalars(select(AnnotationReject))}
        assert len(rejects) == 11
        for task_id, reason in expected_reason.items():
            assert reason in rejects[task_id].reason, (task_id, rejects[task_id].reason)
            assert rejects[task_id].ls_project_id == pid and rejects[task_id].ls_annotation_id
        bad_rts = [rt.id for rt in rts if rt.ls_task_id in rejects]
        assert not s.scalars(select(Annotation).where(Annotation.review_task_id.in_(bad_rts))).all()
        assert not s.scalars(select(FieldCorrection).where(FieldCorrection.review_task_id.in_(bad_rts))).all()
        records = list(s.scalars(select(Record)))
    assert len(records) == n_good and {r.provenance for r in records} == {"human"}
    assert {r.item_id for r in records}.isdisjoint({rt.item_id for rt in rts if rt.ls_task_id in rejects})
    assert pipeline_status(db)["annotation_rejects"] == {"vehicle_extraction": 11}

    # a rerun neither re-records them nor blocks: the watermark moved past them
    again = sync_project(db, ls, settings, vehicle)
    assert (again.annotations_new, again.rejected) == (0, 0)
    # an annotator fixes one: it syncs like any other
    fixed = next(rt for rt in rts if expected_reason.get(rt.ls_task_id) == "x='abc' is not a number")
    (ann,) = ls.annotations.list(id=fixed.ls_task_id)
    with db.session() as s:
        good_record = s.get(Prediction, fixed.prediction_id).record
    ls.annotations.update(id=ann.id, result=to_result(vehicle, good_record, ImageSize(640, 480)))
    third = sync_project(db, ls, settings, vehicle)
    assert (third.annotations_new, third.rejected, third.records) == (1, 0, 1)

    # records are what validation and export read: the ten rejected items have none
    with db.session() as s:
        assert len(s.scalars(select(Record)).all()) == n_good + 1
    db.dispose()


# --------------------------------------------------------------------------- overlapping importers

_IMPORTER = """
import json, sys, time
from labelloop.config import Settings
from labelloop.db import Database
from labelloop.review.client import client_from_settings
from labelloop.review.importer import import_pending
from labelloop.specs import SpecRegistry
from labelloop.storage import open_store

settings = Settings()
db = Database(settings.db)
registry = SpecRegistry()
spec = registry.get("vehicle_extraction")
ls = client_from_settings(settings.label_studio)
store = open_store(settings.storage)
while time.time() < float(sys.argv[1]):  # both processes start importing at the same instant
    time.sleep(0.005)
stats = import_pending(db, ls, settings, spec, registry.label_config(spec), store)
print(json.dumps(stats.as_dict()))
"""


def _two_importers(settings: Settings) -> list[dict[str, Any]]:
    import json
    import os
    import subprocess
    import sys
    import time

    lss = settings.label_studio
    env = {
        **os.environ,
        "LABELLOOP_DB__URL": settings.db.url_value,
        "LABELLOOP_STORAGE__ROOT": str(settings.storage.root),
        "LABELLOOP_LABEL_STUDIO__URL": lss.url,
        "LABELLOOP_LABEL_STUDIO__TOKEN": lss.token.get_secret_value(),
        "LABELLOOP_LABEL_STUDIO__PROJECT_PREFIX": lss.project_prefix,
        "LABELLOOP_LABEL_STUDIO__LOCAL_FILES_ROOT": str(lss.local_files_root),
        "LABELLOOP_LABEL_STUDIO__IMPORT_CHUNK": "250",
    }
    start = str(time.time() + 8)
    procs = [
        subprocess.Popen([sys.executable, "-c", _IMPORTER, start], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


@pytest.mark.labelstudio
@pytest.mark.parametrize("project", ["first_import", "existing_project"])
def test_two_importers_started_together_leave_exactly_2000_tasks_in_one_project(
    label_studio: Any, tmp_path: Path, pg_url: str, review_data: Any, project: str
) -> None:
    from labelloop.review.projects import ensure_project, project_title

    vehicle = SPECS.get("vehicle_extraction")
    env = label_studio.review_env(tmp_path, pg_url, upgrade=False)
    settings, db, ls = env.settings, env.db, env.ls
    review_data.add_vehicle_batch(db, vehicle, [0.5] * 2000)
    assert route_predictions(db, settings.routing, vehicle).review == 2000
    title = project_title(settings.label_studio.project_prefix, vehicle)
    if project == "existing_project":  # made before project ids were stored: found by title once
        existing = ensure_project(ls, settings.label_studio.project_prefix, vehicle, SPECS.label_config(vehicle))
    stats = _two_importers(settings)
    assert sorted(st["imported"] for st in stats) == [0, 2000], stats
    pids = {st["project_id"] for st in stats}
    assert len(pids) == 1, "both used the same project"
    (pid,) = pids
    if project == "existing_project":
        assert pid == existing
    same_title = [p.id for p in ls.projects.list(title=title) if p.title == title]
    assert same_title == [pid], "no second project with the same title"
    total = ls.tasks.list(project=pid, fields="task_only", include="id", page_size=1).response.total
    assert total == 2000
    with db.session() as s:
        rows = list(s.scalars(select(ReviewTask)))
    assert {(r.status, r.ls_project_id) for r in rows} == {("imported", pid)}
    assert len({r.ls_task_id for r in rows}) == 2000
    db.dispose()


def test_the_import_lock_excludes_a_second_holder_on_both_databases(db: Database) -> None:
    """The lock itself, on PostgreSQL (advisory) and SQLite (flock): a second holder in another
    process waits, and times out with a message naming the lock."""
    import subprocess
    import sys

    from labelloop.db.locks import exclusive

    probe = (
        "import sys\n"
        "from labelloop.config import DatabaseSettings\n"
        "from labelloop.db import Database\n"
        "from labelloop.db.locks import LockTimeout, exclusive\n"
        "db = Database(DatabaseSettings(url=sys.argv[1]))\n"
        "try:\n"
        "    with exclusive(db, 'label_studio_import:caption', timeout_s=float(sys.argv[2]), poll_s=0.05):\n"
        "        print('got it')\n"
        "except LockTimeout as e:\n"
        "    print('timeout:', e)\n"
    )
    url = db.settings.url_value
    with exclusive(db, "label_studio_import:caption"):
        held = subprocess.run([sys.executable, "-c", probe, url, "1"], capture_output=True, text=True, timeout=120)
        assert held.stdout.startswith("timeout:") and "label_studio_import" in held.stdout, held
        other = subprocess.run(
            [sys.executable, "-c", probe.replace("caption", "grounding"), url, "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert other.stdout.strip() == "got it", "another spec's import is not blocked"
    free = subprocess.run([sys.executable, "-c", probe, url, "1"], capture_output=True, text=True, timeout=120)
    assert free.stdout.strip() == "got it", free


# --------------------------------------------------------------------------- partly reviewed documents


@pytest.mark.labelstudio
def test_a_two_page_pdf_with_one_page_reviewed_is_not_in_the_version(
    label_studio: Any, tmp_path: Path, review_data: Any
) -> None:
    from labelloop.db import Record
    from labelloop.export.plan import MemberStream
    from labelloop.review.importer import import_pending
    from labelloop.review.sync import sync_project
    from labelloop.validation.canonical import record_hash

    doc = SPECS.get("document_layout")
    env = label_studio.review_env(tmp_path)
    store, settings, db, ls = env.store, env.settings, env.db, env.ls
    review_data.add_two_page_pdf(db, doc, 0.5)
    route_predictions(db, settings.routing, doc)
    import_pending(db, ls, settings, doc, SPECS.label_config(doc), store)
    with db.session() as s:
        page0, page1 = s.scalars(select(ReviewTask).order_by(ReviewTask.page)).all()

    def accept(task_id: int) -> None:
        ls.annotations.create(id=task_id, result=ls.tasks.get(id=str(task_id)).predictions[0].result)

    def members() -> list[int]:
        with db.session() as s:
            passing = sorted((r.id, record_hash(r.record)) for r in s.scalars(select(Record)))
        return [row.id for row, _ in MemberStream(db, doc, settings, iter(passing), full=False)]

    accept(page0.ls_task_id)
    sync_project(db, ls, settings, doc)
    with db.session() as s:
        (rec,) = s.scalars(select(Record)).all()
    assert rec.provenance == "partial", "page 1 is still model output: not human"
    assert members() == [], "a partly reviewed document is not exported"

    accept(page1.ls_task_id)
    sync_project(db, ls, settings, doc)
    with db.session() as s:
        (rec,) = s.scalars(select(Record)).all()
    assert rec.provenance == "human"
    assert members() == [rec.id]
    db.dispose()


# --------------------------------------------------------------------------- prediction identity


def test_every_setting_that_changes_the_answer_makes_a_new_prediction(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    from fixtures_vllm import ingest_images

    settings = vllm_server.settings(sqlite_settings)
    store = LocalStore(settings.storage.root)
    ingest_images(
        sqlite_db, store, settings, tmp_path / "in", {f"k{i}.jpg": make_image(120, 90, seed=500 + i) for i in range(3)}
    )
    assert run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store)).ok == 3
    assert run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store)).considered == 0
    hashes = {VLLMBackend(settings).prompt_hash(CAPTION)}
    for change in (
        {"max_tokens": 512},
        {"min_pixels": 6272},
        {"max_pixels": 501_760},
        {"coordinate_mode": "relative_1000"},
    ):
        changed = vllm_server.settings(sqlite_settings, **change)
        hashes.add(VLLMBackend(changed).prompt_hash(CAPTION))
        if "coordinate_mode" not in change:  # the test server answers in its own convention
            assert run_batch(sqlite_db, store, CAPTION, VLLMBackend(changed, store)).ok == 3, change
    assert len(hashes) == 5, "each setting is part of the identity"
    assert len(predictions(sqlite_db, spec="caption")) == 12, "old predictions kept, new ones made"
