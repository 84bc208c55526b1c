"""The correction log as a file, and calibration from it without a database.

``labelloop corrections export`` writes one JSON object per reviewed field; ``labelloop calibrate
--from-log`` reads such a file and prints the thresholds it would certify. Reproducibility and
what-if analysis (another target, level, per-field) need nothing but this file, and the simulation
tests drive the same function. Each row carries its sampling design (``route``, ``inclusion_prob`` and,
beyond the documented keys, ``audit_rate``: the floor of the inclusion probability at routing time).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.calibration.guarantee import Certificate, Units, certify
from labelloop.db import Database, FieldCorrection, ReviewTask

ROUTES = ("full_review", "review", "audit")


def model_key(model: str, model_version: str, prompt_hash: str) -> str:
    return f"{model}|{model_version}|{prompt_hash}"


def export_rows(db: Database, spec: str | None = None) -> Iterator[dict[str, Any]]:
    """The latest correction per reviewed field, with the routing decision's sampling design.
    Rows routed before the design was recorded have ``inclusion_prob`` null (calibration skips them)."""
    with db.session() as s:
        for r in export_rows_in(s, spec):
            r.pop("_created", None)
            yield r


def export_rows_in(s: Session, spec: str | None = None) -> Iterator[dict[str, Any]]:
    q = (
        select(FieldCorrection, ReviewTask.design, ReviewTask.inclusion_prob, ReviewTask.audit_rate)
        .join(ReviewTask, ReviewTask.id == FieldCorrection.review_task_id)
        .where(FieldCorrection.is_latest)
        .order_by(FieldCorrection.id)
    )
    if spec is not None:
        q = q.where(FieldCorrection.spec == spec)
    for fc, design, pi, audit_rate in s.execute(q):
        yield {
            "spec": fc.spec,
            "field": fc.field,
            "item": fc.item_id,
            "model_key": model_key(fc.model, fc.model_version, fc.prompt_hash),
            "confidence": fc.model_confidence,
            "changed": bool(fc.changed),
            "route": design if design in ROUTES else fc.route,
            "inclusion_prob": pi,
            "audit_rate": audit_rate,
            "_created": rt_created if (rt_created := fc.created_at) else None,
        }


def write_log(rows: Iterable[dict[str, Any]], path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
            n += 1
    return n


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of a correction log; a malformed line is an error naming the file and line."""
    rows = []
    need = ("spec", "field", "item", "model_key", "confidence", "changed", "route", "inclusion_prob")
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from e
        missing = [k for k in need if k not in r]
        if missing:
            raise ValueError(f"{path}:{i}: missing {', '.join(missing)}")
        if r["route"] not in ROUTES:
            raise ValueError(f"{path}:{i}: route {r['route']!r} is not one of {', '.join(ROUTES)}")
        pi = r["inclusion_prob"]
        if pi is not None and not (isinstance(pi, int | float) and 0 < pi <= 1):
            raise ValueError(f"{path}:{i}: inclusion_prob {pi!r} is not in (0, 1]")
        rows.append(r)
    return rows


def _floor(r: dict[str, Any], audit_floor: float) -> float:
    if r["route"] == "full_review":
        return 1.0
    rate = r.get("audit_rate")
    return min(float(r["inclusion_prob"]), float(rate) if rate is not None else audit_floor)


@dataclass
class Group:
    """The reviewed units of one key, with each unit's item and the field that set its score (the
    least confident one: what holds a record back)."""

    units: Units
    items: list[Any]
    weakest: list[str]


def group_units(rows: list[dict[str, Any]], per_field: bool) -> dict[tuple[str, ...], Group]:
    """Units per (spec, model_key) for records, or per (spec, model_key, field) for values."""
    audit_floor: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["route"] == "audit" and r["inclusion_prob"] is not None:
            k = (r["spec"], r["model_key"])
            audit_floor[k] = min(audit_floor.get(k, 1.0), float(r["inclusion_prob"]))
    acc: dict[tuple[str, ...], dict[Any, list[Any]]] = defaultdict(dict)
    for r in rows:
        if r["inclusion_prob"] is None:
            continue  # no recorded design: cannot be weighted, so it is not evidence
        gk = (r["spec"], r["model_key"])
        # without an audit sample, review rows say nothing about what was auto-accepted: zero bet
        fl = _floor(r, audit_floor.get(gk, 0.0))
        conf = float(r["confidence"]) if r["confidence"] is not None else 0.0
        key = (*gk, r["field"]) if per_field else gk
        unit = acc[key].setdefault(r["item"], [2.0, False, float(r["inclusion_prob"]), fl, r["field"]])
        if conf < unit[0]:
            unit[0], unit[4] = conf, r["field"]
        unit[1] = unit[1] or bool(r["changed"])
    out = {}
    for key, units in acc.items():
        arr = np.array([[u[0], float(u[1]), u[2], u[3]] for u in units.values()], dtype=float).reshape(-1, 4)
        out[key] = Group(
            Units.of(arr[:, 0], arr[:, 1] > 0, arr[:, 2], arr[:, 3]),
            list(units),
            [u[4] for u in units.values()],
        )
    return out


def _group_units(rows: list[dict[str, Any]], per_field: bool) -> dict[tuple[str, ...], Units]:
    return {k: g.units for k, g in group_units(rows, per_field).items()}


def calibrate_rows(
    rows: list[dict[str, Any]],
    *,
    target: float,
    level: float,
    per_field: bool = False,
    min_samples: int = 50,
    method: str = "auto",
    repeated: bool = False,
) -> tuple[dict[str, Any], dict[tuple[str, ...], Certificate]]:
    """Certify thresholds from log rows; returns the JSON document and the certificates by key.

    Item-level (default): one threshold per (spec, model_key) applied to every field, so a record is
    auto-accepted when its least confident field clears it; the statement is on records. ``per_field``:
    one threshold per field, each holding the target on that field's values."""
    fields: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        fields[(r["spec"], r["model_key"])].add(r["field"])
    groups = _group_units(rows, per_field)
    certs = {
        key: certify(u, target=target, level=level, method=method, min_samples=min_samples, repeated=repeated)
        for key, u in sorted(groups.items())
    }
    thresholds = []
    items = []
    for key, c in certs.items():
        names = [key[2]] if per_field else sorted(fields[(key[0], key[1])])
        for name in names:
            thresholds.append(
                {
                    "spec": key[0],
                    "model_key": key[1],
                    "field": name,
                    "threshold": c.threshold,
                    "upper_bound": c.upper_bound,
                    "n": c.n,
                    "method": c.method,
                }
            )
        if not per_field:
            items.append(
                {
                    "spec": key[0],
                    "model_key": key[1],
                    "target": target,
                    "level": level,
                    "n_items": len(groups[key]),  # reviewed records behind the statement
                    "threshold": c.threshold,
                    "upper_bound": c.upper_bound,
                    "coverage": c.coverage,
                    "method": c.method,
                    "reason": c.reason,
                }
            )
    item_level: Any = None if per_field else (items[0] if len(items) == 1 else items)
    return {"item_level": item_level, "thresholds": thresholds}, certs
