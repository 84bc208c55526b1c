"""Route predictions: auto-accept, human review, or audit.

Per field, the prediction's confidence is compared with a threshold, looked up in this order:

1. the newest row (highest ``version``) of ``thresholds`` for (spec, field, model, model_version,
   prompt_hash) -- what calibration certified; ``threshold`` NULL there means "full review";
2. nothing calibrated: full review. Only if ``routing.use_manual_thresholds`` is on,
   ``routing.thresholds["<spec>.<field>"]`` then ``routing.default_threshold`` apply instead, and the
   decision is marked "uncalibrated" (source ``manual``/``default``, ``uncalibrated: true``) so the
   routing row, the report and ``labelloop status`` can say so. A fresh install or a new model therefore
   auto-accepts nothing until calibration has certified a threshold.

A field passes when ``confidence >= threshold`` (so a threshold above 1 always reviews). Any
failing field, a failed prediction, or a missing confidence sends the item to review. Of the items
that would be auto-accepted, a deterministic sample goes to review as "audit": the fraction
``int(sha256(salt:item_sha256:spec)[:16], 16) / 2**64`` is compared with ``audit_rate``. Hashing
the content (not a row id) makes the sample reproducible across databases and reruns, and
independent of confidence, which is what makes the audited error rate an unbiased estimate of the
auto-accept error rate that calibration bounds.

A failed prediction is not routed at all unless ``routing.review_failures`` says so (then it is
a review task labelled from scratch, whose Label Studio task says why it has no pre-annotation):
by default it waits for the pre-label runner to retry it.

Every decision also records its sampling design (``design``, ``inclusion_prob``, ``audit_rate``):
"full_review" (some field has no certified threshold, so every item is reviewed: probability 1),
"review" (a field below its threshold: probability 1 given the confidences), "audit" and "auto"
(the audit rate). Calibration weights reviewed items by 1 / inclusion_prob.

Every decision is stored once, as ``review_tasks`` rows (one per page for documents, page 0 for
images) keyed by (prediction, page): rerunning routing skips predictions that already have rows, so
decisions never change after the fact, even if thresholds did. An auto-accepted item also gets its
``records`` row (provenance "auto") unless a human already curated that item.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop.config import RoutingSettings
from labelloop.db import Database, Item, Prediction, Record, ReviewTask, Threshold
from labelloop.db.types import utcnow
from labelloop.specs import TaskSpec
from labelloop.validation.canonical import record_hash

ROUTE_AUTO = "auto"
ROUTE_REVIEW = "review"
ROUTE_AUDIT = "audit"

STATUS_AUTO = "auto_accepted"
STATUS_PENDING = "pending_import"
STATUS_IMPORTED = "imported"
STATUS_COMPLETED = "completed"
STATUS_SKIPPED = "skipped"
STATUS_DELETED = "deleted"

#: a document some of whose pages are reviewed and others not yet: never exported as it is
PROVENANCE_PARTIAL = "partial"
#: provenances a machine must never overwrite
HUMAN_PROVENANCES = ("human", "audited", PROVENANCE_PARTIAL)


def audit_fraction(salt: str, item_sha256: str, spec: str) -> float:
    """A uniform number in [0, 1) fixed by the item's content and the spec."""
    digest = hashlib.sha256(f"{salt}:{item_sha256}:{spec}".encode()).hexdigest()
    return int(digest[:16], 16) / 2.0**64


def external_id(spec: str, item_sha256: str, prediction_id: int, page: int) -> str:
    """The Label Studio task's ``data.external_id``: readable, unique per (prediction, page)."""
    return f"{spec}:{item_sha256[:24]}:{prediction_id}:{page}"


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class FieldThreshold:
    #: None: full review (calibration found too little evidence)
    threshold: float | None
    source: str  # "db" | "uncalibrated" (nothing certified: full review) | "manual" | "default"
    version: int | None = None

    @property
    def uncalibrated(self) -> bool:
        """A manual threshold in force where calibration certified none."""
        return self.source in ("manual", "default") and self.threshold is not None


