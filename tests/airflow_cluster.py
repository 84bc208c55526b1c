"""A real multi-process Airflow deployment on this machine: the scale-out topology without Docker.

Started by the scale-out tests and by ``bench/scaleout.py`` (the one place both get it from):
``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and N ``airflow celery
worker`` processes, CeleryExecutor with Redis as the broker and PostgreSQL as the metadata DB and
Celery result backend, the labelloop DAGs, and the ``labelloop_label_studio`` pool. It is the same
topology and the same Airflow settings as ``docker-compose.yaml`` (``tests/test_scaleout_parity.py``
checks that they agree); only endpoints, secrets and the few timings in :data:`TEST_TIMINGS`
differ.

Isolation, so concurrent runs (two developers, a bench next to a test) never share state:

* a fresh PostgreSQL metadata database per cluster (dropped at stop);
* a Redis DB index of its own: indexes 1-15 are claimed with ``SET labelloop:cluster:claim <token>
  NX EX`` in that index, the claimed index is emptied before use and at stop; a claim left by a
  killed run expires by itself;
* a private ``AIRFLOW_HOME`` (logs, pid files) and free ports for the API server and log servers.

Every component runs in its own process group (``start_new_session``), recorded in
``self.procs``; :meth:`stop` terminates each group, waits, then kills what is left, so nothing is
left running. A component that exits or does not come up fails :meth:`start` with the tail of its
log. Tests talk to it only through the REST API (``/api/v2``), like a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_BIN = REPO / ".venv" / "bin" / "airflow"
DAGS = REPO / "dags"

#: the Airflow pools every deployment of labelloop creates (name -> slots); see dags/_common.py
POOLS: dict[str, int] = {"labelloop_label_studio": 1}
#: the Celery queue the workers consume and tasks go to unless an operator names another
DEFAULT_QUEUE = "default"

#: Airflow settings of the deployment, identical in docker-compose.yaml (checked by a test).
AIRFLOW_SETTINGS: dict[str, str] = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
    # workers on one host tell themselves apart (task_instance.hostname); see labelloop_airflow.hostname
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "labelloop_airflow.hostname.worker_hostname",
    "AIRFLOW__CELERY__DEFAULT_QUEUE": DEFAULT_QUEUE,
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": DEFAULT_QUEUE,
    # one message reserved per free slot: a lost worker takes no queued-but-unstarted tasks with it
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
    "AIRFLOW__CELERY__TASK_ACKS_LATE": "true",
    # a task whose worker died is failed (and retried) after this many seconds without a heartbeat
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "120",
    # retries wait this long unless a task says otherwise (DAGs set no retry_delay of their own)
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "60",
}
#: the settings above the cluster shortens so a lost worker is noticed within the test's time
TEST_TIMINGS: dict[str, str] = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "2",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
}
#: Airflow Connections a labelloop deployment defines (AIRFLOW_CONN_<ID>), as in docker-compose.yaml
CONNECTION_IDS = ("labelloop_db", "labelloop_s3", "label_studio", "vllm", "mineru")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
CLAIM_KEY = "labelloop:cluster:claim"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


class ClusterError(RuntimeError):
    """A component did not come up or died; the message carries its log tail."""


def claim_redis_db(ttl_s: int = 6 * 3600) -> tuple[int, str]:
    """Claim a free Redis DB index (1-15) for one cluster's broker; returns (index, token)."""
    import redis

    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    for index in range(1, 16):
        r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index)
        try:
            if r.set(CLAIM_KEY, token, nx=True, ex=ttl_s):
                for key in r.scan_iter(count=1000):  # leftovers of an older, killed run
                    if key != CLAIM_KEY.encode():
                        r.delete(key)
                return index, token
        finally:
            r.close()
    raise ClusterError(f"no free Redis DB index on {REDIS_HOST}:{REDIS_PORT} (all of 1-15 claimed)")


def release_redis_db(index: int, token: str) -> None:
    import redis

    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index)
    try:
        if r.get(CLAIM_KEY) == token.encode():
            r.flushdb()
    finally:
        r.close()


