"""Bring reviewed work back from Label Studio: annotations, the correction log, curated records.

Incremental by the tasks' ``updated_at`` (Label Studio bumps it whenever an annotation on the task
is created or updated). Pages are read by keyset (``updated_at >= cursor``, ordered by it) rather
than by page number, so tasks that change while we page cannot shift a page and be skipped, and
as plain JSON through the SDK's HTTP client (its models cost more than Label Studio's own work);
the next page is read while this one is written. Two positions live in ``sync_state``, written in
the same transaction as the page of annotations they cover, so neither runs ahead of what was
stored: the *watermark* (the newest task ``updated_at`` read; ``labelloop status``, the sensor)
and the *cursor* (``detail.cursor``: every task stamped before it has been read), where the next
sync starts. A stamp is taken before its transaction commits, so a task stamped just before a
read can commit just after it: the cursor follows the server's clock (each page's ``Date`` header
less the request time) and stays ``sync_overlap_s`` behind the read time where that is earlier
than the newest task (:class:`Settled`). A sync long after the last edit thus leaves the cursor
past every task and the next sync with nothing new reads one empty page; a sync during review
re-reads only the last ``sync_overlap_s`` seconds, and an annotation stamped at the watermark's
very timestamp is never missed (``>=``). Re-read annotations are recognised by (Label Studio
annotation id, its ``updated_at``) and skipped.

Per task the newest annotation wins (history kept, older versions ``is_latest = False``):

* cancelled ("skip" in the UI): the task is marked ``skipped``; the record is left alone;
* a version that is malformed or breaks the spec (a box outside the image, two choices on a
  single-choice field, an unknown control, a value of the wrong type) is not repaired: it
  becomes an ``annotation_rejects`` row (task, annotation, reason; ``labelloop status``) and is
  never a record or a correction; the annotations after it sync, and the watermark moves on;
* otherwise its result is converted back to a record (original pixels), every field of the spec
  goes to ``field_corrections`` (model value and confidence, human value, changed/distance by the
  spec's comparison) and the record is upserted with provenance "human", or "audited" when the
  task was an audit sample. A document's record is "partial" while any of its pages' review is
  not final (skipped, pending): the unreviewed pages are model output, and export leaves the
  document out until every page is reviewed.

Tasks deleted in Label Studio are found by comparing the project's task ids with ours, read only
when one count (tasks with an external id) disagrees with our live rows (:func:`mark_deleted`).
"""

from __future__ import annotations

import copy
import datetime as dt
import email.utils
import json
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jsonschema.validators import validator_for
from label_studio_sdk import LabelStudio
from label_studio_sdk.data_manager import Column, Filters, Operator, Type
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from labelloop.config import Settings
from labelloop.db import (
    Annotation,
    AnnotationReject,
    Database,
    FieldCorrection,
    Item,
    Prediction,
    Record,
    ReviewTask,
    SyncState,
)
from labelloop.db.types import utcnow
from labelloop.review import convert
from labelloop.review.client import call, request
from labelloop.review.importer import media_key, task_size
from labelloop.review.projects import find_project, project_title, stored_project_id
from labelloop.review.routing import (
    PROVENANCE_PARTIAL,
    ROUTE_AUDIT,
    STATUS_COMPLETED,
    STATUS_DELETED,
    STATUS_IMPORTED,
    STATUS_SKIPPED,
    put_record,
)
from labelloop.specs import TaskSpec
from labelloop.specs.compare import compare_field

log = logging.getLogger(__name__)

#: the task and annotation fields the sync reads. ``include`` filters nested annotations too, and
#: without it every task also serialises its predictions and a dozen computed columns (4x slower)
SYNC_FIELDS = "id,updated_at,data,annotations,result,was_cancelled,completed_by,lead_time"
#: Data Manager datetime filter format (data_manager.managers.DATETIME_FORMAT)
DM_DATETIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def sync_key(project_id: int) -> str:
    return f"label_studio:project:{project_id}"


def parse_ts(value: Any) -> dt.datetime:
    """Label Studio timestamps come as ISO strings or (via the SDK models) datetimes; UTC-aware."""
    text = None if isinstance(value, dt.datetime) else str(value).replace("Z", "+00:00")
    ts = value if text is None else dt.datetime.fromisoformat(text)
    return ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)


