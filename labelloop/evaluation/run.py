"""How good is a backend on what people reviewed, and is a new model version better?

Ground truth is the curated record of an item whose provenance is ``human`` or ``audited`` (a
person looked at every field). A backend is scored from its stored predictions of the same spec
(pre-label first; this module never calls a model), one prediction per item: the newest of the
chosen ``model_version``, or of any version when none is named.

Per field:

* accuracy: the share of reviewed items where the prediction equals the human value under the
  spec's own comparison (:func:`labelloop.specs.compare.compare_field`, the one the correction
  log and calibration use, so the figures mean the same thing everywhere);
* coverage and error at the threshold routing would use for that prediction (calibrated rows
  from the ``thresholds`` table, else settings, else the default): the share auto-accepted, and
  the share of those that were wrong, with a Wilson 95% upper bound;
* for choice fields, a confusion table (human value x predicted value).

:func:`compare_versions` puts two backends or versions side by side on the items both predicted,
with the discordant counts (A right and B wrong, and the reverse) and an exact McNemar test
(``scipy.stats.binomtest`` on the discordant pairs), so a team can tell whether a fine-tuned
Qwen-VL is better before it pre-labels.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from labelloop.calibration.stats import wilson_upper
from labelloop.config import RoutingSettings
from labelloop.db import Database, Prediction, Record
from labelloop.review.routing import ThresholdResolver
from labelloop.specs import TaskSpec
from labelloop.specs.compare import compare_field
from labelloop.storage import ObjectStore

REVIEWED = ("human", "audited")


@dataclass
class FieldScore:
    n: int = 0
    correct: int = 0
    covered: int = 0
    covered_wrong: int = 0
    thresholds: list[float | None] = field(default_factory=list)
    confusion: dict[str, dict[str, int]] | None = None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def coverage(self) -> float | None:
        return self.covered / self.n if self.n else None

    @property
    def error_at_threshold(self) -> float | None:
        return self.covered_wrong / self.covered if self.covered else None

    def as_dict(self) -> dict[str, Any]:
        ths = sorted({t for t in self.thresholds if t is not None})
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "coverage": self.coverage,
            "error_at_threshold": self.error_at_threshold,
            "error_upper_95": wilson_upper(self.covered_wrong, self.covered, 0.95) if self.covered else None,
            "thresholds": ths,
            **({"confusion": self.confusion} if self.confusion is not None else {}),
        }


@dataclass
class BackendScore:
    backend: str
    model_version: str | None
    n_items: int
    fields: dict[str, FieldScore]
    #: item id -> field -> correct?, for paired comparisons
    per_item: dict[int, dict[str, bool]] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return f"{self.backend}@{self.model_version}" if self.model_version else self.backend

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model_version": self.model_version,
            "n_items": self.n_items,
            "fields": {k: v.as_dict() for k, v in self.fields.items()},
        }


@dataclass
class EvalReport:
    spec: str
    scores: list[BackendScore]
    comparison: dict[str, Any] | None = None
    keys: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "backends": [s.as_dict() for s in self.scores],
            "comparison": self.comparison,
            "report": self.keys,
        }


def _reviewed(db: Database, spec: TaskSpec) -> dict[int, dict[str, Any]]:
    with db.session() as s:
        rows = s.scalars(select(Record).where(Record.spec == spec.name, Record.provenance.in_(REVIEWED)))
        return {r.item_id: dict(r.record) for r in rows}


def _predictions(db: Database, spec: TaskSpec, backend: str, model_version: str | None, items: set[int]) -> list[Any]:
    with db.session() as s:
        q = select(Prediction).where(Prediction.spec == spec.name, Prediction.backend == backend)
        if model_version:
            q = q.where(Prediction.model_version == model_version)
        newest: dict[int, Prediction] = {}
        for p in s.scalars(q.order_by(Prediction.id)):
            if p.item_id in items:
                newest[p.item_id] = p  # later ids win: the newest prediction per item
        s.expunge_all()
        return list(newest.values())


def evaluate(
    db: Database,
    spec: TaskSpec,
    backend: str,
    model_version: str | None = None,
    routing: RoutingSettings | None = None,
) -> BackendScore:
    """Score one backend (or version) against the reviewed records of ``spec``."""
    routing = routing or RoutingSettings()
    truth = _reviewed(db, spec)
    preds = _predictions(db, spec, backend, model_version, set(truth))
    fields = {n: FieldScore(confusion={} if f.kind == "choice" else None) for n, f in spec.fields.items()}
    per_item: dict[int, dict[str, bool]] = {}
    with db.session() as s:
        resolver = ThresholdResolver(s, routing, spec)
        for p in preds:
            human = truth[p.item_id]
            ths = resolver.for_identity(p.model, p.model_version, p.prompt_hash)
            per_item[p.item_id] = {}
            for name, fspec in spec.fields.items():
                fs = fields[name]
                value = (p.record or {}).get(name) if p.status == "ok" else None
                changed, _ = compare_field(fspec, value, human.get(name))
                ok = p.status == "ok" and not changed
                conf = (p.field_confidence or {}).get(name) if p.status == "ok" else None
                t = ths[name].threshold
                fs.n += 1
                fs.correct += ok
                fs.thresholds.append(t)
                if conf is not None and t is not None and conf >= t:
                    fs.covered += 1
                    fs.covered_wrong += not ok
                if fs.confusion is not None:
                    row = fs.confusion.setdefault(str(human.get(name)), {})
                    row[str(value)] = row.get(str(value), 0) + 1
                per_item[p.item_id][name] = ok
    return BackendScore(backend, model_version, len(preds), fields, per_item)


def compare_versions(a: BackendScore, b: BackendScore) -> dict[str, Any]:
    """Paired comparison on the items both scored: per field accuracy of each and McNemar's exact test."""
    from scipy.stats import binomtest

    common = sorted(set(a.per_item) & set(b.per_item))
    out: dict[str, Any] = {"a": a.label, "b": b.label, "n_common": len(common), "fields": {}}
    for name in a.fields:
        a_ok = [a.per_item[i][name] for i in common]
        b_ok = [b.per_item[i][name] for i in common]
        a_only = sum(x and not y for x, y in zip(a_ok, b_ok, strict=True))
        b_only = sum(y and not x for x, y in zip(a_ok, b_ok, strict=True))
        p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
        out["fields"][name] = {
            "accuracy_a": sum(a_ok) / len(common) if common else None,
            "accuracy_b": sum(b_ok) / len(common) if common else None,
            "a_right_b_wrong": a_only,
            "b_right_a_wrong": b_only,
            "p_value": float(p),
            "better": (a.label if a_only > b_only else b.label) if p < 0.05 else None,
        }
    return out


