"""Video through vLLM's OpenAI-compatible server: sampled frames in, a spec record with times out.

The frames are sampled on the client by Qwen2.5-VL's rules (:mod:`labelloop.prelabel.qwen_video`)
and kept in the object store, so what the model sees is known frame by frame. The model family
sets the request shape and how times are read (``settings.vllm.video_family``):

* ``qwen2_5_vl``: one ``video_url`` part whose URL is ``data:video/jpeg;base64,<f1>,<f2>,...``
  (vLLM's frame-list form: the server decodes exactly our frames, no second sampling) plus
  ``mm_processor_kwargs: {"fps": <sample fps>}``, from which the processor derives the absolute
  time of each temporal patch; the model answers in seconds.
* ``internvl`` (InternVL 2.5/3, InternVideo2.5 as served by vLLM): the frames as ``image_url``
  parts, each after a text label ``Frame<k> (<t> s):``, the convention of InternVL's video chat,
  with the time added because these models have no time encoding: they read it from the labels.

Answers are checked like image answers (length, JSON, schema) and then for time: each event needs
``0 <= start <= end`` and must end within the video (plus one sampled-frame interval, the model's
resolution). An event outside the video is a failed prediction with the event named, never clamped.
"""

from __future__ import annotations

import asyncio
import base64
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelloop.db.models import Item
from labelloop.prelabel.base import PredictionResult
from labelloop.prelabel.qwen_video import SampledVideo, SamplingParams, plan_for_item, sample_frames
from labelloop.prelabel.vllm.client import ChatError, ChatResult, DataURL
from labelloop.prelabel.vllm.confidence import field_confidences, parse_logprobs
from labelloop.specs import TaskSpec

if TYPE_CHECKING:
    from labelloop.prelabel.vllm.backend import VLLMBackend


def sampling_params(backend: VLLMBackend) -> SamplingParams:
    c = backend.cfg
    return SamplingParams(
        fps=c.video_fps,
        min_frames=c.video_min_frames,
        max_frames=c.video_max_frames,
        total_pixels=c.video_total_pixels,
        jpeg_quality=c.jpeg_quality,
    )


def video_messages(family: str, spec: TaskSpec, video: SampledVideo, duration_s: float) -> list[dict[str, Any]]:
    plan = video.plan
    note = f"The video is {duration_s:.2f} seconds long. Give every time in seconds from its start."
    text = {"type": "text", "text": f"{spec.prompt.strip()}\n{note}"}
    if family == "qwen2_5_vl":
        frames = b",".join(base64.b64encode(f) for f in video.frames)
        return [
            {
                "role": "user",
                "content": [{"type": "video_url", "video_url": {"url": DataURL("video/jpeg", frames)}}, text],
            }
        ]
    parts: list[dict[str, Any]] = []
    for k, (t, f) in enumerate(zip(plan.timestamps, video.frames, strict=True)):
        parts.append({"type": "text", "text": f"Frame{k + 1} ({t:.2f} s):"})
        parts.append({"type": "image_url", "image_url": {"url": DataURL("image/jpeg", base64.b64encode(f))}})
    return [{"role": "user", "content": [*parts, text]}]


def extra_body(family: str, video: SampledVideo) -> dict[str, Any] | None:
    if family == "qwen2_5_vl":
        return {"mm_processor_kwargs": {"fps": video.plan.sample_fps}}
    return None


def time_errors(record: dict[str, Any], spec: TaskSpec, duration_s: float, slack_s: float) -> list[str]:
    """Events that do not fit the video, by field and position."""
    out = []
    for name, f in spec.fields.items():
        if f.kind != "events":
            continue
        for k, ev in enumerate(record.get(name) or []):
            start, end = ev.get("start"), ev.get("end")
            if start > end:
                out.append(f"{name}[{k}]: start {start} s is after end {end} s")
            if end > duration_s + slack_s:
                out.append(f"{name}[{k}]: end {end} s is past the video's end ({duration_s:.3f} s)")
    return out


