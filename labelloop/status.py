"""Counts per pipeline stage, for `labelloop status` and the DAGs' logs.

Keys are "spec/..." groups: predictions by status and failures by reason (the error's text before
its first ':'), review tasks by route and state, records by provenance, open rejects by reason,
dataset versions per spec.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from labelloop.db import (
    Annotation,
    AnnotationReject,
    DatasetVersion,
    FieldCorrection,
    Item,
    Prediction,
    Quarantine,
    Record,
    Reject,
    ReviewTask,
)
from labelloop.db.session import Database
from labelloop.prelabel.retry import failure_reason


def pipeline_status(db: Database) -> dict[str, Any]:
    with db.session() as s:

        def grouped(*cols):  # type: ignore[no-untyped-def]
            rows = s.execute(select(*cols, func.count()).group_by(*cols).order_by(*cols)).all()
            return {"/".join(str(v) for v in r[:-1]): int(r[-1]) for r in rows}

        failures: dict[str, int] = {}
        failed = (
            select(Prediction.spec, Prediction.error, func.count())
            .where(Prediction.status == "failed")
            .group_by(Prediction.spec, Prediction.error)
        )
        for spec, error, n in s.execute(failed):
            key = f"{spec}/{failure_reason(error)}"
            failures[key] = failures.get(key, 0) + int(n)
        # a reject whose bytes were later ingested fine (e.g. after a limit was raised) is history
        open_rejects = select(Reject.reason, func.count()).where(~Reject.sha256.in_(select(Item.sha256)))
        return {
            "items": grouped(Item.media_type),
            "rejects": {r: int(n) for r, n in s.execute(open_rejects.group_by(Reject.reason).order_by(Reject.reason))},
            "predictions": grouped(Prediction.spec, Prediction.status),
            "prediction_failures": dict(sorted(failures.items())),
            "review_tasks": grouped(ReviewTask.spec, ReviewTask.route, ReviewTask.status),
            "annotations": int(s.scalar(select(func.count()).select_from(Annotation).where(Annotation.is_latest)) or 0),
            "annotation_rejects": grouped(AnnotationReject.spec),
            "field_corrections": int(s.scalar(select(func.count()).select_from(FieldCorrection)) or 0),
            "records": grouped(Record.spec, Record.provenance),
            "quarantined": int(s.scalar(select(func.count(func.distinct(Quarantine.record_id)))) or 0),
            "dataset_versions": grouped(DatasetVersion.spec),
        }
