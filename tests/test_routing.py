"""Routing: thresholds (DB over settings over default), the audit sample, stored decisions."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import func, select
from synthetic import synthetic_items

from labelloop.config import RoutingSettings
from labelloop.db import Database, Item, Prediction, Record, ReviewTask, Threshold
from labelloop.review.routing import (
    ROUTE_AUDIT,
    ROUTE_AUTO,
    ROUTE_REVIEW,
    audit_fraction,
    route_predictions,
)
from labelloop.specs import SpecRegistry, TaskSpec

pytest_plugins = ["fixtures_labelstudio"]

CONFIDENT = {
    "plate_number": 0.99,
    "plate_color": 0.99,
    "vehicle_type": 0.99,
    "brand": 0.99,
    "color": 0.99,
    "plate_box": 0.99,
    "vehicle_box": 0.99,
}


@pytest.fixture(scope="module")
def spec() -> TaskSpec:
    return SpecRegistry().get("vehicle_extraction")


def _items(db: Database, n: int, start: int = 0) -> list[Item]:
    with db.session() as s:
        items = synthetic_items(s, (f"routing-item-{i}" for i in range(start, start + n)))
        s.commit()
    return items


def _predict(
    db: Database, spec: TaskSpec, items: list[Item], conf: dict[str, float], review_data: Any, **kw: Any
) -> list[Prediction]:
    """One prediction per item, in one transaction (2,000 single commits would dominate the test)."""
    with db.session() as s:
        preds = [
            Prediction(
                item_id=it.id,
                spec=spec.name,
                backend="test",
                model="test-model",
                model_version=kw.get("model_version", "v1"),
                prompt_hash=spec.prompt_hash,
                status="ok",
                record=review_data.vehicle_record(i),
                field_confidence=conf,
                confidence=min(conf.values()),
            )
            for i, it in enumerate(items)
        ]
        s.add_all(preds)
        s.commit()
    return preds


def _tasks(db: Database) -> list[ReviewTask]:
    with db.session() as s:
        return list(s.scalars(select(ReviewTask).order_by(ReviewTask.id)))


def test_audit_fraction_is_deterministic_and_uniform() -> None:
    a = audit_fraction("salt", "ab" * 32, "vehicle_extraction")
    assert a == audit_fraction("salt", "ab" * 32, "vehicle_extraction")
    assert a != audit_fraction("other-salt", "ab" * 32, "vehicle_extraction")
    assert a != audit_fraction("salt", "ab" * 32, "ocr_lines")
    draws = [audit_fraction("s", hashlib.sha256(str(i).encode()).hexdigest(), "x") for i in range(20000)]
    assert all(0 <= d < 1 for d in draws)
    for q in (0.05, 0.25, 0.5, 0.9):  # the empirical CDF tracks the uniform one
        assert abs(sum(d < q for d in draws) / len(draws) - q) < 0.01


def test_audit_sample_is_about_five_percent_of_2000_and_stable(db: Database, spec: TaskSpec, review_data: Any) -> None:
    items = _items(db, 2000)
    _predict(db, spec, items, CONFIDENT, review_data)
    routing = RoutingSettings(use_manual_thresholds=True)  # audit_rate 0.05, default threshold 0.9
    stats = route_predictions(db, routing, spec)
    assert stats.considered == 2000 and stats.review == 0
    # binomial(2000, 0.05): mean 100, sd 9.7; +-4 sd
    assert 61 <= stats.audit <= 139, stats.audit
    assert stats.auto + stats.audit == 2000
    tasks = _tasks(db)
    audited = {t.item_id for t in tasks if t.route == ROUTE_AUDIT}
    expected = {it.id for it in items if audit_fraction(routing.audit_salt, it.sha256, spec.name) < routing.audit_rate}
    assert audited == expected
    assert all(t.status == "pending_import" for t in tasks if t.route == ROUTE_AUDIT)
    assert all("audit sample" in t.reason for t in tasks if t.route == ROUTE_AUDIT)
    with db.session() as s:
        records = s.scalars(select(Record)).all()
    assert len(records) == stats.auto and {r.provenance for r in records} == {"auto"}
    assert {r.item_id for r in records}.isdisjoint(audited)

    # rerouting changes nothing, even with different settings
    again = route_predictions(
        db, RoutingSettings(use_manual_thresholds=True, default_threshold=1.0001, audit_rate=1.0), spec
    )
    assert again.considered == 0
    assert [(t.id, t.route, t.reason) for t in _tasks(db)] == [(t.id, t.route, t.reason) for t in tasks]


def test_thresholds_decide_review_with_readable_reasons(sqlite_db: Database, spec: TaskSpec, review_data: Any) -> None:
    db = sqlite_db
    items = _items(db, 4)
    unsure = {**CONFIDENT, "plate_number": 0.62, "brand": 0.10}
    p_unsure = _predict(db, spec, items[:1], unsure, review_data)[0]
    p_brand_only = _predict(db, spec, items[1:2], {**CONFIDENT, "brand": 0.5}, review_data)[0]
    p_failed = review_data.add_prediction(db, spec, items[2], None, {}, status="failed")
    p_conf = _predict(db, spec, items[3:], CONFIDENT, review_data)[0]
    routing = RoutingSettings(
        use_manual_thresholds=True,
        thresholds={"vehicle_extraction.brand": 0.4, "vehicle_extraction.vehicle_box": 1.5},
        audit_rate=0.0,
    )
    stats = route_predictions(db, routing, spec)
    assert (stats.review, stats.auto, stats.audit) == (3, 0, 0), "a failed prediction waits for its retry"
    assert p_failed.id not in {t.prediction_id for t in _tasks(db)}
    by_hand = route_predictions(db, routing.model_copy(update={"review_failures": True}), spec)
    assert (by_hand.considered, by_hand.review) == (1, 1)
    by_pred = {t.prediction_id: t for t in _tasks(db)}
    reason = by_pred[p_unsure.id].reason
    assert "plate_number 0.620 < 0.900 (default, uncalibrated)" in reason
    assert "brand 0.100 < 0.400 (manual, uncalibrated)" in reason
    assert "vehicle_box is always reviewed" in reason
    assert "brand" not in by_pred[p_brand_only.id].reason  # 0.5 passes the settings' 0.4
    assert by_pred[p_failed.id].reason == "prediction failed (transient, 1 attempt(s)): model timed out"
    assert by_pred[p_conf.id].reason == "below threshold: vehicle_box is always reviewed (threshold 1.5)"
    evidence = by_pred[p_unsure.id].decision
    assert evidence["plate_number"] == {
        "confidence": 0.62,
        "threshold": 0.9,
        "source": "default",
        "version": None,
        "pass": False,
        "uncalibrated": True,
    }
    assert evidence["plate_color"]["pass"] is True
    assert all(t.threshold_version is None and t.status == "pending_import" for t in by_pred.values())
    with db.session() as s:
        assert s.scalar(select(func.count(Record.id))) == 0


def test_db_thresholds_override_settings_newest_version_wins(
    sqlite_db: Database, spec: TaskSpec, review_data: Any
) -> None:
    db = sqlite_db
    items = _items(db, 3)
    conf = {**CONFIDENT, "plate_number": 0.7}
    p_v1, p_other = _predict(db, spec, items[:2], conf, review_data)[0], None
    p_other = _predict(db, spec, items[2:], conf, review_data, model_version="v2")[0]
    with db.session() as s:
        for version, thr in ((1, 0.95), (2, 0.6)):
            s.add(
                Threshold(
                    spec=spec.name,
                    field="plate_number",
                    model="test-model",
                    model_version="v1",
                    prompt_hash=spec.prompt_hash,
                    version=version,
                    threshold=thr,
                    target_error=0.02,
                )
            )
        s.add(
            Threshold(
                spec=spec.name,
                field="brand",
                model="test-model",
                model_version="v1",
                prompt_hash=spec.prompt_hash,
                version=1,
                threshold=None,  # calibration: not enough evidence -> full review
                target_error=0.02,
            )
        )
        s.commit()
    routing = RoutingSettings(
        use_manual_thresholds=True, thresholds={"vehicle_extraction.plate_number": 0.99}, audit_rate=0.0
    )
    route_predictions(db, routing, spec)
    by_pred = {t.prediction_id: t for t in _tasks(db)}
    v1 = by_pred[p_v1.id]
    assert v1.route == ROUTE_REVIEW
    assert v1.decision["plate_number"]["threshold"] == 0.6 and v1.decision["plate_number"]["pass"] is True
    assert v1.decision["plate_number"]["source"] == "db" and v1.decision["plate_number"]["version"] == 2
    assert v1.reason == "below threshold: brand is under full review (thresholds v1)"
    assert v1.threshold_version == 2
    # another model version has no calibrated rows: settings apply
    other = by_pred[p_other.id]
    assert other.decision["plate_number"]["source"] == "manual"
    assert other.reason == "below threshold: plate_number 0.700 < 0.990 (manual, uncalibrated)"


def test_auto_never_overwrites_a_human_record_and_documents_get_a_task_per_page(
    sqlite_db: Database, review_data: Any
) -> None:
    db = sqlite_db
    registry = SpecRegistry()
    vehicle = registry.get("vehicle_extraction")
    item = _items(db, 1)[0]
    with db.session() as s:
        s.add(
            Record(
                item_id=item.id,
                spec=vehicle.name,
                provenance="human",
                record={"plate_number": "HUMAN1"},
                content_hash="x",
            )
        )
        s.commit()
    _predict(db, vehicle, [item], CONFIDENT, review_data)
    stats = route_predictions(db, RoutingSettings(use_manual_thresholds=True, audit_rate=0.0), vehicle)
    assert stats.auto == 1 and stats.records == 0
    with db.session() as s:
        assert s.scalar(select(Record.record)) == {"plate_number": "HUMAN1"}

    doc_spec = registry.get("document_layout")
    review_data.add_two_page_pdf(db, doc_spec, 0.62)
    stats = route_predictions(db, RoutingSettings(use_manual_thresholds=True, audit_rate=0.0), doc_spec)
    assert (stats.review, stats.tasks) == (1, 2)
    pages = [(t.page, t.route, t.external_id.endswith(f":{t.page}")) for t in _tasks(db) if t.spec == doc_spec.name]
    assert pages == [(0, ROUTE_REVIEW, True), (1, ROUTE_REVIEW, True)]


def test_routing_is_scoped_to_the_given_predictions(sqlite_db: Database, spec: TaskSpec, review_data: Any) -> None:
    db = sqlite_db
    preds = _predict(db, spec, _items(db, 5), CONFIDENT, review_data)
    stats = route_predictions(
        db, RoutingSettings(use_manual_thresholds=True, audit_rate=0.0), spec, prediction_ids=[preds[1].id, preds[3].id]
    )
    assert stats.considered == 2 and stats.auto == 2
    assert {t.prediction_id for t in _tasks(db)} == {preds[1].id, preds[3].id}
    assert (
        route_predictions(db, RoutingSettings(use_manual_thresholds=True, audit_rate=0.0), spec, batch=2).considered
        == 3
    )
    assert all(t.route == ROUTE_AUTO for t in _tasks(db))


def test_a_concurrent_router_wins_and_nothing_is_routed_twice(pg_url: str, spec: TaskSpec, review_data: Any) -> None:
    """On PostgreSQL: SQLite serialises writers, so there a transaction whose snapshot went stale
    cannot write at all ("database is locked") and this race cannot happen."""
    from labelloop.config import DatabaseSettings
    from labelloop.review.routing import RoutingStats, _route_batch, _unrouted

    db = Database(DatabaseSettings(url=pg_url))
    preds = _predict(db, spec, _items(db, 4), CONFIDENT, review_data)
    routing = RoutingSettings(use_manual_thresholds=True, audit_rate=0.0)
    with db.session() as s:
        stale = [(p, it) for p, it in s.execute(_unrouted(spec, routing).order_by(Prediction.id))]
        # meanwhile another worker routes two of the same predictions
        route_predictions(db, routing, spec, prediction_ids=[preds[0].id, preds[2].id])
        stats = RoutingStats(spec=spec.name)
        _route_batch(s, spec, stale, routing, stats)
        s.commit()
    assert (stats.raced, stats.auto) == (2, 2)
    tasks = _tasks(db)
    assert sorted(t.prediction_id for t in tasks) == sorted(p.id for p in preds)
    with db.session() as s:
        assert s.scalar(select(func.count(Record.id))) == 4


def test_two_models_for_one_item_in_one_batch_keep_one_record(
    sqlite_db: Database, spec: TaskSpec, review_data: Any
) -> None:
    db = sqlite_db
    item = _items(db, 1)[0]
    _predict(db, spec, [item], CONFIDENT, review_data, model_version="v1")
    second = _predict(db, spec, [item], CONFIDENT, review_data, model_version="v2")[0]
    stats = route_predictions(db, RoutingSettings(use_manual_thresholds=True, audit_rate=0.0), spec)
    assert (stats.auto, stats.records) == (2, 2)
    with db.session() as s:
        records = s.scalars(select(Record)).all()
    assert [r.prediction_id for r in records] == [second.id]  # the later prediction's record stands


def test_fresh_install_auto_accepts_nothing_and_records_the_design(
    db: Database, spec: TaskSpec, review_data: Any
) -> None:
    """No calibrated threshold: full review (inclusion probability 1), even for confident predictions.
    A manual threshold applies only when opted in, and every such decision says "uncalibrated"."""
    items = _items(db, 40)
    _predict(db, spec, items, CONFIDENT, review_data)
    stats = route_predictions(db, RoutingSettings(), spec)
    assert (stats.auto, stats.audit, stats.review) == (0, 0, 40)
    tasks = _tasks(db)
    assert {(t.design, t.inclusion_prob) for t in tasks} == {("full_review", 1.0)}
    assert all("no calibrated threshold" in t.reason for t in tasks)


def test_manual_threshold_is_opt_in_and_marked_uncalibrated(db: Database, spec: TaskSpec, review_data: Any) -> None:
    items = _items(db, 400)
    _predict(db, spec, items, CONFIDENT, review_data)
    stats = route_predictions(db, RoutingSettings(use_manual_thresholds=True, audit_rate=0.1), spec)
    assert stats.review == 0 and stats.auto + stats.audit == 400 and stats.audit > 0
    for t in _tasks(db):
        assert t.design in ("auto", "audit") and t.inclusion_prob == 0.1 and t.audit_rate == 0.1
        assert "uncalibrated" in t.reason and t.decision["_uncalibrated"]
