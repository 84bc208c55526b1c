"""docker-compose.yaml and the deployment the scale-out test really runs (tests/airflow_cluster.py)
agree: the same executor and Airflow settings, the same connections, pool and worker queue.

The compose stack cannot run here (no Docker engine); the script's deployment does, in
tests/test_scaleout.py. This test is what makes the one stand for the other. Differences are
listed, each with its reason, in :data:`CLUSTER_ONLY` / :data:`COMPOSE_ONLY`; anything else set on
one side only, or to a different value, is a problem. The checks are shown to fail on broken copies.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow_cluster import (
    AIRFLOW_SETTINGS,
    CONNECTION_IDS,
    DEFAULT_QUEUE,
    POOLS,
    TEST_TIMINGS,
    AirflowCluster,
    connection_env,
)
from scaleout_workload import labelloop_env

REPO = Path(__file__).resolve().parents[1]

#: set by the test deployment only, and why
CLUSTER_ONLY = {
    "AIRFLOW__API__HOST": "binds the API server to loopback; compose containers listen on their network",
    "AIRFLOW__API__PORT": "a free port per run; compose uses the image's 8080",
    "AIRFLOW__API__WORKERS": "one API worker on a 2-core machine",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "no login in tests; compose has an admin password file",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "free ports: several log servers share one host",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "free ports: several log servers share one host",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "test timing (TEST_TIMINGS)",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "test timing (TEST_TIMINGS)",
}
#: set by docker-compose.yaml only, and why
COMPOSE_ONLY = {
    "AIRFLOW__CORE__AUTH_MANAGER": "production logins (SimpleAuthManager is the default the tests use)",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "production logins",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "production logins",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "the container health check probes :8974",
}
#: values that legitimately differ (endpoints, secrets, paths, sizes)
PER_DEPLOYMENT = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__DAGS_FOLDER",
}


def compose_env(compose: dict[str, Any]) -> dict[str, str]:
    env = compose["x-airflow-common"]["environment"]
    return {k: "" if v is None else str(v) for k, v in env.items()}


def cluster_env(tmp_path: Path) -> tuple[dict[str, str], list[str]]:
    env = labelloop_env(
        home=tmp_path / "home",
        curation_db_url="postgresql+psycopg://postgres@127.0.0.1:5432/curation",
        s3={"endpoint": "127.0.0.1:9000", "access_key": "a", "secret_key": "b", "bucket": "c"},
        label_studio_url="http://127.0.0.1:8080",
        label_studio_token="t",
        vllm_base_url="http://127.0.0.1:8000/v1",
        vllm_model="m",
        vllm_concurrency=4,
    )
    cluster = AirflowCluster(workdir=tmp_path, env=env)
    return cluster.base_env(), cluster.worker_args("worker1")


def _scheme(url: str) -> str:
    return url.split("://", 1)[0]


def parity_problems(compose: dict[str, Any], cluster: dict[str, str], worker_args: list[str]) -> list[str]:
    problems: list[str] = []
    comp = compose_env(compose)
    ours = {k: v for k, v in cluster.items() if k.startswith("AIRFLOW__")}
    theirs = {k: v for k, v in comp.items() if k.startswith("AIRFLOW__")}
    for key in sorted(set(ours) - set(theirs) - set(CLUSTER_ONLY)):
        problems.append(f"{key} is set by tests/airflow_cluster.py but not in docker-compose.yaml")
    for key in sorted(set(theirs) - set(ours) - set(COMPOSE_ONLY)):
        problems.append(f"{key} is set in docker-compose.yaml but not by tests/airflow_cluster.py")
    for key, value in AIRFLOW_SETTINGS.items():
        if theirs.get(key) != value:
            problems.append(f"{key}: docker-compose.yaml has {theirs.get(key)!r}, the deployment {value!r}")
    for key in sorted(set(ours) & set(theirs) - PER_DEPLOYMENT - set(TEST_TIMINGS)):
        if ours[key].lower() != theirs[key].lower():
            problems.append(f"{key}: docker-compose.yaml has {theirs[key]!r}, the deployment {ours[key]!r}")
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW__CELERY__BROKER_URL",
    ):
        if key in ours and key in theirs and _scheme(ours[key]) != _scheme(theirs[key]):
            problems.append(
                f"{key}: scheme {_scheme(theirs[key])!r} in compose, {_scheme(ours[key])!r} in the deployment"
            )
    # connections: the same ids with the same connection types
    conns_ours = {k: json.loads(v)["conn_type"] for k, v in cluster.items() if k.startswith("AIRFLOW_CONN_")}
    conns_theirs = {k: json.loads(v)["conn_type"] for k, v in comp.items() if k.startswith("AIRFLOW_CONN_")}
    if conns_ours != conns_theirs:
        problems.append(f"connections differ: compose {conns_theirs}, deployment {conns_ours}")
    # labelloop settings the deployment relies on are set in compose too
    for key in sorted(k for k in cluster if k.startswith("LABELLOOP_") and k not in comp and k != "LABELLOOP_HOME"):
        if key != "LABELLOOP_ROUTING__DEFAULT_THRESHOLD":  # the test's routing threshold, a tuning choice
            problems.append(f"{key} is set by the deployment but not in docker-compose.yaml")
    # pools created by airflow-init, with the same slots
    init = compose["services"]["airflow-init"]["command"]
    init_script = init if isinstance(init, str) else "\n".join(init)
    for name, slots in POOLS.items():
        if not re.search(rf"airflow pools set {re.escape(name)} {slots}\b", init_script):
            problems.append(f"airflow-init does not create pool {name!r} with {slots} slot(s)")
    # the worker consumes the same queue
    command = compose["services"]["airflow-worker"]["command"].split()
    theirs_q = command[command.index("--queues") + 1] if "--queues" in command else None
    ours_q = worker_args[worker_args.index("--queues") + 1]
    if theirs_q != ours_q:
        problems.append(f"worker queues: compose {theirs_q!r}, deployment {ours_q!r}")
    return problems


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_compose_and_the_test_deployment_agree(compose: dict[str, Any], tmp_path: Path) -> None:
    env, worker = cluster_env(tmp_path)
    assert parity_problems(compose, env, worker) == []
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" and worker[:2] == ["celery", "worker"]
    assert {k for k in env if k.startswith("AIRFLOW_CONN_")} == {f"AIRFLOW_CONN_{c.upper()}" for c in CONNECTION_IDS}
    assert DEFAULT_QUEUE in worker


def test_parity_checks_can_fail(compose: dict[str, Any], tmp_path: Path) -> None:
    env, worker = cluster_env(tmp_path)
    broken = copy.deepcopy(compose)
    broken["x-airflow-common"]["environment"]["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"
    assert any("AIRFLOW__CORE__EXECUTOR" in p for p in parity_problems(broken, env, worker))
    broken = copy.deepcopy(compose)
    broken["services"]["airflow-init"]["command"] = ["-c", "airflow db migrate"]
    assert any("pool 'labelloop_label_studio'" in p for p in parity_problems(broken, env, worker))
    broken = copy.deepcopy(compose)
    broken["services"]["airflow-worker"]["command"] = "celery worker --queues gpu"
    assert any("worker queues" in p for p in parity_problems(broken, env, worker))
    broken = copy.deepcopy(compose)
    del broken["x-airflow-common"]["environment"]["AIRFLOW__CORE__HOSTNAME_CALLABLE"]
    assert any("HOSTNAME_CALLABLE" in p for p in parity_problems(broken, env, worker))
    broken = copy.deepcopy(compose)
    del broken["x-airflow-common"]["environment"]["AIRFLOW_CONN_VLLM"]
    assert any("connections differ" in p for p in parity_problems(broken, env, worker))
    assert any(
        "set by tests/airflow_cluster.py" in p for p in parity_problems(compose, env | {"AIRFLOW__X__Y": "1"}, worker)
    )


def test_connection_env_is_what_the_hooks_read(tmp_path: Path) -> None:
    """The deployment's connections, read back by labelloop's own hooks, give the intended settings."""
    import os

    env = connection_env(
        curation_db_url="postgresql+psycopg://postgres@127.0.0.1:5432/curation",
        s3={"endpoint": "127.0.0.1:9000", "access_key": "ak", "secret_key": "sk", "bucket": "bk"},
        label_studio={"url": "http://127.0.0.1:8081", "token": "tok", "project_prefix": "pp", "media_mode": "s3"},
        vllm={"base_url": "http://127.0.0.1:8000/v1", "model": "m", "concurrency": 3},
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from labelloop_airflow.settings import airflow_settings

        s = airflow_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert s.db.url_value == "postgresql+psycopg://postgres@127.0.0.1:5432/curation"
    assert (s.storage.backend, s.storage.endpoint, s.storage.bucket) == ("s3", "127.0.0.1:9000", "bk")
    assert s.storage.access_key.get_secret_value() == "ak"
    assert (s.label_studio.url, s.label_studio.project_prefix, s.label_studio.media_mode) == (
        "http://127.0.0.1:8081",
        "pp",
        "s3",
    )
    assert (s.vllm.base_url, s.vllm.model, s.vllm.concurrency) == ("http://127.0.0.1:8000/v1", "m", 3)
