"""Ingest: register every file of a source as a content-addressed item, or as a reject with a reason.

Per file: copy the bytes once to a private temp file while hashing, look the sha256 up, and either
add an alias (bytes already known), or probe the content and store it under
``raw/<sha[:2]>/<sha>.<ext>`` before inserting the item row. The blob is written before the row,
so a crash leaves at worst an unreferenced blob that the rerun overwrites; rows are committed every
``commit_every`` files, so a crash loses at most that many registrations, which the rerun redoes.
Nothing is ever held per file beyond the current one: memory is flat in the number of files.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop.config import Settings
from labelloop.db import Database, Item, ItemAlias, Reject
from labelloop.db.types import utcnow
from labelloop.ingest.probe import Probe, Rejected, RejectReason, probe_file
from labelloop.ingest.sources import Source, SourceFile, open_source
from labelloop.storage import ObjectStore

log = logging.getLogger(__name__)

EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def raw_key(sha: str, ext: str) -> str:
    return f"raw/{sha[:2]}/{sha}.{ext}"


@dataclass
class IngestStats:
    source: str
    seen: int = 0
    new_items: int = 0
    known: int = 0  # bytes already registered (under this or another name)
    new_aliases: int = 0
    rejected: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    reject_reasons: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "seen": self.seen,
            "new_items": self.new_items,
            "known": self.known,
            "new_aliases": self.new_aliases,
            "rejected": self.rejected,
            "reject_reasons": dict(self.reject_reasons),
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
        }


#: progress(source_file, outcome) where outcome is "new" | "known" | "rejected:<reason>"
ProgressFn = Callable[[SourceFile, str], None]


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Ingestor:
    """One ingest run; see :func:`ingest`."""

    def __init__(self, db: Database, store: ObjectStore, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.limits = settings.ingest

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
        pending = 0
        try:
            with tempfile.TemporaryDirectory(dir=workdir, prefix="ingest-") as tmp:
                for f in src.files():
                    if limit is not None and stats.seen >= limit:
                        break
                    stats.seen += 1
                    outcome = self._one(session, src, f, Path(tmp), stats)
                    pending += 1
                    if pending >= self.limits.commit_every:
                        session.commit()
                        session.expunge_all()
                        pending = 0
                    if progress:
                        progress(f, outcome)
            session.commit()
        finally:
            session.close()
        stats.seconds = time.perf_counter() - t0
        return stats

    # ------------------------------------------------------------------ one file

    def _one(self, s: Session, src: Source, f: SourceFile, tmpdir: Path, stats: IngestStats) -> str:
        if f.size == 0:
            return self._reject(s, f, EMPTY_SHA, 0, Rejected(RejectReason.EMPTY, "zero-byte file"), stats)
        if f.size is not None and f.size > self.limits.max_file_bytes:
            err = Rejected(
                RejectReason.FILE_TOO_LARGE,
                f"{f.size:,} bytes exceeds the limit of {self.limits.max_file_bytes:,}",
            )
            return self._reject(s, f, "", f.size, err, stats)
        try:
            with src.materialize(f, tmpdir) as path:
                size = path.stat().st_size
                stats.bytes_read += size
                sha = _hash_file(path)
                item = s.scalar(select(Item).where(Item.sha256 == sha))
                if item is not None:
                    self._alias(s, item, f.uri, stats)
                    stats.known += 1
                    return "known"
                try:
                    probe = probe_file(path, self.limits)
                except Rejected as r:
                    return self._reject(s, f, sha, size, r, stats)
                key = raw_key(sha, probe.ext)
                existing = self.store.stat(key) if self.store.exists(key) else None
                if existing is None or existing.size != size:
                    self.store.put_file(key, path, content_type=probe.mime)
                return self._insert(s, f, sha, size, key, probe, stats)
        except OSError as e:
            return self._reject(s, f, "", f.size, Rejected(RejectReason.UNREADABLE, f"cannot read: {e}"), stats)

    def _insert(
        self, s: Session, f: SourceFile, sha: str, size: int, key: str, probe: Probe, stats: IngestStats
    ) -> str:
        item = Item(
            sha256=sha,
            media_type=probe.media_type,
            mime=probe.mime,
            ext=probe.ext,
            size_bytes=size,
            storage_key=key,
            width=probe.width,
            height=probe.height,
            exif_orientation=probe.exif_orientation,
            page_count=probe.page_count,
            meta=probe.meta,
        )
        item.aliases.append(ItemAlias(source_uri=f.uri))
        try:
            with s.begin_nested():
                s.add(item)
        except IntegrityError:  # another ingest registered the same bytes meanwhile
            other = s.scalar(select(Item).where(Item.sha256 == sha))
            if other is None:
                raise
            self._alias(s, other, f.uri, stats)
            stats.known += 1
            return "known"
        stats.new_items += 1
        return "new"

    def _alias(self, s: Session, item: Item, uri: str, stats: IngestStats) -> None:
        have = s.scalar(select(ItemAlias.id).where(ItemAlias.item_id == item.id, ItemAlias.source_uri == uri))
        if have is None:
            with s.begin_nested():
                s.add(ItemAlias(item_id=item.id, source_uri=uri))
            stats.new_aliases += 1

    def _reject(self, s: Session, f: SourceFile, sha: str, size: int | None, r: Rejected, stats: IngestStats) -> str:
        log.info("rejected %s: %s", f.uri, r)
        row = s.scalar(select(Reject).where(Reject.source_uri == f.uri, Reject.sha256 == sha))
        if row is None:
            with s.begin_nested():
                s.add(Reject(source_uri=f.uri, sha256=sha, size_bytes=size, reason=r.reason.value, detail=r.detail))
        else:
            row.reason, row.detail, row.last_seen_at = r.reason.value, r.detail, utcnow()
        stats.rejected += 1
        stats.reject_reasons[r.reason.value] += 1
        return f"rejected:{r.reason.value}"


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
