"""A validation report that renders offline: one HTML file, inline CSS, no scripts, no CDNs.

GX Data Docs pull their CSS/JS from CDNs, so in an air-gapped cluster they render as unstyled
text. Reviewers mostly need three things: did the gate pass, which rules failed how often, and
which records (with the failing values) were quarantined. That fits in one small page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape
from typing import Any

from labelloop.validation.gx_runner import CheckResult

#: quarantined records listed in full; the rest are counted (the DB has all of them)
MAX_LISTED = 1000

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1d2430}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
table{border-collapse:collapse;width:100%;margin:.4rem 0}
th,td{border:1px solid #d8dde6;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f2f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#13692f;font-weight:600}.fail{color:#a4161a;font-weight:600}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:.8rem;color:#fff}
.badge.pass{background:#2b8a3e}.badge.fail{background:#c92a2a}
code{background:#f2f4f8;padding:0 .2rem;border-radius:3px;word-break:break-all}
.muted{color:#5c6670}
"""


def _fmt(value: Any) -> str:
    return f"<code>{escape(repr(value) if not isinstance(value, str) else value)}</code>"


def _failure_item(f: dict[str, Any]) -> str:
    where = f" at <code>{escape(str(f['path']))}</code>" if f.get("path") else ""
    box = f" box {_fmt(f['box'])} in {escape(str(f.get('frame')))}" if f.get("box") else ""
    return f"<li>{escape(f['rule'])}: {_fmt(f.get('observed'))}{where}{box}</li>"


def _quarantine_table(quarantined: Sequence[tuple[int, str, list[dict[str, Any]]]], total: int) -> str:
    if not quarantined:
        return "<p>None.</p>"
    rows = []
    for record_id, sha, failures in quarantined[:MAX_LISTED]:
        items = "".join(_failure_item(f) for f in failures)
        sha_cell = f"<code>{escape(sha[:16])}</code>"
        rows.append(f"<tr><td class='n'>{record_id}</td><td>{sha_cell}</td><td><ul>{items}</ul></td></tr>")
    more = max(total, len(quarantined)) - min(len(quarantined), MAX_LISTED)
    tail = f'<p class="muted">… and {more} more (see the quarantine table).</p>' if more > 0 else ""
    head = "<table><tr><th>record</th><th>item sha256</th><th>failures</th></tr>"
    return head + "".join(rows) + "</table>" + tail


def render_report(
    *,
    spec: str,
    run_id: int,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    n_records: int,
    n_failed: int,
    max_failed_share: float,
    passed_gate: bool,
    results: Sequence[CheckResult],
    quarantined: Sequence[tuple[int, str, list[dict[str, Any]]]],
) -> str:
    """The whole report; ``quarantined`` is (record id, item sha, failures) per failed record, the
    first :data:`MAX_LISTED` of the ``n_failed`` at least (validation streams, so it keeps no more)."""
    share = n_failed / n_records if n_records else 0.0
    verdict = "pass" if passed_gate else "fail"
    head = (
        f"<h1>Validation of <code>{escape(spec)}</code> — run {run_id}</h1>"
        f'<p><span class="badge {verdict}">quality gate {verdict.upper()}</span> '
        f"{n_failed} of {n_records} records failed ({share:.2%}); the gate allows at most "
        f"{max_failed_share:.2%}.</p>"
        f'<p class="muted">started {started_at.isoformat(timespec="seconds")}, finished '
        f"{finished_at.isoformat(timespec='seconds')} (UTC). Checked with Great Expectations.</p>"
    )
    rows = []
    for r in results:
        cls = "pass" if r.success else "fail"
        rows.append(
            f"<tr><td>{escape(r.check.rule)}</td><td>{escape(r.check.frame)}</td>"
            f"<td><code>{escape(r.check.column)}</code></td><td>{escape(r.check.type)}</td>"
            f'<td class="n">{r.element_count}</td><td class="n">{r.unexpected_count}</td>'
            f'<td class="{cls}">{"ok" if r.success else "failed"}</td></tr>'
        )
    checks = (
        "<h2>Checks</h2><table><tr><th>rule</th><th>table</th><th>column</th><th>expectation</th>"
        "<th>rows</th><th>failing rows</th><th></th></tr>" + "".join(rows) + "</table>"
    )
    quarantine = "<h2>Quarantined records</h2>" + _quarantine_table(quarantined, n_failed)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>labelloop validation {escape(spec)} #{run_id}</title><style>{_CSS}</style></head>"
        f"<body>{head}{checks}{quarantine}</body></html>"
    )