def _dm_time(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).replace(tzinfo=None).strftime(DM_DATETIME)


def get_watermark(db: Database, key: str) -> dt.datetime | None:
    """The newest task ``updated_at`` a sync has read (what ``labelloop status`` shows)."""
    with db.session() as s:
        st = s.get(SyncState, key)
        return st.watermark if st else None


def get_cursor(db: Database, key: str, overlap_s: float) -> dt.datetime | None:
    """Where the next sync reads from: every task last updated before it has been read.

    State written before the cursor existed has only the watermark: then the cursor is the
    watermark less the overlap, which is what every sync re-read before.
    """
    with db.session() as s:
        st = s.get(SyncState, key)
        if st is None:
            return None
        cursor = (st.detail or {}).get("cursor")
        if cursor:
            return parse_ts(cursor)
        return st.watermark - dt.timedelta(seconds=overlap_s) if st.watermark else None


@dataclass
class SyncStats:
    spec: str
    project_id: int | None
    tasks_seen: int = 0
    annotations_new: int = 0
    annotations_known: int = 0
    completed: int = 0
    skipped: int = 0
    deleted: int = 0
    corrections: int = 0
    records: int = 0
    foreign_tasks: int = 0
    #: annotation versions that broke the spec (see ``annotation_rejects``)
    rejected: int = 0
    watermark: dt.datetime | None = None
    #: where the next sync reads from (see :class:`Settled`)
    cursor: dt.datetime | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("watermark", "cursor", "seconds")}
        out["watermark"] = self.watermark.isoformat() if self.watermark else None
        out["cursor"] = self.cursor.isoformat() if self.cursor else None
        out["seconds"] = round(self.seconds, 3)
        return out


# --------------------------------------------------------------------------- Label Studio reads


def _updated_since_query(cursor: dt.datetime | None, extra: Iterable[dict[str, Any]] = ()) -> str:
    items = list(extra)
    if cursor is not None:
        items.append(
            Filters.item(Column.updated_at, Operator.GREATER_OR_EQUAL, Type.Datetime, Filters.value(_dm_time(cursor)))
        )
    query: dict[str, Any] = {"ordering": ["tasks:updated_at"]}
    if items:
        query["filters"] = Filters.create(Filters.AND, items)
    return json.dumps(query)


@dataclass
class TaskPage:
    """One page of changed tasks (plain JSON), and a lower bound of when the server read them."""

    tasks: list[dict[str, Any]]
    #: the server's clock when it ran the query, at the latest: its ``Date`` header minus the
    #: request's duration (the header is written after the query ran, and rounded down);
    #: None when the server sent no usable ``Date``
    read_at: dt.datetime | None


def server_read_time(date_header: str | None, elapsed_s: float) -> dt.datetime | None:
    if not date_header:
        return None
    try:
        date = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return None
    if date.tzinfo is None:
        return None
    return date.astimezone(dt.UTC) - dt.timedelta(seconds=elapsed_s)


def _task_page(ls: LabelStudio, project_id: int, cursor: dt.datetime | None, page: int, size: int) -> TaskPage:
    t0 = time.perf_counter()
    r = request(
        ls,
        f"list tasks of project {project_id} updated since {cursor.isoformat() if cursor else 'ever'}",
        "GET",
        "api/tasks/",
        params={
            "project": project_id,
            "query": _updated_since_query(cursor),
            "fields": "all",
            "include": SYNC_FIELDS,
            "resolve_uri": "false",  # the sync reads no media URL
            "page": page,
            "page_size": size,
        },
        ok_404=True,
    )
    read_at = server_read_time(r.headers.get("date"), time.perf_counter() - t0)
    if r.status_code == 404:  # "Invalid page": past the end
        return TaskPage([], read_at)
    return TaskPage(list(r.json().get("tasks") or []), read_at)


def _count_tasks(ls: LabelStudio, project_id: int, what: str, items: list[dict[str, Any]]) -> int:
    params: dict[str, Any] = {"project": project_id, "fields": "task_only", "include": "id", "page_size": 1}
    if items:
        params["query"] = json.dumps({"filters": Filters.create(Filters.AND, items)})
    r = request(ls, what, "GET", "api/tasks/", params=params, ok_404=True)
    return int(r.json().get("total") or 0) if r.status_code == 200 else 0


