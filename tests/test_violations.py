"""Dependency violations (DESIGN 3.3): D / S / A / flip on the enumerable toy denoiser, where
S must be the table's pointwise mutual information and A must vanish; an inconsistent denoiser
must show A != 0; and the records the engine keeps."""

import itertools
import math

import numpy as np
import pytest
import torch
from test_energies import MASK, PROMPT, V_REAL, TableDenoiser, ids_of, random_joint

from explorer.decoding.config import DecodeConfig
from explorer.decoding.engine import iter_steps
from explorer.decoding.violations import ViolationRecord, measure, most_confident, pairwise, reveal_each

P = len(PROMPT)
STATE = [2, MASK, MASK, MASK, MASK]  # position 0 written; 1..4 masked
COMMITTED = np.array([1, 2, 4])  # position 3 stays masked: it must be marginalised out
TILT = (2, 4, np.array([2.5, -1.0, 0.0, 1.0]))  # p(y_4 | y_2 revealed) tilted: no joint has it


def measure_table(den, y_u, cap=16, confidence=None):
    tokens_of = np.full(len(STATE), MASK, dtype=np.int64)
    tokens_of[COMMITTED] = y_u
    log_q_step = torch.from_numpy(den.log_probs_np(STATE))
    confidence = np.linspace(0.9, 0.1, len(STATE)) if confidence is None else confidence
    return measure(den.log_probs, ids_of(STATE), P, COMMITTED, tokens_of, log_q_step, confidence, cap)


def table_pmi(den, y_u) -> np.ndarray:
    """log p(y_i, y_j | x) - log p(y_i | x) - log p(y_j | x) from the table (y_0 = 2 given)."""
    joint = den.joint[2] / den.joint[2].sum()  # axes: positions 1, 2, 3, 4
    n = len(COMMITTED)
    pmi = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        ai, aj = COMMITTED[i] - 1, COMMITTED[j] - 1
        pair = joint.sum(axis=tuple(a for a in range(4) if a not in (ai, aj)))  # (V, V), ai < aj
        pi, pj = pair.sum(1)[y_u[i]], pair.sum(0)[y_u[j]]
        pmi[i, j] = pmi[j, i] = math.log(pair[y_u[i], y_u[j]]) - math.log(pi) - math.log(pj)
    return pmi


ASSIGNMENTS = list(itertools.product(range(V_REAL), repeat=3))


@pytest.mark.parametrize("seed", [0, 1])
def test_consistent_joint_gives_pmi_and_no_asymmetry(seed):
    den = TableDenoiser(random_joint(5, seed))
    negative_seen = positive_seen = flip_seen = False
    for y_u in ASSIGNMENTS:
        v = measure_table(den, np.array(y_u))
        assert v.positions.tolist() == COMMITTED.tolist() and v.tokens.tolist() == list(y_u)
        pmi = table_pmi(den, y_u)
        assert np.allclose(v.S, pmi, atol=1e-9), (y_u, v.S, pmi)
        assert np.abs(v.A).max() < 1e-9
        # D_ij = log p(y_j | x + y_i) - log p(y_j | x), read from the table directly
        base = den.conditional(STATE)
        for i, j in itertools.permutations(range(3), 2):
            gen = list(STATE)
            gen[COMMITTED[i]] = y_u[i]
            cond = den.conditional(gen)
            d = math.log(cond[COMMITTED[j], y_u[j]]) - math.log(base[COMMITTED[j], y_u[j]])
            assert v.D[i, j] == pytest.approx(d, abs=1e-9)
            # flip: revealing y_i changes the model's top choice at u_j (vs the step's own argmax)
            assert v.flip[i, j] == (int(cond[COMMITTED[j]].argmax()) != int(base[COMMITTED[j]].argmax()))
        assert (np.diag(v.D) == 0).all() and not v.flip.diagonal().any()
        negative_seen |= bool((pmi < -0.1).any())
        positive_seen |= bool((pmi > 0.1).any())
        flip_seen |= bool(v.flip.any())
    assert negative_seen and positive_seen and flip_seen  # the table is far from independent


