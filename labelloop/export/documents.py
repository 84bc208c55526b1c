"""Documents in a dataset version: provenance per page, and the documents still waiting.

Documents are routed per prediction but reviewed a page per Label Studio task, so one record's
pages can come from different reviewers (or from the model, for an auto-accepted document). The
version's ``provenance.jsonl`` therefore carries a ``pages`` list: per page its provenance
(``human``, ``audited``, ``auto``), the annotator, the annotation and the routing decision that
made it final, and "uncalibrated" when a manual threshold accepted it.

A document some of whose pages are not final (provenance ``partial``, see
:mod:`labelloop.review.sync`) is not a member; :func:`waiting_documents` lists them for the card.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select

from labelloop.db import Annotation, Database, Item, ItemAlias, Record, ReviewTask
from labelloop.review.routing import (
    PROVENANCE_PARTIAL,
    ROUTE_AUDIT,
    STATUS_AUTO,
    STATUS_COMPLETED,
)

#: waiting documents named on the card (all are counted)
MAX_WAITING_LISTED = 50


def page_provenance(db: Database, prediction_ids: Iterable[int | None]) -> dict[int, dict[int, dict[str, Any]]]:
    """{prediction id: {page: provenance of that page}} from the routing rows and the latest
    annotation of each page's task (one query for a batch of records)."""
    ids = sorted({p for p in prediction_ids if p is not None})
    out: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    if not ids:
        return out
    stmt = (
        select(
            ReviewTask.prediction_id,
            ReviewTask.page,
            ReviewTask.route,
            ReviewTask.status,
            ReviewTask.decision,
            Annotation.id,
            Annotation.annotator,
        )
        .outerjoin(Annotation, (Annotation.review_task_id == ReviewTask.id) & Annotation.is_latest)
        .where(ReviewTask.prediction_id.in_(ids))
    )
    with db.session() as s:
        for pred_id, page, route, status, decision, ann_id, annotator in s.execute(stmt):
            entry: dict[str, Any] = {"page": page, "route": route, "status": status}
            if status == STATUS_COMPLETED:
                entry.update(
                    provenance="audited" if route == ROUTE_AUDIT else "human",
                    annotator=annotator,
                    annotation_id=ann_id,
                )
            elif status == STATUS_AUTO:
                entry["provenance"] = "auto"
                if (decision or {}).get("_uncalibrated"):
                    entry["uncalibrated"] = sorted(decision["_uncalibrated"])
            out[pred_id][page] = entry
    return out


def record_pages(
    n_pages: int, routed: dict[int, dict[str, Any]], record_provenance: str, annotator: str | None
) -> list[dict[str, Any]]:
    """The ``pages`` list of one document's provenance line. A page without a routing row (a
    record made outside the loop, e.g. imported) takes the record's provenance."""
    pages = []
    for n in range(n_pages):
        entry = dict(routed.get(n) or {"page": n, "route": None, "status": None})
        entry.setdefault("provenance", record_provenance)
        if "annotator" not in entry and entry["provenance"] != "auto":
            entry["annotator"] = annotator
        pages.append(entry)
    return pages


def waiting_documents(db: Database, spec: str) -> tuple[int, list[dict[str, Any]]]:
    """(count, first :data:`MAX_WAITING_LISTED`) documents of ``spec`` still partly reviewed:
    record id, item sha256, a source name, and which pages are final / waiting."""
    with db.session() as s:
        n = s.scalar(
            select(func.count()).select_from(Record).where(Record.spec == spec, Record.provenance == PROVENANCE_PARTIAL)
        )
        rows = s.execute(
            select(Record.id, Record.item_id, Record.prediction_id)
            .where(Record.spec == spec, Record.provenance == PROVENANCE_PARTIAL)
            .order_by(Record.id)
            .limit(MAX_WAITING_LISTED)
        ).all()
        listed = []
        for rid, item_id, pred_id in rows:
            tasks = s.execute(
                select(ReviewTask.page, ReviewTask.status).where(ReviewTask.prediction_id == pred_id)
            ).all()
            name = s.scalar(select(func.min(ItemAlias.source_uri)).where(ItemAlias.item_id == item_id))
            sha = s.scalar(select(Item.sha256).where(Item.id == item_id))
            listed.append(
                {
                    "record_id": rid,
                    "item_sha256": sha,
                    "source": name,
                    "final_pages": sorted(p for p, st in tasks if st in (STATUS_COMPLETED, STATUS_AUTO)),
                    "waiting_pages": {
                        int(p): st for p, st in sorted(tasks) if st not in (STATUS_COMPLETED, STATUS_AUTO)
                    },
                }
            )
    return int(n or 0), listed
