"""Qwen2.5-VL video frame sampling, exactly as ``qwen_vl_utils.vision_process`` does it.

Upstream (QwenLM/Qwen2.5-VL, ``qwen-vl-utils/src/qwen_vl_utils/vision_process.py``): frames are taken
at ``fps`` (default 2) between ``min_frames`` (4) and ``max_frames`` (768, and never more than the
video has), the count floored to a multiple of ``FRAME_FACTOR`` (2: the temporal patch), indices
``round(linspace(0, total - 1, n))``; every frame is ``smart_resize``d with the *video* pixel budget
(``VIDEO_MIN_PIXELS`` .. ``min(VIDEO_MAX_PIXELS, total_pixels / n * 2)``), and the effective rate
``n / total * video_fps`` is what the processor turns into absolute time (``second_per_grid_ts``).

We sample on the client, as we resize images on the client (see ``qwen_resize``): what we send
*is* what the model sees, and each frame's timestamp is known, so times the model answers in
seconds map back onto the video without guessing the server's loader. One addition: frames are
turned upright by the container's display rotation before resizing, because annotators (Label
Studio plays the video in a browser, which applies it) and the model must see the same picture.

Sampled frames are stored content-addressed under ``frames/<video sha>/<plan key>/`` with an
``index.json`` written last, so a rerun (or the next spec on the same video) does not decode again.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from labelloop.prelabel.qwen_resize import IMAGE_FACTOR, ceil_by_factor, floor_by_factor, round_by_factor, smart_resize

#: upstream constants (Qwen2.5-VL qwen-vl-utils)
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
FRAME_FACTOR = 2
FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
#: upstream's default ``VIDEO_TOTAL_PIXELS`` (a 128K-token context, 90% of it for the video)
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)


@dataclass(frozen=True)
class SamplingParams:
    """The knobs of ``fetch_video`` (one element of a Qwen chat message)."""

    fps: float = FPS
    min_frames: int = FPS_MIN_FRAMES
    max_frames: int = FPS_MAX_FRAMES
    nframes: int | None = None  # fixed count instead of fps (upstream: either, not both)
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int | None = None
    total_pixels: int = VIDEO_TOTAL_PIXELS
    jpeg_quality: int = 90

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def smart_nframes(total_frames: int, video_fps: float, p: SamplingParams) -> int:
    """Port of upstream ``smart_nframes``; raises ValueError where upstream does."""
    if p.nframes is not None:
        nframes = round_by_factor(p.nframes, FRAME_FACTOR)
    else:
        min_frames = ceil_by_factor(p.min_frames, FRAME_FACTOR)
        max_frames = floor_by_factor(min(p.max_frames, total_frames), FRAME_FACTOR)
        n = total_frames / video_fps * p.fps
        n = min(min(max(n, min_frames), max_frames), total_frames)
        nframes = floor_by_factor(n, FRAME_FACTOR)
    if not (FRAME_FACTOR <= nframes <= total_frames):
        raise ValueError(f"nframes should be in [{FRAME_FACTOR}, {total_frames}], got {nframes}")
    return nframes


def frame_indices(total_frames: int, nframes: int) -> list[int]:
    """``torch.linspace(0, total - 1, n).round()``: numpy rounds half to even, as torch does."""
    return [int(i) for i in np.round(np.linspace(0, total_frames - 1, nframes))]


def video_max_pixels(nframes: int, p: SamplingParams) -> int:
    """Per-frame pixel cap of upstream ``fetch_video``: the total budget shared by frame pairs,
    never above VIDEO_MAX_PIXELS nor below 1.05 x min_pixels; a caller's max_pixels only lowers it."""
    cap = max(min(VIDEO_MAX_PIXELS, p.total_pixels / nframes * FRAME_FACTOR), int(p.min_pixels * 1.05))
    return min(p.max_pixels, cap) if p.max_pixels is not None else cap


