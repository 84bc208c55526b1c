"""Integrity under ordinary faults, against the real servers (issue 11).

A model outage, a bad annotation, two overlapping importers: nothing lost, nothing duplicated,
nothing faked, a clear error, and a rerun converges. Exact counts throughout.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from fixtures_vllm import VLLMTestServer, make_image, predictions, run_batch, start_server
from sqlalchemy import select, update
from vllm_server import ModelServer, ServerConfig

from labelloop.config import PrelabelSettings, Settings
from labelloop.db import Database, Prediction, ReviewTask
from labelloop.ingest.run import ingest
from labelloop.prelabel.runner import PrelabelBatchError, count_pending
from labelloop.prelabel.vllm import VLLMBackend
from labelloop.review.routing import route_predictions
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_vllm"]

SPECS = SpecRegistry()
CAPTION = SPECS.get("caption")


# --------------------------------------------------------------------------- model server outage


def test_model_server_killed_mid_batch_then_rerun_every_item_ok_no_empty_review_task(
    sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    """200 items; the server dies after 64 answers. The run stops early (it does not burn the
    other 136 items in a second), fails loudly, and routes nothing empty; a rerun after the
    server is back predicts every missing or failed item, and all 200 are ok."""
    config = ServerConfig(slots=8, latency_ms=5, coordinate_mode="absolute_resized")
    server, stop = start_server(config)
    port = int(server.url.rsplit(":", 1)[1])
    settings = server.settings(sqlite_settings, max_retries=2)
    store = LocalStore(settings.storage.root)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(200):
        (folder / f"img{i:03d}.jpg").write_bytes(make_image(64 + i % 7, 48 + i % 5, seed=i))
    ingest(sqlite_db, store, settings, str(folder))
    policy = PrelabelSettings(retry_backoff_s=0.0, outage_after=10)

    answered = 0

    def kill_after_64(_item_id: int, res: Any) -> None:
        nonlocal answered
        if res.status != "ok":
            return
        answered += 1
        if answered == 64:
            stop()  # connections are aborted; nothing listens on the port any more

    with pytest.raises(PrelabelBatchError, match="stopped early, 10 transient failures in a row") as err:
        run_batch(
            sqlite_db,
            store,
            CAPTION,
            VLLMBackend(settings, store),
            concurrency=8,
            progress=kill_after_64,
            policy=policy,
        )
    stats = err.value.stats
    assert settings.vllm.base_url in str(err.value) and "chat completion" in str(err.value)
    assert stats.ok >= 64 and stats.transient >= 10 and stats.permanent == 0
    assert stats.considered < 100, "stopped early instead of failing every remaining item"
    rows = predictions(sqlite_db, spec="caption")
    failed = [r for r in rows if r.status == "failed"]
    assert len(failed) == stats.transient and all(r.failure_kind == "transient" and r.attempts == 1 for r in failed)
    assert all("connection error" in r.error or "timeout" in r.error for r in failed)

    # routing sends no failed prediction to review: no empty task first in the queue
    routed = route_predictions(sqlite_db, settings.routing, CAPTION)
    assert routed.considered == stats.ok
    with sqlite_db.session() as s:
        tasks = list(s.scalars(select(ReviewTask)))
    assert {t.prediction_id for t in tasks} <= {r.id for r in rows if r.status == "ok"}

    # the server is back (same address); the rerun retries the failed and takes the untried
    backend = VLLMBackend(settings, store)
    assert count_pending(sqlite_db, CAPTION, backend, policy=policy) == 200 - stats.ok
    again = ModelServer(config, "127.0.0.1", port)
    thread = again.start_thread()
    try:
        rerun = run_batch(sqlite_db, store, CAPTION, backend, concurrency=8, policy=policy)
    finally:
        again.stop()
        thread.join(10)
    assert (rerun.considered, rerun.ok, rerun.failed, rerun.retried) == (200 - stats.ok, 200 - stats.ok, 0, len(failed))
    rows = predictions(sqlite_db, spec="caption")
    assert len(rows) == 200 and {r.status for r in rows} == {"ok"}, "one row per item, every one ok"
    assert sorted(r.attempts for r in rows if r.attempts > 1) == [2] * len(failed)
    routed = route_predictions(sqlite_db, settings.routing, CAPTION)
    assert routed.considered == 200 - stats.ok
    with sqlite_db.session() as s:
        tasks = list(s.scalars(select(ReviewTask)))
    assert len(tasks) == 200 and {t.route for t in tasks} <= {"auto", "review", "audit"}
    assert not [t for t in tasks if t.reason.startswith("prediction failed")]


def test_transient_failures_are_retried_with_backoff_up_to_a_limit_permanent_on_request(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    from fixtures_vllm import ingest_images, sha256

    settings = vllm_server.settings(sqlite_settings, max_retries=0)
    store = LocalStore(settings.storage.root)
    images = {f"i{i}.jpg": make_image(80 + i, 60, seed=300 + i) for i in range(5)}
    flaky, broken = sha256(images["i0.jpg"]), sha256(images["i1.jpg"])
    vllm_server.faults(flaky, *["500"] * 10)
    vllm_server.faults(broken, "malformed")
    items = ingest_images(sqlite_db, store, settings, tmp_path / "in", images)
    policy = PrelabelSettings(max_attempts=3, retry_backoff_s=3600.0, max_transient_failure_share=1.0)
    first = run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), policy=policy)
    assert (first.ok, first.transient, first.permanent) == (3, 1, 1)
    # backoff: an hour before the next attempt, so an immediate rerun does nothing
    assert run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), policy=policy).considered == 0
    (row,) = predictions(sqlite_db, item_id=items["i0.jpg"].id)
    assert 3590 < (row.retry_after - row.created_at).total_seconds() < 3610

    def an_hour_later() -> None:
        with sqlite_db.session() as s:
            past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            s.execute(update(Prediction).where(Prediction.retry_after.is_not(None)).values(retry_after=past))
            s.commit()

    no_wait = policy.model_copy(update={"retry_backoff_s": 0.0})
    an_hour_later()
    for attempt in (2, 3):
        run = run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), policy=no_wait)
        assert (run.considered, run.transient, run.retried) == (1, 1, 1)
        (row,) = predictions(sqlite_db, item_id=items["i0.jpg"].id)
        assert (row.status, row.attempts) == ("failed", attempt)
    # the limit: three attempts, then only on request
    assert run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), policy=no_wait).considered == 0
    vllm_server.reset()  # the server is healthy again
    on_request = run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store), policy=no_wait, retry_failed=True)
    assert (on_request.considered, on_request.ok, on_request.retried) == (2, 2, 2)
    rows = {r.item_id: r for r in predictions(sqlite_db, spec="caption")}
    assert len(rows) == 5 and {r.status for r in rows.values()} == {"ok"}
    assert rows[items["i0.jpg"].id].attempts == 4 and rows[items["i1.jpg"].id].attempts == 2


def test_a_batch_mostly_failing_for_transient_reasons_fails_loudly(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    from fixtures_vllm import ingest_images, sha256

    settings = vllm_server.settings(sqlite_settings, max_retries=0)
    store = LocalStore(settings.storage.root)
    images = {f"j{i}.jpg": make_image(90 + i, 60, seed=400 + i) for i in range(10)}
    for name in ("j0.jpg", "j3.jpg"):  # 2 of 10 > 10%: the output is materially missing
        vllm_server.faults(sha256(images[name]), "500")
    ingest_images(sqlite_db, store, settings, tmp_path / "in", images)
    with pytest.raises(PrelabelBatchError, match="2 of 10 items failed for transient reasons"):
        run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store))
    assert len(predictions(sqlite_db, status="ok")) == 8, "what finished is stored"
