"""Export the records that passed validation as an immutable, published dataset version.

1. :mod:`plan`: the validation run and its members (streamed); the content hash. Already
   registered: done.
2. :mod:`build`: a second pass over the members: images into the spec's pool (only the new ones
   are stored, see :mod:`images`), annotation files per format/split, provenance (per page for
   documents), every entry checked; the pass must arrive at the planned content hash.
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
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from labelloop.config import Settings
from labelloop.db import Database, DatasetVersion, ValidationRun
from labelloop.export.build import Built, VersionBuilder
from labelloop.export.card import CardStats, render_card
from labelloop.export.checker import ExportChecker, ExportCheckError
from labelloop.export.documents import waiting_documents
from labelloop.export.formats import SPLITS, file_name
from labelloop.export.images import ImagePool
from labelloop.export.plan import (
    ExportError,
    MemberStream,
    choose_version,
    export_formats,
    plan_members,
    resolve_validation_run,
    shard_cuts,
)
from labelloop.export.registry import find_version, read_provenance, register_version
from labelloop.export.shards import build_sharded, build_workers
from labelloop.export.version import FORMAT, MANIFEST, PROVENANCE, dataset_name, version_prefix
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore, publish
from labelloop.storage.base import sha256_file
from labelloop.validation import iter_passing

_decode = msgspec.json.decode


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
        "image_layout": e.image_layout,
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


def write_manifest(
    path: Path, manifest: dict[str, Any], files: dict[str, tuple[str, int]], images: Iterable[tuple[str, str, int]]
) -> Path:
    """The manifest as a file, its ``files`` streamed: the version's own files (sorted), then
    every image in the order the export met them (``../images/...`` in the pool layout)."""
    head = json.dumps(manifest, indent=1, ensure_ascii=False)
    assert head.endswith("}") and "files" not in manifest
    with path.open("w", encoding="utf-8") as f:
        f.write(head[:-1].rstrip() + ',\n "files": {')
        first = True
        for name, (digest, size) in sorted(files.items()):
            f.write(("\n  " if first else ",\n  ") + json.dumps(name) + f': {{"sha256": "{digest}", "size": {size}}}')
            first = False
        for ref, digest, size in images:
            f.write(("\n  " if first else ",\n  ") + json.dumps(ref) + f': {{"sha256": "{digest}", "size": {size}}}')
            first = False
        f.write("\n }\n}\n")
    return path


def remove_strays(store: ObjectStore, prefix: str, keep: set[str] | Callable[[str], bool]) -> int:
    """Delete what a crashed attempt left under this (unpublished) prefix and we will not rewrite."""
    removed = 0
    wanted = keep if callable(keep) else keep.__contains__
    for info in list(store.list(prefix + "/")):
        if not wanted(info.key[len(prefix) + 1 :]):
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
    workers = build_workers(db, store, settings)
    cuts = shard_cuts(db, spec, workers) if workers > 1 else []
    plan = plan_members(db, spec, settings, iter_passing(store, spec.name, run.id), cuts=cuts)
    if not plan.members:
        return ExportResult(
            spec=spec.name,
            created=False,
            validation_run_id=run.id,
            reason="no record passed",
        )
    content_hash = plan.content_hash
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
    layout = settings.export.image_layout
    with tempfile.TemporaryDirectory(prefix="labelloop-export-") as tmp:
        name = dataset_name(spec.name, version)
        if len(cuts) > 1 and plan.members >= settings.export.parallel_min_records:
            built, pool = build_sharded(
                db,
                store,
                settings,
                spec,
                plan=plan,
                cuts=cuts,
                validation_run_id=run.id,
                version_prefix=prefix,
                dataset_name=name,
                tmp=Path(tmp),
                workers=workers,
                threads=threads,
                stats=stats,
            )
        else:
            with ImagePool(
                store, db, spec.name, prefix, Path(tmp) / "images.jsonl", layout=layout, threads=threads
            ) as image_pool:
                builder = VersionBuilder(
                    spec, settings, image_pool, Path(tmp), db=db, validation_run_id=run.id, stats=stats
                )
                members = MemberStream(db, spec, settings, iter_passing(store, spec.name, run.id))
                built = builder.run(members, name)
                pool = image_pool.summary()
            if members.content_hash != content_hash:
                raise ExportError(f"the records of {spec.name} changed during the export; run the export again")
        if built.problems:
            raise ExportCheckError(built.problems, built.n_problems)
        n_waiting, waiting = waiting_documents(db, spec.name) if spec.media == "document" else (0, [])
        manifest = _manifest(
            spec,
            settings,
            version,
            content_hash,
            run,
            built,
            images=pool.count,
            images_stored=pool.created,
            image_bytes_written=pool.bytes_written,
            provenance=dict(sorted(stats.provenance.items())),
            stale_records=plan.stale,
            **({"documents_waiting": n_waiting} if spec.media == "document" else {}),
        )
        readme, plots = render_card(stats, manifest, waiting=waiting)
        files: dict[str, Path | bytes] = {**built.files, "README.md": readme.encode(), **plots}
        if had_leftovers:
            own = set(files)
            if layout == "self_contained":
                own |= {ref for ref, _, _ in pool.entries()}
            remove_strays(store, prefix, own)
        manifest_path = Path(tmp) / MANIFEST

        def make_manifest(checksums: dict[str, tuple[str, int]]) -> Path:
            return write_manifest(manifest_path, manifest, checksums, pool.entries())

        publish(store, prefix, sorted(files.items()), MANIFEST, make_manifest)
        manifest_sha = sha256_file(manifest_path)
        provenance_path = built.files[PROVENANCE]
        assert isinstance(provenance_path, Path)
        with provenance_path.open(encoding="utf-8") as lines:
            dv, created = register_version(
                db,
                prefix=prefix,
                uri=store.uri(prefix),
                manifest=manifest,
                manifest_sha256=manifest_sha,
                members=(_decode(line) for line in lines),
            )
    return ExportResult.of(dv, created)
