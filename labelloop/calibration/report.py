"""Calibration report: per field a reliability diagram and a coverage-versus-error curve (PNG), the
estimated annotator time saved, and one self-contained HTML page, stored under
``reports/calibration/<run>/`` (``reports/calibration/latest.html`` points at the newest)."""

from __future__ import annotations

import datetime as dt
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sqlalchemy import func, select

from labelloop.calibration.run import CalibrationResult, FieldOutcome, current_thresholds
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


def _field_confidences(db: Database, o: FieldOutcome) -> np.ndarray:
    spec, fld, model, mv, ph = o.key
    with db.session() as s:
        rows = s.scalars(
            select(Prediction.field_confidence).where(
                Prediction.spec == spec,
                Prediction.model == model,
                Prediction.model_version == mv,
                Prediction.prompt_hash == ph,
                Prediction.status == "ok",
            )
        )
        return np.array([float(fc.get(fld, 0.0)) for fc in rows], dtype=float)


def coverage_png(o: FieldOutcome, conf: np.ndarray, target: float) -> bytes:
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    curve = o.choice.curve
    if curve and conf.size:
        cov = [float((conf >= c["threshold"]).mean()) for c in curve]
        ax.plot(cov, [c["rate"] for c in curve], label="measured change rate above threshold")
        ax.plot(cov, [c["upper_bound"] for c in curve], ls="--", label="upper bound")
    ax.axhline(target, c="red", lw=1, label=f"target {target:.1%}")
    if o.choice.threshold is not None and conf.size:
        ax.axvline(
            float((conf >= o.choice.threshold).mean()),
            c="green",
            lw=1,
            label=f"chosen threshold {o.choice.threshold:.3f}",
        )
    ax.set_xlabel("coverage (share auto-accepted)")
    ax.set_ylabel("error (share changed)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.1, min(1.0, 3 * target)))
    ax.set_title(f"{o.key[0]}.{o.key[1]}", fontsize=10)
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
    db: Database, store: ObjectStore, result: CalibrationResult, target: float, run_id: str | None = None
) -> str:
    """Store the PNGs and the HTML page; returns the page's key."""
    run_id = run_id or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    prefix = f"reports/calibration/{run_id}"
    sections = []
    for i, o in enumerate(result.outcomes):
        conf = _field_confidences(db, o)
        store.put(f"{prefix}/reliability-{i}.png", reliability_png(o), content_type="image/png")
        store.put(f"{prefix}/coverage-{i}.png", coverage_png(o, conf, target), content_type="image/png")
        thr = "full review" if o.choice.threshold is None else f"{o.choice.threshold:.4f}"
        ub = "-" if o.choice.upper_bound is None else f"{o.choice.upper_bound:.4f}"
        sections.append(
            f"<h2>{html.escape(o.key[0])}.{html.escape(o.key[1])}</h2>"
            f"<p>model {html.escape(o.key[2])} {html.escape(o.key[3])} (prompt {html.escape(o.key[4])}): "
            f"threshold <b>{thr}</b>, upper bound {ub}, {o.choice.n_samples} reviewed values, version {o.version}"
            f"<br><small>{html.escape(o.choice.reason)}</small></p>"
            f'<img src="reliability-{i}.png" alt="reliability"> <img src="coverage-{i}.png" alt="coverage">'
        )
    saved = time_saved(db)
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['items']}</td><td>{v['auto_accepted']}</td>"
        f"<td>{v['mean_lead_time_s']:.1f}</td><td>{v['hours_saved']:.2f}</td></tr>"
        for k, v in saved.items()
    )
    drift = "".join(
        f"<li>{html.escape(d['spec'])}.{html.escape(d['field'])}: {d['changed']}/{d['n']} audited "
        f"auto-accepts changed</li>"
        for d in result.drift
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>labelloop calibration {run_id}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}img{{max-width:45%}}td,th{{padding:2px 8px}}</style>
</head><body><h1>Calibration {run_id}</h1><p>Target error {target:.1%}. Thresholds are chosen per field so that the
upper confidence bound of the share of values reviewers changed, among values at or above the threshold, stays under
the target.</p>
{"<h2>Drift</h2><ul>" + drift + "</ul>" if drift else ""}
<h2>Estimated annotator time saved</h2><table><tr><th>spec</th><th>items</th><th>auto-accepted</th>
<th>mean review time (s)</th><th>hours saved</th></tr>{rows}</table>
{"".join(sections) or "<p>No reviewed fields yet.</p>"}
</body></html>"""
    key = f"{prefix}/index.html"
    store.put(key, page.encode(), content_type="text/html; charset=utf-8")
    store.put(
        "reports/calibration/latest.html",
        f'<!doctype html><meta http-equiv="refresh" content="0; url={run_id}/index.html">'
        f'<a href="{run_id}/index.html">latest calibration report</a>'.encode(),
        content_type="text/html; charset=utf-8",
    )
    return key
