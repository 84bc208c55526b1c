"""The pre-label runner with the vLLM backend on a real database: idempotent storage, prompt
versions, bounded concurrency that fills the server, and the Airflow hook and operator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_vllm import VLLMTestServer, ingest_images, make_image, predictions, run_batch, sha256

from labelloop.config import Settings
from labelloop.db import Database
from labelloop.prelabel.factory import make_backend
from labelloop.prelabel.vllm import VLLMBackend
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_vllm"]

SPECS = SpecRegistry()
CAPTION = SPECS.get("caption")


def _images(n: int, seed: int = 0) -> dict[str, bytes]:
    return {f"img{i:03d}.jpg": make_image(200 + 7 * i, 150 + 5 * i, seed=seed + i) for i in range(n)}


def test_idempotent_storage_and_prompt_versions_on_both_databases(
    db: Database, settings: Settings, vllm_server: VLLMTestServer, tmp_path: Path
) -> None:
    """Runs on SQLite and on PostgreSQL."""
    settings = vllm_server.settings(settings)
    store = LocalStore(settings.storage.root)
    images = _images(6)
    bad = sha256(images["img002.jpg"])
    vllm_server.faults(bad, "malformed")
    items = ingest_images(db, store, settings, tmp_path / "in", images)

    first = run_batch(db, store, CAPTION, VLLMBackend(settings, store), concurrency=4)
    assert (first.considered, first.ok, first.failed) == (6, 5, 1)
    assert [f["item_id"] for f in first.as_dict()["failures"]] == [items["img002.jpg"].id]
    rows = predictions(db, spec="caption")
    phash = VLLMBackend(settings, store).prompt_hash
    assert len(rows) == 6 and {r.prompt_hash for r in rows} == {phash(CAPTION)}
    assert all(r.latency_ms and r.prompt_tokens and r.completion_tokens for r in rows)

    requests_before = vllm_server.stats()["requests"]
    again = run_batch(db, store, CAPTION, VLLMBackend(settings, store), concurrency=4)
    assert again.considered == 0 and again.ok == 0, "a rerun predicts nothing new (failed ones stay for review)"
    assert vllm_server.stats()["requests"] == requests_before

    reworded = CAPTION.model_copy(update={"prompt": CAPTION.prompt + "\nWrite in English."})
    assert reworded.prompt_hash != CAPTION.prompt_hash
    second = run_batch(db, store, reworded, VLLMBackend(settings, store), concurrency=4)
    assert (second.considered, second.ok) == (6, 6)
    rows = predictions(db, spec="caption")
    assert len(rows) == 12, "the old predictions are kept"
    for item in items.values():
        mine = [r for r in rows if r.item_id == item.id]
        assert {r.prompt_hash for r in mine} == {phash(CAPTION), phash(reworded)}

    other_model = vllm_server.settings(settings, model_version="qwen2.5-vl-7b-ft-2")
    third = run_batch(db, store, CAPTION, VLLMBackend(other_model, store), limit=2)
    assert third.considered == 2, "a new model version is a new prediction too (limit honoured)"


def test_a_batch_write_that_meets_a_concurrent_run_keeps_the_rest(
    db: Database, settings: Settings, vllm_server: VLLMTestServer, tmp_path: Path
) -> None:
    """Results go in with one multi-row upsert; an ok prediction another run stored meanwhile is
    kept (and counted as skipped), a failed one is replaced (SQLite and PostgreSQL)."""
    from labelloop.prelabel.base import PredictionResult
    from labelloop.prelabel.runner import _store_results

    settings = vllm_server.settings(settings)
    store = LocalStore(settings.storage.root)
    items = list(ingest_images(db, store, settings, tmp_path / "in", _images(4, seed=30)).values())
    backend = VLLMBackend(settings, store)
    ok = PredictionResult(status="ok", record={"caption": "x"}, field_confidence={"caption": 0.9}, latency_ms=1.0)
    other = PredictionResult(status="ok", record={"caption": "y"}, field_confidence={"caption": 0.8})
    down = PredictionResult.failed("connection refused", kind="transient")
    assert _store_results(db, CAPTION, backend, [(items[1], other), (items[2], down)]) == 0  # the "other run"
    assert _store_results(db, CAPTION, backend, [(it, ok) for it in items], attempts={items[2].id: 1}) == 1
    rows = {r.item_id: r for r in predictions(db, spec="caption")}
    assert sorted(rows) == sorted(it.id for it in items)
    assert rows[items[1].id].record == {"caption": "y"}, "an ok prediction is never overwritten"
    retried = rows[items[2].id]
    assert (retried.status, retried.attempts, retried.error, retried.failure_kind) == ("ok", 2, None, None)
    assert all(
        r.record == {"caption": "x"} and r.confidence == 0.9 and r.created_at
        for i, r in rows.items()
        if i != items[1].id
    )


def test_concurrency_fills_the_server_and_never_exceeds_the_bound(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    store = LocalStore(sqlite_settings.storage.root)
    ingest_images(sqlite_db, store, sqlite_settings, tmp_path / "in", _images(40, seed=50))
    slots = vllm_server.config.slots  # 8
    # a concurrency above the server's slots: requests queue at the server, as at a busy GPU
    settings = vllm_server.settings(sqlite_settings, concurrency=12)
    stats = run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), concurrency=12, limit=24)
    s = vllm_server.stats()
    assert stats.ok == 24 and s["max_inflight"] == slots and s["max_queued"] >= 1
    vllm_server.reset()
    settings = vllm_server.settings(sqlite_settings, concurrency=3)
    stats = run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), concurrency=3)
    assert stats.ok == 16 and vllm_server.stats()["max_inflight"] == 3


def test_a_lost_object_is_a_failed_prediction_and_the_rest_is_stored(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    settings = vllm_server.settings(sqlite_settings)
    store = LocalStore(settings.storage.root)
    items = ingest_images(sqlite_db, store, settings, tmp_path / "in", _images(7, seed=70))
    lost = items["img002.jpg"]
    store.delete(lost.storage_key)
    stats = run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), concurrency=2)
    assert (stats.ok, stats.failed, stats.considered) == (6, 1, 7)
    (failed,) = [p for p in predictions(sqlite_db) if p.status == "failed"]
    assert failed.item_id == lost.id and failed.error.startswith(f"could not read {lost.storage_key}")
    assert vllm_server.stats()["requests"] == 6


def test_item_ids_select_the_batch(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    settings = vllm_server.settings(sqlite_settings)
    store = LocalStore(settings.storage.root)
    items = ingest_images(sqlite_db, store, settings, tmp_path / "in", _images(5, seed=90))
    chosen = [items["img001.jpg"].id, items["img003.jpg"].id]
    stats = run_batch(sqlite_db, store, CAPTION, make_backend("vllm", settings, store), item_ids=chosen)
    assert stats.ok == 2 and sorted(p.item_id for p in predictions(sqlite_db)) == sorted(chosen)


# --------------------------------------------------------------------------- Airflow


def test_vllm_hook_reads_the_connection_and_falls_back_to_settings(
    monkeypatch: pytest.MonkeyPatch, vllm_server: VLLMTestServer
) -> None:
    from labelloop_airflow.hooks.vllm import VLLMHook, base_url_of

    base = Settings()
    monkeypatch.delenv("AIRFLOW_CONN_VLLM", raising=False)
    assert VLLMHook().apply(base) == base, "no connection: environment defaults apply"
    host, port = vllm_server.url.removeprefix("http://").split(":")
    conn = {
        "conn_type": "vllm",
        "host": host,
        "port": int(port),
        "schema": "http",
        "password": "s3cret-key",
        "extra": {"model": vllm_server.config.model, "concurrency": 48, "coordinate_mode": "relative_1000"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_VLLM", json.dumps(conn))
    cfg = VLLMHook().apply(base).vllm
    assert cfg.base_url == vllm_server.base_url
    assert cfg.api_key.get_secret_value() == "s3cret-key"
    assert (cfg.concurrency, cfg.coordinate_mode, cfg.timeout_s) == (48, "relative_1000", base.vllm.timeout_s)
    assert VLLMHook().test_connection() == (True, f"serving {vllm_server.config.model}")
    assert base_url_of("vllm.internal", 8000, "https") == "https://vllm.internal:8000/v1"
    assert base_url_of("http://gpu-1:9000/v1/", None, None) == "http://gpu-1:9000/v1"


def test_prelabel_operator_runs_one_batch_and_returns_stats(
    monkeypatch: pytest.MonkeyPatch, vllm_server: VLLMTestServer, sqlite_settings: Settings, tmp_path: Path
) -> None:
    from labelloop_airflow.prelabel import PrelabelOperator

    db = Database(sqlite_settings.db)
    db.upgrade()
    store = LocalStore(sqlite_settings.storage.root)
    ingest_images(db, store, sqlite_settings, tmp_path / "in", _images(3, seed=200))
    monkeypatch.setenv("LABELLOOP_DB__URL", sqlite_settings.db.url_value)
    monkeypatch.setenv("LABELLOOP_STORAGE__ROOT", str(sqlite_settings.storage.root))
    monkeypatch.setenv("LABELLOOP_HOME", str(tmp_path))
    host, port = vllm_server.url.removeprefix("http://").split(":")
    conn = {"conn_type": "vllm", "host": host, "port": int(port), "extra": {"model": vllm_server.config.model}}
    monkeypatch.setenv("AIRFLOW_CONN_VLLM_TEST", json.dumps(conn))
    op = PrelabelOperator(task_id="prelabel", spec="caption", backend="vllm", limit=2, vllm_conn_id="vllm_test")
    out = op.execute(context={})
    assert (out["considered"], out["ok"], out["failed"]) == (2, 2, 0)
    assert json.loads(json.dumps(out)) == out, "the stats are XCom-serialisable"
    assert len(predictions(db, spec="caption")) == 2
    with pytest.raises(ValueError, match="not an image backend"):
        PrelabelOperator(task_id="x", spec="caption", backend="mineru").execute(context={})
    db.dispose()
