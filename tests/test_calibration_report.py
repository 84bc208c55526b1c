"""What calibration says in plain words (report, `labelloop calibrate`, `labelloop status`), the audit
sample's live estimate, and the drift guard on the unit the target is stated on (records)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from calib_sim import log_records
from scipy.stats import binomtest

from labelloop.calibration import DriftDetected, calibrate, current_thresholds
from labelloop.calibration.live import live_audits
from labelloop.calibration.overview import calibration_overview, describe
from labelloop.calibration.report import write_report
from labelloop.config import CalibrationSettings, DatabaseSettings, RoutingSettings
from labelloop.db import Database
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_labelstudio"]

#: power is not the point here: a target the simulated model meets with a few hundred reviews
T = 0.05
FIELDS = ("plate_number", "color", "brand")


def _full_review(seed: int, n: int, fields: tuple[str, ...] = FIELDS) -> list[tuple[dict[str, Any], str]]:
    """Records reviewed in the full-review phase; a field is changed with probability 0.4 (1 - c)^2."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        conf = rng.beta(5, 1.2, len(fields))
        wrong = rng.random(len(fields)) < 0.4 * (1 - conf) ** 2
        out.append(({f: (float(c), bool(w)) for f, c, w in zip(fields, conf, wrong, strict=True)}, "review"))
    return out


def _audits(thr: float, n: int, changed: dict[str, set[int]]) -> list[tuple[dict[str, Any], str]]:
    """``n`` audited records clearing ``thr`` on every field; ``changed[field]`` lists the records
    whose field the reviewer changed."""
    conf = np.linspace(thr, 1.0, n)
    return [({f: (float(conf[i]), i in changed.get(f, set())) for f in FIELDS}, "audit") for i in range(n)]


def _certified(db: Database) -> float:
    with db.session() as s:
        cur = current_thresholds(s)
    thr = {t.threshold for t in cur.values()}
    assert len(cur) == len(FIELDS) and len(thr) == 1 and None not in thr, cur  # one item-level threshold
    return float(thr.pop())


