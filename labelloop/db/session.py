"""Engine and session handling for the curation database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from labelloop.config import DatabaseSettings, redact_url


class DatabaseUnreachable(OperationalError):
    """The curation database could not be reached: names the URL (password masked) and the step.

    A subclass of SQLAlchemy's ``OperationalError``, so whatever handles that still does; only the
    message differs: the driver's own ("connection refused") names neither the server nor what
    was being done.
    """

    def __init__(self, url: str, step: str, orig: BaseException) -> None:
        super().__init__(None, None, orig)  # type: ignore[arg-type]
        self.url = url
        self.step = step

    def __str__(self) -> str:
        return f"curation database {self.url} unreachable (step: {self.step}): {type(self.orig).__name__}: {self.orig}"


def _name_the_database(engine: Engine, url: str) -> None:
    """Turn connection failures (connecting, or a connection lost mid-statement) into
    :class:`DatabaseUnreachable`; every other error (constraints, SQL) passes through as it is."""

    def handle(ctx: ExceptionContext) -> None:
        if ctx.is_pre_ping or ctx.original_exception is None:
            return
        connecting = ctx.connection is None or ctx.statement is None
        if not (connecting or ctx.is_disconnect):
            return
        sql = " ".join((ctx.statement or "").split())[:60]
        step = "connect" if connecting else f"query {sql}"
        raise DatabaseUnreachable(url, step, ctx.original_exception)

    event.listen(engine, "handle_error", handle)


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
        _name_the_database(engine, redact_url(settings.url_value))
        return engine
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("", "psycopg2"):
        # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url, pool_size=settings.pool_size, pool_pre_ping=True, **kwargs)
    _name_the_database(engine, redact_url(settings.url_value))
    return engine


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
