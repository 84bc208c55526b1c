"""Async client for an OpenAI-compatible ``/v1/chat/completions`` (vLLM), built on httpx.

One :class:`ChatClient` per backend and event loop, reused for every request: a fresh client per
request would pay a TCP handshake each time and never reuse keep-alive connections, which is
what keeps a GPU server saturated. The connection pools together hold as many connections as the
runner's concurrency (plus headroom), so a request never waits for a pooled connection (pool waits
would count against no timeout and silently cap throughput). They are several small httpx pools
rather than one big one; see ``ChatClient.__init__`` for why.

Retries (tenacity): 429, 5xx, timeouts and transport errors are retried with exponential backoff
and jitter, ``max_retries`` times; a ``Retry-After`` header (seconds or an HTTP date) overrides
the backoff, capped at the request timeout so a hostile header cannot park a worker for hours.
Other 4xx (bad request, context too long) are not retried: the same request would fail again.
"""

from __future__ import annotations

import email.utils
import json
import math
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import certifi
import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

REQUEST_ID_HEADER = "X-Request-Id"
#: connections per httpx pool (see ChatClient.__init__)
CONNECTIONS_PER_SHARD = 4
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class ChatError(Exception):
    """A request that failed for good (after retries, or a non-retryable status)."""

    def __init__(self, reason: str, *, status: int | None = None, body: str | None = None, attempts: int = 1):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.body = body
        self.attempts = attempts


class RetryableHTTPError(Exception):
    def __init__(self, status: int, body: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


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
    # TimeoutException and NetworkError (connect/read/write errors) plus a server closing the
    # connection mid-response (RemoteProtocolError) are all TransportError subclasses.
    return isinstance(exc, RetryableHTTPError | httpx.TransportError)


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


class ChatClient:
    """Chat completions with structured output and logprobs against one server."""

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._wait = _Wait(backoff_initial_s, backoff_max_s, retry_after_cap=timeout_s)
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # httpcore's pool scans all its connections on every request start and finish (with a
        # socket poll per idle one), which costs milliseconds of CPU per request at 64
        # connections. Several small pools behind a least-loaded pick keep that scan short; the
        # pick guarantees no shard ever needs more than its share while the total is bounded.
        # one TLS context for all pools (building one costs ~50 ms and a few MB)
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=certifi.where())
        n_shards = max(1, math.ceil(max_connections / CONNECTIONS_PER_SHARD))
        per_shard = math.ceil(max_connections / n_shards)
        self._shards = [
            httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                # pool=None: the caller bounds concurrency; waiting for a connection is no error
                timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0), pool=None),
                limits=httpx.Limits(
                    max_connections=per_shard, max_keepalive_connections=per_shard, keepalive_expiry=60.0
                ),
                transport=transport,
                verify=verify,
            )
            for _ in range(n_shards)
        ]
        self._load = [0] * n_shards

    @property
    def pool_size(self) -> int:
        """Connections the client may open in total."""
        return sum(c._transport._pool._max_connections for c in self._shards)  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        for c in self._shards:
            await c.aclose()

    async def list_models(self) -> list[str]:
        resp = await self._shards[0].get("/models")
        resp.raise_for_status()
        return [m["id"] for m in resp.json().get("data", [])]

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
    ) -> ChatResult:
        """One completion, retried on transient failures; raises :class:`ChatError` otherwise.

        ``request_id`` is sent as ``X-Request-Id`` (suffixed with the attempt number, since vLLM
        wants ids unique among running requests) so server logs can be traced to an item.

        The schema goes in ``response_format`` (``json_schema``, strict): the form every vLLM
        version honours. The older ``guided_json`` extra parameter is removed from vLLM 0.12 and
        silently ignored there, which would quietly turn off the constraint.
        """
        body: dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "temperature": temperature,
            "max_tokens": max_tokens,
            "logprobs": logprobs,
        }
        if logprobs and top_logprobs:
            body["top_logprobs"] = top_logprobs
        if json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": json_schema, "strict": True},
            }
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        attempts = 0
        t0 = time.perf_counter()
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.max_retries + 1),
                wait=self._wait,
                retry=retry_if_exception(_is_retryable),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    rid = {REQUEST_ID_HEADER: f"{request_id}-{attempts}"} if request_id else None
                    data = await self._post(payload, rid)
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
        except httpx.TimeoutException as e:
            raise ChatError(f"timeout after {attempts} attempt(s): {type(e).__name__}", attempts=attempts) from e
        except httpx.TransportError as e:
            raise ChatError(
                f"connection error after {attempts} attempt(s): {type(e).__name__}: {e}", attempts=attempts
            ) from e
        return self._result(data, (time.perf_counter() - t0) * 1000, attempts)

    async def _post(self, payload: bytes, headers: Mapping[str, str] | None) -> dict[str, Any]:
        i = min(range(len(self._load)), key=self._load.__getitem__)
        self._load[i] += 1
        try:
            resp = await self._shards[i].post("/chat/completions", content=payload, headers=headers)
        finally:
            self._load[i] -= 1
        if resp.status_code in RETRYABLE_STATUS or resp.status_code >= 500:
            raise RetryableHTTPError(resp.status_code, resp.text, parse_retry_after(resp.headers.get("Retry-After")))
        if resp.status_code >= 400:
            raise ChatError(f"HTTP {resp.status_code} (not retried)", status=resp.status_code, body=resp.text)
        try:
            data = resp.json()
        except ValueError as e:
            raise ChatError("the server's response is not JSON", status=resp.status_code, body=resp.text) from e
        if not isinstance(data, dict) or not data.get("choices"):
            raise ChatError("the server's response has no choices", status=resp.status_code, body=resp.text)
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
        )
