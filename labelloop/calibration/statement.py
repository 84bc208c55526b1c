"""What calibration guarantees, said in plain words, per spec and model: the statement and its
assumptions, the coverage it buys, what the audit sample says about what is being auto-accepted now,
and what would raise coverage (how many more reviews, of records in which confidence band, held back
by which fields).

The same statements serve ``labelloop calibrate`` (printed), the HTML report and ``report.json`` under
``reports/calibration/<run>/``, and ``labelloop calibrate --from-log`` (without the live part, which
needs the database). The numbers come from the certificate (:mod:`labelloop.calibration.guarantee`);
this module only measures and phrases them, it never certifies anything.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelloop.calibration.guarantee import (
    GRID,
    Certificate,
    Units,
    coverage_of,
    plan,
    weighted_error_share,
)
from labelloop.calibration.live import LiveAudit
from labelloop.calibration.offline import group_units

#: coverage gains (absolute) the advice looks for below the current threshold
COVERAGE_STEPS = (0.05, 0.10, 0.20)

ASSUMPTIONS = (
    "the records to come are exchangeable with the reviewed ones: same model, prompt and kind of input "
    "(a new model version or prompt starts over at full review, and the audit sample watches for drift)",
    "reviewers judge each field on its own, independently of the pre-label they are shown (a reviewer who "
    "accepts pre-labels unread hides errors; audits are blind to the route, not to the pre-label)",
    "the recorded inclusion probabilities are the ones routing used (full review and review-routed 1, "
    "audit the audit rate), and the error share does not rise with confidence above the threshold",
)


@dataclass
class Advice:
    """One lower threshold and what certifying it would take, extrapolating "more of the same"."""

    threshold: float
    coverage: float
    reviewed: int  # reviewed units at or above it now
    more_in_region: int | None  # of the reviews below, at or above the threshold; None: out of reach
    more_reviews: int | None  # more reviews under the routing in force until it (or lower) is certified
    error_share: float | None  # weighted share changed at or above it, now
    band: tuple[float, float | None]  # [threshold, current threshold)
    limiting: list[tuple[str, float]]  # fields that are the least confident one in the band, by share

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "coverage": self.coverage,
            "reviewed": self.reviewed,
            "more_in_region": self.more_in_region,
            "more_reviews": self.more_reviews,
            "error_share": self.error_share,
            "band": list(self.band),
            "limiting_fields": [{"field": f, "share": s} for f, s in self.limiting],
        }


@dataclass
class Statement:
    spec: str
    model_key: str
    field: str | None  # None: item-level (every field of the record)
    fields: list[str]
    target: float
    level: float
    cert: Certificate
    n_units: int
    live: LiveAudit | None = None
    advice: list[Advice] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)  # threshold, coverage, error_share

    @property
    def unit(self) -> str:
        return "records" if self.field is None else f"{self.field} values"

    @property
    def title(self) -> str:
        scope = "records" if self.field is None else self.field
        return f"{self.spec} [{self.model_key}] {scope}"

    def guarantee(self) -> str:
        c = self.cert
        if c.threshold is None:
            return (
                f"No guarantee yet: every {self.unit[:-1]} of {self.spec} from {self.model_key} goes to review "
                f"(full review). {c.reason}."
            )
        where = "those whose every field is at or above" if self.field is None else "those at or above the confidence"
        what = "have any field a reviewer would change" if self.field is None else "are values a reviewer would change"
        return (
            f"At most {self.target:.1%} of the {self.unit} auto-accepted for {self.spec} from {self.model_key} "
            f"({where} {c.threshold:.4f}) {what}, with {self.level:.0%} confidence. Evidence: {self.n_units} "
            f"reviewed {self.unit}, {c.n} at or above the threshold with {c.n_errors} changed, weighted by how "
            f"each came to be reviewed; the upper bound on the error share there is "
            f"{c.upper_bound:.2%} ({_method(c.method)})."
        )

    def coverage_sentence(self) -> str:
        if self.cert.threshold is None:
            return "Coverage: 0% (nothing is auto-accepted)."
        return (
            f"Coverage: an estimated {self.cert.coverage:.1%} of {self.unit} are auto-accepted at this threshold "
            "(inverse-probability weighted over the reviewed ones)."
        )

    def advice_lines(self, review_s: float | None = None) -> list[str]:
        if not self.advice:
            if self.n_units == 0:
                return ["Review some records: there is no evidence yet."]
            return ["Nothing below the current threshold would add coverage worth the reviews."]
        lines = []
        for a in self.advice:
            held = ", ".join(f"{f} {s:.0%}" for f, s in a.limiting)
            band = (
                f"at or above {a.band[0]:.4f}"
                if a.band[1] is None
                else f"from {a.band[0]:.4f} up to {a.band[1]:.4f} (held back now)"
            )
            by = f"; for {self.unit} {band}, the least confident field is {held}" if held else ""
            if a.more_in_region is None:
                share = (
                    ""
                    if a.error_share is None
                    else f": an estimated {a.error_share:.1%} of {self.unit} at or above it are changed"
                )
                lines.append(
                    f"Threshold {a.threshold:.4f} (coverage ~{a.coverage:.0%}) is out of reach at target "
                    f"{self.target:.1%}{share}, so more reviews would not certify it{by}."
                )
                continue
            hours = (
                f", ~{a.more_reviews * review_s / 3600:.1f} reviewer hours"
                if review_s and a.more_reviews is not None
                else ""
            )
            rate = "" if a.error_share is None else f", if their error share stays at {a.error_share:.1%}"
            lines.append(
                f"Threshold {a.threshold:.4f} (coverage ~{a.coverage:.0%}): about {a.more_reviews} more reviews "
                f"under the routing in force{hours}, {a.more_in_region} of them of {self.unit} at or above it (now "
                f"{a.reviewed}){rate}{by}."
            )
        return lines

    def lines(self, review_s: float | None = None, *, live_known: bool = True) -> list[str]:
        """``live_known=False``: from an exported log, where what is auto-accepting now is unknown."""
        out = [self.guarantee(), "Assumptions: " + "; ".join(ASSUMPTIONS) + ".", self.coverage_sentence()]
        if not live_known:
            out.append("Live audit: not in an exported log (see labelloop calibrate or labelloop status).")
        elif self.live is not None:
            out.append("Live audit: " + self.live.sentence())
        elif self.cert.threshold is not None:
            out.append("Live audit: nothing was auto-accepting before this run; audits start with the next routing.")
        out += ["What would raise coverage: " + x for x in self.advice_lines(review_s)]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "model_key": self.model_key,
            "field": self.field,
            "fields": self.fields,
            "statement": "item_level" if self.field is None else "per_field",
            "target": self.target,
            "level": self.level,
            "threshold": self.cert.threshold,
            "upper_bound": self.cert.upper_bound,
            "n_reviewed": self.n_units,
            "n_above": self.cert.n,
            "changed_above": self.cert.n_errors,
            "coverage": self.cert.coverage,
            "method": self.cert.method,
            "reason": self.cert.reason,
            "assumptions": list(ASSUMPTIONS),
            "live_audit": self.live.as_dict() if self.live else None,
            "advice": [a.as_dict() for a in self.advice],
            "text": self.lines(),
        }


def _method(m: str) -> str:
    return {
        "betting": "weighted betting bound, valid across nightly reruns",
        "clopper_pearson": "Clopper-Pearson, exact, for one look at a plain sample",
        "wilson": "Wilson, anti-conservative at small rates",
    }.get(m, m)


def _limiting(u: Units, weakest: list[str], lo: float, hi: float | None) -> list[tuple[str, float]]:
    """Weighted shares of the fields that are a record's least confident one in [lo, hi)."""
    band = (u.score >= lo) & (u.score < hi if hi is not None else True)
    w = 1 / u.pi
    acc: dict[str, float] = defaultdict(float)
    for i in np.nonzero(band)[0]:
        acc[weakest[i]] += w[i]
    total = sum(acc.values())
    return sorted(((f, v / total) for f, v in acc.items()), key=lambda x: -x[1])[:3] if total else []


