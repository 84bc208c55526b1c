"""Run a backend over the items that still lack a prediction, and store the results.

The runner keeps at most ``concurrency`` predictions in flight and pulls items lazily (keyset
pagination over item ids), so a model server stays saturated while memory stays flat however many
items there are. Results are written in small transactions as they complete; the prediction
identity (item, spec, model, model_version, prompt_hash) is unique, so a rerun after a crash
predicts only what is missing and never duplicates.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import and_, exists, select
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


def _store_results(db: Database, spec: TaskSpec, backend: Backend, results: list[tuple[Item, PredictionResult]]) -> int:
    """Insert predictions; an identity that already exists (a concurrent run) is skipped."""
    skipped = 0
    with db.session() as s:
        for item, res in results:
            try:
                with s.begin_nested():
                    s.add(_to_row(item, spec, backend, res))
            except IntegrityError:
                skipped += 1
        s.commit()
    return skipped


def _to_row(item: Item, spec: TaskSpec, backend: Backend, res: PredictionResult) -> Prediction:
    return Prediction(
        item_id=item.id,
        spec=spec.name,
        backend=backend.name,
        model=backend.model,
        model_version=backend.model_version,
        prompt_hash=backend.prompt_hash(spec),
        status=res.status,
        record=res.record if res.status == "ok" else None,
        field_confidence={k: float(v) for k, v in res.field_confidence.items()},
        confidence_detail=res.confidence_detail,
        confidence=res.confidence,
        error=res.error,
        raw_output=res.raw_output,
        latency_ms=res.latency_ms,
        prompt_tokens=res.prompt_tokens,
        completion_tokens=res.completion_tokens,
    )


async def _predict_one(store: ObjectStore, backend: Backend, spec: TaskSpec, item: Item) -> PredictionResult:
    t0 = time.perf_counter()
    try:
        data = await asyncio.to_thread(store.get, item.storage_key)
    except Exception as e:  # the object store lost the blob: record it, do not stop the batch
        return PredictionResult.failed(f"could not read {item.storage_key}: {e}")
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
    if not backend.supports(spec):
        raise ValueError(f"backend {backend.name!r} does not support spec {spec.name!r}")
    stats = PrelabelStats(spec=spec.name, model=backend.model, model_version=backend.model_version)
    t0 = time.perf_counter()
    pending: list[tuple[Item, PredictionResult]] = []
    inflight: dict[asyncio.Task[PredictionResult], Item] = {}
    items = iter_pending_items(db, spec, backend, item_ids=item_ids, limit=limit)
    page: list[Item] = []
    exhausted = False
    # Finished requests arrive through done-callbacks (cheaper than asyncio.wait over every task),
    # and results are written by one background write at a time, so refilling the model server's
    # slots never waits on the database.
    done_q: asyncio.Queue[asyncio.Task[PredictionResult]] = asyncio.Queue()
    writing: asyncio.Task[int] | None = None

    def next_page() -> list[Item]:
        return list(itertools.islice(items, max(concurrency, 64)))

    async def flush(final: bool = False) -> None:
        nonlocal writing
        if writing is not None and (final or writing.done()):
            stats.already_done += await writing
            writing = None
        if pending and writing is None:
            batch = pending[:]
            pending.clear()
            writing = asyncio.create_task(asyncio.to_thread(_store_results, db, spec, backend, batch))
            if final:
                stats.already_done += await writing
                writing = None

    try:
        while True:
            while not exhausted and len(inflight) < concurrency:
                if not page:
                    page = (await asyncio.to_thread(next_page))[::-1]
                    if not page:
                        exhausted = True
                        break
                item = page.pop()
                stats.considered += 1
                task = asyncio.create_task(_predict_one(store, backend, spec, item))
                task.add_done_callback(done_q.put_nowait)
                inflight[task] = item
            if not inflight:
                break
            done = [await done_q.get()]
            while not done_q.empty():
                done.append(done_q.get_nowait())
            for task in done:
                item = inflight.pop(task)
                res = task.result()
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
                await flush()
    finally:
        await flush(final=True)  # the write still running, if any
        await flush(final=True)  # the rest: whatever finished is stored even if we are failing
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
