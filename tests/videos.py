"""Short test videos made with PyAV: a white square moving across a black frame at known times.

Frame ``i`` (at ``i / fps`` seconds) shows the square at column ``i * step`` and a red marker in the
top-left corner, so a test can tell from the pixels which frame it got and which way is up.
Between ``event`` seconds the square is green instead of white: the "event" a pre-label describes.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

FORMATS = {
    "mp4": ("mp4", "libx264"),
    "mov": ("mov", "libx264"),
    "mkv": ("matroska", "libx264"),
    "webm": ("webm", "libvpx-vp9"),
}


def frame_array(i: int, w: int, h: int, fps: float, event: tuple[float, float] | None) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    side = max(4, min(w, h) // 4)
    x = (i * 2) % max(1, w - side)
    colour = (0, 255, 0) if event and event[0] <= i / fps < event[1] else (255, 255, 255)
    a[(h - side) // 2 : (h - side) // 2 + side, x : x + side] = colour
    a[:4, :4] = (255, 0, 0)
    return a


def make_video(
    path: Path,
    *,
    kind: str = "mp4",
    w: int = 64,
    h: int = 48,
    fps: float = 10,
    frames: int = 20,
    rotation: int | None = None,
    event: tuple[float, float] | None = None,
) -> Path:
    fmt, codec = FORMATS[kind]
    from fractions import Fraction

    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(frame_array(i, w, h, fps, event), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def make_audio_only(path: Path, seconds: float = 0.5) -> Path:
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        n = int(16000 * seconds)
        samples = (np.sin(np.arange(n) / 10) * 3000).astype(np.int16).reshape(1, -1)
        for start in range(0, n, 1024):
            f = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="s16", layout="mono")
            f.sample_rate = 16000
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def make_zero_frames(path: Path) -> Path:
    """A Matroska file with a video stream header and not one frame: a good file cut inside its
    first Cluster, before the first SimpleBlock (FFmpeg writes no file for a stream without
    frames, and a file cut before the Cluster does not open at all)."""
    make_video(path, kind="mkv", frames=5)
    data = path.read_bytes()
    cluster = data.find(bytes.fromhex("1F43B675"))
    block = data.find(b"\xa3", cluster + 4)
    assert 0 < cluster < block, "no Matroska cluster/block found"
    path.write_bytes(data[:block])
    return path