def live_task_ids(ls: LabelStudio, project_id: int) -> set[int]:
    ids: set[int] = set()
    page = 1
    while True:
        r = request(
            ls,
            f"list task ids of project {project_id}",
            "GET",
            "api/tasks/",
            params={"project": project_id, "fields": "task_only", "include": "id", "page": page, "page_size": 1000},
            ok_404=True,
        )
        tasks = r.json().get("tasks") or [] if r.status_code == 200 else []
        ids.update(int(t["id"]) for t in tasks)
        if len(tasks) < 1000:
            return ids
        page += 1


def count_completed_since(ls: LabelStudio, project_id: int, since: dt.datetime | None) -> int:
    """Tasks with at least one (non-skipped) annotation, changed after ``since``."""
    items = [Filters.item(Column.total_annotations, Operator.GREATER, Type.Number, Filters.value(0))]
    if since is not None:
        items.append(Filters.item(Column.updated_at, Operator.GREATER, Type.Datetime, Filters.value(_dm_time(since))))
    return _count_tasks(ls, project_id, f"count completed tasks of project {project_id}", items)


def _project_id(db: Database, ls: LabelStudio, settings: Settings, spec: TaskSpec) -> int | None:
    """The spec's project: the id the importer stored; by title only for a project imported
    before ids were stored."""
    lss = settings.label_studio
    title = project_title(lss.project_prefix, spec)
    return stored_project_id(db, lss.url, title) or find_project(ls, title)


def count_new_completed(db: Database, ls: LabelStudio, settings: Settings, spec: TaskSpec) -> int:
    """Completed tasks of the spec's project changed after the newest one synced: what the next sync will pick up.

    A hint, not the sync's own read: a task stamped before the watermark but committed after the
    last sync read is not counted here, and is read by the next sync whatever starts it (its
    cursor, :class:`Settled`, still lies before that task)."""
    pid = _project_id(db, ls, settings, spec)
    if pid is None:
        return 0
    return count_completed_since(ls, pid, get_watermark(db, sync_key(pid)))


class _Users:
    """Annotator emails by user id, fetched once and refreshed when an unknown id shows up."""

    def __init__(self, ls: LabelStudio) -> None:
        self.ls = ls
        self.emails: dict[int, str] = {}

    def email(self, user: Any) -> str | None:
        if isinstance(user, dict):
            return user.get("email") or self.email(user.get("id"))
        if user is None:
            return None
        uid = int(user)
        if uid not in self.emails:
            self.emails.update({int(u.id): u.email or "" for u in call("list users", self.ls.users.list)})
        return self.emails.get(uid) or None


# --------------------------------------------------------------------------- applying one annotation


@dataclass
class _Page:
    """What one page of tasks needs from the curation DB, loaded in a few queries."""

    preds: dict[int, Prediction]
    items: dict[int, Item]
    records: dict[int, Record]
    #: review tasks that had synced annotations before this page
    with_history: set[int] = field(default_factory=set)
    #: correction-log rows of this page, inserted in one statement at its end (after the
    #: ``is_latest = False`` updates of older rows): an ORM object per field costs more than the
    #: rest of the page's work
    corrections: list[dict[str, Any]] = field(default_factory=list)
    _validators: dict[str, Any] = field(default_factory=dict)

    def validator(self, spec: TaskSpec) -> Any:
        if spec.name not in self._validators:
            self._validators[spec.name] = _human_schema(spec)
        return self._validators[spec.name]


