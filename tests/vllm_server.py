"""An OpenAI-compatible test server that behaves like vLLM serving Qwen-VL.

What it honours of vLLM's contract, so the client is tested against the real thing's shape:

* ``GET /v1/models``; ``POST /v1/chat/completions`` with one ``image_url`` data URL and a text
  part, ``response_format`` ``{"type": "json_schema", "json_schema": {"name", "schema"}}``
  (without it the answer comes back unconstrained, in a Markdown fence, as Qwen writes it; the
  old ``guided_json`` is ignored, as vLLM >= 0.12 does), ``logprobs``/``top_logprobs`` (<= 20) in
  vLLM's shape (``choices[0].logprobs.content = [{token, logprob, bytes, top_logprobs}]``),
  ``usage``, ``finish_reason`` (``length`` when ``max_tokens`` cuts the answer), vLLM's error body;
* a GPU's capacity: ``slots`` requests run at once, each taking ``latency_ms``; the rest queue;
* the model's coordinate convention: the image is decoded and the model frame computed as vLLM's
  processor would (``smart_resize`` of the *received* size, re-implemented here independently of
  labelloop), then ground-truth boxes, stored in ORIGINAL pixels, are written as absolute pixels of
  that frame (Qwen2.5-VL) or on the 0-1000 grid (``--coordinate-mode relative_1000``). A client
  that resizes wrongly or forgets EXIF orientation therefore gets boxes that do not map back;
* token logprobs: the answer JSON is cut into small tokens (digits singly, words, punctuation;
  CJK characters as two undecodable byte pieces, ``"\\ufffd"``, like vLLM reports split UTF-8);
  structural tokens (keys, quotes, brackets) get logprob ~0 as under a grammar, and the first
  token of each value gets ``log(p)`` with ``p`` from the sidecar's ``_confidence`` (per field,
  or per element of a list field), so tests can check what the client computes;
* faults on demand, per image: ``POST /control/faults {"key": <sha256 or "*">, "faults": [...]}``
  queues faults (``"500"``, ``"429"`` (optional ``retry_after``), ``"hang"``, ``"malformed"``,
  ``"schema"``, ``"truncated"``), consumed one per request for that image.

Ground truth: ``<truth dir>/*.json`` sidecars ``{"sha256", "width", "height", "records": {<spec>:
record}}`` (boxes in original pixels, after EXIF orientation; ``_confidence`` and
``_structural_p`` inside a record tune the logprobs), or registered at run time with
``POST /control/truth``. Requests name their image through the client's ``X-Request-Id``
(``<sha256>-<attempt>``). Without truth the server answers a schema-valid default record.

Run: ``python tests/vllm_server.py --port 8000 --slots 64 --latency-ms 200``; in tests use the
fixtures of ``tests/fixtures_vllm.py`` (same app, in a thread).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import functools
import io
import json
import math
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_TRUTH_DIR = Path(__file__).resolve().parent / "data" / "vllm_truth"
FAULT_KINDS = ("500", "429", "hang", "malformed", "schema", "truncated")
_SHA = re.compile(r"^[0-9a-f]{64}")


# --------------------------------------------------------------------------- the model's frame


def processor_frame(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """(h, w) the Hugging Face Qwen2-VL image processor (inside vLLM) resizes an image to."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _is_box(key: str, value: Any) -> bool:
    return (
        (key in ("bbox", "bbox_2d") or key.endswith("_box"))
        and isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int | float) for v in value)
    )


def convert_boxes(value: Any, sx: float, sy: float, lim_x: int, lim_y: int, key: str = "") -> Any:
    """Every box in ``value`` scaled by (sx, sy), rounded and clamped: what the model writes."""
    if _is_box(key, value):
        x1, y1, x2, y2 = value
        return [
            int(min(max(round(x1 * sx), 0), lim_x)),
            int(min(max(round(y1 * sy), 0), lim_y)),
            int(min(max(round(x2 * sx), 0), lim_x)),
            int(min(max(round(y2 * sy), 0), lim_y)),
        ]
    if isinstance(value, dict):
        return {k: convert_boxes(v, sx, sy, lim_x, lim_y, k) for k, v in value.items()}
    if isinstance(value, list):
        return [convert_boxes(v, sx, sy, lim_x, lim_y) for v in value]
    return value


# --------------------------------------------------------------------------- tokens


_TOKEN = re.compile(r" ?[A-Za-z]+|\d|\s+|[\u3400-\u9fff]|[^\w\s]{1,2}|.", re.S)