def test_inconsistent_denoiser_shows_asymmetry():
    den = TableDenoiser(random_joint(5, 2), tilt=TILT)
    worst = 0.0
    for y_u in ASSIGNMENTS:
        v = measure_table(den, np.array(y_u))
        assert np.allclose(v.A, -v.A.T)
        assert np.allclose(v.S, v.S.T)
        assert np.allclose(v.A, v.D - v.D.T) and np.allclose(v.S, (v.D + v.D.T) / 2)
        # only the tilted pair (positions 2 -> 4, members 1 -> 2) can be asymmetric
        mask = np.ones((3, 3), bool)
        mask[1, 2] = mask[2, 1] = False
        assert np.abs(v.A[mask]).max() < 1e-9
        worst = max(worst, abs(v.A[1, 2]))
        # and it is exactly the tilt's log-ratio
        gen = list(STATE)
        gen[2] = y_u[1]
        expected_d = math.log(den.conditional(gen)[4, y_u[2]]) - math.log(den.conditional(STATE)[4, y_u[2]])
        assert v.D[1, 2] == pytest.approx(expected_d, abs=1e-9)
    assert worst > 0.5


def test_one_batched_pass_of_n_sequences():
    den = TableDenoiser(random_joint(5, 3))
    measure_table(den, np.array([0, 1, 2]))
    assert den.rows == 3


def test_cap_keeps_the_most_confident_committed_tokens():
    den = TableDenoiser(random_joint(5, 4))
    confidence = np.array([0.0, 0.5, 0.2, 0.0, 0.9])
    v = measure_table(den, np.array([3, 1, 0]), cap=2, confidence=confidence)
    assert v.positions.tolist() == [1, 4] and v.tokens.tolist() == [3, 0]
    assert den.rows == 2
    full = measure_table(den, np.array([3, 1, 0]))
    assert v.S[0, 1] == pytest.approx(full.S[0, 2])  # same pair, same numbers
    js = ViolationRecord.of(v, 3, 0.01, None).to_json()
    assert js["capped"] is True and js["n_committed"] == 3
    assert ViolationRecord.of(full, 3, 0.01, None).to_json()["capped"] is False
    assert ViolationRecord.from_json(js).to_json() == js  # stored and read back unchanged


def test_most_confident():
    conf = np.array([0.1, 0.8, 0.3, 0.8, 0.5, 0.9])
    assert most_confident(np.array([1, 2, 4]), conf, 3).tolist() == [1, 2, 4]
    assert most_confident(np.array([0, 1, 2, 3, 4, 5]), conf, 3).tolist() == [1, 3, 5]
    assert most_confident(np.array([0, 2, 4]), conf, 2).tolist() == [2, 4]


def test_reveal_each():
    x = torch.tensor([[7, 8, MASK, MASK, MASK, MASK]])
    batch = reveal_each(x, 2, torch.tensor([0, 3]), torch.tensor([1, 2]))
    assert batch.tolist() == [[7, 8, 1, MASK, MASK, MASK], [7, 8, MASK, MASK, MASK, 2]]
    assert x.tolist() == [[7, 8, MASK, MASK, MASK, MASK]]  # the state is not modified


