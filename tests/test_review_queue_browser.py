"""The review queue a reviewer wants: a spec's project opens on a worst-first tab with file names.

The project is made by the importer (no hand setup): its Data Manager tab "Worst first" orders tasks
by prediction score ascending and shows the original file name and the fields the model was least
sure of, with the sha256 columns hidden; the spec's description is the project's instructions. A
headless Debian Chromium (``scripts/ensure-chromium.sh``) logs in as an annotator, opens the
project's task list, and the rows must come worst first. The screenshot goes to ``test-artifacts/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labelloop.db import Database, ItemAlias
from labelloop.review.importer import import_pending
from labelloop.review.projects import REVIEW_VIEW_TITLE
from labelloop.review.routing import route_predictions
from labelloop.specs import SpecRegistry

pytest_plugins = ["fixtures_labelstudio"]
pytestmark = [pytest.mark.labelstudio]

#: file name -> confidence of its only field; imported in this (non-sorted) order
FILES = {"receipt-mid.png": 0.55, "receipt-high.png": 0.8, "receipt-worst.png": 0.12, "receipt-low.png": 0.3}


def _project(label_studio: Any, tmp_path: Path, review_data: Any) -> tuple[Any, int]:
    store = label_studio.new_store()
    settings = label_studio.settings(tmp_path, f"sqlite:///{tmp_path / 'queue.db'}", store)
    db = Database(settings.db)
    db.upgrade()
    spec = SpecRegistry().get("ocr_lines")
    for seed, (name, conf) in enumerate(FILES.items()):
        item = review_data.add_image_item(db, store, seed)
        with db.session() as s:
            s.add(ItemAlias(item_id=item.id, source_uri=f"file:///data/in/{name}"))
            s.commit()
        record = {"lines": [{"bbox": [40, 40, 300, 80], "text": f"line of {name}"}]}
        review_data.add_prediction(db, spec, item, record, {"lines": conf})
    route_predictions(db, settings.routing, spec)
    ls = label_studio.client()
    stats = import_pending(db, ls, settings, spec, SpecRegistry().label_config(spec), store)
    assert stats.imported == len(FILES)
    db.dispose()
    return ls, stats.project_id


def test_project_has_a_worst_first_tab_instructions_and_file_names(
    label_studio: Any, tmp_path: Path, review_data: Any
) -> None:
    ls, pid = _project(label_studio, tmp_path, review_data)
    project = ls.projects.get(id=pid)
    assert SpecRegistry().get("ocr_lines").description in (project.expert_instruction or "")
    assert project.show_instruction
    views = [v for v in ls.views.list(project=pid) if (v.data or {}).get("title") == REVIEW_VIEW_TITLE]
    assert len(views) == 1 and views[0].data["ordering"] == ["tasks:predictions_score"]
    hidden = views[0].data["hiddenColumns"]["explore"]
    assert "tasks:data.item" in hidden and "tasks:data.external_id" in hidden
    tasks = {t.data["file_name"]: t for t in ls.tasks.list(project=pid, fields="all")}
    assert set(tasks) == set(FILES)
    assert all(t.data["unsure"] == "lines" for t in tasks.values())
    for t in tasks.values():  # nothing an annotator can read says which task is an audit sample
        assert "route" not in t.data and "route" not in (t.meta or {}) and "audit" not in str(t.meta)
    # a second import (of nothing) keeps one tab, not two
    from labelloop.review.projects import ensure_review_view

    assert ensure_review_view(ls, pid, SpecRegistry().get("ocr_lines")) == views[0].id


@pytest.mark.browser
def test_reviewer_sees_the_queue_worst_first(label_studio: Any, tmp_path: Path, review_data: Any) -> None:
    from playwright.sync_api import expect

    _ls, pid = _project(label_studio, tmp_path, review_data)
    shot = review_data.ARTIFACTS / "review-queue-worst-first.png"
    with label_studio.annotator_page("queue", height=900) as page:
        page.goto(f"{label_studio.url}/projects/{pid}/data")
        expect(page.get_by_text(REVIEW_VIEW_TITLE).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("receipt-worst.png").first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("file_name").first).to_be_visible()
        text = page.inner_text("body")
        page.screenshot(path=str(shot), full_page=True)
    worst_first = sorted(FILES, key=FILES.get)
    positions = [text.index(name) for name in worst_first]
    assert positions == sorted(positions), f"rows not worst-first: {worst_first} at {positions}"
    assert "external_id" not in text  # the sha256 columns are hidden
    assert shot.stat().st_size > 10_000
