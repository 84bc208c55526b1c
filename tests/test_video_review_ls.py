"""The whole video path with the real parts: PyAV clip -> ingest -> pre-label through the vLLM test
server (video form) -> route -> import into a real Label Studio -> an annotator's browser shows the
video with the pre-annotated timeline (screenshot in test-artifacts/) -> a corrected event syncs
into the correction log -> a dataset version the trainer-side checker accepts."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fixtures_vllm import VLLMTestServer, predictions, run_batch
from sqlalchemy import select

from labelloop.db import Database, FieldCorrection, Item, Record
from labelloop.export import export_dataset
from labelloop.ingest import ingest
from labelloop.prelabel.vllm import VLLMBackend
from labelloop.review.importer import import_pending
from labelloop.review.routing import route_predictions
from labelloop.review.sync import sync_project
from labelloop.specs import SpecRegistry
from labelloop.training.check_dataset import check_dataset
from labelloop.validation import validate_spec
from tests.videos import make_video

pytest_plugins = ["fixtures_labelstudio", "fixtures_vllm"]
pytestmark = [pytest.mark.labelstudio, pytest.mark.browser]

REG = SpecRegistry()
SPEC = REG.get("video_caption")
EVENT = {"start": 1.0, "end": 2.5, "label": "change", "description": "The square turns green."}


def _screenshot_task(label_studio: Any, project_id: int, task_id: int, shot: Path) -> dict[str, Any]:
    from playwright.sync_api import expect

    with label_studio.annotator_page("video", height=1300) as page:
        page.goto(f"{label_studio.url}/projects/{project_id}/data?task={task_id}")
        # the video itself loaded from Label Studio's local-files serving, and decodes
        page.wait_for_function(
            "() => [...document.querySelectorAll('video')].some(v => v.currentSrc.includes('/data/local-files/')"
            " && v.readyState >= 1 && v.videoWidth > 0)",
            timeout=60_000,
        )
        # the pre-annotated caption and the event's label are on screen
        expect(page.get_by_text("A square slides right").first).to_be_visible(timeout=30_000)
        expect(page.get_by_role("treeitem").filter(has_text="change").first).to_be_visible(timeout=30_000)
        # Label Studio's video canvas drops its spinner and draws the timeline only once the
        # video has enough data (readyState 4); before that the screenshot shows a spinner
        page.wait_for_function(
            "() => [...document.querySelectorAll('video')].some(v => v.readyState === 4)"
            " && !document.querySelector('[class*=video-canvas__loading]')",
            timeout=60_000,
        )
        # the timeline row of the pre-annotated event: its label, its frame range and the bar
        row = page.locator(".lsf-keypoints_timeline").filter(has_text="change").first
        expect(row).to_be_visible(timeout=30_000)
        bar = row.locator(".lsf-keypoints__lifespan").first
        expect(bar).to_be_visible(timeout=30_000)
        timeline = page.evaluate(
            "() => { const row = document.querySelector('.lsf-keypoints_timeline');"
            " const bar = row.querySelector('.lsf-keypoints__lifespan').getBoundingClientRect();"
            " const frames = document.querySelector('.lsf-timeline-frames');"
            " return {start: +row.dataset.start, end: +row.dataset.end, bar_px: bar.width,"
            " bar_bottom: bar.bottom, viewport: window.innerHeight,"
            " frame_px: parseFloat(getComputedStyle(frames).getPropertyValue('--frame-size'))}; }"
        )
        info = page.evaluate(
            "() => { const v = [...document.querySelectorAll('video')][0];"
            " return {w: v.videoWidth, h: v.videoHeight, duration: v.duration}; }"
        )
        info["timeline"] = timeline
        page.screenshot(path=str(shot), full_page=True)
    return info


def test_video_loop_with_label_studio(
    label_studio: Any, vllm_server: VLLMTestServer, tmp_path: Path, review_data: Any
) -> None:
    if not review_data.CHROMIUM.exists():
        pytest.fail("Chromium missing: run scripts/ensure-chromium.sh")
    store = label_studio.new_store()
    settings = vllm_server.settings(label_studio.settings(tmp_path, f"sqlite:///{tmp_path / 'curation.db'}", store))
    db = Database(settings.db)
    db.upgrade()
    src = tmp_path / "src"
    src.mkdir()
    make_video(src / "clip.webm", kind="webm", w=320, h=240, fps=10, frames=40, event=(1.0, 2.5))
    (src / "broken.webm").write_bytes((src / "clip.webm").read_bytes()[:300])
    stats = ingest(db, store, settings, str(src))
    assert (stats.new_items, stats.rejected) == (1, 1)
    with db.session() as s:
        item = s.scalars(select(Item)).one()
        s.expunge(item)
    truth = {
        "caption": "A square slides right and turns green.",
        "events": [EVENT],
        "_confidence": {"caption": 0.97, "events": 0.5},
    }
    vllm_server.truth(
        item.sha256, {"sha256": item.sha256, "width": 320, "height": 240, "records": {"video_caption": truth}}
    )
    run_batch(db, store, SPEC, VLLMBackend(settings, store))
    [pred] = predictions(db)
    assert pred.status == "ok" and pred.field_confidence["events"] < settings.routing.default_threshold
    route_predictions(db, settings.routing, SPEC)
    ls = label_studio.client()
    imported = import_pending(db, ls, settings, SPEC, REG.label_config(SPEC), store)
    task = next(iter(ls.tasks.list(project=imported.project_id, include="id,data,predictions", page_size=1)))
    assert task.data["video"].startswith("/data/local-files/") and task.data["fps"] == pytest.approx(10)
    timeline = [r for r in task.predictions[0].result if r["type"] == "timelinelabels"]
    assert [r["value"]["ranges"] for r in timeline] == [[{"start": 11, "end": 25}]]  # 1.0-2.5 s at 10 fps

    shot = review_data.ARTIFACTS / "review-browser-video.png"
    info = _screenshot_task(label_studio, imported.project_id, task.id, shot)
    assert (info["w"], info["h"]) == (320, 240) and info["duration"] == pytest.approx(4.0, abs=0.2)
    # the screenshot shows the event on the timeline: frames 11-25 (1.0-2.5 s at 10 fps), drawn as a
    # bar 14 frames long, inside the viewport that was captured
    tl = info["timeline"]
    assert (tl["start"], tl["end"]) == (11, 25)
    assert tl["frame_px"] > 0 and tl["bar_px"] == pytest.approx((25 - 11) * tl["frame_px"], abs=2)
    assert tl["bar_bottom"] <= tl["viewport"]
    assert shot.stat().st_size > 10_000

    # the annotator moves the event to where they saw it (3.0-3.5 s) and keeps the caption
    annotator = label_studio.signup(f"fix-{uuid.uuid4().hex[:8]}@example.com").client()
    result = copy.deepcopy(annotator.tasks.get(id=str(task.id)).predictions[0].result)
    for r in result:
        if r.get("type") in ("timelinelabels", "textarea") and "ranges" in r["value"]:
            r["value"]["ranges"] = [{"start": 31, "end": 35}]
    annotator.annotations.create(id=task.id, result=result, lead_time=12.0)
    synced = sync_project(db, ls, settings, SPEC)
    assert synced.completed == 1
    with db.session() as s:
        corr = {c.field: c for c in s.scalars(select(FieldCorrection))}
        rec = s.scalars(select(Record)).one()
        assert corr["caption"].changed is False and corr["events"].changed is True
        assert corr["events"].model_value == [EVENT]
        assert rec.record["events"] == [{**EVENT, "start": 3.0, "end": 3.5}] and rec.provenance == "human"

    summary = validate_spec(db, store, settings, SPEC)
    exported = export_dataset(db, store, settings, SPEC, validation_run_id=summary.validation_run_id)
    root = store.root.resolve() / exported.prefix
    checked = [check_dataset(p, root) for p in sorted(root.glob("qwen_*.json"))]
    assert sum(n for n, _, _ in checked) == 1 and [p for _, ps, _ in checked for p in ps] == []
    sample = next(s for p in root.glob("qwen_*.json") for s in json.loads(p.read_text()))
    assert sample["video"] == f"../videos/{item.sha256}.webm"  # in the spec's pool, beside the version
    assert json.loads(sample["conversations"][1]["value"])["events"][0]["start"] == 3.0
    db.dispose()
