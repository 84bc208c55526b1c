"""Video ingest: PyAV probe (duration, fps, frames, size, codec, rotation) and rejects with reasons."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from labelloop.config import IngestSettings, Settings
from labelloop.db import Database, Item, Reject
from labelloop.ingest import Rejected, RejectReason, ingest, probe_file
from labelloop.storage import LocalStore
from tests.videos import make_audio_only, make_video, make_zero_frames


@pytest.mark.parametrize(
    ("kind", "mime", "codec"),
    [
        ("mp4", "video/mp4", "h264"),
        ("mov", "video/quicktime", "h264"),
        ("mkv", "video/x-matroska", "h264"),
        ("webm", "video/webm", "vp9"),
    ],
)
def test_probe_reads_duration_rate_frames_size_codec(tmp_path: Path, kind: str, mime: str, codec: str) -> None:
    path = make_video(tmp_path / f"v.{kind}", kind=kind, w=80, h=48, fps=12.5, frames=25)
    p = probe_file(path, IngestSettings())
    assert (p.media_type, p.mime, p.ext) == ("video", mime, kind)
    assert (p.width, p.height) == (80, 48)
    assert p.meta["frame_count"] == 25
    assert p.meta["fps"] == pytest.approx(12.5)
    assert p.meta["duration_s"] == pytest.approx(2.0, abs=1e-3)
    assert p.meta["codec"] == codec
    assert p.meta["rotation"] == 0


@pytest.mark.parametrize(("rotation", "size"), [(90, (48, 80)), (-90, (48, 80)), (180, (80, 48))])
def test_rotation_swaps_display_size(tmp_path: Path, rotation: int, size: tuple[int, int]) -> None:
    path = make_video(tmp_path / "r.mp4", w=80, h=48, rotation=rotation)
    p = probe_file(path, IngestSettings())
    assert p.meta["rotation"] == rotation % 360
    assert (p.width, p.height) == size
    assert p.meta["coded_size"] == [80, 48]


def _reason(path: Path, settings: IngestSettings | None = None) -> str:
    with pytest.raises(Rejected) as e:
        probe_file(path, settings or IngestSettings())
    return e.value.reason


def test_broken_videos_are_rejected_with_reasons(tmp_path: Path) -> None:
    good = make_video(tmp_path / "good.mp4", frames=30).read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(good[: len(good) // 2])  # moov atom (at the end) is lost
    webm = make_video(tmp_path / "w.webm", kind="webm", frames=30).read_bytes()
    (tmp_path / "trunc_head.webm").write_bytes(webm[:200])  # cut inside the header
    assert _reason(tmp_path / "trunc.mp4") == RejectReason.CORRUPT
    assert _reason(tmp_path / "trunc_head.webm") == RejectReason.CORRUPT
    assert _reason(make_audio_only(tmp_path / "audio.mp4")) == RejectReason.VIDEO_NO_STREAM
    assert _reason(make_zero_frames(tmp_path / "zero.mkv")) == RejectReason.VIDEO_NO_FRAMES
    long = make_video(tmp_path / "long.mp4", fps=10, frames=40)
    assert _reason(long, IngestSettings(max_video_seconds=3.5)) == RejectReason.VIDEO_TOO_LONG
    big = make_video(tmp_path / "big.mp4", w=64, h=48)
    assert _reason(big, IngestSettings(max_video_pixels=64 * 48 - 1)) == RejectReason.VIDEO_TOO_LARGE
    probe_file(long, IngestSettings(max_video_seconds=4.0))  # at the limit: accepted


def test_ingest_registers_videos_and_records_rejects(
    sqlite_db: Database, sqlite_settings: Settings, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_video(src / "a.mp4", frames=20)
    make_video(src / "b.webm", kind="webm", frames=10)
    good = (src / "a.mp4").read_bytes()
    (src / "copy-of-a.mov").write_bytes(good)  # same bytes, other name: one item, two aliases
    (src / "trunc.mp4").write_bytes(good[: len(good) // 2])
    make_audio_only(src / "audio.mp4")
    make_zero_frames(src / "zero.mkv")
    store = LocalStore(sqlite_settings.storage.root)
    stats = ingest(sqlite_db, store, sqlite_settings, str(src))
    assert (stats.new_items, stats.known, stats.rejected) == (2, 1, 3)
    with sqlite_db.session() as s:
        items = {i.ext: i for i in s.scalars(select(Item))}
        assert set(items) == {"mp4", "webm"}
        assert items["mp4"].media_type == "video" and items["mp4"].meta["frame_count"] == 20
        assert store.exists(items["mp4"].storage_key) and items["mp4"].storage_key.endswith(".mp4")
        reasons = {r.source_uri.rsplit("/", 1)[-1]: r.reason for r in s.scalars(select(Reject))}
    assert reasons == {"trunc.mp4": "corrupt", "audio.mp4": "video_no_stream", "zero.mkv": "video_no_frames"}
    again = ingest(sqlite_db, store, sqlite_settings, str(src))
    assert (again.new_items, again.known) == (0, 3)