def _accuracy_png(scores: list[BackendScore]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(scores[0].fields)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 3.5))
    width = 0.8 / len(scores)
    for k, sc in enumerate(scores):
        vals = [sc.fields[n].accuracy or 0.0 for n in names]
        ax.bar(np.arange(len(names)) + k * width, vals, width, label=sc.label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy vs reviewed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _confusion_png(sc: BackendScore, name: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    conf = sc.fields[name].confusion or {}
    labels = sorted(set(conf) | {p for row in conf.values() for p in row})
    m = np.array([[conf.get(h, {}).get(p, 0) for p in labels] for h in labels])
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(labels), 1 + 0.5 * len(labels)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reviewed")
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_title(f"{sc.label}: {name}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_eval_report(store: ObjectStore, report: EvalReport, run_id: str | None = None) -> dict[str, str]:
    """``reports/eval/<spec>/<run>/``: report.json, accuracy.png, one confusion PNG per choice field."""
    run_id = run_id or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    prefix = f"reports/eval/{report.spec}/{run_id}"
    keys: dict[str, str] = {}
    if report.scores and report.scores[0].fields:
        keys["accuracy"] = f"{prefix}/accuracy.png"
        store.put(keys["accuracy"], _accuracy_png(report.scores), content_type="image/png")
        for k, sc in enumerate(report.scores):
            for name, fs in sc.fields.items():
                if fs.confusion is not None and fs.n:
                    key = f"{prefix}/confusion-{k}-{name}.png"
                    store.put(key, _confusion_png(sc, name), content_type="image/png")
                    keys[f"confusion:{sc.label}:{name}"] = key
    keys["json"] = f"{prefix}/report.json"
    report.keys = keys
    store.put_text(
        keys["json"], json.dumps(report.as_dict(), indent=2, ensure_ascii=False), content_type="application/json"
    )
    return keys


def run_eval(
    db: Database,
    store: ObjectStore | None,
    spec: TaskSpec,
    targets: list[tuple[str, str | None]],
    routing: RoutingSettings | None = None,
) -> EvalReport:
    """Score every (backend, model_version) target; compare the first two; write the report if a store is given."""
    if not targets:
        raise ValueError("name at least one backend to evaluate")
    scores = [evaluate(db, spec, b, v, routing) for b, v in targets]
    empty = [s.label for s in scores if s.n_items == 0]
    if empty:
        n_rev = len(_reviewed(db, spec))
        raise ValueError(
            f"no predictions of {', '.join(empty)} on the {n_rev} reviewed {spec.name} items; pre-label them first"
        )
    report = EvalReport(spec.name, scores, compare_versions(scores[0], scores[1]) if len(scores) > 1 else None)
    if store is not None:
        write_eval_report(store, report)
    return report
