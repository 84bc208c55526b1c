"""One-sided binomial confidence bounds for a change (error) rate.

Both methods answer "how high could the true change rate be, given k changes in n reviews?" at the
configured level. Clopper-Pearson is exact (its coverage is at least the level for every true rate)
and is what calibration uses wherever a plain binomial bound applies. Wilson is kept only as a named
option for comparison: it is anti-conservative at small rates (at a true 2% it passes a 2% target in
~6% of draws at n=300, not 5%). scipy supplies the normal and beta quantiles.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.stats import beta, norm


@lru_cache(maxsize=16)
def _z(level: float) -> float:
    return float(norm.ppf(level))


def wilson_upper(k: int, n: int, level: float = 0.95) -> float:
    if n <= 0:
        return 1.0
    z = _z(level)
    p = k / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + margin) / denom)


def wilson_lower(k: int, n: int, level: float = 0.95) -> float:
    if n <= 0:
        return 0.0
    z = _z(level)
    p = k / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


def clopper_pearson_upper(k: int, n: int, level: float = 0.95) -> float:
    if n <= 0 or k >= n:
        return 1.0
    return float(beta.ppf(level, k + 1, n - k))


def clopper_pearson_lower(k: int, n: int, level: float = 0.95) -> float:
    if n <= 0 or k <= 0:
        return 0.0
    return float(beta.ppf(1 - level, k, n - k + 1))


def upper_bound(k: int, n: int, level: float, method: str) -> float:
    if method == "wilson":
        return wilson_upper(k, n, level)
    if method == "clopper_pearson":
        return clopper_pearson_upper(k, n, level)
    raise ValueError(f"unknown bound method {method!r}")


def lower_bound(k: int, n: int, level: float, method: str) -> float:
    if method == "wilson":
        return wilson_lower(k, n, level)
    if method == "clopper_pearson":
        return clopper_pearson_lower(k, n, level)
    raise ValueError(f"unknown bound method {method!r}")


def upper_bound_array(k: np.ndarray, n: np.ndarray, level: float, method: str) -> np.ndarray:
    """Vectorised :func:`upper_bound` over many (k, n) pairs (one per candidate threshold)."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    if method == "wilson":
        z = _z(level)
        p = k / n
        denom = 1 + z * z / n
        centre = p + z * z / (2 * n)
        margin = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return np.minimum(1.0, (centre + margin) / denom)
    if method == "clopper_pearson":
        out = np.ones_like(k)
        ok = k < n
        out[ok] = beta.ppf(level, k[ok] + 1, n[ok] - k[ok])
        return out
    raise ValueError(f"unknown bound method {method!r}")
