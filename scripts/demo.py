"""The one-command demo: Label Studio + Airflow (standalone) on embedded defaults, pre-labeling the
sample data, with review tasks waiting in Label Studio.

    scripts/demo.sh            # = bootstrap + `python scripts/demo.py up`
    scripts/demo.sh stop       # stop every process the demo started (by recorded process group)
    scripts/demo.sh reset      # stop, then delete the demo state in .demo/

Everything lives in .demo/: the curation DB (SQLite), the object store folder, Airflow's home
(SQLite metadata DB), Label Studio's data folder, generated credentials, logs and the process ids.
Running `up` again reuses all of it; the pipeline is idempotent, so no work is duplicated.
This is a developer tool, not library code, hence it lives in scripts/ and may use the network
helpers directly (httpx) instead of the Airflow/Label Studio hooks.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / ".demo"
HOME = DEMO / "home"
PIDS = DEMO / "pids"
LOGS = DEMO / "logs"
AIRFLOW_PORT = int(os.environ.get("LABELLOOP_DEMO_AIRFLOW_PORT", "8080"))
LS_PORT = int(os.environ.get("LABELLOOP_DEMO_LS_PORT", "8090"))
AIRFLOW_URL = f"http://127.0.0.1:{AIRFLOW_PORT}"
LS_URL = f"http://127.0.0.1:{LS_PORT}"
#: the demo's two pre-label runs: images with RapidOCR, PDFs with the pymupdf layout backend
RUNS = (
    {"spec": "ocr_lines", "backend": "cpu"},
    {"spec": "document_layout", "backend": "cpu"},
)


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def credentials() -> dict[str, str]:
    path = DEMO / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    creds = {
        "ls_user": "admin@example.com",
        "ls_password": secrets.token_urlsafe(12),
        "ls_token": secrets.token_hex(20),
        "airflow_user": "admin",
        "airflow_password": secrets.token_urlsafe(12),
    }
    DEMO.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(creds, indent=2))
    path.chmod(0o600)
    return creds


def labelloop_env(creds: dict[str, str]) -> dict[str, str]:
    return {
        "LABELLOOP_HOME": str(HOME),
        "LABELLOOP_DB__URL": f"sqlite:///{HOME / 'labelloop.db'}",
        "LABELLOOP_STORAGE__BACKEND": "local",
        "LABELLOOP_STORAGE__ROOT": str(HOME / "objects"),
        "LABELLOOP_LABEL_STUDIO__URL": LS_URL,
        "LABELLOOP_LABEL_STUDIO__TOKEN": creds["ls_token"],
        "LABELLOOP_LABEL_STUDIO__MEDIA_MODE": "local",
        "LABELLOOP_LABEL_STUDIO__LOCAL_FILES_ROOT": str(HOME / "objects"),
    }


def _clean_env() -> dict[str, str]:
    # Label Studio reads bare USERNAME/PASSWORD/PORT/HOST/DEBUG too; keep ambient ones out.
    drop = {"USERNAME", "PASSWORD", "PORT", "HOST", "DEBUG", "VIRTUAL_ENV", "PYTHONPATH"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def alive(name: str) -> bool:
    pid_file = PIDS / f"{name}.pid"
    if not pid_file.exists():
        return False
    try:
        os.killpg(int(pid_file.read_text()), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


def spawn(name: str, cmd: list[str], env: dict[str, str]) -> None:
    if alive(name):
        say(f"{name} already running (pid {(PIDS / f'{name}.pid').read_text().strip()})")
        return
    PIDS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=DEMO
    )  # own process group: stop kills all of it
    (PIDS / f"{name}.pid").write_text(str(proc.pid))
    say(f"started {name} (pid {proc.pid}, log {LOGS / f'{name}.log'})")


def wait_until(what: str, check: Any, timeout: float, name: str | None = None) -> Any:
    deadline = time.monotonic() + timeout
    dots = 0
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                print(flush=True) if dots else None
                return result
        except httpx.HTTPError:
            pass
        if name and not alive(name):
            raise SystemExit(f"[demo] {name} exited; see {LOGS / f'{name}.log'}")
        print("." if dots % 60 else f"[demo] waiting for {what} .", end="", flush=True)
        dots += 1
        time.sleep(2)
    raise SystemExit(f"[demo] timed out waiting for {what}")


def start_label_studio(creds: dict[str, str]) -> None:
    env = _clean_env() | {
        "LABEL_STUDIO_BASE_DATA_DIR": str(DEMO / "label-studio"),
        "LABEL_STUDIO_USERNAME": creds["ls_user"],
        "LABEL_STUDIO_PASSWORD": creds["ls_password"],
        "LABEL_STUDIO_USER_TOKEN": creds["ls_token"],
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(HOME / "objects"),
        "SSRF_PROTECTION_ENABLED": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
    }
    (HOME / "objects").mkdir(parents=True, exist_ok=True)
    spawn(
        "label-studio",
        [
            str(REPO / ".venv-ls/bin/label-studio"),
            "start",
            "--no-browser",
            "--port",
            str(LS_PORT),
            "--internal-host",
            "127.0.0.1",
        ],
        env,
    )
    wait_until("Label Studio", lambda: httpx.get(f"{LS_URL}/health", timeout=3).status_code == 200, 240, "label-studio")


def airflow_env(creds: dict[str, str]) -> dict[str, str]:
    home = DEMO / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    pw_file = home / "passwords.json"
    pw_file.write_text(json.dumps({creds["airflow_user"]: creds["airflow_password"]}))
    pw_file.chmod(0o600)
    venv_bin = REPO / ".venv" / "bin"
    return (
        _clean_env()
        | labelloop_env(creds)
        | {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",  # standalone spawns `airflow ...` by name
            "PYTHONPATH": str(REPO),  # dags import `labelloop` and `labelloop_airflow` (editable install)
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{creds['airflow_user']}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pw_file),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(AIRFLOW_PORT),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        }
    )


def start_airflow(creds: dict[str, str]) -> None:
    env = airflow_env(creds)
    if not (DEMO / "airflow" / "airflow.db").exists():
        say("migrating Airflow's metadata DB (first run)")
        subprocess.run(
            [str(REPO / ".venv/bin/airflow"), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL
        )
    # every task that writes to Label Studio runs in this one-slot pool (labelloop_airflow.review)
    subprocess.run(
        [str(REPO / ".venv/bin/airflow"), "pools", "set", "labelloop_label_studio", "1", "Label Studio writers"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    spawn("airflow", [str(REPO / ".venv/bin/airflow"), "standalone"], env)
    wait_until(
        "Airflow",
        lambda: httpx.get(f"{AIRFLOW_URL}/api/v2/monitor/health", timeout=3).status_code == 200,
        300,
        "airflow",
    )


class AirflowAPI:
    def __init__(self, creds: dict[str, str]) -> None:
        r = httpx.post(
            f"{AIRFLOW_URL}/auth/token",
            json={"username": creds["airflow_user"], "password": creds["airflow_password"]},
            timeout=30,
        )
        r.raise_for_status()
        self.client = httpx.Client(
            base_url=f"{AIRFLOW_URL}/api/v2",
            timeout=30,
            headers={"Authorization": f"Bearer {r.json()['access_token']}"},
        )

    def ensure_pool(self, name: str, slots: int) -> None:
        """The pool every Label Studio writer runs in (dags/_common.py LABEL_STUDIO_POOL); tasks in
        a pool that does not exist are never scheduled."""
        body = {"name": name, "slots": slots, "description": "labelloop: one Label Studio writer at a time"}
        if self.client.get(f"/pools/{name}").status_code == 200:
            self.client.patch(f"/pools/{name}", json=body).raise_for_status()
        else:
            self.client.post("/pools", json=body).raise_for_status()

    def dag_ready(self, dag_id: str) -> bool:
        return self.client.get(f"/dags/{dag_id}").status_code == 200

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        self.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        run_id = f"demo__{conf['spec']}__{time.strftime('%Y%m%dT%H%M%S')}"
        r = self.client.post(
            f"/dags/{dag_id}/dagRuns",
            json={"dag_run_id": run_id, "logical_date": None, "conf": conf, "note": "scripts/demo.py"},
        )
        if r.status_code >= 400:
            raise SystemExit(f"[demo] trigger {dag_id} failed: {r.status_code} {r.text}")
        return run_id

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 3600) -> str:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            run = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()
            tis = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json().get("task_instances", [])
            done = sum(1 for t in tis if t.get("state") in ("success", "skipped"))
            line = f"{dag_id} {run['state']}: {done}/{len(tis)} tasks done " + ", ".join(
                f"{t['task_id']}{'' if t.get('map_index', -1) < 0 else '[' + str(t['map_index']) + ']'}="
                f"{t.get('state')}"
                for t in tis
                if t.get("state") not in ("success", "skipped")
            )
            if line != last:
                say(line[:200])
                last = line
            if run["state"] in ("success", "failed"):
                return str(run["state"])
            time.sleep(3)
        raise SystemExit(f"[demo] {dag_id} run {run_id} did not finish in time")


def ls_waiting_tasks(creds: dict[str, str]) -> dict[str, int]:
    h = {"Authorization": f"Token {creds['ls_token']}"}
    out = {}
    for p in httpx.get(f"{LS_URL}/api/projects", headers=h, params={"page_size": 100}, timeout=30).json()["results"]:
        out[p["title"]] = int(p.get("task_number", 0)) - int(p.get("num_tasks_with_annotations", 0) or 0)
    return out


def up(samples: Path) -> None:
    if not samples.is_dir():
        raise SystemExit(f"[demo] sample data not found at {samples} (set LABELLOOP_SAMPLE_DATA)")
    creds = credentials()
    start_label_studio(creds)
    start_airflow(creds)
    api = AirflowAPI(creds)
    wait_until("the DAGs to be parsed", lambda: api.dag_ready("labelloop_prelabel"), 300, "airflow")
    api.ensure_pool("labelloop_label_studio", 1)
    failed = []
    for run in RUNS:
        conf = {"source": str(samples), **run}
        say(f"triggering labelloop_prelabel {json.dumps(conf)}")
        run_id = api.trigger("labelloop_prelabel", conf)
        if api.wait_run("labelloop_prelabel", run_id) != "success":
            failed.append(run_id)
    waiting = ls_waiting_tasks(creds)
    print()
    print("=" * 72)
    if failed:
        print(f"Some runs failed: {', '.join(failed)} - see the Airflow UI for the task logs.")
    print(f"Label Studio  {LS_URL}   login {creds['ls_user']} / {creds['ls_password']}")
    for title, n in sorted(waiting.items()):
        print(f"    project {title}: {n} tasks waiting for review")
    print(f"Airflow       {AIRFLOW_URL}   login {creds['airflow_user']} / {creds['airflow_password']}")
    print("Next: review the tasks in Label Studio, then trigger the DAG `labelloop_export`")
    print("      (Airflow UI > labelloop_export > Trigger, or: .venv/bin/airflow dags trigger labelloop_export")
    print(f"      with AIRFLOW_HOME={DEMO / 'airflow'}). Stop everything with `scripts/demo.sh stop`.")
    print("=" * 72)
    if failed:
        raise SystemExit(1)


def stop() -> None:
    for pid_file in sorted(PIDS.glob("*.pid")) if PIDS.exists() else []:
        name = pid_file.stem
        try:
            pgid = int(pid_file.read_text())
            os.killpg(pgid, signal.SIGTERM)
            say(f"stopping {name} (process group {pgid})")
        except (ProcessLookupError, ValueError):
            pid_file.unlink(missing_ok=True)
            continue
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and alive(name):
            time.sleep(0.5)
        if alive(name):
            os.killpg(pgid, signal.SIGKILL)
            say(f"killed {name}")
        pid_file.unlink(missing_ok=True)


def reset() -> None:
    stop()
    if DEMO.exists():
        shutil.rmtree(DEMO)
    say("demo state removed")


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else "up"
    samples = Path(os.environ.get("LABELLOOP_SAMPLE_DATA", REPO.parent / "shared" / "data"))
    {"up": lambda: up(samples), "stop": stop, "reset": reset}.get(cmd, lambda: sys.exit(f"unknown command {cmd}"))()


if __name__ == "__main__":
    main()
