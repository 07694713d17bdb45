"""Paired comparisons over shared seeds: mean difference with a Student-t confidence interval.

The method table trains every row on the same seeds, so row A and row B are compared through the
per-seed differences d_s = A_s − B_s: mean(d) ± t_{1−α/2, n−1} · sd(d) / √n.
"""
from __future__ import annotations

import math
import statistics
from typing import NamedTuple


def student_t_cdf(x: float, df: int) -> float:
    """P(T ≤ x) for Student's t with ``df`` ≥ 1 degrees of freedom (regularised incomplete beta)."""
    if df < 1:
        raise ValueError(f"student_t_cdf: df must be >= 1, got {df}")
    if x == 0:
        return 0.5
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + x * x))
    return 1.0 - tail if x > 0 else tail


def student_t_quantile(p: float, df: int) -> float:
    """The x with P(T ≤ x) = p (0 < p < 1), by bisection on ``student_t_cdf`` to 1e-12."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"student_t_quantile: p must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if student_t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast below this point
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * f / a


class PairedDifference(NamedTuple):
    """mean of the per-seed differences, its interval [low, high] (None with one seed), n seeds."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    def format(self, spec: str = "+.2f") -> str:
        if self.low is None:
            return format(self.mean, spec)
        return f"{format(self.mean, spec)} [{format(self.low, spec)}, {format(self.high, spec)}]"


def paired_difference(a: dict[int, float], b: dict[int, float], confidence: float = 0.95) -> PairedDifference:
    """Mean of a[s] − b[s] over the seeds s both hold, with its ``confidence`` t-interval.

    Raises ValueError when they share no seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("paired_difference: the two rows share no seed")
    return mean_interval([a[s] - b[s] for s in seeds], confidence)


def mean_interval(values: list[float], confidence: float = 0.95) -> PairedDifference:
    """Mean of ``values`` with its ``confidence`` t-interval (None bounds with one value)."""
    if not values:
        raise ValueError("mean_interval: no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return PairedDifference(mean, None, None, 1)
    half = student_t_quantile(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return PairedDifference(mean, mean - half, mean + half, len(values))


def blocked_paired_difference(a: dict[tuple, float], b: dict[tuple, float],
                              confidence: float = 0.95) -> PairedDifference:
    """Mean of a[(block, seed)] − b[(block, seed)] over the pairs both hold, the blocks (e.g. backbone draws)
    weighted equally, with its ``confidence`` t-interval from the within-block spread of the differences
    (a fixed block effect: d = μ + β_block + ε, the interval for μ, the mean over these blocks, on
    n − blocks degrees of freedom). Raises ValueError when they share no pair."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ValueError("blocked_paired_difference: the two rows share no (block, seed) pair")
    by_block: dict = {}
    for block, seed in keys:
        by_block.setdefault(block, []).append(a[(block, seed)] - b[(block, seed)])
    block_means = {block: statistics.fmean(diffs) for block, diffs in by_block.items()}
    mean = statistics.fmean(block_means.values())
    n, blocks = len(keys), len(by_block)
    df = n - blocks
    if df < 1:
        return PairedDifference(mean, None, None, n)
    within = sum((d - block_means[block]) ** 2 for block, diffs in by_block.items() for d in diffs) / df
    # the variance of the mean of block means: sum over blocks of within / n_block, divided by blocks²
    se = math.sqrt(sum(within / len(diffs) for diffs in by_block.values())) / blocks
    half = student_t_quantile(0.5 + confidence / 2, df) * se
    return PairedDifference(mean, mean - half, mean + half, n)