def test_pairwise_arithmetic():
    # log p(y_j | x + y_i) for i revealed (rows), j read (columns); log q_j
    logp_rev = np.log(np.array([[0.5, 0.6, 0.1], [0.2, 0.5, 0.4], [0.3, 0.4, 0.5]]))
    log_q = np.log(np.array([0.4, 0.3, 0.2]))
    argmax = np.array([[0, 1, 1], [0, 1, 2], [3, 1, 2]])
    tokens = np.array([0, 1, 2])
    v = pairwise(logp_rev, log_q, argmax, np.array([3, 5, 9]), tokens)
    D = np.array(
        [
            [0, math.log(0.6 / 0.3), math.log(0.1 / 0.2)],
            [math.log(0.2 / 0.4), 0, math.log(0.4 / 0.2)],
            [math.log(0.3 / 0.4), math.log(0.4 / 0.3), 0],
        ]
    )
    assert np.allclose(v.D, D)
    assert np.allclose(v.S, (D + D.T) / 2) and np.allclose(v.A, D - D.T)
    assert v.flip.tolist() == [[False, False, True], [False, False, False], [True, False, False]]
    S = (D + D.T) / 2
    assert np.allclose(v.token_scores, [min(S[0, 1], S[0, 2]), min(S[1, 0], S[1, 2]), min(S[2, 0], S[2, 1])])
    assert v.total == pytest.approx(sum(min(S[i, j], 0.0) for i, j in [(0, 1), (0, 2), (1, 2)]))
    assert v.total < 0
    js = ViolationRecord.of(v, 3, 0.5, None).to_json()
    assert js["positions"] == [3, 5, 9] and js["scores"] == np.round(v.token_scores, 4).tolist()


# ---- the engine ------------------------------------------------------------------------------
def engine_steps(denoiser, **settings):
    config = DecodeConfig(**{"gen_length": 16, "steps": 4, **settings})
    return list(iter_steps(denoiser, denoiser.encode("once upon a time"), config))


def check_violation_records(steps, cap=16):
    seen = 0
    for r in steps:
        if r.n_committed < 2:
            assert "violations" not in r.extras.to_json()
            continue
        v = r.extras.to_json()["violations"]
        seen += 1
        n = min(r.n_committed, cap)
        S, A, D = np.array(v["S"]), np.array(v["A"]), np.array(v["D"])
        assert S.shape == A.shape == D.shape == (n, n)
        assert np.array_equal(S, S.T)
        assert np.allclose(A, -A.T, atol=2e-4)
        assert np.allclose(A, D - D.T, atol=3e-4) and np.allclose(S, (D + D.T) / 2, atol=3e-4)
        off = ~np.eye(n, dtype=bool)
        assert v["scores"] == np.where(off, S, np.inf).min(axis=1).tolist()
        assert v["n_committed"] == r.n_committed and v["capped"] == (r.n_committed > cap)
        assert set(v["positions"]) <= set(r.committed.tolist())
        assert v["tokens"] == [int(r.tokens[r.committed.tolist().index(p)]) for p in v["positions"]]
        assert r.forward_passes == 1 + n  # the step's pass and the batch of n revealed states
    return seen


def test_engine_violation_records(denoiser):
    steps = engine_steps(denoiser, violations=True)
    assert check_violation_records(steps) == 4
    assert all(r.extras.to_json()["violations"]["positions"] == r.committed.tolist() for r in steps)


def test_engine_violations_are_on_by_default_for_the_embedded_model(denoiser):
    steps = engine_steps(denoiser)  # violations=None: the model's default
    assert all("violations" in r.extras.to_json() for r in steps)


def test_engine_violations_capped_and_single_commits(denoiser):
    steps = engine_steps(
        denoiser, gen_length=32, steps=8, violations=True, violation_cap=3, strategy="threshold", threshold=0.3
    )
    sizes = [r.n_committed for r in steps]
    assert 1 in sizes and 2 in sizes and max(sizes) > 3  # no pass, an uncapped pair, capped steps
    assert check_violation_records(steps, cap=3) == sum(n >= 2 for n in sizes)
    assert any(r.extras.to_json()["violations"]["capped"] for r in steps if r.n_committed > 3)


def test_engine_without_violations(denoiser):
    steps = engine_steps(denoiser, violations=False)
    assert all("violations" not in r.extras.to_json() for r in steps)
    assert all(r.forward_passes == 1 for r in steps)
