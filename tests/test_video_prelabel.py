"""Video pre-labels through the vLLM test server in vLLM's video forms (Qwen2.5-VL and InternVL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_vllm import VLLMTestServer, predictions, run_batch

from labelloop.config import Settings
from labelloop.db import Database, Item
from labelloop.ingest import ingest
from labelloop.prelabel.qwen_video import frames_prefix
from labelloop.prelabel.vllm import VLLMBackend
from labelloop.prelabel.vllm.video import sampling_params
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore
from tests.videos import make_video

pytest_plugins = ["fixtures_vllm"]

REG = SpecRegistry()
EVENT = (1.0, 2.5)  # the square is green between these seconds


def _ingest(db: Database, settings: Settings, tmp_path: Path) -> tuple[LocalStore, Item]:
    src = tmp_path / "src"
    src.mkdir()
    make_video(src / "clip.mp4", w=96, h=64, fps=10, frames=40, event=EVENT)
    store = LocalStore(settings.storage.root)
    ingest(db, store, settings, str(src))
    with db.session() as s:
        item = s.query(Item).one()
        s.expunge(item)
    return store, item


def _truth(item: Item, events: list[dict]) -> dict:
    return {
        "sha256": item.sha256,
        "width": item.width,
        "height": item.height,
        "records": {
            "video_caption": {
                "caption": "A square slides right and turns green for a while.",
                "events": events,
                "_confidence": {"caption": 0.97, "events": 0.6},
            }
        },
    }


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl"])
def test_video_caption_prelabel_in_the_family_request_form(
    sqlite_db: Database, sqlite_settings: Settings, vllm_server: VLLMTestServer, tmp_path: Path, family: str
) -> None:
    store, item = _ingest(sqlite_db, sqlite_settings, tmp_path)
    ev = {"start": EVENT[0], "end": EVENT[1], "label": "change", "description": "The square turns green."}
    vllm_server.truth(item.sha256, _truth(item, [ev]))
    settings = vllm_server.settings(sqlite_settings, video_family=family)
    spec = REG.get("video_caption")
    stats = run_batch(sqlite_db, store, spec, VLLMBackend(settings, store))
    assert stats.ok == 1, stats
    [pred] = predictions(sqlite_db)
    assert pred.status == "ok", pred.error
    assert pred.record["events"] == [ev]
    assert pred.field_confidence["caption"] > pred.field_confidence["events"]
    video = pred.confidence_detail["video"]
    # 4 s at 10 fps sampled at 2 fps: 8 frames; their times are the plan's
    assert video["frames"] == 8 and video["timestamps"][0] == 0.0 and video["timestamps"][-1] == pytest.approx(3.9)
    st = vllm_server.stats()
    if family == "qwen2_5_vl":
        assert st["last_media"] == {"images": 0, "video_frames": [8]}
        assert st["last_request"]["mm_processor_kwargs"]["fps"] == pytest.approx(video["sample_fps"])
    else:
        assert st["last_media"] == {"images": 8, "video_frames": []}
        assert "mm_processor_kwargs" not in st["last_request"]
    # the size the server saw is the planned, processor-ready frame size
    assert st["sizes"][item.sha256] == video["resized"]
    # frames are kept: a second spec on the same video does not decode it again
    assert store.exists(f"{frames_prefix(item.sha256, sampling_params(VLLMBackend(settings, store)))}/index.json")


def test_event_past_the_end_of_the_video_fails_with_its_reason(
    sqlite_db: Database, sqlite_settings: Settings, vllm_server: VLLMTestServer, tmp_path: Path
) -> None:
    store, item = _ingest(sqlite_db, sqlite_settings, tmp_path)
    bad = {"start": 3.0, "end": 9.0, "label": "other", "description": "After the video ended."}
    vllm_server.truth(item.sha256, _truth(item, [bad]))
    settings = vllm_server.settings(sqlite_settings)
    run_batch(sqlite_db, store, REG.get("video_caption"), VLLMBackend(settings, store))
    [pred] = predictions(sqlite_db)
    assert pred.status == "failed"
    assert "events[0]: end 9.0 s is past the video's end (4.000 s)" in pred.error
    assert pred.record is None


def test_the_test_server_rejects_frames_of_different_sizes(vllm_server: VLLMTestServer) -> None:
    import base64
    import io

    import httpx
    from PIL import Image

    def jpg(w: int, h: int) -> str:
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, "JPEG")
        return base64.b64encode(buf.getvalue()).decode()

    url = f"data:video/jpeg;base64,{jpg(56, 56)},{jpg(28, 56)}"
    body = {
        "model": vllm_server.config.model,
        "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}]}],
    }
    r = httpx.post(f"{vllm_server.base_url}/chat/completions", json=body, timeout=10)
    assert r.status_code == 400 and "differ in size" in r.text


def test_backend_choice_for_video_specs() -> None:
    from labelloop.prelabel.plan import resolve_backend_name

    assert resolve_backend_name(REG.get("video_qa"), "vllm") == "vllm"
    with pytest.raises(ValueError, match="no offline CPU backend for video"):
        resolve_backend_name(REG.get("video_caption"), "cpu")
    with pytest.raises(ValueError, match="not a video backend"):
        resolve_backend_name(REG.get("video_caption"), "rapidocr")