class ThresholdResolver:
    """Thresholds per field for a prediction identity; DB rows are read once per identity."""

    def __init__(self, session: Session, routing: RoutingSettings, spec: TaskSpec) -> None:
        self.session = session
        self.routing = routing
        self.spec = spec
        self._cache: dict[tuple[str, str, str], dict[str, FieldThreshold]] = {}

    def _db_rows(self, model: str, model_version: str, prompt_hash: str) -> dict[str, Threshold]:
        rows = self.session.scalars(
            select(Threshold).where(
                Threshold.spec == self.spec.name,
                Threshold.model == model,
                Threshold.model_version == model_version,
                Threshold.prompt_hash == prompt_hash,
            )
        )
        newest: dict[str, Threshold] = {}
        for row in rows:
            if row.field not in newest or row.version > newest[row.field].version:
                newest[row.field] = row
        return newest

    def for_identity(self, model: str, model_version: str, prompt_hash: str) -> dict[str, FieldThreshold]:
        key = (model, model_version, prompt_hash)
        if key not in self._cache:
            db_rows = self._db_rows(*key)
            out: dict[str, FieldThreshold] = {}
            for name in self.spec.fields:
                if name in db_rows:
                    row = db_rows[name]
                    out[name] = FieldThreshold(row.threshold, "db", row.version)
                elif not self.routing.use_manual_thresholds:
                    out[name] = FieldThreshold(None, "uncalibrated")
                elif f"{self.spec.name}.{name}" in self.routing.thresholds:
                    out[name] = FieldThreshold(self.routing.thresholds[f"{self.spec.name}.{name}"], "manual")
                else:
                    out[name] = FieldThreshold(self.routing.default_threshold, "default")
            self._cache[key] = out
        return self._cache[key]


# --------------------------------------------------------------------------- one decision


@dataclass
class Decision:
    route: str
    reason: str
    evidence: dict[str, Any]
    threshold_version: int | None
    #: sampling design, see the module docstring
    design: str = "review"
    inclusion_prob: float = 1.0
    audit_rate: float = 0.0


def decide(
    spec: TaskSpec,
    pred: Prediction,
    item_sha256: str,
    thresholds: dict[str, FieldThreshold],
    routing: RoutingSettings,
) -> Decision:
    """The route of one prediction, with a reason a person can read and per-field evidence."""
    evidence: dict[str, Any] = {}
    failing: list[str] = []
    versions = [t.version for t in thresholds.values() if t.version is not None]
    version = max(versions) if versions else None
    for name in spec.fields:
        t = thresholds[name]
        conf = (pred.field_confidence or {}).get(name)
        passed = pred.status == "ok" and conf is not None and t.threshold is not None and conf >= t.threshold
        evidence[name] = {
            "confidence": conf,
            "threshold": t.threshold,
            "source": t.source,
            "version": t.version,
            "pass": passed,
        }
        if t.uncalibrated:
            evidence[name]["uncalibrated"] = True
        if pred.status != "ok" or passed:
            continue
        if conf is None:
            failing.append(f"{name} has no confidence")
        elif t.threshold is None and t.source == "uncalibrated":
            failing.append(f"{name} has no calibrated threshold yet (full review)")
        elif t.threshold is None:
            failing.append(f"{name} is under full review (thresholds v{t.version})")
        elif t.threshold > 1:
            failing.append(f"{name} is always reviewed (threshold {t.threshold:g})")
        else:
            src = f"{t.source}, uncalibrated" if t.uncalibrated else t.source
            failing.append(f"{name} {conf:.3f} < {t.threshold:.3f} ({src})")
    rate = routing.audit_rate
    # every item of this identity is reviewed whatever its confidences: a random sample (probability 1)
    full = any(t.threshold is None for t in thresholds.values())
    design = "full_review" if full else "review"
    if pred.status != "ok":
        reason = f"prediction failed ({pred.failure_kind or 'permanent'}, {pred.attempts or 1} attempt(s)): "
        return Decision(ROUTE_REVIEW, reason + (pred.error or "no reason given"), evidence, version, design, 1.0, rate)
    if failing:
        return Decision(ROUTE_REVIEW, "below threshold: " + "; ".join(failing), evidence, version, design, 1.0, rate)
    uncal = sorted(n for n, t in thresholds.items() if t.uncalibrated)
    note = f" (uncalibrated manual threshold: {', '.join(uncal)})" if uncal else ""
    draw = audit_fraction(routing.audit_salt, item_sha256, spec.name)
    evidence["_audit"] = {"fraction": draw, "rate": rate}
    if uncal:
        evidence["_uncalibrated"] = uncal
    if draw < rate:
        reason = f"audit sample ({rate:.1%} of would-be auto-accepts); every field passed{note}"
        return Decision(ROUTE_AUDIT, reason, evidence, version, "audit", rate, rate)
    return Decision(ROUTE_AUTO, "every field at or above its threshold" + note, evidence, version, "auto", rate, rate)


