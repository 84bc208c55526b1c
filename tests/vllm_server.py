"""An OpenAI-compatible test server that behaves like vLLM serving Qwen-VL.

What it honours of vLLM's contract, so the client is tested against the real thing's shape:

* ``GET /v1/models``; ``POST /v1/chat/completions`` with one ``image_url`` data URL and a text
  part, ``response_format`` ``{"type": "json_schema", "json_schema": {"name", "schema"}}``
  (without it the answer comes back unconstrained, in a Markdown fence, as Qwen writes it; the
  old ``guided_json`` is ignored, as vLLM >= 0.12 does), ``logprobs``/``top_logprobs`` (<= 20) in
  vLLM's shape (``choices[0].logprobs.content = [{token, logprob, bytes, top_logprobs}]``),
  ``usage``, ``finish_reason`` (``length`` when ``max_tokens`` cuts the answer), vLLM's error body;
* a GPU's capacity: ``slots`` requests run at once, each taking ``latency_ms``; the rest queue;
* the model's coordinate convention: the image is read and the model frame computed as vLLM's
  processor would (``smart_resize`` of the *received* size with the served family's factor,
  ``--resize-factor`` 28 for Qwen2/2.5-VL, 32 for Qwen3-VL, and the server's min/max_pixels,
  re-implemented here independently of labelloop), then ground-truth boxes, stored in ORIGINAL
  pixels, are written as absolute pixels of that frame (Qwen2.5-VL) or on the 0-1000 grid
  (``--coordinate-mode relative_1000``). A client that resizes wrongly or forgets EXIF orientation
  therefore gets boxes that do not map back;
* prompt tokens as vLLM counts them: ``usage.prompt_tokens`` = the frame's image tokens
  (``(h/factor) * (w/factor)``) + the chat template's tokens + the prompt text's (one per
  pre-tokenizer chunk, as a byte-level BPE never joins chunks); with ``return_token_ids: true``
  the response carries ``prompt_token_ids`` in which every image token is ``<|image_pad|>``
  (151655), as vLLM's does (``--no-token-ids`` plays a server that predates the field);
* token logprobs: the answer JSON is cut into small tokens (digits singly, words, punctuation;
  CJK characters as two undecodable byte pieces, ``"\\ufffd"``, like vLLM reports split UTF-8);
  structural tokens (keys, quotes, brackets) get logprob ~0 as under a grammar, and the first
  token of each value gets ``log(p)`` with ``p`` from the sidecar's ``_confidence`` (per field,
  or per element of a list field), so tests can check what the client computes;
* faults on demand, per image: ``POST /control/faults {"key": <sha256 or "*">, "faults": [...]}``
  queues faults (``"500"``, ``"429"`` (optional ``retry_after``), ``"hang"``, ``"malformed"``,
  ``"schema"``, ``"truncated"``, ``"resize"``), consumed one per request for that image.
  ``resize`` plays a server whose processor resizes the image again (optional ``min_pixels`` /
  ``max_pixels``; default: a quarter of the received area): its boxes are written in that second
  frame and its prompt tokens count that frame's image tokens, as a misconfigured vLLM's would;
* a gate for tests that must act at a precise point of a batch: ``POST /control/gate {"closed":
  true}`` holds every new request before it takes a slot (those already in a slot finish), so the
  progress a test observes stays put while it looks; ``{"closed": false}`` lets them through.

Ground truth: ``<truth dir>/*.json`` sidecars ``{"sha256", "width", "height", "records": {<spec>:
record}}`` (boxes in original pixels, after EXIF orientation; ``_confidence`` and
``_structural_p`` inside a record tune the logprobs), or registered at run time with
``POST /control/truth``. Requests name their image through the client's ``X-Request-Id``
(``<sha256>-<attempt>``). Without truth the server answers a schema-valid default record.

The server is cheap on purpose, because in the throughput bench it shares the CPU with the client
it measures: a small HTTP/1.1 server on asyncio (uvloop when installed) with httptools' C parser
rather than an ASGI stack, the image size read from its header (an image whose end marker is
missing is decoded for real, so a truncated payload still fails as it would in vLLM), and the
logprob part of each answer rendered once per distinct answer (``render_choice``'s cache).

Run: ``python tests/vllm_server.py --port 8000 --slots 64 --latency-ms 200``; in tests use the
fixtures of ``tests/fixtures_vllm.py`` (the same server, in a thread).
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import functools
import io
import json
import logging
import math
import re
import signal
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
from PIL import Image

DEFAULT_TRUTH_DIR = Path(__file__).resolve().parent / "data" / "vllm_truth"
FAULT_KINDS = ("500", "429", "hang", "malformed", "schema", "truncated", "resize")
#: Qwen2/2.5/3-VL's ``<|image_pad|>``, ``<|vision_start|>``, ``<|vision_end|>``
IMAGE_PAD_ID, VISION_START_ID, VISION_END_ID = 151655, 151652, 151653
#: tokens of Qwen2.5-VL's chat template around one user turn with one image (system prompt
#: "You are a helpful assistant.", role markers, vision start/end, the assistant header)
TEMPLATE_TOKENS = 21
#: a stand-in for Qwen2's pre-tokenizer: contractions, letters with one leading non-letter,
#: single digits, punctuation runs, whitespace
_PRETOKEN = re.compile(r"'(?:s|t|re|ve|m|ll|d)|[^\r\n\w]?[^\W\d_]+|\d| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SHA = re.compile(r"^[0-9a-f]{64}")
log = logging.getLogger("vllm_test_server")

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
    #: patch size x merge size of the served model (Qwen2/2.5-VL 28, Qwen3-VL 32)
    resize_factor: int = 28
    #: honour ``return_token_ids`` (recent vLLM); False plays an older server that ignores it
    token_ids: bool = True
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
        self._gate: asyncio.Event | None = None
        self.reset_stats()

    @property
    def sem(self) -> asyncio.Semaphore:
        if self._sem is None:  # created inside the server's event loop
            self._sem = asyncio.Semaphore(self.config.slots)
        return self._sem

    @property
    def gate(self) -> asyncio.Event:
        """Set while requests may go on (``/control/gate``); created inside the server's loop."""
        if self._gate is None:
            self._gate = asyncio.Event()
            self._gate.set()
        return self._gate

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
            self.last_media: dict[str, Any] | None = None

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
                "last_media": self.last_media,
                "slots": self.config.slots,
                "latency_ms": self.config.latency_ms,
            }