def connection_env(
    *,
    curation_db_url: str,
    s3: Mapping[str, Any],
    label_studio: Mapping[str, Any],
    vllm: Mapping[str, Any],
    mineru_url: str = "http://127.0.0.1:9",
) -> dict[str, str]:
    """AIRFLOW_CONN_* for the connections of :data:`CONNECTION_IDS`, in docker-compose.yaml's form.

    ``s3``: endpoint (host:port), access_key, secret_key, bucket, region; ``label_studio``: url,
    token and extra LabelStudioSettings fields; ``vllm``: base_url, api_key and extra VLLMSettings
    fields. MinerU is defined (as in production) but not used by the scale-out workload.
    """
    db = make_url(curation_db_url)
    ls = dict(label_studio)
    vl = dict(vllm)
    conns = {
        "labelloop_db": {
            "conn_type": "postgres",
            "host": db.host,
            "port": db.port,
            "schema": db.database,
            "login": db.username,
            **({"password": db.password} if db.password else {}),
        },
        "labelloop_s3": {
            "conn_type": "aws",
            "login": s3["access_key"],
            "password": s3["secret_key"],
            "extra": {
                "endpoint_url": f"http://{s3['endpoint']}",
                "region_name": s3.get("region", "us-east-1"),
                "bucket": s3["bucket"],
                "config_kwargs": {"s3": {"addressing_style": "path"}, "signature_version": "s3v4"},
            },
        },
        "label_studio": {
            "conn_type": "http",
            "host": ls.pop("url"),
            "password": ls.pop("token"),
            "extra": ls,
        },
        "vllm": {"conn_type": "http", "host": vl.pop("base_url"), "password": vl.pop("api_key", ""), "extra": vl},
        "mineru": {"conn_type": "http", "host": mineru_url},
    }
    return {f"AIRFLOW_CONN_{cid.upper()}": json.dumps(conn) for cid, conn in conns.items()}


@dataclass
class Component:
    name: str
    args: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() takes its children too
                cwd=str(REPO),
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def group_alive(self) -> bool:
        if self.proc is None:
            return False
        self.proc.poll()
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False