def review_pages(spec: TaskSpec, pred: Prediction, item: Item) -> list[int]:
    """Pages that become Label Studio tasks: documents a task per page, images one (page 0)."""
    if spec.media != "document":
        return [0]
    pages = [int(p.get("page", i)) for i, p in enumerate((pred.record or {}).get("pages") or [])]
    if pages:
        return pages
    return list(range(item.page_count or 1))


# --------------------------------------------------------------------------- the batch


@dataclass
class RoutingStats:
    spec: str
    considered: int = 0
    auto: int = 0
    review: int = 0
    audit: int = 0
    tasks: int = 0
    records: int = 0
    raced: int = 0
    seconds: float = 0.0
    reasons: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "considered": self.considered,
            "auto": self.auto,
            "review": self.review,
            "audit": self.audit,
            "tasks": self.tasks,
            "records": self.records,
            "raced": self.raced,
            "seconds": round(self.seconds, 3),
        }


def _unrouted(spec: TaskSpec, routing: RoutingSettings) -> Any:
    """Predictions without a decision. Failed ones only with ``routing.review_failures``:
    otherwise they wait for a retry (prelabel.runner) instead of becoming empty review tasks
    that turn a bad night into labelling from scratch."""
    stmt = (
        select(Prediction, Item)
        .join(Item, Item.id == Prediction.item_id)
        .where(
            Prediction.spec == spec.name,
            ~exists().where(and_(ReviewTask.prediction_id == Prediction.id)),
        )
    )
    if not routing.review_failures:
        stmt = stmt.where(Prediction.status == "ok")
    return stmt


def upsert_auto_record(s: Session, pred: Prediction, existing: Record | None) -> Record | None:
    """The auto-accepted record, unless a human already curated the item (then None)."""
    if existing is not None and existing.provenance in HUMAN_PROVENANCES:
        return None
    return put_record(
        s,
        existing,
        item_id=pred.item_id,
        spec=pred.spec,
        pred=pred,
        provenance="auto",
        record=pred.record or {},
    )


def put_record(
    s: Session,
    existing: Record | None,
    *,
    item_id: int,
    spec: str,
    pred: Prediction,
    provenance: str,
    record: dict[str, Any],
    annotation_id: int | None = None,
    annotator: str | None = None,
) -> Record:
    """Create or overwrite the curated record of (item, spec); the one place routing (auto) and
    review sync (human/audited) write records, so both fill the same columns and content hash."""
    values = {
        "provenance": provenance,
        "prediction_id": pred.id,
        "annotation_id": annotation_id,
        "model": pred.model,
        "model_version": pred.model_version,
        "annotator": annotator,
        "confidence": pred.confidence,
        "record": record,
        "content_hash": record_hash(record),
    }
    if existing is None:
        existing = Record(item_id=item_id, spec=spec, **values)
        s.add(existing)
    else:
        for k, v in values.items():
            setattr(existing, k, v)
        existing.updated_at = utcnow()
    return existing


@dataclass
class _Routed:
    pred: Prediction
    item: Item
    decision: Decision
    pages: list[int]


