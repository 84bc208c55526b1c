"""Import and sync against a real Label Studio server (tests/fixtures_labelstudio.py).

Import: 1,000 tasks with predictions, a rerun imports nothing, a crash after Label Studio accepted
a chunk (before our commit) plus a rerun leaves exactly 1,000 tasks. Sync: an annotator (a second
user with a personal access token) accepts, corrects, skips; the records and the correction log
follow; a second sync brings nothing; an edit syncs again (history kept); a deleted task is marked.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from labelloop.config import RoutingSettings, Settings
from labelloop.db import Annotation, Database, FieldCorrection, Record, ReviewTask, SyncState
from labelloop.review import importer
from labelloop.review.importer import import_pending
from labelloop.review.routing import route_predictions
from labelloop.review.sync import count_new_completed, sync_key, sync_project
from labelloop.specs import SpecRegistry, TaskSpec
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_labelstudio"]
pytestmark = pytest.mark.labelstudio

REGISTRY = SpecRegistry()
VEHICLE = REGISTRY.get("vehicle_extraction")


@pytest.fixture
def store(label_studio: Any) -> LocalStore:
    return label_studio.new_store()


def _setup(label_studio: Any, tmp_path: Path, db_url: str, store: LocalStore, **ls: Any) -> tuple[Settings, Database]:
    settings = label_studio.settings(tmp_path, db_url, store, **ls)
    db = Database(settings.db)
    db.upgrade()
    return settings, db


@pytest.fixture
def env(label_studio: Any, tmp_path: Path, db_url: str, store: LocalStore) -> Iterator[tuple[Settings, Database]]:
    """Settings and a migrated curation DB, on SQLite and on PostgreSQL (``db_url`` is parametrized)."""
    settings, db = _setup(label_studio, tmp_path, db_url, store, import_chunk=250)
    yield settings, db
    db.dispose()


@pytest.fixture
def sqlite_env(label_studio: Any, tmp_path: Path, store: LocalStore) -> Iterator[tuple[Settings, Database]]:
    settings, db = _setup(label_studio, tmp_path, f"sqlite:///{tmp_path / 'curation.db'}", store, import_chunk=300)
    yield settings, db
    db.dispose()


def _import(settings: Settings, db: Database, ls: Any, store: LocalStore, spec: TaskSpec = VEHICLE) -> Any:
    return import_pending(db, ls, settings, spec, REGISTRY.label_config(spec), store)


def _ls_task_count(ls: Any, project_id: int) -> int:
    return int(ls.tasks.list(project=project_id, fields="task_only", include="id", page_size=1).response.total)


def _review_tasks(db: Database, spec: str = VEHICLE.name) -> list[ReviewTask]:
    with db.session() as s:
        return list(s.scalars(select(ReviewTask).where(ReviewTask.spec == spec).order_by(ReviewTask.id)))


# --------------------------------------------------------------------------- import


def test_thousand_tasks_import_once_lowest_confidence_first(
    env: tuple[Settings, Database], label_studio: Any, store: LocalStore, review_data: Any
) -> None:
    settings, db = env
    ls = label_studio.client()
    confidences = [round(0.2 + 0.6 * ((i * 37 + 11) % 1000) / 1000, 4) for i in range(1000)]
    review_data.add_vehicle_batch(db, VEHICLE, confidences)
    routed = route_predictions(db, settings.routing, VEHICLE)
    assert routed.review == 1000

    stats = _import(settings, db, ls, store)
    # chunks ramp up from 125, doubling, to import_chunk=250: 125 + 250 + 250 + 250 + 125
    assert (stats.pending, stats.imported, stats.already_there, stats.chunks, stats.lookups) == (1000, 1000, 0, 5, 1)
    pid = stats.project_id
    assert _ls_task_count(ls, pid) == 1000
    rows = _review_tasks(db)
    assert {r.status for r in rows} == {"imported"} and {r.ls_project_id for r in rows} == {pid}
    assert len({r.ls_task_id for r in rows}) == 1000
    assert ls.projects.get(id=pid).model_version == "v1"

    again = _import(settings, db, ls, store)
    assert (again.pending, again.imported) == (0, 0)
    assert _ls_task_count(ls, pid) == 1000

    # the stored task id leads to the right task, pre-labeled in Label Studio's format
    row = rows[123]
    task = ls.tasks.get(id=str(row.ls_task_id))
    assert task.data["external_id"] == row.external_id
    assert task.data["image"].startswith("/data/local-files/?d=")
    pred = task.predictions[0]
    assert pred.model_version == "v1" and pred.score == pytest.approx(confidences[123])
    plate = next(r for r in pred.result if r["id"] == "plate_box")
    assert plate["score"] == pytest.approx(confidences[123])
    assert plate["original_width"] == 640 and plate["value"]["rectanglelabels"] == ["plate"]

    # the labeling queue serves the least confident task first (uncertainty sampling)
    nxt = httpx.get(
        f"{label_studio.url}/api/projects/{pid}/next", headers={"Authorization": f"Token {label_studio.token}"}
    )
    lowest = min(range(1000), key=confidences.__getitem__)
    assert nxt.status_code == 200 and nxt.json()["id"] == rows[lowest].ls_task_id


def test_crash_after_label_studio_accepted_a_chunk_then_rerun(
    sqlite_env: tuple[Settings, Database], label_studio: Any, store: LocalStore, review_data: Any, monkeypatch: Any
) -> None:
    settings, db = sqlite_env
    ls = label_studio.client()
    review_data.add_vehicle_batch(db, VEHICLE, [0.5] * 1000)
    route_predictions(db, settings.routing, VEHICLE)
    real = importer.request
    posts: list[str] = []

    def crash_on_second_chunk(ls_: Any, what: str, method: str, path: str, **kwargs: Any) -> Any:
        if method != "POST" or not path.endswith("/import"):
            return real(ls_, what, method, path, **kwargs)
        posts.append(what)
        assert kwargs["retries"] == 0  # the SDK must not retry an import
        out = real(ls_, what, method, path, **kwargs)
        if len(posts) == 2:  # Label Studio has the chunk; we die before our commit
            raise RuntimeError("worker killed")
        return out

    monkeypatch.setattr(importer, "request", crash_on_second_chunk)
    with pytest.raises(RuntimeError, match="worker killed"):
        _import(settings, db, ls, store)
    rows = _review_tasks(db)
    # chunks of 125 (the ramp's first) then 300: only the first was committed ...
    assert sum(r.status == "imported" for r in rows) == 125
    pid = rows[0].ls_project_id
    assert _ls_task_count(ls, pid) == 125 + 250  # ... but Label Studio holds two chunks

    monkeypatch.setattr(importer, "request", real)
    stats = _import(settings, db, ls, store)
    # the crashed chunk is found by one read of the tasks above the newest id we stored
    assert (stats.pending, stats.already_there, stats.imported, stats.lookups) == (875, 250, 625, 1)
    assert _ls_task_count(ls, pid) == 1000
    rows = _review_tasks(db)
    assert {r.status for r in rows} == {"imported"} and len({r.ls_task_id for r in rows}) == 1000
    ext_by_task = {t.id: t.data["external_id"] for t in ls.tasks.list(project=pid, include="id,data", page_size=1000)}
    assert all(ext_by_task[r.ls_task_id] == r.external_id for r in rows)


# --------------------------------------------------------------------------- sync


def _accept(ann_client: Any, task_id: int, lead_time: float = 4.2) -> Any:
    task = ann_client.tasks.get(id=str(task_id))
    return ann_client.annotations.create(id=task_id, result=task.predictions[0].result, lead_time=lead_time)


def _corrections(db: Database, review_task_id: int, latest: bool = True) -> dict[str, FieldCorrection]:
    with db.session() as s:
        rows = s.scalars(
            select(FieldCorrection).where(
                FieldCorrection.review_task_id == review_task_id, FieldCorrection.is_latest == latest
            )
        )
        return {r.field: r for r in rows}


def _record(db: Database, item_id: int, spec: str = VEHICLE.name) -> Record | None:
    with db.session() as s:
        return s.scalar(select(Record).where(Record.item_id == item_id, Record.spec == spec))


def test_annotations_sync_into_records_and_the_correction_log(
    env: tuple[Settings, Database], label_studio: Any, store: LocalStore, review_data: Any
) -> None:
    settings, db = env
    # pages of two tasks: the keyset paging over updated_at is exercised, not just one page
    settings = settings.model_copy(
        update={"label_studio": settings.label_studio.model_copy(update={"sync_page_size": 2})}
    )
    ls = label_studio.client()
    review_ids = review_data.add_vehicle_batch(db, VEHICLE, [0.5, 0.6, 0.7, 0.8])
    audit_ids = review_data.add_vehicle_batch(db, VEHICLE, [0.99], tag="audit")
    route_predictions(db, settings.routing, VEHICLE, prediction_ids=review_ids)
    route_predictions(
        db, RoutingSettings(use_manual_thresholds=True, audit_rate=1.0), VEHICLE, prediction_ids=audit_ids
    )
    pid = _import(settings, db, ls, store).project_id
    accepted, corrected, skipped, untouched, audited = _review_tasks(db)
    assert audited.route == "audit"

    annotator = label_studio.signup(f"ann-{uuid.uuid4().hex[:8]}@example.com")
    ann = annotator.client()  # a personal access token (JWT), refreshed by the SDK
    assert ann.users.whoami().email == annotator.email
    first = _accept(ann, accepted.ls_task_id)
    _accept(ann, audited.ls_task_id, lead_time=2.0)
    result = copy.deepcopy(ann.tasks.get(id=str(corrected.ls_task_id)).predictions[0].result)
    for r in result:
        if r["id"] == "plate_box":  # the plate is elsewhere: moved far, no overlap
            r["value"].update(x=70.0, y=5.0)
        if r["id"] == "plate_number":
            r["value"]["text"] = ["XY98765"]
    ann.annotations.create(id=corrected.ls_task_id, result=result, lead_time=31.5)
    ann.annotations.create(id=skipped.ls_task_id, result=[], was_cancelled=True, lead_time=1.0)

    assert count_new_completed(db, ls, settings, VEHICLE) == 3  # what the next sync will pick up
    stats = sync_project(db, ls, settings, VEHICLE)
    assert (stats.annotations_new, stats.completed, stats.skipped, stats.deleted) == (4, 3, 1, 0)
    assert stats.corrections == 3 * len(VEHICLE.fields)
    status = {r.id: r.status for r in _review_tasks(db)}
    assert status == {
        accepted.id: "completed",
        corrected.id: "completed",
        skipped.id: "skipped",
        untouched.id: "imported",
        audited.id: "completed",
    }

    unchanged = _corrections(db, accepted.id)
    assert set(unchanged) == set(VEHICLE.fields)
    assert not any(c.changed for c in unchanged.values())
    assert unchanged["plate_box"].model_value == unchanged["plate_box"].human_value
    assert unchanged["brand"].model_confidence == pytest.approx(0.5) and unchanged["brand"].route == "review"
    fixed = _corrections(db, corrected.id)
    assert {f for f, c in fixed.items() if c.changed} == {"plate_box", "plate_number"}
    assert fixed["plate_number"].human_value == "XY98765" and fixed["plate_box"].distance == 1.0
    assert fixed["plate_box"].human_value == [448, 24, 568, 64]  # back in original pixels
    assert _corrections(db, skipped.id) == {}
    assert _corrections(db, audited.id)["color"].route == "audit"

    rec = _record(db, accepted.item_id)
    assert rec is not None and rec.provenance == "human" and rec.annotator == annotator.email
    assert rec.record == review_data.vehicle_record(0)
    assert _record(db, corrected.item_id).record["plate_number"] == "XY98765"  # type: ignore[union-attr]
    assert _record(db, audited.item_id).provenance == "audited"  # type: ignore[union-attr]
    assert _record(db, skipped.item_id) is None and _record(db, untouched.item_id) is None
    with db.session() as s:
        a = s.scalar(select(Annotation).where(Annotation.review_task_id == corrected.id))
        assert a is not None and a.lead_time_s == 31.5 and a.annotator == annotator.email and a.is_latest
        assert a.record["plate_number"] == "XY98765"
        watermark = s.get(SyncState, sync_key(pid)).watermark  # type: ignore[union-attr]
    assert watermark is not None and count_new_completed(db, ls, settings, VEHICLE) == 0

    # a second sync brings nothing
    again = sync_project(db, ls, settings, VEHICLE)
    assert (again.annotations_new, again.corrections, again.records) == (0, 0, 0)
    assert again.annotations_known >= 1  # the overlap re-read them, the dedupe dropped them
    with db.session() as s:
        assert s.scalar(select(func.count(Annotation.id))) == 4
        assert s.scalar(select(func.count(FieldCorrection.id))) == 3 * len(VEHICLE.fields)

    # the annotator edits an accepted annotation: it syncs again, history kept, latest wins
    edited = copy.deepcopy(first.result)
    for r in edited:
        if r["id"] == "brand":
            r["value"]["text"] = ["Lexus"]
    ann.annotations.update(id=first.id, result=edited, lead_time=9.0)
    assert count_new_completed(db, ls, settings, VEHICLE) == 1
    third = sync_project(db, ls, settings, VEHICLE)
    assert (third.annotations_new, third.completed) == (1, 1)
    with db.session() as s:
        versions = list(
            s.scalars(
                select(Annotation).where(Annotation.review_task_id == accepted.id).order_by(Annotation.ls_updated_at)
            )
        )
    assert [v.ls_annotation_id for v in versions] == [first.id, first.id]
    assert [v.is_latest for v in versions] == [False, True]
    latest = _corrections(db, accepted.id)
    assert {f for f, c in latest.items() if c.changed} == {"brand"}
    assert latest["brand"].human_value == "Lexus" and latest["brand"].annotation_id == versions[1].id
    assert not any(c.changed for c in _corrections(db, accepted.id, latest=False).values())
    assert _record(db, accepted.item_id).record["brand"] == "Lexus"  # type: ignore[union-attr]

    # a task deleted in Label Studio is marked deleted
    ls.tasks.delete(id=str(untouched.ls_task_id))
    fourth = sync_project(db, ls, settings, VEHICLE)
    assert fourth.deleted == 1 and fourth.annotations_new == 0
    assert {r.id: r.status for r in _review_tasks(db)}[untouched.id] == "deleted"


def test_regions_and_document_pages_sync_in_pixels(
    sqlite_env: tuple[Settings, Database], label_studio: Any, store: LocalStore, review_data: Any
) -> None:
    settings, db = sqlite_env
    ls = label_studio.client()
    ocr = REGISTRY.get("ocr_lines")
    doc = REGISTRY.get("document_layout")
    item = review_data.add_image_item(db, store, 1)
    review_data.add_prediction(
        db,
        ocr,
        item,
        review_data.sample_record("ocr_lines"),
        {"lines": 0.4},
        detail={"fields": {"lines": {"scores": [0.9, 0.4, 0.8]}}},
    )
    with db.session() as s:
        from labelloop.db import Item

        pdf = Item(
            sha256="ef" * 32,
            media_type="document",
            mime="application/pdf",
            ext="pdf",
            size_bytes=1,
            storage_key="raw/ef/x.pdf",
            page_count=2,
        )
        s.add(pdf)
        s.commit()
    record = review_data.sample_record("document_layout", sha="ef" * 32)
    page1 = {**copy.deepcopy(record["pages"][0]), "page": 1, "image_key": f"pages/{'ef' * 32}/1.png"}
    record["pages"].append(page1)
    review_data.add_prediction(db, doc, pdf, record, {"blocks": 0.62})
    for spec in (ocr, doc):
        route_predictions(db, settings.routing, spec)
        _import(settings, db, ls, store, spec)
    (line_task,) = _review_tasks(db, ocr.name)
    page0, page1_task = _review_tasks(db, doc.name)
    assert ls.tasks.get(id=str(page1_task.ls_task_id)).data["image"].endswith(f"pages/{'ef' * 32}/1.png")

    annotator = label_studio.signup(f"ann-{uuid.uuid4().hex[:8]}@example.com")
    ann = annotator.client()
    pred_result = ann.tasks.get(id=str(line_task.ls_task_id)).predictions[0].result
    assert [r["score"] for r in pred_result if r["type"] == "rectanglelabels"] == [0.9, 0.4, 0.8]
    result = copy.deepcopy(pred_result)
    for r in result:
        if r["id"] == "lines-1" and r["type"] == "textarea":
            r["value"]["text"] = ["Merci de votre visite !"]
    ann.annotations.create(id=line_task.ls_task_id, result=result)
    _accept(ann, page0.ls_task_id)
    result = copy.deepcopy(ann.tasks.get(id=str(page1_task.ls_task_id)).predictions[0].result)
    for r in result:
        if r["id"] == "blocks-0" and r["type"] == "textarea":
            r["value"]["text"] = ["Annual report 2026"]
    ann.annotations.create(id=page1_task.ls_task_id, result=result)

    sync_project(db, ls, settings, ocr)
    lines = _corrections(db, line_task.id)["lines"]
    assert lines.changed and lines.distance == pytest.approx(1 / 3)
    assert _record(db, item.id, ocr.name).record["lines"][1] == {  # type: ignore[union-attr]
        "bbox": [40, 80, 300, 110],
        "text": "Merci de votre visite !",
    }
    stats = sync_project(db, ls, settings, doc)
    assert stats.completed == 2
    assert not _corrections(db, page0.id)["blocks"].changed
    assert _corrections(db, page1_task.id)["blocks"].changed
    merged = _record(db, pdf.id, doc.name).record  # type: ignore[union-attr]
    assert merged["pages"][0]["blocks"] == [{**b, "score": 1.0} for b in record["pages"][0]["blocks"]]
    assert merged["pages"][1]["blocks"][0]["content"] == "Annual report 2026"
    assert merged["pages"][1]["width_pt"] == 612.0 and "# Annual report 2026" in merged["markdown"]


def test_failed_prediction_is_reviewed_from_scratch(
    sqlite_env: tuple[Settings, Database], label_studio: Any, store: LocalStore, review_data: Any
) -> None:
    settings, db = sqlite_env
    ls = label_studio.client()
    confident = review_data.add_vehicle_batch(db, VEHICLE, [0.95])
    item = review_data.add_image_item(db, None, 21)
    failed = review_data.add_prediction(db, VEHICLE, item, None, {}, status="failed")
    route_predictions(
        db, RoutingSettings(use_manual_thresholds=True, audit_rate=1.0), VEHICLE, prediction_ids=confident
    )
    assert route_predictions(db, settings.routing, VEHICLE, prediction_ids=[failed.id]).considered == 0
    by_hand = settings.routing.model_copy(update={"review_failures": True})
    route_predictions(db, by_hand, VEHICLE, prediction_ids=[failed.id])
    _import(settings, db, ls, store)
    audit_task, failed_task = _review_tasks(db)
    assert audit_task.route == "audit"
    assert failed_task.reason == "prediction failed (transient, 1 attempt(s)): model timed out"
    task = ls.tasks.get(id=str(failed_task.ls_task_id))
    assert task.data["labelloop_note"] == f"No pre-annotation: {failed_task.reason}"
    assert task.predictions[0].score == 0.0 and task.predictions[0].result == []  # first in the queue
    nxt = httpx.get(
        f"{label_studio.url}/api/projects/{failed_task.ls_project_id}/next",
        headers={"Authorization": f"Token {label_studio.token}"},
    )
    assert nxt.json()["id"] == failed_task.ls_task_id

    drawn = convert_record(review_data.vehicle_record(3))
    ls.annotations.create(id=failed_task.ls_task_id, result=drawn)
    sync_project(db, ls, settings, VEHICLE)
    fixes = _corrections(db, failed_task.id)
    assert fixes["plate_number"].changed and fixes["plate_number"].model_value is None
    assert fixes["plate_number"].model_confidence == 0.0
    assert all(c.changed and c.model_value is None for c in fixes.values())  # drawn from scratch
    assert _record(db, item.id).record == review_data.vehicle_record(3)  # type: ignore[union-attr]


def convert_record(record: dict[str, Any]) -> list[dict[str, Any]]:
    from labelloop.review.convert import ImageSize, to_result

    return to_result(VEHICLE, record, ImageSize(640, 480))


# --------------------------------------------------------------------------- media


def test_local_files_are_served_to_a_logged_in_annotator(
    sqlite_env: tuple[Settings, Database], label_studio: Any, store: LocalStore, review_data: Any
) -> None:
    settings, db = sqlite_env
    ls = label_studio.client()
    item = review_data.add_image_item(db, store, 3, width=320, height=200)
    review_data.add_prediction(
        db, VEHICLE, item, review_data.vehicle_record(1, 320, 200), {f: 0.3 for f in VEHICLE.fields}
    )
    route_predictions(db, settings.routing, VEHICLE)
    _import(settings, db, ls, store)
    (rt,) = _review_tasks(db)
    url = ls.tasks.get(id=str(rt.ls_task_id)).data["image"]
    annotator = label_studio.signup(f"ann-{uuid.uuid4().hex[:8]}@example.com")
    with httpx.Client(base_url=label_studio.url) as web:
        web.get("/user/login/")
        web.post(
            "/user/login/",
            data={
                "csrfmiddlewaretoken": web.cookies.get("csrftoken"),
                "email": annotator.email,
                "password": annotator.password,
            },
        )
        r = web.get(url)
    assert r.status_code == 200 and r.content == store.get(item.storage_key)


@pytest.mark.s3
def test_s3_and_presigned_media(label_studio: Any, tmp_path: Path, s3_settings: Any, review_data: Any) -> None:
    from labelloop.storage.s3 import S3Store

    s3 = S3Store(s3_settings)
    for mode in ("s3", "presigned"):
        settings = label_studio.settings(
            tmp_path, f"sqlite:///{tmp_path / f'{mode}.db'}", LocalStore(tmp_path / "unused"), media_mode=mode
        )
        ls_keys = {"s3_access_key": "ls-read-only", "s3_secret_key": "ls-read-only-secret"}
        settings = settings.model_copy(
            update={
                "storage": s3_settings,
                "label_studio": settings.label_studio.model_validate({**settings.label_studio.model_dump(), **ls_keys}),
            }
        )
        db = Database(settings.db)
        db.upgrade()
        item = review_data.add_image_item(db, None, 11, width=64, height=48)
        data = review_data.png_bytes(64, 48, 11)
        s3.put(item.storage_key, data)
        review_data.add_prediction(
            db, VEHICLE, item, review_data.vehicle_record(1, 64, 48), {f: 0.3 for f in VEHICLE.fields}
        )
        route_predictions(db, settings.routing, VEHICLE)
        ls = label_studio.client()
        import_pending(db, ls, settings, VEHICLE, REGISTRY.label_config(VEHICLE), s3)
        (rt,) = _review_tasks(db)
        headers = {"Authorization": f"Token {label_studio.token}"}
        raw = ls.tasks.get(id=str(rt.ls_task_id))
        if mode == "s3":
            # the task list resolves s3:// through the project's S3 storage: a 303 to a presigned URL
            listed = httpx.get(
                f"{label_studio.url}/api/tasks/", params={"project": rt.ls_project_id}, headers=headers
            ).json()
            resolved = listed["tasks"][0]["data"]["image"]
            assert resolved.startswith(f"/tasks/{rt.ls_task_id}/resolve/")
            r = httpx.get(label_studio.url + resolved, headers=headers)
            assert r.status_code == 303
            assert httpx.get(r.headers["location"]).content == data
        else:
            url = raw.data["image"]
            assert url.startswith(f"http://{s3_settings.endpoint}/") and "X-Amz-Signature" in url
            assert httpx.get(url).content == data
        db.dispose()


def test_label_studio_server_environment_is_scrubbed(monkeypatch: Any, tmp_path: Path) -> None:
    from labelloop.review.server import LocalLabelStudio

    for k in ("USERNAME", "PASSWORD", "PORT", "HOST", "DEBUG"):
        monkeypatch.setenv(k, "hijack")
    env = LocalLabelStudio(executable=Path("x"), data_dir=tmp_path, local_files_root=tmp_path / "f").environment()
    assert not {"USERNAME", "PASSWORD", "PORT", "HOST", "DEBUG"} & set(env)
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path / "f")


# --------------------------------------------------------------------------- Airflow operators


def test_connection_url_forms() -> None:
    from labelloop_airflow.hooks.label_studio import connection_url

    assert connection_url("http://ls:8080/", None, None) == "http://ls:8080"
    assert connection_url("https://ls.example.com", None, 8443) == "https://ls.example.com:8443"
    assert connection_url("label-studio", "https", 8080) == "https://label-studio:8080"
    assert connection_url("label-studio", "postgres", None) == "http://label-studio"


def test_operators(label_studio: Any, tmp_path: Path, store: LocalStore, review_data: Any, monkeypatch: Any) -> None:
    import json

    from labelloop_airflow.review import RouteAndImportOperator, SyncOperator

    prefix = f"op{uuid.uuid4().hex[:6]}"
    db_url = f"sqlite:///{tmp_path / 'curation.db'}"
    monkeypatch.setenv("LABELLOOP_DB__URL", db_url)
    monkeypatch.setenv("LABELLOOP_STORAGE__ROOT", str(store.root))
    monkeypatch.setenv("LABELLOOP_LABEL_STUDIO__LOCAL_FILES_ROOT", str(label_studio.files_root))
    connection = {
        "conn_type": "label_studio",
        "host": label_studio.url,
        "password": label_studio.token,
        "extra": {"project_prefix": prefix, "import_chunk": 2},
    }
    monkeypatch.setenv("AIRFLOW_CONN_LABEL_STUDIO", json.dumps(connection))
    db = Database(Settings().db)
    db.upgrade()
    review_data.add_vehicle_batch(db, VEHICLE, [0.3, 0.4, 0.5])

    out = RouteAndImportOperator(task_id="route_import", spec=VEHICLE.name).execute({})
    assert out["routing"]["review"] == 3
    assert (out["import"]["imported"], out["import"]["chunks"]) == (3, 2)  # import_chunk from the connection
    ls = label_studio.client()
    project = ls.projects.get(id=out["import"]["project_id"])
    assert project.title == f"{prefix}-{VEHICLE.name}"

    rt = _review_tasks(db)[0]
    _accept(ls, rt.ls_task_id)

    stats = SyncOperator(task_id="sync", spec=VEHICLE.name).execute({})
    assert stats["completed"] == 1 and stats["project_id"] == project.id
    db.dispose()
