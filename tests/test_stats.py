"""frkd.stats: Student-t quantiles against published table values, paired intervals against a
direct computation, and the report's per-class spread."""
import math
import statistics

import pytest

from frkd.stats import blocked_paired_difference, paired_difference, student_t_cdf, student_t_quantile

# t_{p, df} from standard tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
T_TABLE = [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776), (0.975, 10, 2.228), (0.95, 5, 2.015),
           (0.995, 30, 2.750), (0.9, 3, 1.638), (0.975, 100, 1.984)]


@pytest.mark.parametrize("p,df,expected", T_TABLE)
def test_quantiles_match_the_t_table(p, df, expected):
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=1e-3)
    assert student_t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-3)


def test_cdf_closed_forms():
    # df = 1 is the Cauchy distribution, df = 2 has F(x) = 1/2 + x / (2 sqrt(2 + x²))
    for x in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert student_t_cdf(x, 1) == pytest.approx(0.5 + math.atan(x) / math.pi, abs=1e-12)
        assert student_t_cdf(x, 2) == pytest.approx(0.5 + x / (2 * math.sqrt(2 + x * x)), abs=1e-12)


def test_paired_difference_is_the_t_interval_of_the_per_seed_differences():
    a = {0: 50.0, 1: 52.5, 2: 49.0, 3: 51.0, 4: 55.0, 9: 99.0}  # seed 9 is not shared: left out
    b = {0: 48.0, 1: 50.0, 2: 49.5, 3: 47.0, 4: 51.5}
    diffs = [a[s] - b[s] for s in range(5)]
    half = 2.776445 * statistics.stdev(diffs) / math.sqrt(5)
    d = paired_difference(a, b)
    assert d.n == 5 and d.mean == pytest.approx(statistics.fmean(diffs))
    assert (d.low, d.high) == (pytest.approx(d.mean - half, abs=1e-5), pytest.approx(d.mean + half, abs=1e-5))
    assert d.excludes_zero() == (d.low > 0)
    # pairing matters: the same values unpaired (shuffled) give another interval
    shuffled = dict(zip(range(5), [b[4], b[0], b[1], b[2], b[3]]))
    assert paired_difference(a, shuffled).high - paired_difference(a, shuffled).low != pytest.approx(d.high - d.low)


def test_paired_difference_edge_cases():
    one = paired_difference({3: 2.0}, {3: 1.0})
    assert one.low is None and one.format() == "+1.00"
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_blocked_paired_difference_weighs_blocks_equally_and_uses_the_within_block_spread():
    # block 0: differences 1, 3 (mean 2); block 1: 5, 7, 9 (mean 7): mean of block means 4.5
    a = {(0, 0): 11.0, (0, 1): 13.0, (1, 0): 15.0, (1, 1): 17.0, (1, 2): 19.0, (2, 9): 1.0}
    b = {(0, 0): 10.0, (0, 1): 10.0, (1, 0): 10.0, (1, 1): 10.0, (1, 2): 10.0}
    d = blocked_paired_difference(a, b)
    within = ((1 - 2) ** 2 + (3 - 2) ** 2 + (5 - 7) ** 2 + 0 + (9 - 7) ** 2) / (5 - 2)  # 10/3 on 3 df
    half = student_t_quantile(0.975, 3) * math.sqrt(within / 2 + within / 3) / 2
    assert d.n == 5 and d.mean == pytest.approx(4.5)
    assert (d.low, d.high) == (pytest.approx(4.5 - half), pytest.approx(4.5 + half))
    # a block shift common to a and b changes nothing: the pairing removes it
    shifted = blocked_paired_difference({k: v + 100 * k[0] for k, v in a.items()},
                                        {k: v + 100 * k[0] for k, v in b.items()})
    assert shifted.mean == pytest.approx(d.mean) and shifted.low == pytest.approx(d.low)
    with pytest.raises(ValueError, match="share no"):
        blocked_paired_difference({(0, 0): 1.0}, {(1, 0): 1.0})


def test_mean_interval_is_the_one_sample_t_interval():
    from frkd.stats import mean_interval

    values = [1.0, 2.5, 2.0, 4.0]
    half = student_t_quantile(0.975, 3) * statistics.stdev(values) / math.sqrt(4)
    d = mean_interval(values)
    assert (d.mean, d.low, d.high, d.n) == pytest.approx((2.375, 2.375 - half, 2.375 + half, 4))
    assert mean_interval([3.0]) == (3.0, None, None, 1)
