"""Register a published version in the curation DB (``dataset_versions`` + members).

Registration comes after the manifest, so the DB never names an unpublished version. If two
exporters race to the same content, the unique (spec, content_hash) key lets one win and the
other return the winner's row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from labelloop.db import Database, DatasetVersion, DatasetVersionRecord
from labelloop.export.version import PROVENANCE
from labelloop.storage import ObjectStore

CHUNK = 2000
_MEMBER_INSERT = insert(DatasetVersionRecord.__table__)  # type: ignore[arg-type]


def find_version(db: Database, spec: str, content_hash: str) -> DatasetVersion | None:
    with db.session() as s:
        stmt = select(DatasetVersion).where(
            DatasetVersion.spec == spec,
            DatasetVersion.content_hash == content_hash,
        )
        return s.scalars(stmt).first()


def read_provenance(store: ObjectStore, prefix: str, name: str = PROVENANCE) -> Iterator[dict[str, Any]]:
    text = store.get(f"{prefix}/{name}").decode("utf-8")
    return (json.loads(line) for line in text.splitlines() if line.strip())


def register_version(
    db: Database,
    *,
    prefix: str,
    uri: str,
    manifest: dict[str, Any],
    manifest_sha256: str,
    members: Iterable[dict[str, Any]],
) -> tuple[DatasetVersion, bool]:
    """(version row, created); ``members`` are provenance rows (record id, hash, split, provenance),
    streamed in chunks (a version may have 100k members)."""
    counts = manifest["counts"]
    try:
        with db.transaction() as s:
            dv = DatasetVersion(
                spec=manifest["spec"],
                version=manifest["version"],
                uri=uri,
                prefix=prefix,
                content_hash=manifest["content_hash"],
                n_records=counts["records"],
                n_train=counts["train"]["records"],
                n_val=counts["val"]["records"],
                validation_run_id=manifest["validation_run_id"],
                manifest_sha256=manifest_sha256,
                summary={k: v for k, v in manifest.items() if k != "files"},
            )
            s.add(dv)
            s.flush()
            it = iter(members)
            while chunk := list(islice(it, CHUNK)):
                rows = [
                    {
                        "dataset_version_id": dv.id,
                        "record_id": m["record_id"],
                        "record_hash": m["record_hash"],
                        "split": m["split"],
                        "provenance": m["provenance"],
                    }
                    for m in chunk
                ]
                # Core executemany: the ORM's bulk insert costs several times more per row
                s.connection().execute(_MEMBER_INSERT, rows)
        return dv, True
    except IntegrityError:
        twin = find_version(db, manifest["spec"], manifest["content_hash"])
        if twin is None:
            raise
        return twin, False
