"""Shared fixtures: real PostgreSQL and SQLite databases, local and S3 object stores, sample data.

Real servers only: PostgreSQL on 127.0.0.1:5432 (started by .ci/run), an S3-compatible server
(moto in server mode, a subprocess on a free loopback port, spoken to over HTTP by the minio SDK).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

# Airflow reads its configuration when first imported, and several test modules import it
# (operators, DAGs). So its environment is fixed here, before any test module is imported: a
# private AIRFLOW_HOME, our dags/ folder, and a metadata DB of its own on the test PostgreSQL
# server, separate from the curation DB. The `airflow_db` fixture migrates it on first use.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="labelloop-airflow-")
_AIRFLOW_DB = f"airflow_test_{os.getpid()}"
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = os.environ.get(
    "LABELLOOP_TEST_AIRFLOW_DB_URL", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{_AIRFLOW_DB}"
)

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from labelloop.config import DatabaseSettings, Settings, StorageSettings
from labelloop.db import Database
from labelloop.storage import LocalStore

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("LABELLOOP_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError as e:
            last = e
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


@pytest.fixture(scope="session")
def sample_data() -> Path:
    path = Path(os.environ.get("LABELLOOP_SAMPLE_DATA", REPO.parent / "shared" / "data"))
    if not (path / "images").is_dir() or not (path / "documents").is_dir():
        pytest.fail(f"sample data not found at {path} (set LABELLOOP_SAMPLE_DATA)")
    return path


# --------------------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database used as CREATE DATABASE ... TEMPLATE for each test."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"labelloop_tmpl_{os.getpid()}"
    try:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # pragma: no cover - environment problem, say so plainly
        pytest.fail(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {e}")
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    db = Database(DatabaseSettings(url=url))
    db.upgrade()
    db.dispose()
    yield name
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _pg_database(template: str) -> tuple[str, callable]:  # type: ignore[valid-type]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"labelloop_t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs twice: on SQLite and on PostgreSQL (fresh, migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'curation.db'}"
        return
    url, drop = _pg_database(request.getfixturevalue("pg_template"))
    yield url
    drop()


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh migrated PostgreSQL database (for tests that only need one backend)."""
    url, drop = _pg_database(pg_template)
    yield url
    drop()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        home=tmp_path,
        db=DatabaseSettings(url=db_url),
        storage=StorageSettings(backend="local", root=tmp_path / "objects"),
    )


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Settings on SQLite only, for tests whose subject is not the database."""
    return Settings(
        home=tmp_path,
        db=DatabaseSettings(url=f"sqlite:///{tmp_path / 'curation.db'}"),
        storage=StorageSettings(backend="local", root=tmp_path / "objects"),
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.db)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(sqlite_settings: Settings) -> Iterator[Database]:
    database = Database(sqlite_settings.db)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "objects")


# --------------------------------------------------------------------------- S3 test server


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto in server mode as a subprocess on a free loopback port, its output (one access-log
    line per request) in ``log``; yields host:port."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", timeout=60, proc=proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The S3 test server the storage fixtures share; yields host:port."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as address:
        yield address


@pytest.fixture
def s3_settings(s3_server: str) -> StorageSettings:
    return StorageSettings(
        backend="s3",
        endpoint=s3_server,
        bucket=f"t-{uuid.uuid4().hex[:10]}",
        secure=False,
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
    )


@pytest.fixture
def s3_store(s3_settings: StorageSettings):  # type: ignore[no-untyped-def]
    from labelloop.storage.s3 import S3Store

    return S3Store(s3_settings)


# --------------------------------------------------------------------------- Airflow metadata DB


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[str]:
    """A migrated Airflow metadata database (PostgreSQL), for dag.test() and DagBag syncs."""
    url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    name = make_url(url).database
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    from airflow.utils import db as airflow_db_utils

    airflow_db_utils.resetdb()
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()  # the "dags-folder" bundle that DAG rows refer to
    from airflow.models.pool import Pool

    # the pool every Label Studio writer runs in, as airflow-init and the demo create it
    Pool.create_or_update_pool(
        "labelloop_label_studio", slots=1, description="Label Studio writers", include_deferred=False
    )
    yield url
    from airflow.settings import dispose_orm

    dispose_orm()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)
