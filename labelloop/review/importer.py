"""Import pending review tasks into Label Studio: chunked, with predictions, never twice.

One import per spec at a time, everywhere: :func:`import_pending` holds a lock in the curation
DB (:mod:`labelloop.db.locks`) for the whole run, and every Airflow task that imports runs in
the ``labelloop_label_studio`` pool. The project is the one whose id is stored in ``ls_projects``
(see :mod:`.projects`), never one found by title twice.

Label Studio has no task upsert (re-importing duplicates) and the SDK retries POSTs on 5xx and
timeouts-adjacent errors, which can import a chunk twice. So:

1. once per run, the project's tasks with an id above the highest Label Studio id we ever
   stored for it are read (:func:`tasks_after`): the only place a task posted by a crashed run
   but never committed here can be. In a run after a clean one this is one request answering
   nothing; a pending row found there is only recorded, not imported again;
2. per chunk of ``settings.label_studio.import_chunk`` tasks (1,000 by default: Label Studio's
   per-request cost is small next to its per-task cost, measured flat from 250 to 2,000, and
   a chunk of 1,000 vehicle tasks is under 1 MB of the 250 MB request limit), one POST with
   retries off, then the task ids stored and the rows marked imported in one commit;
3. while a chunk is in Label Studio's hands, the next one is read and built here, so the two
   processes work at the same time; a chunk is posted only after the previous one committed.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from label_studio_sdk import LabelStudio
from label_studio_sdk.data_manager import Column, Filters, Operator, Type
from sqlalchemy import func, select, update

from labelloop.config import Settings
from labelloop.db import Database, Item, ItemAlias, Prediction, ReviewTask
from labelloop.db.locks import exclusive
from labelloop.db.types import utcnow
from labelloop.prelabel.ensemble import hint_text
from labelloop.review import convert
from labelloop.review.client import LabelStudioError, call, request
from labelloop.review.media import MediaLinker
from labelloop.review.projects import control_labels, extend_labels, project_for, set_model_version
from labelloop.review.routing import STATUS_IMPORTED, STATUS_PENDING
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class ImportStats:
    spec: str
    project_id: int
    model_version: str | None = None
    pending: int = 0
    imported: int = 0
    already_there: int = 0
    chunks: int = 0
    #: requests spent finding tasks already in Label Studio (one per run)
    lookups: int = 0
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
            "lookups": self.lookups,
            "seconds": round(self.seconds, 3),
        }


#: size of a run's first chunk; the next ones double up to ``label_studio.import_chunk``
FIRST_CHUNK = 125


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


def _name_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def original_name(item: Item) -> str:
    """The file name the item first arrived under (content is stored by hash; people know names)."""
    if not item.aliases:
        return item.sha256[:12]
    first = min(item.aliases, key=lambda a: (a.first_seen_at, a.id))
    return _name_of(first.source_uri)


def original_names(s: Any, items: list[Item]) -> dict[int, str]:
    """:func:`original_name` of many items in one query on ``item_aliases`` (a chunk's worth;
    cheaper than loading the relationship into every item)."""
    first: dict[int, tuple[Any, int, str]] = {}
    ids = [it.id for it in items]
    for item_id, alias_id, seen, uri in s.execute(
        select(ItemAlias.item_id, ItemAlias.id, ItemAlias.first_seen_at, ItemAlias.source_uri).where(
            ItemAlias.item_id.in_(ids)
        )
    ):
        if item_id not in first or (seen, alias_id) < first[item_id][:2]:
            first[item_id] = (seen, alias_id, uri)
    return {it.id: _name_of(first[it.id][2]) if it.id in first else it.sha256[:12] for it in items}


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
    spec: TaskSpec,
    rt: ReviewTask,
    pred: Prediction,
    item: Item,
    media: MediaLinker,
    *,
    file_name: str | None = None,
) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """The Label Studio task for one review task, and the object labels its prediction uses
    (``file_name``: the item's :func:`original_name`, when the caller has it already)."""
    key = media_key(spec, item, pred, rt.page)
    data: dict[str, Any] = {
        "image": media.url(key),
        "external_id": rt.external_id,
        "item": item.sha256,
        "file_name": file_name if file_name is not None else original_name(item),
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


def _task_query(items: list[dict[str, Any]]) -> str:
    return json.dumps({"filters": Filters.create(Filters.AND, items)})


def tasks_after(ls: LabelStudio, project_id: int, after_id: int | None) -> dict[str, int]:
    """{external_id: task id} of the project's tasks with an id above ``after_id`` (all when None).

    Label Studio's task ids only grow (an auto-increment key), and under the import lock our
    chunks are posted one after another, each committed before the next is posted. So a task a
    crashed run left behind (posted, never committed here) has an id above every id we ever
    stored for the project: this one paged read finds all of them, and in a run that follows a
    clean one it is a single request answering nothing.
    """
    items = []
    if after_id is not None:
        items.append(Filters.item(Column.id, Operator.GREATER, Type.Number, Filters.value(after_id)))
    params: dict[str, Any] = {"project": project_id, "fields": "task_only", "include": "id,data", "page_size": 1000}
    if items:
        params["query"] = _task_query(items)
    found: dict[str, int] = {}
    page = 1
    while True:
        r = request(
            ls,
            f"look up tasks of project {project_id} after task {after_id}",
            "GET",
            "api/tasks/",
            params={**params, "page": page},
            ok_404=True,
        )
        if r.status_code == 404:  # "Invalid page": past the end
            break
        tasks = r.json().get("tasks") or []
        for t in tasks:
            ext = (t.get("data") or {}).get("external_id")
            if ext is not None:
                found[str(ext)] = int(t["id"])
        if len(tasks) < params["page_size"]:
            break
        page += 1
    return found


def post_tasks(ls: LabelStudio, project_id: int, body: bytes, count: int, timeout: float) -> list[int]:
    """One bulk import of ``count`` tasks (``body``: their JSON) with retries off: the SDK
    would retry a POST on a 5xx and import the chunk twice. The task ids in input order."""
    r = request(
        ls,
        f"import {count} tasks into project {project_id}",
        "POST",
        f"api/projects/{project_id}/import",
        params={"return_task_ids": "true"},
        content=body,
        timeout=timeout,
        retries=0,
    )
    ids = [int(i) for i in (r.json().get("task_ids") or [])]
    if len(ids) != count:
        raise LabelStudioError(
            f"import {count} tasks into project {project_id}: Label Studio returned {len(ids)} task ids"
        )
    return ids


def request_bodies(tasks: list[dict[str, Any]], max_bytes: int) -> list[tuple[bytes, int]]:
    """The tasks as JSON array bodies of at most ``max_bytes`` each (a single task larger than
    that goes alone, and Label Studio says whether it takes it); (body, task count) pairs."""
    parts: list[tuple[bytes, int]] = []
    current: list[bytes] = []
    size = 2
    for t in tasks:
        one = json.dumps(t).encode()
        if current and size + len(one) + 1 > max_bytes:
            parts.append((b"[" + b",".join(current) + b"]", len(current)))
            current, size = [], 2
        current.append(one)
        size += len(one) + 1
    if current:
        parts.append((b"[" + b",".join(current) + b"]", len(current)))
    return parts


def _post_parts(ls: LabelStudio, project_id: int, parts: list[tuple[bytes, int]], timeout: float) -> list[int]:
    ids: list[int] = []
    for body, count in parts:
        ids += post_tasks(ls, project_id, body, count, timeout)
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

    def needs(self, wanted: dict[str, set[str]]) -> bool:
        return any(labels - self.known.get(c, set()) for c, labels in wanted.items())

    def ensure(self, wanted: dict[str, set[str]]) -> None:
        new = {c: labels - self.known.get(c, set()) for c, labels in wanted.items()}
        if any(new.values()):
            extend_labels(self.ls, self.project_id, new)
            for c, labels in new.items():
                self.known.setdefault(c, set()).update(labels)


@dataclass
class _Chunk:
    """One chunk, built while the previous one is in Label Studio's hands."""

    #: (review task id, external id, model version) per row, in id order
    rows: list[tuple[int, str, str | None]]
    tasks: dict[str, dict[str, Any]]
    wanted: dict[str, set[str]]
    keys: list[str]
    new: list[str] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    #: the JSON bodies of ``new`` (see :func:`request_bodies`)
    parts: list[tuple[bytes, int]] = field(default_factory=list)


def _build_chunk(s: Any, spec: TaskSpec, rows: list[tuple[ReviewTask, Prediction, Item]], media: MediaLinker) -> _Chunk:
    chunk = _Chunk(rows=[], tasks={}, wanted={}, keys=[])
    names = original_names(s, [item for _rt, _p, item in rows])
    for rt, pred, item in rows:
        task, wanted = build_task(spec, rt, pred, item, media, file_name=names[item.id])
        chunk.tasks[rt.external_id] = task
        chunk.rows.append((rt.id, rt.external_id, pred.model_version))
        chunk.keys.append(media_key(spec, item, pred, rt.page))
        for control, labels in wanted.items():
            chunk.wanted.setdefault(control, set()).update(labels)
    return chunk


def _pending(spec: TaskSpec, after_id: int, limit: int) -> Any:
    return (
        select(ReviewTask, Prediction, Item)
        .join(Prediction, Prediction.id == ReviewTask.prediction_id)
        .join(Item, Item.id == ReviewTask.item_id)
        .where(ReviewTask.spec == spec.name, ReviewTask.status == STATUS_PENDING, ReviewTask.id > after_id)
        .order_by(ReviewTask.id)
        .limit(limit)
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


def newest_stored_task_id(db: Database, project_id: int) -> int | None:
    """The highest Label Studio task id we ever recorded for the project (see :func:`tasks_after`)."""
    with db.session() as s:
        return s.scalar(select(func.max(ReviewTask.ls_task_id)).where(ReviewTask.ls_project_id == project_id))


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


def _commit_chunk(db: Database, pid: int, chunk: _Chunk) -> None:
    """Store the chunk's Label Studio ids and mark its rows imported, in one transaction."""
    now = utcnow()
    with db.session() as s:
        s.execute(
            update(ReviewTask),
            [
                {
                    "id": rt_id,
                    "ls_project_id": pid,
                    "ls_task_id": chunk.ids[ext],
                    "status": STATUS_IMPORTED,
                    "updated_at": now,
                }
                for rt_id, ext, _mv in chunk.rows
            ],
        )
        s.commit()


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
    size_max = chunk or lss.import_chunk
    pid = project_for(db, ls, lss.url, lss.project_prefix, spec, label_config)
    stats = ImportStats(spec=spec.name, project_id=pid)
    stats.model_version = newest_pending_model_version(db, spec)
    if stats.model_version is None:
        stats.seconds = time.perf_counter() - t0
        return stats
    media = MediaLinker(settings, store, ls, pid)
    labels = _LabelKeeper(ls, pid, spec, call("get project", ls.projects.get, id=pid).label_config or "")
    # tasks a crashed run left in Label Studio without our commit: one read for the whole run
    orphans = tasks_after(ls, pid, newest_stored_task_id(db, pid))
    stats.lookups = 1
    last_id = 0
    version_set = False

    # One POST in flight while the next chunk is read, built and serialised here: Label Studio's
    # work and ours overlap (two processes, two cores) instead of taking turns. Only the POST runs
    # in the worker; the DB is touched from this thread only. POSTs never overlap each other (the
    # orphan read above relies on ids growing chunk after chunk), nor another Label Studio write
    # (labels, storages, the model version: on SQLite it would wait for the import's write lock).
    # A chunk's commit here may run while the next chunk's POST is in flight: a crash between
    # them leaves both chunks above the newest stored id, where the rerun's read finds them.
    def submit(chunk: _Chunk) -> tuple[_Chunk, Future[list[int]] | None]:
        stats.pending += len(chunk.rows)
        labels.ensure(chunk.wanted)
        media.prepare(chunk.keys)
        stats.already_there += len(chunk.ids)
        stats.imported += len(chunk.new)
        fut = pool.submit(_post_parts, ls, pid, chunk.parts, lss.import_timeout_s) if chunk.new else None
        return chunk, fut

    def finish(done: _Chunk) -> None:
        _commit_chunk(db, pid, done)
        stats.chunks += 1
        log.info(
            "%s: chunk %s: %s imported, %s already there",
            spec.name,
            stats.chunks,
            len(done.new),
            len(done.rows) - len(done.new),
        )

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-import") as pool:
        inflight: tuple[_Chunk, Future[list[int]] | None] | None = None
        built_rows = 0
        while True:
            built: _Chunk | None = None
            if limit is None or built_rows < limit:
                # the first chunks ramp up (FIRST_CHUNK, doubling): the pipeline starts working
                # after a small build instead of a full chunk's
                size = min(size_max, FIRST_CHUNK << min(stats.chunks + (inflight is not None), 20))
                size = size if limit is None else min(size, limit - built_rows)
                with db.session() as s:
                    rows = [tuple(r) for r in s.execute(_pending(spec, last_id, size))]
                    if rows:
                        last_id = rows[-1][0].id
                        built = _build_chunk(s, spec, rows, media)  # type: ignore[arg-type]
            if built is not None:
                built_rows += len(built.rows)
                built.ids = {ext: orphans[ext] for ext in built.tasks if ext in orphans}
                built.new = [ext for ext in built.tasks if ext not in built.ids]
                built.parts = request_bodies([built.tasks[e] for e in built.new], lss.import_max_bytes)
            if inflight is None:
                if built is None:
                    break
                inflight = submit(built)
                continue
            done, fut = inflight
            if fut is not None:
                done.ids.update(zip(done.new, fut.result(), strict=True))
            wants_version = not version_set and any(mv == stats.model_version for _i, _e, mv in done.rows)
            writes_first = built is not None and (labels.needs(built.wanted) or media.needs_prepare(built.keys))
            if built is not None and not wants_version and not writes_first:
                inflight = submit(built)  # Label Studio starts on it while we commit the last one
                finish(done)
                continue
            finish(done)
            if wants_version:
                # only now: Label Studio accepts a version once the project has predictions of it
                set_model_version(ls, pid, stats.model_version)
                version_set = True
            if built is None:
                break
            inflight = submit(built)
    stats.seconds = time.perf_counter() - t0
    return stats
