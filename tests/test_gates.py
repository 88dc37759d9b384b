"""The gated strategies (explorer/decoding/gates.py, probes.py) and their engine stage.

- the acceptance rules on hand-built arrays;
- the stored records (GateRecord, StepCost);
- lookahead_exact is token for token one-token-per-step low_confidence, in fewer model calls;
- on toy denoisers whose joint is an explicit table (a pair of positions with an impossible
  combination of their marginal argmaxes, tokens that repel each other), the gates do what
  their rules say where plain decoding commits a contradiction;
- the prefix probe's logits reuse: the call count, the `reused` flag, and the same tokens as a
  run that recomputes every step's logits;
- the pairwise gate's violations come from its own probe;
- a gated strategy with energies is a ConfigError, in the config and on the command line.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from explorer.cli import main
from explorer.decoding.config import ConfigError, DecodeConfig
from explorer.decoding.engine import DecodeRun, iter_steps
from explorer.decoding.gates import GateRecord, accept_drop, accept_energy, accept_exact, accept_pairwise
from explorer.decoding.model_pass import ModelPass
from explorer.decoding.records import StepCost, StepExtras
from explorer.decoding.strategies import STRATEGIES
from explorer.decoding.violations import measure

PROMPT = "once upon a time"
GATED = sorted(name for name, spec in STRATEGIES.items() if spec.gate is not None)


# ---- the rules, on hand-built arrays --------------------------------------------------------
def test_gated_registry():
    assert GATED == ["energy_gate", "lookahead", "lookahead_exact", "pairwise_gate"]
    assert STRATEGIES["lookahead_exact"].gate.virtual_steps
    assert not any(STRATEGIES[name].gate.virtual_steps for name in GATED if name != "lookahead_exact")


def test_accept_drop_gamma_boundary_flips_and_at_least_one():
    no_flip = np.zeros(3, bool)
    assert accept_drop(np.array([0.5, 1.0, 0.2]), no_flip, 1.0) == 4  # drop == gamma passes
    assert accept_drop(np.array([0.5, 1.0 + 1e-9, 0.2]), no_flip, 1.0) == 2  # just over gamma stops
    assert accept_drop(np.array([-3.0, -1.0, 0.0]), no_flip, 0.0) == 4  # negative drops: more belief
    # a flip stops the prefix whatever the drop; later passing tokens do not count
    assert accept_drop(np.array([0.0, -5.0, 0.0]), np.array([False, True, False]), 1.0) == 2
    assert accept_drop(np.array([2.0, 0.0, 0.0]), no_flip, 1.0) == 1
    assert accept_drop(np.array([0.0, 0.0, 0.0]), np.array([True, False, False]), 100.0) == 1
    # the first token is always committed: nothing to check, or everything fails
    assert accept_drop(np.zeros(0), np.zeros(0, bool), 0.0) == 1
    assert accept_drop(np.array([np.inf, np.inf]), np.ones(2, bool), 0.0) == 1


def test_accept_energy_largest_prefix_under_the_bound():
    # E_1..E_5 = 0, 0.25, 0.75, 0.25, 1.25: not monotone (binary-exact values: no rounding at the boundary)
    drops = np.array([0.25, 0.5, -0.5, 1.0])
    assert accept_energy(drops, 0.5) == 4  # E_3 = 0.75 fails but E_4 = 0.25 is under: the LARGEST k
    assert accept_energy(drops, 0.25) == 4  # boundary: E_k <= bound
    assert accept_energy(drops, 0.2) == 1  # only E_1 = 0
    assert accept_energy(drops, 0.75) == 4
    assert accept_energy(drops, 1.25) == 5
    assert accept_energy(drops, 0.0) == 1
    assert accept_energy(np.array([0.125, 0.125, 0.125]), 0.0) == 1  # every drop positive, bound 0: one token
    assert accept_energy(np.array([-0.125, -0.125, -0.125]), 0.0) == 4
    assert accept_energy(np.array([0.5, -0.5]), 0.0) == 3  # E = 0, 0.5, 0: back under the bound
    # at least 1, even with a bound below E_1 = 0, or nothing to check
    assert accept_energy(drops, -1.0) == 1
    assert accept_energy(np.zeros(0), 0.0) == 1


def test_accept_exact_agreeing_prefix():
    pos, tok = np.array([4, 7, 2]), np.array([10, 11, 12])
    assert accept_exact(pos, tok, pos.copy(), tok.copy()) == 4
    assert accept_exact(pos, tok, np.array([4, 3, 2]), tok) == 2  # the position differs at guess 3
    assert accept_exact(pos, tok, pos, np.array([10, 11, 99])) == 3  # same position, another token
    assert accept_exact(pos, tok, np.array([4, 3, 2]), np.array([10, 11, 12])) == 2
    assert accept_exact(pos, tok, np.array([5, 7, 2]), tok) == 1  # later agreement does not count
    assert accept_exact(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)) == 1


def test_accept_pairwise_greedy_in_proposal_order():
    tau = 1.0
    S = np.zeros((6, 6))
    flip = np.zeros((6, 6), bool)
    S[0, 1] = S[1, 0] = -1.5  # 1 contradicts 0 (kept): rejected
    S[1, 2] = S[2, 1] = -9.0  # 2 contradicts only 1, which was rejected: kept
    flip[3, 0] = True  # revealing 3 flips 0's top choice: rejected (either direction)
    flip[0, 4] = True  # revealing 0 flips 4's: rejected
    S[5, 2] = S[2, 5] = -1.0  # exactly -tau: not a contradiction (S < -tau rejects)
    keep = accept_pairwise(S, flip, tau)
    assert keep.dtype == bool and keep.tolist() == [True, False, True, False, False, True]
    # a smaller tau makes 5's S = -1 a contradiction with 2 (kept)
    assert accept_pairwise(S, flip, 0.5).tolist() == [True, False, True, False, False, False]
    # the first is always kept, even when it clashes with everything; order matters
    clash = np.full((3, 3), -10.0)
    np.fill_diagonal(clash, 0.0)
    assert accept_pairwise(clash, np.zeros((3, 3), bool), tau).tolist() == [True, False, False]
    all_flip = ~np.eye(3, dtype=bool)
    assert accept_pairwise(np.zeros((3, 3)), all_flip, tau).tolist() == [True, False, False]
    assert accept_pairwise(np.zeros((1, 1)), np.zeros((1, 1), bool), tau).tolist() == [True]
    # a positive S (agreement) never rejects
    assert accept_pairwise(np.full((3, 3), 5.0), np.zeros((3, 3), bool), 0.0).all()


# ---- the records -------------------------------------------------------------------------------
def test_gate_record_round_trip():
    record = GateRecord("drop", [3, 0, 7], [11, 12, 13], [True, True, False], [0.0, 0.25, 1000.0], [False, False, True])
    data = record.to_json()
    assert data == {
        "rule": "drop",
        "proposed": [3, 0, 7],
        "tokens": [11, 12, 13],
        "accepted": [1, 1, 0],
        "score": [0.0, 0.25, 1000.0],
        "flip": [0, 0, 1],
        "reused": 0,
    }
    assert GateRecord.from_json(data) == record
    reused = GateRecord("pairwise", [1], [2], [True], [0.0], [False], reused=True)
    assert GateRecord.from_json(reused.to_json()) == reused and reused.n_accepted == 1
    assert record.n_accepted == 2
    # an older row without `reused` reads as not reused
    assert GateRecord.from_json({k: v for k, v in data.items() if k != "reused"}).reused is False
    # through StepExtras, as the store keeps it
    extras = StepExtras(gate=record, cost=StepCost(2, 9))
    assert StepExtras.from_json(extras.to_json()) == extras


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [1, 2],
        "drop",
        {"proposed": [1], "tokens": [2], "accepted": [1], "score": [0.0], "flip": [0]},  # no rule
        {"rule": "drop", "tokens": [2], "accepted": [1], "score": [0.0], "flip": [0]},  # no proposed
        {"rule": "drop", "proposed": [1, 2], "tokens": [2], "accepted": [1], "score": [0.0], "flip": [0]},
        {"rule": "drop", "proposed": [1], "tokens": [2], "accepted": [1], "score": [0.0, 1.0], "flip": [0]},
        {"rule": "drop", "proposed": "abc", "tokens": [2], "accepted": [1], "score": [0.0], "flip": [0]},
        {"rule": "drop", "proposed": [[1]], "tokens": [2], "accepted": [1], "score": [0.0], "flip": [0]},
        {"rule": 5, "proposed": [1], "tokens": [2], "accepted": [1], "score": [0.0], "flip": [0]},
    ],
)
def test_gate_record_malformed_raises_value_error(bad):
    with pytest.raises(ValueError):
        GateRecord.from_json(bad)
    if isinstance(bad, dict):  # and the step's extras name the part
        with pytest.raises(ValueError, match="gate"):
            StepExtras.from_json({"gate": bad})


def test_step_cost_round_trip_and_malformed():
    cost = StepCost(calls=2, sequences=9, measure_calls=1, measure_sequences=6, measure_seconds=0.012345)
    assert StepCost.from_json(cost.to_json()) == cost
    assert StepCost.from_json({"calls": 1, "sequences": 1}) == StepCost(1, 1)  # measuring parts optional
    for bad in (None, [1, 1], {"calls": 1}, {"sequences": 1}, {"calls": "one", "sequences": 1}):
        with pytest.raises(ValueError):
            StepCost.from_json(bad)


# ---- lookahead_exact: one-token-per-step low_confidence in fewer calls ----------------------------
def decode_steps(denoiser, **settings):
    config = DecodeConfig(**{"gen_length": 32, "steps": 32, "violations": False, **settings})
    return list(iter_steps(denoiser, denoiser.encode(PROMPT), config))


def final_tokens(steps, gen_length: int = 32, mask: int = -1) -> list[int]:
    out = np.full(gen_length, mask)
    for r in steps:
        out[r.committed] = r.tokens
        out[r.remasked] = mask
    return out.tolist()


def calls(steps) -> int:
    return sum(r.extras.cost.calls for r in steps)


def committed_in_order(record) -> list[int]:
    """A gated step's committed positions in proposal order (StepRecord keeps them ascending)."""
    gate = record.extras.gate
    return [p for p, a in zip(gate.proposed, gate.accepted) if a]