@dataclass(frozen=True)
class Tok:
    #: the token as vLLM reports it (a split UTF-8 piece reads "\ufffd")
    text: str
    logprob: float
    #: the characters it adds to the message text
    real: str


def _pieces(text: str) -> list[tuple[str, str]]:
    """(reported, real) small tokens; a CJK character becomes two undecodable halves."""
    out: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(text):
        s = m.group()
        if len(s) == 1 and "\u3400" <= s <= "\u9fff":
            # Qwen's byte-level BPE often splits a CJK character; vLLM decodes each piece alone
            # and reports U+FFFD for it, with the bytes of U+FFFD (not the real bytes)
            out.extend([("\ufffd", s), ("\ufffd", "")])
        else:
            out.append((s, s))
    return out


@dataclass
class Segment:
    text: str
    #: (field, element index or None) for value characters; None for structure
    owner: tuple[str, int | None] | None


def segments(record: Any) -> list[Segment]:
    """The answer JSON as structural and value segments, formatted like Qwen's output."""
    out: list[Segment] = []

    def emit(value: Any, owner: tuple[str, int | None] | None) -> None:
        if isinstance(value, dict):
            out.append(Segment("{", None))
            for i, (k, v) in enumerate(value.items()):
                out.append(Segment((", " if i else "") + json.dumps(k, ensure_ascii=False) + ": ", None))
                emit(v, owner if owner is not None else (k, None))
            out.append(Segment("}", None))
        elif isinstance(value, list):
            out.append(Segment("[", None))
            for i, v in enumerate(value):
                if i:
                    out.append(Segment(", ", None))
                el_owner = owner
                if owner is not None and owner[1] is None and isinstance(v, dict):
                    el_owner = (owner[0], i)
                emit(v, el_owner)
            out.append(Segment("]", None))
        elif isinstance(value, str):
            out.append(Segment('"', None))
            inner = json.dumps(value, ensure_ascii=False)[1:-1]
            if inner:
                out.append(Segment(inner, owner))
            out.append(Segment('"', None))
        else:
            out.append(Segment(json.dumps(value), owner))

    emit(record, None)
    return out


def _confidence_for(conf: dict[str, Any], owner: tuple[str, int | None]) -> float | None:
    c = conf.get(owner[0])
    if isinstance(c, list):
        return float(c[owner[1]]) if owner[1] is not None and owner[1] < len(c) else None
    return float(c) if c is not None else None


def tokenize_answer(record: Any, conf: dict[str, Any], first_p: float, next_p: float, structural_p: float) -> list[Tok]:
    """The answer's tokens; the first token of each value carries that value's confidence.

    ``first_p`` is the first token's probability when ``conf`` does not name the value;
    ``next_p`` that of the value's further tokens; ``structural_p`` that of everything else.
    """
    tokens: list[Tok] = []
    seen: set[tuple[str, int | None]] = set()
    for seg in segments(record):
        for reported, real in _pieces(seg.text):
            if seg.owner is None:
                tokens.append(Tok(reported, math.log(structural_p), real))
                continue
            p = next_p
            if seg.owner not in seen:
                seen.add(seg.owner)
                p = _confidence_for(conf, seg.owner) or first_p
            tokens.append(Tok(reported, math.log(p), real))
    return tokens


def logprobs_content(tokens: list[Tok], top_n: int) -> list[dict[str, Any]]:
    """vLLM's ``logprobs.content``: bytes are the UTF-8 of the reported token string."""
    out = []
    for tok in tokens:
        lp = max(tok.logprob, -9999.0)
        chosen = {"token": tok.text, "logprob": lp, "bytes": list(tok.text.encode("utf-8"))}
        tops = [chosen] if top_n else []
        rest = max(1.0 - math.exp(lp), 1e-12)
        for i in range(1, top_n):
            alt = f"<alt{i}>"
            tops.append({"token": alt, "logprob": math.log(rest / (top_n - 1)), "bytes": list(alt.encode())})
        out.append({**chosen, "top_logprobs": tops})
    return out


# --------------------------------------------------------------------------- defaults


def default_record(schema: dict[str, Any], width: int, height: int, key: str = "") -> Any:
    """A schema-valid answer for images without ground truth (throughput runs)."""
    if "anyOf" in schema:
        return default_record(schema["anyOf"][0], width, height, key)
    t = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if t == "object":
        props = schema.get("properties", {})
        return {k: default_record(props[k], width, height, k) for k in schema.get("required", list(props))}
    if t == "array":
        if schema.get("items", {}).get("type") == "integer" and schema.get("minItems") == 4:
            # a fixed box (valid in any image): equal answers let render_choice's cache work
            return [0, 0, 28, 28]
        return [default_record(schema.get("items", {}), width, height) for _ in range(schema.get("minItems", 1))]
    if t == "string":
        return "sample text" if key not in ("plate_number",) else "AB12345"
    if t in ("integer", "number"):
        return 1
    if t == "boolean":
        return True
    return None


