"""Run a backend over the items that still lack a prediction, and store the results.

The runner keeps at most ``concurrency`` predictions in flight and pulls items lazily (keyset
pagination over item ids), so a model server stays saturated while memory stays flat however many
items there are. Results are written in small transactions as they complete; the prediction
identity (item, spec, model, model_version, prompt_hash) is unique, so a rerun after a crash
predicts only what is missing and never duplicates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from labelloop.config import PrelabelSettings
from labelloop.db import Database, Item, Prediction, ReviewTask
from labelloop.db.types import utcnow
from labelloop.prelabel.base import FAILURE_PERMANENT, FAILURE_TRANSIENT, Backend, PredictionResult
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore
from labelloop.storage.base import ObjectNotFound

log = logging.getLogger(__name__)


@dataclass
class PrelabelStats:
    spec: str
    model: str
    model_version: str
    considered: int = 0
    ok: int = 0
    failed: int = 0
    #: failures the next runs retry (connection, timeout, 429, 5xx) and the rest
    transient: int = 0
    permanent: int = 0
    #: items that had a failed prediction before this run (retries)
    retried: int = 0
    already_done: int = 0
    #: why the run stopped taking items (the model server looked down), or None
    stopped_early: str | None = None
    seconds: float = 0.0
    failures: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "spec": self.spec,
            "model": self.model,
            "model_version": self.model_version,
            "considered": self.considered,
            "ok": self.ok,
            "failed": self.failed,
            "transient": self.transient,
            "permanent": self.permanent,
            "retried": self.retried,
            "already_done": self.already_done,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 3),
            "failures": [{"item_id": i, "reason": r} for i, r in self.failures[:50]],
        }


class PrelabelBatchError(RuntimeError):
    """The batch's output is missing for a reason outside the items: the model server (or the
    store) was down or failing. Everything that finished is stored; a rerun retries the rest."""

    def __init__(self, message: str, stats: PrelabelStats) -> None:
        super().__init__(message)
        self.stats = stats


def check_batch(stats: PrelabelStats, policy: PrelabelSettings) -> None:
    """Raise :class:`PrelabelBatchError` when the batch must fail loudly (see PrelabelSettings)."""
    where = f"pre-label {stats.spec} with {stats.model} ({stats.model_version})"
    first = f"; first failure: item {stats.failures[0][0]}: {stats.failures[0][1]}" if stats.failures else ""
    if stats.stopped_early:
        raise PrelabelBatchError(
            f"{where}: stopped early, {stats.stopped_early}; {stats.ok} ok, {stats.failed} failed, the rest stay "
            f"pending and a rerun retries them{first}",
            stats,
        )
    if stats.considered and stats.transient / stats.considered > policy.max_transient_failure_share:
        raise PrelabelBatchError(
            f"{where}: {stats.transient} of {stats.considered} items failed for transient reasons "
            f"(more than {policy.max_transient_failure_share:.0%}); a rerun retries them{first}",
            stats,
        )


def _identity(spec: TaskSpec, backend: Backend, prompt_hash: str):  # type: ignore[no-untyped-def]
    return and_(
        Prediction.item_id == Item.id,
        Prediction.spec == spec.name,
        Prediction.model == backend.model,
        Prediction.model_version == backend.model_version,
        Prediction.prompt_hash == prompt_hash,
    )


def _due(policy: PrelabelSettings, retry_failed: bool):  # type: ignore[no-untyped-def]
    """Failed predictions this run predicts again: never one a person is reviewing by hand
    (``routing.review_failures``); transient ones below the attempt limit once their backoff
    is over; with ``retry_failed`` every failed one."""
    not_in_review = ~exists().where(ReviewTask.prediction_id == Prediction.id)
    if retry_failed:
        return and_(Prediction.status == "failed", not_in_review)
    return and_(
        Prediction.status == "failed",
        not_in_review,
        Prediction.failure_kind == FAILURE_TRANSIENT,
        Prediction.attempts < policy.max_attempts,
        or_(Prediction.retry_after.is_(None), Prediction.retry_after <= utcnow()),
    )


def _pending_stmt(spec: TaskSpec, backend: Backend, policy: PrelabelSettings, retry_failed: bool, *cols):  # type: ignore[no-untyped-def]
    """Items of the spec's media without this identity's prediction, or with a failed one that is due.

    An outer join on the identity (unique, so one row at most per item), not ``NOT EXISTS``, so
    the previous attempt count comes along for the retry's backoff.
    """
    ident = _identity(spec, backend, backend.prompt_hash(spec))
    return (
        select(*cols)
        .select_from(Item)
        .outerjoin(Prediction, ident)
        .where(Item.media_type == spec.media, or_(Prediction.id.is_(None), _due(policy, retry_failed)))
    )


def iter_pending_items(
    db: Database,
    spec: TaskSpec,
    backend: Backend,
    *,
    item_ids: Sequence[int] | None = None,
    limit: int | None = None,
    page: int = 500,
    policy: PrelabelSettings | None = None,
    retry_failed: bool = False,
    attempts: dict[int, int] | None = None,
) -> Iterator[Item]:
    """Items to predict (see :func:`_pending_stmt`), in id order, paged.

    ``attempts`` (if given) is filled with the attempt count of each yielded item's failed
    prediction, for items that are retried.
    """
    policy = policy or PrelabelSettings()
    last_id = 0
    yielded = 0
    while True:
        stmt = (
            _pending_stmt(spec, backend, policy, retry_failed, Item, Prediction.attempts)
            .where(Item.id > last_id)
            .order_by(Item.id)
            .limit(page)
        )
        if item_ids is not None:
            stmt = stmt.where(Item.id.in_(item_ids))
        with db.session() as s:
            batch = list(s.execute(stmt))
        if not batch:
            return
        for it, tried in batch:
            if attempts is not None and tried is not None:
                attempts[it.id] = int(tried)
            yield it
            yielded += 1
            if limit is not None and yielded >= limit:
                return
        last_id = batch[-1][0].id


def count_pending(
    db: Database,
    spec: TaskSpec,
    backend: Backend,
    item_ids: Sequence[int] | None = None,
    *,
    policy: PrelabelSettings | None = None,
    retry_failed: bool = False,
) -> int:
    from sqlalchemy import func

    stmt = _pending_stmt(spec, backend, policy or PrelabelSettings(), retry_failed, func.count(Item.id))
    if item_ids is not None:
        stmt = stmt.where(Item.id.in_(item_ids))
    with db.session() as s:
        return int(s.scalar(stmt) or 0)


_IDENTITY_COLUMNS = ("item_id", "spec", "model", "model_version", "prompt_hash")


def _upsert(db: Database):  # type: ignore[no-untyped-def]
    """INSERT of predictions that replaces a *failed* row of the same identity (a retry) and
    leaves an ok one alone (another run got there first); RETURNING says which rows were written.

    Dialect inserts because ON CONFLICT is not portable SQL; both SQLite (3.35+) and PostgreSQL
    support it with RETURNING, in one multi-row statement.
    """
    if db.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    stmt = dialect_insert(Prediction)
    table = Prediction.__table__
    keep = (*_IDENTITY_COLUMNS, "id", "created_at")
    return stmt.on_conflict_do_update(
        index_elements=list(_IDENTITY_COLUMNS),
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keep},
        where=table.c.status == "failed",
    ).returning(table.c.id)


def _store_results(
    db: Database,
    spec: TaskSpec,
    backend: Backend,
    results: list[tuple[Item, PredictionResult]],
    prompt_hash: str | None = None,
    *,
    attempts: dict[int, int] | None = None,
    policy: PrelabelSettings | None = None,
) -> int:
    """Store predictions in one multi-row upsert; returns how many were skipped because another
    run had stored an ok prediction of that identity meanwhile.

    One statement in one transaction: a flush runs in a worker thread while the event loop keeps
    the model server busy, and every millisecond of Python it spends holding the GIL is taken
    from that loop (per-row ORM flushes cost about ten times as much).
    """
    phash = prompt_hash or backend.prompt_hash(spec)
    policy = policy or PrelabelSettings()
    attempts = attempts or {}
    now = utcnow()
    rows = [
        _row_values(item, spec, backend, res, phash, attempts.get(item.id, 0) + 1, policy, now) for item, res in results
    ]
    if not rows:
        return 0
    with db.session() as s:
        written = len(s.execute(_upsert(db), rows).all())
        s.commit()
    return len(rows) - written


def _row_values(
    item: Item,
    spec: TaskSpec,
    backend: Backend,
    res: PredictionResult,
    prompt_hash: str,
    attempt: int = 1,
    policy: PrelabelSettings | None = None,
    now: dt.datetime | None = None,
) -> dict:
    """The prediction row's column values (``created_at`` is the first attempt's)."""
    policy = policy or PrelabelSettings()
    failed = res.status != "ok"
    kind = (res.failure_kind or FAILURE_PERMANENT) if failed else None
    retry_after = None
    if kind == FAILURE_TRANSIENT:
        retry_after = (now or utcnow()) + dt.timedelta(seconds=policy.retry_backoff_s * 2 ** (attempt - 1))
    return {
        "item_id": item.id,
        "spec": spec.name,
        "backend": backend.name,
        "model": backend.model,
        "model_version": backend.model_version,
        "prompt_hash": prompt_hash,
        "status": res.status,
        "record": res.record if res.status == "ok" else None,
        "field_confidence": {k: float(v) for k, v in res.field_confidence.items()},
        "confidence_detail": res.confidence_detail,
        "confidence": res.confidence,
        "error": res.error,
        "raw_output": res.raw_output,
        "latency_ms": res.latency_ms,
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "failure_kind": kind,
        "attempts": attempt,
        "retry_after": retry_after,
        "created_at": now or utcnow(),
    }


@contextmanager
def _long_lived_objects_frozen() -> Iterator[None]:
    """Keep the objects that exist before the batch (modules, ORM mappings, settings) out of the
    cyclic collector's full passes while it runs.

    Requests in flight live long enough to be promoted to the oldest generation, so a batch
    triggers full collections, and each one walks every object of the process (~0.1 s with
    SQLAlchemy, Pillow, pydantic and aiohttp loaded): a pause in which the event loop refills
    no slot. Frozen, a full pass walks only what the batch itself allocated. The previous state is
    restored afterwards; when someone else already froze objects (Airflow does before forking
    workers) or the collector is off, nothing is changed.
    """
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


#: an item with its bytes, or the error reading them
_Loaded = tuple[Item, "bytes | Exception"]


def _read_items(items: Iterator[Item], store: ObjectStore, n: int) -> list[_Loaded]:
    """The next ``n`` pending items and their bytes: one worker-thread hop for the lot.

    A hop per item cost more than the read itself (a local read of a photo is ~0.1 ms), and each
    one waits up to the GIL's switch interval (5 ms) whenever the event loop is busy.
    """
    out: list[_Loaded] = []
    for item in itertools.islice(items, n):
        try:
            data: bytes | Exception = store.get(item.storage_key)
        except Exception as e:  # the object store lost the blob: a failed prediction, not a crash
            data = e
        out.append((item, data))
    return out


async def _predict_one(backend: Backend, spec: TaskSpec, item: Item, data: bytes | Exception) -> PredictionResult:
    if isinstance(data, Exception):
        # a lost blob fails every attempt (permanent); the store being down or throttling is not
        kind = FAILURE_PERMANENT if isinstance(data, ObjectNotFound) else FAILURE_TRANSIENT
        return PredictionResult.failed(f"could not read {item.storage_key} from the object store: {data}", kind=kind)
    t0 = time.perf_counter()
    try:
        res = await backend.predict(item, data, spec)
    except Exception as e:  # a backend bug must not stop the batch either; keep the reason
        log.exception("backend %s crashed on item %s", backend.name, item.id)
        res = PredictionResult.failed(f"backend error: {type(e).__name__}: {e}")
    if res.latency_ms is None:
        res.latency_ms = (time.perf_counter() - t0) * 1000
    return res


async def run_prelabel(
    db: Database,
    store: ObjectStore,
    spec: TaskSpec,
    backend: Backend,
    *,
    item_ids: Sequence[int] | None = None,
    limit: int | None = None,
    concurrency: int = 8,
    flush_every: int = 50,
    progress: Callable[[int, PredictionResult], None] | None = None,
    policy: PrelabelSettings | None = None,
    retry_failed: bool = False,
    check: bool = True,
) -> PrelabelStats:
    """Predict every pending item with at most ``concurrency`` predictions in flight.

    ``concurrency`` workers each take the next item, predict it and take another, so a finished
    request is followed by the next one in the same task, without a round trip through a
    dispatcher (each hop through the event loop waits behind every callback that is ready, which
    adds up when dozens of answers arrive at once). Items and their bytes are read ahead in small
    chunks in a worker thread (at most about ``2 * min(concurrency, 32)`` blobs wait beside the
    ones in flight), so a worker never waits for a database page or an object read; results are
    written by one background write at a time. Memory is bounded by the concurrency, not by the
    number of items.

    Failed predictions that are due (see :func:`_pending_stmt`; all of them with
    ``retry_failed``) are predicted again and their rows updated in place. After
    ``policy.outage_after`` transient failures in a row the run stops taking items (the server
    is down: burning every item would only push them all to the next run's backoff). With
    ``check`` the run then raises :class:`PrelabelBatchError` (see :func:`check_batch`), after
    storing everything that finished.
    """
    policy = policy or PrelabelSettings()
    if not backend.supports(spec):
        raise ValueError(f"backend {backend.name!r} does not support spec {spec.name!r}")
    stats = PrelabelStats(spec=spec.name, model=backend.model, model_version=backend.model_version)
    prompt_hash = backend.prompt_hash(spec)  # hashes the prompt and schema: once per run, not per row
    t0 = time.perf_counter()
    pending: list[tuple[Item, PredictionResult]] = []
    attempts: dict[int, int] = {}
    items = iter_pending_items(
        db, spec, backend, item_ids=item_ids, limit=limit, policy=policy, retry_failed=retry_failed, attempts=attempts
    )
    in_a_row = 0  # transient failures since the last answer
    chunk = max(1, min(concurrency, 32))  # items read per worker-thread hop
    ready: deque[_Loaded] = deque()
    reading: asyncio.Task[list[_Loaded]] | None = None
    exhausted = False
    writing: asyncio.Task[int] | None = None

    def read_ahead() -> None:
        nonlocal reading
        if reading is None and not exhausted and len(ready) < chunk:
            reading = asyncio.create_task(asyncio.to_thread(_read_items, items, store, chunk))

    async def next_item() -> _Loaded | None:
        nonlocal reading, exhausted
        while True:
            if ready:
                loaded = ready.popleft()
                read_ahead()
                return loaded
            if exhausted:
                return None
            read_ahead()
            current = reading
            assert current is not None
            await asyncio.wait([current])
            if reading is current:  # the first worker to wake takes the chunk in
                reading = None
                got = current.result()
                ready.extend(got)
                exhausted = len(got) < chunk  # islice came up short: the pending items are used up

    def write_pending() -> None:
        """Start a background write of the finished results, unless one is running."""
        nonlocal writing
        if writing is not None and writing.done():
            stats.already_done += writing.result()
            writing = None
        if pending and writing is None:
            batch = pending[:]
            pending.clear()
            writing = asyncio.create_task(
                asyncio.to_thread(
                    _store_results, db, spec, backend, batch, prompt_hash, attempts=attempts, policy=policy
                )
            )

    async def write_all() -> None:
        nonlocal writing
        for _ in range(2):  # the write still running, if any; then the rest
            if writing is not None:
                stats.already_done += await writing
                writing = None
            write_pending()

    async def worker() -> None:
        nonlocal in_a_row
        while stats.stopped_early is None and (loaded := await next_item()) is not None:
            item, data = loaded
            stats.considered += 1
            stats.retried += item.id in attempts
            res = await _predict_one(backend, spec, item, data)
            if res.status == "ok":
                stats.ok += 1
                in_a_row = 0
            else:
                stats.failed += 1
                if res.transient:
                    stats.transient += 1
                    in_a_row += 1
                else:
                    stats.permanent += 1
                    in_a_row = 0  # the server answered
                stats.failures.append((item.id, res.error or "failed"))
                log.warning("item %s (%s) failed (%s): %s", item.id, item.sha256[:12], res.failure_kind, res.error)
                if in_a_row >= policy.outage_after and stats.stopped_early is None:
                    stats.stopped_early = f"{in_a_row} transient failures in a row (last: {res.error})"
                    log.error("%s: %s; not taking more items", spec.name, stats.stopped_early)
            pending.append((item, res))
            if progress:
                progress(item.id, res)
            if len(pending) >= flush_every:
                write_pending()

    with _long_lived_objects_frozen():
        workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a worker's failure (a database error) fails the run
        finally:
            for task in workers:
                task.cancel()
            await asyncio.wait(workers)
            if reading is not None:  # the read-ahead thread is using the item iterator: let it finish
                await asyncio.wait([reading])
                if not reading.cancelled():
                    reading.exception()  # retrieved; after a failure elsewhere it is moot
            await write_all()  # whatever finished is stored, even if the run is failing
    stats.seconds = time.perf_counter() - t0
    if check:
        check_batch(stats, policy)
    return stats


def run_prelabel_sync(*args, **kwargs) -> PrelabelStats:  # type: ignore[no-untyped-def]
    """Blocking wrapper for operators and the CLI."""
    return asyncio.run(run_prelabel(*args, **kwargs))


def latest_predictions(s: Session, item_id: int, spec: str) -> list[Prediction]:
    return list(
        s.scalars(
            select(Prediction)
            .where(Prediction.item_id == item_id, Prediction.spec == spec)
            .order_by(Prediction.created_at.desc())
        )
    )