def _apply_latest(s: Session, spec: TaskSpec, rt: ReviewTask, ann: Annotation, ctx: _Page, stats: SyncStats) -> None:
    """Make ``ann`` the task's outcome: status, correction log and record."""
    if ann.was_cancelled:
        rt.status = STATUS_SKIPPED
        stats.skipped += 1
        return
    pred, item = ctx.preds[rt.prediction_id], ctx.items[rt.item_id]
    size = task_size(spec, item, pred, rt.page)
    model_view = convert.task_view(spec, pred.record, rt.page) if pred.status == "ok" else {}
    human_view = ann.record if ann.record is not None else convert_annotation(spec, rt, ann.result, ctx)
    if rt.id in ctx.with_history:
        s.execute(
            update(FieldCorrection)
            .where(FieldCorrection.review_task_id == rt.id, FieldCorrection.is_latest)
            .values(is_latest=False)
        )
    confidences = pred.field_confidence or {}
    for name, f in spec.fields.items():
        mv, hv = model_view.get(name), human_view.get(name)
        changed, distance = compare_field(f, convert.comparable(f, mv), convert.comparable(f, hv))
        ctx.corrections.append(
            {
                "annotation_id": ann.id,
                "review_task_id": rt.id,
                "item_id": rt.item_id,
                "spec": spec.name,
                "field": name,
                "model": pred.model,
                "model_version": pred.model_version,
                "prompt_hash": pred.prompt_hash,
                "route": rt.route,
                "model_value": mv,
                "model_confidence": confidences.get(name) if pred.status == "ok" else 0.0,
                "human_value": hv,
                "changed": bool(changed),
                "distance": float(distance),
                "is_latest": True,
            }
        )
        stats.corrections += 1
    _upsert_human_record(s, spec, rt, ann, pred, item, human_view, size, ctx)
    rt.status = STATUS_COMPLETED
    stats.completed += 1
    stats.records += 1


def _pages_waiting(s: Session, rt: ReviewTask) -> list[int]:
    """Pages of the same prediction whose review is not final (this one counts as final)."""
    return list(
        s.scalars(
            select(ReviewTask.page).where(
                ReviewTask.prediction_id == rt.prediction_id,
                ReviewTask.id != rt.id,
                ReviewTask.status != STATUS_COMPLETED,
            )
        )
    )


def _upsert_human_record(
    s: Session,
    spec: TaskSpec,
    rt: ReviewTask,
    ann: Annotation,
    pred: Prediction,
    item: Item,
    view: dict[str, Any],
    size: convert.ImageSize | None,
    ctx: _Page,
) -> None:
    rec = ctx.records.get(rt.item_id)
    # documents are reviewed page by page: merge into what reviewers already curated
    curated = rec is not None and rec.provenance != "auto" and rec.prediction_id == pred.id
    base = rec.record if curated and rec is not None else pred.record
    defaults: dict[str, Any] = {"image_key": media_key(spec, item, pred, rt.page)}
    if size is not None:
        defaults.update(width_px=size.width, height_px=size.height)
    record = convert.merge_page(spec, base, rt.page, view, page_defaults=defaults)
    is_new = rec is None
    provenance = "audited" if rt.route == ROUTE_AUDIT else "human"
    if spec.media == "document" and _pages_waiting(s, rt):
        # the other pages are still model output: not "human", and not exportable until final
        provenance = PROVENANCE_PARTIAL
    rec = put_record(
        s,
        rec,
        item_id=rt.item_id,
        spec=spec.name,
        pred=pred,
        provenance=provenance,
        record=record,
        annotation_id=ann.id,
        annotator=ann.annotator,
    )
    if is_new:
        ctx.records[rt.item_id] = rec  # a second page of the same document merges into it


# --------------------------------------------------------------------------- one page of tasks


def _human_schema(spec: TaskSpec) -> Any:
    """The spec's schema for what a reviewer gave: every field optional (an unanswered field is
    the quality gate's business), every value that is there checked for type, enum and shape."""
    schema = copy.deepcopy(spec.json_schema)
    schema.pop("required", None)
    cls = validator_for(schema)
    return cls(schema)