# --------------------------------------------------------------------------- state


@dataclass
class ServerConfig:
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    slots: int = 8
    latency_ms: float = 50.0
    coordinate_mode: str = "absolute_resized"
    #: the server's processor bounds (vLLM's --mm-processor-kwargs); HF defaults
    min_pixels: int = 3136
    max_pixels: int = 12_845_056
    truth_dirs: list[Path] = field(default_factory=lambda: [DEFAULT_TRUTH_DIR])
    #: probability of every value token after the first one of a value
    value_token_p: float = 0.999
    #: probability of a value's first token when the sidecar does not say
    default_value_p: float = 0.98
    structural_p: float = 0.99999
    hang_s: float = 600.0
    max_logprobs: int = 20


class ServerState:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.truth: dict[str, dict[str, Any]] = {}
        for d in config.truth_dirs:
            for path in sorted(Path(d).glob("*.json")) if Path(d).is_dir() else []:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.truth[data.get("sha256") or path.stem] = data
        self.faults: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self.lock = threading.Lock()
        self._sem: asyncio.Semaphore | None = None
        self.reset_stats()

    @property
    def sem(self) -> asyncio.Semaphore:
        if self._sem is None:  # created inside the server's event loop
            self._sem = asyncio.Semaphore(self.config.slots)
        return self._sem

    def reset_stats(self) -> None:
        with self.lock:
            self.requests = 0
            self.completed = 0
            self.inflight = 0
            self.max_inflight = 0
            self.queued = 0
            self.max_queued = 0
            self.by_key: dict[str, int] = defaultdict(int)
            self.faults_served: list[dict[str, Any]] = []
            self.sizes: dict[str, list[int]] = {}
            self.last_request: dict[str, Any] | None = None

    def next_fault(self, key: str | None) -> dict[str, Any] | None:
        with self.lock:
            for k in (key, "*"):
                if k and self.faults.get(k):
                    return self.faults[k].popleft()
        return None

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "completed": self.completed,
                "max_inflight": self.max_inflight,
                "max_queued": self.max_queued,
                "by_key": dict(self.by_key),
                "faults_served": list(self.faults_served),
                "pending_faults": {k: len(v) for k, v in self.faults.items() if v},
                "sizes": dict(self.sizes),
                "last_request": self.last_request,
                "slots": self.config.slots,
                "latency_ms": self.config.latency_ms,
            }


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return JSONResponse(body, status_code=status, headers=headers)


