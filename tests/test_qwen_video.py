"""Frame sampling follows Qwen2.5-VL's qwen-vl-utils rules (edge cases), and sampled frames are
stored so a rerun does not decode again."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from labelloop.config import IngestSettings
from labelloop.ingest import probe_file
from labelloop.prelabel.qwen_resize import smart_resize
from labelloop.prelabel.qwen_video import (
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    VIDEO_TOTAL_PIXELS,
    SamplingParams,
    decode_frames,
    plan_for_item,
    plan_video,
    sample_frames,
    smart_nframes,
)
from labelloop.storage import LocalStore
from tests.videos import make_video


def upstream_nframes(total: int, video_fps: float, fps: float = 2.0, min_frames: int = 4, max_frames: int = 768) -> int:
    """Line-by-line transcription of qwen_vl_utils.vision_process.smart_nframes (Qwen2.5-VL), the
    oracle: torch isn't installable here, so the upstream function can't be imported."""
    min_f = math.ceil(min_frames / 2) * 2
    max_f = math.floor(min(max_frames, total) / 2) * 2
    n = total / video_fps * fps
    n = min(min(max(n, min_f), max_f), total)
    n = math.floor(n / 2) * 2
    if not (2 <= n <= total):
        raise ValueError(n)
    return n


@pytest.mark.parametrize("video_fps", [1, 7.5, 23.976, 25, 29.97, 30, 59.94, 120])
@pytest.mark.parametrize("seconds", [0.2, 0.5, 1, 2.3, 10, 61, 385, 3600])
def test_nframes_matches_upstream(video_fps: float, seconds: float) -> None:
    total = max(1, round(seconds * video_fps))
    try:
        want = upstream_nframes(total, video_fps)
    except ValueError:
        with pytest.raises(ValueError):
            smart_nframes(total, video_fps, SamplingParams())
        return
    got = smart_nframes(total, video_fps, SamplingParams())
    assert got == want
    assert got % 2 == 0 and 2 <= got <= min(total, 768)


def test_edge_cases() -> None:
    # very short: fewer frames than min_frames -> as many pairs as the video has
    assert plan_video(3, 10, 64, 48).indices == [0, 2]
    with pytest.raises(ValueError):  # one frame: upstream cannot make a temporal pair either
        plan_video(1, 10, 64, 48)
    # 10 s at 30 fps -> 2 fps -> 20 frames spread over the whole clip, first and last included
    p = plan_video(300, 30, 640, 360)
    assert p.nframes == 20 and p.indices[0] == 0 and p.indices[-1] == 299
    assert p.indices == [int(i) for i in np.round(np.linspace(0, 299, 20))]
    assert p.timestamps[1] == pytest.approx(16 / 30)  # linspace step 15.74 -> index 16
    assert p.sample_fps == pytest.approx(2.0)
    # very long: capped at 768 frames; per-frame budget shrinks to total/768*2, sample rate drops
    long = plan_video(2 * 3600 * 30, 30, 1920, 1080)
    assert long.nframes == 768
    cap = max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / 768 * 2), int(VIDEO_MIN_PIXELS * 1.05))
    assert long.resized_width * long.resized_height <= cap
    assert (long.resized_height, long.resized_width) == smart_resize(1080, 1920, 28, VIDEO_MIN_PIXELS, int(cap))
    assert long.sample_fps == pytest.approx(768 / 7200)
    # odd fps (NTSC): timestamps from the real rate, not a rounded one
    ntsc = plan_video(210, 30000 / 1001, 640, 480)
    assert ntsc.nframes == 14
    assert ntsc.timestamps[-1] == pytest.approx(209 * 1001 / 30000)
    # portrait keeps its orientation; short clip budget capped at VIDEO_MAX_PIXELS
    portrait = plan_video(60, 30, 1080, 1920)
    assert portrait.resized_height > portrait.resized_width
    assert portrait.resized_width * portrait.resized_height <= VIDEO_MAX_PIXELS
    assert portrait.resized_width % 28 == 0 and portrait.resized_height % 28 == 0
    # a tiny video is scaled up to the video minimum, like images to theirs
    tiny = plan_video(20, 10, 64, 48)
    assert tiny.resized_width * tiny.resized_height >= VIDEO_MIN_PIXELS


def test_resized_frames_are_a_fixed_point_of_the_processor() -> None:
    """What we send is what the model sees: the processor's resize of our frame is the identity."""
    for w, h, total, fps in [(1920, 1080, 300, 30), (1080, 1920, 9000, 25), (64, 48, 20, 10), (3840, 2160, 216000, 30)]:
        p = plan_video(total, fps, w, h)
        cap = max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / p.nframes * 2), int(VIDEO_MIN_PIXELS * 1.05))
        again = smart_resize(p.resized_height, p.resized_width, 28, VIDEO_MIN_PIXELS, int(cap))
        assert again == (p.resized_height, p.resized_width)


def test_timestamps_round_trip_to_frames() -> None:
    p = plan_video(250, 25, 320, 240)
    for k, t in enumerate(p.timestamps):
        assert round(t * p.video_fps) == p.indices[k]  # time -> source frame -> same time


def test_decoded_frames_are_the_planned_ones_upright(tmp_path: Path) -> None:
    path = make_video(tmp_path / "r.mp4", w=96, h=64, fps=10, frames=30, rotation=90)
    probe = probe_file(path, IngestSettings())
    plan = plan_for_item(probe.meta, probe.width, probe.height)
    assert (plan.width, plan.height) == (64, 96)  # display size after the quarter turn
    frames = decode_frames(path, plan)
    assert len(frames) == plan.nframes == 6
    assert frames[0].size == (plan.resized_width, plan.resized_height)
    assert plan.resized_height > plan.resized_width  # portrait after rotation
    # the red marker (top-left of the coded frame) is bottom-left after a 90 degree CCW turn
    a = np.asarray(frames[0].convert("RGB")).astype(int)
    h, w = a.shape[:2]
    corner = a[h - h // 12 :, : w // 12].reshape(-1, 3).mean(axis=0)
    top_left = a[: h // 12, : w // 12].reshape(-1, 3).mean(axis=0)
    assert corner[0] > 60 and corner[1] < 20, corner
    assert top_left[0] < 20, top_left


def test_frames_are_stored_and_a_rerun_does_not_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "objects")
    path = make_video(tmp_path / "v.mp4", frames=40, fps=10)
    store.put_file("raw/ab/abc.mp4", path)
    probe = probe_file(path, IngestSettings())
    params = SamplingParams()
    plan = plan_for_item(probe.meta, probe.width, probe.height, params)
    first = sample_frames(store, "abc", "raw/ab/abc.mp4", plan, params, tmp_path)
    assert len(first.frames) == plan.nframes == 8
    assert all(store.exists(k) for k in first.keys)

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr("labelloop.prelabel.qwen_video.decode_frames", boom)
    again = sample_frames(store, "abc", "raw/ab/abc.mp4", plan, params, tmp_path)
    assert again.frames == first.frames
    other = SamplingParams(fps=1.0)  # other sampling parameters: their own frame set
    with pytest.raises(AssertionError, match="decoded again"):
        sample_frames(store, "abc", "raw/ab/abc.mp4", plan_for_item(probe.meta, 64, 48, other), other, tmp_path)
