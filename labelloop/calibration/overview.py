"""Where each (spec, model) stands with calibration, for ``labelloop status`` and the report.

Per model key (spec, model, model_version, prompt_hash) one state:

- ``certified``: every field has a certified threshold; the statement holds (see the report).
- ``full_review``: calibration ran but certified nothing (a new model key, too little evidence, or a
  drift reset).
- ``uncalibrated``: some field has never been calibrated; without manual thresholds that is full review.
- ``manual``: no certified threshold, but ``routing.use_manual_thresholds`` lets manual or default
  thresholds auto-accept: **uncalibrated, no guarantee**. Every decision made that way says so in its
  reason, and they are counted here.

Every state but ``certified`` is marked uncalibrated: no guarantee holds for that key. Reads only;
cheap enough for every ``labelloop status`` (no certification is recomputed).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop.calibration.live import live_audits
from labelloop.calibration.run import _model_keys_with_fields, current_thresholds
from labelloop.config import CalibrationSettings, RoutingSettings
from labelloop.db import Database, ReviewTask

#: routing writes this into the reason of every decision taken on a manual threshold
MANUAL_MARK = "uncalibrated manual threshold"


def _manual_threshold(routing: RoutingSettings, spec: str, fld: str) -> float:
    return routing.thresholds.get(f"{spec}.{fld}", routing.default_threshold)


def calibration_overview(db: Database, calibration: CalibrationSettings, routing: RoutingSettings) -> dict[str, Any]:
    with db.session() as s:
        return calibration_overview_in(s, calibration, routing)


def calibration_overview_in(s: Session, calibration: CalibrationSettings, routing: RoutingSettings) -> dict[str, Any]:
    current = current_thresholds(s)
    live = live_audits(
        s,
        current,
        per_field=calibration.per_field,
        target=calibration.target_error,
        level=calibration.confidence_level,
    )
    keys = _model_keys_with_fields(s)
    for spec, fld, model, mv, ph in current:
        keys.setdefault((spec, model, mv, ph), set()).add(fld)
    out = []
    for (spec, model, mv, ph), fields in sorted(keys.items()):
        mk = f"{model}|{mv}|{ph}"
        per: dict[str, Any] = {}
        for fld in sorted(fields):
            t = current.get((spec, fld, model, mv, ph))
            if t is not None and t.threshold is not None:
                per[fld] = {"state": "certified", "threshold": t.threshold, "upper_bound": t.upper_bound}
            elif t is not None:
                per[fld] = {"state": "full_review", "threshold": None, "reason": t.reason}
            elif routing.use_manual_thresholds:
                per[fld] = {"state": "manual", "threshold": _manual_threshold(routing, spec, fld), "uncalibrated": True}
            else:
                per[fld] = {"state": "uncalibrated", "threshold": None, "uncalibrated": True}
        states = {v["state"] for v in per.values()}
        if states == {"certified"}:
            state = "certified"
        elif "manual" in states and not (states & {"full_review", "uncalibrated"}):
            state = "manual"  # every field passes on a threshold: auto-accepts happen, uncalibrated
        elif states & {"uncalibrated", "manual"}:
            state = "uncalibrated"
        else:
            state = "full_review"
        audits = [a.as_dict() for k, a in live.items() if k[0] == spec and k[1] == mk]
        out.append(
            {
                "spec": spec,
                "model_key": mk,
                "state": state,
                # no certified threshold in force: no guarantee for this key, whatever the reason
                "uncalibrated": state != "certified",
                "statement": "per_field" if calibration.per_field else "item_level",
                "target": calibration.target_error,
                "level": calibration.confidence_level,
                "fields": per,
                "live_audit": audits,
            }
        )
    manual = {
        spec: int(n)
        for spec, n in s.execute(
            select(ReviewTask.spec, func.count(func.distinct(ReviewTask.prediction_id)))
            .where(ReviewTask.route.in_(("auto", "audit")), ReviewTask.reason.contains(MANUAL_MARK))
            .group_by(ReviewTask.spec)
        )
    }
    return {"keys": out, "decisions_on_manual_thresholds": manual}


def describe(row: dict[str, Any]) -> str:
    """One line for a key of :func:`calibration_overview`."""
    per = row["fields"]
    if row["state"] == "certified":
        thr = sorted({v["threshold"] for v in per.values()})
        t = f"{thr[0]:.4f}" if len(thr) == 1 else ", ".join(f"{f} {v['threshold']:.4f}" for f, v in per.items())
        scope = "of auto-accepted records have any changed field" if row["statement"] == "item_level" else "per field"
        line = f"certified: threshold {t}; at most {row['target']:.1%} {scope} at {row['level']:.0%}"
        for a in row["live_audit"]:
            if not a["audited"]:
                line += f"; no audits yet since it took effect ({a['since'][:16]})"
                continue
            lo, hi = a["interval"]
            est = "-" if a["estimate"] is None else f"{a['estimate']:.1%}"
            line += f"; audit {a['changed']}/{a['audited']} changed ({est}, {a['level']:.0%} CP {lo:.1%}-{hi:.1%})" + (
                " DRIFT" if a["drift"] else ""
            )
        return line
    if row["state"] == "manual":
        t = ", ".join(f"{f} {v['threshold']:g}" for f, v in per.items())
        return f"UNCALIBRATED: auto-accepting on manual thresholds ({t}), no guarantee"
    if row["state"] == "uncalibrated":
        todo = sorted(f for f, v in per.items() if v.get("uncalibrated"))
        return f"uncalibrated: full review until calibration certifies {', '.join(todo)}"
    why = next((v["reason"] for v in per.values() if v.get("reason")), "no certified threshold")
    return f"uncalibrated (full review): {why}"
