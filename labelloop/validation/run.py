"""Validate every record of a spec, quarantine the failures, apply the quality gate.

One run: a ``validation_runs`` row is created first (its id names the report), records are
streamed from the DB into frames, GX checks them, failing records go to ``quarantine`` with the
expectations they broke, and the run row gets the counts, the gate verdict and the report key.

The run also stores a *passing snapshot* (``{record id: record hash}``) next to its report. Export
takes exactly those records and only while their content is unchanged, so a record edited after
validation is never exported unvalidated: it waits for the next run.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import insert, select

from labelloop.config import Settings
from labelloop.db import Database, Item, Quarantine, Record, ValidationRun
from labelloop.db.types import utcnow
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore
from labelloop.validation.canonical import record_hash
from labelloop.validation.frames import Flattener, RecordRow
from labelloop.validation.gx_runner import CheckResult, run_checks
from labelloop.validation.report import render_report
from labelloop.validation.suite import build_checks

STREAM_BATCH = 2000


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
    failed_checks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_key(spec: str, run_id: int) -> str:
    return f"reports/validation/{spec}/{run_id}.html"


def passed_key(spec: str, run_id: int) -> str:
    return f"reports/validation/{spec}/{run_id}.passed.json"


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


def validate_spec(
    db: Database,
    store: ObjectStore,
    settings: Settings,
    spec: TaskSpec,
    *,
    max_failed_share: float | None = None,
) -> ValidationSummary:
    """Validate all records of ``spec``; see the module docstring for what is written where."""
    t0 = time.perf_counter()
    limit = settings.export.max_failed_share if max_failed_share is None else max_failed_share
    with db.transaction() as s:
        run = ValidationRun(spec=spec.name)
        s.add(run)
        s.flush()
        run_id, started_at = run.id, run.started_at

    flat = Flattener(spec)
    hashes: dict[int, str] = {}
    shas: dict[int, str] = {}
    for row, h in iter_record_rows(db, spec.name):
        flat.add(row)
        hashes[row.record_id] = h
        shas[row.record_id] = row.item_sha
    frames = flat.frames()
    del flat  # its column lists are as large as the frames
    results = run_checks(frames, build_checks(spec))
    failures = collect_failures(results)

    n_records, n_failed = len(hashes), len(failures)
    share = n_failed / n_records if n_records else 0.0
    passed = share <= limit
    finished_at = utcnow()

    passing = {str(rid): h for rid, h in hashes.items() if rid not in failures}
    store.put(passed_key(spec.name, run_id), json.dumps(passing).encode(), content_type="application/json")
    quarantined = [(rid, shas[rid], failures[rid]) for rid in sorted(failures)]
    html = render_report(
        spec=spec.name,
        run_id=run_id,
        started_at=started_at,
        finished_at=finished_at,
        n_records=n_records,
        n_failed=n_failed,
        max_failed_share=limit,
        passed_gate=passed,
        results=results,
        quarantined=quarantined,
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
    with db.transaction() as s:
        rows = [
            {"validation_run_id": run_id, "record_id": rid, "record_hash": hashes[rid], "failures": f}
            for rid, _sha, f in quarantined
        ]
        for i in range(0, len(rows), 1000):
            s.execute(insert(Quarantine), rows[i : i + 1000])
        run = s.get(ValidationRun, run_id)
        assert run is not None
        run.finished_at = finished_at
        run.n_records = n_records
        run.n_failed = n_failed
        run.passed_gate = passed
        run.report_key = rkey
        run.statistics = {
            "failed_share": share,
            "max_failed_share": limit,
            "passed_key": passed_key(spec.name, run_id),
            "n_parts": len(frames["parts"]) if "parts" in frames else 0,
            "checks": checks_stats,
        }
    return ValidationSummary(
        validation_run_id=run_id,
        spec=spec.name,
        n_records=n_records,
        n_failed=n_failed,
        failed_share=share,
        max_failed_share=limit,
        passed_gate=passed,
        report_key=rkey,
        passed_key=passed_key(spec.name, run_id),
        failed_checks={r.check.check: r.unexpected_count for r in results if not r.success},
        seconds=time.perf_counter() - t0,
    )


def check_gate(summary: ValidationSummary | dict[str, Any]) -> None:
    """Raise :class:`QualityGateError` when the run failed its gate (say by how much)."""
    s = summary if isinstance(summary, dict) else summary.as_dict()
    if not s["passed_gate"]:
        raise QualityGateError(
            f"quality gate failed for {s['spec']}: {s['n_failed']} of {s['n_records']} records "
            f"({s['failed_share']:.2%}) failed validation, more than the allowed "
            f"{s['max_failed_share']:.2%}; see {s['report_key']}"
        )


def load_passing(store: ObjectStore, spec: str, run_id: int) -> dict[int, str]:
    """The passing snapshot of a run: {record id: record hash}."""
    data = json.loads(store.get(passed_key(spec, run_id)))
    return {int(k): v for k, v in data.items()}
