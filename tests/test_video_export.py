"""Video dataset versions: qwen-vl-finetune "video" samples with <video>, LLaMA-Factory and ms-swift
"videos", the checkers, and the card's duration and event statistics."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from test_export_support import add_record, make_settings

from labelloop.db import Database, Item
from labelloop.export import export_dataset, read_manifest
from labelloop.export.checker import ExportChecker
from labelloop.ingest import ingest
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore
from labelloop.training.check_dataset import check_dataset
from labelloop.validation import validate_spec
from tests.videos import make_video

SPEC = SpecRegistry().get("video_caption")


def _record(i: int, seconds: float) -> dict:
    return {
        "caption": f"Clip {i}: a square slides right and turns green.",
        "events": [
            {"start": 0.0, "end": seconds / 2, "label": "action", "description": "It slides."},
            {"start": seconds / 2, "end": seconds, "label": "change", "description": "It turns green."},
        ],
    }


def test_video_version_is_accepted_by_the_dataset_checker(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, db_url=str(sqlite_db.engine.url))
    store = LocalStore(settings.storage.root)
    src = tmp_path / "src"
    src.mkdir()
    for i, kind in enumerate(["mp4", "webm", "mkv", "mov"]):
        make_video(src / f"v{i}.{kind}", kind=kind, fps=10, frames=20 + 10 * i)
    ingest(sqlite_db, store, settings, str(src))
    with sqlite_db.session() as s:
        items = list(s.scalars(select(Item).order_by(Item.id)))
        for it in items:
            s.expunge(it)
    for i, it in enumerate(items):
        add_record(sqlite_db, it, "video_caption", _record(i, it.meta["duration_s"]))
    summary = validate_spec(sqlite_db, store, settings, SPEC)
    result = export_dataset(sqlite_db, store, settings, SPEC, validation_run_id=summary.validation_run_id)
    assert result.created
    manifest = read_manifest(store, result.prefix)
    assert manifest is not None
    videos = sorted(f for f in manifest["files"] if f.startswith("../videos/"))  # in the spec's pool
    assert videos == sorted(f"../videos/{it.sha256}.{it.ext}" for it in items)
    root = settings.storage.root.resolve() / result.prefix
    qwen = [json.loads(p.read_text()) for p in sorted(root.glob("qwen_*.json"))]
    samples = [s for part in qwen for s in part]
    assert len(samples) == 4
    for s in samples:
        assert set(s) == {"video", "conversations"} and s["video"] in videos
        assert s["conversations"][0]["value"].count("<video>") == 1
        assert json.loads(s["conversations"][1]["value"])["events"]  # JSON answer with the events
    lf = [e for p in root.glob("llamafactory_*.json") for e in json.loads(p.read_text())]
    assert all(set(e) == {"messages", "videos"} for e in lf)
    info = json.loads((root / "dataset_info.json").read_text())
    assert all(v["columns"] == {"messages": "messages", "videos": "videos"} for v in info.values())
    swift = [json.loads(line) for p in root.glob("swift_*.jsonl") for line in p.read_text().splitlines()]
    assert all(set(e) == {"messages", "videos"} for e in swift)
    # the trainer-side checker accepts the version; with a video missing it does not
    checked = [check_dataset(ann, root) for ann in sorted(root.glob("qwen_*.json"))]
    assert [p for _, problems, _ in checked for p in problems] == []
    assert sum(n for n, _, _ in checked) == 4
    (root / samples[0]["video"]).unlink()
    problems = [p for ann in root.glob("qwen_*.json") for p in check_dataset(ann, root)[1]]
    assert any("not found" in p for p in problems)
    card = (root / "README.md").read_text()
    assert "## Video" in card and "4 videos" in card and "8 events, 2.00 per video" in card


def test_the_export_checker_counts_video_placeholders() -> None:
    checker = ExportChecker(SPEC)
    ok = {
        "video": "videos/a.mp4",
        "conversations": [{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "{}"}],
    }
    kw = {"record_id": 1, "page": None, "images_present": {"videos/a.mp4"}, "bounds": (28, 28), "original": (28, 28)}
    assert checker.check("qwen", ok, **kw) == []
    two = {**ok, "conversations": [{"from": "human", "value": "<video><video>\nQ"}, {"from": "gpt", "value": "{}"}]}
    assert "2 <video> placeholder(s) for 1 video(s)" in str(checker.check("qwen", two, **kw))
    image_tag = {
        **ok,
        "conversations": [{"from": "human", "value": "<image>\n<video>"}, {"from": "gpt", "value": "{}"}],
    }
    assert "<image> placeholder in a video sample" in str(checker.check("qwen", image_tag, **kw))
    missing = {**ok, "video": "videos/b.mp4"}
    assert "videos/b.mp4 is not in the version" in str(checker.check("qwen", missing, **kw))
