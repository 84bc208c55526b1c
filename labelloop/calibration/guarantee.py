"""Certify an auto-accept threshold from reviewed items that were *not* a random sample.

Why this module exists: review-routed items were chosen because some field was below its threshold,
so pooling them with the audit sample (the old method) estimates the error of the wrong population.
Here every reviewed unit (a record, or one field's value with ``per_field``) carries the probability
``pi`` with which it was reviewed, fixed at routing time before its outcome was known (full review 1,
review-routed 1, audit the audit rate), and ``floor``, the smallest inclusion probability any item of
its routing night could have had (1 in the full-review phase, else the audit rate).

The test. For a candidate threshold tau, ``A(tau)`` is the set of units whose score (the lowest field
confidence of a record, or the value's confidence) is at least tau, and ``R(tau)`` the share of them
that are wrong. For each reviewed unit in ``A(tau)`` the Horvitz-Thompson term
``X = (error - T) / pi`` has, over the stream of all routed items, mean ``P(A) (R(tau) - T)`` whatever
the routing was, so under the null ``R(tau) >= T`` the product of ``1 - b * floor * X / (1 - T)``
(units not reviewed contribute 1) is a non-negative supermartingale for every constant
``b`` in [0, 1): ``floor`` is known before the item arrives, so the bet is predictable, and
``floor <= pi`` keeps every factor positive. The average over a fixed grid of ``b`` is again one,
and by Ville's inequality it reaches ``1/delta`` with probability at most ``delta`` *ever*, over every
nightly look on the growing data. That is what makes the certificate survive repeated recalibration
without alpha spending: looking every night costs nothing, because the bound is a confidence sequence.

Candidates tau form a fixed grid (the same hypotheses every night) tested from the highest down,
stopping at the first that fails (fixed-sequence testing, as in Learn-then-Test); the lowest certified
one is chosen. A candidate whose region is too small for even a clean half-target sample to pass is
not tested (that depends on counts and design only, never on outcomes). Family-wise validity of the
descent assumes the error rate does not rise with confidence (``R`` non-increasing in tau), which is
what makes a threshold meaningful at all.

Clopper-Pearson (exact) replaces the betting bound where a plain binomial bound applies: one look
at units that were all reviewed with probability 1 (the full-review phase). Wilson is kept only as a
named option for comparison: it is anti-conservative at small rates (at a true 2% it passes a 2%
target in ~6% of draws at n=300, not 5%).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import beta as beta_dist

from labelloop.calibration.stats import upper_bound_array

#: candidate thresholds: fixed in advance (the same hypotheses on every look), dense near 1
GRID = np.unique(np.round(np.concatenate([np.linspace(0.0, 1.0, 201), 1 - np.logspace(-4, -1.3, 40)]), 6))[::-1]
#: bet fractions of the mixture e-process
BETS = np.linspace(0.05, 0.95, 19)
#: a candidate is tested once a sample with errors at this share of the target would pass
START_RATE = 0.5


@dataclass
class Units:
    """Reviewed units: one per record (item-level) or per field value (per-field)."""

    score: np.ndarray
    error: np.ndarray
    pi: np.ndarray
    floor: np.ndarray

    @classmethod
    def of(cls, score: Any, error: Any, pi: Any = None, floor: Any = None) -> Units:
        s = np.asarray(score, dtype=float)
        e = np.asarray(error, dtype=bool)
        p = np.ones_like(s) if pi is None else np.asarray(pi, dtype=float)
        f = p.copy() if floor is None else np.asarray(floor, dtype=float)
        if not (s.shape == e.shape == p.shape == f.shape):
            raise ValueError("score, error, inclusion probability and floor differ in length")
        if p.size and (np.any(p <= 0) or np.any(p > 1) or np.any(f > p + 1e-12) or np.any(f < 0)):
            raise ValueError("inclusion probabilities must be in (0, 1] and floors in [0, pi]")
        return cls(s, e, p, f)

    @property
    def plain(self) -> bool:
        """Every unit reviewed with probability 1: a plain random sample, a binomial bound applies."""
        return bool(np.all(self.pi == 1.0))

    def __len__(self) -> int:
        return int(self.score.size)


@dataclass
class Certificate:
    threshold: float | None  # None: full review
    upper_bound: float | None  # bound on the error share at the threshold
    n: int  # reviewed units at or above the threshold
    n_errors: int
    coverage: float  # estimated share of units auto-accepted (inverse-probability weighted)
    method: str
    reason: str
    curve: list[dict[str, float]] = field(default_factory=list)


def _region_index(score_sorted_desc: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Per grid tau, how many units have score >= tau (scores sorted descending)."""
    return np.searchsorted(-score_sorted_desc, -grid, side="right")