# --------------------------------------------------------------------------- HTTP plumbing


_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    504: "Gateway Timeout",
}


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] | None = None


@dataclass
class Request:
    method: str
    path: str
    #: header names in lower case
    headers: dict[str, str]
    body: bytes
    conn: _Connection

    async def wait_disconnected(self, timeout: float) -> bool:
        """True once the client has closed the connection; False after ``timeout`` seconds."""
        lost = self.conn.lost
        if not lost.done():
            await asyncio.wait([lost], timeout=timeout)
        return lost.done()


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(obj).encode(), headers)


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Reply:
    return _json({"object": "error", "message": message, "type": kind, "param": None, "code": status}, status, headers)


class _Connection(asyncio.Protocol):
    """One client connection: httptools parses, each request is answered in arrival order."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        #: the latest request's task; each one waits for its predecessor (pipelining keeps order)
        self._last: asyncio.Task[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._write(_error(400, f"bad HTTP request: {e}", "BadRequestError"), keep_alive=False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        path = self._url.decode("latin-1").split("?", 1)[0]
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        req = Request(self.parser.get_method().decode("ascii"), path, self._headers, body, self)
        self._body = []
        self._last = asyncio.ensure_future(self._answer(req, self.parser.should_keep_alive(), self._last))

    async def _answer(self, req: Request, keep_alive: bool, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            reply = await self.server.dispatch(req)
        except Exception as e:  # a bug in a handler: answer like a server would, keep serving
            log.exception("handler failed for %s %s", req.method, req.path)
            reply = _error(500, f"test server error: {type(e).__name__}: {e}", "InternalServerError")
        self._write(reply, keep_alive)

    def _write(self, reply: Reply, keep_alive: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        head = [
            f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}",
            "content-type: application/json",
            f"content-length: {len(reply.body)}",
        ]
        head.extend(f"{k}: {v}" for k, v in (reply.headers or {}).items())
        if not keep_alive:
            head.append("connection: close")
        t.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
        if not keep_alive:
            t.close()


class ModelServer:
    """The test server on one address; ``run()`` blocks, ``start_thread()`` serves in the background."""

    def __init__(self, config: ServerConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = ServerState(config or ServerConfig())
        self.host = host
        self.port = port
        self.connections: set[_Connection] = set()
        self.started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.routes = {
            "/health": ("GET", health),
            "/v1/models": ("GET", models),
            "/v1/chat/completions": ("POST", chat_completions),
            "/control/faults": ("POST", control_faults),
            "/control/truth": ("POST", control_truth),
            "/control/stats": ("GET", control_stats),
            "/control/reset": ("POST", control_reset),
            "/control/gate": ("POST", control_gate),
        }

    @property
    def config(self) -> ServerConfig:
        return self.state.config

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def dispatch(self, req: Request) -> Reply:
        route = self.routes.get(req.path)
        if route is None:
            return _error(404, f"no route {req.path}", "NotFoundError")
        if req.method != route[0]:
            return _error(405, f"{req.method} not allowed on {req.path}", "MethodNotAllowed")
        return await route[1](self.state, req)

    async def serve(self) -> None:
        # load Pillow's format plugins before taking requests (the first Image.open would import
        # them, ~50 ms, in the middle of the first batch), as a real server is warm once healthy
        Image.preinit()
        loop = asyncio.get_running_loop()
        self._loop, self._stop = loop, asyncio.Event()
        server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, backlog=4096, reuse_address=True
        )
        self.port = server.sockets[0].getsockname()[1]
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await server.wait_closed()

    def stop(self) -> None:
        """Stop serving (from any thread)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def run(self) -> None:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self._serve_until_signalled())

    async def _serve_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        await self.serve()

    def start_thread(self, timeout: float = 30) -> threading.Thread:
        """Serve in a daemon thread (its own event loop); returns once the port is bound."""

        def target() -> None:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(self.serve())

        thread = threading.Thread(target=target, name="vllm-test-server", daemon=True)
        thread.start()
        if not self.started.wait(timeout):
            raise RuntimeError("the vLLM test server did not start")
        return thread


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return None
    return uvloop.new_event_loop


