"""Issue 8 integration: a review round in Label Studio -> ``labelloop_calibrate`` -> the next routing.

Thirty vehicle predictions (one model, one prompt, confidences 0.50..0.99) are all routed to review
(default threshold above 1), imported into a real Label Studio (``fixtures_labelstudio``), and an
annotator (a second user with a personal access token) accepts them through the API, correcting the
plate number of the three least confident. Sync pulls the annotations into the correction log;
``labelloop_calibrate`` runs with ``dag.test()`` on the migrated Airflow metadata DB (settings from
``LABELLOOP_*`` environment variables, as on a worker) and writes a threshold per field. New
predictions of the same model and prompt, confident above those thresholds, are then routed with the
same settings: auto-accepted, and the decision evidence names the calibrated DB threshold (source
"db", its version), not the default that reviews everything.
"""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from labelloop.config import RoutingSettings, Settings
from labelloop.db import Database, FieldCorrection, Record, ReviewTask, Threshold
from labelloop.review.importer import import_pending
from labelloop.review.routing import route_predictions
from labelloop.review.sync import sync_project
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_labelstudio"]
pytestmark = [pytest.mark.airflow, pytest.mark.labelstudio]

REGISTRY = SpecRegistry()
VEHICLE = REGISTRY.get("vehicle_extraction")
DAGS = Path(__file__).resolve().parents[1] / "dags"
#: everything to review until calibration says otherwise
ROUTING = RoutingSettings(default_threshold=1.0001, audit_rate=0.0)
#: enough reviewed records for the anytime-valid bound to certify at TARGET (30 were enough for the old
#: one-look binomial bound, which a nightly's repeated looks made invalid)
N_ITEMS = 300  # 120 with no error does not yet certify 0.1 (the betting bound's price for validity)
CONFIDENCES = [round(0.5 + 0.49 * i / (N_ITEMS - 1), 4) for i in range(N_ITEMS)]
N_CORRECTED = 60  # the least confident plates are wrong: 20% of all, twice the target
#: 3 changed among the least confident fails it there, so plate_number must stop above the corrected ones
TARGET = 0.1


@pytest.fixture(autouse=True)
def _dags_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(DAGS))  # the bundle parser puts the DAG folder on sys.path


