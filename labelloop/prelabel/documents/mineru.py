"""MinerU as a document backend: its CLI in its own environment, or a mineru-api server.

MinerU cannot live in the platform's environment (its own pins; torch/CUDA for the VLM tiers), so
it is reached at arm's length:

* ``mode=cli`` runs ``settings.mineru.command`` (default ``mineru-kit parse {input} -o {output}
  --tier {tier} -f middle_json -p {pages}``, from ``.venv-mineru``; older 1.3/2.x commands work
  too) as a subprocess in its own process group, killed with its workers on timeout;
* ``mode=http`` submits to a 4.x ``mineru-api`` (``POST /v1/tasks``, poll ``GET /v1/tasks/{id}``
  until completed/partial/failed/canceled, ``GET /v1/tasks/{id}/result``), for GPU nodes;
* ``mode=cloud`` uses the mineru.net v4 API (:mod:`labelloop.prelabel.documents.mineru_cloud`).

Per page: a text layer goes to MinerU at ``tier`` (flash: no models needed); a page without one goes
to MinerU at ``scan_tier`` when its models are present, else to the CPU OCR path (RapidOCR through
the pymupdf layout analyzer). The engine and tier of every page are in the record's provenance
(``confidence_detail.pages[].engine``) and the tiers in the prediction identity. MinerU 4.x gives no
scores, so its blocks are scored by agreement with the pymupdf layout backend on the same page
(:mod:`labelloop.documents.agreement`). Office documents are rendered to PDF first
(:mod:`labelloop.documents.office`) so their pages have geometry; MinerU's native office parse then
supplies the tables. Boxes are always put on the page images this backend renders itself.

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
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from labelloop.config import MinerUSettings, Settings
from labelloop.db.models import Item
from labelloop.documents import agreement, office
from labelloop.documents.mineru_parse import (
    MinerUOutput,
    MinerUOutputError,
    find_output_dir,
    load_output_dir,
    parse_output,
)
from labelloop.documents.pymupdf_layout import PyMuPDFLayoutAnalyzer, text_layer_chars
from labelloop.documents.record import Block
from labelloop.documents.render import DocumentError
from labelloop.prelabel.base import PredictionResult
from labelloop.prelabel.documents.common import DocumentBackend, build_result, close
from labelloop.prelabel.documents.mineru_cloud import MinerUCloudClient, MinerUCloudError
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore

log = logging.getLogger(__name__)
_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?")
#: the model repository MinerU 4.x's basic tier needs (``mineru-kit models show``)
MODELS_REPO = "MinerU-4_models_onnx"
TERMINAL = ("completed", "partial", "failed", "canceled")


class MinerURunError(RuntimeError):
    """MinerU did not produce output for a document (exit code, timeout, HTTP error)."""


class _ServerError(Exception):
    """A 5xx or 429 answer: worth retrying."""


def resolve_executable(exe: str, venv: Path) -> str:
    """A bare name is looked up in MinerU's virtualenv first (it is not on the platform's PATH)."""
    if "/" in exe:
        return exe
    candidate = venv / "bin" / exe
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate.resolve())
    return shutil.which(exe) or exe


def build_argv(
    template: str,
    input_path: Path,
    output_dir: Path,
    *,
    tier: str = "flash",
    pages: str | None = None,
    venv: Path | None = None,
) -> list[str]:
    """The command as an argv list; placeholders are substituted per token, so paths with blanks
    stay one argument and nothing is interpreted by a shell. ``pages=None`` (the whole document)
    drops the ``{pages}`` token and its flag: mineru-kit refuses a page range for office files."""
    subs = {"{input}": str(input_path), "{output}": str(output_dir), "{tier}": tier, "{pages}": pages or ""}
    tokens = shlex.split(template)
    if pages is None:
        keep: list[str] = []
        for tok in tokens:
            if "{pages}" in tok:
                if keep and keep[-1].startswith("-"):
                    keep.pop()
                continue
            keep.append(tok)
        tokens = keep
    argv = []
    for tok in tokens:
        for k, v in subs.items():
            tok = tok.replace(k, v)
        argv.append(tok)
    if not argv:
        raise ValueError("settings.mineru.command is empty")
    if venv is not None:
        argv[0] = resolve_executable(argv[0], venv)
    return argv


def backend_label(template: str) -> str:
    """The MinerU backend a CLI command selects: ``--tier`` (4.x), ``-b`` (2.x+) or ``-m`` (1.3)."""
    tokens = shlex.split(template)
    for flags in (("--tier",), ("-b", "--backend"), ("-m", "--method")):
        for i, tok in enumerate(tokens[:-1]):
            if tok in flags:
                return tokens[i + 1]
    return "default"


def installed_version(exe: str) -> str | None:
    """MinerU's version from the virtualenv the executable lives in (its dist-info), without
    starting it: ``mineru-kit --version`` imports the whole toolkit (seconds, more on a busy host)."""
    root = Path(exe).resolve().parent.parent
    for info in sorted(root.glob("lib/python*/site-packages/mineru-*.dist-info")):
        m = _VERSION.search(info.name)
        if m:
            return m.group(0)
    return None


def probe_cli_version(template: str, venv: Path | None = None, timeout_s: float = 120.0) -> str | None:
    """MinerU's version: from its virtualenv, else ask the CLI once (``<cli> --version``)."""
    try:
        exe = shlex.split(template)[0]
        if venv is not None:
            exe = resolve_executable(exe, venv)
        if Path(exe).name.startswith("mineru") and (v := installed_version(exe)):
            return v
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        return None
    m = _VERSION.search(proc.stdout + proc.stderr)
    return m.group(0) if m else None