@pytest.mark.parametrize("block_length", [None, 8])
@pytest.mark.parametrize(("temperature", "seed"), [(0.0, 0), (1.0, 0), (1.0, 1), (1.0, 2)])
def test_lookahead_exact_is_one_token_per_step_low_confidence(denoiser, temperature, seed, block_length):
    settings = dict(temperature=temperature, seed=seed, block_length=block_length)
    plain = decode_steps(denoiser, **settings)
    exact = decode_steps(denoiser, strategy="lookahead_exact", **settings)
    assert [r.n_committed for r in plain] == [1] * 32
    # the same commits in the same order: concatenating the exact run's steps gives the plain run
    assert [p for r in exact for p in committed_in_order(r)] == [int(r.committed[0]) for r in plain]
    assert final_tokens(exact) == final_tokens(plain)
    assert sum(r.n_committed for r in exact) == 32
    assert any(r.n_committed > 1 for r in exact)  # it did speculate successfully
    assert calls(plain) == 32 and calls(exact) < calls(plain)
    for r in exact:  # the accepted guesses are a prefix of the proposal, and the record says so
        gate = r.extras.gate
        assert gate.rule == "exact" and gate.n_accepted == r.n_committed
        assert gate.accepted == sorted(gate.accepted, reverse=True)


# ---- toy denoisers from explicit joint tables ---------------------------------------------------
TOY_PROMPT = [0]


