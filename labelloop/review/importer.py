"""Import pending review tasks into Label Studio: chunked, with predictions, never twice.

One import per spec at a time, everywhere: :func:`import_pending` holds a lock in the curation
DB (:mod:`labelloop.db.locks`) for the whole run, and every Airflow task that imports runs in
the ``labelloop_label_studio`` pool. The project is the one whose id is stored in ``ls_projects``
(see :mod:`.projects`), never one found by title twice.

Label Studio has no task upsert (re-importing duplicates) and the SDK retries POSTs on 5xx and
timeouts-adjacent errors, which can import a chunk twice. So, per chunk of
``settings.label_studio.import_chunk`` tasks:

1. the chunk's ``data.external_id``s are looked up in the project (Data Manager ``in_list``
   filter); those already there are only recorded, not imported again -- this is what makes a
   rerun after a crash *between* Label Studio accepting a chunk and our commit safe;
2. the rest are imported in one POST with the SDK's retries off (``max_retries=0``);
3. the Label Studio task ids are stored and the rows marked imported in one commit.

Each task carries its prediction in Label Studio's result format (boxes in percent of the image,
per-region ``score``), the prediction ``score`` is the item confidence (the project's uncertainty
sampling serves the lowest first) and ``model_version`` is the prediction's, which the project is
pointed at once the first chunk holding that version is in (Label Studio accepts only versions
it has predictions of).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from label_studio_sdk import LabelStudio
from label_studio_sdk.data_manager import Column, Filters, Operator, Type
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from labelloop.config import Settings
from labelloop.db import Database, Item, Prediction, ReviewTask
from labelloop.db.locks import exclusive
from labelloop.prelabel.ensemble import hint_text
from labelloop.review import convert
from labelloop.review.client import LabelStudioError, call
from labelloop.review.media import MediaLinker
from labelloop.review.projects import control_labels, extend_labels, project_for, set_model_version
from labelloop.review.routing import STATUS_IMPORTED, STATUS_PENDING
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore

log = logging.getLogger(__name__)

#: external ids per Data Manager lookup (the filter goes into a GET query string)
LOOKUP_CHUNK = 500


@dataclass
class ImportStats:
    spec: str
    project_id: int
    model_version: str | None = None
    pending: int = 0
    imported: int = 0
    already_there: int = 0
    chunks: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "project_id": self.project_id,
            "model_version": self.model_version,
            "pending": self.pending,
            "imported": self.imported,
            "already_there": self.already_there,
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------- task payloads


def media_key(spec: TaskSpec, item: Item, pred: Prediction, page: int) -> str:
    """Object key of the image a task shows: the raw image, or a document page's render."""
    if spec.media != "document":
        return item.storage_key
    for p in (pred.record or {}).get("pages") or []:
        if p.get("page") == page and p.get("image_key"):
            return str(p["image_key"])
    return f"pages/{item.sha256}/{page}.png"


def task_size(spec: TaskSpec, item: Item, pred: Prediction, page: int) -> convert.ImageSize | None:
    if spec.media == "document":
        return convert.page_size(spec, pred.record, page)
    if spec.media == "video" and item.width and item.height and (item.meta or {}).get("fps"):
        return convert.ImageSize(item.width, item.height, fps=float(item.meta["fps"]))
    if item.width and item.height:
        return convert.ImageSize(item.width, item.height)
    return None


def field_scores(spec: TaskSpec, pred: Prediction) -> dict[str, Any]:
    """Per-region scores where the backend kept them (OCR line scores, VLM list elements),
    else the field's confidence; blocks carry their own score."""
    conf = pred.field_confidence or {}
    detail = (pred.confidence_detail or {}).get("fields") or {}
    out: dict[str, Any] = {}
    for name, f in spec.fields.items():
        d = detail.get(name) if isinstance(detail.get(name), dict) else {}
        if f.kind == "blocks":
            out[name] = None
        elif f.kind in ("regions", "objects") and isinstance(d.get("scores"), list):
            out[name] = d["scores"]
        elif f.kind in ("regions", "objects", "events") and isinstance(d.get("elements"), list):
            out[name] = [e.get("joint") for e in d["elements"]]
        else:
            out[name] = conf.get(name)
    return out


def original_name(item: Item) -> str:
    """The file name the item first arrived under (content is stored by hash; people know names)."""
    if not item.aliases:
        return item.sha256[:12]
    first = min(item.aliases, key=lambda a: (a.first_seen_at, a.id))
    return first.source_uri.rstrip("/").rsplit("/", 1)[-1]


