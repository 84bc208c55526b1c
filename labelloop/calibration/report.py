"""Calibration report, stored under ``reports/calibration/<run>/`` (``reports/calibration/latest.html``
points at the newest): per spec and model the statement in plain words (the guarantee and its
assumptions, coverage, the audit sample's live estimate with its Clopper-Pearson interval, what would
raise coverage; :mod:`labelloop.calibration.statement`), where each key stands (certified, full review,
uncalibrated), the estimated reviewer time saved, per statement a coverage-versus-error curve and per
field a reliability diagram (PNG), as one HTML page, ``report.json`` and ``summary.txt``."""

from __future__ import annotations

import datetime as dt
import html
import io
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sqlalchemy import func, select

from labelloop.calibration.run import CalibrationResult, FieldOutcome, current_thresholds
from labelloop.calibration.statement import Statement
from labelloop.db import Annotation, Database, Prediction, ReviewTask
from labelloop.storage import ObjectStore


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def reliability_png(o: FieldOutcome) -> bytes:
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="perfectly calibrated")
    for route, marker in (("audit", "o"), ("review", "s")):
        cells = [c for c in o.reliability if c["route"] == route]
        if cells:
            ax.plot(
                [c["mean_confidence"] for c in cells],
                [1 - c["change_rate"] for c in cells],
                marker=marker,
                label=f"{route} (n={sum(c['n'] for c in cells)})",
            )
    ax.set_xlabel("model confidence")
    ax.set_ylabel("share kept unchanged by reviewers")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{o.key[0]}.{o.key[1]}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def coverage_png(st: Statement) -> bytes:
    """Coverage against the weighted error share of what a threshold would auto-accept."""
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    if st.curve:
        ax.plot(
            [c["coverage"] for c in st.curve],
            [c["error_share"] for c in st.curve],
            label=f"reviewed {st.unit} changed (weighted)",
        )
    ax.axhline(st.target, c="red", lw=1, label=f"target {st.target:.1%}")
    if st.cert.threshold is not None:
        ax.axvline(st.cert.coverage, c="green", lw=1, label=f"chosen threshold {st.cert.threshold:.3f}")
        if st.cert.upper_bound is not None:
            ax.plot([st.cert.coverage], [st.cert.upper_bound], "v", c="green", label="upper bound there")
    ax.set_xlabel("coverage (share auto-accepted)")
    ax.set_ylabel("error (share changed)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.1, min(1.0, 3 * st.target)))
    ax.set_title(st.title, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def time_saved(db: Database) -> dict[str, dict[str, float]]:
    """Per spec: items auto-accepted under the current thresholds x mean review lead time."""
    out: dict[str, dict[str, float]] = {}
    with db.session() as s:
        thresholds = current_thresholds(s)
        lead = dict(
            s.execute(
                select(ReviewTask.spec, func.avg(Annotation.lead_time_s))
                .join(Annotation, Annotation.review_task_id == ReviewTask.id)
                .where(Annotation.is_latest, ~Annotation.was_cancelled, Annotation.lead_time_s.is_not(None))
                .group_by(ReviewTask.spec)
            ).all()
        )
        preds = s.execute(
            select(
                Prediction.spec,
                Prediction.model,
                Prediction.model_version,
                Prediction.prompt_hash,
                Prediction.field_confidence,
            ).where(Prediction.status == "ok")
        )
        for spec, model, mv, ph, fc in preds:
            row = out.setdefault(spec, {"items": 0, "auto_accepted": 0, "mean_lead_time_s": float(lead.get(spec) or 0)})
            row["items"] += 1
            ok = bool(fc)
            for fld, c in (fc or {}).items():
                t = thresholds.get((spec, fld, model, mv, ph))
                if t is None or t.threshold is None or c < t.threshold:
                    ok = False
                    break
            row["auto_accepted"] += int(ok)
    for row in out.values():
        row["hours_saved"] = row["auto_accepted"] * row["mean_lead_time_s"] / 3600
    return out


def write_report(
    db: Database,
    store: ObjectStore,
    result: CalibrationResult,
    target: float,
    run_id: str | None = None,
    overview: dict[str, Any] | None = None,
) -> str:
    """Store the PNGs, the HTML page, ``report.json`` and ``summary.txt``; returns the page's key.
    ``overview``: :func:`labelloop.calibration.overview.calibration_overview` (marks uncalibrated keys)."""
    run_id = run_id or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    prefix = f"reports/calibration/{run_id}"
    saved = time_saved(db)
    esc = html.escape
    statements = []
    text = [f"labelloop calibration {run_id}", ""]
    for i, st in enumerate(result.statements):
        review_s = saved.get(st.spec, {}).get("mean_lead_time_s") or None
        store.put(f"{prefix}/statement-{i}.png", coverage_png(st), content_type="image/png")
        lines = st.lines(review_s)
        text += [st.title, *("  " + x for x in lines), ""]
        statements.append(
            f"<h2>{esc(st.title)}</h2><ul>"
            + "".join(f"<li>{esc(x)}</li>" for x in lines)
            + f'</ul><img src="statement-{i}.png" alt="coverage and error">'
        )
    sections = []
    for i, o in enumerate(result.outcomes):
        store.put(f"{prefix}/reliability-{i}.png", reliability_png(o), content_type="image/png")
        thr = "full review" if o.choice.threshold is None else f"{o.choice.threshold:.4f}"
        ub = "-" if o.choice.upper_bound is None else f"{o.choice.upper_bound:.4f}"
        sections.append(
            f"<h3>{esc(o.key[0])}.{esc(o.key[1])}</h3>"
            f"<p>model {esc(o.key[2])} {esc(o.key[3])} (prompt {esc(o.key[4])}): "
            f"threshold <b>{thr}</b>, upper bound {ub}, {o.choice.n_samples} reviewed, version {o.version}"
            f"<br><small>{esc(o.choice.reason)}</small></p>"
            f'<img src="reliability-{i}.png" alt="reliability">'
        )
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{v['items']}</td><td>{v['auto_accepted']}</td>"
        f"<td>{v['mean_lead_time_s']:.1f}</td><td>{v['hours_saved']:.2f}</td></tr>"
        for k, v in saved.items()
    )
    text += [
        f"{k}: {v['auto_accepted']} of {v['items']} items auto-accepted, about {v['hours_saved']:.1f} reviewer hours "
        f"saved (at {v['mean_lead_time_s']:.0f} s per review)"
        for k, v in saved.items()
    ]
    standing = ""
    if overview is not None:
        from labelloop.calibration.overview import describe

        marks = [(r, describe(r)) for r in overview["keys"]]
        standing = (
            "<h2>Where each spec and model stands</h2><ul>"
            + "".join(
                f"<li{' class=uncal' if r['uncalibrated'] else ''}>{esc(r['spec'])} [{esc(r['model_key'])}]: "
                f"{esc(d)}</li>"
                for r, d in marks
            )
            + "".join(
                f"<li class=uncal>{esc(spec)}: {n} items auto-accepted or audited on uncalibrated manual "
                "thresholds (no guarantee)</li>"
                for spec, n in overview["decisions_on_manual_thresholds"].items()
            )
            + "</ul>"
        )
        text += ["", *(f"{r['spec']} [{r['model_key']}]: {d}" for r, d in marks)]
    drift = "".join(
        f"<li>{esc(d['spec'])}.{esc(d['field'])}: {d['changed']}/{d['n']} audited "
        f"auto-accepted {esc(d.get('unit', 'value'))}s changed</li>"
        for d in result.drift
    )
    scope = "records" if not any(st.field for st in result.statements) else "values of each field"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>labelloop calibration {run_id}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}img{{max-width:45%}}td,th{{padding:2px 8px}}
