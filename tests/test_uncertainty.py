import numpy as np
import pytest

from lst.uncertainty import Estimate, estimate


def test_interval_contains_the_mean_and_is_seeded():
    rng = np.random.default_rng(0)
    values = rng.normal(0.7, 0.1, size=(50, 5))
    sources = np.arange(50)[:, None]
    e = estimate(values, sources)
    assert e.low < e.mean < e.high
    assert e.mean == pytest.approx(values.mean())
    assert (e.sources, e.pairs) == (50, 250)
    assert estimate(values, sources) == e  # the same resamples every time
    plain = estimate(values, sources, interval=False)  # mean ± std only: nothing resampled
    assert (plain.mean, plain.std, plain.sources, plain.pairs) == (e.mean, e.std, 50, 250)
    assert np.isnan(plain.low) and np.isnan(plain.high)
    assert plain.show(ci=False) == e.show(ci=False)


def test_interval_narrows_as_sources_grow():
    rng = np.random.default_rng(1)
    small, large = estimate(rng.normal(size=20)), estimate(rng.normal(size=2000))
    assert (large.high - large.low) < (small.high - small.low) / 4


def test_resamples_sources_not_pairs():
    """Two sources of 50 pairs each, all 0 and all 1: over sources the mean can be anything from
    0 to 1; pairs taken as independent would give a narrow interval around 0.5."""
    values = np.concatenate([np.zeros(50), np.ones(50)])
    sources = np.repeat([7, 9], 50)
    by_source = estimate(values, sources)
    by_pair = estimate(values)
    assert by_source.mean == by_pair.mean == 0.5
    assert by_source.low == pytest.approx(0.0) and by_source.high == pytest.approx(1.0)
    assert by_pair.high - by_pair.low < 0.25
    assert (by_source.sources, by_pair.sources) == (2, 100)


def test_unequal_pairs_per_source_give_the_pooled_mean():
    values = np.array([1.0, 1.0, 1.0, 0.0])
    e = estimate(values, np.array([0, 0, 0, 1]))
    assert e.mean == 0.75  # the mean over pairs, as Table 1 shows it
    assert e.low == pytest.approx(0.0) and e.high == pytest.approx(1.0)


def test_nan_values_are_left_out_and_small_cases_say_so():
    e = estimate(np.array([0.2, np.nan, 0.4]), np.array([0, 1, 2]))
    assert (e.sources, e.pairs, e.mean) == (2, 2, pytest.approx(0.3))
    one = estimate(np.array([0.5, 0.7]), np.array([3, 3]))
    assert np.isnan(one.low) and one.show(ci=True) == "0.600 [n/a]"
    assert estimate(np.array([np.nan])).show(ci=False) == "n/a"
    assert Estimate(0.9623, 0.01, 0.955, 0.968, 10, 10).show(ci=True) == "0.962 [0.955, 0.968]"
    assert Estimate(0.9623, 0.0114, 0.955, 0.968, 10, 10).show(ci=False) == "0.962 ± 0.011"
