"""Dependency violations (DESIGN 3.3): D / S / A / flip on the enumerable toy denoiser, where
S must be the table's pointwise mutual information and A must vanish; an inconsistent denoiser
must show A != 0; and the records the engine keeps."""

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_energies import MASK, PROMPT, V_REAL, TableDenoiser, ids_of, random_joint

from explorer.decoding.config import ConfigError, DecodeConfig
from explorer.decoding.engine import iter_steps
from explorer.decoding.violations import (
    Recent,
    ViolationRecord,
    measure,
    measure_steps,
    most_confident,
    pairwise,
    reveal_each,
)
from explorer.store.bundle_schema import Violations

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


# ---- cross-step violations (violation_recent_steps) ------------------------------------------
# A toy joint over 4 generated positions: y_2 copies y_0 with probability 0.85 (the others 0.05
# each); y_0, y_1, y_3 are independent and uniform. Position 0 determines position 2.
AGREE = 0.85


def copy_joint() -> np.ndarray:
    pair = np.full((V_REAL, V_REAL), (1 - AGREE) / (V_REAL - 1))
    np.fill_diagonal(pair, AGREE)
    joint = np.einsum("ac,b,d->abcd", pair, np.ones(V_REAL), np.ones(V_REAL))
    return joint / joint.sum()


class CopyDenoiser:
    """The copy joint as an engine-ready denoiser: logits are the table's conditionals."""

    name, mask_id, context_length, device = "copy", MASK, 16, torch.device("cpu")

    def __init__(self) -> None:
        self.table = TableDenoiser(copy_joint())

    def logits(self, ids):
        out = torch.zeros(ids.shape[0], ids.shape[1], V_REAL + 1)
        for b, row in enumerate(ids):
            out[b, P:] = torch.from_numpy(self.table.log_probs_np(row[P:].tolist())).float().clamp(min=-1e4)
        return out

    def encode(self, text):
        return list(PROMPT)

    def decode(self, ids):
        return " ".join(map(str, ids))

    def token_text(self, token_id):
        return str(token_id)


def measure_cross(y0: int, y2: int, y3: int = 1, y1: int = 2):
    """A step that commits positions 2 and 3 after position 0 (and 1) was committed a step ago."""
    den = TableDenoiser(copy_joint())
    state = [y0, y1, MASK, MASK]
    tokens_of = np.array([y0, y1, y2, y3])
    recent = Recent(np.array([0, 1]), np.array([y0, y1]), np.array([1, 1]))
    log_q_step = torch.from_numpy(den.log_probs_np(state))
    confidence = np.full(4, 0.5)
    pair, cross = measure_steps(
        den.log_probs, ids_of(state), P, np.array([2, 3]), tokens_of, log_q_step, confidence, 16, recent, MASK
    )
    return den, pair, cross


def test_cross_step_score_flags_a_contradiction_with_an_earlier_token():
    for y0 in range(V_REAL):
        for y2 in range(V_REAL):
            den, pair, cross = measure_cross(y0, y2)
            assert den.rows == 2 + 2  # ONE call: 2 revealed rows and 2 recent tokens masked again
            assert cross.positions.tolist() == [0, 1] and cross.tokens.tolist() == [y0, 2]
            assert cross.D.shape == cross.flip.shape == (2, 2) and cross.scores.shape == (2,)
            # columns follow pair.positions = [2, 3]; row 0 is position 0 masked again
            p_given, p_alone = (AGREE if y2 == y0 else (1 - AGREE) / 3), 1 / V_REAL
            assert cross.D[0, 0] == pytest.approx(math.log(p_given / p_alone), abs=1e-9)
            assert np.abs(cross.D[1]).max() < 1e-9 and abs(cross.D[0, 1]) < 1e-9  # independent pairs
            assert cross.scores.tolist() == pytest.approx(cross.D.min(axis=0).tolist())
            if y2 == y0:  # agreement: a positive PMI with y_0; the independent y_1 sets the min to 0
                assert cross.D[0, 0] > 1.0 and abs(cross.scores[0]) < 1e-9
            else:
                assert cross.scores[0] < -1.5  # knowing y_0 makes y_2 much less likely
            assert abs(cross.scores[1]) < 1e-9  # position 3 depends on nothing
            # masking y_0 turns the top choice at position 2 (the copy of y_0) into a uniform
            # tie, whose argmax is token 0: a flip unless y_0 is 0; masking y_1 changes nothing
            assert cross.flip[0, 0] == (y0 != 0)
            assert not cross.flip[1].any() and not cross.flip[0, 1]
            # within the step nothing is wrong: positions 2 and 3 are independent given y_0
            assert np.abs(pair.S).max() < 1e-9