def _write(s: Session, spec: TaskSpec, routed: list[_Routed], stats: RoutingStats) -> None:
    """Store decisions (and auto records); raises IntegrityError if any prediction was routed meanwhile."""
    records = {
        r.item_id: r
        for r in s.scalars(
            select(Record).where(Record.spec == spec.name, Record.item_id.in_([x.item.id for x in routed]))
        )
    }
    for x in routed:
        d = x.decision
        for page in x.pages:
            s.add(
                ReviewTask(
                    prediction_id=x.pred.id,
                    page=page,
                    item_id=x.item.id,
                    spec=spec.name,
                    route=d.route,
                    reason=d.reason,
                    decision=d.evidence,
                    threshold_version=d.threshold_version,
                    design=d.design,
                    inclusion_prob=d.inclusion_prob,
                    audit_rate=d.audit_rate,
                    status=STATUS_AUTO if d.route == ROUTE_AUTO else STATUS_PENDING,
                    external_id=external_id(spec.name, x.item.sha256, x.pred.id, page),
                )
            )
    s.flush()
    for x in routed:
        if x.decision.route == ROUTE_AUTO:
            # the same item may come twice in a batch (two models): the later one updates the row
            rec = upsert_auto_record(s, x.pred, records.get(x.item.id))
            if rec is not None:
                records[x.item.id] = rec
                stats.records += 1
    s.flush()
    for x in routed:
        setattr(stats, x.decision.route, getattr(stats, x.decision.route) + 1)
        stats.tasks += len(x.pages)
        if x.decision.route != ROUTE_AUTO and len(stats.reasons) < 50:
            stats.reasons.append((x.pred.id, x.decision.reason))


def _route_batch(
    s: Session, spec: TaskSpec, rows: list[tuple[Prediction, Item]], routing: RoutingSettings, stats: RoutingStats
) -> None:
    resolver = ThresholdResolver(s, routing, spec)
    routed = []
    for pred, item in rows:
        t = resolver.for_identity(pred.model, pred.model_version, pred.prompt_hash)
        d = decide(spec, pred, item.sha256, t, routing)
        pages = [0] if d.route == ROUTE_AUTO else review_pages(spec, pred, item)
        routed.append(_Routed(pred, item, d, pages))
    stats.considered += len(routed)
    try:
        with s.begin_nested():  # the common case: the whole batch in one go
            _write(s, spec, routed, stats)
        return
    except IntegrityError:
        pass
    for x in routed:  # a concurrent router got some of them first: theirs stand, route the rest
        try:
            with s.begin_nested():
                _write(s, spec, [x], stats)
        except IntegrityError:
            stats.raced += 1


def route_predictions(
    db: Database,
    routing: RoutingSettings,
    spec: TaskSpec,
    *,
    prediction_ids: Sequence[int] | None = None,
    item_ids: Iterable[int] | None = None,
    model: str | None = None,
    model_version: str | None = None,
    batch: int = 500,
) -> RoutingStats:
    """Route every prediction of ``spec`` (optionally narrowed) that has no decision yet.

    Works in batches of ``batch`` predictions, one transaction each, so a crash loses at most a
    batch and a rerun continues where it stopped.
    """
    stats = RoutingStats(spec=spec.name)
    t0 = time.perf_counter()
    last_id = 0
    item_ids = list(item_ids) if item_ids is not None else None
    while True:
        stmt = _unrouted(spec, routing).where(Prediction.id > last_id).order_by(Prediction.id).limit(batch)
        if prediction_ids is not None:
            stmt = stmt.where(Prediction.id.in_(list(prediction_ids)))
        if item_ids is not None:
            stmt = stmt.where(Prediction.item_id.in_(item_ids))
        if model is not None:
            stmt = stmt.where(Prediction.model == model)
        if model_version is not None:
            stmt = stmt.where(Prediction.model_version == model_version)
        with db.session() as s:
            rows = [(p, it) for p, it in s.execute(stmt)]
            if not rows:
                break
            _route_batch(s, spec, rows, routing, stats)
            s.commit()
        last_id = rows[-1][0].id
    stats.seconds = time.perf_counter() - t0
    return stats