def models_installed(home: Path | None) -> bool:
    """Whether ``mineru-kit models download`` completed for the basic tier's repository."""
    root = home if home is not None else Path.home() / ".mineru"
    return (root / "models" / MODELS_REPO / ".mineru_complete").is_file()


def page_ranges(pages: list[int]) -> str:
    """0-based page numbers -> MinerU's 1-based ranges ('1-3,5')."""
    out: list[str] = []
    run: list[int] = []
    for p in sorted(set(pages)):
        if run and p == run[-1] + 1:
            run.append(p)
            continue
        if run:
            out.append(f"{run[0] + 1}-{run[-1] + 1}" if len(run) > 1 else str(run[0] + 1))
        run = [p]
    if run:
        out.append(f"{run[0] + 1}-{run[-1] + 1}" if len(run) > 1 else str(run[0] + 1))
    return ",".join(out)


def _tail(text: bytes | str | None, n: int = 600) -> str:
    if not text:
        return ""
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return s.strip()[-n:]


def _transient(e: BaseException) -> bool:
    return isinstance(e, _ServerError | httpx.TimeoutException | httpx.TransportError | TimeoutError)


def mineru_env(cfg: MinerUSettings) -> dict[str, str]:
    env = dict(os.environ)
    if cfg.home is not None:
        env["MINERU_HOME"] = str(cfg.home)
    return env