async def predict_video(backend: VLLMBackend, item: Item, data: bytes, spec: TaskSpec) -> PredictionResult:
    t0 = time.perf_counter()
    cfg = backend.cfg
    family = cfg.video_family
    meta = item.meta or {}
    params = sampling_params(backend)
    try:
        plan = plan_for_item(meta, int(item.width or 0), int(item.height or 0), params)
        video = await asyncio.get_running_loop().run_in_executor(
            backend.image_pool(), _sample, backend, item, plan, params, data
        )
    except Exception as e:  # a video that can't be sampled fails with its reason, the batch goes on
        return PredictionResult.failed(f"video could not be sampled: {type(e).__name__}: {e}")
    duration = float(meta.get("duration_s") or plan.total_frames / plan.video_fps)
    msgs = video_messages(family, spec, video, duration)
    try:
        res = await backend.client().chat(
            model=backend.model,
            messages=msgs,
            json_schema=spec.json_schema,
            schema_name=spec.name,
            max_tokens=cfg.max_tokens,
            logprobs=True,
            top_logprobs=cfg.top_logprobs,
            request_id=item.sha256,
            extra_body=extra_body(family, video),
        )
    except ChatError as e:
        return PredictionResult.failed(
            e.reason,
            raw_output=e.body,
            latency_ms=_ms(t0),
            confidence_detail={"attempts": e.attempts, "status": e.status},
        )
    return interpret(backend, spec, video, duration, family, res, t0)


def _sample(backend: VLLMBackend, item: Item, plan: Any, params: SamplingParams, data: bytes) -> SampledVideo:
    tmp = Path(backend.settings.home) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp, prefix="frames-") as d:
        if backend.store is None:  # no store to keep frames in: decode every time
            from labelloop.prelabel.qwen_video import decode_frames

            local = Path(d) / "v"
            local.write_bytes(data)
            import io

            out = []
            for img in decode_frames(local, plan):
                buf = io.BytesIO()
                img.convert("RGB").save(buf, "JPEG", quality=params.jpeg_quality)
                out.append(buf.getvalue())
            return SampledVideo(plan=plan, frames=out, keys=[])
        return sample_frames(backend.store, item.sha256, item.storage_key, plan, params, Path(d), data=data)


def interpret(
    backend: VLLMBackend, spec: TaskSpec, video: SampledVideo, duration: float, family: str, res: ChatResult, t0: float
) -> PredictionResult:
    from labelloop.prelabel.vllm.backend import parse_answer

    content = res.content
    plan = video.plan
    common: dict[str, Any] = {
        "raw_output": content,
        "latency_ms": _ms(t0),
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
    }
    meta = {
        "attempts": res.attempts,
        "aggregator": backend.cfg.confidence_aggregator,
        "identity": backend.identity(spec),
        "video": {
            "family": family,
            "frames": plan.nframes,
            "sample_fps": plan.sample_fps,
            "resized": [plan.resized_width, plan.resized_height],
            "timestamps": plan.timestamps,
            "frame_keys": video.keys,
            "duration_s": duration,
        },
    }
    record, why = parse_answer(backend._validator_for(spec), content, res.finish_reason)
    if why is not None:
        return PredictionResult.failed(why, confidence_detail=meta, **common)
    slack = 1.0 / plan.sample_fps if plan.sample_fps > 0 else 0.0
    errors = time_errors(record, spec, duration, slack)
    if errors:
        return PredictionResult.failed(
            "event outside the video: " + "; ".join(errors[:5]), confidence_detail=meta, **common
        )
    for name in spec.fields:
        record.setdefault(name, None)
    routing, detail = field_confidences(
        content, parse_logprobs(res.logprobs), spec, aggregator=backend.cfg.confidence_aggregator
    )
    return PredictionResult(
        status="ok", record=record, field_confidence=routing, confidence_detail={"fields": detail, **meta}, **common
    )


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
