"""Validate every record of a spec, quarantine the failures, apply the quality gate.

One run: a ``validation_runs`` row is created first (its id names the report), records are
streamed from the DB into frames, GX checks them, failing records go to ``quarantine`` with the
expectations they broke, and the run row gets the counts, the gate verdict and the report key.

The run also stores a *passing snapshot* (``<record id>\t<record hash>`` lines in id order) next to
its report. Export takes exactly those records and only while their content is unchanged, so a
record edited after validation is never exported unvalidated: it waits for the next run.

Records stream in chunks (``VALIDATION_CHUNK``): each chunk is flattened, checked by the same GX
validation definitions, quarantined and appended to the snapshot, then dropped, so peak memory
does not grow with the number of records. A failed gate names its first failing records and the
report (:func:`gate_message`).
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from labelloop.config import Settings
from labelloop.db import Database, Item, Quarantine, Record, ValidationRun
from labelloop.db.types import utcnow
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore
from labelloop.validation.canonical import record_hash
from labelloop.validation.frames import Flattener, RecordRow
from labelloop.validation.gx_runner import CheckResult, CheckRunner
from labelloop.validation.report import MAX_LISTED, render_report
from labelloop.validation.snapshot import passed_key
from labelloop.validation.suite import build_checks

STREAM_BATCH = 2000
#: records flattened and checked at a time: memory is bounded by this, not by the spec's size
VALIDATION_CHUNK = 20_000
#: failing records the gate's message names (the report lists up to MAX_LISTED)
GATE_EXAMPLES = 10


class QualityGateError(RuntimeError):
    """More records failed validation than the configured share allows."""


@dataclass
class ValidationSummary:
    validation_run_id: int
    spec: str
    n_records: int
    n_failed: int
    failed_share: float
    max_failed_share: float
    passed_gate: bool
    report_key: str
    passed_key: str
    report_uri: str = ""
    failed_checks: dict[str, int] = field(default_factory=dict)
    #: the first failing records (id, item sha256, rules broken), for the gate's message
    failed_examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_key(spec: str, run_id: int) -> str:
    return f"reports/validation/{spec}/{run_id}.html"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def iter_record_rows(db: Database, spec: str):  # type: ignore[no-untyped-def]
    """(RecordRow, record hash) for every record of ``spec``, streamed in id order."""
    stmt = (
        select(
            Record.id,
            Record.item_id,
            Item.sha256,
            Item.media_type,
            Item.width,
            Item.height,
            Record.record,
        )
        .join(Item, Item.id == Record.item_id)
        .where(Record.spec == spec)
        .order_by(Record.id)
        .execution_options(yield_per=STREAM_BATCH)
    )
    with db.session() as s:
        for rid, item_id, sha, media, w, h, rec in s.execute(stmt):
            yield RecordRow(rid, item_id, sha, media, w, h, rec), record_hash(rec)


def collect_failures(results: list[CheckResult]) -> dict[int, list[dict[str, Any]]]:
    """Per record id, every failed expectation with its column and the observed value."""
    failures: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r.success:
            continue
        c = r.check
        for row in r.rows:
            entry: dict[str, Any] = {
                "check": c.check,
                "expectation": _snake(c.type),
                "column": c.column,
                "rule": c.rule,
                "field": c.field,
                "observed": row.get(c.column),
            }
            if c.frame == "parts":
                entry.update(path=row.get("path"), box=row.get("box"), frame=row.get("frame"))
            failures[int(row["record_id"])].append(entry)
    return failures


def _chunks(rows: Iterator[tuple[RecordRow, str]], size: int) -> Iterator[list[tuple[RecordRow, str]]]:
    chunk: list[tuple[RecordRow, str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Totals:
    """Per-check results summed over the chunks (the report needs counts, not rows)."""

    def __init__(self) -> None:
        self.by_check: dict[str, CheckResult] = {}

    def add(self, results: list[CheckResult]) -> None:
        for r in results:
            t = self.by_check.get(r.check.check)
            if t is None:
                self.by_check[r.check.check] = CheckResult(r.check, r.success, r.element_count, r.unexpected_count)
            else:
                t.success = t.success and r.success
                t.element_count += r.element_count
                t.unexpected_count += r.unexpected_count

    def results(self, checks: list[Any]) -> list[CheckResult]:
        return [self.by_check[c.check] for c in checks if c.check in self.by_check]


def validate_spec(
    db: Database,
    store: ObjectStore,
    settings: Settings,
    spec: TaskSpec,
    *,
    max_failed_share: float | None = None,
    chunk_size: int = VALIDATION_CHUNK,
) -> ValidationSummary:
    """Validate all records of ``spec``; see the module docstring for what is written where.

    Records stream through in chunks of ``chunk_size``: each chunk is flattened, checked by the
    same GX validation definitions, its failures quarantined and its passing records appended to
    the snapshot, then dropped, so memory stays flat in the number of records.
    """
    t0 = time.perf_counter()
    limit = settings.export.max_failed_share if max_failed_share is None else max_failed_share
    with db.transaction() as s:
        run = ValidationRun(spec=spec.name)
        s.add(run)
        s.flush()
        run_id, started_at = run.id, run.started_at

    checks = build_checks(spec)
    runner = CheckRunner(checks)
    totals = _Totals()
    listed: list[tuple[int, str, list[dict[str, Any]]]] = []  # the report's quarantine table
    n_records = n_failed = n_parts = 0
    with tempfile.TemporaryDirectory(prefix="labelloop-validate-") as tmp:
        snapshot = Path(tmp) / "passed.tsv"
        with snapshot.open("w", encoding="ascii") as passed:
            for chunk in _chunks(iter_record_rows(db, spec.name), chunk_size):
                flat = Flattener(spec)
                for row, _h in chunk:
                    flat.add(row)
                frames = flat.frames()
                del flat  # its column lists are as large as the frames
                n_parts += len(frames["parts"]) if "parts" in frames else 0
                results = runner.run(frames)
                del frames
                totals.add(results)
                failures = collect_failures(results)
                rows = []
                for row, h in chunk:
                    rid = row.record_id
                    if rid in failures:
                        rows.append(
                            {"validation_run_id": run_id, "record_id": rid, "record_hash": h, "failures": failures[rid]}
                        )
                        if len(listed) < MAX_LISTED:
                            listed.append((rid, row.item_sha, failures[rid]))
                    else:
                        passed.write(f"{rid}\t{h}\n")
                if rows:
                    with db.transaction() as s:
                        for i in range(0, len(rows), 1000):
                            s.execute(insert(Quarantine), rows[i : i + 1000])
                n_records += len(chunk)
                n_failed += len(rows)
        store.put_file(passed_key(spec.name, run_id), snapshot, content_type="text/tab-separated-values")

    share = n_failed / n_records if n_records else 0.0
    passed_gate = share <= limit
    finished_at = utcnow()
    results = totals.results(checks)
    html = render_report(
        spec=spec.name,
        run_id=run_id,
        started_at=started_at,
        finished_at=finished_at,
        n_records=n_records,
        n_failed=n_failed,
        max_failed_share=limit,
        passed_gate=passed_gate,
        results=results,
        quarantined=listed,
    )
    rkey = report_key(spec.name, run_id)
    store.put_text(rkey, html, content_type="text/html; charset=utf-8")

    checks_stats = [
        {
            "check": r.check.check,
            "rule": r.check.rule,
            "frame": r.check.frame,
            "column": r.check.column,
            "expectation": _snake(r.check.type),
            "success": r.success,
            "element_count": r.element_count,
            "unexpected_count": r.unexpected_count,
        }
        for r in results
    ]
    examples = [
        {"record_id": rid, "item_sha256": sha, "rules": sorted({f["rule"] for f in fs})}
        for rid, sha, fs in listed[:GATE_EXAMPLES]
    ]
    with db.transaction() as s:
        run = s.get(ValidationRun, run_id)
        assert run is not None
        run.finished_at = finished_at
        run.n_records = n_records
        run.n_failed = n_failed
        run.passed_gate = passed_gate
        run.report_key = rkey
        run.statistics = {
            "failed_share": share,
            "max_failed_share": limit,
            "passed_key": passed_key(spec.name, run_id),
            "n_parts": n_parts,
            "checks": checks_stats,
            "failed_examples": examples,
        }
    return ValidationSummary(
        validation_run_id=run_id,
        spec=spec.name,
        n_records=n_records,
        n_failed=n_failed,
        failed_share=share,
        max_failed_share=limit,
        passed_gate=passed_gate,
        report_key=rkey,
        passed_key=passed_key(spec.name, run_id),
        report_uri=store.uri(rkey),
        failed_checks={r.check.check: r.unexpected_count for r in results if not r.success},
        failed_examples=examples,
        seconds=time.perf_counter() - t0,
    )


def gate_message(s: dict[str, Any]) -> str:
    """Why the gate failed: the counts, the first failing records with the rules they broke, and
    where the full report is (its URI when known, else its key in the object store)."""
    examples = s.get("failed_examples") or []
    named = "; ".join(
        f"record {e['record_id']} (item {str(e.get('item_sha256') or '')[:12]}): {', '.join(e['rules'])}"
        for e in examples
    )
    more = s["n_failed"] - len(examples)
    tail = f"; and {more} more" if examples and more > 0 else ""
    return (
        f"quality gate failed for {s['spec']} (validation run {s['validation_run_id']}): {s['n_failed']} of "
        f"{s['n_records']} records ({s['failed_share']:.2%}) failed validation, more than the allowed "
        f"{s['max_failed_share']:.2%}"
        + (f". Failing: {named}{tail}" if named else "")
        + f". Report: {s.get('report_uri') or s['report_key']}"
    )


def check_gate(summary: ValidationSummary | dict[str, Any]) -> None:
    """Raise :class:`QualityGateError` when the run failed its gate, naming the failing records
    and the report."""
    s = summary if isinstance(summary, dict) else summary.as_dict()
    if not s["passed_gate"]:
        raise QualityGateError(gate_message(s))