def advise(
    u: Units,
    cert: Certificate,
    *,
    target: float,
    level: float,
    min_samples: int,
    weakest: list[str],
    audit_rate: float | None,
) -> list[Advice]:
    """The highest grid threshold below the current one for each coverage step, and what certifying it
    would take (see :func:`labelloop.calibration.guarantee.scale_to_certify`)."""
    if len(u) == 0:
        return []
    p = plan(u, current=cert.threshold, audit_rate=audit_rate, target=target, level=level, min_samples=min_samples)
    cur_cov = cert.coverage
    below = [g for g in range(GRID.size) if cert.threshold is None or GRID[g] < cert.threshold - 1e-12]
    w = 1 / u.pi
    order = np.argsort(-u.score, kind="stable")
    cum_w = np.concatenate([[0.0], np.cumsum(w[order])])
    cover = cum_w[np.searchsorted(-u.score[order], -GRID, side="right")] / cum_w[-1]  # coverage_of per grid
    covs = {g: float(cover[g]) for g in below}
    out: list[Advice] = []
    seen: set[int] = set()
    for step in COVERAGE_STEPS:
        g = next((g for g in below if covs[g] >= cur_cov + step), None)
        if g is None or g in seen:
            continue
        seen.add(g)
        tau = float(GRID[g])
        n_reg = int((u.score >= tau).sum())
        routed = p.routed(g)
        more = None if not np.isfinite(routed) else int(np.ceil(routed * p.in_region[g]))
        reviews = None if not np.isfinite(routed) else int(np.ceil(routed * p.reviews_per_routed))
        out.append(
            Advice(
                tau,
                covs[g],
                n_reg,
                more,
                reviews,
                weighted_error_share(u, tau),
                (tau, cert.threshold),
                _limiting(u, weakest, tau, cert.threshold),
            )
        )
    return out