class JointDenoiser:
    """A Denoiser (explorer/decoding/protocols.py) whose conditionals come from one joint table
    over the G generated positions: p(y_j | revealed) by marginalising the table. Vocabulary: the
    table's V tokens and the mask (id V). Deterministic per row, so batching never changes a value."""

    name = "joint"
    device = torch.device("cpu")
    context_length = 64

    def __init__(self, joint: np.ndarray) -> None:
        self.joint = joint / joint.sum()
        self.G, self.V = joint.ndim, joint.shape[0]
        self.mask_id = self.V
        self.rows = 0

    def conditional(self, gen: list[int]) -> np.ndarray:
        """(G, V) p(y_j | the revealed part of gen) at every masked j (uniform at revealed ones)."""
        masked = [j for j, t in enumerate(gen) if t == self.mask_id]
        sub = self.joint[tuple(slice(None) if t == self.mask_id else t for t in gen)]
        out = np.full((self.G, self.V), 1.0 / self.V)
        for a, j in enumerate(masked):
            m = sub.sum(axis=tuple(b for b in range(sub.ndim) if b != a))
            out[j] = m / m.sum()
        return out

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        B, L = ids.shape
        P = L - self.G
        out = torch.zeros(B, L, self.V + 1)
        for b in range(B):
            out[b, P:, : self.V] = torch.from_numpy(np.log(self.conditional(ids[b, P:].tolist())))
        out[..., self.mask_id] = -1e9
        self.rows += B
        return out

    def encode(self, text: str) -> list[int]:
        return list(TOY_PROMPT)

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))

    def token_text(self, token_id: int) -> str:
        return str(token_id)


