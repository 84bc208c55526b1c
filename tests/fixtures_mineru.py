"""Real MinerU 4.x for the tests: its virtualenv, an empty MINERU_HOME, a real ``mineru-api`` server.

Use with ``pytest_plugins = ["fixtures_mineru"]``. ``mineru_venv`` runs scripts/ensure-mineru.sh
(a no-op when .venv-mineru matches requirements/mineru.txt), so the tests never run against a
stand-in. ``mineru_home`` is an empty MINERU_HOME: no OCR models, as on this machine, where they
cannot be downloaded. ``mineru_api`` starts ``mineru-api`` from that virtualenv on a free port, once
per session, and kills its process group at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mineru_venv() -> Path:
    proc = subprocess.run([str(REPO / "scripts" / "ensure-mineru.sh")], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"scripts/ensure-mineru.sh failed ({proc.returncode}): {proc.stderr[-2000:]}")
    venv = Path(os.environ.get("LABELLOOP_MINERU_VENV", REPO / ".venv-mineru")).resolve()
    assert (venv / "bin" / "mineru-kit").is_file()
    return venv


@pytest.fixture(scope="session")
def mineru_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mineru-home")


@pytest.fixture(scope="session")
def mineru_api(mineru_venv: Path, mineru_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from conftest import free_port, wait_http

    port = free_port()
    work = tmp_path_factory.mktemp("mineru-api")
    log = work / "server.log"
    argv = [str(mineru_venv / "bin" / "mineru-api"), "--host", "127.0.0.1", "--port", str(port), "--tier", "flash"]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [*argv, "--upload-dir", str(work / "uploads")],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=work,  # it keeps upload blobs and a lock file in its working directory
            env={**os.environ, "MINERU_HOME": str(mineru_home)},
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/v1/health", timeout=120, proc=proc)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"mineru-api did not start: {log.read_text()[-2000:]}")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
