"""Ingest: register every file of a source as a content-addressed item, or as a reject with a reason.

Files are handled in batches (``ingest.commit_every`` files or ``ingest.batch_bytes`` bytes):

1. **Unchanged?** One query finds what the previous runs saw under the batch's names
   (:class:`~labelloop.db.SourceObject`): a name whose size and mtime (folders) or ETag (S3) are
   unchanged, and whose item still exists (or whose reject was decided under the same limits), is
   counted and skipped before a byte of it is read or downloaded.
2. **Read once.** Every other file is copied once into a staged object while it is hashed: the
   staged copy is what is probed and published, so all steps see the same bytes even if the
   source changes meanwhile.
3. **Probe** the new contents (type from magic bytes, size, EXIF orientation, structural
   truncation/corruption checks, PDF page count and page sizes) in a process pool across cores.
4. **Durable, then committed.** The batch's new objects are made durable together under
   ``raw/<sha[:2]>/<sha>.<ext>`` (:mod:`labelloop.storage.batch`: one flush per batch, not one
   fsync per object); only then are the batch's rows (items, aliases, rejects, source states)
   committed in one transaction. A crash loses at most the batch in flight, which the rerun redoes;
   no committed row ever points at bytes that are not in the store.

Batch k is read and probed while batch k-1 is published and committed (a two-stage pipeline), so
nothing is held per file beyond those two batches: memory is flat in the number of files.
Entries that are not read are never dropped silently: hidden names, unfollowed symlinks and
non-files are counted and listed (``skipped``), symlink loops and unlistable folders are rejects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import false, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop.config import Settings
from labelloop.db import Database, Item, ItemAlias, Reject, SourceObject
from labelloop.db.types import utcnow
from labelloop.ingest.probe import Probe, Rejected, RejectReason, probe_in_worker, probe_ready
from labelloop.ingest.sources import Source, SourceFile, open_source
from labelloop.storage import ObjectStore
from labelloop.storage.batch import BatchWriter, Staged

log = logging.getLogger(__name__)

EMPTY_SHA = hashlib.sha256(b"").hexdigest()
#: names of skipped entries kept in the stats (the count is exact, the list is a sample)
MAX_SKIPPED_LISTED = 100
#: below this many files to probe in a batch, probing in-process beats waking a pool
POOL_MIN_FILES = 8


def raw_key(sha: str, ext: str) -> str:
    return f"raw/{sha[:2]}/{sha}.{ext}"


class IngestError(RuntimeError):
    """The ingest cannot go on (the source or the store failed, not one file); names the object."""


@dataclass
class IngestStats:
    source: str
    seen: int = 0  # files (and unreadable entries) considered; skipped entries are not "seen"
    new_items: int = 0
    known: int = 0  # bytes already registered (under this or another name), unchanged ones included
    new_aliases: int = 0
    rejected: int = 0
    unchanged: int = 0  # of known + rejected: same name, size and mtime/ETag as before, not read
    skipped: int = 0
    bytes_read: int = 0
    batches: int = 0
    seconds: float = 0.0
    reject_reasons: Counter[str] = field(default_factory=Counter)
    skipped_reasons: Counter[str] = field(default_factory=Counter)
    skipped_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "seen": self.seen,
            "new_items": self.new_items,
            "known": self.known,
            "new_aliases": self.new_aliases,
            "rejected": self.rejected,
            "reject_reasons": dict(self.reject_reasons),
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "skipped_reasons": dict(self.skipped_reasons),
            "skipped_names": list(self.skipped_names),
            "bytes_read": self.bytes_read,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
        }


#: progress(source_file, outcome) where outcome is "new" | "known" | "rejected:<reason>" | "skipped:<why>"
ProgressFn = Callable[[SourceFile, str], None]


def uri_key(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class _Work:
    """One file of a batch on its way through the steps."""

    f: SourceFile
    key: str  # uri_key
    outcome: str = ""  # "new" | "known" | "rejected:<reason>"
    sha: str = ""
    size: int | None = None
    staged: Staged | None = None
    probe: Probe | None = None
    reject: Rejected | None = None
    item_id: int | None = None
    #: whether the outcome is a fact about these bytes (kept as source state) or about this attempt
    remember: bool = True
    unchanged: bool = False
    new_alias: bool = False
    lead: _Work | None = None  # for "dup": the file with the same bytes that was probed
    state_id: int | None = None  # its source_objects row, if any


@dataclass
class _Prepared:
    """A batch read and hashed, whose probes may still be running."""

    batch: list[_Work]
    todo: list[_Work]
    leads: dict[str, _Work]  # sha256 -> the file whose probe decides these bytes
    results: Iterator[Any]


class Ingestor:
    """One ingest run; see :func:`ingest`."""

    def __init__(self, db: Database, store: ObjectStore, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.limits = settings.ingest
        self.render_dpi = settings.documents.render_dpi
        # rejects are decided under these limits: other limits, another look at the same bytes
        blob = json.dumps(
            {"ingest": self.limits.model_dump(mode="json"), "render_dpi": self.render_dpi}, sort_keys=True
        )
        self.limits_hash = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self._pool: Executor | None = None
        self._pool_ready = threading.Event()
        self._workers = self.limits.probe_workers or os.cpu_count() or 1
        # what workers get: plain attributes (unpickling IngestSettings would import pydantic there)
        self._plain_limits = SimpleNamespace(**self.limits.model_dump())

    def run(self, source: str | Source, *, limit: int | None = None, progress: ProgressFn | None = None) -> IngestStats:
        src = (
            source
            if isinstance(source, Source)
            else open_source(source, self.settings.storage, self.limits.follow_symlinks)
        )
        stats = IngestStats(source=src.description)
        t0 = time.perf_counter()
        workdir = Path(self.settings.home) / "tmp"
        workdir.mkdir(parents=True, exist_ok=True)
        session = self.db.session()
        writer = self.store.batch_writer(workdir)
        self._start_pool()
        try:
            # a two-stage pipeline: batch k is read, hashed and handed to the probe pool while
            # batch k-1's probes finish; then k-1 is published and committed. Reading (I/O) and
            # probing (CPU, other processes) overlap; commits stay in order, one batch at a time.
            prev: _Prepared | None = None
            for batch in self._batches(src, stats, limit, progress):
                cur = self._prepare(session, writer, src, batch, stats, prev)
                if prev is not None:
                    self._finish_and_report(session, writer, prev, stats, progress)
                prev = cur
            if prev is not None:
                self._finish_and_report(session, writer, prev, stats, progress)
        finally:
            writer.close()
            session.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
                self._pool_ready.clear()
        stats.seconds = time.perf_counter() - t0
        return stats

    def _batches(
        self, src: Source, stats: IngestStats, limit: int | None, progress: ProgressFn | None
    ) -> Iterator[list[_Work]]:
        batch: list[_Work] = []
        size = 0
        for f in src.files():
            if f.skip is not None:
                stats.skipped += 1
                stats.skipped_reasons[f.skip] += 1
                if len(stats.skipped_names) < MAX_SKIPPED_LISTED:
                    stats.skipped_names.append(f.uri)
                log.info("skipped %s (%s)", f.uri, f.skip)
                if progress:
                    progress(f, f"skipped:{f.skip}")
                continue
            if limit is not None and stats.seen >= limit:
                break
            stats.seen += 1
            batch.append(_Work(f=f, key=uri_key(f.uri)))
            size += f.size or 0
            if len(batch) >= self.limits.commit_every or size >= self.limits.batch_bytes:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    # ------------------------------------------------------------------ one batch

    def _prepare(
        self,
        s: Session,
        writer: BatchWriter,
        src: Source,
        batch: list[_Work],
        stats: IngestStats,
        prev: _Prepared | None,
    ) -> _Prepared:
        """Skip the unchanged, stage and hash the rest, and start probing the new contents."""
        try:
            self._unchanged(s, batch)
            todo = [w for w in batch if not w.unchanged]
            for w in todo:
                self._read(writer, src, w, stats)
            inflight = prev.leads if prev is not None else {}
            leads, results = self._dedupe_and_submit(s, [w for w in todo if w.staged is not None], inflight)
        finally:
            s.rollback()  # end the read transaction: the previous batch commits next
            s.expunge_all()
        return _Prepared(batch=batch, todo=todo, leads=leads, results=results)

    def _finish_and_report(
        self, s: Session, writer: BatchWriter, p: _Prepared, stats: IngestStats, progress: ProgressFn | None
    ) -> None:
        self._finish(s, writer, p, stats)
        stats.batches += 1
        if progress:
            for w in p.batch:
                progress(w.f, w.outcome)

    def _finish(self, s: Session, writer: BatchWriter, p: _Prepared, stats: IngestStats) -> None:
        """Collect the probes, publish the new objects durably, then commit the batch's rows."""
        batch, todo = p.batch, p.todo
        try:
            self._settle_probes(p)
            for w in todo:
                if w.staged is None:
                    continue
                if w.probe is not None and w.item_id is None and w.outcome == "new":
                    writer.add(w.staged, raw_key(w.sha, w.probe.ext), content_type=w.probe.mime)
                else:
                    writer.discard(w.staged)
                    w.staged = None
            writer.commit()  # the batch's objects are durable before any row points at them
            try:
                self._begin_write(s)
                self._write_rows(s, todo, careful=False)
                s.commit()
            except IntegrityError:
                # another ingest registered some of the same bytes or names meanwhile: redo the
                # batch's rows one at a time, each under a savepoint
                log.info("an ingest batch raced another ingest; writing its %d rows one by one", len(todo))
                s.rollback()
                self._begin_write(s)
                self._reset(todo)
                # the other ingest may have recorded some of these names meanwhile
                states = self._states(s, todo)
                for w in todo:
                    w.state_id = states[w.key].id if w.key in states else None
                self._write_rows(s, todo, careful=True)
                s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.expunge_all()
        for w in batch:
            if w.outcome == "new":
                stats.new_items += 1
            elif w.outcome == "known":
                stats.known += 1
            else:
                stats.rejected += 1
                stats.reject_reasons[w.outcome.split(":", 1)[1]] += 1
            stats.unchanged += w.unchanged
            stats.new_aliases += w.new_alias

    def _begin_write(self, s: Session) -> None:
        """On SQLite, take the write lock before the first read of the transaction.

        SQLite (WAL) cannot upgrade a transaction that has read to a writer once another
        connection has committed since: it fails at once with "database is locked" instead of
        waiting out the busy timeout. Two overlapping ingests hit exactly that. A write as the
        first statement (an UPDATE that matches nothing) waits for the lock instead.
        """
        if self.db.dialect == "sqlite":
            s.execute(update(SourceObject).where(false()).values(seen_at=SourceObject.seen_at))

    def _states(self, s: Session, batch: list[_Work]) -> dict[str, SourceObject]:
        keys = [w.key for w in batch]
        return {o.uri_key: o for o in s.scalars(select(SourceObject).where(SourceObject.uri_key.in_(keys)))}

    def _unchanged(self, s: Session, batch: list[_Work]) -> dict[str, SourceObject]:
        """Mark the batch's files that are the same as last time; returns every known state."""
        states = self._states(s, batch)
        same: list[tuple[_Work, SourceObject]] = []
        for w in batch:
            st = states.get(w.key)
            w.state_id = st.id if st is not None else None
            if st is None or w.f.problem is not None or w.f.size is None or st.size_bytes != w.f.size:
                continue
            if w.f.etag is not None and st.etag is not None:
                if w.f.etag != st.etag:
                    continue
            elif w.f.mtime_ns is None or st.mtime_ns != w.f.mtime_ns:
                continue
            same.append((w, st))
        shas = {st.sha256 for _, st in same if st.outcome == "item"}
        items = (
            dict(s.execute(select(Item.sha256, Item.id).where(Item.sha256.in_(shas))).tuples().all()) if shas else {}
        )
        for w, st in same:
            if st.outcome == "item" and st.sha256 in items:
                w.outcome, w.sha, w.item_id = "known", st.sha256, items[st.sha256]
            elif st.outcome == "reject" and st.limits_hash == self.limits_hash and st.reason:
                w.outcome, w.sha = f"rejected:{st.reason}", st.sha256
            else:
                continue
            w.unchanged, w.size = True, st.size_bytes
        return states

    def _read(self, writer: BatchWriter, src: Source, w: _Work, stats: IngestStats) -> None:
        """Reject what needs no reading; otherwise stage a private copy while hashing it."""
        f = w.f
        if f.problem is not None:
            reason = RejectReason.SYMLINK_LOOP if f.problem == RejectReason.SYMLINK_LOOP else RejectReason.UNREADABLE
            self._set_reject(w, "", None, Rejected(reason, f.detail), remember=False)
            return
        if f.size == 0:
            self._set_reject(w, EMPTY_SHA, 0, Rejected(RejectReason.EMPTY, "zero-byte file"))
            return
        limit = self.limits.max_file_bytes
        if f.size is not None and f.size > limit:
            self._set_reject(
                w, "", f.size, Rejected(RejectReason.FILE_TOO_LARGE, f"{f.size:,} bytes exceeds the limit of {limit:,}")
            )
            return
        staged, out = writer.new_file()
        h = hashlib.sha256()
        size = 0
        try:
            with out:
                chunks = src.chunks(f)
                try:
                    for chunk in chunks:
                        size += len(chunk)
                        if size > limit:  # grew since it was listed
                            break
                        h.update(chunk)
                        out.write(chunk)
                finally:
                    chunks.close()
        except OSError as e:
            writer.discard(staged)
            self._set_reject(w, "", f.size, Rejected(RejectReason.UNREADABLE, f"cannot read: {e}"), remember=False)
            return
        except Exception as e:
            writer.discard(staged)
            if _is_missing_object(e):  # listed, then deleted before we got to it
                self._set_reject(w, "", f.size, Rejected(RejectReason.UNREADABLE, f"vanished: {e}"), remember=False)
                return
            raise IngestError(f"ingest {f.uri} (step: download): {type(e).__name__}: {e}") from e
        stats.bytes_read += size
        if size > limit:
            writer.discard(staged)
            self._set_reject(
                w, "", size, Rejected(RejectReason.FILE_TOO_LARGE, f"more than {limit:,} bytes (the limit)")
            )
            return
        if size == 0:
            writer.discard(staged)
            self._set_reject(w, EMPTY_SHA, 0, Rejected(RejectReason.EMPTY, "zero-byte file"))
            return
        w.staged, w.sha, w.size = staged, h.hexdigest(), size

    def _dedupe_and_submit(
        self, s: Session, staged: list[_Work], inflight: dict[str, _Work]
    ) -> tuple[dict[str, _Work], Iterator[Any]]:
        """Known bytes become aliases; each new content is probed once (results come lazily).

        ``inflight``: the previous batch's new contents, whose rows are not committed yet; a file
        with the same bytes here is settled by that batch's outcome.
        """
        if not staged:
            return {}, iter(())
        shas = {w.sha for w in staged}
        items = dict(s.execute(select(Item.sha256, Item.id).where(Item.sha256.in_(shas))).tuples().all())
        leads: dict[str, _Work] = {}
        to_probe: list[_Work] = []
        for w in staged:
            if w.sha in items:
                w.outcome, w.item_id = "known", items[w.sha]
            elif w.sha in leads or w.sha in inflight:
                w.outcome = "dup"  # same bytes as an earlier file: settled with it
                w.lead = leads.get(w.sha) or inflight[w.sha]
            else:
                leads[w.sha] = w
                to_probe.append(w)
        return leads, zip(to_probe, self._probe_all([str(w.staged.path) for w in to_probe]), strict=True)  # type: ignore[union-attr]

    def _settle_probes(self, p: _Prepared) -> None:
        for w, res in p.results:
            if res[0] == "ok":
                w.outcome, w.probe = "new", res[1]
            else:
                self._set_reject(w, w.sha, w.size, Rejected(RejectReason(res[1]), res[2]))
        for w in p.todo:
            if w.outcome == "dup":
                lead = w.lead
                assert lead is not None
                if lead.reject is not None:
                    self._set_reject(w, w.sha, w.size, lead.reject)
                else:
                    w.outcome = "known"  # an alias of the item its twin creates (or created)

    def _probe_all(self, paths: list[str]) -> Iterator[Any]:
        """Probe results in order: from the pool (submitted now, collected when iterated) or, while
        the pool is starting or for a handful of files, computed here and now."""
        if self._pool_ready.is_set() and len(paths) >= POOL_MIN_FILES:
            assert self._pool is not None
            chunk = max(1, len(paths) // (self._workers * 4))
            return self._pool.map(
                probe_in_worker, paths, repeat(self._plain_limits), repeat(self.render_dpi), chunksize=chunk
            )
        # the pool is still starting (or not wanted): probe here rather than wait for it
        return iter([probe_in_worker(p, self._plain_limits, self.render_dpi) for p in paths])

    def _start_pool(self) -> None:
        """Start the probe pool in the background; batches are probed in-process until it is up.

        On Linux the workers are forked from this process: they start in milliseconds and import
        nothing (a spawned or forkserver worker imports the ``__main__`` module again, e.g. the
        whole CLI, which on a loaded machine cost seconds of CPU per worker and slowed the ingest
        down more than the pool sped it up). Forking a process that has threads is safe here
        because a worker only runs :func:`probe_in_worker` (file reads, Pillow, PyMuPDF) and ends
        with ``os._exit``, never touching the parent's locks, DB connections or threads.
        Elsewhere: spawn. Where no pool can start (e.g. inside a daemonic process), ingest
        probes in-process.
        """
        if self._workers <= 1 or self._pool is not None:
            return
        try:
            ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            pool = ProcessPoolExecutor(max_workers=self._workers, mp_context=ctx)
        except Exception as e:  # pragma: no cover - platform without the start method
            log.warning("no probe pool (%s); probing in the ingest process", e)
            return
        self._pool = pool

        def warm() -> None:
            try:
                pool.submit(probe_ready).result()
                self._pool_ready.set()
            except Exception as e:
                log.warning("probe pool did not start (%s); probing in the ingest process", e)

        threading.Thread(target=warm, name="probe-pool-start", daemon=True).start()

    @staticmethod
    def _set_reject(w: _Work, sha: str, size: int | None, r: Rejected, *, remember: bool = True) -> None:
        log.info("rejected %s: %s", w.f.uri, r)
        w.outcome, w.sha, w.size, w.reject, w.remember = f"rejected:{r.reason.value}", sha, size, r, remember

    @staticmethod
    def _reset(todo: list[_Work]) -> None:
        """Forget the ids of a rolled-back attempt at writing the rows."""
        for w in todo:
            if w.outcome == "new":
                w.item_id = None

    # ------------------------------------------------------------------ rows

    def _write_rows(self, s: Session, todo: list[_Work], *, careful: bool) -> None:
        """Items, aliases, rejects and source states of the batch, in the caller's transaction.

        ``careful=False`` writes in bulk (a few statements per batch); ``careful=True`` writes row
        by row under savepoints, for the rare batch that raced another ingest.
        """
        new = [w for w in todo if w.outcome == "new"]
        if new:
            self._insert_items(s, new, careful)
        by_sha = {w.sha: w.item_id for w in new if w.item_id is not None}
        alias_rows: list[tuple[int, str]] = []
        fresh: set[tuple[int, str]] = set()  # aliases of items created just now: nothing to look up
        for w in todo:
            if w.outcome == "known" and w.item_id is None:
                w.item_id = by_sha.get(w.sha) or s.scalar(select(Item.id).where(Item.sha256 == w.sha))
                if w.item_id is None:  # pragma: no cover - a twin that was itself lost
                    raise IngestError(f"ingest: no item for {w.f.uri} (sha256 {w.sha})")
            if w.outcome in ("new", "known"):
                alias_rows.append((w.item_id, w.f.uri))  # type: ignore[arg-type]
                if w.outcome == "new":
                    fresh.add((w.item_id, w.f.uri))  # type: ignore[arg-type]
        inserted = self._insert_aliases(s, alias_rows, fresh, careful)
        for w in todo:
            w.new_alias = w.outcome == "known" and (w.item_id, w.f.uri) in inserted
        self._upsert_rejects(s, [w for w in todo if w.reject is not None], careful)
        self._upsert_states(s, [w for w in todo if w.remember], careful)

    def _insert_items(self, s: Session, new: list[_Work], careful: bool) -> None:
        rows = [
            {
                "sha256": w.sha,
                "media_type": w.probe.media_type,  # type: ignore[union-attr]
                "mime": w.probe.mime,  # type: ignore[union-attr]
                "ext": w.probe.ext,  # type: ignore[union-attr]
                "size_bytes": w.size,
                "storage_key": raw_key(w.sha, w.probe.ext),  # type: ignore[union-attr]
                "width": w.probe.width,  # type: ignore[union-attr]
                "height": w.probe.height,  # type: ignore[union-attr]
                "exif_orientation": w.probe.exif_orientation,  # type: ignore[union-attr]
                "page_count": w.probe.page_count,  # type: ignore[union-attr]
                "meta": w.probe.meta,  # type: ignore[union-attr]
                "created_at": utcnow(),
            }
            for w in new
        ]
        if not careful:
            t = Item.__table__
            got = dict(s.execute(t.insert().returning(t.c.sha256, t.c.id), rows).tuples().all())
            for w in new:
                w.item_id = got[w.sha]
            return
        for w, row in zip(new, rows, strict=True):
            try:
                with s.begin_nested():
                    w.item_id = s.execute(insert(Item).returning(Item.id), [row]).scalar_one()
            except IntegrityError:  # registered by the other ingest: an alias of its item
                w.item_id = s.scalar(select(Item.id).where(Item.sha256 == w.sha))
                if w.item_id is None:
                    raise
                w.outcome = "known"

    def _insert_aliases(
        self, s: Session, pairs: list[tuple[int, str]], fresh: set[tuple[int, str]], careful: bool
    ) -> set[tuple[int, str]]:
        """Insert the (item id, name) pairs not there yet; returns those inserted."""
        if not pairs:
            return set()
        uris = {u for pair in pairs if pair not in fresh for u in pair[1:]}
        have = (
            set(
                s.execute(select(ItemAlias.item_id, ItemAlias.source_uri).where(ItemAlias.source_uri.in_(uris)))
                .tuples()
                .all()
            )
            if uris
            else set()
        )
        rows = []
        for item_id, uri in dict.fromkeys(pairs):
            if (item_id, uri) not in have:
                rows.append({"item_id": item_id, "source_uri": uri, "first_seen_at": utcnow()})
        inserted: set[tuple[int, str]] = set()
        if not rows:
            return inserted
        if not careful:
            s.execute(ItemAlias.__table__.insert(), rows)
            return {(r["item_id"], r["source_uri"]) for r in rows}
        for row in rows:
            try:
                with s.begin_nested():
                    s.execute(insert(ItemAlias), [row])
                inserted.add((row["item_id"], row["source_uri"]))
            except IntegrityError:
                continue
        return inserted

    def _upsert_rejects(self, s: Session, works: list[_Work], careful: bool) -> None:
        if not works:
            return
        uris = {w.f.uri for w in works}
        have = {(r.source_uri, r.sha256): r for r in s.scalars(select(Reject).where(Reject.source_uri.in_(uris)))}
        for w in works:
            r = w.reject
            assert r is not None
            row = have.get((w.f.uri, w.sha))
            if row is not None:
                row.reason, row.detail, row.size_bytes, row.last_seen_at = r.reason.value, r.detail, w.size, utcnow()
                continue
            row = Reject(source_uri=w.f.uri, sha256=w.sha, size_bytes=w.size, reason=r.reason.value, detail=r.detail)
            have[(w.f.uri, w.sha)] = row
            if careful:
                try:
                    with s.begin_nested():
                        s.add(row)
                except IntegrityError:
                    continue
            else:
                s.add(row)
        s.flush()

    def _upsert_states(self, s: Session, works: list[_Work], careful: bool) -> None:
        now = utcnow()
        inserts, updates = [], []
        for w in works:
            if w.unchanged:
                continue
            values = {
                "source_uri": w.f.uri,
                "size_bytes": w.size if w.size is not None else w.f.size,
                "mtime_ns": w.f.mtime_ns,
                "etag": w.f.etag,
                "sha256": w.sha,
                "outcome": "reject" if w.reject is not None else "item",
                "reason": w.reject.reason.value if w.reject is not None else None,
                "limits_hash": self.limits_hash,
                "seen_at": now,
            }
            if w.state_id is not None:
                updates.append({"id": w.state_id, **values})
            else:
                inserts.append({"uri_key": w.key, **values})
        if updates:
            s.execute(update(SourceObject), updates)
        if not inserts:
            return
        if not careful:
            s.execute(SourceObject.__table__.insert(), list({r["uri_key"]: r for r in inserts}.values()))
            return
        for row in {r["uri_key"]: r for r in inserts}.values():
            try:
                with s.begin_nested():
                    s.execute(insert(SourceObject), [row])
            except IntegrityError:  # the other ingest saw this name too: its state is as good
                continue


def _is_missing_object(e: Exception) -> bool:
    code = getattr(e, "code", None)
    return code in ("NoSuchKey", "NoSuchObject", "NotFound")


def ingest(
    db: Database,
    store: ObjectStore,
    settings: Settings,
    source: str | Source,
    *,
    limit: int | None = None,
    progress: ProgressFn | None = None,
) -> IngestStats:
    """Register every file under ``source`` (a folder, a file, or ``s3://bucket/prefix``)."""
    return Ingestor(db, store, settings).run(source, limit=limit, progress=progress)