def convert_annotation(spec: TaskSpec, rt: ReviewTask, result: Any, ctx: _Page) -> dict[str, Any]:
    """A Label Studio result as the task's view (original pixels), validated against the spec.

    Raises :class:`convert.AnnotationError` with the reason when the result is malformed or
    breaks the spec: nothing is repaired (see :mod:`labelloop.review.convert`).
    """
    pred, item = ctx.preds[rt.prediction_id], ctx.items[rt.item_id]
    size = task_size(spec, item, pred, rt.page)
    model_view = convert.task_view(spec, pred.record, rt.page) if pred.status == "ok" else {}
    try:
        view = convert.from_result(spec, result if result is not None else [], size, model_view)
    except convert.AnnotationError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # malformed in a way not foreseen
        raise convert.AnnotationError(f"malformed result: {type(e).__name__}: {e}") from None
    if spec.media == "image":
        given = {k: v for k, v in view.items() if v is not None}
        errors = sorted(ctx.validator(spec).iter_errors(given), key=lambda e: list(e.absolute_path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise convert.AnnotationError(f"breaks the spec's schema: {where}: {errors[0].message}{more}")
    return view


def _new_annotations(
    s: Session,
    spec: TaskSpec,
    tasks: list[Any],
    rts: dict[str, ReviewTask],
    users: _Users,
    stats: SyncStats,
    ctx: _Page,
    project_id: int,
) -> dict[int, list[Annotation]]:
    """Annotation rows for the versions not synced before, by review task id (added, unflushed).

    Each version is converted and validated on its own, before it becomes a row: one that
    breaks the spec becomes an ``annotation_rejects`` row with the reason instead, and the
    versions after it go on. A version seen before (synced or rejected) is skipped.
    """
    ann_ids = [int(a["id"]) for t in tasks for a in (t.get("annotations") or [])]
    known = {
        (a_id, ts)
        for model in (Annotation, AnnotationReject)
        for a_id, ts in s.execute(
            select(model.ls_annotation_id, model.ls_updated_at).where(model.ls_annotation_id.in_(ann_ids))
        )
    }
    new: dict[int, list[Annotation]] = {}
    for t in tasks:
        stats.tasks_seen += 1
        rt = rts.get(str((t.get("data") or {}).get("external_id")))
        if rt is None:
            stats.foreign_tasks += 1
            continue
        for a in t.get("annotations") or []:
            key = (int(a["id"]), parse_ts(a["updated_at"]))
            if key in known:
                stats.annotations_known += 1
                continue
            known.add(key)
            cancelled = bool(a.get("was_cancelled"))
            raw = a.get("result")
            record = None
            if not cancelled:
                try:
                    record = convert_annotation(spec, rt, raw, ctx)
                except convert.AnnotationError as e:
                    reason = f"task {t['id']}, annotation {key[0]}: {e}"
                    log.warning("%s: rejected %s", spec.name, reason)
                    s.add(
                        AnnotationReject(
                            spec=spec.name,
                            ls_project_id=project_id,
                            ls_task_id=int(t["id"]),
                            ls_annotation_id=key[0],
                            ls_updated_at=key[1],
                            review_task_id=rt.id,
                            annotator=users.email(a.get("completed_by")),
                            reason=str(e),
                            result=raw if isinstance(raw, list) else [raw],
                        )
                    )
                    stats.rejected += 1
                    continue
            row = Annotation(
                review_task_id=rt.id,
                ls_annotation_id=key[0],
                ls_task_id=int(t["id"]),
                ls_updated_at=key[1],
                is_latest=False,
                was_cancelled=cancelled,
                annotator=users.email(a.get("completed_by")),
                lead_time_s=a.get("lead_time"),
                result=raw or [],
                record=record,
            )
            s.add(row)
            new.setdefault(rt.id, []).append(row)
            stats.annotations_new += 1
    return new


def _load_page(s: Session, spec: TaskSpec, rts: list[ReviewTask]) -> _Page:
    pred_ids = {rt.prediction_id for rt in rts}
    item_ids = {rt.item_id for rt in rts}
    return _Page(
        preds={p.id: p for p in s.scalars(select(Prediction).where(Prediction.id.in_(pred_ids)))},
        items={i.id: i for i in s.scalars(select(Item).where(Item.id.in_(item_ids)))},
        records={
            r.item_id: r
            for r in s.scalars(select(Record).where(Record.spec == spec.name, Record.item_id.in_(item_ids)))
        },
    )


def _history(s: Session, new: dict[int, list[Annotation]]) -> set[int]:
    """Review tasks that had synced annotations before this page."""
    new_ids = [a.id for rows in new.values() for a in rows]
    return set(
        s.scalars(
            select(Annotation.review_task_id)
            .where(Annotation.review_task_id.in_(list(new)), Annotation.id.not_in(new_ids))
            .distinct()
        )
    )


def _sync_page(s: Session, spec: TaskSpec, tasks: list[Any], users: _Users, stats: SyncStats, project_id: int) -> None:
    ext_ids = [str((t.get("data") or {}).get("external_id")) for t in tasks]
    rts = {rt.external_id: rt for rt in s.scalars(select(ReviewTask).where(ReviewTask.external_id.in_(ext_ids)))}
    if not rts:
        stats.tasks_seen += len(tasks)
        stats.foreign_tasks += len(tasks)
        return
    ctx = _load_page(s, spec, list(rts.values()))
    new = _new_annotations(s, spec, tasks, rts, users, stats, ctx, project_id)
    if not new:
        return
    s.flush()  # annotation ids, for the correction log
    ctx.with_history = _history(s, new)
    changed = [rt for rt in rts.values() if rt.id in new]
    for rt in changed:
        if rt.id in ctx.with_history:
            history = list(s.scalars(select(Annotation).where(Annotation.review_task_id == rt.id)))
        else:
            history = new[rt.id]
        history.sort(key=lambda a: (a.ls_updated_at, a.ls_annotation_id), reverse=True)
        latest = history[0]
        for row in history:
            row.is_latest = row is latest
        if any(latest is row for row in new[rt.id]):
            _apply_latest(s, spec, rt, latest, ctx, stats)
    if ctx.corrections:
        s.execute(insert(FieldCorrection), ctx.corrections)


#: the cursor before the first sync: older than any task
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Settled:
    """Tracks, page by page, up to where every task has certainly been read: the next cursor.

    A task's ``updated_at`` is stamped by the server before its transaction commits, so a task
    stamped just before a page was read may commit just after and be missed; ``overlap_s`` bounds
    that delay (``label_studio.sync_overlap_s``). Every task stamped at least ``overlap_s`` before
    a page was read and falling in that page's range was in it. So after a page that started at
    cursor ``c`` and was read at server time ``R``, what may be missing starts at
    ``max(c, R - overlap_s)``, and only if that is below where the next page starts; the cursor
    of the next sync is the smallest such start (or the start of the last page, moved up to its
    read time less the overlap). A sync long after the last edit therefore leaves the cursor
    *past* the newest task and the next sync reads nothing; a sync that runs while reviewers work
    re-reads only the last ``overlap_s`` seconds before it (deduplicated by annotation id and
    ``updated_at``). Without the server's clock (no ``Date`` header) it falls back to re-reading
    ``overlap_s`` before the newest task read, as before.
    """

    def __init__(self, start: dt.datetime | None, overlap_s: float) -> None:
        self.start = start or _EPOCH
        self.overlap = dt.timedelta(seconds=overlap_s)
        self.gap: dt.datetime | None = None  # smallest start of what may be missing so far
        self.clock = True

    def _missing_from(self, cursor: dt.datetime | None, read_at: dt.datetime | None) -> dt.datetime:
        c = cursor or _EPOCH
        if read_at is None:
            self.clock = False
            return c
        return max(c, read_at - self.overlap)

    def page(self, cursor: dt.datetime | None, read_at: dt.datetime | None, nxt: dt.datetime) -> None:
        """A full page that covered ``[cursor, nxt)``; ``nxt == cursor`` when it was all one
        timestamp and the next page steps by page number (then all of it counts as unsure)."""
        m = self._missing_from(cursor, read_at)
        if nxt == cursor:
            m = cursor or _EPOCH
        if m < nxt or nxt == cursor:
            self.gap = m if self.gap is None else min(self.gap, m)

    def resume_point(self, nxt: dt.datetime) -> dt.datetime:
        """The cursor to store after a full page, mid-run: nothing from ``nxt`` on is read yet."""
        return nxt if self.gap is None else min(self.gap, nxt)

    def final(
        self, cursor: dt.datetime | None, read_at: dt.datetime | None, watermark: dt.datetime | None
    ) -> dt.datetime | None:
        """After the last (short) page: the cursor of the next sync."""
        m = self._missing_from(cursor, read_at)
        if not self.clock:  # no server clock: re-read the overlap before the newest task, as before
            back = watermark - self.overlap if watermark is not None else _EPOCH
            out = max(self.start, back)
        else:
            out = m if self.gap is None else min(self.gap, m)
        return None if out == _EPOCH else out


def _advance(s: Session, key: str, project_id: int, watermark: dt.datetime | None, cursor: dt.datetime | None) -> None:
    st = s.get(SyncState, key)
    if st is None:
        st = SyncState(key=key, watermark=None, detail={})
        s.add(st)
    if watermark is not None and (st.watermark is None or watermark > st.watermark):
        st.watermark = watermark
    detail = {"project_id": project_id, "last_run": utcnow().isoformat()}
    old = (st.detail or {}).get("cursor")
    if cursor is not None and (old is None or cursor >= parse_ts(old)):
        detail["cursor"] = cursor.isoformat()
    elif old is not None:
        detail["cursor"] = old
    st.detail = detail
    st.updated_at = utcnow()


# --------------------------------------------------------------------------- the run


def mark_deleted(db: Database, ls: LabelStudio, project_id: int) -> int:
    """Review tasks whose Label Studio task no longer exists become ``deleted``.

    First one count: the project's tasks carrying an external id against our live rows in it.
    Equal means none of ours is gone (unless, between two syncs, one was deleted *and* a copy of
    another of ours made in the same project) and nothing more is read; otherwise every task id
    of the project is read and compared.
    """
    live_states = (STATUS_IMPORTED, STATUS_COMPLETED, STATUS_SKIPPED)
    mine = (ReviewTask.ls_project_id == project_id, ReviewTask.status.in_(live_states))
    with db.session() as s:
        ours = int(s.scalar(select(func.count(ReviewTask.id)).where(*mine)) or 0)
    there = _count_tasks(
        ls,
        project_id,
        f"count tasks with an external id in project {project_id}",
        [Filters.item(Column.data("external_id"), Operator.EMPTY, Type.String, False)],
    )
    if there == ours:
        return 0
    live = live_task_ids(ls, project_id)
    with db.session() as s:
        gone = [rt for rt in s.scalars(select(ReviewTask).where(*mine)) if rt.ls_task_id not in live]
        for rt in gone:
            rt.status = STATUS_DELETED
        s.commit()
    return len(gone)


def sync_project(
    db: Database,
    ls: LabelStudio,
    settings: Settings,
    spec: TaskSpec,
    *,
    project_id: int | None = None,
    detect_deleted: bool = True,
) -> SyncStats:
    """Sync one spec's project (found by title unless ``project_id`` is given)."""
    t0 = time.perf_counter()
    lss = settings.label_studio
    pid = project_id or _project_id(db, ls, settings, spec)
    stats = SyncStats(spec=spec.name, project_id=pid)
    if pid is None:
        return stats
    key = sync_key(pid)
    watermark = get_watermark(db, key)
    cursor = get_cursor(db, key, lss.sync_overlap_s)
    settled = Settled(cursor, lss.sync_overlap_s)
    users = _Users(ls)
    seen: set[tuple[int, dt.datetime]] = set()
    page, size = 1, lss.sync_page_size
    # the next page is read while this one is written to the curation DB (Label Studio
    # serialises, we convert and commit: two processes at once); pages are still applied in order
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-sync") as pool:
        pending = pool.submit(_task_page, ls, pid, cursor, page, size)
        while True:
            read = pending.result()
            tasks = read.tasks
            stamps = [(int(t["id"]), parse_ts(t["updated_at"])) for t in tasks]
            newest = max((ts for _, ts in stamps), default=None)
            if newest is not None and (watermark is None or newest > watermark):
                watermark = newest
            full = len(tasks) >= size
            nxt_cursor, nxt_page = cursor, page
            if full:
                last = stamps[-1][1]
                if cursor is None or last > cursor:
                    nxt_cursor, nxt_page = last, 1
                else:  # a full page of identical timestamps: step through them by page number
                    nxt_page = page + 1
                settled.page(cursor, read.read_at, last)
                pending = pool.submit(_task_page, ls, pid, nxt_cursor, nxt_page, size)
                resume: dt.datetime | None = settled.resume_point(last)
            else:
                resume = settled.final(cursor, read.read_at, watermark)
            fresh = [t for t, st in zip(tasks, stamps, strict=True) if st not in seen]
            with db.session() as s:
                if fresh:
                    _sync_page(s, spec, fresh, users, stats, pid)
                _advance(s, key, pid, watermark, resume)
                s.commit()  # the watermark and cursor move only together with what they cover
            seen.update(stamps)
            if not full:
                break
            cursor, page = nxt_cursor, nxt_page
    if detect_deleted:
        stats.deleted = mark_deleted(db, ls, pid)
    stats.watermark = watermark
    stats.cursor = get_cursor(db, key, lss.sync_overlap_s)
    stats.seconds = time.perf_counter() - t0
    log.info("sync %s: %s", spec.name, stats.as_dict())
    return stats