EPS = 1e-6


def pair_joint() -> np.ndarray:
    """G = 4, V = 4. Positions 0 and 1 are a pair whose marginal argmaxes never occur together:
    p(y0) = (.55, .225, .225, 0), p(y1) = (0, .45, .30, .25) but p(y0 = 0, y1 = 1) = 0 (EPS).
    Positions 2 and 3 are independent of everything and less confident (.35)."""
    pair = np.full((4, 4), EPS)
    pair[0, 2], pair[0, 3], pair[1, 1], pair[2, 1] = 0.30, 0.25, 0.225, 0.225
    free = np.array([0.35, 0.30, 0.20, 0.15])
    return pair[:, :, None, None] * free[None, None, :, None] * free[None, None, None, :]


def repel_joint(G: int = 3, strength: float = 2.0) -> np.ndarray:
    """Every position has the same weights w; each pair holding the same token costs `strength`
    nats. By symmetry every masked position proposes the same token, and revealing it at one
    position lowers its probability at the others: every drop is positive."""
    w = np.array([0.5, 0.3, 0.2])
    joint = np.zeros((3,) * G)
    for y in itertools.product(range(3), repeat=G):
        equal = sum(a == b for a, b in itertools.combinations(y, 2))
        joint[y] = np.prod(w[list(y)]) * np.exp(-strength * equal)
    return joint


def toy_steps(den: JointDenoiser, **settings):
    config = DecodeConfig(**{"gen_length": den.G, "steps": den.G, "violations": False, **settings})
    return list(iter_steps(den, TOY_PROMPT, config))


def test_joint_denoiser_is_the_table():
    den = JointDenoiser(pair_joint())
    M = den.mask_id
    cond = den.conditional([M] * 4)
    assert np.allclose(cond[0, :3], [0.55, 0.225, 0.225], atol=1e-4)
    assert np.allclose(cond[1, 1:], [0.45, 0.30, 0.25], atol=1e-4)
    assert cond[2].max() == pytest.approx(0.35, abs=1e-6)
    assert den.conditional([0, M, M, M])[1, 1] < 1e-4  # once y0 = 0 is known, y1 = 1 is impossible


