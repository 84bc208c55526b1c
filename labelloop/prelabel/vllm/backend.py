"""Qwen-VL through vLLM's OpenAI-compatible server: one image in, one spec record out.

Per item: orient and ``smart_resize`` the image on the client (in a worker thread: decoding and
encoding are CPU work that must not stall the event loop that keeps dozens of requests in
flight; an image that is already model-ready only has its header read, on the loop), send it as
a base64 data URL with the spec's prompt and JSON schema as ``response_format``, then check the
answer:

* ``finish_reason == "length"``, JSON that does not parse, or JSON that breaks the spec's schema
  (checked with jsonschema, behind a compiled fast path for the common valid case, see
  :mod:`labelloop.specs.schema_check`: a server that ignored the constraint must not slip records through)
  -> a *failed* prediction with the raw text and the reason, so the item goes to review;
* HTTP errors left after the client's retries -> failed too, with the status and response body;
* a server that encoded another image size than the one sent (it resized again, so absolute boxes
  are in an unknown frame) -> failed, see :mod:`.tokens`.

Boxes come back in the model family's convention (:mod:`.family`: Qwen2.5-VL absolute pixels of the
image as resized with factor 28, Qwen2-VL and Qwen3-VL 0-1000, Qwen3-VL resized with factor 32,
each overridable) and are stored in original pixels. Routing confidence per field is
``settings.vllm.confidence_aggregator`` over the value tokens (min token probability by default)
for scalar fields (text, choice, box) and, for list fields (regions, objects), the minimum over
elements (and over the list's closing decision); see :mod:`.confidence` for exactly which tokens
count and why that aggregator. Latency and token usage are stored per prediction, and every
prediction's ``confidence_detail["identity"]`` lists the settings that made it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.validators import validator_for
from PIL import Image

from labelloop.config import Settings
from labelloop.db.models import Item
from labelloop.prelabel.base import FAILURE_PERMANENT, FAILURE_TRANSIENT, Backend, PredictionResult
from labelloop.prelabel.qwen_resize import (
    CoordinateMode,
    PreparedImage,
    ResizePlan,
    box_from_model,
    prepare_image,
    ready_as_is,
)
from labelloop.prelabel.vllm.client import ChatClient, ChatError, ChatResult, DataURL
from labelloop.prelabel.vllm.confidence import field_confidences, parse_logprobs
from labelloop.prelabel.vllm.family import ModelProfile, resolve_profile
from labelloop.prelabel.vllm.tokens import check_image_tokens, remedy
from labelloop.specs import TaskSpec
from labelloop.specs.schema_check import Check, compile_check
from labelloop.storage import ObjectStore

#: model-ready images up to this size are prepared on the event loop (see _prepare_async)
_INLINE_MAX_BYTES = 512 * 1024
#: keys that hold a box inside list items
_ITEM_BOX_KEYS = ("bbox", "bbox_2d")


@dataclass(frozen=True)
class _SchemaCheck:
    """jsonschema's validator (the reference, and the error messages) and a fast yes-check."""

    validator: jsonschema.protocols.Validator
    #: see :mod:`labelloop.specs.schema_check`; None for schemas outside its subset
    fast: Check | None


@lru_cache(maxsize=64)
def _validator(schema_json: str) -> _SchemaCheck:
    schema = json.loads(schema_json)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return _SchemaCheck(cls(schema), compile_check(schema))


def schema_errors(record: Any, schema: dict[str, Any]) -> list[str]:
    """Human-readable schema violations of ``record`` (empty when valid)."""
    return _errors(_validator(json.dumps(schema, sort_keys=True)), record)