.uncal{{color:#a40}}</style>
</head><body><h1>Calibration {run_id}</h1><p>Target error {target:.1%} of auto-accepted {scope}. Thresholds are
certified from reviewed items weighted by how each came to be reviewed (full review, review-routed, audit sample),
with an upper confidence bound that stays valid however often calibration reruns.</p>
{"<h2>Drift</h2><ul>" + drift + "</ul>" if drift else ""}
{"".join(statements) or "<p>No reviewed fields yet.</p>"}
{standing}
<h2>Estimated reviewer time saved</h2><table><tr><th>spec</th><th>items</th><th>auto-accepted</th>
<th>mean review time (s)</th><th>hours saved</th></tr>{rows}</table>
<h2>Per field</h2>{"".join(sections)}
</body></html>"""
    doc = {
        "run": run_id,
        "target": target,
        "statements": [st.as_dict() for st in result.statements],
        "overview": overview,
        "time_saved": saved,
        "drift": result.drift,
    }
    store.put(f"{prefix}/report.json", json.dumps(doc, indent=1, default=str).encode(), content_type="application/json")
    store.put(f"{prefix}/summary.txt", "\n".join(text).encode(), content_type="text/plain; charset=utf-8")
    key = f"{prefix}/index.html"
    store.put(key, page.encode(), content_type="text/html; charset=utf-8")
    store.put(
        "reports/calibration/latest.html",
        f'<!doctype html><meta http-equiv="refresh" content="0; url={run_id}/index.html">'
        f'<a href="{run_id}/index.html">latest calibration report</a>'.encode(),
        content_type="text/html; charset=utf-8",
    )
    return key