class MinerUBackend(DocumentBackend):
    name = "mineru"
    model = "mineru"
    #: first retry wait in seconds (doubles per attempt, capped at 30 s); tests lower it
    retry_wait_s: float = 1.0

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        super().__init__(settings, store)
        cfg = settings.mineru
        if cfg.mode == "cli":
            label = cfg.tier if "{tier}" in cfg.command else backend_label(cfg.command)
            version = cfg.version or probe_cli_version(cfg.command, cfg.venv) or "unknown"
            self.models_present = cfg.models_present if cfg.models_present is not None else models_installed(cfg.home)
        elif cfg.mode == "http":
            label = cfg.tier
            health = self._server_info()
            version = cfg.version or health.get("version") or "unknown"
            present = "basic" in health.get("tiers", []) or "standard" in health.get("tiers", [])
            self.models_present = cfg.models_present if cfg.models_present is not None else present
        else:
            label = cfg.cloud_model_version
            version = cfg.version or "cloud"
            self.models_present = True  # mineru.net runs OCR itself
        self.configured_version = version
        self.model_version = f"mineru-{version}-{label}"
        self._analyzer: PyMuPDFLayoutAnalyzer | None = None
        self._analyzer_lock = threading.Lock()

    def _server_info(self) -> dict[str, Any]:
        """mineru-api's version and tiers, asked once; an unreachable server is not fatal here (the
        documents will fail with the reason), so the backend can still be constructed."""
        cfg = self.settings.mineru
        base = cfg.api_url.rstrip("/")
        try:
            with httpx.Client(timeout=10, headers=self._auth()) as c:
                health = c.get(f"{base}/v1/health").json()
                tiers = [t.get("id") for t in c.get(f"{base}/v1/tiers").json().get("data", [])]
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            log.warning("mineru-api at %s did not answer /v1/health: %s", base, e)
            return {}
        return {"version": health.get("version"), "tiers": tiers}

    def _auth(self) -> dict[str, str]:
        key = self.settings.mineru.api_key.get_secret_value()
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def analyzer(self) -> PyMuPDFLayoutAnalyzer:
        with self._analyzer_lock:
            if self._analyzer is None:
                self._analyzer = PyMuPDFLayoutAnalyzer(self.settings.documents)
            return self._analyzer

    def identity_config(self) -> dict[str, Any]:
        cfg = self.settings.mineru
        run: dict[str, Any] = {"command": cfg.command} if cfg.mode == "cli" else {"lang": cfg.lang}
        return {
            "render_dpi": self.settings.documents.render_dpi,
            "mode": cfg.mode,
            "tier": cfg.tier,
            # scans: MinerU's OCR tier, or the CPU OCR path: a different engine is a new prediction
            "scan_engine": cfg.scan_tier if self.models_present else "rapidocr",
            "agreement": cfg.agreement,
            "ocr_min_chars": self.settings.documents.ocr_min_chars,
            **run,
        }

    async def predict(self, item: Item, data: bytes, spec: TaskSpec) -> PredictionResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            res = await self._predict(item, data)
        except (DocumentError, MinerURunError, MinerUOutputError, office.OfficeError, MinerUCloudError) as e:
            res = PredictionResult.failed(str(e))
        except httpx.HTTPError as e:
            res = PredictionResult.failed(f"mineru-api error: {type(e).__name__}: {e}")
        except Exception as e:  # one document's trouble never stops the batch
            log.exception("MinerU backend failed on item %s", item.id)
            res = PredictionResult.failed(f"mineru error: {type(e).__name__}: {e}")
        res.latency_ms = (loop.time() - t0) * 1000
        return res

    async def _predict(self, item: Item, data: bytes) -> PredictionResult:
        cfg = self.settings.mineru
        is_office = item.ext in office.OFFICE_EXTS
        source_name = f"{item.sha256}.{item.ext or 'pdf'}"
        pdf = data
        detail: dict[str, Any] = {"mode": cfg.mode}
        if is_office:
            pdf, conv = await asyncio.to_thread(office.to_pdf, data, item.ext, timeout_s=cfg.timeout_s)
            detail["office"] = conv
        doc, geoms, written = await asyncio.to_thread(self.prepare, item, pdf)
        try:
            chars = await asyncio.to_thread(lambda: [text_layer_chars(doc[g.page]) for g in geoms])
            min_chars = self.settings.documents.ocr_min_chars
            text_pages = [g.page for g, n in zip(geoms, chars, strict=True) if n >= min_chars]
            scan_pages = [g.page for g, n in zip(geoms, chars, strict=True) if n < min_chars]
            runs: list[tuple[str, list[int]]] = []
            if text_pages:
                runs.append((cfg.tier, text_pages))
            if scan_pages and self.models_present:
                runs.append((cfg.scan_tier, scan_pages))
            cpu_pages = set(scan_pages) if not self.models_present else set()
            outputs: list[tuple[str, list[int], MinerUOutput]] = []
            for tier, pages in runs:
                name = f"{item.sha256}.pdf" if is_office else source_name
                out = await self._run(name, pdf, tier, pages, len(geoms))
                outputs.append((tier, pages, out))
            native = None
            if is_office and cfg.mode != "cloud":
                native = await self._run(source_name, data, "flash", [], 0)  # office is flash-only in 4.x
            # 4.x output has no scores: the pymupdf reading of the same pages scores it by agreement
            ref_pages = {p for _, pages, out in outputs if out.docvortex is not None for p in pages}
            if not cfg.agreement:
                ref_pages = set()
            cpu = None
            if cpu_pages or ref_pages:
                cpu = await asyncio.to_thread(self._analyze_locked, doc, geoms, cpu_pages | ref_pages)
        finally:
            await asyncio.to_thread(close, doc)

        blocks: list[list[Block]] = [[] for _ in geoms]
        pages_detail: list[dict[str, Any]] = [{"page": g.page} for g in geoms]
        md_parts: list[str] = []
        for tier, pages, out in outputs:
            parsed = await asyncio.to_thread(parse_output, out, geoms)
            md_parts.append(parsed.markdown)
            for p in pages:
                blocks[p] = parsed.blocks[p]
                pd = parsed.detail["pages"][p]
                pages_detail[p].update(
                    engine="mineru", tier=tier, generation=parsed.detail["generation"], **{"from": pd["from"]}
                )
                pages_detail[p]["block_scores"] = pd["blocks"]
            for k in ("mineru_version", "mineru_backend", "generation", "origin"):
                detail.setdefault(k, parsed.detail.get(k))
            if out.version and self.configured_version not in ("unknown", "cloud", out.version):
                detail["version_mismatch"] = {"configured": self.configured_version, "output": out.version}
                log.warning("MinerU output says version %s, configured %s", out.version, self.configured_version)
        if native is not None:
            detail["office"]["native"] = office.apply_native_tables(blocks, native)
        if cpu is not None:
            for p in sorted(cpu_pages):
                blocks[p] = cpu.blocks[p]
                pages_detail[p].update(
                    engine="rapidocr",
                    tier=None,
                    reason="no text layer and MinerU's OCR models are not installed",
                    **{k: v for k, v in cpu.detail["pages"][p].items() if k != "page"},
                )
            if any(b.content for p in sorted(cpu_pages) for b in blocks[p]):
                md_parts.append("\n\n".join(b.content for p in sorted(cpu_pages) for b in blocks[p]))
            for p in sorted(ref_pages):
                generation = pages_detail[p].get("generation")
                if generation != "mineru-4":
                    continue  # 1.3/2.x/cloud blocks carry MinerU's own scores
                blocks[p], comps = agreement.score_page(blocks[p], cpu.blocks[p])
                pages_detail[p]["agreement"] = comps
                pages_detail[p]["block_scores"] = None
        detail["engines"] = sorted({d.get("engine", "none") for d in pages_detail})
        detail["pages"] = pages_detail
        detail["images_written"] = written
        markdown = "\n\n".join(m for m in md_parts if m.strip())
        return await asyncio.to_thread(build_result, geoms, blocks, markdown, detail)

    def _analyze_locked(self, doc: Any, geoms: list[Any], pages: set[int]) -> Any:
        return self.analyzer.analyze(doc, geoms, pages)

    async def _run(self, name: str, data: bytes, tier: str, pages: list[int], n_pages: int) -> MinerUOutput:
        """One MinerU run on ``pages`` (0-based; [] or all pages: the whole document)."""
        whole = not pages or len(pages) == n_pages
        ranges = None if whole else page_ranges(pages)
        mode = self.settings.mineru.mode
        if mode == "cli":
            return await self._run_cli(name, data, tier, ranges)
        if mode == "http":
            return await self._run_http(name, data, tier, ranges or "")
        client = MinerUCloudClient(self.settings.mineru, retry_wait_s=self.retry_wait_s)
        return await client.parse(name, data, page_ranges=ranges or "", pages=n_pages)

    # ------------------------------------------------------------------ CLI

    async def _run_cli(self, name: str, data: bytes, tier: str, pages: str | None) -> MinerUOutput:
        cfg = self.settings.mineru
        with tempfile.TemporaryDirectory(prefix="labelloop-mineru-") as tmp:
            stem = name.rsplit(".", 1)[0]
            input_path = Path(tmp) / "in" / name
            output_dir = Path(tmp) / "out"
            input_path.parent.mkdir()
            output_dir.mkdir()
            await asyncio.to_thread(input_path.write_bytes, data)
            argv = build_argv(cfg.command, input_path, output_dir, tier=tier, pages=pages, venv=cfg.venv)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    env=mineru_env(cfg),
                    cwd=tmp,  # mineru-kit leaves a service lock and blobs in its working directory
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

    # ------------------------------------------------------------------ HTTP (mineru-api 4.x)

    async def _run_http(self, name: str, data: bytes, tier: str, pages: str) -> MinerUOutput:
        cfg = self.settings.mineru
        base = cfg.api_url.rstrip("/")
        params: list[tuple[str, str]] = [("tier", tier), ("output_formats", "middle_json")]
        if pages:
            params.append(("page_range", pages))
        timeout = httpx.Timeout(min(cfg.timeout_s, 120.0), connect=min(30.0, cfg.timeout_s))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.timeout_s
        async with httpx.AsyncClient(timeout=timeout, headers=self._auth()) as client:
            files = {"files": (name, data, "application/octet-stream")}
            task = await self._request(client, "POST", f"{base}/v1/tasks", params=params, files=files)
            if task.status_code >= 400:
                raise MinerURunError(
                    f"mineru-api rejected the document: HTTP {task.status_code}: {_tail(task.text, 300)}"
                )
            task_id = task.json()["task_id"]
            status_url = f"{base}/v1/tasks/{task_id}"
            wait = cfg.poll_interval_s
            while True:
                resp = await self._request(client, "GET", status_url)
                if resp.status_code >= 400:
                    raise MinerURunError(f"mineru-api task {task_id}: HTTP {resp.status_code}: {_tail(resp.text, 300)}")
                state = resp.json()
                if state.get("status") in TERMINAL:
                    break
                if loop.time() + wait > deadline:
                    with contextlib.suppress(httpx.HTTPError):
                        await client.delete(status_url)  # don't leave the server working for nobody
                    raise MinerURunError(f"mineru-api timed out after {cfg.timeout_s:g} s (task {task_id})")
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30.0)
            status = state["status"]
            if status in ("failed", "canceled"):
                errors = [f.get("error") for f in state.get("files", []) if f.get("error")]
                raise MinerURunError(f"mineru-api task {task_id} {status}: {_tail(str(errors), 400)}")
            result = await self._request(client, "GET", f"{status_url}/result")
            if result.status_code != 200:
                raise MinerURunError(f"mineru-api result of {task_id}: HTTP {result.status_code}")
            try:
                body = result.json()
                file = body["files"][0]
            except (ValueError, KeyError, IndexError):
                raise MinerUOutputError(f"mineru-api result of {task_id} is not a task result") from None
            if file.get("status") != "completed":
                raise MinerURunError(
                    f"mineru-api task {task_id} ({status}): file {file.get('status')}: {file.get('error')}"
                )
            middle = (file.get("content") or {}).get("middle_json")
            if not isinstance(middle, dict):
                raise MinerUOutputError(f"mineru-api result of {task_id} has no middle_json")
            out = MinerUOutput(docvortex=middle, origin=f"mineru-api task {task_id}")
            if middle.get("schema") != "docvortex.middle":
                out = MinerUOutput(middle=middle, origin=f"mineru-api task {task_id}")
            return out

    async def _request(self, client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
        cfg = self.settings.mineru
        retrying = AsyncRetrying(
            stop=stop_after_attempt(cfg.max_retries + 1),
            wait=wait_exponential(multiplier=self.retry_wait_s, max=30),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    resp = await client.request(method, url, **kw)
                    if resp.status_code >= 500 or resp.status_code == 429:
                        raise _ServerError(f"HTTP {resp.status_code}: {_tail(resp.text, 300)}")
        except _ServerError as e:
            raise MinerURunError(f"mineru-api failed after {cfg.max_retries + 1} attempts: {url}: {e}") from None
        except (TimeoutError, httpx.TimeoutException):
            raise MinerURunError(f"mineru-api timed out: {url}") from None
        return resp


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill MinerU and everything it started (model workers), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 10)
