"""What an export would contain, decided before any file is written.

Members are the validation run's passing snapshot minus records whose content changed since (they
wait for the next validation run: nothing unvalidated is ever exported). The content hash covers
the members and the export configuration, so re-exporting unchanged records is a no-op and a
changed record, setting or template is a new version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from labelloop.config import Settings
from labelloop.db import Database, DatasetVersion, Item, Record, ValidationRun
from labelloop.export.split import split_of
from labelloop.export.version import FORMAT, read_manifest, version_name, version_number, version_prefix
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
        raise ExportError(f"validation run {run.id} of {spec} did not pass its quality gate")
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
        }
    )


def plan_members(
    db: Database, spec: TaskSpec, settings: Settings, passing: dict[int, str]
) -> tuple[dict[int, Member], str]:
    """Members (record id -> hash, split) and the content hash of the version they would make."""
    h = hashlib.sha256(config_blob(spec, settings).encode())
    members: dict[int, Member] = {}
    cols: list[Any] = [Record.id, Item.sha256, Record.provenance, Record.model, Record.model_version]
    stmt = (
        select(*cols, Record.annotator, Record.record)
        .join(Item, Item.id == Record.item_id)
        # a partly reviewed document waits until every page is final (see review.sync)
        .where(Record.spec == spec.name, Record.provenance != "partial")
        .order_by(Record.id)
        .execution_options(yield_per=2000)
    )
    with db.session() as s:
        for rid, sha, prov, model, mv, annotator, rec in s.execute(stmt):
            want = passing.get(rid)
            if want is None or record_hash(rec) != want:
                continue
            members[rid] = Member(want, split_of(sha, settings.export.val_fraction))
            h.update(f"\n{rid}\t{sha}\t{want}\t{prov}\t{model}\t{mv}\t{annotator}".encode())
    return members, h.hexdigest()


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
