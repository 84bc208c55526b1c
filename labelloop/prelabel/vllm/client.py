"""Async client for an OpenAI-compatible ``/v1/chat/completions`` (vLLM), built on aiohttp.

One :class:`ChatClient` per backend and event loop, reused for every request: a fresh client per
request would pay a TCP handshake each time and never reuse keep-alive connections, which is
what keeps a GPU server saturated. The pool holds as many connections as the runner's
concurrency (plus headroom), so a request never waits for a pooled connection.

Why aiohttp and not httpx: at a few hundred requests per second the client's own CPU decides
whether the server stays full, and on a small machine it shares the cores with everything else.
httpx (httpcore, h11, anyio) spent over a millisecond of Python per request (a pool scan with a
socket poll per idle connection, peer-address look-ups, per-request URL parsing and header
validation); aiohttp's pool and C HTTP parser do the same work in a fraction of that.

JSON goes through msgspec both ways (a fraction of the json module's cost). Request bodies are
built once as bytes: an image travels as a :class:`DataURL` whose base64 is copied into the JSON
as is (never scanned for characters to escape), and a retry resends the same bytes. The first
attempt runs without tenacity's machinery; only a failure brings it in (see ``ChatClient._retry``).

Retries (tenacity): 429, 5xx, timeouts and transport errors are retried with exponential backoff
and jitter, ``max_retries`` times; a ``Retry-After`` header (seconds or an HTTP date) overrides
the backoff, capped at the request timeout so a hostile header cannot park a worker for hours.
Other 4xx (bad request, context too long) are not retried: the same request would fail again.

Timeouts mirror what the httpx client had: ``timeout_s`` for the answer (from the end of the
upload to the response, and between reads), at most 10 s to connect. Proxies come from the
environment (``HTTP(S)_PROXY``/``NO_PROXY``), resolved once per client rather than per request.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import certifi
import msgspec
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

REQUEST_ID_HEADER = "X-Request-Id"
#: the response as plain dicts and lists, like json.loads, at a third of its cost: a response is
#: ~100 logprob entries, and decoding it was the largest single cost per request after HTTP
_decode_json = msgspec.json.Decoder().decode
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class ChatError(Exception):
    """A request that failed for good (after retries, or a non-retryable status)."""

    def __init__(self, reason: str, *, status: int | None = None, body: str | None = None, attempts: int = 1):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.body = body
        self.attempts = attempts

    @property
    def transient(self) -> bool:
        """The server was unreachable, timed out, or said 429/5xx: worth retrying in a later run.
        Any other status (400 context too long, a 200 that is not JSON) would fail again."""
        return self.status is None or self.status in RETRYABLE_STATUS or self.status >= 500


class RetryableHTTPError(Exception):
    def __init__(self, status: int, body: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


class DataURL:
    """A ``data:`` URL kept as its base64 bytes; the request body gets them spliced in as is.

    Use it wherever a message holds an image URL string. ``str()`` gives the URL text.
    """

    __slots__ = ("b64", "mime")

    def __init__(self, mime: str, b64: bytes) -> None:
        self.mime = mime
        self.b64 = b64

    def __str__(self) -> str:
        return f"data:{self.mime};base64,{self.b64.decode('ascii')}"

    def __repr__(self) -> str:
        return f"DataURL({self.mime!r}, <{len(self.b64)} base64 bytes>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataURL) and (self.mime, self.b64) == (other.mime, other.b64)

    def __hash__(self) -> int:
        return hash((self.mime, self.b64))

    def json_bytes(self) -> bytes:
        """The URL as a JSON string (base64 and a MIME type need no escaping)."""
        return b'"data:' + self.mime.encode("ascii") + b";base64," + self.b64 + b'"'


def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, DataURL):
        return msgspec.Raw(obj.json_bytes())
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encoder = msgspec.json.Encoder(enc_hook=_encode_hook)


def encode_body(body: Mapping[str, Any]) -> bytes:
    """``body`` as UTF-8 JSON; every :class:`DataURL` in it is spliced in without re-encoding.

    msgspec rather than ``json.dumps``: a tenth of the cost for the request's schema and prompt,
    and the base64 is copied in as raw bytes instead of being scanned for characters to escape.
    """
    return _encoder.encode(body)


@dataclass
class ChatResult:
    content: str | None
    finish_reason: str | None
    #: ``choices[0].logprobs.content`` as sent by the server (list of {token, logprob, bytes, ...})
    logprobs: list[dict[str, Any]] | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    attempts: int
    model: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the prompt as token ids, when the request asked for them (vLLM's ``return_token_ids``)
    prompt_token_ids: list[int] | None = field(default=None, repr=False)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _is_retryable(exc: BaseException) -> bool:
    # aiohttp.ClientError covers refused/reset connections, a server closing the connection
    # mid-response and incomplete bodies; TimeoutError covers connect and read timeouts.
    if isinstance(exc, aiohttp.InvalidURL):  # a configuration error: the same URL fails again
        return False
    return isinstance(exc, RetryableHTTPError | aiohttp.ClientError | TimeoutError)


class _Wait:
    """Exponential backoff with jitter, unless the server said how long to wait."""

    def __init__(self, initial: float, maximum: float, retry_after_cap: float) -> None:
        self.backoff = wait_exponential_jitter(initial=initial, max=maximum, jitter=initial)
        self.cap = retry_after_cap

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableHTTPError) and exc.retry_after is not None:
            return min(exc.retry_after, self.cap)
        return self.backoff(state)


def _env_proxy(url: str) -> str | None:
    """The proxy the environment asks for ``url`` (HTTP(S)_PROXY / ALL_PROXY, minus NO_PROXY)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