def _cum_log_capital(u: Units, target: float, error: np.ndarray | None = None, rate: float | None = None) -> np.ndarray:
    """Cumulative log-capital per bet, units sorted by score descending: shape (n + 1, len(BETS)).

    With ``rate`` the expected log-capital of a sample erring at that rate (design only, no outcomes)."""
    scale = (u.floor / u.pi)[:, None] * BETS[None, :] / (1 - target)
    up = np.log1p(scale * target)  # a correct unit
    down = np.log1p(-scale * (1 - target))  # a wrong one
    terms = rate * down + (1 - rate) * up if rate is not None else np.where(error[:, None], down, up)
    out = np.zeros((terms.shape[0] + 1, terms.shape[1]))
    np.cumsum(terms, axis=0, out=out[1:])
    return out


def _log_mean_exp(x: np.ndarray) -> np.ndarray:
    """log(mean(exp(x))) over the last axis, stable (scipy's logsumexp is slower on tiny rows)."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(x - m).mean(axis=-1)) + m[..., 0]


@dataclass
class Ledger:
    """The betting evidence per candidate threshold, additive over units: log-capital per bet (G, J),
    its design-only expected value at half the target (the start rule), and counts. Nightly runs
    and simulations can add each night's units instead of recomputing the whole history."""

    target: float
    grid: np.ndarray = field(default_factory=lambda: GRID)
    cap: np.ndarray = field(init=False)
    start: np.ndarray = field(init=False)
    n: np.ndarray = field(init=False)
    k: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.cap = np.zeros((self.grid.size, BETS.size))
        self.start = np.zeros((self.grid.size, BETS.size))
        self.n = np.zeros(self.grid.size, dtype=int)
        self.k = np.zeros(self.grid.size, dtype=int)

    def add(self, u: Units) -> Ledger:
        order = np.argsort(-u.score, kind="stable")
        v = Units(u.score[order], u.error[order], u.pi[order], u.floor[order])
        idx = _region_index(v.score, self.grid)
        self.cap += _cum_log_capital(v, self.target, error=v.error)[idx]
        self.start += _cum_log_capital(v, self.target, rate=START_RATE * self.target)[idx]
        self.n += idx
        self.k += np.concatenate([[0], np.cumsum(v.error)])[idx]
        return self

    def choose(self, level: float, min_samples: int) -> tuple[int | None, int | None, np.ndarray, np.ndarray]:
        """Fixed-sequence descent: (index of the lowest certified tau, index of the first failure,
        passed, tested)."""
        need = np.log(1 / (1 - level))
        passed = _log_mean_exp(self.cap) >= need
        tested = (_log_mean_exp(self.start) >= need) & (self.n >= min_samples)
        return (*_descend(passed, tested), passed, tested)


def _descend(passed: np.ndarray, tested: np.ndarray) -> tuple[int | None, int | None]:
    idx = np.nonzero(tested)[0]
    fails = idx[~passed[idx]]
    stop = int(fails[0]) if fails.size else None
    ok = idx[passed[idx]] if stop is None else idx[(idx < stop) & passed[idx]]
    return (int(ok[-1]) if ok.size else None), stop


