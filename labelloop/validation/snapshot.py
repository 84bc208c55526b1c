"""A validation run's passing snapshot: which records passed, with the hash they passed with.

Its own module, free of the validation machinery (pandas, Great Expectations): the export and its
worker processes read it, and they should not pay seconds of imports for a file of two columns.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from labelloop.storage import ObjectNotFound, ObjectStore


def passed_key(spec: str, run_id: int) -> str:
    """The passing snapshot: one ``<record id>\t<record hash>`` line per record, in id order."""
    return f"reports/validation/{spec}/{run_id}.passed.tsv"


def _legacy_passed_key(spec: str, run_id: int) -> str:
    return f"reports/validation/{spec}/{run_id}.passed.json"


def iter_passing(store: ObjectStore, spec: str, run_id: int) -> Iterator[tuple[int, str]]:
    """The passing snapshot of a run, (record id, record hash) in id order, streamed from the
    store (runs from before the streamed format: their JSON object, sorted)."""
    key = passed_key(spec, run_id)
    try:
        local = store.local_path(key)
        if local is not None and local.is_file():
            yield from _read_tsv(local)
            return
        with tempfile.TemporaryDirectory(prefix="labelloop-passed-") as tmp:
            path = store.get_file(key, Path(tmp) / "passed.tsv")
            yield from _read_tsv(path)
    except ObjectNotFound:
        data = json.loads(store.get(_legacy_passed_key(spec, run_id)))
        yield from sorted((int(k), v) for k, v in data.items())


def _read_tsv(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="ascii") as f:
        for line in f:
            rid, h = line.rstrip("\n").split("\t")
            yield int(rid), h


def load_passing(store: ObjectStore, spec: str, run_id: int) -> dict[int, str]:
    """The passing snapshot of a run as a dict: {record id: record hash} (small runs, tests)."""
    return dict(iter_passing(store, spec, run_id))
