"""Export the records that passed validation as an immutable, published dataset version.

1. :mod:`plan`: the validation run and its members; the content hash. Already registered: done.
2. :mod:`build`: images, annotation files per format/split, provenance, every entry checked.
3. Any checker problem: raise :class:`ExportCheckError` naming the records; nothing is published.
4. Remove stray files of an earlier crashed attempt, ``publish`` (files first, ``manifest.json``
   last), then :mod:`registry` records the version. A crash between the manifest and the DB row
   is healed by the rerun, which finds the published manifest with the same content and adopts it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labelloop.config import Settings
from labelloop.db import Database, DatasetVersion, ValidationRun
from labelloop.export.build import Built, VersionBuilder, member_rows
from labelloop.export.card import CardStats, render_card
from labelloop.export.checker import ExportChecker, ExportCheckError
from labelloop.export.formats import SPLITS, file_name
from labelloop.export.images import ImageCopier
from labelloop.export.plan import (
    choose_version,
    export_formats,
    plan_members,
    resolve_validation_run,
)
from labelloop.export.registry import find_version, read_provenance, register_version
from labelloop.export.version import FORMAT, MANIFEST, PROVENANCE, dataset_name, version_prefix
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore, publish
from labelloop.validation import load_passing


@dataclass
class ExportResult:
    """Outcome of one export; ``as_dict()`` is the Airflow asset event's extra."""

    spec: str
    created: bool
    version: str | None = None
    dataset_version_id: int | None = None
    prefix: str | None = None
    uri: str | None = None
    content_hash: str | None = None
    manifest_sha256: str | None = None
    validation_run_id: int | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, dv: DatasetVersion, created: bool) -> ExportResult:
        return cls(
            spec=dv.spec,
            created=created,
            version=dv.version,
            dataset_version_id=dv.id,
            prefix=dv.prefix,
            uri=dv.uri,
            content_hash=dv.content_hash,
            manifest_sha256=dv.manifest_sha256,
            validation_run_id=dv.validation_run_id,
            counts=dict(dv.summary.get("counts", {})),
            reason="" if created else "a version with the same content already exists",
        )


def _manifest(
    spec: TaskSpec,
    settings: Settings,
    version: str,
    content_hash: str,
    run: ValidationRun,
    built: Built,
    **more: Any,
) -> dict[str, Any]:
    e = settings.export
    return {
        "format": FORMAT,
        "spec": spec.name,
        "spec_version": spec.version,
        "version": version,
        "dataset_name": dataset_name(spec.name, version),
        "content_hash": content_hash,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "validation_run_id": run.id,
        "val_fraction": e.val_fraction,
        "counts": {
            "records": sum(built.records.values()),
            "samples": sum(built.samples.values()),
            "train": {"records": built.records["train"], "samples": built.samples["train"]},
            "val": {"records": built.records["val"], "samples": built.samples["val"]},
            "quarantined": run.n_failed,
            **more,
        },
        "formats": {f: {sp: file_name(f, sp) for sp in SPLITS} for f in export_formats(settings)},
        "coordinates": {
            "qwen_coordinate_mode": e.qwen_coordinate_mode,
            "min_pixels": e.min_pixels,
            "max_pixels": e.max_pixels,
            "factor": 28,
            "box_keys": sorted(ExportChecker(spec).box_keys),
        },
    }


def remove_strays(store: ObjectStore, prefix: str, keep: set[str]) -> int:
    """Delete what a crashed attempt left under this (unpublished) prefix and we will not rewrite."""
    removed = 0
    for info in list(store.list(prefix + "/")):
        if info.key[len(prefix) + 1 :] not in keep:
            store.delete(info.key)
            removed += 1
    return removed


def export_dataset(
    db: Database,
    store: ObjectStore,
    settings: Settings,
    spec: TaskSpec,
    *,
    validation_run_id: int | None = None,
    threads: int = 16,
) -> ExportResult:
    """Publish a new version of ``spec`` when the validated records changed; see the module doc."""
    run = resolve_validation_run(db, spec.name, validation_run_id)
    passing = load_passing(store, spec.name, run.id)
    members, content_hash = plan_members(db, spec, settings, passing)
    if not members:
        return ExportResult(
            spec=spec.name,
            created=False,
            validation_run_id=run.id,
            reason="no record passed",
        )
    existing = find_version(db, spec.name, content_hash)
    if existing is not None:
        return ExportResult.of(existing, created=False)

    version, published = choose_version(db, store, spec.name, content_hash)
    prefix = version_prefix(spec.name, version)
    if published is not None:
        manifest_sha = hashlib.sha256(store.get(f"{prefix}/{MANIFEST}")).hexdigest()
        dv, created = register_version(
            db,
            prefix=prefix,
            uri=store.uri(prefix),
            manifest=published,
            manifest_sha256=manifest_sha,
            members=read_provenance(store, prefix),
        )
        return ExportResult.of(dv, created)

    # leftovers of a crashed attempt (no manifest, so never visible) are cleaned before publishing;
    # a fresh prefix needs no listing, which matters with 100k images
    had_leftovers = next(iter(store.list(prefix + "/")), None) is not None
    stats = CardStats(spec)
    with (
        tempfile.TemporaryDirectory(prefix="labelloop-export-") as tmp,
        ImageCopier(store, prefix, threads) as copier,
    ):
        builder = VersionBuilder(
            spec, settings, copier, Path(tmp), members=members, validation_run_id=run.id, stats=stats
        )
        built = builder.run(member_rows(db, spec.name, members), dataset_name(spec.name, version))
        if built.problems:
            raise ExportCheckError(built.problems)
        manifest = _manifest(
            spec,
            settings,
            version,
            content_hash,
            run,
            built,
            images=len(copier.written),
            provenance=dict(sorted(stats.provenance.items())),
            stale_records=len(passing) - len(members),
        )
        readme, plots = render_card(stats, manifest)
        files: dict[str, Path | bytes] = {**built.files, "README.md": readme.encode(), **plots}
        if had_leftovers:
            remove_strays(store, prefix, set(files) | set(copier.written))
        manifest_out: dict[str, bytes] = {}

        def make_manifest(checksums: dict[str, tuple[str, int]]) -> bytes:
            every = {**checksums, **copier.written}
            manifest["files"] = {n: {"sha256": d, "size": sz} for n, (d, sz) in sorted(every.items())}
            manifest_out["bytes"] = (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode()
            return manifest_out["bytes"]

        publish(store, prefix, sorted(files.items()), MANIFEST, make_manifest)
        provenance_path = built.files[PROVENANCE]
        assert isinstance(provenance_path, Path)
        with provenance_path.open(encoding="utf-8") as lines:
            dv, created = register_version(
                db,
                prefix=prefix,
                uri=store.uri(prefix),
                manifest=manifest,
                manifest_sha256=hashlib.sha256(manifest_out["bytes"]).hexdigest(),
                members=(json.loads(line) for line in lines),
            )
    return ExportResult.of(dv, created)
