"""The prefix rules (factor, EB), Prophet's early commit and the remasking strategies (RCR,
ReMDM-conf) on hand-built tensors, then the engine with re-masks and with CFG."""

import itertools
import math

import numpy as np
import pytest
import torch
from test_strategies import make_input

from explorer.decoding.config import DecodeConfig
from explorer.decoding.engine import iter_steps, run_decode
from explorer.decoding.model_pass import ModelPass
from explorer.decoding.prophet import PROPHET_THRESHOLDS, prophet_early_commit
from explorer.decoding.schedule import tokens_per_step
from explorer.decoding.strategies import STRATEGIES, longest_prefix


def picked(mask):
    assert mask.dtype == torch.bool
    return sorted(mask.nonzero().flatten().tolist())


def test_registry():
    assert {"factor", "eb", "rcr", "remdm_conf"} <= set(STRATEGIES)


# ---- longest_prefix --------------------------------------------------------------------------
def test_longest_prefix_stops_at_the_first_failure():
    order = torch.tensor([4, 1, 3, 0])
    cands = torch.ones(6, dtype=torch.bool)

    def run(passes):
        return picked(longest_prefix(order, torch.tensor(passes), cands))

    assert run([True, True, False, True]) == [1, 4]  # rank 3 passes but comes after a failure
    assert run([True, False, True, True]) == [4]
    assert run([False, True, True, True]) == [4]  # at least the first, even when it fails
    assert run([True] * 4) == [0, 1, 3, 4]
    assert picked(longest_prefix(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.bool), cands)) == []


# ---- factor -----------------------------------------------------------------------------------
def factor_reference(confidence, candidates, f):
    """The rule as stated: sort c(1) >= c(2) >= ...; the longest prefix with (n+1)(1-c(n)) <= f
    for every n in it; at least one."""
    pos = [i for i, c in enumerate(candidates) if c]
    pos.sort(key=lambda i: -confidence[i])
    n = 0
    while n < len(pos) and (n + 2) * (1 - confidence[pos[n]]) <= f:
        n += 1
    return sorted(pos[: max(n, 1)] if pos else [])


def test_factor_hand_built():
    cands = [True, True, True, True, True, False]
    conf = [0.7, 0.95, 0.6, 0.9, 0.5, 0.999]  # 5 is not a candidate
    # ranks: 0.95 (2 * 0.05 = 0.1), 0.9 (3 * 0.1 = 0.3), 0.7 (4 * 0.3 = 1.2 > 1): stop
    assert picked(STRATEGIES["factor"].select(make_input(cands, conf)).commit) == [1, 3]
    # f = 1.5 admits the third (1.2) but not the fourth (5 * 0.4 = 2.0)
    assert picked(STRATEGIES["factor"].select(make_input(cands, conf, factor=1.5)).commit) == [0, 1, 3]
    assert picked(STRATEGIES["factor"].select(make_input(cands, conf, factor=10.0)).commit) == [0, 1, 2, 3, 4]


def test_factor_boundary_is_inclusive():
    # 0.75 is exact in binary: (n+1)(1 - 0.75) = 0.5, 0.75, 1.0, 1.25 for n = 1..4
    assert picked(STRATEGIES["factor"].select(make_input([True] * 4, [0.75] * 4)).commit) == [0, 1, 2]
    assert picked(STRATEGIES["factor"].select(make_input([True] * 4, [0.75] * 4, factor=0.99)).commit) == [0, 1]


def test_factor_always_commits_at_least_the_most_confident():
    s = make_input([True, True, False, True], [0.3, 0.4, 0.99, 0.2])
    assert picked(STRATEGIES["factor"].select(s).commit) == [1]  # 2 * 0.6 > 1, but the first always goes
    assert picked(STRATEGIES["factor"].select(make_input([False, False], [0.9, 0.9])).commit) == []


def test_factor_matches_the_stated_rule_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(300):
        G = int(rng.integers(1, 12))
        cands = (rng.random(G) < 0.7).tolist()
        conf = (1 - rng.random(G) ** 3 * 0.6).astype(np.float32).astype(np.float64).tolist()
        f = float(rng.choice([0.5, 1.0, 2.0]))
        got = picked(STRATEGIES["factor"].select(make_input(cands, conf, factor=f)).commit)
        assert got == factor_reference(conf, cands, f), (cands, conf, f)