# --------------------------------------------------------------------------- endpoints


def _read_image(raw: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(raw))
    size = img.size
    intact = (img.format == "JPEG" and raw.rstrip(b"\0")[-2:] == b"\xff\xd9") or (
        img.format == "PNG" and raw[-8:-4] == b"IEND"
    )
    if not intact:
        if img.format == "JPEG":  # decode in the DCT domain at 1/8 scale: cheap, still a decode
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        img.load()
    return size


def _video_frames(url: str) -> list[tuple[int, int]]:
    """Frame sizes of a ``video_url`` as vLLM reads it: ``data:video/jpeg;base64,<f1>,<f2>,...``
    (every frame a JPEG, all one size) or a container (``data:video/<type>;base64,`` decoded by
    PyAV here, where vLLM would use its video loader). ``file://`` URLs are not served here."""
    i = url.find("base64,") if url.startswith("data:video") else -1
    if i < 0:
        raise ValueError("only base64 data URLs are supported by this test server")
    mime = url[5 : url.index(";")]
    if mime == "video/jpeg":
        sizes = [_read_image(binascii.a2b_base64(f, strict_mode=True)) for f in url[i + 7 :].split(",")]
        if len(set(sizes)) != 1:
            raise ValueError(f"video/jpeg frames differ in size: {sorted(set(sizes))}")
        return sizes
    import av

    with av.open(io.BytesIO(binascii.a2b_base64(url[i + 7 :], strict_mode=True))) as c:
        return [(f.width, f.height) for f in c.decode(video=0)]


