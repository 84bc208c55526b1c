"""The DAGs on a migrated Airflow metadata DB: export emits the asset event that queues training.

dag.test() runs every task in this process, against the PostgreSQL metadata DB of the
``airflow_db`` fixture; the curation DB is a SQLite file and the object store a folder, both named
to the tasks through LABELLOOP_* environment variables, exactly as on a worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from test_export_support import VEHICLE_OK, add_item, add_record, image_bytes, make_settings, vehicle_items

from labelloop.config import Settings
from labelloop.db import Database, TrainingRun
from labelloop.export import read_manifest
from labelloop.storage import LocalStore

pytestmark = pytest.mark.airflow

DAGS = Path(__file__).resolve().parents[1] / "dags"
ASSET_URI = "labelloop://datasets/"


@pytest.fixture
def labelloop_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Database, LocalStore]:
    settings = make_settings(tmp_path, val_fraction=0.0)
    monkeypatch.setenv("LABELLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("LABELLOOP_DB__URL", settings.db.url_value)
    monkeypatch.setenv("LABELLOOP_STORAGE__BACKEND", "local")
    monkeypatch.setenv("LABELLOOP_STORAGE__ROOT", str(settings.storage.root))
    monkeypatch.setenv("LABELLOOP_TRAINING__WORKDIR", str(settings.training.workdir))
    monkeypatch.setenv("LABELLOOP_EXPORT__VAL_FRACTION", "0.0")
    db = Database(settings.db)
    db.upgrade()
    yield settings, db, LocalStore(settings.storage.root)
    db.dispose()


def _our_errors(bag) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Import errors of our DAG files (other DAGs in the folder are other engineers' business)."""
    return {k: v for k, v in bag.import_errors.items() if "labelloop_export" in k or "labelloop_train" in k}


def _dag_bag():  # type: ignore[no-untyped-def]
    """Parse dags/ as Airflow's bundle parser does (the folder on sys.path) and serialize it."""
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
    assert _our_errors(bag) == {}
    sync_bag_to_db(bag, "dags-folder", None)
    return bag