def test_report_states_guarantee_assumptions_live_audit_and_advice(sqlite_db: Database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = CalibrationSettings(target_error=T, min_samples=50)
    log_records(sqlite_db, _full_review(1, 1500))
    calibrate(sqlite_db, settings)
    thr = _certified(sqlite_db)
    # 120 audits routed under that threshold: one record with a changed plate, two with a changed color
    log_records(sqlite_db, _audits(thr, 120, {"plate_number": {0}, "color": {1, 2}}))
    [before] = calibration_overview(sqlite_db, settings, RoutingSettings())["keys"]
    assert before["state"] == "certified" and not before["uncalibrated"]
    assert f"certified: threshold {thr:.4f}" in describe(before) and "audit 3/120 changed (2.5%" in describe(before)
    result = calibrate(sqlite_db, settings)
    assert result.drift == []
    overview = calibration_overview(sqlite_db, settings, RoutingSettings())
    store = LocalStore(tmp_path)
    key = write_report(sqlite_db, store, result, T, run_id="r1", overview=overview)

    doc = json.loads(store.get("reports/calibration/r1/report.json"))
    summary = store.get("reports/calibration/r1/summary.txt").decode()
    page = store.get(key).decode()
    [st] = doc["statements"]
    assert st["statement"] == "item_level" and st["fields"] == sorted(FIELDS) and st["threshold"] is not None
    assert "At most 5.0% of the records auto-accepted for vehicle_extraction" in summary
    assert "have any field a reviewer would change, with 95% confidence" in summary
    assert "exchangeable" in summary and "independently of the pre-label" in summary
    # the live estimate is on records (3 records with some changed field), with the exact interval
    live = st["live_audit"]
    assert live["audited"] == 120 and live["changed"] == 3 and live["threshold"] == thr
    ci = binomtest(3, 120).proportion_ci(0.95, method="exact")
    assert live["interval"] == pytest.approx([ci.low, ci.high], abs=1e-9)
    assert "3 of 120 audited records were changed" in summary
    assert f"Clopper-Pearson interval {ci.low:.1%} to {ci.high:.1%}" in summary
    # what would raise coverage: at least one lower threshold, with a number of reviews or "out of reach"
    assert st["advice"] and all(a["threshold"] < st["threshold"] for a in st["advice"])
    assert all(a["coverage"] > st["coverage"] for a in st["advice"])
    assert "What would raise coverage: Threshold" in summary
    assert any(a["more_reviews"] for a in st["advice"]) or "out of reach" in summary
    assert "reviewer hours" in summary  # the synced annotations carry a lead time
    assert "certified: threshold" in summary
    for text in ("At most 5.0%", "Assumptions", "Live audit", "What would raise coverage", "hours saved"):
        assert text in page
    for name in ("statement-0.png", "reliability-0.png"):
        assert store.get(f"reports/calibration/r1/{name}").startswith(b"\x89PNG")
    assert b"r1/index.html" in store.get("reports/calibration/latest.html")


def test_item_level_drift_guard_counts_records_not_fields(db: Database) -> None:
    """Each field errs at 4% in the audits (under the 5% target), but 12% of audited records have some
    changed field: the record-level guard must trip and send every field back to full review; a
    per-field guard would not have."""
    settings = CalibrationSettings(target_error=T, min_samples=50)
    log_records(db, _full_review(2, 1500))
    calibrate(db, settings)
    thr = _certified(db)
    n = 300
    log_records(db, _audits(thr, n, {f: set(range(12 * k, 12 * (k + 1))) for k, f in enumerate(FIELDS)}))
    with db.session() as s:
        cur = current_thresholds(s)
        per_field = live_audits(s, cur, per_field=True, target=T, level=0.95)
        records = live_audits(s, cur, per_field=False, target=T, level=0.95)
    assert {a.changed for a in per_field.values()} == {12} and not any(a.tripped for a in per_field.values())
    [rec] = records.values()
    assert rec.n == n and rec.changed == 36 and rec.tripped
    with pytest.raises(DriftDetected, match="records changed") as exc:
        calibrate(db, settings)
    [info] = exc.value.fields
    assert info["unit"] == "record" and info["n"] == n and info["changed"] == 36
    with db.session() as s:
        cur = current_thresholds(s)
    assert len(cur) == len(FIELDS) and all(t.threshold is None and t.reason.startswith("drift") for t in cur.values())


def test_audits_routed_before_the_threshold_took_effect_are_not_live(sqlite_db: Database) -> None:
    """An audit drawn under an older threshold could not sample the whole region: it is no evidence on
    what the threshold in force lets through, nor is an audited record with a field below it."""
    settings = CalibrationSettings(target_error=T, min_samples=50)
    log_records(sqlite_db, _full_review(3, 1500))
    log_records(sqlite_db, _audits(0.99, 30, {"plate_number": {0}}))  # before any threshold
    calibrate(sqlite_db, settings)
    thr = _certified(sqlite_db)
    low = [({"plate_number": (thr - 0.01, True), "color": (0.99, False), "brand": (0.99, False)}, "audit")]
    log_records(sqlite_db, _audits(thr, 40, {}) + low)
    with sqlite_db.session() as s:
        [a] = live_audits(s, current_thresholds(s), per_field=False, target=T, level=0.95).values()
    assert a.n == 40 and a.changed == 0 and a.estimate == 0.0


def test_status_marks_uncalibrated_keys_and_manual_thresholds(tmp_path, review_data: Any) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from labelloop.cli import app

    url = f"sqlite:///{tmp_path / 's.db'}"
    db = Database(DatabaseSettings(url=url))
    db.upgrade()
    review_data.add_vehicle_batch(db, SpecRegistry().get("vehicle_extraction"), [0.99] * 40)
    env = {
        "LABELLOOP_DB__URL": url,
        "LABELLOOP_STORAGE__ROOT": str(tmp_path / "o"),
        "LABELLOOP_HOME": str(tmp_path),
        "COLUMNS": "250",
    }
    r = CliRunner().invoke(app, ["status", "--json"], env=env)
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.stdout)["calibration"]["keys"]
    assert row["state"] == "uncalibrated" and row["uncalibrated"] and row["model_key"].startswith("test-model|v1|")
    r = CliRunner().invoke(app, ["status"], env=env)
    assert "uncalibrated: full review until calibration certifies" in r.stdout
    # opting in to manual thresholds: routing auto-accepts with no guarantee, and status says so
    manual = {**env, "LABELLOOP_ROUTING__USE_MANUAL_THRESHOLDS": "true"}
    r = CliRunner().invoke(app, ["route", "--spec", "vehicle_extraction", "--json"], env=manual)
    assert r.exit_code == 0, r.output
    routed = json.loads(r.stdout)
    assert routed["auto"] + routed["audit"] == 40
    r = CliRunner().invoke(app, ["status", "--json"], env=manual)
    cal = json.loads(r.stdout)["calibration"]
    assert cal["keys"][0]["state"] == "manual" and cal["decisions_on_manual_thresholds"] == {"vehicle_extraction": 40}
    r = CliRunner().invoke(app, ["status"], env=manual)
    assert "UNCALIBRATED: auto-accepting on manual thresholds" in r.stdout
    assert "40 items auto-accepted or audited on uncalibrated manual thresholds" in r.stdout
    # the calibrate command prints the statement, and marks the uncalibrated key
    r = CliRunner().invoke(app, ["calibrate", "--no-report"], env=manual)
    assert r.exit_code == 0, r.output
    assert "UNCALIBRATED" in r.stdout or "uncalibrated" in r.stdout
