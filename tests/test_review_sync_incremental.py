"""Incremental sync against a real Label Studio server: what a sync reads, and what it must not miss.

* an annotation stamped at exactly the watermark's timestamp but committed after the sync read
  (made here by moving its stamps in Label Studio's database) is synced by the next run;
* a sync long after the last edit (more than the overlap) leaves its cursor past the newest task,
  and the sync after it reads no task at all: two requests (one empty page, one count);
* Label Studio down: the sync fails with an error naming the URL and the step.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from labelloop.db import Database, Record, ReviewTask
from labelloop.review import sync
from labelloop.review.client import LabelStudioError, make_client
from labelloop.review.importer import import_pending
from labelloop.review.routing import route_predictions
from labelloop.review.sync import get_cursor, get_watermark, sync_key, sync_project
from labelloop.specs import SpecRegistry

pytest_plugins = ["fixtures_labelstudio"]
pytestmark = pytest.mark.labelstudio

REGISTRY = SpecRegistry()
VEHICLE = REGISTRY.get("vehicle_extraction")


def _with_overlap(settings: Any, overlap: float) -> Any:
    return settings.model_copy(
        update={"label_studio": settings.label_studio.model_copy(update={"sync_overlap_s": overlap})}
    )


def _ls_db_time(ts: Any) -> str:
    """A datetime as Label Studio's SQLite stores it (naive UTC text)."""
    return ts.astimezone(sync.dt.UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def test_late_commit_at_the_watermark_is_synced_and_a_settled_noop_reads_nothing(
    label_studio: Any, tmp_path: Path, review_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if label_studio.data_dir is None:
        pytest.fail("set LABELLOOP_TEST_LS_DATA_DIR with a reused server: this test edits its database")
    store = label_studio.new_store()
    settings = label_studio.settings(tmp_path, f"sqlite:///{tmp_path / 'curation.db'}", store)
    db = Database(settings.db)
    db.upgrade()
    ls = label_studio.client()
    review_data.add_vehicle_batch(db, VEHICLE, [0.5, 0.6, 0.7])
    route_predictions(db, settings.routing, VEHICLE)
    pid = import_pending(db, ls, settings, VEHICLE, REGISTRY.label_config(VEHICLE), store).project_id
    with db.session() as s:
        a, b, c = s.scalars(select(ReviewTask).order_by(ReviewTask.id))
    annotator = label_studio.signup(f"ann-{uuid.uuid4().hex[:8]}@example.com").client()
    for rt in (a, b):
        task = annotator.tasks.get(id=str(rt.ls_task_id))
        annotator.annotations.create(id=rt.ls_task_id, result=task.predictions[0].result)

    # 1. a sync while reviewers work (overlap 30 s: the edits are seconds old)
    busy = _with_overlap(settings, 30.0)
    first = sync_project(db, ls, busy, VEHICLE)
    assert (first.annotations_new, first.completed) == (2, 2)
    key = sync_key(pid)
    watermark = get_watermark(db, key)
    assert watermark is not None and get_cursor(db, key, 30.0) < watermark  # the unsure seconds stay

    # 2. an annotation on c stamped at exactly the watermark, committed after that read
    task_c = annotator.tasks.get(id=str(c.ls_task_id))
    late = annotator.annotations.create(id=c.ls_task_id, result=task_c.predictions[0].result)
    with sqlite3.connect(label_studio.data_dir / "label_studio.sqlite3", timeout=30) as con:
        stamp = _ls_db_time(watermark)
        con.execute("UPDATE task SET updated_at = ? WHERE id = ?", (stamp, c.ls_task_id))
        con.execute("UPDATE task_completion SET updated_at = ? WHERE id = ?", (stamp, late.id))
    second = sync_project(db, ls, busy, VEHICLE)
    assert (second.annotations_new, second.completed) == (1, 1), second.as_dict()
    assert second.annotations_known == 2  # a and b re-read in the unsure window, deduplicated
    with db.session() as s:
        assert s.scalar(select(Record).where(Record.item_id == c.item_id)).provenance == "human"  # type: ignore[union-attr]

    # 3. a sync long after the last edit settles the cursor past every task ...
    quiet = _with_overlap(settings, 0.5)
    time.sleep(1.6)
    third = sync_project(db, ls, quiet, VEHICLE)
    assert third.annotations_new == 0 and third.annotations_known == 3
    cursor = get_cursor(db, key, 0.5)
    assert cursor is not None and cursor > watermark

    # ... and the next one reads no task: one empty page and one count (deletion check)
    calls: list[str] = []
    real = sync.request

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(sync, "request", counting)
    noop = sync_project(db, ls, quiet, VEHICLE)
    assert (noop.tasks_seen, noop.annotations_known, noop.annotations_new, noop.deleted) == (0, 0, 0, 0)
    assert len(calls) == 2, calls
    db.dispose()


def test_sync_with_label_studio_down_names_the_url_and_the_step(
    label_studio: Any, tmp_path: Path, review_data: Any
) -> None:
    store = label_studio.new_store()
    settings = label_studio.settings(tmp_path, f"sqlite:///{tmp_path / 'curation.db'}", store)
    db = Database(settings.db)
    db.upgrade()
    ls = make_client("http://127.0.0.1:9", label_studio.token, verify=False)  # nothing listens there
    with pytest.raises(
        LabelStudioError, match=r"list tasks of project 7 .*unreachable at http://127\.0\.0\.1:9/api/tasks/"
    ):
        sync_project(db, ls, settings, VEHICLE, project_id=7)
    with pytest.raises(LabelStudioError, match=r"connect to Label Studio: unreachable at http://127\.0\.0\.1:9"):
        make_client("http://127.0.0.1:9", label_studio.token)
    db.dispose()
