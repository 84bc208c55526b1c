"""An annotator opens an imported task in Label Studio's labeling UI: pre-annotations are on screen.

Headless Debian Chromium (``scripts/ensure-chromium.sh``) driven by Playwright, never a browser
downloaded by ``playwright install``. The annotator logs in through the /user/login form, opens the
task, and we check that the image really loaded (served as a local file by Label Studio) and that
the imported regions and their transcriptions are in the page. A screenshot is kept under
``test-artifacts/`` for a human to look at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageOps

from labelloop.db import Database
from labelloop.review.importer import import_pending
from labelloop.review.routing import route_predictions
from labelloop.specs import SpecRegistry

pytest_plugins = ["fixtures_labelstudio"]
pytestmark = [pytest.mark.labelstudio, pytest.mark.browser]

LINES = ["BROWSER CHECK 4711", "SECOND LINE 0815"]


def test_annotator_sees_pre_annotations(label_studio: Any, sample_data: Path, tmp_path: Path, review_data: Any) -> None:
    from playwright.sync_api import expect

    store = label_studio.new_store()
    settings = label_studio.settings(tmp_path, f"sqlite:///{tmp_path / 'curation.db'}", store)
    db = Database(settings.db)
    db.upgrade()
    spec = SpecRegistry().get("ocr_lines")
    path = sample_data / "images" / "qwen-ocr_example2.jpg"
    with Image.open(path) as im:
        width, height = ImageOps.exif_transpose(im).size
    item = review_data.add_image_item(db, store, 0, width=width, height=height, data=path.read_bytes(), ext="jpg")
    w, h = item.width or 0, item.height or 0
    record = {
        "lines": [
            {"bbox": [int(w * 0.1), int(h * 0.1), int(w * 0.6), int(h * 0.16)], "text": LINES[0]},
            {"bbox": [int(w * 0.1), int(h * 0.3), int(w * 0.8), int(h * 0.36)], "text": LINES[1]},
        ]
    }
    review_data.add_prediction(
        db, spec, item, record, {"lines": 0.42}, detail={"fields": {"lines": {"scores": [0.42, 0.77]}}}
    )
    route_predictions(db, settings.routing, spec)
    ls = label_studio.client()
    stats = import_pending(db, ls, settings, spec, SpecRegistry().label_config(spec), store)
    task = next(iter(ls.tasks.list(project=stats.project_id, include="id", page_size=1)))
    shot = review_data.ARTIFACTS / "review-browser-task.png"
    with label_studio.annotator_page("browser") as page:
        page.goto(f"{label_studio.url}/projects/{stats.project_id}/data?task={task.id}")
        # the regions' transcriptions are listed (TextArea displayMode="region-list")
        for text in LINES:
            expect(page.locator(f"textarea:text-is('{text}'), :text('{text}')").first).to_be_visible(timeout=60_000)
        # the image itself loaded, from Label Studio's local-files serving
        page.wait_for_function(
            "() => [...document.images].some(i => i.src.includes('/data/local-files/') && i.naturalWidth > 0)",
            timeout=30_000,
        )
        shown = page.eval_on_selector_all("textarea", "els => els.map(e => e.value)")
        natural = page.evaluate(
            "() => [...document.images].filter(i => i.src.includes('/data/local-files/'))"
            ".map(i => [i.naturalWidth, i.naturalHeight])"
        )
        page.screenshot(path=str(shot), full_page=True)
    assert [t for t in shown if t in LINES] == LINES  # each region's transcription, in order
    assert [w, h] in natural
    assert shot.stat().st_size > 10_000
    db.dispose()