def _curve(u: Units, max_points: int = 80) -> list[dict[str, float]]:
    taus = GRID[:: max(1, GRID.size // max_points)]
    out = []
    for t in taus:
        share = weighted_error_share(u, float(t))
        if share is not None:
            out.append({"threshold": float(t), "coverage": coverage_of(u, float(t)), "error_share": share})
    return out


def build_statements(
    rows: list[dict[str, Any]],
    certs: dict[tuple[str, ...], Certificate],
    *,
    target: float,
    level: float,
    per_field: bool,
    min_samples: int,
    live: dict[tuple[str, ...], LiveAudit] | None = None,
) -> list[Statement]:
    """One statement per certified key, from the same rows and certificates calibration used."""
    groups = group_units(rows, per_field)
    fields: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        fields[(r["spec"], r["model_key"])].add(r["field"])
    out = []
    for key, cert in sorted(certs.items()):
        u = groups[key].units
        st = Statement(
            spec=key[0],
            model_key=key[1],
            field=key[2] if per_field else None,
            fields=[key[2]] if per_field else sorted(fields[(key[0], key[1])]),
            target=target,
            level=level,
            cert=cert,
            n_units=len(u),
            live=(live or {}).get(key),
        )
        rates = [r.get("audit_rate") for r in rows if (r["spec"], r["model_key"]) == key[:2]]
        st.advice = advise(
            u,
            cert,
            target=target,
            level=level,
            min_samples=min_samples,
            weakest=groups[key].weakest,
            audit_rate=next((x for x in reversed(rates) if x is not None), None),
        )
        st.curve = _curve(u)
        out.append(st)
    return out