def betting_upper_bound(u: Units, level: float) -> float:
    """Smallest target the units would be certified against: an anytime-valid upper confidence bound
    on their (weighted) error share. Evaluated on a fine geometric grid of targets at once (rounded up
    to the next grid point, so never below the exact inversion); units are grouped by their bet scale
    ``floor / pi``, of which a design has only a few."""
    if len(u) == 0:
        return 1.0
    need = np.log(1 / (1 - level))
    ratio, inv = np.unique(np.round(u.floor / u.pi, 12), return_inverse=True)
    n_err = np.bincount(inv, weights=u.error.astype(float), minlength=ratio.size)
    n_ok = np.bincount(inv, minlength=ratio.size) - n_err
    targets = np.concatenate([np.geomspace(1e-6, 0.999, 1200), [1.0]])
    t = targets[:, None, None]
    scale = ratio[None, None, :] * BETS[None, :, None] / (1 - np.minimum(t, 0.999999))
    with np.errstate(divide="ignore", invalid="ignore"):
        cap = (n_ok * np.log1p(scale * t) + n_err * np.log1p(-scale * (1 - t))).sum(axis=2)
    ok = _log_mean_exp(np.nan_to_num(cap, nan=-np.inf)) >= need
    return float(targets[np.argmax(ok)]) if ok.any() else 1.0


def coverage_of(u: Units, tau: float | None) -> float:
    """Inverse-probability-weighted share of all routed units at or above ``tau``."""
    if tau is None or len(u) == 0:
        return 0.0
    w = 1 / u.pi
    return float(w[u.score >= tau].sum() / w.sum())


def certify(
    u: Units,
    *,
    target: float,
    level: float = 0.95,
    method: str = "auto",
    min_samples: int = 50,
    repeated: bool = True,
    grid: np.ndarray = GRID,
    detail: bool = True,
) -> Certificate:
    """The lowest grid threshold certified to hold ``target`` at ``level`` (or None: full review).

    ``method``: "auto" (Clopper-Pearson for one look, ``repeated=False``, at a plain sample; the
    weighted betting e-process otherwise), "betting", "clopper_pearson" or "wilson" (the last two only
    for plain samples: they have no meaning for weighted data). ``detail=False`` skips the curve and
    the bound's inversion (simulations need only the threshold)."""
    if method == "auto":
        method = "clopper_pearson" if (u.plain and not repeated) else "betting"
    if method in ("clopper_pearson", "wilson") and not u.plain:
        raise ValueError(
            f"{method} is a plain binomial bound; these units were reviewed with unequal inclusion "
            "probabilities (review-routed and audit): use the weighted betting bound"
        )
    n_all = len(u)
    if n_all < min_samples:
        return Certificate(
            None,
            None,
            n_all,
            int(u.error.sum()),
            0.0,
            method,
            f"only {n_all} reviewed, need {min_samples}: full review",
        )
    order = np.argsort(-u.score, kind="stable")
    err_sorted = u.error[order]
    cum_err = np.concatenate([[0], np.cumsum(err_sorted)])
    if method == "betting":
        ledger = Ledger(target, grid).add(u)
        best, stop, passed, tested = ledger.choose(level, min_samples)
        ns = ledger.n
        ubs = None
    else:
        ns = _region_index(u.score[order], grid)
        ks = cum_err[ns]
        safe_n = np.maximum(ns, 1)
        ubs = np.where(ns > 0, upper_bound_array(ks, safe_n, level, method), 1.0)
        k_start = np.floor(START_RATE * target * ns)
        ub_start = np.where(ns > 0, upper_bound_array(k_start, safe_n, level, method), 1.0)
        passed = ubs <= target
        tested = (ub_start <= target) & (ns >= min_samples)
        best, stop = _descend(passed, tested)
    curve = (
        [
            {
                "threshold": float(grid[g]),
                "n": int(ns[g]),
                "errors": int(cum_err[ns[g]]),
                "tested": bool(tested[g]),
                "pass": bool(passed[g]),
            }
            for g in range(grid.size)
        ]
        if detail
        else []
    )
    if best is None:
        why = (
            f"the first tested threshold {grid[stop]:.4f} ({int(ns[stop])} reviewed) is not certified"
            if stop is not None
            else "no threshold has enough reviewed units above it"
        )
        return Certificate(None, None, n_all, int(u.error.sum()), 0.0, method, f"{why}: full review", curve)
    tau = float(grid[best])
    region = u.score >= tau
    sub = Units(u.score[region], u.error[region], u.pi[region], u.floor[region])
    ub = float(ubs[best]) if ubs is not None else betting_upper_bound(sub, level) if detail else target
    cov = coverage_of(u, tau)
    stop_note = f"; {grid[stop]:.4f} below it was not certified" if stop is not None else ""
    reason = (
        f"lowest threshold certified at {level:.0%} by {method}: error share above it <= {ub:.4f} "
        f"(target {target:.3f}) from {int(region.sum())} reviewed{stop_note}"
    )
    return Certificate(tau, ub, int(region.sum()), int(u.error[region].sum()), cov, method, reason, curve)