# ---- EB-sampler --------------------------------------------------------------------------------
def eb_reference(entropy, candidates, gamma):
    pos = [i for i, c in enumerate(candidates) if c]
    pos.sort(key=lambda i: entropy[i])
    n = 1
    while n < len(pos):
        prefix = [entropy[i] for i in pos[: n + 1]]
        if sum(prefix) - max(prefix) > gamma:
            break
        n += 1
    return sorted(pos[:n])


def test_eb_hand_built():
    cands = [True, True, True, True, False]
    H = [0.05, 0.02, 0.5, 0.04, 0.0]  # 4 is not a candidate
    # ascending 0.02, 0.04, 0.05, 0.5: sum - max = 0, 0.02, 0.06, 0.11 > 0.1
    sel = STRATEGIES["eb"].select(make_input(cands, entropy=H, eb_gamma=0.1))
    got = picked(sel.commit)
    assert got == [0, 1, 3]
    kept = [H[i] for i in got]
    assert sum(kept) - max(kept) <= 0.1
    nxt = kept + [0.5]
    assert sum(nxt) - max(nxt) > 0.1  # adding the next would exceed gamma
    assert sel.remask is None
    assert picked(STRATEGIES["eb"].select(make_input(cands, entropy=H, eb_gamma=0.2)).commit) == [0, 1, 2, 3]
    assert picked(STRATEGIES["eb"].select(make_input(cands, entropy=H, eb_gamma=0.01)).commit) == [1]


def test_eb_boundary_is_inclusive():
    # binary-exact entropies: sum - max of the whole prefix is exactly 0.75
    s = make_input([True] * 4, entropy=[0.5, 0.25, 0.75, 1.0], eb_gamma=0.75)
    assert picked(STRATEGIES["eb"].select(s).commit) == [0, 1, 2]  # 1.5 - 0.75 = 0.75 <= 0.75; then 2.5 - 1 > 0.75
    # with gamma = 0, deterministic positions (H = 0) go together, and one more (its H is the max)
    s = make_input([True] * 4, entropy=[0.0, 0.3, 0.0, 0.5], eb_gamma=0.0)
    assert picked(STRATEGIES["eb"].select(s).commit) == [0, 1, 2]


def test_eb_commits_at_least_one():
    s = make_input([True, True, True], entropy=[3.0, 2.5, 4.0], eb_gamma=0.0)
    assert picked(STRATEGIES["eb"].select(s).commit) == [1]  # alone: sum - max = 0 <= 0
    assert picked(STRATEGIES["eb"].select(make_input([False, False], entropy=[0.0, 0.0])).commit) == []


def test_eb_matches_the_stated_rule_on_random_inputs():
    rng = np.random.default_rng(1)
    for _ in range(300):
        G = int(rng.integers(1, 12))
        cands = (rng.random(G) < 0.7).tolist()
        H = (rng.random(G) ** 2 * 0.3).astype(np.float32).astype(np.float64).tolist()
        gamma = float(rng.choice([0.0, 0.05, 0.1, 0.3]))
        got = picked(STRATEGIES["eb"].select(make_input(cands, entropy=H, eb_gamma=gamma)).commit)
        assert got == eb_reference(H, cands, gamma), (cands, H, gamma)


# ---- Prophet -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "step, threshold",
    [
        (0, 7.5),
        (32, 7.5),  # progress 0.32 < 0.33: first phase
        (33, 5.0),
        (50, 5.0),
        (66, 5.0),  # 0.33 <= progress < 0.67
        (67, 2.5),
        (99, 2.5),
        (150, 2.5),  # the rest (adaptive runs can pass the step budget)
    ],
)
def test_prophet_thresholds_by_phase(step, threshold):
    assert prophet_early_commit(threshold, step, 100)
    assert not prophet_early_commit(threshold - 0.01, step, 100)
    assert prophet_early_commit(threshold + 10, step, 100)


def test_prophet_thresholds():
    assert PROPHET_THRESHOLDS == (7.5, 5.0, 2.5)
    assert prophet_early_commit(1.0, 9, 10, thresholds=(3.0, 2.0, 1.0))
    assert not prophet_early_commit(1.0, 0, 10, thresholds=(3.0, 2.0, 1.0))