def unsure_fields(spec: TaskSpec, rt: ReviewTask) -> list[str]:
    """The fields the routing found below their threshold, least confident first.

    An audit sample passed every field, and an empty column would tell the reviewer it is one;
    so when no field failed, the least confident field is named instead, as for any other task
    whose weakest field is worth a look. Audits stay blind.
    """
    evidence = {k: v for k, v in (rt.decision or {}).items() if k in spec.fields and isinstance(v, dict)}

    def conf(name: str) -> float:
        c = evidence[name].get("confidence")
        return -1.0 if c is None else float(c)

    failing = sorted((n for n, e in evidence.items() if not e.get("pass")), key=conf)
    if failing:
        return failing
    return sorted(evidence, key=conf)[:1]


def build_task(
    spec: TaskSpec, rt: ReviewTask, pred: Prediction, item: Item, media: MediaLinker
) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """The Label Studio task for one review task, and the object labels its prediction uses."""
    key = media_key(spec, item, pred, rt.page)
    data: dict[str, Any] = {
        "image": media.url(key),
        "external_id": rt.external_id,
        "item": item.sha256,
        "file_name": original_name(item),
        "unsure": ", ".join(unsure_fields(spec, rt)),
    }
    if spec.media == "document":
        data["page"] = rt.page
    if pred.status != "ok":  # only with routing.review_failures: say why the task is empty
        data["labelloop_note"] = f"No pre-annotation: {rt.reason}"
    # where two backends disagreed (labelloop.prelabel.ensemble), the other candidate, shown beside
    # the pre-filled form; always present so a label config's $hints never dangles
    data["hints"] = hint_text(pred.confidence_detail) if pred.status == "ok" else ""
    if spec.media == "video":  # the <Video> tag reads $video, and counts timeline frames at $fps
        data = {"video": data.pop("image"), "fps": (item.meta or {}).get("fps"), **data}
    view = convert.task_view(spec, pred.record, rt.page) if pred.status == "ok" else {}
    size = task_size(spec, item, pred, rt.page)
    result = convert.to_result(spec, view, size, field_scores(spec, pred)) if view and size else []
    task = {
        "data": data,
        # no route here: task JSON is open to every annotator, and audits must stay blind
        "meta": {"prediction_id": pred.id, "item_id": item.id, "page": rt.page},
        # a failed prediction (routed only with routing.review_failures) gets an empty one:
        # score 0 puts it first in the queue
        "predictions": [
            {
                "model_version": pred.model_version,
                "score": float(pred.confidence or 0.0) if pred.status == "ok" else 0.0,
                "result": result,
            }
        ],
    }
    return task, convert.object_labels(spec, view)


# --------------------------------------------------------------------------- Label Studio side


def existing_external_ids(ls: LabelStudio, project_id: int, ext_ids: Sequence[str]) -> dict[str, int]:
    """{external_id: task id} of the given ids already in the project."""
    found: dict[str, int] = {}
    for i in range(0, len(ext_ids), LOOKUP_CHUNK):
        part = list(ext_ids[i : i + LOOKUP_CHUNK])
        flt = Filters.item(Column.data("external_id"), Operator.IN_LIST, Type.String, part)
        query = json.dumps({"filters": Filters.create(Filters.AND, [flt])})
        pager = call(
            "look up external ids",
            ls.tasks.list,
            project=project_id,
            query=query,
            fields="task_only",
            include="id,data",
            page_size=1000,
        )
        for t in pager:
            ext = (t.data or {}).get("external_id")
            if ext is not None:
                found[str(ext)] = int(t.id)
    return found


def post_tasks(ls: LabelStudio, project_id: int, tasks: list[dict[str, Any]], timeout: float) -> list[int]:
    """One bulk import with retries off; the task ids in the order of ``tasks``."""
    r = call(
        f"import {len(tasks)} tasks into project {project_id}",
        ls.projects.import_tasks,
        id=project_id,
        request=tasks,
        return_task_ids=True,
        request_options={"max_retries": 0, "timeout": timeout},
    )
    ids = [int(i) for i in (r.task_ids or [])]
    if len(ids) != len(tasks):
        raise LabelStudioError(f"imported {len(tasks)} tasks but Label Studio returned {len(ids)} task ids")
    return ids


# --------------------------------------------------------------------------- the run


class _LabelKeeper:
    """Extends the project's labels only when a chunk brings a label not seen before."""

    def __init__(self, ls: LabelStudio, project_id: int, spec: TaskSpec, label_config: str) -> None:
        self.ls, self.project_id = ls, project_id
        self.known = {
            f.ls.from_name: set(control_labels(label_config, f.ls.from_name))
            for f in spec.fields.values()
            if f.kind == "objects"
        }

    def ensure(self, wanted: dict[str, set[str]]) -> None:
        new = {c: labels - self.known.get(c, set()) for c, labels in wanted.items()}
        if any(new.values()):
            extend_labels(self.ls, self.project_id, new)
            for c, labels in new.items():
                self.known.setdefault(c, set()).update(labels)


