"""arness / kendall_tau_b against a brute-force pairwise tau-b and on known cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from explorer.views import metrics
from explorer.views.metrics import arness, kendall_tau_b


def brute_tau_b(x, y) -> float:
    """Textbook tau-b over every unordered pair, in plain Python."""
    concordant = discordant = tied_x = tied_y = 0
    n = len(x)
    for i, j in itertools.combinations(range(n), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        tied_x += dx == 0
        tied_y += dy == 0
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    n0 = n * (n - 1) / 2
    denominator = math.sqrt((n0 - tied_x) * (n0 - tied_y))
    return float("nan") if denominator == 0 else (concordant - discordant) / denominator


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    x = rng.integers(0, max(2, n // 4), size=n)  # many ties, as several positions share a step
    y = rng.integers(0, n, size=n) if seed % 2 else np.arange(n)
    assert kendall_tau_b(x, y) == pytest.approx(brute_tau_b(x.tolist(), y.tolist()), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_arness_matches_brute_force_over_committed(seed, monkeypatch):
    monkeypatch.setattr(metrics, "ROW_CHUNK", 7)  # several chunks, one of them partial
    rng = np.random.default_rng(100 + seed)
    commit_step = rng.integers(-1, 10, size=60)  # -1 = not committed: left out
    keep = np.flatnonzero(commit_step >= 0)
    expected = brute_tau_b(commit_step[keep].tolist(), keep.tolist())
    assert arness(commit_step) == pytest.approx(expected, abs=1e-12)


def test_known_cases():
    assert arness(np.arange(32)) == pytest.approx(1.0)  # one token per step, left to right
    assert arness(np.arange(32)[::-1]) == pytest.approx(-1.0)  # right to left
    # two per step, left to right: every untied pair concordant, tau-b = sqrt((n0 - n1) / n0)
    assert arness(np.array([0, 0, 1, 1])) == pytest.approx(math.sqrt(4 / 6))
    assert arness(np.repeat(np.arange(8), 4)) == pytest.approx(math.sqrt((496 - 48) / 496))
    # committed outside-in: symmetric, no order
    assert arness(np.array([0, 1, 2, 3, 3, 2, 1, 0])) == pytest.approx(0.0)
    # uncommitted positions (-1) are ignored
    assert arness(np.array([0, -1, 1, -1, 2])) == pytest.approx(1.0)


def test_undefined_cases_are_nan():
    assert math.isnan(arness(np.array([], dtype=np.int32)))
    assert math.isnan(arness(np.array([3])))
    assert math.isnan(arness(np.array([-1, 5, -1])))
    assert math.isnan(arness(np.zeros(10, dtype=np.int32)))  # one step committed everything
    assert isinstance(arness(np.arange(5)), float)


def test_random_order_is_near_zero_and_large_runs_work():
    rng = np.random.default_rng(0)
    tau = arness(rng.permutation(1024))
    assert abs(tau) < 0.1
    assert arness(np.arange(1024) // 4) == pytest.approx(math.sqrt(1 - 1024 * 3 / 2 / (1024 * 1023 / 2)))


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        kendall_tau_b(np.arange(3), np.arange(4))
