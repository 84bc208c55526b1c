"""Calibration run: correction log -> reliability tables -> new threshold versions, plus the drift guard.

Thresholds are keyed by (spec, field, model, model_version, prompt_hash): a new model version or a
changed prompt has no evidence yet, so it gets explicit "full review" rows until its own reviews
accumulate. A run writes a new version for a key only when the chosen value or its evidence
changed, so rerunning with nothing new writes nothing. Routing reads the newest version.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop.calibration.live import LiveAudit, live_audits
from labelloop.calibration.offline import calibrate_rows, export_rows_in
from labelloop.calibration.select import ThresholdChoice
from labelloop.calibration.statement import build_statements
from labelloop.calibration.stats import lower_bound
from labelloop.config import CalibrationSettings
from labelloop.db import Database, FieldCorrection, Prediction, Threshold

log = logging.getLogger(__name__)

DRIFT_REASON = "the audit sample showed drift: back to full review until new reviews certify a threshold"

ModelKey = tuple[str, str, str, str]  # spec, model, model_version, prompt_hash
FieldKey = tuple[str, str, str, str, str]  # spec, field, model, model_version, prompt_hash


class DriftDetected(RuntimeError):
    """Audited auto-accepts changed more often than the target: thresholds were reset."""

    def __init__(self, fields: list[dict[str, Any]]) -> None:
        self.fields = fields
        lines = [
            f"{f['spec']}.{f['field']} ({f['model']} {f['model_version']}): {f['changed']}/{f['n']} audited "
            f"auto-accepted {f.get('unit', 'value')}s changed "
            f"(>= {f['lower_bound']:.1%} at {f.get('level', 0.95):.0%}), target {f['target']:.1%}"
            for f in fields
        ]
        super().__init__("auto-accept drift detected; these fields are back to full review:\n  " + "\n  ".join(lines))


@dataclass
class FieldOutcome:
    key: FieldKey
    choice: ThresholdChoice
    version: int
    written: bool
    reliability: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CalibrationResult:
    outcomes: list[FieldOutcome] = field(default_factory=list)
    new_keys_full_review: list[FieldKey] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    item_level: Any = None
    #: audits of what was auto-accepting before this run, per key (see labelloop.calibration.live)
    live: dict[tuple[str, ...], LiveAudit] = field(default_factory=dict)
    #: the plain-words statement per key (labelloop.calibration.statement), for the CLI and the report
    statements: list[Any] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fields": [
                {
                    "spec": o.key[0],
                    "field": o.key[1],
                    "model": o.key[2],
                    "model_version": o.key[3],
                    "prompt_hash": o.key[4],
                    "threshold": o.choice.threshold,
                    "upper_bound": o.choice.upper_bound,
                    "n_samples": o.choice.n_samples,
                    "version": o.version,
                    "written": o.written,
                    "reason": o.choice.reason,
                }
                for o in self.outcomes
            ],
            "item_level": self.item_level,
            "new_keys_full_review": [list(k) for k in self.new_keys_full_review],
            "drift": self.drift,
            "live_audit": [a.as_dict() for a in self.live.values()],
            "statements": [st.as_dict() for st in self.statements],
        }


def reliability_table(rows: list[tuple[float | None, bool, str]], bins: int = 10) -> list[dict[str, Any]]:
    """Confidence bins against the share changed, kept apart for audit (unbiased) and review rows."""
    acc: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for conf, changed, route in rows:
        if conf is None:
            continue
        b = min(bins - 1, max(0, int(conf * bins)))
        cell = acc[(route, b)]
        cell[0] += 1
        cell[1] += int(changed)
        cell[2] += conf
    out = []
    for (route, b), (n, k, csum) in sorted(acc.items()):
        out.append(
            {
                "route": route,
                "bin_low": b / bins,
                "bin_high": (b + 1) / bins,
                "n": int(n),
                "changed": int(k),
                "change_rate": k / n,
                "mean_confidence": csum / n,
            }
        )
    return out


def current_thresholds(s: Session) -> dict[FieldKey, Threshold]:
    """Newest threshold version per key."""
    newest = (
        select(
            Threshold.spec,
            Threshold.field,
            Threshold.model,
            Threshold.model_version,
            Threshold.prompt_hash,
            func.max(Threshold.version).label("v"),
        )
        .group_by(Threshold.spec, Threshold.field, Threshold.model, Threshold.model_version, Threshold.prompt_hash)
        .subquery()
    )
    rows = s.scalars(
        select(Threshold).join(
            newest,
            (Threshold.spec == newest.c.spec)
            & (Threshold.field == newest.c.field)
            & (Threshold.model == newest.c.model)
            & (Threshold.model_version == newest.c.model_version)
            & (Threshold.prompt_hash == newest.c.prompt_hash)
            & (Threshold.version == newest.c.v),
        )
    )
    return {(t.spec, t.field, t.model, t.model_version, t.prompt_hash): t for t in rows}


def _write(
    s: Session,
    key: FieldKey,
    prev: Threshold | None,
    threshold: float | None,
    target: float,
    ub: float | None,
    n: int,
    reason: str,
    evidence: dict[str, Any],
) -> int:
    version = (prev.version + 1) if prev else 1
    s.add(
        Threshold(
            spec=key[0],
            field=key[1],
            model=key[2],
            model_version=key[3],
            prompt_hash=key[4],
            version=version,
            threshold=threshold,
            target_error=target,
            upper_bound=ub,
            n_samples=n,
            reason=reason,
            evidence=evidence,
        )
    )
    return version


def _model_keys_with_fields(s: Session) -> dict[ModelKey, set[str]]:
    """Every (spec, model, version, prompt) that has made predictions, with its fields."""
    keys = s.execute(
        select(Prediction.spec, Prediction.model, Prediction.model_version, Prediction.prompt_hash)
        .where(Prediction.status == "ok")
        .distinct()
    ).all()
    out: dict[ModelKey, set[str]] = {}
    for spec, model, mv, ph in keys:
        fc = s.scalar(
            select(Prediction.field_confidence)
            .where(
                Prediction.spec == spec,
                Prediction.model == model,
                Prediction.model_version == mv,
                Prediction.prompt_hash == ph,
                Prediction.status == "ok",
            )
            .limit(1)
        )
        out[(spec, model, mv, ph)] = set((fc or {}).keys())
    return out


def calibrate(db: Database, settings: CalibrationSettings, *, raise_on_drift: bool = True) -> CalibrationResult:
    result = CalibrationResult()
    with db.transaction() as s:
        current = current_thresholds(s)
        corrections: dict[FieldKey, list[tuple[float | None, bool, str, Any]]] = defaultdict(list)
        q = select(
            FieldCorrection.spec,
            FieldCorrection.field,
            FieldCorrection.model,
            FieldCorrection.model_version,
            FieldCorrection.prompt_hash,
            FieldCorrection.model_confidence,
            FieldCorrection.changed,
            FieldCorrection.route,
            FieldCorrection.created_at,
        ).where(FieldCorrection.is_latest)
        for spec, fld, model, mv, ph, conf, changed, route, created in s.execute(q):
            corrections[(spec, fld, model, mv, ph)].append((conf, bool(changed), route, created))

        # epoch per model key: after a drift reset only newer reviews are exchangeable with the future
        epochs: dict[tuple[str, str], Any] = {}
        for key, thr in current.items():
            if thr.reason.startswith("drift"):
                mk = (key[0], "|".join(key[2:]))
                epochs[mk] = max(epochs.get(mk, thr.created_at), thr.created_at)

        # 1. drift guard on what is auto-accepting now, on the unit the target is stated on (records
        #    item-level: a record is wrong when any field was changed; values per field)
        drifted: set[FieldKey] = set()
        live = live_audits(
            s,
            current,
            per_field=settings.per_field,
            target=settings.target_error,
            level=settings.confidence_level,
        )
        result.live = live
        for a in live.values():
            # anytime-valid: checked every night on the growing audit sample without inflating false
            # alarms; the lower bound in the message is the exact one, for people to read
            if not a.tripped:
                continue
            model, mv, ph = a.model_key.split("|", 2)
            info = {
                "spec": a.spec,
                "field": ", ".join(a.fields),
                "fields": a.fields,
                "model": model,
                "model_version": mv,
                "prompt_hash": ph,
                "unit": "value" if settings.per_field else "record",
                "n": a.n,
                "changed": a.changed,
                "lower_bound": lower_bound(a.changed, a.n, settings.confidence_level, "clopper_pearson"),
                "target": settings.target_error,
                "level": settings.confidence_level,
                "threshold": a.threshold,
            }
            unit = "values" if settings.per_field else "records"
            for fld in a.fields:
                key = (a.spec, fld, model, mv, ph)
                _write(
                    s,
                    key,
                    current[key],
                    None,
                    settings.target_error,
                    None,
                    a.n,
                    f"drift: {a.changed}/{a.n} audited auto-accepted {unit} changed; back to full review",
                    {"drift": info},
                )
                drifted.add(key)
            result.drift.append(info)

        # 2. new model versions / prompts start at full review
        for mkey, fields in _model_keys_with_fields(s).items():
            for fld in sorted(fields):
                key = (mkey[0], fld, mkey[1], mkey[2], mkey[3])
                if key not in current and key not in corrections:
                    _write(
                        s,
                        key,
                        None,
                        None,
                        settings.target_error,
                        None,
                        0,
                        "new model version or prompt: full review until calibrated",
                        {},
                    )
                    result.new_keys_full_review.append(key)

        # 3. certification from the correction log, weighted by each row's recorded sampling design
        #    (item-level by default: one threshold for every field of a model key, a statement on
        #    records); the betting e-process is valid across nightly reruns, so no alpha is spent
        rows = [r for r in export_rows_in(s) if _in_epoch(r, epochs)]
        doc, certs = calibrate_rows(
            rows,
            target=settings.target_error,
            level=settings.confidence_level,
            per_field=settings.per_field,
            min_samples=settings.min_samples,
            method=settings.bound,
            repeated=True,
        )
        result.item_level = doc["item_level"]
        by_key = {(t["spec"], t["field"], *t["model_key"].split("|", 2)): t for t in doc["thresholds"]}
        for key, rws in sorted(corrections.items()):
            if key in drifted:
                continue
            t = by_key.get(key)
            cert = certs.get((key[0], "|".join(key[2:]), key[1]) if settings.per_field else (key[0], "|".join(key[2:])))
            thr = t["threshold"] if t else None
            ub = t["upper_bound"] if t else None
            n = t["n"] if t else 0
            reason = cert.reason if cert else "no reviewed rows with a recorded sampling design: full review"
            choice = ThresholdChoice(thr, ub, n, cert.n_errors if cert else 0, reason, [])
            table = reliability_table([(r[0], r[1], r[2]) for r in rws])
            prev = current.get(key)
            changed = prev is None or prev.threshold != thr or prev.n_samples != n
            version = prev.version if prev else 0
            if changed:
                evidence = {
                    "reliability": table,
                    "statement": "per_field" if settings.per_field else "item_level",
                    "coverage": cert.coverage if cert else 0.0,
                    "method": cert.method if cert else None,
                    "level": settings.confidence_level,
                    "min_samples": settings.min_samples,
                }
                version = _write(s, key, prev, thr, settings.target_error, ub, n, reason, evidence)
            result.outcomes.append(FieldOutcome(key, choice, version, changed, table))
        # a key reset by the drift guard states no guarantee, whatever the older evidence would certify
        reset = {(k[0], "|".join(k[2:]), *((k[1],) if settings.per_field else ())) for k in drifted}
        result.statements = build_statements(
            rows,
            {
                k: replace(c, threshold=None, upper_bound=None, coverage=0.0, reason=DRIFT_REASON) if k in reset else c
                for k, c in certs.items()
            },
            target=settings.target_error,
            level=settings.confidence_level,
            per_field=settings.per_field,
            min_samples=settings.min_samples,
            live=live,
        )
    for info in result.drift:
        log.error(
            "drift on %s.%s: %s/%s audited auto-accepts changed",
            info["spec"],
            info["field"],
            info["changed"],
            info["n"],
        )
    if result.drift and raise_on_drift:
        raise DriftDetected(result.drift)
    return result


def _in_epoch(row: dict[str, Any], epochs: dict[tuple[str, str], Any]) -> bool:
    start = epochs.get((row["spec"], row["model_key"]))
    return start is None or (row["_created"] is not None and row["_created"] >= start)


def _thin(curve: list[dict[str, float]], max_points: int = 200) -> list[dict[str, float]]:
    """Keep the evidence JSON small: at most ``max_points`` evenly spaced curve points."""
    if len(curve) <= max_points:
        return curve
    step = len(curve) / max_points
    return [curve[int(i * step)] for i in range(max_points)] + [curve[-1]]
