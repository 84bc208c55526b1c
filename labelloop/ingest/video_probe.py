"""Probe a video with PyAV (FFmpeg's libraries): what it holds, and whether we can use it.

Everything the later stages need is read once, here: the display size (after the rotation in the
container's display matrix, since annotators and the model see the rotated picture), the frame
rate, the frame count and duration, and the codec. Frame counts come from demuxing every video
packet (cheap: no decoding) because Matroska and WebM carry no frame count in their headers and
an MP4 header can claim frames its truncated body no longer has. The first frame is decoded so a
stream we could list but not decode is rejected here, not in the middle of a pre-label batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labelloop.config import IngestSettings

from fractions import Fraction
from pathlib import Path
from typing import Any

#: containers we accept: what PyAV demuxes and browsers (Label Studio's <Video>) commonly play
VIDEO_TYPES = {
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "video/x-matroska": "mkv",
    "video/webm": "webm",
}


def normalise_rotation(degrees: float | int | None) -> int:
    """Display rotation in whole quarter turns, 0/90/180/270 counter-clockwise (FFmpeg's sign)."""
    if degrees is None:
        return 0
    return round(float(degrees) / 90.0) % 4 * 90


def probe_video(path: Path, mime: str, settings: IngestSettings):  # -> Probe (import cycle avoided)
    import av

    from labelloop.ingest.probe import Probe, Rejected, RejectReason

    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise Rejected(RejectReason.CORRUPT, f"video cannot be opened: {e}") from e
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise Rejected(RejectReason.VIDEO_NO_STREAM, f"container has no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0:
            raise Rejected(RejectReason.CORRUPT, "video stream has no frame rate")
        fps = float(rate)
        tb = stream.time_base or Fraction(1, 1)
        frames = 0
        first_pts: int | None = None
        end_pts: int | None = None
        first_frame = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue  # the flush packet at the end
                frames += 1
                first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                stop = packet.pts + (packet.duration or 0)
                end_pts = stop if end_pts is None else max(end_pts, stop)
                if first_frame is None:
                    decoded = packet.decode()
                    if decoded:
                        first_frame = decoded[0]
            if first_frame is None and frames:
                # codecs with delay (B-frames) only emit after more packets: flush the decoder
                container.seek(0, stream=stream)
                for f in container.decode(stream):
                    first_frame = f
                    break
        except (av.error.FFmpegError, ValueError) as e:
            raise Rejected(RejectReason.CORRUPT, f"video is truncated or undecodable after {frames} frames: {e}") from e
        if frames == 0:
            raise Rejected(RejectReason.VIDEO_NO_FRAMES, "video stream has no frames")
        if first_frame is None:
            raise Rejected(RejectReason.CORRUPT, f"{codec} stream has {frames} packets but no decodable frame")
        coded_w, coded_h = first_frame.width, first_frame.height
        rotation = normalise_rotation(getattr(first_frame, "rotation", 0))
        duration = float((end_pts - first_pts) * tb) if end_pts is not None and first_pts is not None else 0.0
        if duration <= 0:
            duration = frames / fps
        meta: dict[str, Any] = {
            "duration_s": round(duration, 6),
            "fps": round(fps, 6),
            "frame_count": frames,
            "codec": codec,
            "rotation": rotation,
            "coded_size": [coded_w, coded_h],
            "container": container.format.name,
        }
        if container.streams.audio:
            meta["audio_codec"] = container.streams.audio[0].codec_context.name
    if coded_w <= 0 or coded_h <= 0:
        raise Rejected(RejectReason.CORRUPT, f"video frames have no pixels ({coded_w}x{coded_h})")
    w, h = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
    if w * h > settings.max_video_pixels:
        raise Rejected(
            RejectReason.VIDEO_TOO_LARGE,
            f"{w}x{h} = {w * h:,} pixels per frame exceeds the limit of {settings.max_video_pixels:,}",
        )
    if duration > settings.max_video_seconds:
        raise Rejected(
            RejectReason.VIDEO_TOO_LONG,
            f"{duration:.1f} s exceeds the limit of {settings.max_video_seconds:g} s",
        )
    return Probe(media_type="video", mime=mime, ext=VIDEO_TYPES[mime], width=w, height=h, meta=meta)
