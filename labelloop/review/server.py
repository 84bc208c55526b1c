"""Run a Label Studio server as a child process (tests, benchmarks, the embedded setup).

Label Studio lives in a virtualenv of its own (its pins clash with Airflow's), so it is started as
``<venv>/bin/label-studio start`` with an environment built from scratch rather than inherited:
Label Studio reads bare ``USERNAME``/``PASSWORD``/``PORT``/``HOST``/``DEBUG`` as its own settings
(``core.utils.params.get_env``), which silently hijacks a server started from an Airflow worker or
a CI shell. The admin user and its legacy API token are preset through the environment, which is
the only headless bootstrap that needs no prompt; the legacy token only works when the organisation
is created with ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true``, hence a fresh data directory.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

#: variables Label Studio would read as its own settings when inherited from the parent
_HIJACKING_VARS = ("USERNAME", "PASSWORD", "PORT", "HOST", "DEBUG", "LABEL_STUDIO_API_KEY")
#: what a child process legitimately needs from the parent environment
_PASSTHROUGH_VARS = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "HOME", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalLabelStudio:
    """One Label Studio server on 127.0.0.1, owned by this process.

    Use as a context manager, or call :meth:`start`/:meth:`stop`. The server gets its own process
    group so that :meth:`stop` also ends the workers Django's dev server may have spawned.
    """

    executable: Path
    data_dir: Path
    local_files_root: Path
    port: int = field(default_factory=free_port)
    username: str = "admin@labelloop.local"
    password: str = field(default_factory=lambda: "Adm1n-" + secrets.token_urlsafe(12))
    token: str = field(default_factory=lambda: secrets.token_hex(20))
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in _PASSTHROUGH_VARS if k in os.environ}
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LOCAL_FILES_SERVING_ENABLED="true",
            LOCAL_FILES_DOCUMENT_ROOT=str(self.local_files_root),
            # the S3 endpoint of a local object store is a private address; see reference 5.3
            SSRF_PROTECTION_ENABLED="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        for k in _HIJACKING_VARS:
            if k not in self.extra_env:
                env.pop(k, None)
        return env

    def start(self, timeout: float = 180.0) -> LocalLabelStudio:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.local_files_root.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.data_dir / "label-studio.log"
        cmd = [
            str(Path(self.executable).absolute()),
            "start",
            "--no-browser",
            "--port",
            str(self.port),
            "--internal-host",
            "127.0.0.1",
        ]
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.environment(),
                cwd=self.data_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_healthy(timeout, log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float, log_path: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"label-studio exited with {self.proc.returncode}:\n{tail}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=2.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"label-studio at {self.url} not healthy after {timeout}s (log: {log_path})")

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the whole process group, then kill it if it does not go."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def __enter__(self) -> LocalLabelStudio:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
