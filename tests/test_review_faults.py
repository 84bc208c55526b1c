"""Label Studio stopped in the middle of an import, then started again (issue 11).

A server of this test's own (the session's shared one cannot be stopped): 1,000 pending rows in
chunks of 125 (the ramp's first), then 250; the server is killed (SIGKILL of its process group)
while the second chunk is in its hands. The import fails with an error naming the URL and the
step; after a restart on the same data directory, a rerun leaves exactly 1,000 tasks, one per
row, whether Label Studio had committed that chunk before it died or not.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from labelloop.config import DatabaseSettings, LabelStudioSettings, RoutingSettings, Settings, StorageSettings
from labelloop.db import Database, ReviewTask
from labelloop.review import importer
from labelloop.review.client import LabelStudioError, make_client
from labelloop.review.importer import import_pending
from labelloop.review.routing import route_predictions
from labelloop.review.server import LocalLabelStudio
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_labelstudio"]
pytestmark = pytest.mark.labelstudio

REPO = Path(__file__).resolve().parents[1]
REGISTRY = SpecRegistry()
VEHICLE = REGISTRY.get("vehicle_extraction")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[LocalLabelStudio]:
    server = LocalLabelStudio(
        executable=REPO / ".venv-ls" / "bin" / "label-studio",
        data_dir=tmp_path / "ls-data",
        local_files_root=tmp_path / "ls-files",
    )
    server.start(timeout=300)
    try:
        yield server
    finally:
        server.stop()


def _count(server: LocalLabelStudio, pid: int) -> tuple[int, int]:
    """(tasks, distinct external ids) in the project."""
    ls = make_client(server.url, server.token)
    ext = [t.data["external_id"] for t in ls.tasks.list(project=pid, include="id,data", page_size=1000)]
    return len(ext), len(set(ext))


def test_label_studio_killed_mid_import_fails_naming_url_and_step_then_a_rerun_converges(
    own_server: LocalLabelStudio, tmp_path: Path, review_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(own_server.local_files_root / "objects")
    settings = Settings(
        home=tmp_path,
        db=DatabaseSettings(url=f"sqlite:///{tmp_path / 'curation.db'}"),
        storage=StorageSettings(backend="local", root=store.root),
        routing=RoutingSettings(use_manual_thresholds=True),
        label_studio=LabelStudioSettings(
            url=own_server.url,
            token=own_server.token,
            local_files_root=own_server.local_files_root,
            import_chunk=250,
            project_prefix="kill",
        ),
    )
    db = Database(settings.db)
    db.upgrade()
    review_data.add_vehicle_batch(db, VEHICLE, [0.5] * 1000)
    assert route_predictions(db, settings.routing, VEHICLE).review == 1000
    config = REGISTRY.label_config(VEHICLE)

    real = importer.post_tasks
    posts: list[int] = []

    def kill_during_second_chunk(ls: Any, pid: int, body: bytes, count: int, timeout: float) -> list[int]:
        posts.append(count)
        if len(posts) == 2:  # the server dies while this chunk is in its hands
            threading.Timer(0.15, os.killpg, (own_server.proc.pid, signal.SIGKILL)).start()  # type: ignore[union-attr]
        return real(ls, pid, body, count, timeout)

    monkeypatch.setattr(importer, "post_tasks", kill_during_second_chunk)
    ls = make_client(own_server.url, own_server.token)
    with pytest.raises(LabelStudioError) as err:
        import_pending(db, ls, settings, VEHICLE, config, store)
    message = str(err.value)
    assert own_server.url in message, message
    assert "import 250 tasks into project" in message or "unreachable" in message, message
    with db.session() as s:
        rows = list(s.scalars(select(ReviewTask).order_by(ReviewTask.id)))
    assert sum(r.status == "imported" for r in rows) == 125  # only the first chunk (the ramp's 125) committed
    pid = next(r.ls_project_id for r in rows if r.ls_project_id)

    # the rerun while the server is still down fails the same way, and changes nothing
    monkeypatch.setattr(importer, "post_tasks", real)
    with pytest.raises(LabelStudioError, match=rf"unreachable at {own_server.url}"):
        import_pending(
            db, make_client(own_server.url, own_server.token, verify=False), settings, VEHICLE, config, store
        )

    own_server.proc.wait(10)  # type: ignore[union-attr]
    own_server.start(timeout=300)  # same data directory, same port, same token
    stats = import_pending(db, make_client(own_server.url, own_server.token), settings, VEHICLE, config, store)
    assert stats.pending == 875 and stats.imported + stats.already_there == 875
    # Label Studio creates a chunk's tasks and predictions in one transaction (tasks/serializers.py):
    # the killed chunk is there whole (found by the read above our newest stored id) or not at all
    assert stats.already_there in (0, 250), stats.as_dict()
    assert _count(own_server, pid) == (1000, 1000)
    with db.session() as s:
        rows = list(s.scalars(select(ReviewTask)))
    assert {r.status for r in rows} == {"imported"} and len({r.ls_task_id for r in rows}) == 1000
    db.dispose()