def test_cross_step_through_the_engine():
    """Blocks of 2, one step each: the second step commits positions 2 and 3 after 0 and 1."""
    den, contradictions, agreements = CopyDenoiser(), 0, 0
    for seed in range(40):
        config = DecodeConfig(
            gen_length=4,
            steps=2,
            block_length=2,
            temperature=1.0,
            seed=seed,
            violations=True,
            violation_recent_steps=1,
        )
        steps = list(iter_steps(den, PROMPT, config))
        assert [r.committed.tolist() for r in steps] == [[0, 1], [2, 3]]
        first, second = steps
        assert first.extras.violations.cross_scores is None  # nothing earlier to check against
        assert "cross_scores" not in first.extras.to_json()["violations"]
        v = second.extras.violations
        assert v.cross_positions.tolist() == [0, 1] and v.cross_ago.tolist() == [1, 1]
        assert v.cross_tokens.tolist() == first.tokens.tolist()
        assert v.cross_scores.shape == (2,) and v.positions.tolist() == [2, 3]
        # the rows are measurement: one call, n + m sequences, counted apart from the decode
        assert second.forward_passes == 1 + 2 + 2 and first.forward_passes == 1 + 2
        assert second.extras.cost.measure_calls == 1 and second.extras.cost.measure_sequences == 4
        assert second.extras.cost.calls == 1 and second.extras.cost.sequences == 1
        y0, y2 = int(first.tokens[0]), int(second.tokens[0])
        if y0 == y2:
            agreements += 1
            assert v.cross_D[0, 0] > 1.0 and abs(v.cross_scores[0]) < 1e-3
        else:
            contradictions += 1
            assert v.cross_scores[0] < -1.5
        assert abs(v.cross_scores[1]) < 1e-3
        record = second.extras.violations
        assert ViolationRecord.from_json(record.to_json()) == record
    assert contradictions and agreements


def test_cross_fields_round_trip_and_old_records_still_load():
    _, pair, cross = measure_cross(0, 3)
    record = ViolationRecord.of(pair, 2, 0.01, 0.02, cross).kept()
    js = record.to_json()
    assert js["cross_positions"] == [0, 1] and js["cross_ago"] == [1, 1] and js["cross_tokens"] == [0, 2]
    assert np.array(js["cross_D"]).shape == (2, 2) and len(js["cross_scores"]) == 2
    back = ViolationRecord.from_json(js)
    assert back == record and back.to_json() == js
    assert isinstance(back.cross_scores, np.ndarray) and back.cross_scores.tolist() == js["cross_scores"]
    assert back.cross.flip.dtype == bool
    Violations.model_validate(js)  # the bundle schema accepts it
    # a record written before the cross-step variant (no cross fields) reads as before
    old = {k: v for k, v in js.items() if not k.startswith("cross_")}
    plain = ViolationRecord.from_json(old)
    assert plain.cross_scores is None and plain.cross is None and plain.to_json() == old
    assert plain == ViolationRecord.of(pair, 2, 0.01, 0.02).kept()
    Violations.model_validate(old)
    # malformed cross fields are refused, by the reader and by the bundle schema
    for bad in (
        {**js, "cross_D": [[0.0, 0.0]]},  # one row for two recent tokens
        {**js, "cross_scores": [0.0]},  # one score for two positions
        {k: v for k, v in js.items() if k != "cross_flip"},  # the fields come together
        {**js, "cross_positions": [], "cross_tokens": [], "cross_ago": [], "cross_D": [], "cross_flip": []},
    ):
        with pytest.raises(ValueError):
            ViolationRecord.from_json(bad)
        with pytest.raises(ValueError):
            Violations.model_validate(bad)
    with pytest.raises(ValueError):
        Violations.model_validate({**js, "cross_positions": [2, 1]})  # 2 is committed in the step