def _import_chunk(
    ls: LabelStudio,
    pid: int,
    spec: TaskSpec,
    rows: list[tuple[ReviewTask, Prediction, Item]],
    media: MediaLinker,
    labels: _LabelKeeper,
    timeout: float,
) -> tuple[int, int]:
    """Import one chunk and set its rows' Label Studio ids (the caller commits);
    returns (imported, found already there)."""
    media.prepare([media_key(spec, it, p, rt.page) for rt, p, it in rows])
    tasks: dict[str, dict[str, Any]] = {}
    for rt, pred, item in rows:
        task, wanted = build_task(spec, rt, pred, item, media)
        labels.ensure(wanted)
        tasks[rt.external_id] = task
    ids = existing_external_ids(ls, pid, list(tasks))
    there = len(ids)
    new = [ext for ext in tasks if ext not in ids]
    if new:
        ids.update(zip(new, post_tasks(ls, pid, [tasks[e] for e in new], timeout), strict=True))
    for rt, _pred, _item in rows:
        rt.ls_project_id = pid
        rt.ls_task_id = ids[rt.external_id]
        rt.status = STATUS_IMPORTED
    return len(new), there


def _pending(spec: TaskSpec, after_id: int, limit: int) -> Any:
    return (
        select(ReviewTask, Prediction, Item)
        .join(Prediction, Prediction.id == ReviewTask.prediction_id)
        .join(Item, Item.id == ReviewTask.item_id)
        .where(ReviewTask.spec == spec.name, ReviewTask.status == STATUS_PENDING, ReviewTask.id > after_id)
        .order_by(ReviewTask.id)
        .limit(limit)
        .options(selectinload(Item.aliases))  # original_name() for a chunk in one query
    )


def newest_pending_model_version(db: Database, spec: TaskSpec) -> str | None:
    with db.session() as s:
        return s.scalar(
            select(Prediction.model_version)
            .join(ReviewTask, ReviewTask.prediction_id == Prediction.id)
            .where(ReviewTask.spec == spec.name, ReviewTask.status == STATUS_PENDING)
            .order_by(Prediction.created_at.desc(), Prediction.id.desc())
            .limit(1)
        )


def import_pending(
    db: Database,
    ls: LabelStudio,
    settings: Settings,
    spec: TaskSpec,
    label_config: str,
    store: ObjectStore,
    *,
    limit: int | None = None,
    chunk: int | None = None,
) -> ImportStats:
    """Import the spec's pending review tasks (at most ``limit``); safe to rerun at any point,
    and to start twice: the second run waits for the import lock of the spec (a database lock,
    so the CLI and every Airflow DAG share it), then finds nothing left to import."""
    with exclusive(db, f"label_studio_import:{spec.name}", timeout_s=settings.label_studio.import_lock_timeout_s):
        return _import_pending(db, ls, settings, spec, label_config, store, limit=limit, chunk=chunk)


def _import_pending(
    db: Database,
    ls: LabelStudio,
    settings: Settings,
    spec: TaskSpec,
    label_config: str,
    store: ObjectStore,
    *,
    limit: int | None,
    chunk: int | None,
) -> ImportStats:
    t0 = time.perf_counter()
    lss = settings.label_studio
    chunk = chunk or lss.import_chunk
    pid = project_for(db, ls, lss.url, lss.project_prefix, spec, label_config)
    stats = ImportStats(spec=spec.name, project_id=pid)
    stats.model_version = newest_pending_model_version(db, spec)
    if stats.model_version is None:
        stats.seconds = time.perf_counter() - t0
        return stats
    media = MediaLinker(settings, store, ls, pid)
    labels = _LabelKeeper(ls, pid, spec, call("get project", ls.projects.get, id=pid).label_config or "")
    last_id = 0
    version_set = False
    while limit is None or stats.pending < limit:
        size = chunk if limit is None else min(chunk, limit - stats.pending)
        with db.session() as s:
            rows = [tuple(r) for r in s.execute(_pending(spec, last_id, size))]
            if not rows:
                break
            last_id = rows[-1][0].id
            stats.pending += len(rows)
            imported, there = _import_chunk(ls, pid, spec, rows, media, labels, lss.import_timeout_s)
            stats.imported += imported
            stats.already_there += there
            s.commit()
            stats.chunks += 1
        if not version_set and any(p.model_version == stats.model_version for _rt, p, _it in rows):
            # only now: Label Studio accepts a version once the project has predictions of it
            set_model_version(ls, pid, stats.model_version)
            version_set = True
        log.info("%s: chunk %s: %s imported, %s already there", spec.name, stats.chunks, imported, there)
    stats.seconds = time.perf_counter() - t0
    return stats