@dataclass
class AirflowCluster:
    """One deployment. ``env`` adds LABELLOOP_* settings and AIRFLOW_CONN_* connections."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 2
    worker_concurrency: int = 2
    pg_admin_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    timings: dict[str, str] = field(default_factory=lambda: dict(TEST_TIMINGS))
    components: dict[str, Component] = field(default_factory=dict)
    api_port: int = 0
    metadata_db: str = ""
    redis_db: int | None = None
    _redis_token: str = ""
    _fernet: str = field(default_factory=lambda: _fernet_key())
    _jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    _api_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def home(self) -> Path:
        return self.workdir / "airflow-home"

    def base_env(self) -> dict[str, str]:
        pg = make_url(self.pg_admin_url)
        meta = pg.set(drivername="postgresql+psycopg2", database=self.metadata_db)
        result = pg.set(drivername="db+postgresql", database=self.metadata_db)
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LABELLOOP_"))}
        return {
            **keep,
            "PATH": f"{AIRFLOW_BIN.parent}:{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            **AIRFLOW_SETTINGS,
            **self.timings,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta.render_as_string(hide_password=False),
            "AIRFLOW__CELERY__RESULT_BACKEND": result.render_as_string(hide_password=False),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "AIRFLOW__CORE__FERNET_KEY": self._fernet,
            "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
            "AIRFLOW__API__SECRET_KEY": self._api_secret,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            # test deployment: no logins (production uses SimpleAuthManager with a password file)
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "true",
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            **self.env,
        }

    def start(self, timeout: float = 240) -> AirflowCluster:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.api_port = free_port()
        self.metadata_db = f"airflow_cluster_{uuid.uuid4().hex[:10]}"
        try:
            self.redis_db, self._redis_token = claim_redis_db()
            self._create_metadata_db()
            self._progress("metadata DB created (a copy of a freshly migrated one)", t0)
            self._add("api-server", ["api-server", "--port", str(self.api_port), "--workers", "1"])
            self._add("scheduler", ["scheduler"])
            self._add("dag-processor", ["dag-processor"])
            self._add("triggerer", ["triggerer"])
            for component in self.components.values():
                component.start()
            for i in range(1, self.workers + 1):
                self.start_worker(f"worker{i}", wait=False)
            self._wait(lambda: self._health_ok(), "the API server and its health checks", t0 + timeout)
            self._progress("API server, scheduler, dag-processor and triggerer healthy", t0)
            for name, slots in POOLS.items():
                self.ensure_pool(name, slots)
            self._wait(lambda: self._dag_exists("labelloop_prelabel"), "the DAGs to be parsed", t0 + timeout)
            self._progress("DAGs parsed", t0)
            for name in self.worker_names():
                self.wait_worker(name, deadline=t0 + timeout)
            self._progress(f"{self.workers} Celery worker(s) ready", t0)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate every process group, then kill what is left (also task processes, which run in
        process groups of their own); drop the DB, free the Redis index."""
        import psutil

        tree: list[psutil.Process] = []
        for comp in self.components.values():
            if comp.alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    tree += psutil.Process(comp.proc.pid).children(recursive=True)  # type: ignore[union-attr]
        for comp in self.components.values():
            comp.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for comp in self.components.values():
            while comp.group_alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if comp.group_alive():
                comp.signal_group(signal.SIGKILL)
            if comp.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    comp.proc.wait(10)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running():
                    p.kill()
        psutil.wait_procs(tree, timeout=10)
        self.components.clear()
        if self.metadata_db:
            with contextlib.suppress(Exception):
                self._admin(f'DROP DATABASE IF EXISTS "{self.metadata_db}" WITH (FORCE)')
            self.metadata_db = ""
        if self.redis_db is not None:
            with contextlib.suppress(Exception):
                release_redis_db(self.redis_db, self._redis_token)
            self.redis_db = None

    def __enter__(self) -> AirflowCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ workers

    def worker_names(self) -> list[str]:
        return [n for n in self.components if n.startswith("worker")]

    def start_worker(self, name: str, *, wait: bool = True, timeout: float = 120) -> None:
        """Start (or restart) Celery worker ``name``; its task instances report ``name`` as hostname."""
        env = self.base_env() | {
            "AIRFLOW_WORKER_HOSTNAME": name,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        }
        self._add(name, self.worker_args(name), env=env)
        self.components[name].start()
        if wait:
            self.wait_worker(name, deadline=time.monotonic() + timeout)

    def worker_args(self, name: str) -> list[str]:
        """``airflow`` arguments of worker ``name``: docker-compose's worker command plus what
        several workers on one host need apart (Celery node name, pid file)."""
        return [
            "celery",
            "worker",
            "--queues",
            DEFAULT_QUEUE,
            "--celery-hostname",
            f"{name}@%h",
            "--concurrency",
            str(self.worker_concurrency),
            "--pid",
            str(self.home / f"{name}.pid"),
        ]

    def wait_worker(self, name: str, *, deadline: float) -> None:
        comp = self.components[name]
        self._wait(
            lambda: (
                f"{name}@" in comp.log.read_text(errors="replace") and " ready." in comp.log.read_text(errors="replace")
            ),
            f"Celery worker {name}",
            deadline,
            comp,
        )

    def kill_worker(self, name: str) -> None:
        """``kill -9`` the whole worker (Celery main process, its pool, the task supervisors and
        tasks), as when its machine is lost."""
        import psutil

        comp = self.components[name]
        if comp.proc is None:
            return
        # Airflow's task supervisor puts each task process in a process group of its own
        # (setpgid), so killing the worker's group alone would leave the tasks running on as
        # orphans, which a lost machine does not do: every descendant is killed too.
        try:
            tree = psutil.Process(comp.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        comp.signal_group(signal.SIGKILL)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        comp.proc.wait(10)
        psutil.wait_procs(tree, timeout=10)

    # ------------------------------------------------------------------ REST API

    def api(self, method: str, path: str, json_body: Any = None, **params: Any) -> Any:
        r = httpx.request(method, f"{self.url}/api/v2{path}", json=json_body, params=params or None, timeout=30)
        if r.status_code >= 400:
            raise ClusterError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def trigger(self, dag_id: str, conf: Mapping[str, Any], run_id: str | None = None) -> str:
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        run_id = run_id or f"{dag_id}__{uuid.uuid4().hex[:8]}"
        self.api("POST", f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": dict(conf)})
        return run_id

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=1000)["task_instances"]

    def tries(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every try of every task instance of the run (earlier tries from the TI history)."""
        out = []
        for ti in self.task_instances(dag_id, run_id):
            mi = ti["map_index"]
            path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}"
            path += f"/{mi}/tries" if mi >= 0 else "/tries"
            out.extend(self.api("GET", path)["task_instances"])
        return out

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        return self.api("GET", path, map_index=map_index, deserialize=True)["value"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600, poll: float = 1.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.dag_run(dag_id, run_id)["state"]
            if state in ("success", "failed"):
                return str(state)
            self.check_alive()
            time.sleep(poll)
        raise ClusterError(
            f"{dag_id} run {run_id} not finished after {timeout}s: {self.task_instances(dag_id, run_id)}"
        )

    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, try_number: int = 1) -> str:
        r = httpx.get(
            f"{self.url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"map_index": map_index, "full_content": True},
            headers={"Accept": "text/plain"},
            timeout=30,
        )
        return r.text

    def check_alive(self, ignore: set[str] | None = None) -> None:
        for name, comp in self.components.items():
            if ignore and name in ignore:
                continue
            if comp.proc is not None and comp.proc.returncode is None and not comp.alive:
                raise ClusterError(f"{name} exited with {comp.proc.returncode}:\n{tail(comp.log)}")

    # ------------------------------------------------------------------ internals

    def _add(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.components[name] = Component(
            name=name,
            args=[str(AIRFLOW_BIN), *args],
            log=self.workdir / "logs" / f"{name}.log",
            env=env or self.base_env(),
        )

    def _migrate(self, database: str) -> None:
        env = self.base_env()
        url = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).set(database=database)
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url.render_as_string(hide_password=False)
        log = self.workdir / "logs" / "db-migrate.log"
        with log.open("ab") as out:
            rc = subprocess.run(
                [str(AIRFLOW_BIN), "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600
            ).returncode
        if rc != 0:
            raise ClusterError(f"airflow db migrate exited {rc}:\n{tail(log)}")

    def _create_metadata_db(self) -> None:
        """A fresh metadata DB for this cluster, cloned from a migrated template.

        ``airflow db migrate`` of an empty database takes 15-60 s of CPU on this machine, every
        start; cloning a database that was migrated once per Airflow version takes about a second
        and gives the same fresh state. The template is built under a temporary name and renamed
        when complete, under an advisory lock, so concurrent starts neither race nor see half a
        schema; nothing ever connects to it afterwards, which CREATE DATABASE ... TEMPLATE needs.
        """
        import airflow

        template = "airflow_cluster_tmpl_" + re.sub(r"\W", "_", airflow.__version__)
        engine = create_engine(self.pg_admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.execute(text("SELECT pg_advisory_lock(hashtext(:n))"), {"n": template})
                try:
                    exists = c.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": template}).first()
                    if not exists:
                        building = f"{template}_building"
                        c.execute(text(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)'))
                        c.execute(text(f'CREATE DATABASE "{building}"'))
                        self._migrate(building)
                        c.execute(text(f'ALTER DATABASE "{building}" RENAME TO "{template}"'))
                    c.execute(text(f'CREATE DATABASE "{self.metadata_db}" TEMPLATE "{template}"'))
                finally:
                    c.execute(text("SELECT pg_advisory_unlock(hashtext(:n))"), {"n": template})
        finally:
            engine.dispose()

    def _progress(self, what: str, t0: float) -> None:
        print(f"[airflow-cluster] {what} after {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)

    def _admin(self, sql: str) -> None:
        engine = create_engine(self.pg_admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.execute(text(sql))
        finally:
            engine.dispose()

    def _wait(self, ok: Any, what: str, deadline: float, comp: Component | None = None) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            for c in [comp] if comp else self.components.values():
                if c.proc is not None and c.proc.poll() is not None:
                    raise ClusterError(
                        f"{c.name} exited with {c.proc.returncode} while waiting for {what}:\n{tail(c.log)}"
                    )
            try:
                if ok():
                    return
            except (httpx.HTTPError, ClusterError, OSError) as e:
                last = e
            time.sleep(0.5)
        logs = "\n".join(f"--- {c.name}\n{tail(c.log, 15)}" for c in ([comp] if comp else self.components.values()))
        raise ClusterError(f"timed out waiting for {what} (last error: {last})\n{logs}")

    def _health_ok(self) -> bool:
        health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
        return all(
            health.get(k, {}).get("status") == "healthy"
            for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    def _dag_exists(self, dag_id: str) -> bool:
        return httpx.get(f"{self.url}/api/v2/dags/{dag_id}", timeout=5).status_code == 200

    def ensure_pool(self, name: str, slots: int) -> None:
        body = {"name": name, "slots": slots, "description": "labelloop: one Label Studio writer at a time"}
        if httpx.get(f"{self.url}/api/v2/pools/{name}", timeout=5).status_code == 200:
            self.api("PATCH", f"/pools/{name}", body)
        else:
            self.api("POST", "/pools", body)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@contextlib.contextmanager
def running_cluster(workdir: Path, env: Mapping[str, str], **kwargs: Any) -> Iterator[AirflowCluster]:
    cluster = AirflowCluster(workdir=workdir, env=dict(env), **kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


if __name__ == "__main__":  # pragma: no cover - manual smoke run: python tests/airflow_cluster.py
    import tempfile

    with running_cluster(Path(tempfile.mkdtemp(prefix="labelloop-cluster-")), {}) as c:
        print("up:", c.url, "redis db", c.redis_db, "metadata db", c.metadata_db, file=sys.stderr)
        print(json.dumps(httpx.get(f"{c.url}/api/v2/monitor/health").json()))