def test_recent_steps_zero_changes_nothing(denoiser):
    settings = {"gen_length": 32, "steps": 8, "violations": True, "strategy": "threshold", "threshold": 0.3}
    plain = engine_steps(denoiser, **settings)
    off = engine_steps(denoiser, **settings, violation_recent_steps=0)
    for a, b in zip(plain, off, strict=True):
        untimed = lambda c: replace(c, measure_seconds=0.0)  # noqa: E731  (wall-clock differs run to run)
        assert a.forward_passes == b.forward_passes and untimed(a.extras.cost) == untimed(b.extras.cost)
        va, vb = a.extras.violations, b.extras.violations
        assert (va is None) == (vb is None)
        if va is not None:
            same = {"seconds": 0.0, "forward_seconds": 0.0}
            assert vb.cross_scores is None and va.to_json() | same == vb.to_json() | same
            assert not any(k.startswith("cross_") for k in vb.to_json())


def test_recent_steps_on_the_embedded_model(denoiser):
    m, cap = 2, 5
    settings = {"gen_length": 32, "steps": 8, "violations": True, "violation_cap": cap}
    plain = engine_steps(denoiser, **settings)
    steps = engine_steps(denoiser, **settings, violation_recent_steps=m)
    visible: dict[int, int] = {}  # position -> the step that committed it
    for index, (a, r) in enumerate(zip(plain, steps, strict=True)):
        assert r.committed.tolist() == a.committed.tolist() and r.tokens.tolist() == a.tokens.tolist()
        v = r.extras.violations
        assert np.allclose(v.S, a.extras.violations.S)  # the pairwise part is unchanged
        recent = [p for p, s in visible.items() if index - s <= m]
        if index == 0:
            assert v.cross_scores is None and r.forward_passes == 1 + min(r.n_committed, cap)
        else:
            n, k = len(v.positions), len(v.cross_positions)
            assert k == min(cap, len(recent)) and set(v.cross_positions.tolist()) <= set(recent)
            ago = v.cross_ago.tolist()
            assert ago == sorted(ago) and all(index - visible[p] == g for p, g in zip(v.cross_positions.tolist(), ago))
            assert v.cross_D.shape == v.cross_flip.shape == (k, n) and v.cross_scores.shape == (n,)
            assert np.allclose(v.cross_scores, v.cross_D.min(axis=0), atol=1e-4)
            assert r.forward_passes == 1 + n + k and r.extras.cost.measure_sequences == n + k
            assert r.extras.cost.measure_calls == 1
            Violations.model_validate(r.extras.to_json()["violations"])
        for p in r.committed.tolist():
            visible[p] = index


def test_recent_steps_knob_is_checked():
    DecodeConfig(violation_recent_steps=64).validate(1024, 4)
    for bad in (-1, 65, 1.5):
        with pytest.raises(ConfigError):
            DecodeConfig(violation_recent_steps=bad).validate(1024, 4)


@pytest.mark.parametrize("strategy", ["rcr", "remdm_conf"])
def test_recent_tokens_masked_again_drop_out(denoiser, strategy):
    """A re-masking strategy: a recent token is checked only while it is visible, with its token."""
    config = DecodeConfig(gen_length=16, steps=8, strategy=strategy, violations=True, violation_recent_steps=3)
    generated = np.full(16, denoiser.mask_id)
    remasked_recent = checked = 0
    history: list[set[int]] = []  # positions each step committed
    for r in iter_steps(denoiser, denoiser.encode("once upon a time"), config):
        v = r.extras.violations
        if v is not None and v.cross_positions is not None:
            checked += 1
            positions = v.cross_positions.tolist()
            assert (generated[positions] != denoiser.mask_id).all()  # visible before the step
            assert v.cross_tokens.tolist() == generated[positions].tolist()
            assert not set(positions) & set(r.committed.tolist()) and not set(positions) & set(r.remasked.tolist())
            assert all(p in history[-g] for p, g in zip(positions, v.cross_ago.tolist()))
        recent = set().union(*history[-3:]) if history else set()
        remasked_recent += sum(generated[p] == denoiser.mask_id for p in recent)
        generated[r.committed] = r.tokens
        generated[r.remasked] = denoiser.mask_id
        history.append(set(r.committed.tolist()))
    assert checked
    if strategy == "remdm_conf":
        assert remasked_recent  # the case the filter is for did occur