def _set_paused(dag_id: str, paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as s:
        s.query(DagModel).filter(DagModel.dag_id == dag_id).update({"is_paused": paused})


def _events() -> list[tuple[dict, str | None]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = s.execute(
            select(AssetEvent.extra, AssetEvent.source_dag_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == ASSET_URI)
            .order_by(AssetEvent.id)
        ).all()
    return [(dict(extra), dag_id) for extra, dag_id in rows]


def _queued() -> list[str]:
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session

    with create_session() as s:
        return list(
            s.scalars(
                select(AssetDagRunQueue.target_dag_id)
                .join(AssetModel, AssetModel.id == AssetDagRunQueue.asset_id)
                .where(AssetModel.uri == ASSET_URI)
            )
        )


def _clear_queue() -> None:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as s:
        s.query(AssetDagRunQueue).delete()


def _task_states(dr) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from airflow.utils.session import create_session

    with create_session() as s:
        return {ti.task_id: str(ti.state) for ti in dr.get_task_instances(session=s)}


@pytest.fixture(autouse=True)
def _dags_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(DAGS))  # the bundle parser puts the DAG folder on sys.path


def test_dags_parse_without_errors() -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
    assert _our_errors(bag) == {}
    export, train = bag.dags["labelloop_export"], bag.dags["labelloop_train"]
    assert [t.task_id for t in export.topological_sort()] == ["validate", "quality_gate", "export"]
    assert [a.uri for a in export.get_task("export").outlets] == [ASSET_URI]
    assert "labelloop_datasets" in str(train.timetable.asset_condition)
    for d in (export, train):
        d.validate()


def test_export_asset_event_queues_training_which_then_succeeds(airflow_db: str, labelloop_env) -> None:  # type: ignore[no-untyped-def]
    from airflow.utils.state import DagRunState

    settings, db, store = labelloop_env
    vehicle_items(db, store, 5)
    bag = _dag_bag()
    _set_paused("labelloop_train", False)  # consumers are queued only when unpaused
    _clear_queue()
    before = len(_events())

    dr = bag.dags["labelloop_export"].test(run_conf={"spec": "vehicle_extraction"})
    assert dr.state == DagRunState.SUCCESS, _task_states(dr)

    events = _events()[before:]
    assert len(events) == 1
    extra, source = events[0]
    assert source == "labelloop_export"
    prefix = "datasets/vehicle_extraction/v0001"
    assert extra["uri"] == store.uri(prefix) and extra["prefix"] == prefix
    assert (extra["spec"], extra["version"], extra["created"]) == ("vehicle_extraction", "v0001", True)
    assert extra["counts"]["records"] == 5 and extra["counts"]["train"]["samples"] == 5
    assert extra["manifest_sha256"] and read_manifest(store, prefix) is not None
    assert _queued() == ["labelloop_train"]

    train = bag.dags["labelloop_train"].test(run_conf={"spec": "vehicle_extraction", "version": "v0001"})
    assert train.state == DagRunState.SUCCESS, _task_states(train)
    # no vllm predictions on reviewed items here: nothing to evaluate, and training does not wait for it
    assert _task_states(train)["evaluate_backends"] == "skipped"
    with db.session() as s:
        (run,) = s.scalars(select(TrainingRun)).all()
    assert run.status == "succeeded" and run.return_code == 0
    assert run.dataset_uri == extra["uri"] and run.dataset_version_id == extra["dataset_version_id"]
    assert run.airflow_run_id == train.run_id
    assert (settings.training.workdir / "vehicle_extraction" / "v0001" / "registration.json").is_file()

    # nothing new: the export task is skipped and no event is emitted, so no training is queued
    _clear_queue()
    again = bag.dags["labelloop_export"].test(run_conf={"spec": "vehicle_extraction"})
    assert again.state == DagRunState.SUCCESS
    assert _task_states(again)["export"] == "skipped"
    assert len(_events()) == before + 1 and _queued() == []
    # ...unless asked to announce the existing version again (e.g. to retrain after a lost event);
    # the event then queues labelloop_train only while it is unpaused
    conf = {"spec": "vehicle_extraction", "announce_existing": True}
    _set_paused("labelloop_train", True)
    assert bag.dags["labelloop_export"].test(run_conf=conf).state == DagRunState.SUCCESS
    assert len(_events()) == before + 2 and _queued() == []
    _set_paused("labelloop_train", False)
    assert bag.dags["labelloop_export"].test(run_conf=conf).state == DagRunState.SUCCESS
    extra, _ = _events()[-1]
    assert (extra["version"], extra["created"]) == ("v0001", False) and _queued() == ["labelloop_train"]


def test_training_takes_the_newest_announced_version_per_spec(labelloop_env) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from _common import DATASETS
    from labelloop_airflow.training import PrepareTrainingOperator

    from labelloop.export import export_dataset
    from labelloop.specs import SpecRegistry
    from labelloop.validation import validate_spec

    settings, db, store = labelloop_env
    spec = SpecRegistry().get("vehicle_extraction")
    vehicle_items(db, store, 2)
    extras = []
    for extra_items in (0, 1):
        vehicle_items(db, store, extra_items, start=10)
        run = validate_spec(db, store, settings, spec)
        result = export_dataset(db, store, settings, spec, validation_run_id=run.validation_run_id)
        extras.append(result.as_dict())
    assert [e["version"] for e in extras] == ["v0001", "v0002"]
    events = {DATASETS: [SimpleNamespace(extra=extras[1]), SimpleNamespace(extra=extras[0])]}
    op = PrepareTrainingOperator(task_id="prepare_dataset")
    jobs = op.execute({"triggering_asset_events": events, "params": {}})
    assert [j["registration"]["version"] for j in jobs] == ["v0002"]
    assert jobs[0]["registration"]["dataset_use"] == "labelloop_vehicle_extraction_v0002"
    assert jobs[0]["summary"]["uri"] == extras[1]["uri"]


def test_failed_gate_fails_the_run_without_an_event(airflow_db: str, labelloop_env) -> None:  # type: ignore[no-untyped-def]
    from airflow.utils.state import DagRunState

    _settings, db, store = labelloop_env
    vehicle_items(db, store, 3, start=50)
    add_record(
        db,
        add_item(db, store, image_bytes(1000, 750, 99)),
        "vehicle_extraction",
        {**VEHICLE_OK, "color": "?"},
    )
    bag = _dag_bag()
    before = len(_events())
    dr = bag.dags["labelloop_export"].test(run_conf={"spec": "vehicle_extraction", "max_failed_share": 0.1})
    assert dr.state == DagRunState.FAILED
    states = _task_states(dr)
    assert states["validate"] == "success" and states["quality_gate"] == "failed"
    assert states["export"] == "upstream_failed"
    assert len(_events()) == before
