"""What an export would contain, decided before any file is written.

Members are the validation run's passing snapshot minus records whose content changed since (they
wait for the next validation run: nothing unvalidated is ever exported) and documents still
partly reviewed. Members are streamed (:class:`MemberStream`), never held: the plan is one pass
that hashes them, the build a second pass that must arrive at the same hash. The content hash covers
the members and the export configuration, so re-exporting unchanged records is a no-op and a
changed record, setting or template is a new version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from labelloop.config import Settings
from labelloop.db import Database, DatasetVersion, Item, Record, ValidationRun
from labelloop.export.split import split_of
from labelloop.export.version import FORMAT, read_manifest, version_name, version_number, version_prefix
from labelloop.review.routing import PROVENANCE_PARTIAL
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore
from labelloop.validation import canonical_json, record_hash


class ExportError(RuntimeError):
    """No usable validation run, or records changed while exporting (rerun)."""


@dataclass(frozen=True)
class Member:
    record_hash: str
    split: str


def export_formats(settings: Settings) -> list[str]:
    """Qwen-VL is always written (the training DAG reads it); then the configured others."""
    return list(dict.fromkeys(["qwen", *settings.export.formats]))


def resolve_validation_run(db: Database, spec: str, run_id: int | None) -> ValidationRun:
    """The given run, or the spec's latest finished one; it must have passed its gate."""
    with db.session() as s:
        if run_id is not None:
            run = s.get(ValidationRun, run_id)
            if run is None or run.spec != spec:
                raise ExportError(f"validation run {run_id} of spec {spec} not found")
        else:
            run = s.scalars(
                select(ValidationRun)
                .where(ValidationRun.spec == spec, ValidationRun.finished_at.is_not(None))
                .order_by(ValidationRun.id.desc())
                .limit(1)
            ).first()
            if run is None:
                raise ExportError(f"spec {spec} has no finished validation run: validate first")
    if not run.passed_gate:
        from labelloop.validation import gate_message

        st = run.statistics or {}
        summary = {
            "spec": spec,
            "validation_run_id": run.id,
            "n_failed": run.n_failed,
            "n_records": run.n_records,
            "failed_share": st.get("failed_share", run.n_failed / run.n_records if run.n_records else 0.0),
            "max_failed_share": st.get("max_failed_share", 0.0),
            "failed_examples": st.get("failed_examples") or [],
            "report_key": run.report_key or "",
        }
        raise ExportError(f"validation run {run.id} of {spec} did not pass its quality gate: {gate_message(summary)}")
    return run


def config_blob(spec: TaskSpec, settings: Settings) -> str:
    """Everything besides the records that changes the exported files."""
    e = settings.export
    return canonical_json(
        {
            "format": FORMAT,
            "spec": spec.name,
            "spec_version": spec.version,
            "media": spec.media,
            "fields": {n: f.kind for n, f in spec.fields.items()},
            "template": spec.export.model_dump(),
            "coordinates": [e.qwen_coordinate_mode, e.min_pixels, e.max_pixels],
            "val_fraction": e.val_fraction,
            "formats": export_formats(settings),
            "image_layout": e.image_layout,
        }
    )


@dataclass
class Plan:
    """What a version would hold: its content hash and how many records, decided in one pass."""

    content_hash: str
    members: int
    passing: int
    #: per shard of the cuts the plan was made with: digest of its members, and their number
    shard_digests: list[str] = field(default_factory=list)
    shard_members: list[int] = field(default_factory=list)

    @property
    def stale(self) -> int:
        """Passing records left out because their content changed since the validation run."""
        return self.passing - self.members


#: a shard: the members whose record id is in [lo, hi) (hi None: no upper end)
IdRange = tuple[int, int | None]


def _member_stmt(spec: TaskSpec) -> Any:
    cols: list[Any] = [
        Record.id,
        Item.sha256,
        Item.ext,
        Item.storage_key,
        Item.size_bytes,
        Item.width,
        Item.height,
        Item.exif_orientation,
        Item.meta,
        Record.provenance,
        Record.model,
        Record.model_version,
        Record.annotator,
        Record.confidence,
        Record.prediction_id,
        Record.content_hash,
        Record.record,
    ]
    return _candidates(spec, cols, yield_per=2000)


def _plan_stmt(spec: TaskSpec) -> Any:
    """What the content hash needs: no record JSON (decoding it is most of a pass's cost)."""
    cols: list[Any] = [
        Record.id,
        Item.sha256,
        Record.provenance,
        Record.model,
        Record.model_version,
        Record.annotator,
        Record.content_hash,
    ]
    return _candidates(spec, cols, yield_per=5000)


def _candidates(spec: TaskSpec, cols: list[Any], *, yield_per: int | None = None) -> Any:
    """The spec's records that may enter a version, in id order: one filter for the plan, the
    build pass and the shard cuts, which must see the same records."""
    stmt = (
        select(*cols)
        .join(Item, Item.id == Record.item_id)
        # a partly reviewed document waits until every page is final (see review.sync)
        .where(Record.spec == spec.name, Record.provenance != PROVENANCE_PARTIAL)
        .order_by(Record.id)
    )
    return stmt.execution_options(yield_per=yield_per) if yield_per else stmt