def _image_size(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """Decode the request's image (really: a corrupt payload fails) and return its size."""
    for msg in messages:
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                if not url.startswith("data:image") or "base64," not in url:
                    raise ValueError("only base64 data URLs are supported by this test server")
                img = Image.open(io.BytesIO(base64.b64decode(url.split("base64,", 1)[1], validate=True)))
                size = img.size
                if img.format == "JPEG":  # decode in the DCT domain at 1/8 scale: cheap, still a decode
                    img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                img.load()
                return size
    raise ValueError("no image_url in the messages")


def _answer_record(state: ServerState, key: str | None, spec: str, width: int, height: int, schema: Any) -> tuple:
    """(record in the model's coordinates, confidence map, structural p)."""
    cfg = state.config
    truth = state.truth.get(key or "")
    record = (truth or {}).get("records", {}).get(spec)
    if record is None:
        record = default_record(schema or {"type": "object"}, width, height)
        orig_w, orig_h = width, height
    else:
        record = json.loads(json.dumps(record))
        orig_w, orig_h = truth.get("width", width), truth.get("height", height)
    conf = record.pop("_confidence", {}) if isinstance(record, dict) else {}
    structural_p = record.pop("_structural_p", cfg.structural_p) if isinstance(record, dict) else cfg.structural_p
    if cfg.coordinate_mode == "relative_1000":
        record = convert_boxes(record, 1000 / orig_w, 1000 / orig_h, 1000, 1000)
    else:
        mh, mw = processor_frame(height, width, cfg.min_pixels, cfg.max_pixels)
        record = convert_boxes(record, mw / orig_w, mh / orig_h, mw, mh)
    return record, conf, structural_p


def _break_schema(record: Any) -> Any:
    if isinstance(record, dict) and record:
        broken = dict(record)
        broken.pop(next(iter(broken)))
        broken["unexpected_field"] = 1
        return broken
    return {"unexpected_field": 1}


async def chat_completions(request: Request) -> Response:
    state: ServerState = request.app.state.vllm
    cfg = state.config
    try:
        body = json.loads(await request.body())
    except ValueError:
        return _error(400, "invalid JSON body", "BadRequestError")
    if body.get("model") not in (cfg.model, None):
        return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
    top_n = int(body.get("top_logprobs") or 0)
    if top_n > cfg.max_logprobs:
        return _error(400, f"top_logprobs must be <= {cfg.max_logprobs}", "BadRequestError")
    rf = body.get("response_format") or {}
    schema = None
    spec = "record"
    if rf.get("type") == "json_schema":
        js = rf.get("json_schema") or {}
        if "schema" not in js or "name" not in js:
            return _error(400, "response_format.json_schema needs name and schema", "BadRequestError")
        schema, spec = js["schema"], js["name"]
    rid = request.headers.get("x-request-id", "")
    m = _SHA.match(rid)
    key = m.group() if m else None
    try:
        width, height = _image_size(body.get("messages") or [])
    except (ValueError, KeyError, binascii.Error, OSError) as e:
        return _error(400, f"could not read the image: {e}", "BadRequestError")
    with state.lock:
        state.requests += 1
        state.by_key[key or "-"] += 1
        state.sizes[key or "-"] = [width, height]
        state.last_request = {k: v for k, v in body.items() if k != "messages"}
        state.queued += 1
        state.max_queued = max(state.max_queued, state.queued)
    fault = state.next_fault(key)
    async with state.sem:
        with state.lock:
            state.queued -= 1
            state.inflight += 1
            state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            await asyncio.sleep(cfg.latency_ms / 1000)
            if fault:
                with state.lock:
                    state.faults_served.append({"key": key, **fault})
                if fault["kind"] == "hang":
                    deadline = time.monotonic() + float(fault.get("seconds", cfg.hang_s))
                    while time.monotonic() < deadline and not await request.is_disconnected():
                        await asyncio.sleep(0.05)
                    return _error(504, "hung request released", "Timeout")
                if fault["kind"] == "500":
                    return _error(500, "injected internal error", "InternalServerError")
                if fault["kind"] == "429":
                    ra = fault.get("retry_after")
                    headers = {"Retry-After": str(ra)} if ra is not None else None
                    return _error(429, "injected: too many requests", "RateLimitError", headers)
            record, conf, structural_p = _answer_record(state, key, spec, width, height, schema)
            if fault and fault["kind"] == "schema":
                record = _break_schema(record)
            choice, n_tokens = render_choice(
                json.dumps(record, ensure_ascii=False),
                json.dumps(conf, sort_keys=True),
                structural_p,
                (cfg.default_value_p, cfg.value_token_p),
                fenced=schema is None,
                fault=fault["kind"] if fault else None,
                max_tokens=int(body.get("max_tokens") or 10**9),
                top_n=top_n if body.get("logprobs") else -1,
            )
            mh, mw = processor_frame(height, width, cfg.min_pixels, cfg.max_pixels)
            prompt_tokens = (mh // 28) * (mw // 28) + 24 + _prompt_words(body)
            usage = {
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens + n_tokens,
                "completion_tokens": n_tokens,
                "prompt_tokens_details": None,
            }
            head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time())}
            # the (cached) choice is spliced in as bytes: rendering logprobs is the costly part
            payload = b"".join(
                [
                    json.dumps({**head, "model": cfg.model})[:-1].encode(),
                    b', "choices": [',
                    choice,
                    b'], "usage": ',
                    json.dumps(usage).encode(),
                    b', "prompt_logprobs": null}',
                ]
            )
            with state.lock:
                state.completed += 1
            return Response(payload, media_type="application/json")
        finally:
            with state.lock:
                state.inflight -= 1


def _prompt_words(body: dict[str, Any]) -> int:
    return sum(
        len(str(p.get("text", "")).split())
        for msg in body.get("messages", [])
        for p in (msg.get("content") if isinstance(msg.get("content"), list) else [])
    )