def _errors(check: _SchemaCheck, record: Any) -> list[str]:
    if check.fast is not None and check.fast(record):
        return []  # the common case, in microseconds; jsonschema decides everything else
    out = []
    for err in sorted(check.validator.iter_errors(record), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{where}: {err.message}")
    return out


def parse_answer(check: _SchemaCheck, content: str | None, finish_reason: str | None) -> tuple[Any, str | None]:
    """The model's answer as JSON, or the reason it is not one (truncated, empty, invalid JSON,
    schema violation): the checks every vLLM answer goes through, images and videos alike."""
    if finish_reason == "length":
        return None, "truncated: finish_reason=length (max_tokens reached)"
    if content is None:
        return None, f"empty answer (finish_reason={finish_reason})"
    try:
        parsed = json.loads(content)
    except ValueError as e:
        return None, f"invalid JSON: {e}"
    errors = _errors(check, parsed)
    if errors:
        return None, "schema violation: " + "; ".join(errors[:5])
    return parsed, None


def map_boxes(record: dict[str, Any], spec: TaskSpec, plan: ResizePlan, mode: CoordinateMode) -> dict[str, Any]:
    """The record with every box of the spec's fields converted from model to original pixels."""
    out = dict(record)
    for name, fspec in spec.fields.items():
        value = out.get(name)
        if value is None:
            continue
        if fspec.kind == "box":
            out[name] = box_from_model(value, plan, mode)
        elif fspec.kind in ("regions", "objects") and isinstance(value, list):
            items = []
            for el in value:
                el = dict(el)
                for key in _ITEM_BOX_KEYS:
                    if el.get(key) is not None:
                        el[key] = box_from_model(el[key], plan, mode)
                items.append(el)
            out[name] = items
    return out


class VLLMBackend(Backend):
    """Qwen-VL (2, 2.5, 3) served by vLLM; concurrency is bounded by the runner.

    ``model``/``model_version`` come from ``settings.vllm`` (``model_version`` defaults to the
    model name); the prompt hash is the spec's. The HTTP client is created on first use inside the
    running event loop and pooled for ``settings.vllm.concurrency`` connections.
    """

    name = "vllm"

    def __init__(self, settings: Settings, store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.cfg = settings.vllm
        self.store = store
        self.model = self.cfg.model
        self.model_version = self.cfg.model_version or self.cfg.model
        #: family, box convention, resize factor and bounds; a model whose convention cannot be
        #: told is refused here, before any request (ModelFamilyError)
        self.profile: ModelProfile = resolve_profile(self.cfg)
        #: spec name -> (the schema object it was built from, its check); see _validator_for
        self._validators: dict[str, tuple[dict[str, Any], _SchemaCheck]] = {}
        #: spec name -> (the spec object, its identity); see identity()
        self._identities: dict[str, tuple[TaskSpec, dict[str, Any]]] = {}
        self._client: ChatClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        # Pillow imports its format plugins on the first Image.open (~50 ms): do it now, not on
        # the event loop while the first requests are being prepared
        Image.preinit()

    def _validator_for(self, spec: TaskSpec) -> _SchemaCheck:
        # keyed by the schema object itself, not its hash (hashing the prompt and schema on every
        # answer was a measurable cost): a spec given a new schema gets a new check
        hit = self._validators.get(spec.name)
        if hit is None or hit[0] is not spec.json_schema:
            hit = self._validators[spec.name] = (
                spec.json_schema,
                _validator(json.dumps(spec.json_schema, sort_keys=True)),
            )
        return hit[1]

    def supports(self, spec: TaskSpec) -> bool:
        return spec.media in ("image", "video")

    #: sampling temperature of every request (greedy); part of the identity
    temperature = 0.0

    @property
    def resize_factor(self) -> int:
        return self.profile.resize_factor

    def identity(self, spec: TaskSpec) -> dict[str, Any]:
        """Every setting that changes the answer or how it is read, besides model and version:
        the prompt and schema, the box convention, the image sent (resize bounds, factor, JPEG
        quality), the token limit, the temperature, the confidence aggregator (thresholds are on
        its scale) and, for video, the frame sampling and request shape.

        Cached per spec object: it goes into every prediction's detail, and the spec's prompt hash
        serialises and hashes the prompt and schema each time it is asked."""
        hit = self._identities.get(spec.name)
        if hit is not None and hit[0] is spec:
            return hit[1]
        cfg, prof = self.cfg, self.profile
        ident: dict[str, Any] = {
            "prompt": spec.prompt_hash,
            "family": prof.family,
            "coordinate_mode": prof.coordinate_mode,
            "min_pixels": prof.min_pixels,
            "max_pixels": prof.max_pixels,
            "resize_factor": prof.resize_factor,
            "jpeg_quality": cfg.jpeg_quality,
            "max_tokens": cfg.max_tokens,
            "temperature": self.temperature,
            "confidence_aggregator": cfg.confidence_aggregator,
        }
        if spec.media == "video":
            ident["video"] = {
                "family": cfg.video_family,
                "fps": cfg.video_fps,
                "min_frames": cfg.video_min_frames,
                "max_frames": cfg.video_max_frames,
                "total_pixels": cfg.video_total_pixels,
            }
        self._identities[spec.name] = (spec, ident)
        return ident

    def prompt_hash(self, spec: TaskSpec) -> str:
        """A hash of :meth:`identity`. Changing any part of it is a new prediction and new
        thresholds; keeping the old ones would read new boxes with old conventions or trust old
        calibration."""
        blob = json.dumps(self.identity(spec), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def client(self) -> ChatClient:
        """The pooled client of the running loop (a new loop, e.g. a second asyncio.run, gets its own)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = ChatClient(
                self.cfg.base_url,
                api_key=self.cfg.api_key.get_secret_value() or None,
                timeout_s=self.cfg.timeout_s,
                max_retries=self.cfg.max_retries,
                # a little headroom over the runner's bound for connections being recycled
                max_connections=self.cfg.concurrency + 4,
                backoff_initial_s=self.cfg.retry_backoff_s,
                backoff_max_s=self.cfg.retry_backoff_max_s,
            )
            self._loop = loop
        return self._client

    def image_pool(self) -> ThreadPoolExecutor:
        """Threads for image preparation, separate from the loop's default executor.

        In the default executor, resizing would queue ahead of the runner's quick hops (next
        item, object reads, DB flushes) and starve the request pipeline. One thread per core:
        Pillow releases the GIL while it decodes, resamples and encodes.
        """
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="vllm-img")
        return self._pool

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _prepare(self, data: bytes) -> tuple[PreparedImage, DataURL]:
        img = prepare_image(
            data,
            min_pixels=self.profile.min_pixels,
            max_pixels=self.profile.max_pixels,
            jpeg_quality=self.cfg.jpeg_quality,
            factor=self.profile.resize_factor,
        )
        # base64 as bytes: the client splices them into the request body without a str round trip
        return img, DataURL(img.mime, base64.b64encode(img.data))

    async def _prepare_async(self, data: bytes) -> tuple[PreparedImage, DataURL]:
        """The image for the request: in a worker thread, unless it is small and model-ready.

        A model-ready image (a fixed point of ``smart_resize``, upright, in a format the server
        reads) costs a header read and a base64 pass, about 0.1 ms for a typical photo: less than
        the loop pays to hand work to a thread, and a hand-off waits up to the GIL's switch
        interval (5 ms) whenever the loop is busy. Those are done inline; decoding, resizing and
        encoding (milliseconds) and big files go to the image threads.
        """
        if len(data) <= _INLINE_MAX_BYTES:
            p = self.profile
            img = ready_as_is(data, min_pixels=p.min_pixels, max_pixels=p.max_pixels, factor=p.resize_factor)
            if img is not None:
                return img, DataURL(img.mime, base64.b64encode(img.data))
        return await asyncio.get_running_loop().run_in_executor(self.image_pool(), self._prepare, data)

    def messages(self, spec: TaskSpec, image_url: str | DataURL) -> list[dict[str, Any]]:
        return [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": spec.prompt.strip()},
                ],
            }
        ]

    async def predict(self, item: Item, data: bytes, spec: TaskSpec) -> PredictionResult:
        if spec.media == "video":
            from labelloop.prelabel.vllm.video import predict_video

            return await predict_video(self, item, data, spec)
        t0 = time.perf_counter()
        try:
            img, url = await self._prepare_async(data)
        except Exception as e:  # undecodable or absurd (aspect > 200) images fail, not crash
            return PredictionResult.failed(f"image could not be prepared: {type(e).__name__}: {e}")
        msgs = self.messages(spec, url)
        del url  # the base64 copy is the largest object per request; do not keep it around
        try:
            res = await self.client().chat(
                model=self.model,
                messages=msgs,
                json_schema=spec.json_schema,
                schema_name=spec.name,
                max_tokens=self.cfg.max_tokens,
                temperature=self.temperature,
                logprobs=True,
                top_logprobs=self.cfg.top_logprobs,
                request_id=item.sha256,
                extra_body={"return_token_ids": True} if self.cfg.return_token_ids else None,
            )
        except ChatError as e:
            return PredictionResult.failed(
                f"{e.reason} ({self.cfg.base_url}, step: chat completion)",
                kind=FAILURE_TRANSIENT if e.transient else FAILURE_PERMANENT,
                raw_output=e.body,
                latency_ms=_ms(t0),
                confidence_detail={"attempts": e.attempts, "status": e.status},
            )
        return self._interpret(spec, img.plan, res, t0)

    def _interpret(self, spec: TaskSpec, plan: ResizePlan, res: ChatResult, t0: float) -> PredictionResult:
        """Check the answer and turn it into a record in original pixels, or a failure."""
        content, finish_reason = res.content, res.finish_reason
        prof = self.profile
        common: dict[str, Any] = {
            "raw_output": content,
            "latency_ms": _ms(t0),
            "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens,
        }
        tokens = check_image_tokens(
            plan,
            prof.resize_factor,
            [spec.prompt.strip()],
            prompt_tokens=res.prompt_tokens,
            prompt_token_ids=res.prompt_token_ids,
            image_token_id=prof.image_token_id,
        )
        meta = {
            "attempts": res.attempts,
            "coordinate_mode": prof.coordinate_mode,
            "aggregator": self.cfg.confidence_aggregator,
            "identity": self.identity(spec),
            "image_tokens": tokens.as_dict(),
            "resize": {
                "width": plan.width,
                "height": plan.height,
                "orig_width": plan.orig_width,
                "orig_height": plan.orig_height,
            },
        }
        if tokens.error is not None:
            return PredictionResult.failed(
                f"{tokens.error} {remedy(self.cfg.base_url)}", confidence_detail=meta, **common
            )
        parsed, why = parse_answer(self._validator_for(spec), content, finish_reason)
        if why is not None:
            return PredictionResult.failed(why, confidence_detail=meta, **common)
        try:
            record = map_boxes(parsed, spec, plan, prof.coordinate_mode)
        except (TypeError, ValueError) as e:
            return PredictionResult.failed(f"bad box: {e}", confidence_detail=meta, **common)
        for name in spec.fields:
            record.setdefault(name, None)
        routing, detail = field_confidences(
            content, parse_logprobs(res.logprobs), spec, aggregator=self.cfg.confidence_aggregator
        )
        return PredictionResult(
            status="ok",
            record=record,
            field_confidence=routing,
            confidence_detail={"fields": detail, **meta},
            **common,
        )


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