def test_plain_decoding_commits_the_contradicting_pair_the_gates_do_not(monkeypatch):
    den = JointDenoiser(pair_joint())
    plain = toy_steps(den, steps=2)  # two tokens per step: the two most confident, 0 and 1
    assert plain[0].committed.tolist() == [0, 1] and plain[0].tokens.tolist() == [0, 1]
    final = final_tokens(plain, 4)
    assert den.joint[tuple(final)] < 1e-5  # the text is impossible under the model's own joint
    for strategy in ("lookahead", "pairwise_gate", "energy_gate"):
        steps = toy_steps(den, strategy=strategy, lookahead_k=4)
        first = steps[0]
        assert first.extras.gate.proposed[:2] == [0, 1] and first.extras.gate.tokens[:2] == [0, 1]
        assert first.extras.gate.accepted[:2] == [True, False], strategy  # proposed, and refused
        assert all(not {0, 1} <= set(r.committed.tolist()) for r in steps), strategy
        final = final_tokens(steps, 4)
        assert den.mask_id not in final and den.joint[tuple(final)] > 1e-3, (strategy, final)
    # pairwise: the independent positions 2 and 3 are kept with 0 (a rejected token blocks nothing)
    pairwise = toy_steps(den, strategy="pairwise_gate", lookahead_k=4)
    assert pairwise[0].committed.tolist() == [0, 2, 3] and pairwise[0].extras.gate.score[1] < -5
    # lookahead: the drop of y1 = 1 once y0 = 0 is revealed is huge, and the top choice flips
    lookahead = toy_steps(den, strategy="lookahead", lookahead_k=4)
    assert lookahead[0].n_committed == 1
    assert lookahead[0].extras.gate.score[1] > 5 and lookahead[0].extras.gate.flip[1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sampled_gated_runs_never_commit_an_impossible_pair_together(seed):
    den = JointDenoiser(pair_joint())
    for strategy in ("lookahead", "pairwise_gate"):
        for r in toy_steps(den, strategy=strategy, lookahead_k=4, temperature=1.0, seed=seed):
            together = dict(zip(r.committed.tolist(), r.tokens.tolist()))
            if 0 in together and 1 in together:
                assert den.joint[together[0], together[1]].sum() > 1e-3, (strategy, seed, together)


def test_energy_gate_with_bound_zero_commits_one_token_per_step_when_every_drop_is_positive():
    den = JointDenoiser(repel_joint(G=4))
    steps = toy_steps(den, strategy="energy_gate", energy_bound=0.0, lookahead_k=4)
    assert len(steps) == 4 and [r.n_committed for r in steps] == [1, 1, 1, 1]
    probed = [r for r in steps if len(r.extras.gate.proposed) > 1]
    assert len(probed) == 3  # the last step has one masked position: nothing to check
    for r in probed:
        drops = np.array(r.extras.gate.score[1:])
        assert (drops > 0).all(), drops
    # the same proposals with a bound above their Ind-E commit more (the gate, not the proposal, held back)
    loose = toy_steps(den, strategy="energy_gate", energy_bound=100.0, lookahead_k=4)
    assert [r.n_committed for r in loose] == [4]
    # and the energy rule's verdict is what accept_energy says about the recorded drops
    for bound in (0.5, 2.0):
        for r in toy_steps(den, strategy="energy_gate", energy_bound=bound, lookahead_k=4):
            gate = r.extras.gate
            assert gate.n_accepted == accept_energy(np.array(gate.score[1:]), bound)


# ---- logit reuse ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("block_length", "temperature"), [(None, 0.0), (8, 0.0), (None, 1.0), (8, 1.0)], ids=["b32", "b8", "b32T1", "b8T1"]
)
def test_lookahead_reuses_the_probe_row_and_counts_its_calls(denoiser, monkeypatch, block_length, temperature):
    settings = dict(strategy="lookahead", block_length=block_length, temperature=temperature, seed=5)
    steps = decode_steps(denoiser, **settings)
    probed = [len(r.extras.gate.proposed) >= 2 for r in steps]
    reused = [r.extras.gate.reused for r in steps]
    # A step reads the logits of the row its predecessor's probe committed (the probe ran that
    # very state) whenever the predecessor probed; the first step, and a step after one with a
    # single proposal (a block's last masked position: nothing to check, no probe), run a forward.
    assert reused == [False] + probed[:-1]
    # A step costs its forward if not reused plus one batched call for its probe, so the run costs
    # steps + 1 calls when its last step probes, and `steps` when that step had one proposal
    # (every probe-less step before it moved a forward to the step after it).
    per_step = [int(not u) + int(p) for u, p in zip(reused, probed)]
    assert [r.extras.cost.calls for r in steps] == per_step
    assert calls(steps) == len(steps) + int(probed[-1])
    for r in steps:
        K = len(r.extras.gate.proposed)
        assert r.extras.cost.sequences == int(not r.extras.gate.reused) + (K if K >= 2 else 0)

    # The same decode with every step's logits recomputed: the same tokens (CPU rows are exact).
    original = DecodeRun.step_logits

    def no_reuse(self, x):
        self.ahead = None
        return original(self, x)

    monkeypatch.setattr(DecodeRun, "step_logits", no_reuse)
    fresh = decode_steps(denoiser, **settings)
    assert [r.committed.tolist() for r in fresh] == [r.committed.tolist() for r in steps]
    assert [r.tokens.tolist() for r in fresh] == [r.tokens.tolist() for r in steps]
    assert not any(r.extras.gate.reused for r in fresh)
    assert calls(fresh) == len(fresh) + sum(probed)  # a forward every step


def test_observed_lookahead_call_counts(denoiser):
    """The counts explained above, on two runs of the embedded model (T = 0, K = 8):
    one block: the last step commits the single position left, from the reused logits, with no
    probe: calls = steps; blocks of 8: the last step proposes the block's last 8 positions and
    probes them (accepting all): calls = steps + 1."""
    one_block = decode_steps(denoiser, strategy="lookahead")
    assert len(one_block[-1].extras.gate.proposed) == 1 and calls(one_block) == len(one_block)
    blocks = decode_steps(denoiser, strategy="lookahead", block_length=8)
    assert len(blocks[-1].extras.gate.proposed) > 1 and calls(blocks) == len(blocks) + 1
    assert len(blocks) < 32 and len(one_block) < 32


