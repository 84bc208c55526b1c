"""Run a backend over the items that still lack a prediction, and store the results.

The runner keeps at most ``concurrency`` predictions in flight and pulls items lazily (keyset
pagination over item ids), so a model server stays saturated while memory stays flat however many
items there are. Results are written in small transactions as they complete; the prediction
identity (item, spec, model, model_version, prompt_hash) is unique, so a rerun after a crash
predicts only what is missing and never duplicates.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import and_, exists, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop.db import Database, Item, Prediction
from labelloop.prelabel.base import Backend, PredictionResult
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class PrelabelStats:
    spec: str
    model: str
    model_version: str
    considered: int = 0
    ok: int = 0
    failed: int = 0
    already_done: int = 0
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
            "already_done": self.already_done,
            "seconds": round(self.seconds, 3),
            "failures": [{"item_id": i, "reason": r} for i, r in self.failures[:50]],
        }


def _missing_clause(spec: TaskSpec, backend: Backend):  # type: ignore[no-untyped-def]
    return ~exists().where(
        and_(
            Prediction.item_id == Item.id,
            Prediction.spec == spec.name,
            Prediction.model == backend.model,
            Prediction.model_version == backend.model_version,
            Prediction.prompt_hash == backend.prompt_hash(spec),
        )
    )


def iter_pending_items(
    db: Database,
    spec: TaskSpec,
    backend: Backend,
    *,
    item_ids: Sequence[int] | None = None,
    limit: int | None = None,
    page: int = 500,
) -> Iterator[Item]:
    """Items of the spec's media type without this backend's prediction, in id order, paged."""
    last_id = 0
    yielded = 0
    while True:
        stmt = (
            select(Item)
            .where(Item.media_type == spec.media, Item.id > last_id, _missing_clause(spec, backend))
            .order_by(Item.id)
            .limit(page)
        )
        if item_ids is not None:
            stmt = stmt.where(Item.id.in_(item_ids))
        with db.session() as s:
            batch = list(s.scalars(stmt))
        if not batch:
            return
        for it in batch:
            yield it
            yielded += 1
            if limit is not None and yielded >= limit:
                return
        last_id = batch[-1].id


def count_pending(db: Database, spec: TaskSpec, backend: Backend, item_ids: Sequence[int] | None = None) -> int:
    from sqlalchemy import func

    stmt = select(func.count(Item.id)).where(Item.media_type == spec.media, _missing_clause(spec, backend))
    if item_ids is not None:
        stmt = stmt.where(Item.id.in_(item_ids))
    with db.session() as s:
        return int(s.scalar(stmt) or 0)


def _store_results(
    db: Database,
    spec: TaskSpec,
    backend: Backend,
    results: list[tuple[Item, PredictionResult]],
    prompt_hash: str | None = None,
) -> int:
    """Insert predictions; an identity that already exists (a concurrent run) is skipped.

    One multi-row INSERT in one transaction, the common case; only when that hits a unique
    violation (another run stored some of these meanwhile) is the batch redone row by row in
    savepoints, skipping the rows that exist. A flush runs in a worker thread while the event
    loop keeps the model server busy, and every millisecond of Python it spends holding the GIL
    is taken from that loop: per-row ORM flushes and savepoints cost about ten times as much.
    """
    phash = prompt_hash or backend.prompt_hash(spec)
    rows = [_row_values(item, spec, backend, res, phash) for item, res in results]
    if not rows:
        return 0
    stmt = insert(Prediction)
    try:
        with db.session() as s:
            s.execute(stmt, rows)
            s.commit()
        return 0
    except IntegrityError:
        pass  # rolled back; redo row by row below
    skipped = 0
    with db.session() as s:
        for values in rows:
            try:
                with s.begin_nested():
                    s.execute(stmt, [values])
            except IntegrityError:
                skipped += 1
        s.commit()
    return skipped


def _row_values(item: Item, spec: TaskSpec, backend: Backend, res: PredictionResult, prompt_hash: str) -> dict:
    """The prediction row's column values (column defaults fill ``created_at``)."""
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
        return PredictionResult.failed(f"could not read {item.storage_key}: {data}")
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
    """
    if not backend.supports(spec):
        raise ValueError(f"backend {backend.name!r} does not support spec {spec.name!r}")
    stats = PrelabelStats(spec=spec.name, model=backend.model, model_version=backend.model_version)
    prompt_hash = backend.prompt_hash(spec)  # hashes the prompt and schema: once per run, not per row
    t0 = time.perf_counter()
    pending: list[tuple[Item, PredictionResult]] = []
    items = iter_pending_items(db, spec, backend, item_ids=item_ids, limit=limit)
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
            writing = asyncio.create_task(asyncio.to_thread(_store_results, db, spec, backend, batch, prompt_hash))

    async def write_all() -> None:
        nonlocal writing
        for _ in range(2):  # the write still running, if any; then the rest
            if writing is not None:
                stats.already_done += await writing
                writing = None
            write_pending()

    async def worker() -> None:
        while (loaded := await next_item()) is not None:
            item, data = loaded
            stats.considered += 1
            res = await _predict_one(backend, spec, item, data)
            if res.status == "ok":
                stats.ok += 1
            else:
                stats.failed += 1
                stats.failures.append((item.id, res.error or "failed"))
                log.warning("item %s (%s) failed: %s", item.id, item.sha256[:12], res.error)
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
