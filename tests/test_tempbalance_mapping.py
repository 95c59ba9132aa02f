"""TempBalance's metric -> learning-rate-multiplier maps (pure functions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from htsr.errors import ConfigError
from htsr.tempbalance.mapping import (
    MAPPINGS,
    get_mapping,
    linear_map,
    log2_map,
    rank_map,
    sigmoid_map,
    sqrt_map,
)


def test_linear_map_endpoints_and_interpolation():
    x = np.array([2.0, 3.0, 4.0, 6.0])
    m = linear_map(x, 0.5, 1.5)
    np.testing.assert_allclose(m, [0.5, 0.75, 1.0, 1.5])
    np.testing.assert_allclose(linear_map(x, 0.6, 1.4), [0.6, 0.8, 1.0, 1.4])


def test_linear_map_all_equal_gives_midpoint_not_s2():
    # the reference's np.interp on a degenerate range returned s2 = 1.5 for every layer
    np.testing.assert_allclose(linear_map([3.0, 3.0, 3.0], 0.5, 1.5), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(linear_map([5.0], 0.6, 1.4), [1.0])


def test_rank_map_reference_formula_and_ties():
    m = rank_map([4.0, 2.0, 3.0, 5.0], 0.5, 1.5)
    np.testing.assert_allclose(m, [0.5 + 2 / 4, 0.5, 0.5 + 1 / 4, 0.5 + 3 / 4])  # max is s1 + (n-1)/n
    ties = rank_map([2.0, 3.0, 3.0], 0.5, 1.5)
    assert ties[1] == ties[2] == pytest.approx(0.5 + 1.5 / 3)
    # order independence: permuting the layers permutes the multipliers
    x = np.array([2.5, 2.5, 1.0, 7.0])
    p = np.array([3, 0, 2, 1])
    np.testing.assert_allclose(rank_map(x[p]), rank_map(x)[p])


def test_sqrt_and_log2_average_one():
    x = np.array([2.0, 3.0, 5.0])
    s = sqrt_map(x)
    assert s.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(s, 3 * np.sqrt(x) / np.sqrt(x).sum())
    lg = log2_map(x)
    assert lg.mean() == pytest.approx(1.0)
    assert np.all(np.diff(lg) > 0)


def test_sqrt_log2_domain_errors():
    with pytest.raises(ConfigError, match="positive"):
        sqrt_map([1.0, -0.5])
    with pytest.raises(ConfigError, match="> 1"):
        log2_map([1.0, 2.0])


def test_sigmoid_map_matches_formula():
    x = np.array([2.0, 2.5, 3.0])
    s_min, s_max, t = 0.5, 2.0, 10.0
    d = x - x.mean()
    sig = 1 / (1 + np.exp(-t * d)) - 0.5
    f = np.where(d > 0, s_max * sig, s_min * sig)
    np.testing.assert_allclose(sigmoid_map(x, s_min, s_max, t), 10.0**f)
    assert sigmoid_map(x, s_min, s_max, t)[1] == pytest.approx(1.0)  # the mean layer keeps the base rate


def test_sigmoid_bounds_and_no_overflow():
    m = sigmoid_map([0.0, 1e6], 1.0, 1.0, 10.0)
    assert m[0] == pytest.approx(10**-0.5) and m[1] == pytest.approx(10**0.5)
    assert np.all(np.isfinite(m))
    np.testing.assert_allclose(sigmoid_map([4.0, 4.0]), [1.0, 1.0])


@pytest.mark.parametrize("name", MAPPINGS)
def test_every_map_is_monotone_in_the_metric(name):
    f = get_mapping(name, s_min=1.0, s_max=1.0)
    x = np.array([1.5, 2.0, 2.7, 3.9, 6.0])
    m = f(x)
    assert np.all(np.diff(m) > 0), (name, m)
    assert np.all(m > 0)


def test_bad_inputs_are_errors():
    with pytest.raises(ConfigError, match="unknown mapping"):
        get_mapping("cosine")
    with pytest.raises(ConfigError, match="s1 <= s2"):
        get_mapping("linear", s1=1.5, s2=0.5)
    with pytest.raises(ConfigError, match="temperature"):
        get_mapping("sigmoid", temperature=0.0)
    with pytest.raises(ConfigError, match="finite"):
        linear_map([1.0, math.nan])
    with pytest.raises(ConfigError, match="no metric values"):
        linear_map([])