def test_step_logits_reuses_only_the_same_state(denoiser):
    config = DecodeConfig(gen_length=8, steps=8)
    run = DecodeRun.start(denoiser, 3, config, None)
    x = torch.tensor([[5, 6, 7] + [denoiser.mask_id] * 8])
    fake = torch.zeros(8, 4)
    run.ahead = (x.clone(), fake)
    logits, reused = run.step_logits(x)
    assert reused and logits is fake and run.ahead is None and run.model.calls == 0
    other = x.clone()
    other[0, 4] = 9
    run.ahead = (x.clone(), fake)
    logits, reused = run.step_logits(other)  # another state: the probe's row does not apply
    assert not reused and logits.shape[0] == 8 and run.model.calls == 1 and run.ahead is None


# ---- the pairwise gate's violations come from its probe ---------------------------------------------
@torch.no_grad()
def violation_pass(model: ModelPass, x: torch.Tensor, committed: np.ndarray, tokens_of: np.ndarray):
    """What the violation pass computes for a step from the state x (1, L) over `committed` alone."""
    log_p = torch.log_softmax(model.logits(x)[0].float(), -1)  # (G, V) the step's own pass
    confidence = log_p.exp().max(-1).values.numpy()
    return measure(model.log_probs, x, model.P, committed, tokens_of, log_p, confidence, len(committed))


def test_pairwise_gate_violations_come_from_the_probe(denoiser):
    config = DecodeConfig(gen_length=32, steps=32, strategy="pairwise_gate", violations=True)
    prompt_ids = denoiser.encode(PROMPT)
    steps = list(iter_steps(denoiser, prompt_ids, config))
    multi = [r for r in steps if r.n_committed >= 2]
    assert len(multi) >= 2, "too few steps committed two tokens"
    model = ModelPass(denoiser, len(prompt_ids), 0.0)
    gen = np.full(32, denoiser.mask_id)
    for r in steps:
        if r.n_committed >= 2:
            v = r.extras.violations
            assert v is not None and v.positions.tolist() == r.committed.tolist()
            assert v.tokens.tolist() == r.tokens.tolist() and v.n_committed == r.n_committed
            # decoding paid for the probe (forward + K sequences); no measuring pass ran
            assert r.extras.cost.measure_sequences == 0 and r.extras.cost.measure_calls == 0
            assert r.extras.cost.sequences == 1 + len(r.extras.gate.proposed)
            # the matrices are what the violation pass computes over the committed set alone
            tokens_of = gen.copy()
            tokens_of[r.committed] = r.tokens
            expected = violation_pass(model, torch.tensor([prompt_ids + gen.tolist()]), r.committed, tokens_of)
            assert np.allclose(v.S, expected.S, atol=2e-3), (v.S, expected.S)
            assert np.allclose(v.D, expected.D, atol=2e-3)
            assert (v.flip == expected.flip).all()
            assert v.total == pytest.approx(expected.total, abs=5e-3)
        gen[r.committed] = r.tokens
    assert model.sequences > 0


def test_pairwise_gate_without_the_violations_switch_still_records_the_probe(denoiser):
    steps = decode_steps(denoiser, strategy="pairwise_gate", violations=False)
    multi = [r for r in steps if r.n_committed >= 2]
    assert multi and all(r.extras.violations is not None for r in multi)
    assert all(r.extras.violations is None for r in steps if r.n_committed < 2)
    assert all(r.extras.cost.measure_sequences == 0 for r in steps)


# ---- gated strategies take no energies ------------------------------------------------------------
@pytest.mark.parametrize("strategy", GATED)
def test_gated_strategy_with_energies_is_a_config_error(strategy):
    DecodeConfig(strategy=strategy).validate(320, 4)  # fine alone
    with pytest.raises(ConfigError, match="energies") as caught:
        DecodeConfig(strategy=strategy, energies=(("uni", 1.0),)).validate(320, 4)
    assert strategy in str(caught.value) and "\n" not in str(caught.value)
    # a plain strategy takes them
    DecodeConfig(strategy="low_confidence", energies=(("uni", 1.0),)).validate(320, 4)


def test_cli_rejects_a_gated_strategy_with_energies_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_DATA_DIR", str(tmp_path / "data"))
    args = ["decode", "--prompt", PROMPT, "--gen-length", "16", "--steps", "16", "--no-store"]
    assert main([*args, "--strategy", "lookahead", "--energy", "uni=1"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.err
    assert "lookahead" in lines[0] and "energies" in lines[0]
    assert not (tmp_path / "data").exists()