# --------------------------------------------------------------------------- live monitoring


def drift_log_e(errors: Any, target: float) -> float:
    """Log e-value against "the audited auto-accepts err at most ``target``" (anytime valid).

    Audited items are a hash sample of what was auto-accepted, so they are unweighted here. The
    mixture of constant bets ``1 + b (e - T) / T`` is a supermartingale while the error share stays
    at or under the target; crossing ``log(1/delta)`` means drift with false-alarm probability at most
    delta over the whole life of the threshold, however often it is checked."""
    e = np.asarray(errors, dtype=float)
    if e.size == 0:
        return 0.0
    terms = np.log1p(BETS[None, :] * ((e[:, None] - target) / target))
    return float(_log_mean_exp(terms.sum(axis=0)[None, :])[0])


def drift_tripped(errors: Any, target: float, level: float) -> bool:
    return drift_log_e(errors, target) >= np.log(1 / (1 - level))


def clopper_pearson_interval(k: int, n: int, level: float) -> tuple[float, float]:
    """Two-sided exact interval, for the report's plain statement of the audit estimate."""
    if n == 0:
        return 0.0, 1.0
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta_dist.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta_dist.ppf(1 - a, k + 1, n - k))
    return lo, hi


# --------------------------------------------------------------------------- what would raise coverage

#: how many times the current reviewed units a what-if may assume (beyond: "not within reach")
MAX_SCALE = 200.0


@dataclass
class Plan:
    """What certifying lower thresholds would take under the routing in force (see :func:`plan`)."""

    reviews_per_routed: float  # share of routed records reviewed under the routing in force
    in_region: np.ndarray  # per grid threshold: reviewed records at or above it per routed record
    cap: np.ndarray = field(repr=False)  # the ledger now and its expected growth per routed record
    gain: np.ndarray = field(repr=False)
    start: np.ndarray = field(repr=False)
    start_gain: np.ndarray = field(repr=False)
    n: np.ndarray = field(repr=False)
    level: float = 0.95
    min_samples: int = 50
    max_routed: float = 0.0

    def _reaches(self, m: float, g: int) -> bool:
        need = np.log(1 / (1 - self.level))
        passed = _log_mean_exp(self.cap + m * self.gain) >= need
        tested = (_log_mean_exp(self.start + m * self.start_gain) >= need) & (
            self.n + m * self.in_region >= self.min_samples
        )
        best, _ = _descend(passed, tested)
        return best is not None and best >= g

    def routed(self, g: int) -> float:
        """Routed records needed until grid threshold ``g`` or a lower one is certified (inf: not within
        :data:`MAX_SCALE` times the reviews so far). Bisection on a geometric grid: the descent is
        monotone in the amount of data but for rare ties, and the answer is checked where it lands."""
        if self.max_routed <= 0:
            return float("inf")
        if self._reaches(0.0, g):
            return 0.0
        ms = np.geomspace(self.max_routed / MAX_SCALE / 100, self.max_routed, 256)
        if not self._reaches(float(ms[-1]), g):
            return float("inf")
        lo, hi = 0, ms.size - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._reaches(float(ms[mid]), g):
                hi = mid
            else:
                lo = mid + 1
        return float(ms[lo])