def media_summary(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """What the request carries: images and videos (frame counts), read as vLLM would read them
    (a corrupt payload fails). The answer's size is the first item's (a video's frame size)."""
    images: list[tuple[int, int]] = []
    videos: list[list[tuple[int, int]]] = []
    first: tuple[int, int] | None = None
    for msg in messages:
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                i = url.find("base64,") if url.startswith("data:image") else -1
                if i < 0:
                    raise ValueError("only base64 data URLs are supported by this test server")
                images.append(_read_image(binascii.a2b_base64(url[i + 7 :], strict_mode=True)))
                first = first or images[-1]
            elif part.get("type") == "video_url":
                videos.append(_video_frames(part["video_url"]["url"]))
                first = first or videos[-1][0]
    if first is None:
        raise ValueError("no image_url or video_url in the messages")
    return {"size": first, "images": len(images), "video_frames": [len(v) for v in videos]}


def _image_size(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """The size of the request's first image (or video frame); see :func:`media_summary`."""
    return media_summary(messages)["size"]


def _answer_record(
    state: ServerState, key: str | None, spec: str, width: int, height: int, schema: Any, frame: tuple[int, int]
) -> tuple:
    """(record in the model's coordinates, confidence map, structural p); ``frame`` is the (h, w)
    the processor made of the received image."""
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
        mh, mw = frame
        record = convert_boxes(record, mw / orig_w, mh / orig_h, mw, mh)
    return record, conf, structural_p


def _break_schema(record: Any) -> Any:
    if isinstance(record, dict) and record:
        broken = dict(record)
        broken.pop(next(iter(broken)))
        broken["unexpected_field"] = 1
        return broken
    return {"unexpected_field": 1}


async def chat_completions(state: ServerState, request: Request) -> Reply:
    cfg = state.config
    try:
        body = json.loads(request.body)
    except ValueError:
        return _error(400, "invalid JSON body", "BadRequestError")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object", "BadRequestError")
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
        media = media_summary(body.get("messages") or [])
        width, height = media["size"]
    except (ValueError, KeyError, TypeError, binascii.Error, OSError) as e:
        return _error(400, f"could not read the image: {e}", "BadRequestError")
    with state.lock:
        state.requests += 1
        state.by_key[key or "-"] += 1
        state.sizes[key or "-"] = [width, height]
        state.last_request = {k: v for k, v in body.items() if k != "messages"}
        state.last_media = {k: v for k, v in media.items() if k != "size"}
        state.queued += 1
        state.max_queued = max(state.max_queued, state.queued)
    fault = state.next_fault(key)
    await state.gate.wait()
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
                    await request.wait_disconnected(float(fault.get("seconds", cfg.hang_s)))
                    return _error(504, "hung request released", "Timeout")
                if fault["kind"] == "500":
                    return _error(500, "injected internal error", "InternalServerError")
                if fault["kind"] == "429":
                    ra = fault.get("retry_after")
                    headers = {"Retry-After": str(ra)} if ra is not None else None
                    return _error(429, "injected: too many requests", "RateLimitError", headers)
            frame = processor_frame(height, width, cfg.min_pixels, cfg.max_pixels, cfg.resize_factor)
            if fault and fault["kind"] == "resize":  # the processor resizes the received image again
                f = cfg.resize_factor
                frame = processor_frame(
                    frame[0],
                    frame[1],
                    int(fault.get("min_pixels", 4 * f * f)),
                    int(fault.get("max_pixels", max(4 * f * f, frame[0] * frame[1] // 4))),
                    f,
                )
            record, conf, structural_p = _answer_record(state, key, spec, width, height, schema, frame)
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
            image_tokens = (frame[0] // cfg.resize_factor) * (frame[1] // cfg.resize_factor)
            prompt_tokens, prompt_ids_json = _prompt_token_ids(image_tokens, tuple(_prompt_texts(body)))
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
                    b', "prompt_logprobs": null',
                    (
                        b', "prompt_token_ids": ' + prompt_ids_json
                        if body.get("return_token_ids") and cfg.token_ids
                        else b""
                    ),
                    b"}",
                ]
            )
            with state.lock:
                state.completed += 1
            return Reply(200, payload)
        finally:
            with state.lock:
                state.inflight -= 1


def _prompt_texts(body: dict[str, Any]) -> list[str]:
    return [
        str(p.get("text", ""))
        for msg in body.get("messages", [])
        for p in (msg.get("content") if isinstance(msg.get("content"), list) else [])
        if p.get("type") == "text"
    ]


@functools.lru_cache(maxsize=1024)
def _prompt_token_ids(image_tokens: int, texts: tuple[str, ...]) -> tuple[int, bytes]:
    """(prompt tokens, the ids as JSON) as vLLM would tokenise the prompt: template, vision start,
    one ``<|image_pad|>`` per image token, vision end, the text (one made-up id per pre-tokenizer
    chunk), template. Cached: a batch repeats a few image sizes and one prompt."""
    text_ids = [1000 + i for t in texts for i, _ in enumerate(_PRETOKEN.findall(t))]
    head = list(range(100, 100 + TEMPLATE_TOKENS - 2 - 5))  # system turn and user header
    tail = list(range(200, 205))  # <|im_end|>, newline, assistant header
    ids = [*head, VISION_START_ID, *([IMAGE_PAD_ID] * image_tokens), VISION_END_ID, *text_ids, *tail]
    return len(ids), json.dumps(ids).encode()


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


async def models(state: ServerState, request: Request) -> Reply:
    cfg = state.config
    return _json(
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


async def control_faults(state: ServerState, request: Request) -> Reply:
    body = json.loads(request.body)
    key = body.get("key", "*")
    added = []
    for f in body.get("faults", []):
        f = {"kind": f} if isinstance(f, str) else dict(f)
        if f.get("kind") not in FAULT_KINDS:
            return _error(400, f"unknown fault {f.get('kind')!r}; known: {', '.join(FAULT_KINDS)}", "BadRequestError")
        added.append(f)
    with state.lock:
        state.faults[key].extend(added)
    return _json({"key": key, "queued": len(state.faults[key])})


async def control_truth(state: ServerState, request: Request) -> Reply:
    body = json.loads(request.body)
    with state.lock:
        state.truth[body["key"]] = body["truth"]
    return _json({"ok": True, "n_truth": len(state.truth)})


async def control_stats(state: ServerState, request: Request) -> Reply:
    return _json(state.stats())


async def control_reset(state: ServerState, request: Request) -> Reply:
    with state.lock:
        state.faults.clear()
    state.reset_stats()
    state.gate.set()
    return _json({"ok": True})


async def control_gate(state: ServerState, request: Request) -> Reply:
    try:
        closed = json.loads(request.body)["closed"]
    except (ValueError, KeyError, TypeError):
        return _error(400, 'the body must be {"closed": true|false}', "BadRequestError")
    if not isinstance(closed, bool):
        return _error(400, '"closed" must be true or false', "BadRequestError")
    if closed:
        state.gate.clear()
    else:
        state.gate.set()
    with state.lock:
        queued = state.queued
    return _json({"closed": closed, "queued": queued})


async def health(state: ServerState, request: Request) -> Reply:
    return Reply(200, b"")


def main(argv: list[str] | None = None) -> None:
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
    p.add_argument("--resize-factor", type=int, default=ServerConfig.resize_factor, help="28 Qwen2/2.5-VL, 32 Qwen3-VL")
    p.add_argument("--no-token-ids", action="store_true", help="ignore return_token_ids, like an older vLLM")
    args = p.parse_args(argv)
    config = ServerConfig(
        model=args.model,
        slots=args.slots,
        latency_ms=args.latency_ms,
        coordinate_mode=args.coordinate_mode,
        truth_dirs=args.truth_dir or [DEFAULT_TRUTH_DIR],
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        resize_factor=args.resize_factor,
        token_ids=not args.no_token_ids,
    )
    ModelServer(config, args.host, args.port).run()


if __name__ == "__main__":
    main()
