"""The audit sample as a live estimate of what the thresholds in force let through.

Audited items are a hash sample of the would-be auto-accepts, blind to the reviewer and independent of
confidence, so among the audited records that clear the threshold in force, the share a reviewer changed
estimates the error of what is being auto-accepted, without weights. The drift guard
(:func:`labelloop.calibration.run.calibrate`), the calibration report and ``labelloop status`` read the
same window: audits *routed* (not synced) since the threshold in force took effect, so an audit drawn
under an older, higher threshold never vouches for the part of the region it could not have sampled.

Item-level (the default statement) a unit is a record: it clears when every field clears its
threshold, and it is wrong when a reviewer changed any field. Per field a unit is one value.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop.calibration.guarantee import clopper_pearson_interval, drift_log_e
from labelloop.db import FieldCorrection, Prediction, ReviewTask, Threshold

FieldKey = tuple[str, str, str, str, str]  # spec, field, model, model_version, prompt_hash


@dataclass
class LiveAudit:
    """Audited auto-accepts of one key (a model key's records, or one field) since ``since``."""

    spec: str
    model_key: str  # model|model_version|prompt_hash
    fields: list[str]
    threshold: float
    since: dt.datetime
    errors: list[bool]  # per audited unit, in routing order
    auto_accepted: int  # records auto-accepted (not audited) in the same window
    target: float
    level: float
    per_field: bool = False

    @property
    def n(self) -> int:
        return len(self.errors)

    @property
    def changed(self) -> int:
        return int(sum(self.errors))

    @property
    def estimate(self) -> float | None:
        return self.changed / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        """Two-sided Clopper-Pearson interval at ``level``: for people to read, not the test."""
        return clopper_pearson_interval(self.changed, self.n, self.level)

    @property
    def log_e(self) -> float:
        return drift_log_e(self.errors, self.target)

    @property
    def tripped(self) -> bool:
        return self.n > 0 and self.log_e >= math.log(1 / (1 - self.level))

    def as_dict(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {
            "spec": self.spec,
            "model_key": self.model_key,
            "fields": self.fields,
            "threshold": self.threshold,
            "since": self.since.isoformat(),
            "audited": self.n,
            "changed": self.changed,
            "estimate": self.estimate,
            "interval": [lo, hi],
            "level": self.level,
            "target": self.target,
            "auto_accepted": self.auto_accepted,
            "drift": self.tripped,
        }

    def sentence(self) -> str:
        unit = f"{self.fields[0]} values" if self.per_field else "records"
        when = self.since.strftime("%Y-%m-%d %H:%M")
        if not self.n:
            return (
                f"No audited {unit} yet since the threshold {self.threshold:.4f} took effect ({when}); "
                f"{self.auto_accepted} auto-accepted meanwhile."
            )
        lo, hi = self.interval
        verdict = (
            "DRIFT: the audits show more errors than the target allows; back to full review"
            if self.tripped
            else "Within what the target allows so far"
        )
        return (
            f"Since {when} at threshold {self.threshold:.4f}: {self.changed} of {self.n} audited {unit} were "
            f"changed by reviewers, an estimated {self.estimate:.1%} of what is auto-accepted "
            f"({self.level:.0%} Clopper-Pearson interval {lo:.1%} to {hi:.1%}; target {self.target:.1%}); "
            f"{self.auto_accepted} auto-accepted meanwhile. {verdict}."
        )


def _routing_window(thresholds: list[Threshold]) -> tuple[dict[str, float], dt.datetime] | None:
    """The fields' thresholds in force and when the newest of them took effect; None when any field
    is at full review (nothing auto-accepted, nothing to monitor)."""
    if not thresholds or any(t.threshold is None for t in thresholds):
        return None
    return {t.field: float(t.threshold) for t in thresholds}, max(t.created_at for t in thresholds)


def live_audits(
    s: Session, current: dict[FieldKey, Threshold], *, per_field: bool, target: float, level: float
) -> dict[tuple[str, ...], LiveAudit]:
    """Per key in force (``(spec, model_key)`` item-level, ``(spec, model_key, field)`` per field), the
    audited units routed since its threshold took effect that clear it."""
    groups: dict[tuple[str, ...], list[Threshold]] = defaultdict(list)
    for (spec, fld, model, mv, ph), t in current.items():
        mk = f"{model}|{mv}|{ph}"
        groups[(spec, mk, fld) if per_field else (spec, mk)].append(t)
    windows = {k: w for k, ts in groups.items() if (w := _routing_window(ts)) is not None}
    if not windows:
        return {}
    q = (
        select(
            FieldCorrection.spec,
            FieldCorrection.field,
            FieldCorrection.model,
            FieldCorrection.model_version,
            FieldCorrection.prompt_hash,
            FieldCorrection.item_id,
            FieldCorrection.model_confidence,
            FieldCorrection.changed,
            ReviewTask.created_at,
        )
        .join(ReviewTask, ReviewTask.id == FieldCorrection.review_task_id)
        .where(FieldCorrection.is_latest, ReviewTask.route == "audit")
        .order_by(ReviewTask.created_at, FieldCorrection.id)
    )
    # unit -> [clears, wrong, routed_at]
    units: dict[tuple[str, ...], dict[int, list[Any]]] = defaultdict(dict)
    for spec, fld, model, mv, ph, item_id, conf, changed, routed in s.execute(q):
        mk = f"{model}|{mv}|{ph}"
        key = (spec, mk, fld) if per_field else (spec, mk)
        w = windows.get(key)
        if w is None or routed < w[1]:
            continue
        thr = w[0].get(fld)
        u = units[key].setdefault(item_id, [True, False, routed])
        # a field without a threshold here, or without a confidence, does not clear: not an auto-accept
        u[0] = u[0] and thr is not None and conf is not None and conf >= thr
        u[1] = u[1] or bool(changed)
    out = {}
    for key, (thr, since) in windows.items():
        spec, mk = key[0], key[1]
        model, mv, ph = mk.split("|", 2)
        errors = [u[1] for u in sorted(units.get(key, {}).values(), key=lambda u: u[2]) if u[0]]
        auto = _auto_count(s, spec, model, mv, ph, since)
        fields = [key[2]] if per_field else sorted(thr)
        out[key] = LiveAudit(spec, mk, fields, min(thr.values()), since, errors, auto, target, level, per_field)
    return out


def _auto_count(s: Session, spec: str, model: str, mv: str, ph: str, since: dt.datetime) -> int:
    return int(
        s.scalar(
            select(func.count(func.distinct(ReviewTask.prediction_id)))
            .join(Prediction, Prediction.id == ReviewTask.prediction_id)
            .where(
                ReviewTask.spec == spec,
                ReviewTask.route == "auto",
                ReviewTask.created_at >= since,
                Prediction.model == model,
                Prediction.model_version == mv,
                Prediction.prompt_hash == ph,
            )
        )
        or 0
    )
