"""A version built on several worker processes (``labelloop.export.shards``) is the version one
process builds, byte for byte; a shard that saw other records than the plan, a failing worker and
a killed worker each fail the export without publishing anything. SQLite files, local store, real
worker processes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_export_support import (
    VEHICLE_OK,
    add_item,
    add_record,
    image_bytes,
    make_settings,
    update_record,
    vehicle_items,
)

import labelloop.export.shards as shards
from labelloop.db import Database
from labelloop.export import ExportCheckError, ExportError, export_dataset, read_manifest, verify_version
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore
from labelloop.validation import validate_spec

VEHICLE = SpecRegistry().get("vehicle_extraction")
N = 23  # not a multiple of the shard count: uneven shards


def _home(tmp_path: Path, name: str, **export: Any) -> tuple[Any, Database, LocalStore, list[int]]:
    settings = make_settings(tmp_path / name, **export)
    db = Database(settings.db)
    db.upgrade()
    store = LocalStore(settings.storage.root)
    ids = vehicle_items(db, store, N)
    broken = add_item(db, store, image_bytes(1000, 750, seed=500))  # fails validation: quarantined
    add_record(db, broken, "vehicle_extraction", {**VEHICLE_OK, "vehicle_box": [5, 5, 1400, 700]})
    return settings, db, store, ids


def _export(settings: Any, db: Database, store: LocalStore) -> Any:
    summary = validate_spec(db, store, settings, VEHICLE)
    return export_dataset(db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)


def _version_files(store: LocalStore, prefix: str) -> dict[str, bytes]:
    out = {}
    for info in store.list(prefix + "/"):
        data = store.get(info.key)
        name = info.key[len(prefix) + 1 :]
        if name == "manifest.json":  # the creation time, and the card's checksum that shows it
            manifest = json.loads(data)
            manifest.pop("created_at")
            manifest["files"].pop("README.md")
            data = json.dumps(manifest, sort_keys=True).encode()
        elif name == "README.md":
            data = re.sub(rb"Created \S+ by", b"Created (time) by", data)
        out[name] = data
    return out


@pytest.fixture
def job_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of shard jobs of every sharded build in this test."""
    seen: list[int] = []
    real = shards.run_workers

    def spy(jobs: list[shards.ShardJob], workers: int, spec: str) -> list[shards.ShardOutcome]:
        seen.append(len(jobs))
        return real(jobs, workers, spec)

    monkeypatch.setattr(shards, "run_workers", spy)
    return seen


def test_a_sharded_build_writes_the_version_one_process_writes(tmp_path: Path, job_counts: list[int]) -> None:
    one = _home(tmp_path, "one", workers=1)
    three = _home(tmp_path, "three", workers=3, parallel_min_records=1)
    r1 = _export(*one[:3])
    assert job_counts == []
    r3 = _export(*three[:3])
    assert job_counts == [3], "three shards, each in its own worker process"
    assert r1.content_hash == r3.content_hash and r1.counts == r3.counts
    assert r3.counts["records"] == N and r3.counts["quarantined"] == 1 and r3.counts["images_stored"] == N
    files1, files3 = _version_files(one[2], r1.prefix), _version_files(three[2], r3.prefix)
    assert files1.keys() == files3.keys() and {"qwen_train.json", "swift_val.jsonl", "README.md"} <= files1.keys()
    for name in files1:
        assert files1[name] == files3[name], f"{name} differs between one process and three"
    assert verify_version(three[2], r3.prefix) == []
    entries = json.loads(files3["qwen_train.json"]) + json.loads(files3["qwen_val.json"])
    assert len(entries) == N
    manifest = read_manifest(three[2], r3.prefix)
    assert manifest is not None and sum(1 for k in manifest["files"] if k.startswith("../images/")) == N

    # a second sharded version reuses the pool the workers filled
    settings, db, store, ids = three
    update_record(db, ids[5], {**VEHICLE_OK, "brand": "Volvo"})
    r = _export(settings, db, store)
    assert r.version == "v0002" and r.counts["images_stored"] == 0 and job_counts == [3, 3]


def test_problems_found_in_a_worker_refuse_the_version(tmp_path: Path) -> None:
    settings, db, store, _ids = _home(tmp_path, "h", workers=2, parallel_min_records=1)
    bad = add_item(db, store, image_bytes(1000, 750, seed=77))
    bad_id = add_record(db, bad, "vehicle_extraction", dict(VEHICLE_OK))
    data = store.get(bad.storage_key)
    store.put(bad.storage_key, data[:-10])  # truncated after ingest
    with pytest.raises(ExportCheckError) as err:
        _export(settings, db, store)
    assert err.value.record_ids == [bad_id]
    assert not any(store.list("datasets/vehicle_extraction/v0001/"))


def test_a_shard_that_saw_other_records_than_the_plan_fails_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, db, store, ids = _home(tmp_path, "h", workers=2, parallel_min_records=1)
    real = shards.run_workers

    def edit_then_run(jobs: list[shards.ShardJob], workers: int, spec: str) -> list[shards.ShardOutcome]:
        update_record(db, ids[-1], {**VEHICLE_OK, "brand": "BYD"})  # after the plan, before the build
        return real(jobs, workers, spec)

    monkeypatch.setattr(shards, "run_workers", edit_then_run)
    with pytest.raises(ExportError, match=r"changed during the export \(shard 1 \(record ids"):
        _export(settings, db, store)
    assert not any(store.list("datasets/vehicle_extraction/v0001/"))


def test_a_failing_or_killed_worker_fails_the_export_and_a_rerun_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, db, store, _ids = _home(tmp_path, "h", workers=2, parallel_min_records=1)
    summary = validate_spec(db, store, settings, VEHICLE)

    class Killed(subprocess.Popen):  # type: ignore[type-arg]
        """Every worker is killed (SIGKILL) right after it starts."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if "labelloop.export.shard_worker" in args[0]:
                self.kill()

    with monkeypatch.context() as m:
        m.setattr(subprocess, "Popen", Killed)
        with pytest.raises(ExportError, match=r"for shard \d \(record ids .*\) was killed by signal 9; nothing was"):
            export_dataset(db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)
    assert not any(store.list("datasets/vehicle_extraction/v0001/"))

    # a store the worker cannot rebuild (its class is not importable there): the worker's own
    # error, with its traceback, names the shard
    with pytest.raises(ExportError, match=r"exited with status 1.*\n.*Traceback"):
        export_dataset(db, _TestOnlyStore(store.root), settings, VEHICLE, validation_run_id=summary.validation_run_id)

    result = export_dataset(db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)
    assert result.created and result.version == "v0001" and result.counts["records"] == N
    assert verify_version(store, result.prefix) == []


class _TestOnlyStore(LocalStore):
    """Pickles in this process; the worker cannot import this test module, so unpickling fails."""


def test_a_sharded_build_on_postgresql_and_s3(
    tmp_path: Path, pg_url: str, s3_store: Any, s3_settings: Any, job_counts: list[int]
) -> None:
    """Workers re-create the S3 store from its settings and connect to PostgreSQL themselves."""
    settings = make_settings(tmp_path, db_url=pg_url, workers=2, parallel_min_records=1)
    settings.storage = s3_settings
    db = Database(settings.db)
    db.upgrade()
    try:
        vehicle_items(db, s3_store, 9)
        result = _export(settings, db, s3_store)
        assert job_counts == [2]
        assert result.created and result.counts["records"] == 9 and result.counts["images_stored"] == 9
        assert result.uri.startswith("s3://")
        assert verify_version(s3_store, result.prefix) == []
    finally:
        db.dispose()
