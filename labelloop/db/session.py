"""Engine and session handling for the curation database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from labelloop.config import DatabaseSettings


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets readers (the CLI's `status`) work
    # while an ingest writes; busy_timeout waits out short write locks instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
    # pysqlite opens transactions lazily and not before SAVEPOINT, so each begin_nested() became
    # its own commit (an fsync per row, not rolled back with the outer transaction). Take over
    # transaction control, as SQLAlchemy's SQLite docs recommend, and BEGIN explicitly.
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def make_engine(settings: DatabaseSettings) -> Engine:
    url = make_url(settings.url_value)
    kwargs: dict[str, Any] = {"echo": settings.echo, "future": True}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("", "psycopg2"):
        # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(url, pool_size=settings.pool_size, pool_pre_ping=True, **kwargs)


class Database:
    """Owns one engine and hands out sessions; create one per process and pass it around."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.engine = make_engine(settings)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self) -> Session:
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def upgrade(self, revision: str = "head") -> None:
        from labelloop.db.migrate import upgrade

        upgrade(self.engine, revision)

    def dispose(self) -> None:
        self.engine.dispose()
