"""The method calibration used before issue 12, kept as the baseline the guarantee tests show failing.

It pools every reviewed value unweighted, so it is only valid on a random sample (the full-review
phase), with a plain binomial bound (Wilson by default here, as it was). Calibration itself certifies
in :mod:`labelloop.calibration.guarantee`.

Choose a per-field auto-accept threshold that holds a target error rate.

Fixed-sequence testing (as in Learn-then-Test): candidate thresholds are the observed confidences,
tested from the highest down. At each candidate, the one-sided upper bound of the change rate of
the reviewed values at or above it must be at most the target; the descent stops at the first
candidate that fails, and the lowest candidate that passed is chosen. Testing in a fixed order and
stopping at the first failure is what keeps the guarantee: scanning all thresholds and picking the
lowest lucky one would not. Candidates with fewer values above them than could ever pass (fewer
than ``min_samples``, or too few for even zero changes to meet the target) are not tested: they
neither pass nor stop the descent. No passing candidate -> full review (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from labelloop.calibration.stats import upper_bound, upper_bound_array


@dataclass
class ThresholdChoice:
    threshold: float | None  # None: every value of this field goes to review
    upper_bound: float | None
    n_samples: int  # reviewed values at or above the threshold
    n_changed: int
    reason: str
    curve: list[dict[str, float]] = field(default_factory=list)  # per candidate: tau, n, k, rate, ub


def choose_threshold(
    confidences: Sequence[float],
    changed: Sequence[bool],
    *,
    target: float,
    min_samples: int,
    level: float = 0.95,
    method: str = "wilson",
) -> ThresholdChoice:
    conf = np.asarray(confidences, dtype=float)
    chg = np.asarray(changed, dtype=bool)
    if conf.shape != chg.shape:
        raise ValueError("confidences and changed differ in length")
    n_total = int(conf.size)
    if n_total < min_samples:
        return ThresholdChoice(
            None,
            None,
            n_total,
            int(chg.sum()),
            f"only {n_total} reviewed values, need {min_samples}: full review",
        )
    order = np.argsort(-conf, kind="stable")
    conf_sorted, chg_sorted = conf[order], chg[order]
    cum_changed = np.cumsum(chg_sorted)
    # candidate taus: distinct confidences, highest first; n(tau) = values >= tau
    taus, first_idx = np.unique(-conf_sorted, return_index=True)
    taus = -taus  # descending
    last_idx = np.append(first_idx[1:], conf_sorted.size) - 1  # last position with conf >= tau
    # Too few values for any outcome to pass (even zero changes): such candidates are not tests.
    # The cut-off depends only on n, never on the outcomes, so skipping them keeps the guarantee.
    n_start = max(min_samples, _min_n_to_pass(target, level, method, n_total))
    best: ThresholdChoice | None = None
    curve: list[dict[str, float]] = []
    stopped = False
    ns = last_idx + 1
    ks = cum_changed[last_idx]
    ubs = upper_bound_array(ks, ns, level, method)
    for tau, n, k, ub in zip(taus.tolist(), ns.tolist(), ks.tolist(), ubs.tolist(), strict=True):
        curve.append({"threshold": float(tau), "n": n, "changed": k, "rate": k / n, "upper_bound": ub})
        if stopped or n < n_start:
            continue  # the whole curve is kept for the report; only the tests stop
        if ub > target:
            stopped = True
            continue
        best = ThresholdChoice(float(tau), ub, n, k, "")
    if best is None:
        top = next((c for c in curve if c["n"] >= n_start), None)
        why = (
            (
                f"upper bound {top['upper_bound']:.3f} of the change rate of the {top['n']} most confident "
                f"values exceeds the target {target:.3f}"
            )
            if top
            else "not enough samples at any threshold"
        )
        return ThresholdChoice(None, None, n_total, int(chg.sum()), f"{why}: full review", curve)
    best.reason = (
        f"lowest threshold whose {level:.0%} {method} upper bound ({best.upper_bound:.4f}) on the change "
        f"rate of {best.n_samples} reviewed values above it is <= target {target:.3f}"
    )
    best.curve = curve
    return best


def _min_n_to_pass(target: float, level: float, method: str, n_max: int) -> int:
    """Smallest n at which n reviews with no change would meet the target (bisection)."""
    lo, hi = 1, max(1, n_max)
    if upper_bound(0, hi, level, method) > target:
        return hi + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if upper_bound(0, mid, level, method) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo
