"""One real Airflow deployment (tests/airflow_cluster.py) per test session, for the scale-out tests.

Use with ``pytest_plugins = ["fixtures_labelstudio", "fixtures_airflow_cluster"]``. Starting the
deployment takes over a minute on the 2-core machine, so the smoke test and the kill test share
it; each uses its own images and counts only its own items. What the components get: a fresh
PostgreSQL curation DB (migrated), a bucket on the S3 test server, the session's Label Studio
(media from S3), and a vLLM test server of its own whose latency makes a batch last long enough to
kill a worker in the middle of it. At the end the deployment is stopped and the fixture checks
that none of its process groups is left.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from airflow_cluster import AirflowCluster
from fixtures_vllm import VLLMTestServer, start_server
from scaleout_workload import labelloop_env
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from vllm_server import ServerConfig

from labelloop.config import DatabaseSettings
from labelloop.db import Database

PG_ADMIN_URL = os.environ.get("LABELLOOP_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
#: per request; with VLLM_CONCURRENCY requests per task, a batch of 100 takes ~100*0.15/2 = 7.5 s
VLLM_LATENCY_MS = 150
VLLM_CONCURRENCY = 2
WORKERS = 2
WORKER_CONCURRENCY = 2


@dataclass
class ScaleoutEnv:
    cluster: AirflowCluster
    db: Database
    vllm: VLLMTestServer
    label_studio: Any


@pytest.fixture(scope="session")
def scaleout(tmp_path_factory: pytest.TempPathFactory, s3_server: str, label_studio: Any) -> Iterator[ScaleoutEnv]:
    name = f"labelloop_so_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    db = Database(DatabaseSettings(url=db_url))
    db.upgrade()
    vllm, stop_vllm = start_server(
        ServerConfig(slots=WORKERS * WORKER_CONCURRENCY * VLLM_CONCURRENCY * 2, latency_ms=VLLM_LATENCY_MS)
    )
    workdir = tmp_path_factory.mktemp("airflow-cluster")
    env = labelloop_env(
        home=workdir / "labelloop-home",
        curation_db_url=db_url,
        s3={
            "endpoint": s3_server,
            "access_key": "testing",
            "secret_key": "testing",
            "bucket": f"so-{uuid.uuid4().hex[:10]}",
            "region": "us-east-1",
        },
        label_studio_url=label_studio.url,
        label_studio_token=label_studio.token,
        vllm_base_url=vllm.base_url,
        vllm_model=vllm.config.model,
        vllm_concurrency=VLLM_CONCURRENCY,
    )
    cluster = AirflowCluster(
        workdir=workdir, env=env, workers=WORKERS, worker_concurrency=WORKER_CONCURRENCY, pg_admin_url=PG_ADMIN_URL
    )
    try:
        cluster.start()
        yield ScaleoutEnv(cluster, db, vllm, label_studio)
    finally:
        procs = [c.proc for c in cluster.components.values() if c.proc is not None]
        cluster.stop()
        stop_vllm()
        db.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        left = [p.pid for p in procs if _group_alive(p.pid)]
        assert not left, f"process groups left running after stop: {left}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