def plan(
    u: Units,
    *,
    current: float | None,
    audit_rate: float | None,
    target: float,
    level: float,
    min_samples: int,
    grid: np.ndarray = GRID,
) -> Plan:
    """How many more records must be routed (and so how many reviewed) before the descent certifies each
    grid threshold or a lower one, if routing goes on as now: full review while ``current`` is None;
    else records below ``current`` reviewed (probability 1, bet scaled by the audit rate) and those
    above it audited at ``audit_rate``. Review-routed records are weak evidence on the auto-accept
    region (their bet is scaled down by the audit rate), which is why the plan follows the routing
    rather than the mix of reviews so far (the full-review phase was stronger evidence per review).

    The model: the score distribution of future records is the weighted one of the reviewed units;
    each region ``A(tau)`` keeps the log-capital it has and new units in it err at ``r(tau)``, its
    weighted error share now, made non-increasing in ``tau`` (the smallest share of any region at or
    below it: the certificate already assumes errors do not rise with confidence), so one chance error
    in a small, very confident region does not block every plan, and a region erring at or above the
    target never passes. A planning figure, not a promise: new reviews err at their own rate."""
    if len(u) == 0 or (current is not None and not audit_rate):
        z = np.zeros((grid.size, BETS.size))
        return Plan(0.0, np.zeros(grid.size), z, z, z, z, np.zeros(grid.size), level, min_samples, 0.0)
    ledger = Ledger(target, grid).add(u)
    order = np.argsort(-u.score, kind="stable")
    v = Units(u.score[order], u.error[order], u.pi[order], u.floor[order])
    idx = _region_index(v.score, grid)
    w = (1 / v.pi) / (1 / v.pi).sum()  # each unit's share of the routed population
    if current is None:
        p_new, scale_new = np.ones(len(v)), np.ones(len(v))
    else:
        below = v.score < current
        p_new = np.where(below, 1.0, audit_rate)
        scale_new = np.where(below, audit_rate, 1.0)  # floor / pi of the review the unit would get
    # per routed record: the log-increment of each unit's review, if right (up) or wrong (down), times
    # the chance it is that unit and gets reviewed; cumulated by score, so per region A(tau)
    bets = scale_new[:, None] * BETS[None, :] / (1 - target)
    up = np.log1p(bets * target) * (w * p_new)[:, None]
    down = np.log1p(-bets * (1 - target)) * (w * p_new)[:, None]

    def cum(x: np.ndarray) -> np.ndarray:
        out = np.zeros((x.shape[0] + 1, *x.shape[1:]))
        np.cumsum(x, axis=0, out=out[1:])
        return out[idx]

    up_c, down_c = cum(up), cum(down)
    iw = 1 / v.pi
    ce, cw = cum(iw * v.error), cum(iw)
    share = np.where(cw > 0, ce / np.maximum(cw, 1e-300), 1.0)
    rate = np.minimum.accumulate(share[::-1])[::-1][:, None]
    gain = rate * down_c + (1 - rate) * up_c  # expected log-capital per routed record, (G, J)
    start_rate = START_RATE * target
    start_gain = start_rate * down_c + (1 - start_rate) * up_c
    q = cum(w * p_new)  # reviewed units at or above tau per routed record
    per = float(w @ p_new)
    return Plan(
        per,
        q,
        ledger.cap,
        gain,
        ledger.start,
        start_gain,
        ledger.n.astype(float),
        level,
        min_samples,
        MAX_SCALE * len(u) / max(per, 1e-12),
    )


def weighted_error_share(u: Units, tau: float) -> float | None:
    """Inverse-probability-weighted share of wrong units at or above ``tau`` (None: no units there)."""
    m = u.score >= tau
    if not m.any():
        return None
    w = 1 / u.pi[m]
    return float((w * u.error[m]).sum() / w.sum())