class ChatClient:
    """Chat completions with structured output and logprobs against one server.

    The aiohttp session is created on first use, inside the running event loop (a client may be
    constructed anywhere, e.g. by an Airflow hook, and used in a later ``asyncio.run``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        max_connections: int = 32,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.max_connections = max(1, max_connections)
        self._wait = _Wait(backoff_initial_s, backoff_max_s, retry_after_cap=timeout_s)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(timeout_s, 10.0), sock_read=timeout_s)
        self._chat_url = f"{self.base_url}/chat/completions"
        self._models_url = f"{self.base_url}/models"
        self._proxy = _env_proxy(self.base_url)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pool_size(self) -> int:
        """Connections the client may open in total."""
        return self.max_connections

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # certifi's bundle, as httpx used; only https needs a context (building one costs ~50 ms)
            tls: ssl.SSLContext | bool = (
                ssl.create_default_context(cafile=certifi.where()) if self._chat_url.startswith("https:") else True
            )
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=60.0,
                ssl=tls,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                timeout=self._timeout,
                # the environment's proxy is resolved once (self._proxy), not per request
                trust_env=False,
            )
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            if not self._session.closed and self._loop is asyncio.get_running_loop():
                await self._session.close()
            self._session = None

    async def list_models(self) -> list[str]:
        async with self._client().get(self._models_url, proxy=self._proxy) as resp:
            if resp.status >= 400:
                raise ChatError(
                    f"HTTP {resp.status} listing models ({self._models_url})",
                    status=resp.status,
                    body=await resp.text(),
                )
            data = _decode_json(await resp.read())
        return [m["id"] for m in data.get("data", [])]

    async def chat(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        json_schema: Mapping[str, Any] | None = None,
        schema_name: str = "record",
        max_tokens: int = 1024,
        logprobs: bool = True,
        top_logprobs: int = 1,
        temperature: float = 0.0,
        request_id: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> ChatResult:
        """One completion, retried on transient failures; raises :class:`ChatError` otherwise.

        ``request_id`` is sent as ``X-Request-Id`` (suffixed with the attempt number, since vLLM
        wants ids unique among running requests) so server logs can be traced to an item.

        The schema goes in ``response_format`` (``json_schema``, strict): the form every vLLM
        version honours. The older ``guided_json`` extra parameter is removed from vLLM 0.12 and
        silently ignored there, which would quietly turn off the constraint.

        Image URLs in ``messages`` may be plain strings or :class:`DataURL` (cheaper).
        ``extra_body`` adds vLLM's extra request fields (e.g. ``mm_processor_kwargs`` for video).
        """
        body: dict[str, Any] = {
            "model": model,
            "messages": messages if isinstance(messages, list) else list(messages),
            "temperature": temperature,
            "max_tokens": max_tokens,
            "logprobs": logprobs,
        }
        if logprobs and top_logprobs:
            body["top_logprobs"] = top_logprobs
        if extra_body:
            body.update(extra_body)
        if json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": json_schema, "strict": True},
            }
        payload = encode_body(body)
        del body
        attempts = 0

        async def attempt() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            rid = {REQUEST_ID_HEADER: f"{request_id}-{attempts}"} if request_id else None
            return await self._post(payload, rid)

        t0 = time.perf_counter()
        try:
            try:
                # the first attempt goes without the retry machinery: tenacity's per-call state
                # (futures with locks, a generator per attempt) costs ~50 us, and it is rarely needed
                data = await attempt()
            except Exception as first:
                if not _is_retryable(first) or self.max_retries < 1:
                    raise
                data = await self._retry(attempt, first)
        except ChatError as e:
            e.attempts = attempts
            raise
        except RetryableHTTPError as e:
            raise ChatError(
                f"HTTP {e.status} after {attempts} attempt(s)",
                status=e.status,
                body=e.body,
                attempts=attempts,
            ) from e
        except TimeoutError as e:  # before ClientError: aiohttp's timeouts are both
            raise ChatError(f"timeout after {attempts} attempt(s): {type(e).__name__}", attempts=attempts) from e
        except aiohttp.ClientError as e:
            raise ChatError(
                f"connection error after {attempts} attempt(s): {type(e).__name__}: {e}", attempts=attempts
            ) from e
        return self._result(data, (time.perf_counter() - t0) * 1000, attempts)

    async def _retry(self, attempt: Callable[[], Awaitable[dict[str, Any]]], first: BaseException) -> dict[str, Any]:
        """Attempts 2.. under tenacity, which is first shown the failure of attempt 1 (replayed,
        not resent) so that its stop, backoff and Retry-After rules apply from attempt 1 on."""
        replay = [first]

        async def call() -> dict[str, Any]:
            if replay:
                raise replay.pop()
            return await attempt()

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_is_retryable),
            reraise=True,
        )
        return await retrying(call)

    async def _post(self, payload: bytes, headers: Mapping[str, str] | None) -> dict[str, Any]:
        async with self._client().post(self._chat_url, data=payload, headers=headers, proxy=self._proxy) as resp:
            status = resp.status
            raw = await resp.read()
            retry_after = resp.headers.get("Retry-After")
        if status in RETRYABLE_STATUS or status >= 500:
            raise RetryableHTTPError(status, _text(raw), parse_retry_after(retry_after))
        if status >= 400:
            raise ChatError(f"HTTP {status} (not retried)", status=status, body=_text(raw))
        try:
            data = _decode_json(raw)
        except ValueError as e:  # msgspec.DecodeError is a ValueError
            raise ChatError("the server's response is not JSON", status=status, body=_text(raw)) from e
        if not isinstance(data, dict) or not data.get("choices"):
            raise ChatError("the server's response has no choices", status=status, body=_text(raw))
        return data

    @staticmethod
    def _result(data: dict[str, Any], latency_ms: float, attempts: int) -> ChatResult:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        usage = data.get("usage") or {}
        logprobs = choice.get("logprobs") or {}
        return ChatResult(
            content=message.get("content"),
            finish_reason=choice.get("finish_reason"),
            logprobs=logprobs.get("content"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_ms=latency_ms,
            attempts=attempts,
            model=data.get("model"),
            raw=data,
            prompt_token_ids=data.get("prompt_token_ids"),
        )


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")