@pytest.fixture
def env(
    label_studio: Any, tmp_path: Path, airflow_db: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, Database, LocalStore]]:
    store = label_studio.new_store()
    db_url = f"sqlite:///{tmp_path / 'curation.db'}"
    settings = label_studio.settings(tmp_path, db_url, store).model_copy(update={"routing": ROUTING})
    monkeypatch.delenv("LABELLOOP_CONFIG_FILE", raising=False)
    for k in [k for k in os.environ if k.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(k)  # environment defaults only: no Connection overrides them
    for k, v in {
        "LABELLOOP_HOME": str(tmp_path),
        "LABELLOOP_DB__URL": db_url,
        "LABELLOOP_STORAGE__BACKEND": "local",
        "LABELLOOP_STORAGE__ROOT": str(store.root),
        "LABELLOOP_CALIBRATION__MIN_SAMPLES": "10",
        "LABELLOOP_CALIBRATION__TARGET_ERROR": str(TARGET),
        # per field: this test checks that each field gets its own threshold (the default is one
        # item-level threshold; tests/test_calibration_guarantee.py covers both)
        "LABELLOOP_CALIBRATION__PER_FIELD": "true",
    }.items():
        monkeypatch.setenv(k, v)
    db = Database(settings.db)
    db.upgrade()
    yield settings, db, store
    db.dispose()


def _dag_bag() -> Any:
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
    assert {k: v for k, v in bag.import_errors.items() if "labelloop_calibrate" in k} == {}
    sync_bag_to_db(bag, "dags-folder", None)
    return bag


def _review_tasks(db: Database, ids: list[int]) -> list[ReviewTask]:
    with db.session() as s:
        return list(
            s.scalars(select(ReviewTask).where(ReviewTask.prediction_id.in_(ids)).order_by(ReviewTask.prediction_id))
        )


def test_review_round_calibrates_and_next_routing_uses_thresholds(
    env: tuple[Settings, Database, LocalStore], label_studio: Any, review_data: Any
) -> None:
    from airflow.utils.state import DagRunState

    settings, db, store = env
    ls = label_studio.client()

    # 1. a batch, all to review, into Label Studio
    first = review_data.add_vehicle_batch(db, VEHICLE, CONFIDENCES, tag="round1")
    routed = route_predictions(db, settings.routing, VEHICLE)
    assert (routed.review, routed.auto, routed.audit) == (N_ITEMS, 0, 0)
    imported = import_pending(db, ls, settings, VEHICLE, REGISTRY.label_config(VEHICLE), store)
    assert imported.imported == N_ITEMS

    # 2. the review round, through Label Studio's API as an annotator
    annotator = label_studio.signup(f"ann-{uuid.uuid4().hex[:8]}@example.com")
    ann = annotator.client()
    tasks = _review_tasks(db, first)
    assert [t.route for t in tasks] == ["review"] * N_ITEMS
    assert all(t.decision["plate_number"]["source"] == "uncalibrated" for t in tasks)
    for i, rt in enumerate(tasks):  # prediction ids follow CONFIDENCES' order
        result = copy.deepcopy(ann.tasks.get(id=str(rt.ls_task_id)).predictions[0].result)
        if i < N_CORRECTED:
            for r in result:
                if r["id"] == "plate_number":
                    r["value"]["text"] = [f"ZZ{i:05d}"]
        ann.annotations.create(id=rt.ls_task_id, result=result, lead_time=5.0)
    stats = sync_project(db, ls, settings, VEHICLE)
    assert stats.completed == N_ITEMS
    with db.session() as s:
        rows = list(s.scalars(select(FieldCorrection).where(FieldCorrection.is_latest)))
    assert len(rows) == N_ITEMS * len(VEHICLE.fields)
    assert {(r.field, r.model_confidence) for r in rows if r.changed} == {
        ("plate_number", c) for c in CONFIDENCES[:N_CORRECTED]
    }

    # 3. labelloop_calibrate through Airflow
    bag = _dag_bag()
    dr = bag.dags["labelloop_calibrate"].test()
    assert dr.state == DagRunState.SUCCESS
    with db.session() as s:
        thresholds = {t.field: t for t in s.scalars(select(Threshold).where(Threshold.spec == VEHICLE.name))}
    assert set(thresholds) == set(VEHICLE.fields)
    for name, t in thresholds.items():
        assert (t.model, t.model_version, t.prompt_hash) == ("test-model", "v1", VEHICLE.prompt_hash)
        assert t.threshold is not None and t.version == 1, (name, t.reason)
        assert t.target_error == TARGET and t.upper_bound is not None and t.upper_bound <= TARGET
        assert t.n_samples >= 10
    # fields nobody changed certify down to (a grid point at or below) the lowest confidence; the
    # corrected low-confidence plates push plate_number's threshold up, to where the share of
    # corrected plates at or above it holds the target
    assert all(t.threshold <= CONFIDENCES[0] for n, t in thresholds.items() if n != "plate_number")
    tau = thresholds["plate_number"].threshold
    assert tau > CONFIDENCES[0]
    above = [i for i, c in enumerate(CONFIDENCES) if c >= tau]
    assert above and sum(i < N_CORRECTED for i in above) / len(above) <= TARGET
    highest = max(t.threshold for t in thresholds.values())
    assert highest <= CONFIDENCES[-1]

    # 4. the next routing, same settings, uses the calibrated thresholds
    fresh = [0.995, 0.999, 1.0]
    assert min(fresh) >= highest
    second = review_data.add_vehicle_batch(db, VEHICLE, fresh, tag="round2")
    again = route_predictions(db, settings.routing, VEHICLE)
    assert (again.considered, again.auto, again.review, again.audit) == (3, 3, 0, 0)
    for rt in _review_tasks(db, second):
        assert rt.route == "auto" and rt.status == "auto_accepted" and rt.threshold_version == 1
        for name in VEHICLE.fields:
            ev = rt.decision[name]
            assert (ev["source"], ev["version"], ev["pass"]) == ("db", 1, True)
            assert ev["threshold"] == pytest.approx(thresholds[name].threshold)
    with db.session() as s:
        records = list(s.scalars(select(Record).where(Record.prediction_id.in_(second))))
    assert len(records) == 3 and {r.provenance for r in records} == {"auto"}

    # below a calibrated threshold still goes to review, now citing the DB threshold
    low = review_data.add_vehicle_batch(db, VEHICLE, [0.3], tag="round2-low")
    assert route_predictions(db, settings.routing, VEHICLE).review == 1
    (rt,) = _review_tasks(db, low)
    assert rt.route == "review" and "(db)" in rt.reason and rt.decision["plate_number"]["source"] == "db"