# ---- RCR ---------------------------------------------------------------------------------------
def test_rcr_hand_built():
    # block = positions 0..7; 8, 9 lie outside it (committed in an earlier block, very low confidence)
    committed = [True, True, True, False, False, False, False, False, False, False]
    cands = [False, False, False, True, True, True, True, True, False, False]
    commit_conf = [0.9, 0.2, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.01]
    conf = [0.1, 0.1, 0.1, 0.8, 0.1, 0.7, 0.5, 0.95, 0.0, 0.0]  # at committed positions: ignored
    sel = STRATEGIES["rcr"].select(
        make_input(
            cands,
            conf,
            committed=committed,
            commit_confidence=commit_conf,
            n_scheduled=3,
            step_in_block=1,
            steps_per_block=3,
            n_later=2,
        )
    )
    # running confidences 0.9, 0.2, 0.6 | 0.8, 0.1, 0.7, 0.5, 0.95: the lowest two are 4 and 1
    assert picked(sel.commit) == [3, 5, 6, 7]
    assert picked(sel.remask) == [1]
    assert sum(committed) + len(picked(sel.commit)) - len(picked(sel.remask)) == 3 + 3


def test_rcr_last_step_fills_the_block():
    committed = [True, True, False, False]
    sel = STRATEGIES["rcr"].select(
        make_input(
            [False, False, True, True],
            [0.1, 0.1, 0.05, 0.02],
            committed=committed,
            commit_confidence=[0.01, 0.02, 0, 0],
            n_later=0,
        )
    )
    assert picked(sel.commit) == [2, 3] and picked(sel.remask) == []


def test_rcr_keeps_exactly_the_scheduled_total_over_a_block():
    rng = np.random.default_rng(2)
    for n_block, S in [(8, 3), (10, 4), (7, 7), (12, 2)]:
        schedule = tokens_per_step(n_block, S)
        committed = np.zeros(n_block, bool)
        commit_conf = np.zeros(n_block)
        for j in range(S):
            conf = rng.random(n_block)
            cands = ~committed
            sel = STRATEGIES["rcr"].select(
                make_input(
                    cands.tolist(),
                    conf.tolist(),
                    committed=committed.tolist(),
                    commit_confidence=commit_conf.tolist(),
                    n_scheduled=schedule[j],
                    step_in_block=j,
                    steps_per_block=S,
                    n_later=sum(schedule[j + 1 :]),
                )
            )
            new, remask = sel.commit.numpy(), sel.remask.numpy()
            assert not (new & committed).any() and not (remask & ~committed).any()
            assert committed.sum() + new.sum() - remask.sum() == sum(schedule[: j + 1])
            # the ones kept are the top of the pool by running confidence (float32, as passed)
            running = np.where(cands, conf, commit_conf).astype(np.float32)
            after = (committed | new) & ~remask
            if after.any() and (~after).any():
                assert running[after].min() >= running[~after].max()
            commit_conf = np.where(new, conf, commit_conf)
            committed = after
        assert committed.all()


# ---- ReMDM-conf --------------------------------------------------------------------------------
def remdm_input(j, S, generator, committed, commit_conf, cands=None, eps=1e-3):
    G = len(committed)
    cands = [not c for c in committed] if cands is None else cands
    return make_input(
        cands,
        [0.5] * G,
        committed=committed,
        commit_confidence=commit_conf,
        step_in_block=j,
        steps_per_block=S,
        origin_eps=eps,
        generator=generator,
    )


def test_remdm_last_step_commits_everything_and_remasks_nothing():
    committed = [True, False, True, False, True]
    for S in (1, 3, 8):
        sel = STRATEGIES["remdm_conf"].select(
            remdm_input(S - 1, S, torch.Generator().manual_seed(0), committed, [0.01, 0, 0.02, 0, 0.03])
        )
        assert picked(sel.commit) == [1, 3] and picked(sel.remask) == []


def expected_remdm_rates(j, S, eps, conf):
    grid = np.linspace(1.0, eps, S + 1)
    t, s = grid[j], grid[j + 1]
    alpha_t, alpha_s = 1 - t, 1 - s
    sigma_max = min(1.0, (1 - alpha_s) / alpha_t) if alpha_t > 0 else 1.0
    w = np.exp(-np.array(conf))
    return (t - s) / t, w / w.sum() * sigma_max, sigma_max


