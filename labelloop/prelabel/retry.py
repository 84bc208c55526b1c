"""Give failed predictions another try (``labelloop prelabel --retry-failed``).

A prediction's identity is unique, so a failed row keeps its item from being predicted again by
the same backend. Retrying removes the failed rows that no one has acted on yet (no routing
decision: a failed prediction that was routed is already in front of a reviewer, who labels the
item from scratch, so it stays), after which the runner sees those items as pending. The reasons
are returned first, so the caller can report what is being retried.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import and_, delete, exists, select

from labelloop.db import Database, Prediction, ReviewTask
from labelloop.prelabel.base import Backend
from labelloop.specs import TaskSpec


def failure_reason(error: str | None) -> str:
    """A short class of a failure (the text before the first ':'), for counts per reason."""
    return (error or "no reason given").split(":", 1)[0].strip()[:80] or "no reason given"


def reset_failed(
    db: Database, spec: TaskSpec, backend: Backend, *, item_ids: Sequence[int] | None = None
) -> dict[str, int]:
    """Delete this backend's unrouted failed predictions of ``spec``; returns counts per reason."""
    where = and_(
        Prediction.spec == spec.name,
        Prediction.model == backend.model,
        Prediction.model_version == backend.model_version,
        Prediction.prompt_hash == backend.prompt_hash(spec),
        Prediction.status == "failed",
        ~exists().where(ReviewTask.prediction_id == Prediction.id),
    )
    if item_ids is not None:
        where = and_(where, Prediction.item_id.in_(list(item_ids)))
    with db.transaction() as s:
        rows = s.execute(select(Prediction.error).where(where)).all()
        if rows:
            s.execute(delete(Prediction).where(where))
    return dict(Counter(failure_reason(r.error) for r in rows))