@functools.lru_cache(maxsize=4096)
def render_choice(
    record_json: str,
    conf_json: str,
    structural_p: float,
    value_p: tuple[float, float],
    *,
    fenced: bool,
    fault: str | None,
    max_tokens: int,
    top_n: int,
) -> tuple[bytes, int]:
    """``choices[0]`` of a completion as JSON bytes, and the number of completion tokens.

    ``top_n`` -1 means no logprobs were requested. Cached: identical answers (the same image, or
    default answers of equal size) are tokenised and serialised once.
    """
    tokens = tokenize_answer(json.loads(record_json), json.loads(conf_json), value_p[0], value_p[1], structural_p)
    finish = "stop"
    if fenced:  # unconstrained: Qwen fences its JSON
        fence = [Tok("```", 0.0, "```"), Tok("json", 0.0, "json"), Tok("\n", 0.0, "\n")]
        tokens = [*fence, *tokens, Tok("\n", 0.0, "\n"), Tok("```", 0.0, "```")]
    if fault == "malformed":  # a broken tail, as from a derailed grammar
        tokens = [*tokens[:-1], Tok(",", -0.1, ","), Tok(' "', -0.1, ' "'), Tok("}", -0.1, "}")]
    if fault == "truncated":
        max_tokens = min(max_tokens, max(1, len(tokens) // 2))
    if len(tokens) > max_tokens:
        tokens, finish = tokens[:max_tokens], "length"
    choice = {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "".join(t.real for t in tokens),
            "tool_calls": [],
            "reasoning_content": None,
        },
        "logprobs": {"content": logprobs_content(tokens, top_n)} if top_n >= 0 else None,
        "finish_reason": finish,
        "stop_reason": None,
    }
    return json.dumps(choice, ensure_ascii=False).encode("utf-8"), len(tokens)


async def models(request: Request) -> Response:
    cfg: ServerConfig = request.app.state.vllm.config
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {
                    "id": cfg.model,
                    "object": "model",
                    "created": 0,
                    "owned_by": "vllm",
                    "root": cfg.model,
                    "max_model_len": 32768,
                }
            ],
        }
    )


async def control_faults(request: Request) -> Response:
    state: ServerState = request.app.state.vllm
    body = json.loads(await request.body())
    key = body.get("key", "*")
    added = []
    for f in body.get("faults", []):
        f = {"kind": f} if isinstance(f, str) else dict(f)
        if f.get("kind") not in FAULT_KINDS:
            return _error(400, f"unknown fault {f.get('kind')!r}; known: {', '.join(FAULT_KINDS)}", "BadRequestError")
        added.append(f)
    with state.lock:
        state.faults[key].extend(added)
    return JSONResponse({"key": key, "queued": len(state.faults[key])})


async def control_truth(request: Request) -> Response:
    state: ServerState = request.app.state.vllm
    body = json.loads(await request.body())
    with state.lock:
        state.truth[body["key"]] = body["truth"]
    return JSONResponse({"ok": True, "n_truth": len(state.truth)})


async def control_stats(request: Request) -> Response:
    return JSONResponse(request.app.state.vllm.stats())


async def control_reset(request: Request) -> Response:
    state: ServerState = request.app.state.vllm
    with state.lock:
        state.faults.clear()
    state.reset_stats()
    return JSONResponse({"ok": True})


async def health(request: Request) -> Response:
    return Response(status_code=200)


def create_app(config: ServerConfig | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/control/faults", control_faults, methods=["POST"]),
            Route("/control/truth", control_truth, methods=["POST"]),
            Route("/control/stats", control_stats),
            Route("/control/reset", control_reset, methods=["POST"]),
        ]
    )
    app.state.vllm = ServerState(config or ServerConfig())
    return app


def uvicorn_config(app: Starlette, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
        backlog=4096,
        timeout_keep_alive=120,
        lifespan="off",
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--slots", type=int, default=64, help="requests processed at once (GPU batch)")
    p.add_argument("--latency-ms", type=float, default=200.0, help="time per request in a slot")
    p.add_argument("--model", default=ServerConfig.model)
    p.add_argument("--coordinate-mode", choices=["absolute_resized", "relative_1000"], default="absolute_resized")
    p.add_argument("--truth-dir", type=Path, action="append", help="ground-truth sidecar folder (repeatable)")
    p.add_argument("--min-pixels", type=int, default=ServerConfig.min_pixels)
    p.add_argument("--max-pixels", type=int, default=ServerConfig.max_pixels)
    args = p.parse_args(argv)
    config = ServerConfig(
        model=args.model,
        slots=args.slots,
        latency_ms=args.latency_ms,
        coordinate_mode=args.coordinate_mode,
        truth_dirs=args.truth_dir or [DEFAULT_TRUTH_DIR],
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
    )
    uvicorn.Server(uvicorn_config(create_app(config), args.host, args.port)).run()


if __name__ == "__main__":
    main()