@pytest.mark.parametrize("j, S", [(0, 4), (1, 4), (2, 4), (5, 8)])
def test_remdm_remask_rate_is_softmax_of_minus_confidence_times_sigma_max(j, S):
    # committed 0..3 (confidences at commit), masked candidates 4..7 whose commit_confidence
    # entries (0) would dominate the softmax if they were wrongly included; 8 committed outside
    # the block (not in `committed`) must never be re-masked
    committed = [True] * 4 + [False] * 5
    cands = [False] * 4 + [True] * 4 + [False]
    commit_conf = [0.95, 0.5, 0.1, 0.7, 0, 0, 0, 0, 0.0]
    commit_rate, rates, sigma_max = expected_remdm_rates(j, S, 1e-3, commit_conf[:4])
    if (j, S) == (2, 4):
        assert 0.4 < sigma_max < 0.6  # (1 - alpha_s) / alpha_t below 1: the scaling shows
    if (j, S) == (1, 4):
        assert sigma_max == 1.0  # clipped
    gen = torch.Generator().manual_seed(j * 10 + S)
    n = 2500
    remasks, commits = np.zeros(9), np.zeros(9)
    for _ in range(n):
        sel = STRATEGIES["remdm_conf"].select(remdm_input(j, S, gen, committed, commit_conf, cands))
        r, c = sel.remask.numpy(), sel.commit.numpy()
        assert not (r & ~np.array(committed)).any() and not (c & ~np.array(cands)).any()
        remasks += r
        commits += c
    se = np.sqrt(rates * (1 - rates) / n)
    assert (np.abs(remasks[:4] / n - rates) < 5 * se + 1e-9).all(), (remasks[:4] / n, rates)
    assert remasks[4:].sum() == 0
    cse = math.sqrt(commit_rate * (1 - commit_rate) / (4 * n))
    assert abs(commits[4:8].sum() / (4 * n) - commit_rate) < 5 * cse


def test_remdm_without_committed_positions_remasks_nothing():
    sel = STRATEGIES["remdm_conf"].select(remdm_input(1, 4, torch.Generator().manual_seed(0), [False] * 5, [0.0] * 5))
    assert picked(sel.remask) == []


# ---- the engine ---------------------------------------------------------------------------------
PROMPT = "once upon a time"


def engine_steps(denoiser, **settings):
    config = DecodeConfig(**{"gen_length": 32, "steps": 8, "violations": False, **settings})
    return config, list(iter_steps(denoiser, denoiser.encode(PROMPT), config))


def replay(steps, G, mask_id):
    """Rebuild the generated part from the records; returns it and the masked count per step."""
    gen = np.full(G, -1)
    masked = G
    for r in steps:
        assert r.masked_before == masked
        assert (gen[r.committed] == -1).all()  # a commit writes a masked position
        gen[r.committed] = r.tokens
        assert (gen[r.remasked] != -1).all()  # a re-mask clears a committed one
        assert not set(r.remasked.tolist()) & set(r.committed.tolist())
        gen[r.remasked] = -1
        masked += len(r.remasked) - r.n_committed
    return gen, masked


@pytest.mark.parametrize(
    "settings",
    [
        {"strategy": "rcr"},
        {"strategy": "rcr", "block_length": 16, "temperature": 0.8, "seed": 2},  # a seed that re-masks
        {"strategy": "remdm_conf"},
        {"strategy": "remdm_conf", "block_length": 16, "seed": 2},
    ],
)
def test_engine_remasking_runs(denoiser, settings):
    config = DecodeConfig(**{"gen_length": 32, "steps": 8, "violations": False, **settings})
    prompt_ids = denoiser.encode(PROMPT)
    steps = list(iter_steps(denoiser, prompt_ids, config))
    G = config.gen_length
    gen, masked = replay(steps, G, denoiser.mask_id)
    assert masked == 0 and (gen >= 0).all() and denoiser.mask_id not in gen
    assert sum(len(r.remasked) for r in steps) > 0  # re-masks happened
    for r in steps:
        lo = r.block * config.block_size
        assert ((r.remasked >= lo) & (r.remasked < lo + config.block_size)).all()  # only in the current block
    result = run_decode(denoiser, prompt_ids, config)
    assert result.status == "completed" and result.token_ids == gen.tolist()
    assert denoiser.mask_id not in result.token_ids


def test_engine_remdm_with_two_steps_per_block_never_remasks(denoiser):
    # step 0 of a block has nothing committed in it, step 1 is the block's last: no re-mask can happen
    for seed in range(3):
        _, steps = engine_steps(denoiser, strategy="remdm_conf", block_length=8, seed=seed)
        assert sum(len(r.remasked) for r in steps) == 0
        assert len(steps) == 8


