"""Named locks held in (or beside) the curation database, so that the CLI, Airflow workers on
other machines and a second scheduler run can never do the same exclusive step at once.

PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a dedicated connection.
It is released when the holder unlocks, or by the server when the holder's connection dies, so
a killed worker never leaves a stale lock behind (a lock *row* would need expiry and heartbeats).

SQLite: the database is a local file, and so is the lock: ``flock`` on ``<db file>.<name>.lock``.
The kernel drops it when the holding process exits, however it exits. (SQLite's own write lock
cannot be held across the many short transactions a step commits.)

Waiting is polling with a deadline, so a stuck holder gives a clear error naming the lock
instead of a hang.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from labelloop.db.session import Database


class LockTimeout(TimeoutError):
    """Another run held the lock for longer than we were willing to wait."""


def _pg_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"labelloop:{name}".encode()).digest()[:8], "big", signed=True)


def _lock_path(db: Database, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    database = make_url(db.settings.url_value).database
    if database and database != ":memory:":
        return Path(f"{database}.{safe}.lock")
    return Path(tempfile.gettempdir()) / f"labelloop-{os.getpid()}-{safe}.lock"


@contextmanager
def exclusive(db: Database, name: str, *, timeout_s: float = 3600.0, poll_s: float = 0.25) -> Iterator[None]:
    """Hold the lock ``name`` for the duration of the block, waiting up to ``timeout_s`` for it."""
    deadline = time.monotonic() + timeout_s
    if db.dialect == "postgresql":
        key = _pg_key(name)
        with db.engine.connect() as conn:
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                conn.commit()
                if time.monotonic() > deadline:
                    raise LockTimeout(
                        f"lock {name!r} in the curation DB still held by another run after {timeout_s:g} s"
                    )
                time.sleep(poll_s)
            conn.commit()  # the lock is the session's, not the transaction's: do not sit idle in one
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    import fcntl

    path = _lock_path(db, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"lock {path} still held by another run after {timeout_s:g} s") from None
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
