"""Schedule and unmasking strategies on hand-built tensors (no model)."""

import math

import pytest
import torch

from explorer.decoding.schedule import block_bounds, tokens_per_step
from explorer.decoding.strategies import STRATEGIES, StepInput, default_knobs, top_k_commit


# ---- schedule ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, steps, expected",
    [
        (10, 4, [3, 3, 2, 2]),
        (32, 8, [4] * 8),
        (7, 7, [1] * 7),
        (9, 2, [5, 4]),
        (3, 5, [1, 1, 1, 0, 0]),
        (0, 3, [0, 0, 0]),
        (5, 1, [5]),
    ],
)
def test_tokens_per_step(n, steps, expected):
    assert tokens_per_step(n, steps) == expected


def test_tokens_per_step_sums_and_is_balanced():
    for n in range(0, 40):
        for steps in range(1, 12):
            k = tokens_per_step(n, steps)
            assert len(k) == steps
            assert sum(k) == n
            assert max(k) - min(k) <= 1
            assert k == sorted(k, reverse=True)


def test_tokens_per_step_rejects_no_steps():
    with pytest.raises(ValueError):
        tokens_per_step(4, 0)


def test_block_bounds():
    assert block_bounds(32, 8) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert block_bounds(6, 6) == [(0, 6)]


# ---- helpers -------------------------------------------------------------------------------
def make_input(
    candidates,
    confidence=None,
    entropy=None,
    margin=None,
    n_scheduled=1,
    step_in_block=0,
    steps_per_block=4,
    threshold=0.9,
    origin_eps=1e-3,
    generator=None,
    committed=None,
    commit_confidence=None,
    n_later=0,
    factor=1.0,
    eb_gamma=0.1,
):
    """A StepInput from plain lists (also used by tests/test_strategies_remask.py)."""
    candidates = torch.tensor(candidates, dtype=torch.bool)
    G = candidates.numel()

    def t(values, default):
        return torch.tensor(values, dtype=torch.float32) if values is not None else default

    return StepInput(
        candidates=candidates,
        confidence=t(confidence, torch.linspace(0.1, 0.9, G)),
        entropy=t(entropy, torch.linspace(2.0, 0.1, G)),
        margin=t(margin, torch.linspace(0.0, 0.8, G)),
        n_scheduled=n_scheduled,
        step_in_block=step_in_block,
        steps_per_block=steps_per_block,
        knobs={
            **default_knobs(),
            "threshold": threshold,
            "origin_eps": origin_eps,
            "factor": factor,
            "eb_gamma": eb_gamma,
        },
        generator=generator,
        committed=torch.tensor(committed, dtype=torch.bool)
        if committed is not None
        else torch.zeros(G, dtype=torch.bool),
        commit_confidence=t(commit_confidence, torch.zeros(G)),
        n_later=n_later,
    )


def committed(selection):
    assert selection.commit.dtype == torch.bool
    return sorted(selection.commit.nonzero().squeeze(-1).tolist())


# Three scores that rank the candidates differently, and a non-candidate (index 0) that would
# win under every one of them.
CANDIDATES = [False, True, True, True, True, True, False, True]
CONFIDENCE = [0.99, 0.90, 0.20, 0.50, 0.80, 0.30, 0.95, 0.40]
MARGIN = [0.99, 0.10, 0.15, 0.45, 0.05, 0.20, 0.90, 0.60]
ENTROPY = [0.01, 1.50, 0.30, 2.00, 1.00, 0.40, 0.02, 2.50]


def scored_input(k, **kw):
    return make_input(CANDIDATES, CONFIDENCE, ENTROPY, MARGIN, n_scheduled=k, **kw)


@pytest.mark.parametrize(
    "name, ranking",
    [
        ("low_confidence", [1, 4, 3, 7, 5, 2]),
        ("margin", [7, 3, 5, 2, 1, 4]),
        ("entropy", [2, 5, 4, 1, 3, 7]),
    ],
)
def test_scored_strategies_pick_the_best_candidates(name, ranking):
    for k in range(0, 7):
        selection = STRATEGIES[name].select(scored_input(k))
        assert committed(selection) == sorted(ranking[:k]), (name, k)


@pytest.mark.parametrize("name", ["low_confidence", "margin", "entropy", "random"])
def test_commits_exactly_n_scheduled_candidates(name):
    gen = torch.Generator().manual_seed(0)
    for k in range(0, 7):
        selection = STRATEGIES[name].select(scored_input(k, generator=gen))
        picked = committed(selection)
        assert len(picked) == k
        assert all(CANDIDATES[i] for i in picked)


@pytest.mark.parametrize("name", ["low_confidence", "margin", "entropy", "random"])
def test_more_scheduled_than_candidates_commits_all_candidates_only(name):
    selection = STRATEGIES[name].select(scored_input(20, generator=torch.Generator().manual_seed(0)))
    assert committed(selection) == [i for i, c in enumerate(CANDIDATES) if c]


def test_top_k_commit_ignores_scores_outside_candidates():
    scores = torch.tensor([5.0, 1.0, 4.0, 2.0])
    cands = torch.tensor([True, True, False, True])
    assert top_k_commit(scores, cands, 2).tolist() == [True, False, False, True]
    assert top_k_commit(scores, torch.zeros(4, dtype=torch.bool), 2).tolist() == [False] * 4


