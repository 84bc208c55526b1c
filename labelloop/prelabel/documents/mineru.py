"""MinerU as a document backend: its CLI in its own environment, or a mineru-api server.

MinerU's models cannot live in the platform's environment (torch, CUDA, its own pins), so it is
reached at arm's length: ``mode=cli`` runs ``settings.mineru.command`` (``{input}``/``{output}``
substituted; magic-pdf 1.3 or mineru 2.x+) as a subprocess with a per-document timeout, and
``mode=http`` posts the PDF to ``mineru-api``'s ``/file_parse``. Either way the classic output
files are parsed by :mod:`labelloop.documents.mineru_parse` into blocks on the page images this
backend renders itself, so boxes match the review images whatever DPI MinerU used internally.

A crash, a non-zero exit, a timeout or unusable output on one document is a failed prediction
with the reason; the batch goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from labelloop.config import Settings
from labelloop.db.models import Item
from labelloop.documents.mineru_parse import (
    MinerUOutput,
    MinerUOutputError,
    find_output_dir,
    load_output_dir,
    output_from_api,
    parse_output,
)
from labelloop.documents.render import DocumentError
from labelloop.prelabel.base import PredictionResult
from labelloop.prelabel.documents.common import DocumentBackend, build_result, close
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore

log = logging.getLogger(__name__)
_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?")


class MinerURunError(RuntimeError):
    """MinerU did not produce output for a document (exit code, timeout, HTTP error)."""


class _ServerError(Exception):
    """A 5xx answer from mineru-api: worth retrying."""


def build_argv(template: str, input_path: Path, output_dir: Path) -> list[str]:
    """The command as an argv list; placeholders are substituted per token, so paths with blanks
    stay one argument and nothing is interpreted by a shell."""
    argv = [
        tok.replace("{input}", str(input_path)).replace("{output}", str(output_dir)) for tok in shlex.split(template)
    ]
    if not argv:
        raise ValueError("settings.mineru.command is empty")
    return argv


def backend_label(template: str) -> str:
    """The MinerU backend a CLI command selects: ``-b`` (mineru 2.x+) or ``-m`` (magic-pdf 1.3)."""
    tokens = shlex.split(template)
    for flags in (("-b", "--backend"), ("-m", "--method")):
        for i, tok in enumerate(tokens[:-1]):
            if tok in flags:
                return tokens[i + 1]
    return "default"


def probe_cli_version(template: str, timeout_s: float = 120.0) -> str | None:
    """Ask the MinerU CLI for its version once (``<cli> --version``); None if it does not say."""
    try:
        exe = shlex.split(template)[0]
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        return None
    m = _VERSION.search(proc.stdout + proc.stderr)
    return m.group(0) if m else None


def _tail(text: bytes | str | None, n: int = 600) -> str:
    if not text:
        return ""
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return s.strip()[-n:]


def _transient(e: BaseException) -> bool:
    return isinstance(e, _ServerError | httpx.TimeoutException | httpx.TransportError | TimeoutError)


class MinerUBackend(DocumentBackend):
    name = "mineru"
    model = "mineru"
    #: first retry wait in seconds (doubles per attempt, capped at 30 s); tests lower it
    retry_wait_s: float = 1.0

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        super().__init__(settings, store)
        cfg = settings.mineru
        if cfg.mode == "cli":
            label = backend_label(cfg.command)
            version = cfg.version or probe_cli_version(cfg.command) or "unknown"
        else:
            label = cfg.backend
            version = cfg.version or "unknown"
        self.configured_version = version
        self.model_version = f"mineru-{version}-{label}"

    def identity_config(self) -> dict[str, Any]:
        cfg = self.settings.mineru
        run = {"command": cfg.command} if cfg.mode == "cli" else {"parse_method": cfg.parse_method, "lang": cfg.lang}
        return {"render_dpi": self.settings.documents.render_dpi, "mode": cfg.mode, **run}

    async def predict(self, item: Item, data: bytes, spec: TaskSpec) -> PredictionResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            res = await self._predict(item, data)
        except (DocumentError, MinerURunError, MinerUOutputError) as e:
            res = PredictionResult.failed(str(e))
        except httpx.HTTPError as e:
            res = PredictionResult.failed(f"mineru-api error: {type(e).__name__}: {e}")
        except Exception as e:  # one document's trouble never stops the batch
            log.exception("MinerU backend failed on item %s", item.id)
            res = PredictionResult.failed(f"mineru error: {type(e).__name__}: {e}")
        res.latency_ms = (loop.time() - t0) * 1000
        return res

    async def _predict(self, item: Item, data: bytes) -> PredictionResult:
        doc, geoms, written = await asyncio.to_thread(self.prepare, item, data)
        await asyncio.to_thread(close, doc)  # MinerU reads the bytes itself
        if self.settings.mineru.mode == "cli":
            output = await self._run_cli(item, data)
        else:
            output = await self._run_http(item, data)
        parsed = await asyncio.to_thread(parse_output, output, geoms)
        detail = {**parsed.detail, "images_written": written, "mode": self.settings.mineru.mode}
        if output.version and self.configured_version not in ("unknown", output.version):
            detail["version_mismatch"] = {"configured": self.configured_version, "output": output.version}
            log.warning("MinerU output says version %s, configured %s", output.version, self.configured_version)
        return await asyncio.to_thread(build_result, geoms, parsed.blocks, parsed.markdown, detail)

    # ------------------------------------------------------------------ CLI

    async def _run_cli(self, item: Item, data: bytes) -> MinerUOutput:
        cfg = self.settings.mineru
        with tempfile.TemporaryDirectory(prefix="labelloop-mineru-") as tmp:
            stem = item.sha256
            input_path = Path(tmp) / "in" / f"{stem}.pdf"
            output_dir = Path(tmp) / "out"
            input_path.parent.mkdir()
            output_dir.mkdir()
            await asyncio.to_thread(input_path.write_bytes, data)
            argv = build_argv(cfg.command, input_path, output_dir)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,  # its own process group: a timeout kills workers too
                )
            except OSError as e:
                raise MinerURunError(f"cannot start MinerU ({argv[0]}): {e}") from None
            try:
                _, stderr = await asyncio.wait_for(proc.communicate(), cfg.timeout_s)
            except TimeoutError:
                raise MinerURunError(f"MinerU timed out after {cfg.timeout_s:g} s") from None
            finally:
                if proc.returncode is None:
                    await _kill_group(proc)
            if proc.returncode != 0:
                raise MinerURunError(f"MinerU exited with code {proc.returncode}: {_tail(stderr)}")
            folder = find_output_dir(output_dir, stem)
            return await asyncio.to_thread(load_output_dir, folder)

    # ------------------------------------------------------------------ HTTP

    async def _run_http(self, item: Item, data: bytes) -> MinerUOutput:
        cfg = self.settings.mineru
        stem = item.sha256
        url = cfg.api_url.rstrip("/") + "/file_parse"
        # mineru-api form fields; booleans lowercase, as 3.x requires and 2.x accepts
        form = {
            "backend": cfg.backend,
            "parse_method": cfg.parse_method,
            "lang_list": cfg.lang,
            "formula_enable": "true",
            "table_enable": "true",
            "return_md": "true",
            "return_middle_json": "true",
            "return_model_output": "true",
            "return_content_list": "true",
            "return_images": "false",
            "response_format_zip": "false",
        }
        files = {"files": (f"{stem}.pdf", data, "application/pdf")}
        timeout = httpx.Timeout(cfg.timeout_s, connect=min(30.0, cfg.timeout_s))
        async with httpx.AsyncClient(timeout=timeout) as client:
            retrying = AsyncRetrying(
                stop=stop_after_attempt(cfg.max_retries + 1),
                wait=wait_exponential(multiplier=self.retry_wait_s, max=30),
                retry=retry_if_exception(_transient),
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        async with asyncio.timeout(cfg.timeout_s):
                            resp = await client.post(url, data=form, files=files)
                        if resp.status_code >= 500:
                            raise _ServerError(f"HTTP {resp.status_code}: {_tail(resp.text, 300)}")
            except _ServerError as e:
                raise MinerURunError(f"mineru-api failed after {cfg.max_retries + 1} attempts: {e}") from None
            except (TimeoutError, httpx.TimeoutException):
                raise MinerURunError(f"mineru-api timed out after {cfg.timeout_s:g} s") from None
        if resp.status_code >= 400:
            raise MinerURunError(f"mineru-api rejected the document: HTTP {resp.status_code}: {_tail(resp.text, 300)}")
        try:
            body = resp.json()
        except ValueError:
            raise MinerUOutputError(f"mineru-api answered non-JSON: {_tail(resp.text, 200)}") from None
        return output_from_api(body, stem)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill MinerU and everything it started (model workers), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 10)
