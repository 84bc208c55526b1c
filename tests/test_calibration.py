"""Calibration: threshold choice on simulated correction logs with a known confidence->error relation,
the drift guard, versioning in the DB, and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from calib_sim import log_records
from sqlalchemy import func, select

from labelloop.calibration import DriftDetected, calibrate, choose_threshold, current_thresholds
from labelloop.calibration.stats import clopper_pearson_upper, wilson_lower, wilson_upper
from labelloop.config import CalibrationSettings
from labelloop.db import Database, Item, Prediction, Threshold

TARGET = 0.02
#: the DB-backed tests are about versioning and the drift guard, not power: a target the simulated
#: model meets with a few hundred reviews under the (anytime-valid, so less powerful) betting bound
DB_TARGET = 0.05


def true_error(conf: np.ndarray) -> np.ndarray:
    """The simulated model: reviewers change 40% of values at confidence 0, none at 1."""
    return 0.4 * (1 - conf) ** 2


def simulate(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    conf = rng.beta(5, 1.2, size=n)
    return conf, rng.random(n) < true_error(conf)


def test_bounds_match_known_values() -> None:
    # Wilson, k=0: z^2 / (n + z^2) with z = 1.6449 (one-sided 95%)
    assert wilson_upper(0, 100) == pytest.approx(1.6449**2 / (100 + 1.6449**2), rel=1e-4)
    # Clopper-Pearson, k=0: 1 - 0.05^(1/n)
    assert clopper_pearson_upper(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)
    assert wilson_lower(5, 10) < 0.5 < wilson_upper(5, 10)
    assert clopper_pearson_upper(3, 200) > wilson_upper(3, 200)  # exact is more conservative


@pytest.mark.parametrize("method", ["wilson", "clopper_pearson"])
def test_chosen_threshold_holds_target_on_fresh_data_in_95pct_of_seeds(method: str) -> None:
    seeds, held, chosen = 200, 0, []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        conf, changed = simulate(rng, 3000)
        choice = choose_threshold(conf, changed, target=TARGET, min_samples=50, method=method)
        if choice.threshold is None:
            held += 1  # full review never auto-accepts a wrong value
            continue
        chosen.append(choice.threshold)
        fresh_conf, fresh_changed = simulate(rng, 200_000)
        real_error = fresh_changed[fresh_conf >= choice.threshold].mean()
        held += real_error <= TARGET
    assert held / seeds >= 0.95
    # and it is useful: a threshold is found in most seeds, auto-accepting a real share
    assert len(chosen) >= 0.9 * seeds
    assert 0.4 < float(np.median(chosen)) < 0.9


def test_naive_lowest_passing_scan_would_not_hold_the_target() -> None:
    """Guards the test above: a plain point-estimate rule breaks the target often."""
    broken = 0
    for seed in range(50):
        rng = np.random.default_rng(seed)
        conf, changed = simulate(rng, 3000)
        order = np.argsort(-conf)
        rates = np.cumsum(changed[order]) / np.arange(1, conf.size + 1)
        ok = np.nonzero(rates[49:] <= TARGET)[0]
        tau = conf[order][49 + ok[-1]]
        fresh_conf, fresh_changed = simulate(rng, 100_000)
        broken += fresh_changed[fresh_conf >= tau].mean() > TARGET
    assert broken > 10


def test_too_few_samples_keeps_full_review() -> None:
    rng = np.random.default_rng(1)
    conf, changed = simulate(rng, 40)
    choice = choose_threshold(conf, changed, target=TARGET, min_samples=50)
    assert choice.threshold is None and "need 50" in choice.reason
    # enough rows overall, but not enough to certify 2% even with zero errors
    choice = choose_threshold(np.linspace(0.5, 1, 100), np.zeros(100, bool), target=TARGET, min_samples=50)
    assert choice.threshold is None


def test_all_correct_log_auto_accepts_down_to_the_lowest_confidence() -> None:
    conf = np.linspace(0.3, 1.0, 1000)
    choice = choose_threshold(conf, np.zeros(1000, bool), target=TARGET, min_samples=50)
    assert choice.threshold == pytest.approx(0.3)
    assert choice.upper_bound is not None and choice.upper_bound <= TARGET


def test_all_wrong_log_stays_at_full_review() -> None:
    conf = np.linspace(0.3, 1.0, 1000)
    choice = choose_threshold(conf, np.ones(1000, bool), target=TARGET, min_samples=50)
    assert choice.threshold is None and "exceeds the target" in choice.reason


def test_first_failure_stops_the_descent() -> None:
    # the top 400 values are clean, then a band of errors, then clean again below: the clean tail
    # below the bad band must not be reached (fixed-sequence testing)
    conf = np.linspace(1.0, 0.0, 1200)
    changed = np.zeros(1200, bool)
    changed[400:460] = True
    choice = choose_threshold(conf, changed, target=TARGET, min_samples=50)
    assert choice.threshold is not None and choice.threshold > conf[460]


# --------------------------------------------------------------------------- DB-backed


def _log(
    db: Database,
    rows: list[tuple[float, bool, str]],
    *,
    spec: str = "vehicle_extraction",
    fld: str = "plate_number",
    model: str = "qwen",
    mv: str = "v1",
    ph: str = "p1",
) -> None:
    """Insert a one-field correction log the way review sync would (see calib_sim.log_records)."""
    log_records(
        db, [({fld: (conf, changed)}, route) for conf, changed, route in rows], spec=spec, model=model, mv=mv, ph=ph
    )


def _sim_rows(seed: int, n: int, route: str = "review") -> list[tuple[float, bool, str]]:
    conf, changed = simulate(np.random.default_rng(seed), n)
    return [(float(c), bool(x), route) for c, x in zip(conf, changed, strict=True)]


def test_calibrate_writes_versioned_thresholds_and_is_idempotent(db: Database) -> None:
    settings = CalibrationSettings(target_error=DB_TARGET, min_samples=50)
    _log(db, _sim_rows(3, 1500))
    result = calibrate(db, settings)
    [out] = result.outcomes
    assert out.written and out.version == 1 and out.choice.threshold is not None
    with db.session() as s:
        [t] = current_thresholds(s).values()
        assert t.threshold == out.choice.threshold and t.upper_bound <= DB_TARGET and t.n_samples > 50
        assert t.evidence["reliability"] and {c["route"] for c in t.evidence["reliability"]} == {"review"}
    again = calibrate(db, settings)
    assert not again.outcomes[0].written
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Threshold)) == 1


def test_new_model_version_starts_at_full_review(db: Database) -> None:
    settings = CalibrationSettings(target_error=DB_TARGET, min_samples=50)
    _log(db, _sim_rows(4, 800))
    with db.transaction() as s:  # a new model version has predicted, nobody reviewed it yet
        item = Item(
            sha256="f" * 64, media_type="image", mime="image/png", ext="png", size_bytes=1, storage_key="raw/f/f.png"
        )
        s.add(item)
        s.flush()
        s.add(
            Prediction(
                item_id=item.id,
                spec="vehicle_extraction",
                backend="vllm",
                model="qwen",
                model_version="v2",
                prompt_hash="p1",
                status="ok",
                record={},
                field_confidence={"plate_number": 0.99, "color": 0.99},
                confidence=0.99,
            )
        )
    result = calibrate(db, settings)
    assert sorted(k[1] for k in result.new_keys_full_review) == ["color", "plate_number"]
    with db.session() as s:
        cur = current_thresholds(s)
        assert cur[("vehicle_extraction", "plate_number", "qwen", "v2", "p1")].threshold is None
        assert cur[("vehicle_extraction", "plate_number", "qwen", "v1", "p1")].threshold is not None


def test_drift_in_audit_sample_trips_the_guard(db: Database) -> None:
    settings = CalibrationSettings(target_error=DB_TARGET, min_samples=50)
    _log(db, _sim_rows(5, 1500))
    calibrate(db, settings)
    with db.session() as s:
        [t] = current_thresholds(s).values()
    # the world changed: audited auto-accepts above the threshold are now often corrected
    rng = np.random.default_rng(9)
    audits = [(float(c), bool(rng.random() < 0.35), "audit") for c in rng.uniform(t.threshold, 1, 60)]
    _log(db, audits)
    with pytest.raises(DriftDetected, match="plate_number") as exc:
        calibrate(db, settings)
    assert exc.value.fields[0]["n"] == 60
    with db.session() as s:
        [now] = current_thresholds(s).values()
        assert now.threshold is None and now.version == t.version + 1 and now.reason.startswith("drift")


def test_clean_audits_do_not_trip_the_guard(sqlite_db: Database) -> None:
    settings = CalibrationSettings(target_error=DB_TARGET, min_samples=50)
    _log(sqlite_db, _sim_rows(6, 1500))
    calibrate(sqlite_db, settings)
    with sqlite_db.session() as s:
        [t] = current_thresholds(s).values()
    _log(sqlite_db, [(float(c), False, "audit") for c in np.linspace(t.threshold, 1, 60)])
    result = calibrate(sqlite_db, settings)
    assert result.drift == []


def test_cli_calibrate_and_thresholds(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from labelloop.cli import app
    from labelloop.config import DatabaseSettings

    url = f"sqlite:///{tmp_path / 'c.db'}"
    db = Database(DatabaseSettings(url=url))
    db.upgrade()
    _log(db, _sim_rows(11, 1200))
    env = {
        "LABELLOOP_DB__URL": url,
        "LABELLOOP_STORAGE__ROOT": str(tmp_path / "o"),
        "LABELLOOP_HOME": str(tmp_path),
        "COLUMNS": "250",
        "LABELLOOP_CALIBRATION__TARGET_ERROR": str(DB_TARGET),
    }
    # the offline interface: export the log, calibrate from it without the database
    log = tmp_path / "log.jsonl"
    r = CliRunner().invoke(app, ["corrections", "export", str(log)], env=env)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(rows) == 1200 and rows[0]["route"] == "full_review" and rows[0]["inclusion_prob"] == 1.0
    assert set(rows[0]) >= {"spec", "field", "item", "model_key", "confidence", "changed", "route", "inclusion_prob"}
    r = CliRunner().invoke(app, ["calibrate", "--from-log", str(log), "--target", "0.05", "--json"], env=env)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    il = doc["item_level"]
    assert il["target"] == 0.05 and il["n_items"] == 1200 and il["upper_bound"] <= 0.05 and 0 < il["coverage"] <= 1
    assert il["method"] == "clopper_pearson"  # one look at a plain sample
    [thr] = doc["thresholds"]
    assert thr["field"] == "plate_number" and thr["threshold"] is not None
    log.write_text(log.read_text() + '{"spec": "x"}\n')
    r = CliRunner().invoke(app, ["calibrate", "--from-log", str(log), "--json"], env=env)
    assert r.exit_code == 2 and "log.jsonl:1201: missing" in r.output
    r = CliRunner().invoke(app, ["calibrate", "--json"], env=env)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["fields"][0]["threshold"] is not None and data["report"].endswith("index.html")
    r = CliRunner().invoke(app, ["thresholds"], env=env)
    assert r.exit_code == 0 and "vehicle_extraction.plate_number" in r.stdout
    # drift makes the command exit 3 so schedulers alert
    with db.session() as s:
        [t] = current_thresholds(s).values()
    _log(db, [(float(c), True, "audit") for c in np.linspace(t.threshold, 1, 20)])
    r = CliRunner().invoke(app, ["calibrate", "--no-report"], env=env)
    assert r.exit_code == 3 and "drift" in r.output
