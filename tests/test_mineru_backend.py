"""MinerU backend: CLI mode against fake 1.3/2.x executables (real MinerU 4.x: test_mineru4.py).

The fake ``mineru``/``magic-pdf`` scripts (written into tmp_path by the tests) serve the
HAND-WRITTEN output files in ``tests/data/mineru/`` (MinerU 1.3/2.x's documented schema, whose
versions are not installed here). They also misbehave on request (a marker in the PDF's metadata):
crash, or hang past the timeout with a worker child that must be killed too, which real MinerU
cannot be made to do on demand.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from sqlalchemy import select
from synthetic import add_pdf_item, pdf_item

from labelloop.config import MinerUSettings, Settings
from labelloop.db import Database, Prediction
from labelloop.documents.record import DocumentRecord
from labelloop.documents.render import png_size
from labelloop.prelabel.base import PredictionResult
from labelloop.prelabel.documents.mineru import MinerUBackend, backend_label, build_argv
from labelloop.prelabel.runner import run_prelabel_sync
from labelloop.specs import SpecRegistry, TaskSpec
from labelloop.storage import LocalStore, ObjectStore

DATA = Path(__file__).parent / "data" / "mineru"
GEN_2X = DATA / "mineru-2.x" / "a4doc" / "auto"
GEN_13 = DATA / "magic-pdf-1.3" / "a4doc" / "ocr"

FAKE_CLI = '''#!{python}
"""Fake {name}: copies hand-written MinerU output into the folder layout the real CLI uses."""
import shutil, subprocess, sys, time
from pathlib import Path

args = sys.argv[1:]
if "--version" in args:
    print("{name}, version {version}")
    sys.exit(0)
src, out = Path(args[args.index("-p") + 1]), Path(args[args.index("-o") + 1])
data = src.read_bytes()
if b"labelloop-crash" in data:
    print("Traceback (most recent call last):\\nRuntimeError: CUDA error: out of memory", file=sys.stderr)
    sys.exit(1)
if b"labelloop-hang" in data:
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    Path({pidfile!r}).write_text(str(worker.pid))
    time.sleep(300)
dest = out / src.stem / {method!r}
dest.mkdir(parents=True)
for f in Path({fixture!r}).iterdir():
    shutil.copy(f, dest / f.name.replace("a4doc", src.stem))
print("done")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_fake_cli(tmp_path: Path, name: str, fixture: Path, method: str, version: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text(
        FAKE_CLI.format(
            python=sys.executable,
            name=name,
            version=version,
            fixture=str(fixture),
            method=method,
            pidfile=str(tmp_path / "worker.pid"),
        )
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def a4_pdf(marker: str = "") -> bytes:
    """The two-page A4 document the hand-written MinerU output describes."""
    doc = pymupdf.open()
    for i in range(2):
        page = doc.new_page(width=595, height=842)
        page.insert_text((85, 90), "The response of flow duration curves to afforestation" if i == 0 else "Page two")
    if marker:
        doc.set_metadata({"title": marker})
    return doc.tobytes()


def with_mineru(settings: Settings, **kw: Any) -> Settings:
    # the made-up A4 pages hold a line of text each: count them as text-layer pages
    docs = settings.documents.model_copy(update={"ocr_min_chars": 1})
    return settings.model_copy(update={"mineru": MinerUSettings(**kw), "documents": docs})


@pytest.fixture(scope="module")
def spec() -> TaskSpec:
    return SpecRegistry().get("document_layout")


def predict(backend: MinerUBackend, data: bytes, spec: TaskSpec) -> PredictionResult:
    return asyncio.run(backend.predict(pdf_item(data), data, spec))


def check_ok(res: PredictionResult, store: ObjectStore) -> DocumentRecord:
    assert res.status == "ok", res.error
    rec = DocumentRecord.model_validate(res.record)
    assert len(rec.pages) == 2
    for p in rec.pages:
        assert png_size(store.get(p.image_key)) == (p.width_px, p.height_px) == (1190, 1684)
    title = rec.pages[0].blocks[0]
    assert title.type == "title" and title.bbox == [170.0, 136.0, 1020.0, 190.0]
    scores = [b.score for p in rec.pages for b in p.blocks]
    assert res.field_confidence == {"blocks": min(scores)}
    assert rec.markdown.startswith("# The response of flow duration curves")
    return rec


# --------------------------------------------------------------------------- CLI


def test_command_template() -> None:
    argv = build_argv("mineru -p {input} -o {output} -b pipeline", Path("/a b/x.pdf"), Path("/o"))
    assert argv == ["mineru", "-p", "/a b/x.pdf", "-o", "/o", "-b", "pipeline"]
    assert backend_label("mineru -p {input} -o {output} -b vlm-http-client -u http://x") == "vlm-http-client"
    assert backend_label("magic-pdf -p {input} -o {output} -m auto") == "auto"


def test_cli_mineru_2x(tmp_path: Path, sqlite_settings: Settings, store: LocalStore, spec: TaskSpec) -> None:
    exe = write_fake_cli(tmp_path, "mineru", GEN_2X, "auto", "2.5.4")
    settings = with_mineru(sqlite_settings, mode="cli", command=f"{exe} -p {{input}} -o {{output}} -b pipeline")
    backend = MinerUBackend(settings, store)
    assert backend.model_version == "mineru-2.5.4-pipeline"  # version asked from the CLI once
    res = predict(backend, a4_pdf(), spec)
    rec = check_ok(res, store)
    assert res.confidence_detail["mineru_version"] == "2.5.4"
    assert res.confidence_detail["generation"] == "mineru-2"
    # per page: the final block scores and, per block, the layout and OCR factors behind them
    page1 = res.confidence_detail["pages"][1]
    assert page1["scores"] == [b.score for b in rec.pages[1].blocks]
    assert page1["block_scores"][0] == {"layout": 0.93, "ocr": 0.874} and page1["from"] == "middle"
    assert "version_mismatch" not in res.confidence_detail
    assert [b.type for b in rec.pages[1].blocks] == ["text", "list"]


def test_cli_magic_pdf_13(tmp_path: Path, sqlite_settings: Settings, store: LocalStore, spec: TaskSpec) -> None:
    exe = write_fake_cli(tmp_path, "magic-pdf", GEN_13, "ocr", "1.3.12")
    settings = with_mineru(sqlite_settings, mode="cli", command=f"{exe} -p {{input}} -o {{output}} -m ocr")
    backend = MinerUBackend(settings, store)
    assert backend.model_version == "mineru-1.3.12-ocr"
    res = predict(backend, a4_pdf(), spec)
    rec = check_ok(res, store)
    assert res.confidence_detail["generation"] == "magic-pdf-1.3"
    assert rec.pages[0].blocks[0].source == "ocr"


def test_cli_version_mismatch_is_recorded(
    tmp_path: Path, sqlite_settings: Settings, store: LocalStore, spec: TaskSpec
) -> None:
    exe = write_fake_cli(tmp_path, "mineru", GEN_2X, "auto", "2.5.4")
    settings = with_mineru(sqlite_settings, mode="cli", command=f"{exe} -p {{input}} -o {{output}}", version="2.6.0")
    backend = MinerUBackend(settings, store)
    assert backend.model_version == "mineru-2.6.0-default"
    res = predict(backend, a4_pdf(), spec)
    assert res.confidence_detail["version_mismatch"] == {"configured": "2.6.0", "output": "2.5.4"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_cli_crash_and_timeout_are_failures_and_the_batch_goes_on(
    tmp_path: Path, sqlite_settings: Settings, sqlite_db: Database, store: LocalStore, spec: TaskSpec
) -> None:
    exe = write_fake_cli(tmp_path, "mineru", GEN_2X, "auto", "2.5.4")
    settings = with_mineru(
        sqlite_settings, mode="cli", command=f"{exe} -p {{input}} -o {{output}} -b pipeline", timeout_s=3
    )
    ids = {
        "good": add_pdf_item(sqlite_db, store, a4_pdf()),
        "crash": add_pdf_item(sqlite_db, store, a4_pdf("labelloop-crash")),
        "hang": add_pdf_item(sqlite_db, store, a4_pdf("labelloop-hang")),
        "encrypted": add_pdf_item(
            sqlite_db,
            store,
            pymupdf.open(stream=a4_pdf(), filetype="pdf").tobytes(
                encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o"
            ),
        ),
    }
    t0 = time.monotonic()
    stats = run_prelabel_sync(sqlite_db, store, spec, MinerUBackend(settings, store), concurrency=4)
    assert time.monotonic() - t0 < 30
    assert (stats.considered, stats.ok, stats.failed) == (4, 1, 3)
    with sqlite_db.session() as s:
        rows = {p.item_id: p for p in s.scalars(select(Prediction))}
    assert rows[ids["good"]].status == "ok" and rows[ids["good"]].model_version == "mineru-2.5.4-pipeline"
    assert rows[ids["crash"]].error.startswith("MinerU exited with code 1")
    assert "CUDA error: out of memory" in rows[ids["crash"]].error
    assert rows[ids["hang"]].error == "MinerU timed out after 3 s"
    assert rows[ids["encrypted"]].error.startswith("encrypted")
    # the hung CLI's worker process was killed with it (its own process group)
    worker = int((tmp_path / "worker.pid").read_text())
    deadline = time.monotonic() + 5
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker)

    # rerun: nothing predicted, nothing stored
    before = {o.key: (o.size, o.modified) for o in store.list("")}
    again = run_prelabel_sync(sqlite_db, store, spec, MinerUBackend(settings, store))
    assert again.considered == 0
    assert {o.key: (o.size, o.modified) for o in store.list("")} == before


def test_cli_missing_executable(sqlite_settings: Settings, store: LocalStore, spec: TaskSpec) -> None:
    settings = with_mineru(sqlite_settings, mode="cli", command="/nonexistent/mineru -p {input} -o {output}")
    backend = MinerUBackend(settings, store)
    assert backend.model_version == "mineru-unknown-default"
    res = predict(backend, a4_pdf(), spec)
    assert res.status == "failed" and res.error.startswith("cannot start MinerU")


def test_cli_without_output(tmp_path: Path, sqlite_settings: Settings, store: LocalStore, spec: TaskSpec) -> None:
    exe = tmp_path / "mineru"
    exe.write_text(f"#!{sys.executable}\nprint('nothing to see')\n")
    exe.chmod(0o755)
    settings = with_mineru(sqlite_settings, mode="cli", command=f"{exe} -p {{input}} -o {{output}}", version="2.5.4")
    res = predict(MinerUBackend(settings, store), a4_pdf(), spec)
    assert res.status == "failed" and "wrote no output" in res.error


# --------------------------------------------------------------------------- Airflow hook


def test_mineru_hook(monkeypatch: pytest.MonkeyPatch, sqlite_settings: Settings) -> None:
    from labelloop_airflow.hooks.mineru import MinerUHook

    assert MinerUHook("mineru_absent").apply(sqlite_settings) is sqlite_settings
    monkeypatch.setenv(
        "AIRFLOW_CONN_MINERU",
        json.dumps(
            {
                "conn_type": "mineru",
                "host": "gpu-node-1",
                "port": 8010,
                "password": "s3cret",
                "extra": {"mode": "http", "tier": "standard", "timeout_s": 600},
            }
        ),
    )
    merged = MinerUHook().apply(sqlite_settings).mineru
    assert merged.api_url == "http://gpu-node-1:8010"
    assert (merged.mode, merged.tier, merged.timeout_s) == ("http", "standard", 600)
    assert merged.api_key.get_secret_value() == "s3cret" and "s3cret" not in repr(merged)
    assert merged.command == sqlite_settings.mineru.command  # not in the connection: default kept
