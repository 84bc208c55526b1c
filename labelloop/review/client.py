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