@dataclass(frozen=True)
class VideoPlan:
    total_frames: int
    video_fps: float
    nframes: int
    indices: list[int]
    timestamps: list[float]  # seconds of each sampled frame, from its index and the stream rate
    sample_fps: float  # what the processor is told (second_per_grid_ts = 2 / sample_fps)
    width: int  # display size (after rotation)
    height: int
    rotation: int
    resized_width: int
    resized_height: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_video(
    total_frames: int, video_fps: float, width: int, height: int, rotation: int = 0, p: SamplingParams | None = None
) -> VideoPlan:
    """Which frames, at which size, from the probe alone (no decoding). ``width``/``height`` are
    the display size, i.e. after rotation."""
    p = p or SamplingParams()
    if total_frames <= 0 or video_fps <= 0:
        raise ValueError(f"video needs frames and a rate, got {total_frames} frames at {video_fps} fps")
    n = smart_nframes(total_frames, video_fps, p)
    idx = frame_indices(total_frames, n)
    max_px = video_max_pixels(n, p)
    rh, rw = smart_resize(height, width, factor=IMAGE_FACTOR, min_pixels=p.min_pixels, max_pixels=max_px)
    return VideoPlan(
        total_frames=total_frames,
        video_fps=video_fps,
        nframes=n,
        indices=idx,
        timestamps=[round(i / video_fps, 6) for i in idx],
        sample_fps=n / max(total_frames, 1e-6) * video_fps,
        width=width,
        height=height,
        rotation=rotation,
        resized_width=rw,
        resized_height=rh,
    )


def plan_for_item(meta: dict[str, Any], width: int, height: int, p: SamplingParams | None = None) -> VideoPlan:
    """Plan from an ingested item's probe (``Item.meta`` of a video)."""
    return plan_video(int(meta["frame_count"]), float(meta["fps"]), width, height, int(meta.get("rotation", 0)), p)


def upright(img: Image.Image, rotation: int) -> Image.Image:
    """Apply the display rotation (counter-clockwise degrees, FFmpeg's convention)."""
    if rotation % 360 == 0:
        return img
    return img.rotate(rotation % 360, expand=True)


def decode_frames(path: Path, plan: VideoPlan) -> list[Image.Image]:
    """Decode once, in order, keeping the planned frames, upright and resized (bicubic, as upstream)."""
    import av

    wanted: dict[int, int] = {}
    for k, i in enumerate(plan.indices):
        wanted.setdefault(i, k)
    out: list[Image.Image | None] = [None] * plan.nframes
    last = max(plan.indices)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for n, frame in enumerate(c.decode(stream)):
            if n in wanted:
                img = upright(frame.to_image(), plan.rotation)
                out[wanted[n]] = img.resize((plan.resized_width, plan.resized_height), Image.Resampling.BICUBIC)
            if n >= last:
                break
    missing = [plan.indices[k] for k, f in enumerate(out) if f is None]
    if missing:
        raise ValueError(f"video decoded fewer frames than probed: frames {missing[:5]} missing")
    # repeated indices (upstream allows them when nframes ~ total) share the decoded frame
    for k, i in enumerate(plan.indices):
        out[k] = out[wanted[i]]
    return [f for f in out if f is not None]


@dataclass
class SampledVideo:
    plan: VideoPlan
    frames: list[bytes]  # JPEG bytes, in order
    keys: list[str]  # where each frame is stored


def frames_prefix(sha: str, p: SamplingParams) -> str:
    return f"frames/{sha}/{p.key()}"


def sample_frames(
    store: Any, sha: str, video_key: str, plan: VideoPlan, p: SamplingParams, tmpdir: Path, data: bytes | None = None
) -> SampledVideo:
    """Sampled frames of a video, from the store when a previous run kept them, else decoded (from
    ``data`` when the caller has the bytes, else from ``video_key``) and stored (frames first,
    ``index.json`` last, so a half-written set is never taken as done)."""
    prefix = frames_prefix(sha, p)
    index_key = f"{prefix}/index.json"
    if store.exists(index_key):
        index = json.loads(store.get(index_key))
        if index.get("plan") == plan.as_dict():
            return SampledVideo(plan=plan, frames=[store.get(k) for k in index["frames"]], keys=index["frames"])
    local = tmpdir / f"{sha}.video"
    if data is not None:
        local.write_bytes(data)
    else:
        store.get_file(video_key, local)
    try:
        images = decode_frames(local, plan)
    finally:
        local.unlink(missing_ok=True)
    frames, keys = [], []
    for k, img in enumerate(images):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=p.jpeg_quality)
        data = buf.getvalue()
        key = f"{prefix}/{k:04d}.jpg"
        store.put(key, data, content_type="image/jpeg")
        frames.append(data)
        keys.append(key)
    store.put(index_key, json.dumps({"plan": plan.as_dict(), "frames": keys}).encode(), content_type="application/json")
    return SampledVideo(plan=plan, frames=frames, keys=keys)


def grid_seconds(plan: VideoPlan) -> float:
    """Seconds per temporal patch (two frames) as the Qwen2.5-VL processor computes it."""
    return FRAME_FACTOR / plan.sample_fps if plan.sample_fps > 0 else math.inf
