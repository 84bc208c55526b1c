"""The Label Studio SDK client, built from settings, with errors a person can act on.

Both token kinds work with the same code: a legacy DRF token is sent as ``Token <key>``; a personal
access token (a JWT refresh token) is exchanged by the SDK itself for 5-minute access tokens. The
two failure modes that cost people hours get their own message: a legacy token on an organisation
where legacy tokens are disabled (401 "legacy token authentication has been disabled"), and an
expired or malformed PAT (401 raised while the client is being built, before any request).
"""

from __future__ import annotations

from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from labelloop.config import LabelStudioSettings


class LabelStudioError(RuntimeError):
    """A Label Studio call failed; the message says what and why, without response headers."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class LabelStudioAuthError(LabelStudioError):
    """The token was refused (401/403)."""


def api_error_message(e: ApiError) -> str:
    """``HTTP <status>: <detail>``; the SDK's own ``str()`` dumps every response header."""
    body = e.body
    if isinstance(body, dict):
        detail = body.get("detail") or body
        errors = body.get("validation_errors")
        text = f"{detail} {errors}" if errors else str(detail)
    else:
        text = str(body)
    return f"HTTP {e.status_code}: {text[:1000]}"


def _auth_hint(url: str, token: str, e: ApiError) -> str:
    msg = api_error_message(e)
    kind = "personal access token (JWT)" if token.count(".") == 2 else "legacy API token"
    hint = f"Label Studio at {url} refused the {kind}: {msg}."
    if "legacy token" in msg:
        hint += (
            " Legacy tokens are disabled for this organisation: use a personal access token, or enable"
            " legacy tokens (server env LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true at first start, or"
            " Organization > Access Token Settings)."
        )
    elif "expir" in msg or "refresh token" in msg:
        hint += " Create a new personal access token in Account & Settings."
    else:
        hint += " Check LABELLOOP_LABEL_STUDIO__TOKEN or the password of the Airflow connection."
    return hint


def make_client(url: str, token: str, *, timeout: float = 60.0, verify: bool = True) -> LabelStudio:
    """A client for ``url``; with ``verify`` one ``whoami`` call proves the token works now,
    so a bad token fails here with a clear message instead of deep inside an import."""
    url = url.rstrip("/")
    if not token:
        raise LabelStudioAuthError(
            f"no Label Studio token for {url}: set LABELLOOP_LABEL_STUDIO__TOKEN (a legacy API token or "
            "a personal access token) or the password of the Airflow connection"
        )
    try:
        # api_key is passed explicitly: the SDK's default reads LABEL_STUDIO_API_KEY at import time
        ls = LabelStudio(base_url=url, api_key=token, timeout=timeout)
        if verify:
            ls.users.whoami()
    except ApiError as e:
        if e.status_code in (401, 403):
            raise LabelStudioAuthError(_auth_hint(url, token, e), e.status_code) from None
        raise LabelStudioError(f"Label Studio at {url}: {api_error_message(e)}", e.status_code) from None
    except httpx.RequestError as e:  # server down, wrong port, DNS: say where and what, not a bare ConnectError
        raise LabelStudioError(
            f"connect to Label Studio: unreachable at {url}: {type(e).__name__}: {e}; "
            "check LABELLOOP_LABEL_STUDIO__URL and that the server is up"
        ) from None
    return ls


def client_from_settings(settings: LabelStudioSettings, *, verify: bool = True) -> LabelStudio:
    return make_client(settings.url, settings.token.get_secret_value(), verify=verify)


def call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one SDK call, turning :class:`ApiError` and transport errors (server down, timeout)
    into :class:`LabelStudioError` naming the step and the URL."""
    try:
        return fn(*args, **kwargs)
    except ApiError as e:
        cls = LabelStudioAuthError if e.status_code in (401, 403) else LabelStudioError
        raise cls(f"{what}: {api_error_message(e)}", e.status_code) from None
    except httpx.RequestError as e:
        try:
            url = str(e.request.url)
        except RuntimeError:  # no request attached
            url = "(unknown URL)"
        raise LabelStudioError(
            f"{what}: Label Studio unreachable at {url}: {type(e).__name__}: {e}; rerun when it is back"
        ) from None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:1000]
    if isinstance(body, dict):
        detail = body.get("detail") or body
        errors = body.get("validation_errors")
        return (f"{detail} {errors}" if errors else str(detail))[:1000]
    return str(body)[:1000]


def request(
    ls: LabelStudio,
    what: str,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    content: bytes | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    ok_404: bool = False,
) -> httpx.Response:
    """One request through the SDK's own HTTP client (its auth, PAT refresh, base URL), without
    the SDK's pydantic models on either side.

    Why not the typed methods here: an import or sync page is thousands of tasks, and the SDK
    walks every value of the request through ``jsonable_encoder`` and builds a pydantic model of
    every task of the answer, which costs more than Label Studio's own work for the same page.
    The hot paths (bulk import, sync pages) send bytes and read ``response.json()`` instead;
    the response headers (``Date``: the server's clock, see :mod:`.sync`) are kept too.
    ``retries`` None keeps the SDK's retries (idempotent reads); 0 for a non-idempotent POST.
    Errors are :class:`LabelStudioError` naming the step, the URL and the answer.
    """
    options: dict[str, Any] = {}
    if timeout is not None:
        options["timeout"] = timeout
    if retries is not None:
        options["max_retries"] = retries
    wrapper = ls._client_wrapper  # the SDK's configured client (auth, base URL, PAT refresh)
    url = f"{wrapper.get_base_url().rstrip('/')}/{path.lstrip('/')}"
    try:
        r = wrapper.httpx_client.request(
            path,
            method=method,
            params=params,
            content=content,
            headers={"Content-Type": "application/json"} if content is not None else None,
            request_options=options or None,  # type: ignore[arg-type]
        )
    except ApiError as e:  # raised by the token refresh of a PAT
        cls = LabelStudioAuthError if e.status_code in (401, 403) else LabelStudioError
        raise cls(f"{what} at {url}: {api_error_message(e)}", e.status_code) from None
    except httpx.RequestError as e:
        raise LabelStudioError(
            f"{what}: Label Studio unreachable at {url}: {type(e).__name__}: {e}; rerun when it is back"
        ) from None
    if r.status_code == 404 and ok_404:
        return r
    if r.status_code >= 400:
        cls = LabelStudioAuthError if r.status_code in (401, 403) else LabelStudioError
        raise cls(f"{what} at {url}: HTTP {r.status_code}: {_detail(r)}", r.status_code)
    return r