def test_random_is_reproducible_and_seed_dependent():
    cands = [i % 3 != 0 for i in range(60)]  # 40 candidates

    def pick(seed):
        s = make_input(cands, n_scheduled=6, generator=torch.Generator().manual_seed(seed))
        return committed(STRATEGIES["random"].select(s))

    assert pick(1) == pick(1)
    picks = {tuple(pick(seed)) for seed in range(10)}
    assert len(picks) >= 9
    for p in picks:
        assert len(p) == 6 and all(cands[i] for i in p)
    # not simply the most confident candidates (confidence rises with the index)
    most_confident = tuple(sorted([i for i in range(60) if cands[i]][-6:]))
    assert most_confident not in picks


def test_random_is_roughly_uniform_over_candidates():
    cands = [True] * 10
    counts = [0] * 10
    gen = torch.Generator().manual_seed(3)
    for _ in range(2000):
        for i in committed(STRATEGIES["random"].select(make_input(cands, n_scheduled=1, generator=gen))):
            counts[i] += 1
    assert sum(counts) == 2000
    assert all(120 < c < 280 for c in counts), counts  # expected 200 each


# ---- threshold -----------------------------------------------------------------------------
def test_threshold_commits_every_candidate_above_tau():
    s = scored_input(1, threshold=0.45)
    # candidates with confidence >= 0.45: 1 (0.90), 3 (0.50), 4 (0.80); non-candidates 0, 6 never
    assert committed(STRATEGIES["threshold"].select(s)) == [1, 3, 4]


def test_threshold_is_inclusive():
    s = make_input([True, True, True], [0.5, 0.7, 0.2], threshold=0.5)
    assert committed(STRATEGIES["threshold"].select(s)) == [0, 1]


def test_threshold_always_commits_the_top_candidate():
    s = scored_input(1, threshold=0.999)
    assert committed(STRATEGIES["threshold"].select(s)) == [1]  # 0.90 is the best candidate; 0 and 6 are not candidates
    s = scored_input(1, threshold=1.0)
    assert committed(STRATEGIES["threshold"].select(s)) == [1]


def test_threshold_with_no_candidates_commits_nothing():
    s = make_input([False, False], [0.99, 0.98], threshold=0.5)
    assert committed(STRATEGIES["threshold"].select(s)) == []


def test_threshold_is_adaptive_it_ignores_the_scheduled_count():
    confidence = [0.95, 0.5, 0.92, 0.3]
    picks = {
        n: committed(STRATEGIES["threshold"].select(make_input([True] * 4, confidence, n_scheduled=n)))
        for n in (0, 1, 3, 10)
    }
    assert all(p == [0, 2] for p in picks.values()), picks
    assert set(STRATEGIES) == {
        "low_confidence",
        "margin",
        "entropy",
        "random",
        "origin",
        "threshold",
        "factor",
        "eb",
        "rcr",
        "remdm_conf",
        "xdlm_ancestral",
        "xdlm_revise",
        "lookahead",
        "lookahead_exact",
        "energy_gate",
        "pairwise_gate",
    }
    # adaptive ones say so in their entry: their step count is not the schedule's
    assert not any(STRATEGIES[name].scheduled for name in ("threshold", "lookahead", "pairwise_gate"))


# ---- origin --------------------------------------------------------------------------------
def test_origin_commits_every_candidate_on_the_last_step():
    for S in (1, 2, 4):
        s = make_input(CANDIDATES, step_in_block=S - 1, steps_per_block=S, generator=torch.Generator().manual_seed(0))
        assert committed(STRATEGIES["origin"].select(s)) == [i for i, c in enumerate(CANDIDATES) if c]


def expected_origin_rate(j, S, eps):
    t = 1.0 - j * (1.0 - eps) / S
    s = 1.0 - (j + 1) * (1.0 - eps) / S
    return (t - s) / t


@pytest.mark.parametrize("j, S, eps", [(0, 4, 1e-3), (1, 4, 1e-3), (2, 4, 1e-3), (3, 8, 0.05)])
def test_origin_commits_a_fraction_on_earlier_steps(j, S, eps):
    rate = expected_origin_rate(j, S, eps)
    G, draws = 1000, 20
    cands = [i % 2 == 0 for i in range(G)]  # 500 candidates
    gen = torch.Generator().manual_seed(42)
    total = 0
    for _ in range(draws):
        picked = committed(
            STRATEGIES["origin"].select(
                make_input(cands, step_in_block=j, steps_per_block=S, origin_eps=eps, generator=gen)
            )
        )
        assert all(cands[i] for i in picked)
        total += len(picked)
    mean = total / (draws * 500)
    sd = math.sqrt(rate * (1 - rate) / (draws * 500))
    assert abs(mean - rate) < 6 * sd + 1e-3, (mean, rate)
    assert abs(mean - rate) < 0.03


def test_origin_rates_are_the_known_values():
    # t = linspace(1, eps, S + 1): with S = 4 and eps -> 0 the rates are 1/4, 1/3, 1/2, then 1
    assert expected_origin_rate(0, 4, 0.0) == pytest.approx(0.25)
    assert expected_origin_rate(1, 4, 0.0) == pytest.approx(1 / 3)
    assert expected_origin_rate(2, 4, 0.0) == pytest.approx(0.5)


def test_origin_is_reproducible_with_a_seed():
    cands = [True] * 200

    def pick(seed):
        return committed(
            STRATEGIES["origin"].select(
                make_input(cands, step_in_block=1, steps_per_block=4, generator=torch.Generator().manual_seed(seed))
            )
        )

    assert pick(5) == pick(5)
    assert pick(5) != pick(6)
