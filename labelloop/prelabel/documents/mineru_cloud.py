"""The mineru.net cloud API (v4) for local files: request upload URLs, PUT, poll, download the zip.

Flow (mineru.net's documented API): ``POST /file-urls/batch`` ``{files: [{name, data_id,
page_ranges}], model_version}`` -> ``{batch_id, file_urls}``; ``PUT`` the bytes to the URL (no
Content-Type: the URL is signed without one); poll ``GET /extract-results/batch/{batch_id}`` until
the file's ``state`` is ``done`` or ``failed`` (``waiting-file``, ``pending``, ``running``,
``converting`` mean wait) with exponential backoff; download ``full_zip_url``, whose ``layout.json``
(a middle.json with the pipeline's scores), ``*_model.json``, ``*_content_list.json`` and
``full.md`` are read like a local 2.x run. Every response is ``{code, msg, data}``; ``code != 0`` is a
failure with its message. 429/5xx and transport errors are retried; limits (size, pages) are checked
before anything is uploaded. The token is a :class:`~pydantic.SecretStr` and never logged.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from labelloop.config import MinerUSettings
from labelloop.documents.mineru_parse import MinerUOutput, MinerUOutputError, load_output_dir

WAITING = ("waiting-file", "pending", "running", "converting")


class MinerUCloudError(RuntimeError):
    """mineru.net refused or failed the document (the message names the step)."""


class _Retry(Exception):
    pass


class MinerUCloudClient:
    def __init__(self, cfg: MinerUSettings, *, retry_wait_s: float = 1.0) -> None:
        self.cfg = cfg
        self.base = cfg.cloud_url.rstrip("/")
        self.retry_wait_s = retry_wait_s

    def _headers(self) -> dict[str, str]:
        token = self.cfg.cloud_token.get_secret_value()
        if not token:
            raise MinerUCloudError("mineru.net: no API token (settings.mineru.cloud_token / the mineru connection)")
        return {"Authorization": f"Bearer {token}"}

    async def parse(self, name: str, data: bytes, *, page_ranges: str = "", pages: int = 0) -> MinerUOutput:
        cfg = self.cfg
        if len(data) > cfg.cloud_max_bytes:
            raise MinerUCloudError(f"mineru.net: file is {len(data)} bytes, over the {cfg.cloud_max_bytes}-byte limit")
        if pages > cfg.cloud_max_pages:
            raise MinerUCloudError(f"mineru.net: {pages} pages, over the {cfg.cloud_max_pages}-page limit")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.timeout_s
        timeout = httpx.Timeout(min(cfg.timeout_s, 300.0), connect=30.0)
        async with httpx.AsyncClient(timeout=timeout) as client:
            entry: dict[str, Any] = {"name": name, "data_id": name.rsplit(".", 1)[0][:128]}
            if page_ranges:
                entry["page_ranges"] = page_ranges
            body = {"files": [entry], "model_version": cfg.cloud_model_version, "language": cfg.lang}
            data_ = await self._api(client, "POST", "/file-urls/batch", "request upload URL", json=body)
            batch_id, urls = data_.get("batch_id"), data_.get("file_urls") or []
            if not batch_id or len(urls) != 1:
                raise MinerUCloudError(f"mineru.net: upload URL answer without batch_id/file_urls: {data_}")
            put = await self._send(client, "PUT", urls[0], "upload", content=data)
            if put.status_code >= 400:
                raise MinerUCloudError(f"mineru.net upload: HTTP {put.status_code}: {put.text[:200]}")
            wait = cfg.poll_interval_s
            while True:
                res = await self._api(client, "GET", f"/extract-results/batch/{batch_id}", "poll")
                results = res.get("extract_result") or []
                mine = next((r for r in results if r.get("file_name") == name), results[0] if results else {})
                state = mine.get("state")
                if state == "done":
                    break
                if state == "failed":
                    raise MinerUCloudError(f"mineru.net batch {batch_id} failed: {mine.get('err_msg') or 'no reason'}")
                if state not in WAITING:
                    raise MinerUCloudError(f"mineru.net batch {batch_id}: unknown state {state!r}")
                if loop.time() + wait > deadline:
                    raise MinerUCloudError(f"mineru.net batch {batch_id} still {state} after {cfg.timeout_s:g} s")
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30.0)
            zip_url = mine.get("full_zip_url")
            if not zip_url:
                raise MinerUCloudError(f"mineru.net batch {batch_id}: done without full_zip_url")
            z = await self._send(client, "GET", zip_url, "download")
            if z.status_code >= 400:
                raise MinerUCloudError(
                    f"mineru.net download of batch {batch_id} result: HTTP {z.status_code} (expired URL?)"
                )
        return _read_zip(z.content, f"mineru.net batch {batch_id}")

    async def _api(self, client: httpx.AsyncClient, method: str, path: str, step: str, **kw: Any) -> dict[str, Any]:
        resp = await self._send(client, method, self.base + path, step, headers=self._headers(), **kw)
        try:
            body = resp.json()
        except ValueError:
            raise MinerUCloudError(f"mineru.net {step}: HTTP {resp.status_code}, not JSON: {resp.text[:200]}") from None
        if resp.status_code >= 400 or body.get("code") not in (0, None):
            code, msg = body.get("code"), body.get("msg")
            raise MinerUCloudError(f"mineru.net {step}: HTTP {resp.status_code} code {code}: {msg}")
        return body.get("data") or {}

    async def _send(self, client: httpx.AsyncClient, method: str, url: str, step: str, **kw: Any) -> httpx.Response:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.max_retries + 1),
            wait=wait_exponential(multiplier=self.retry_wait_s, max=30),
            retry=retry_if_exception(lambda e: isinstance(e, _Retry | httpx.TransportError)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    resp = await client.request(method, url, **kw)
                    if resp.status_code == 429 or resp.status_code >= 500:
                        raise _Retry(f"HTTP {resp.status_code}")
        except _Retry as e:
            raise MinerUCloudError(f"mineru.net {step}: {e} after {self.cfg.max_retries + 1} attempts") from None
        except httpx.TransportError as e:
            raise MinerUCloudError(f"mineru.net {step}: {type(e).__name__}: {e}") from None
        return resp


def _read_zip(blob: bytes, origin: str) -> MinerUOutput:
    """The result zip: ``layout.json`` stands in for ``*_middle.json``; ``full.md`` is the Markdown."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile:
        raise MinerUOutputError(f"{origin}: result is not a zip") from None
    with tempfile.TemporaryDirectory(prefix="labelloop-mineru-cloud-") as tmp, zf:
        root = Path(tmp)
        for info in zf.infolist():
            p = Path(info.filename)
            if info.is_dir() or p.is_absolute() or ".." in p.parts or p.suffix not in (".json", ".md"):
                continue  # images and PDFs are not needed; unsafe paths are never written
            target = root / ("x_middle.json" if p.name == "layout.json" else p.name)
            target.write_bytes(zf.read(info))
        out = load_output_dir(root)
    out.origin = origin
    return out