class MemberStream:
    """The version's members, streamed: the spec's records merge-joined (both in id order) with
    the validation run's passing snapshot, keeping a record only while its content hash is the
    validated one. Memory is constant in the number of records; :attr:`content_hash` is ready
    once the stream is exhausted.

    ``full=False`` (the plan) reads only the columns the content hash needs and trusts the
    records' stored ``content_hash`` (written with every record, see ``review.routing.put_record``);
    ``full=True`` (the build) reads the records themselves and hashes their JSON, so a stored hash
    that does not match the content fails the export loudly instead of shipping unvalidated data.

    ``cuts`` (ascending record ids, the first shard's lower end first) keep a digest of the members
    per shard, so a build split across processes can prove each shard saw what the plan saw;
    ``id_range`` restricts the stream to one shard.
    """

    def __init__(
        self,
        db: Database,
        spec: TaskSpec,
        settings: Settings,
        passing: Iterator[tuple[int, str]],
        *,
        full: bool = True,
        cuts: list[int] | None = None,
        id_range: IdRange | None = None,
    ) -> None:
        self.db = db
        self.spec = spec
        self.settings = settings
        self.passing = passing
        self.full = full
        self.id_range = id_range
        self._hash = hashlib.sha256(config_blob(spec, settings).encode())
        self.cuts = list(cuts or ([id_range[0]] if id_range else []))
        self._shard_hashes = [hashlib.sha256() for _ in self.cuts]
        #: members per shard (of ``cuts``)
        self.shard_members = [0] * len(self.cuts)
        self.members = 0
        self.n_passing = 0

    @property
    def shard_digests(self) -> list[str]:
        return [h.hexdigest() for h in self._shard_hashes]

    @property
    def content_hash(self) -> str:
        return self._hash.hexdigest()

    def plan(self) -> Plan:
        return Plan(self.content_hash, self.members, self.n_passing, self.shard_digests, list(self.shard_members))

    def __iter__(self) -> Iterator[tuple[Any, Member]]:
        val_fraction = self.settings.export.val_fraction
        passing = iter(self.passing)
        nxt = next(passing, None)
        stmt = _member_stmt(self.spec) if self.full else _plan_stmt(self.spec)
        lo, hi = self.id_range or (None, None)
        if lo is not None:
            stmt = stmt.where(Record.id >= lo)
            while nxt is not None and nxt[0] < lo:
                nxt = next(passing, None)
        if hi is not None:
            stmt = stmt.where(Record.id < hi)
        cuts, shard = self.cuts, -1
        # Core rows, streamed: the ORM's per-row machinery is a large share of a pass otherwise
        with self.db.engine.connect() as conn:
            for row in conn.execution_options(yield_per=2000).execute(stmt):
                while nxt is not None and nxt[0] < row.id:
                    self.n_passing += 1  # validated, then deleted or made partial: not a member
                    nxt = next(passing, None)
                if nxt is None or nxt[0] != row.id:
                    continue
                want = nxt[1]
                self.n_passing += 1
                nxt = next(passing, None)
                stored = row.content_hash
                if stored != want:
                    continue  # edited since validation: waits for the next run
                if self.full and record_hash(row.record) != stored:
                    raise ExportError(
                        f"record {row.id} of {self.spec.name}: its content does not match its stored "
                        "content hash (changed during the export, or written without it); run the export again"
                    )
                self.members += 1
                line = (
                    f"\n{row.id}\t{row.sha256}\t{want}\t{row.provenance}\t{row.model}\t{row.model_version}"
                    f"\t{row.annotator}".encode()
                )
                self._hash.update(line)
                while shard + 1 < len(cuts) and row.id >= cuts[shard + 1]:
                    shard += 1
                if shard >= 0:
                    self._shard_hashes[shard].update(line)
                    self.shard_members[shard] += 1
                yield row, Member(want, split_of(row.sha256, val_fraction))
        if hi is not None:
            return  # a shard: the passing records beyond it are another shard's
        while nxt is not None:
            self.n_passing += 1
            nxt = next(passing, None)


def plan_members(
    db: Database,
    spec: TaskSpec,
    settings: Settings,
    passing: Iterator[tuple[int, str]],
    cuts: list[int] | None = None,
) -> Plan:
    """The content hash and size of the version the passing records would make (one pass), with
    the digest of each shard of ``cuts``."""
    stream = MemberStream(db, spec, settings, passing, full=False, cuts=cuts)
    for _ in stream:
        pass
    return stream.plan()


def shard_cuts(db: Database, spec: TaskSpec, shards: int) -> list[int]:
    """Lower record ids of ``shards`` id ranges holding about equal numbers of candidate records
    (one OFFSET query per cut); fewer when there are fewer records. The first is 0, so together
    the ranges cover every record id."""
    base = _candidates(spec, [Record.id])
    with db.engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(base.order_by(None).subquery())).scalar_one()
        if n == 0:
            return []
        cuts = [0]
        for k in range(1, shards):
            cut = conn.execute(base.offset(k * n // shards).limit(1)).scalar()
            if cut is not None and (not cuts or cut > cuts[-1]):
                cuts.append(cut)
    return cuts


def choose_version(
    db: Database,
    store: ObjectStore,
    spec: str,
    content_hash: str,
) -> tuple[str, dict[str, Any] | None]:
    """The next free version name, or an already-published one with our content (to adopt).

    A name whose manifest exists but has other content was published by an attempt that crashed
    before registering it; it may have been read, so it is never overwritten: skip the name.
    """
    with db.session() as s:
        names = s.scalars(select(DatasetVersion.version).where(DatasetVersion.spec == spec)).all()
    n = max((version_number(v) for v in names), default=0) + 1
    while True:
        name = version_name(n)
        manifest = read_manifest(store, version_prefix(spec, name))
        if manifest is None:
            return name, None
        if manifest.get("content_hash") == content_hash:
            return name, manifest
        n += 1