def test_engine_rcr_keeps_the_schedule(denoiser):
    config, steps = engine_steps(denoiser, strategy="rcr", block_length=16)
    per_block = config.steps_per_block
    schedule = tokens_per_step(16, per_block)
    committed_in_block = 0
    for i, r in enumerate(steps):
        j = i % per_block
        if j == 0:
            committed_in_block = 0
        committed_in_block += r.n_committed - len(r.remasked)
        assert committed_in_block == sum(schedule[: j + 1])
    assert len(steps) == config.steps


def test_engine_prophet(denoiser):
    _, steps = engine_steps(denoiser, prophet=True, steps=32)
    assert all("prophet" in r.extras.to_json() for r in steps)
    fired = [r.extras.to_json()["prophet"]["early_commit"] for r in steps]
    assert fired[-1] is True and not any(fired[:-1])  # fires once, and that step ends the run
    assert steps[-1].masked_before == steps[-1].n_committed
    _, plain = engine_steps(denoiser, steps=32)
    assert len(steps) < len(plain) and all("prophet" not in r.extras.to_json() for r in plain)


def test_engine_prophet_fills_with_the_argmax_and_skips_energies(denoiser):
    """At T > 0 the early commit writes each position's argmax (DESIGN 3.1), not the sampled
    proposal, and no energy runs on that step."""
    _, steps = engine_steps(
        denoiser, prophet=True, steps=32, temperature=1.0, seed=1, energies=(("uni", 1.0),), energy_window=(0.0, 1.0)
    )
    last = steps[-1]
    assert last.extras.to_json()["prophet"]["early_commit"] and "energy" not in last.extras.to_json()
    np.testing.assert_array_equal(last.tokens, last.argmax[last.committed])
    assert any("energy" in r.extras.to_json() for r in steps[:-1])


def test_engine_cfg_doubles_the_forward_passes(denoiser):
    _, plain = engine_steps(denoiser, gen_length=16, steps=4)
    _, cfg = engine_steps(denoiser, gen_length=16, steps=4, cfg_scale=1.5)
    assert [r.forward_passes for r in plain] == [1] * 4
    assert [r.forward_passes for r in cfg] == [2] * 4
    _, cfg_v = engine_steps(denoiser, gen_length=16, steps=4, cfg_scale=1.5, violations=True)
    assert [r.forward_passes for r in cfg_v] == [2 + 2 * r.n_committed for r in cfg_v]


class LinearDenoiser:
    """A fake denoiser whose logits at every position are a fixed function of the whole row,
    so the prompt-masked (unconditional) copy differs from the conditional one."""

    mask_id = 5
    device = torch.device("cpu")

    def __init__(self, V=6):
        self.V = V
        self.calls = []

    def logits(self, ids):
        self.calls.append(ids.clone())
        L = ids.shape[1]
        base = torch.arange(self.V, dtype=torch.float32)
        s = ids.float().sum(1, keepdim=True)[:, :, None]  # (B, 1, 1)
        pos = torch.arange(L, dtype=torch.float32)[None, :, None]
        return torch.sin(base * (s + 1) + pos)  # (B, L, V)


def test_model_pass_cfg_formula_and_log_probs():
    den = LinearDenoiser()
    ids = torch.tensor([[1, 2, 5, 3, 5], [0, 4, 5, 5, 1]])
    plain = ModelPass(den, prompt_length=2, cfg_scale=0.0).logits(ids)
    assert plain.shape == (2, 3, 6) and torch.isinf(plain[..., 5]).all()
    w = 1.5
    mp = ModelPass(den, prompt_length=2, cfg_scale=w)
    den.calls.clear()
    out = mp.logits(ids)
    assert mp.sequences == 4  # 2 rows, twice
    (both,) = den.calls
    assert torch.equal(both[:2], ids) and (both[2:, :2] == den.mask_id).all() and torch.equal(both[2:, 2:], ids[:, 2:])
    cond, free = den.logits(ids)[:, 2:], den.logits(both[2:])[:, 2:]
    expected = free + (w + 1) * (cond - free)
    assert torch.allclose(out[..., :5], expected[..., :5]) and torch.isinf(out[..., 5]).all()
    cols = torch.tensor([[0, 2], [1, 1]])
    lp = mp.log_probs(ids, cols)
    assert lp.shape == (2, 2, 6)
    ref = torch.log_softmax(expected[..., :5], -1)
    for b, c in itertools.product(range(2), range(2)):
        assert torch.allclose(lp[b, c, :5], ref[b, cols[b, c]], atol=1e-6)
    assert torch.isinf(lp[..., 5]).all()
