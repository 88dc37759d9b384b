"""Energies (DESIGN 3.2) on an enumerable toy denoiser, importance sampling, and the engine.

The toy denoiser's conditionals come from ONE explicit joint probability table over every
assignment of the generated part, so every quantity (chain products, marginals on U, PMI) can
be computed exactly by marginalising the table and compared with what explorer.decoding.energies does.
An "inconsistent" variant tilts one conditional, so its conditionals come from no joint: the
order-dependence terms must then become nonzero (the tests can fail).
"""

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from explorer.adapters.loading import load_ar_scorer
from explorer.decoding import engine
from explorer.decoding.config import DecodeConfig
from explorer.decoding.energies import (
    ENERGY_TERMS,
    Candidates,
    PassCount,
    ar_energy,
    choose,
    draw,
    ind_energy,
    inv_energy,
    keep_probabilities,
    log_q_u,
    next_best,
    per_position,
    random_orders,
    uni_energy,
)
from explorer.decoding.engine import iter_steps, run_decode
from explorer.decoding.resume import DEVICE_STREAM, step_seed
from explorer.decoding.strategies import STRATEGIES

V_REAL = 4  # real tokens 0..3
MASK = V_REAL  # the mask id; the model's vocabulary is V_REAL + 1
PROMPT = [1, 3]  # the table ignores the prompt; it only shifts the columns
P = len(PROMPT)


class TableDenoiser:
    """p(y_j | revealed) by marginalising one joint table over the G generated positions.

    `log_probs(ids, cols)` has the signature Candidates / violations.measure expect: ids (B, L)
    with MASK at masked positions, cols (B, m) generated positions -> (B, m, V) log-probs, the
    mask token at -inf. `tilt = (a, b, delta)` makes it inconsistent: whenever position a is
    revealed and b is read, p(y_b) is multiplied by exp(delta) and renormalised."""

    def __init__(self, joint: np.ndarray, tilt: tuple[int, int, np.ndarray] | None = None) -> None:
        self.joint = joint / joint.sum()
        self.G = joint.ndim
        self.tilt = tilt
        self.rows = 0  # sequences run, to check the energies' pass counts

    def conditional(self, gen) -> np.ndarray:
        """(G, V_REAL): p(y_j = v | the revealed part of gen) at every masked j (point mass elsewhere)."""
        gen = [int(t) for t in gen]
        masked = [j for j, t in enumerate(gen) if t == MASK]
        sub = self.joint[tuple(slice(None) if t == MASK else t for t in gen)]  # axes: masked, in order
        out = np.zeros((self.G, V_REAL))
        for a, j in enumerate(masked):
            out[j] = sub.sum(axis=tuple(b for b in range(sub.ndim) if b != a))
            out[j] /= out[j].sum()
        for j, t in enumerate(gen):
            if t != MASK:
                out[j, t] = 1.0
        if self.tilt is not None:
            a, b, delta = self.tilt
            if gen[a] != MASK and gen[b] == MASK:
                out[b] = out[b] * np.exp(delta)
                out[b] /= out[b].sum()
        return out

    def log_probs_np(self, gen) -> np.ndarray:
        """(G, V) log-probabilities with the mask column at -inf."""
        with np.errstate(divide="ignore"):
            return np.concatenate([np.log(self.conditional(gen)), np.full((self.G, 1), -np.inf)], axis=1)

    def log_probs(self, ids: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        assert ids.ndim == 2 and cols.ndim == 2 and cols.shape[0] == ids.shape[0]
        assert (ids[:, :P] == torch.tensor(PROMPT)).all(), "the prompt must travel unchanged"
        self.rows += ids.shape[0]
        out = [torch.from_numpy(self.log_probs_np(row[P:].tolist())[c.tolist()]) for row, c in zip(ids, cols)]
        return torch.stack(out)  # (B, m, V) float64

    def step_log_p(self, gen) -> torch.Tensor:
        """The step's own (G, V) log-probabilities (nothing of U revealed)."""
        return torch.from_numpy(self.log_probs_np(gen))


def random_joint(G: int, seed: int) -> np.ndarray:
    """A strongly dependent joint over V_REAL^G (gamma(0.3) weights are spiky), all entries > 0."""
    return np.random.default_rng(seed).gamma(0.3, size=(V_REAL,) * G) + 1e-6


def ids_of(gen) -> torch.Tensor:
    return torch.tensor([PROMPT + list(gen)], dtype=torch.long)


# The setting of the exact tests: G = 5, position 0 already written, positions 1..4 masked,
# the step commits U = {1, 2, 4}; position 3 stays masked (it must be marginalised out).
G5 = 5
STATE = [2, MASK, MASK, MASK, MASK]
U = [1, 2, 4]
ASSIGNMENTS = list(itertools.product(range(V_REAL), repeat=len(U)))  # all 64 y_U


def enumerated_candidates(
    den: TableDenoiser, S: int = 1, orders: torch.Tensor | None = None, log_q: torch.Tensor | None = None, seed: int = 0
) -> Candidates:
    """Every assignment of U as one candidate; the non-U masked position 3 gets random tokens
    (a full proposal), which the chain must never reveal."""
    rng = np.random.default_rng(seed)
    tokens = torch.tensor([[2, a, b, int(rng.integers(V_REAL)), c] for a, b, c in ASSIGNMENTS])
    log_p = den.step_log_p(STATE)
    if log_q is None:  # a proposal that differs from the model's marginals (temperature 2)
        log_q = torch.log_softmax(log_p / 2.0, dim=-1)
    if orders is None:
        orders = random_orders(len(U), S, torch.Generator().manual_seed(seed), torch.device("cpu"))
    gen = torch.tensor(STATE)
    return Candidates(
        x=ids_of(STATE),
        prompt_length=P,
        masked=gen == MASK,
        positions=torch.tensor(U),
        tokens=tokens,
        log_q=log_q,
        log_p=log_p,
        log_probs=den.log_probs,
        orders=orders,
    )


def table_marginal_on_u(den: TableDenoiser) -> np.ndarray:
    """p(y_1, y_2, y_4 | y_0 = 2) from the table: (V, V, V)."""
    m = den.joint[2].sum(axis=2)  # axes (y1, y2, y3, y4) -> sum y3 -> (y1, y2, y4)
    return m / m.sum()


def explicit_chain(den: TableDenoiser, y_u, order) -> float:
    """log prod_m p(y_{order[m]} | state + y_{order[<m]}) from the denoiser's conditionals, one by one."""
    gen = list(STATE)
    total = 0.0
    for member in order:
        pos = U[member]
        total += math.log(den.conditional(gen)[pos, y_u[member]])
        gen[pos] = y_u[member]
    return total


ALL_ORDERS = torch.tensor(list(itertools.permutations(range(len(U)))))  # (6, 3), row 0 = (0, 1, 2)


# ---- the toy denoiser itself -----------------------------------------------------------------
def test_table_denoiser_conditionals_are_the_tables():
    den = TableDenoiser(random_joint(G5, 0))
    cond = den.conditional(STATE)
    marg = den.joint[2] / den.joint[2].sum()
    assert np.allclose(cond[1], marg.sum(axis=(1, 2, 3)))
    assert np.allclose(cond[4], marg.sum(axis=(0, 1, 2)))
    lp = den.log_probs(ids_of(STATE), torch.tensor([[4, 1]]))
    assert lp.shape == (1, 2, V_REAL + 1) and torch.isinf(lp[..., MASK]).all()
    assert torch.allclose(lp[0, 0, :V_REAL].exp(), torch.from_numpy(cond[4]))


# ---- Ind-E: Q * exp(-Ind-E) is the left-to-right chain, normalised exactly --------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_ind_energy_reweights_q_to_the_chain_which_is_the_joint_marginal(seed):
    den = TableDenoiser(random_joint(G5, seed))
    c = enumerated_candidates(den, seed=seed)
    E = ind_energy(c)
    assert E.shape == (len(ASSIGNMENTS),) and E.dtype == torch.float64
    log_q = log_q_u(c)
    q_direct = torch.tensor(
        [sum(float(c.log_q[u, y]) for u, y in zip(U, ys)) for ys in ASSIGNMENTS], dtype=torch.float64
    )
    assert torch.allclose(log_q, q_direct, atol=1e-6)
    assert float(log_q.exp().sum()) == pytest.approx(1.0, abs=1e-6)  # Q itself is a distribution on U
    reweighted = (log_q - E).exp()  # Q(y) exp(-Ind-E(y))
    assert float(reweighted.sum()) == pytest.approx(1.0, abs=1e-9)  # no partition function
    p_chain = np.array([math.exp(explicit_chain(den, ys, range(len(U)))) for ys in ASSIGNMENTS])
    assert np.allclose(reweighted.numpy(), p_chain, rtol=1e-9, atol=0)
    # a denoiser from one joint: the chain is the table's joint marginal on U given x
    table = table_marginal_on_u(den)
    assert np.allclose(reweighted.numpy(), [table[ys] for ys in ASSIGNMENTS], rtol=1e-9, atol=0)
    # and Q is not that marginal (the test is not vacuous)
    assert np.abs(log_q.exp().numpy() - p_chain).max() > 1e-2
    # |U| - 1 extra sequences per candidate, run once (lazily cached)
    assert c.passes.denoiser == den.rows == len(ASSIGNMENTS) * (len(U) - 1)
    ind_energy(c)
    assert den.rows == len(ASSIGNMENTS) * (len(U) - 1)


def test_chain_is_normalised_even_for_an_inconsistent_denoiser():
    den = TableDenoiser(random_joint(G5, 3), tilt=(1, 4, np.array([2.0, -1.0, 0.0, 1.0])))
    c = enumerated_candidates(den, orders=ALL_ORDERS)
    per_order = torch.stack(c.chain).sum(-1).exp()  # (64, 6)
    assert torch.allclose(per_order.sum(0), torch.ones(6, dtype=torch.float64), atol=1e-9)
    reweighted = (log_q_u(c) - ind_energy(c)).exp()
    assert float(reweighted.sum()) == pytest.approx(1.0, abs=1e-9)


def test_single_candidate_single_position_chain_is_the_step_pass():
    den = TableDenoiser(random_joint(G5, 4))
    log_p = den.step_log_p(STATE)
    c = Candidates(
        x=ids_of(STATE),
        prompt_length=P,
        masked=torch.tensor(STATE) == MASK,
        positions=torch.tensor([2]),
        tokens=torch.tensor([[2, 0, 3, 1, 1]]),
        log_q=log_p,
        log_p=log_p,
        log_probs=den.log_probs,
        orders=random_orders(1, 1, None, torch.device("cpu")),
    )
    assert torch.allclose(c.chain[0][0], log_p[2, 3].double())
    assert float(ind_energy(c)[0]) == pytest.approx(0.0, abs=1e-12)  # Q = p on one position
    assert den.rows == 0 and c.passes.denoiser == 0


# ---- Inv-E / Uni-E --------------------------------------------------------------------------
def test_one_order_uni_equals_ind_and_inv_is_zero():
    den = TableDenoiser(random_joint(G5, 5), tilt=(1, 4, np.array([2.0, -1.0, 0.0, 1.0])))
    c = enumerated_candidates(den, S=1)
    assert c.orders[0].tolist() == [[0, 1, 2]]
    assert torch.equal(inv_energy(c), torch.zeros(len(ASSIGNMENTS), dtype=torch.float64))
    assert torch.equal(uni_energy(c), ind_energy(c))


@pytest.mark.parametrize("orders", ["all", "random"])
def test_inv_energy_vanishes_for_a_consistent_joint(orders):
    den = TableDenoiser(random_joint(G5, 6))
    c = enumerated_candidates(den, orders=ALL_ORDERS) if orders == "all" else enumerated_candidates(den, S=5, seed=2)
    inv = inv_energy(c)
    assert inv.abs().max() < 1e-9
    assert torch.allclose(uni_energy(c), ind_energy(c), atol=1e-9)
    table = table_marginal_on_u(den)
    expected = torch.tensor([math.log(table[ys]) for ys in ASSIGNMENTS], dtype=torch.float64)
    per_order = torch.stack(c.chain).sum(-1)  # every order gives the joint marginal
    assert torch.allclose(per_order, expected[:, None].expand_as(per_order), atol=1e-9)
    S = c.orders[0].shape[0]
    assert den.rows == c.passes.denoiser == len(ASSIGNMENTS) * S * (len(U) - 1)


def test_inv_and_uni_energy_for_an_inconsistent_denoiser_match_an_explicit_computation():
    den = TableDenoiser(random_joint(G5, 7), tilt=(1, 4, np.array([2.0, -1.0, 0.0, 1.0])))
    c = enumerated_candidates(den, orders=ALL_ORDERS)
    # every order's chain, term by term, against the conditionals read one reveal at a time
    for ci, ys in enumerate(ASSIGNMENTS):
        for s, order in enumerate(ALL_ORDERS.tolist()):
            gen = list(STATE)
            for m, member in enumerate(order):
                expected = math.log(den.conditional(gen)[U[member], ys[member]])
                assert float(c.chain[ci][s, m]) == pytest.approx(expected, abs=1e-9), (ci, s, m)
                gen[U[member]] = ys[member]
    log_chain = torch.tensor(
        [[explicit_chain(den, ys, o) for o in ALL_ORDERS.tolist()] for ys in ASSIGNMENTS], dtype=torch.float64
    )
    log_bar = torch.logsumexp(log_chain, 1) - math.log(len(ALL_ORDERS))
    inv = inv_energy(c)
    assert torch.allclose(inv, log_chain[:, 0] - log_bar, atol=1e-9)
    assert inv.abs().max() > 1e-2  # order dependence shows: Inv-E can fail to vanish
    assert torch.allclose(uni_energy(c), log_q_u(c) - log_bar, atol=1e-9)
    assert torch.allclose(uni_energy(c), ind_energy(c) + inv, atol=1e-12)
    # Q * exp(-Uni-E) = P_bar, a mean of normalised chains: exact too, no partition function
    assert float((log_q_u(c) - uni_energy(c)).exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_random_orders():
    gen = torch.Generator().manual_seed(0)
    orders = random_orders(5, 8, gen, torch.device("cpu"))
    assert orders.shape == (8, 5) and orders.dtype == torch.int64
    assert orders[0].tolist() == [0, 1, 2, 3, 4]
    assert all(sorted(row) == list(range(5)) for row in orders.tolist())
    assert len({tuple(r) for r in orders.tolist()}) > 3
    again = random_orders(5, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(orders, again)
    assert random_orders(3, 1, None, torch.device("cpu")).tolist() == [[0, 1, 2]]


# ---- the AR energy ---------------------------------------------------------------------------
class TableAR:
    """A fake AR scorer over a 2-token generation: log p_AR(y1) and log p_AR(y2 | y1) from a
    (V, V) target table (the prompt's entries are 0)."""

    def __init__(self, target: torch.Tensor, prompt_length: int) -> None:
        self.log_t = (target / target.sum()).log()
        self.P = prompt_length
        self.rows = 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.rows += ids.shape[0]
        y1, y2 = ids[:, self.P], ids[:, self.P + 1]
        first = torch.logsumexp(self.log_t, 1)[y1]
        out = torch.zeros(ids.shape, dtype=torch.float64)
        out[:, self.P] = first
        out[:, self.P + 1] = self.log_t[y1, y2] - first
        return out.float()


def two_position_candidates(tokens, log_q, ar, masked=(True, True)):
    return Candidates(
        x=torch.tensor([[0, MASK, MASK]]),
        prompt_length=1,
        masked=torch.tensor(masked),
        positions=torch.tensor([i for i, m in enumerate(masked) if m]),
        tokens=tokens,
        log_q=log_q,
        log_p=log_q,
        log_probs=None,
        orders=torch.arange(sum(masked))[None],
        ar_log_probs=ar,
    )


def test_ar_energy_is_minus_ar_log_likelihood_plus_log_q():
    target = torch.rand(V_REAL, V_REAL, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    log_t = (target / target.sum()).log()
    ar = TableAR(target, 1)
    log_q = torch.log_softmax(torch.randn(2, V_REAL + 1, generator=torch.Generator().manual_seed(2)), -1)
    log_q[:, MASK] = float("-inf")
    log_q = torch.log_softmax(log_q, -1)
    tokens = torch.tensor(list(itertools.product(range(V_REAL), repeat=2)))
    c = two_position_candidates(tokens, log_q, ar)
    E = ar_energy(c)
    expected = -log_t[tokens[:, 0], tokens[:, 1]] + log_q[0, tokens[:, 0]].double() + log_q[1, tokens[:, 1]].double()
    assert torch.allclose(E, expected, atol=1e-5)
    # Q * exp(-E) is the AR distribution
    assert torch.allclose((log_q_u(c) - E).exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-5)
    assert c.passes.ar == ar.rows == len(tokens)
    ar_energy(c)
    assert ar.rows == len(tokens)  # one batched AR pass, cached


def test_ar_energy_counts_only_masked_positions_in_q_but_the_whole_generation_in_p_ar():
    target = torch.rand(V_REAL, V_REAL, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.1
    log_t = (target / target.sum()).log()
    log_q = torch.log_softmax(torch.randn(2, V_REAL + 1, generator=torch.Generator().manual_seed(4)), -1)
    # position 0 already written (token 2), position 1 masked: the AR term of position 1 still
    # depends on it, and log q_0 must not enter
    tokens = torch.tensor([[2, v] for v in range(V_REAL)])
    c = two_position_candidates(tokens, log_q, TableAR(target, 1), masked=(False, True))
    expected = -log_t[2, tokens[:, 1]] + log_q[1, tokens[:, 1]].double()
    assert torch.allclose(ar_energy(c), expected, atol=1e-5)


def test_ar_energy_needs_a_scorer():
    tokens = torch.tensor([[0, 1]])
    c = two_position_candidates(tokens, torch.zeros(2, V_REAL + 1).log_softmax(-1), None)
    with pytest.raises(ValueError, match="AR scorer"):
        ar_energy(c)


# ---- importance sampling: keep by softmax(-E) -------------------------------------------------
Q1 = torch.tensor([0.6, 0.3, 0.1, 0.0, 0.0], dtype=torch.float64)  # over V_REAL + 1; 3 and MASK unused
Q2 = torch.tensor([0.5, 0.3, 0.2, 0.0, 0.0], dtype=torch.float64)
TARGET = torch.tensor([[0.02, 0.03, 0.10], [0.03, 0.07, 0.15], [0.10, 0.15, 0.35]], dtype=torch.float64)


def tv(counts: torch.Tensor, target: torch.Tensor) -> float:
    return 0.5 * float((counts / counts.sum() - target / target.sum()).abs().sum())


def kept_distribution(sign: float, reps: int = 4000, k: int = 64, seed: int = 0):
    """reps independent importance-sampling steps: k candidates from Q, keep one by
    keep_probabilities(sign * E, tau=1). Returns the kept counts (3, 3) and the counts of a
    plain draw from Q (each step's first candidate, before any reweighting)."""
    gen = torch.Generator().manual_seed(seed)
    with np.errstate(divide="ignore"):
        log_q = torch.stack([Q1, Q2]).log()
    target = torch.zeros(V_REAL, V_REAL, dtype=torch.float64)
    target[:3, :3] = TARGET
    target[target == 0] = 1e-300  # unused tokens: never drawn
    tokens = draw(log_q, torch.tensor([True, True]), torch.tensor([MASK, MASK]), reps * k, gen)  # (reps*k, 2)
    c = two_position_candidates(tokens, log_q, TableAR(target, 1))
    E = ar_energy(c).reshape(reps, k)
    probs = torch.stack([keep_probabilities(sign * E[r], 1.0) for r in range(reps)])  # (reps, k)
    assert torch.allclose(probs.sum(1), torch.ones(reps, dtype=torch.float64))
    chosen = torch.multinomial(probs, 1, generator=gen)[:, 0]
    tok = tokens.reshape(reps, k, 2)
    kept = tok[torch.arange(reps), chosen]

    def counts(t):
        return (
            torch.zeros(9, dtype=torch.float64)
            .index_add_(0, t[:, 0] * 3 + t[:, 1], torch.ones(len(t), dtype=torch.float64))
            .reshape(3, 3)
        )

    return counts(kept), counts(tok[:, 0])


def test_importance_sampling_keeps_the_ar_target():
    kept, plain = kept_distribution(+1.0)
    Q = Q1[:3, None] * Q2[None, :3]
    assert tv(Q, TARGET) > 0.55  # proposal and target far apart
    # Over 4000 draws and 9 outcomes an empirical TV has a standard error of about 0.01; the
    # self-normalised estimate with k = 64 is biased by about 0.05 for this pair (computed with
    # 40000 repetitions). The bar 0.12 is ~40 standard errors below the proposal's own TV.
    assert tv(plain, TARGET) > 0.5
    assert tv(kept, TARGET) < 0.12, tv(kept, TARGET)
    assert tv(kept, TARGET) < tv(plain, TARGET) - 0.35


def test_importance_sampling_with_the_wrong_sign_fails_the_same_check():
    kept, _ = kept_distribution(-1.0)  # keep by softmax(+E): the published pitfall
    assert not tv(kept, TARGET) < 0.12
    assert tv(kept, TARGET) > 0.6


def test_keep_probabilities():
    E = torch.tensor([1.0, 2.0, 0.0, 5.0])
    p = keep_probabilities(E, 1.0)
    assert p.dtype == torch.float64
    assert torch.allclose(p, torch.softmax(-E.double(), 0))
    assert int(p.argmax()) == 2 and int(p.argmin()) == 3  # lower energy, higher weight
    p2 = keep_probabilities(E, 0.5)
    assert torch.allclose(p2, torch.softmax(-2 * E.double(), 0))
    assert float(keep_probabilities(torch.tensor([3.0, 3.0]), 1.0)[0]) == pytest.approx(0.5)


def test_draw_marginals_and_unmasked_positions():
    gen = torch.Generator().manual_seed(5)
    q = torch.tensor(
        [[0.1, 0.2, 0.3, 0.4, 0.0], [0.25, 0.25, 0.25, 0.25, 0.0], [0.7, 0.0, 0.2, 0.1, 0.0]], dtype=torch.float64
    )
    with np.errstate(divide="ignore"):
        log_q = q.log()
    masked = torch.tensor([True, False, True])
    state = torch.tensor([MASK, 2, MASK])
    n = 20000
    d = draw(log_q, masked, state, n, gen)
    assert d.shape == (n, 3) and d.dtype == torch.int64
    assert (d[:, 1] == 2).all()  # unmasked: the state, whatever log_q says there
    assert not (d == MASK).any()
    for pos in (0, 2):
        freq = torch.bincount(d[:, pos], minlength=V_REAL + 1).double() / n
        se = (q[pos] * (1 - q[pos]) / n).sqrt()
        assert ((freq - q[pos]).abs() <= 5 * se + 1e-12).all(), (pos, freq)
    assert (d[:, 2] != 1).all()  # probability 0 never drawn
    # independent positions: the joint frequency is the product of the marginals
    joint = (
        torch.zeros(V_REAL, V_REAL, dtype=torch.float64).index_put_(
            (d[:, 0], d[:, 2]), torch.ones(n, dtype=torch.float64), accumulate=True
        )
        / n
    )
    prod = q[0, :V_REAL, None] * q[2, None, :V_REAL]
    assert (joint - prod).abs().max() < 5 * math.sqrt(0.25 / n)
    # reproducible with the generator
    again = draw(log_q, masked, state, n, torch.Generator().manual_seed(5))
    assert torch.equal(d, again)


# ---- choose / per_position ---------------------------------------------------------------------
def test_choose_weights_terms_and_samples_by_keep_probs():
    den = TableDenoiser(random_joint(G5, 8))
    c = enumerated_candidates(den, S=3, seed=4)
    weights = {"ind": 0.5, "uni": 2.0}
    gen = torch.Generator().manual_seed(0)
    choice = choose(c, weights, 0.7, gen)
    total = 0.5 * ind_energy(c) + 2.0 * uni_energy(c)
    assert choice.terms["ind"] == pytest.approx(ind_energy(c).tolist())
    assert choice.total == pytest.approx(total.tolist())
    probs = torch.softmax(-total / 0.7, 0)
    assert choice.keep_probs == pytest.approx(probs.tolist())
    assert sum(choice.keep_probs) == pytest.approx(1.0)
    assert choice.passes == PassCount(denoiser=len(ASSIGNMENTS) * 3 * 2, ar=0)
    # the kept index follows keep_probs
    counts = np.zeros(len(ASSIGNMENTS))
    reps = 3000
    for _ in range(reps):
        counts[choose(c, weights, 0.7, gen).chosen] += 1
    p = probs.numpy()
    top = np.argsort(-p)[:3]
    se = np.sqrt(p[top] * (1 - p[top]) / reps)
    assert (np.abs(counts[top] / reps - p[top]) < 5 * se).all(), (counts[top] / reps, p[top])
    js = choice.to_json()
    assert set(js) == {"chosen", "terms", "total", "keep_probs", "per_position", "positions", "passes"}
    assert len(js["terms"]["uni"]) == len(ASSIGNMENTS)


def test_choose_keeps_the_lowest_energy_when_the_gap_is_large():
    tokens = torch.tensor([[0, 0], [1, 1], [2, 2]])
    log_q = torch.log_softmax(torch.tensor([[0.0, 0.0, 0.0, -50.0, -1e9]] * 2, dtype=torch.float64), -1)
    target = torch.full((V_REAL, V_REAL), 1e-30, dtype=torch.float64)
    target[1, 1] = 1.0
    c = two_position_candidates(tokens, log_q, TableAR(target, 1))
    gen = torch.Generator().manual_seed(0)
    assert {choose(c, {"ar": 1.0}, 1.0, gen).chosen for _ in range(50)} == {1}
    # with the weight negated the same candidate is never kept
    assert 1 not in {choose(c, {"ar": -1.0}, 1.0, gen).chosen for _ in range(50)}


def test_per_position_splits_the_decomposable_energy():
    den = TableDenoiser(random_joint(G5, 9))
    c = enumerated_candidates(den, S=1)
    for j in (0, 17, 63):
        split = per_position(c, {"ind": 1.5}, j)
        assert split.shape == (len(U),)
        assert split.sum() == pytest.approx(1.5 * float(ind_energy(c)[j]), abs=1e-9)
    # AR: every masked position is in U here, so the split sums to the AR energy
    target = torch.rand(V_REAL, V_REAL, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.1
    log_q = torch.log_softmax(torch.randn(2, V_REAL + 1, generator=torch.Generator().manual_seed(4)), -1)
    tokens = torch.tensor(list(itertools.product(range(V_REAL), repeat=2)))
    c2 = two_position_candidates(tokens, log_q, TableAR(target, 1))
    for j in (0, 5):
        assert per_position(c2, {"ar": 2.0}, j).sum() == pytest.approx(2.0 * float(ar_energy(c2)[j]), abs=1e-5)


def test_energy_registry():
    assert set(ENERGY_TERMS) == {"ar", "ind", "inv", "uni"}


# ---- the engine ----------------------------------------------------------------------------------
ENGINE_PROMPT = "once upon a time"


@pytest.fixture(scope="module")
def ar_scorer(denoiser):
    return load_ar_scorer("embedded", denoiser.vocab_size)


def engine_steps(denoiser, ar_scorer=None, **settings):
    config = DecodeConfig(**{"gen_length": 16, "steps": 4, "violations": False, **settings})
    return list(iter_steps(denoiser, denoiser.encode(ENGINE_PROMPT), config, ar_scorer))


def test_engine_energy_records(denoiser, ar_scorer):
    k, S = 4, 3
    steps = engine_steps(
        denoiser,
        ar_scorer,
        energies=(("ar", 1.0), ("uni", 0.5)),
        energy_candidates=k,
        energy_orders=S,
        energy_window=(0.0, 1.0),
        temperature=0.7,
        seed=2,
    )
    assert len(steps) == 4
    for r in steps:
        e = r.extras.to_json()["energy"]
        n = r.n_committed
        assert n == 4 and e["positions"] == r.committed.tolist()
        assert set(e["terms"]) == {"ar", "uni"}
        assert all(len(v) == k for v in e["terms"].values())
        assert len(e["total"]) == len(e["keep_probs"]) == k
        assert 0 <= e["chosen"] < k
        assert sum(e["keep_probs"]) == pytest.approx(1.0, abs=1e-3)
        total = np.array(e["terms"]["ar"]) + 0.5 * np.array(e["terms"]["uni"])
        assert np.allclose(e["total"], total, atol=2e-3)
        assert np.allclose(e["keep_probs"], torch.softmax(-torch.tensor(total), 0).numpy(), atol=2e-3)
        assert len(e["per_position"]) == n
        assert e["passes"] == {"denoiser": k * S * (n - 1), "ar": k}
        # the step's pass, the chain copies and the AR candidates
        assert r.forward_passes == 1 + k * S * (n - 1) + k
        assert "violations" not in r.extras.to_json()


def test_engine_energy_window_and_no_energies(denoiser):
    # window (0.4, 1]: with 16 positions in 4 steps the masked fraction is 1, .75, .5, .25
    steps = engine_steps(denoiser, energies=(("ind", 1.0),), energy_candidates=3, energy_window=(0.4, 1.0))
    assert ["energy" in r.extras.to_json() for r in steps] == [True, True, True, False]
    assert [r.forward_passes for r in steps] == [1 + 3 * 3, 1 + 3 * 3, 1 + 3 * 3, 1]
    plain = engine_steps(denoiser)
    assert all("energy" not in r.extras.to_json() and r.forward_passes == 1 for r in plain)


def test_engine_energy_with_violations_counts_every_pass(denoiser, ar_scorer):
    k = 2
    steps = engine_steps(
        denoiser, ar_scorer, energies=(("ar", 1.0),), energy_candidates=k, energy_window=(0.0, 1.0), violations=True
    )
    for r in steps:
        n = r.n_committed
        assert r.forward_passes == 1 + k + n  # step pass, AR candidates, the violation batch of n
        assert r.extras.to_json()["energy"]["passes"] == {"denoiser": 0, "ar": k}
        assert r.extras.to_json()["violations"]["positions"] == r.committed.tolist()
        assert r.extras.to_json()["violations"]["tokens"] == r.tokens.tolist()  # the kept candidate's tokens


def test_engine_commits_the_kept_candidate(denoiser, ar_scorer, monkeypatch):
    seen = []

    def spy(c, weights, tau, generator, greedy=False):
        choice = choose(c, weights, tau, generator, greedy)
        seen.append((c.x.clone(), c.masked.clone(), [p.clone() for p in c.positions], c.tokens.clone(), choice))
        return choice

    monkeypatch.setattr(engine, "choose", spy)
    k = 6
    steps = engine_steps(
        denoiser,
        ar_scorer,
        energies=(("ar", 1.0), ("ind", 1.0)),
        energy_candidates=k,
        energy_window=(0.0, 1.0),
        temperature=0.0,
    )
    assert len(seen) == len(steps) == 4
    differs = False
    mask = denoiser.mask_id
    for r, (x, masked, positions, tokens, choice) in zip(steps, seen):
        # T = 0: the rule has no random draw, so every candidate commits the same positions
        # with the next-best token assignments there; candidate 0 is the argmax (plain decoding).
        assert all(p.tolist() == r.committed.tolist() for p in positions)
        assert r.extras.to_json()["energy"]["chosen"] == choice.chosen
        assert tokens.shape == (k, 16)
        gen = x[0, x.shape[1] - 16 :]
        assert (x[:, x.shape[1] - 16 :] == gen).all()
        assert masked[0].tolist() == (gen == mask).tolist()  # the state before the commit
        free = masked[0]
        assert (tokens[:, ~free] == gen[~free]).all() and not (tokens[:, free] == mask).any()
        assert tokens[0, free].tolist() == r.argmax[free.numpy()].tolist()
        assert len({tuple(t) for t in tokens[:, r.committed].tolist()}) == k  # k different assignments
        assert r.tokens.tolist() == tokens[choice.chosen, r.committed].tolist()
        differs |= r.tokens.tolist() != r.argmax[r.committed].tolist()
    assert differs  # greedy run, but the energies kept a next-best assignment somewhere


def test_engine_energy_decode_completes_without_masks(denoiser, ar_scorer):
    config = DecodeConfig(
        gen_length=16,
        steps=8,
        energies=(("uni", 1.0),),
        energy_orders=2,
        energy_window=(0.0, 1.0),
        violations=False,
        seed=1,
    )
    result = run_decode(denoiser, denoiser.encode(ENGINE_PROMPT), config, ar_scorer=ar_scorer)
    assert result.status == "completed"
    assert denoiser.mask_id not in result.token_ids and len(result.token_ids) == 16


def test_energy_skips_a_step_whose_chain_is_too_long(denoiser):
    """Over energy_max_sequences the step keeps its own proposal, says why, and draws nothing:
    the run is token for token the run without energies."""
    settings = dict(temperature=1.0, seed=4)
    capped = engine_steps(
        denoiser, energies=(("uni", 1.0),), energy_window=(0.0, 1.0), energy_max_sequences=1, **settings
    )
    plain = engine_steps(denoiser, **settings)
    assert all("energy" not in r.extras.to_json() for r in plain)
    assert all("skipped" in r.extras.to_json()["energy"] for r in capped)
    assert [r.tokens.tolist() for r in capped] == [r.tokens.tolist() for r in plain]
    assert [r.forward_passes for r in capped] == [1] * 4


# ---- candidates from the strategy's own rule: candidate 0 is plain decoding ----------------------
PLAIN_STRATEGIES = sorted(name for name, spec in STRATEGIES.items() if spec.gate is None)
RULE_SETTINGS = dict(steps=8, threshold=0.7, seed=3, energies=(("uni", 1.0),), energy_window=(0.0, 1.0))


def step_commits(steps) -> list[tuple[list[int], list[int], list[int]]]:
    return [(r.committed.tolist(), r.tokens.tolist(), r.remasked.tolist()) for r in steps]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("strategy", PLAIN_STRATEGIES)
def test_one_candidate_is_plain_decoding(denoiser, strategy, temperature):
    settings = {**RULE_SETTINGS, "strategy": strategy, "temperature": temperature}
    plain = engine_steps(denoiser, **{k: v for k, v in settings.items() if k != "energies"})
    one = engine_steps(denoiser, energy_candidates=1, **settings)
    assert any(r.extras.energy_ran is not None for r in one)  # the energy stage did run
    assert all(r.extras.energy_ran is None for r in plain)
    assert step_commits(one) == step_commits(plain)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("strategy", PLAIN_STRATEGIES)
def test_candidate_zero_is_the_plain_choice(denoiser, monkeypatch, strategy, temperature):
    """k = 3 with the choice forced to candidate 0: the run is the plain run, and every step's
    candidate 0 commits exactly the plain step's positions and tokens; the other two differ."""
    seen = []

    def keep_first(c, weights, tau, generator, greedy=False):
        seen.append(([p.tolist() for p in c.positions], c.tokens.clone()))
        return replace(choose(c, weights, tau, generator, greedy), chosen=0)

    monkeypatch.setattr(engine, "choose", keep_first)
    settings = {**RULE_SETTINGS, "strategy": strategy, "temperature": temperature}
    forced = engine_steps(denoiser, energy_candidates=3, **settings)
    plain = engine_steps(denoiser, **{k: v for k, v in settings.items() if k != "energies"})
    assert step_commits(forced) == step_commits(plain)
    ran = [r for r in plain if r.n_committed]  # a step that commits nothing skips the energy stage
    assert len(seen) == len(ran) > 0
    others_differ = False
    for r, (positions, tokens) in zip(ran, seen):
        assert positions[0] == r.committed.tolist()
        assert tokens[0, r.committed].tolist() == r.tokens.tolist()
        assert tokens.shape[0] == 3
        others_differ |= any(
            positions[j] != positions[0] or not torch.equal(tokens[j, positions[j]], tokens[0, positions[0]])
            for j in (1, 2)
        )
    assert others_differ


def test_marginal_candidates_are_edlm_draws_of_one_commit_set(denoiser, monkeypatch):
    """energy_marginal_candidates: every candidate commits the plain rule's positions U, and
    the tokens at every masked position are draws from the product of marginals, exactly the
    draws of the step's stream (T = 0: neither x̂ nor low_confidence draws before them)."""
    seen = []

    def spy(c, weights, tau, generator, greedy=False):
        choice = choose(c, weights, tau, generator, greedy)
        seen.append((c, greedy, choice.chosen))
        return choice

    monkeypatch.setattr(engine, "choose", spy)
    k, seed = 4, 7
    steps = engine_steps(
        denoiser,
        energies=(("uni", 1.0),),
        energy_window=(0.0, 1.0),
        energy_candidates=k,
        energy_marginal_candidates=True,
        seed=seed,
    )
    assert len(seen) == len(steps) == 4
    mask = denoiser.mask_id
    drew_other = False
    for i, (r, (c, greedy, chosen)) in enumerate(zip(steps, seen)):
        assert not greedy  # importance sampling, not the greedy pick of the next-best assignments
        assert c.k == k and all(p.tolist() == r.committed.tolist() for p in c.positions)
        P = c.prompt_length
        masked = c.masked[0]
        assert all(torch.equal(m, masked) for m in c.masked)
        generator = torch.Generator().manual_seed(step_seed(seed, i, DEVICE_STREAM))
        expected = draw(c.log_q, masked, c.x[0, P:], k, generator)  # (k, G)
        assert torch.equal(c.tokens, expected)
        assert not (c.tokens[:, masked] == mask).any()
        assert r.tokens.tolist() == c.tokens[chosen, r.committed].tolist()
        drew_other |= bool((c.tokens[:, masked] != c.log_p[masked].argmax(-1)).any())
    assert drew_other  # draws, not the argmax


def test_next_best_is_the_brute_force_k_best():
    log_p = torch.log_softmax(torch.randn(3, 5, generator=torch.Generator().manual_seed(11), dtype=torch.float64), -1)

    def score(y):
        return float(sum(log_p[i, t] for i, t in enumerate(y)))

    every = sorted(itertools.product(range(5), repeat=3), key=score, reverse=True)
    for k in (1, 2, 7, 30, 125):
        rows = next_best(log_p, k)
        assert rows.dtype == torch.long and rows.shape == (k, 3)
        assert [tuple(row) for row in rows.tolist()] == every[:k], k
    assert next_best(log_p, 1).tolist() == [log_p.argmax(-1).tolist()]
    assert next_best(log_p, 500).shape == (125, 3)  # fewer exist
    assert next_best(log_p[:0], 4).shape == (1, 0)
    # a float32 input (the step's log_p) gives the same ranking
    assert torch.equal(next_best(log_p.float(), 20), next_best(log_p, 20))


def test_greedy_choose_keeps_candidate_zero_on_equal_energies():
    den = TableDenoiser(random_joint(G5, 12))
    log_p = den.step_log_p(STATE)

    def candidates(rows: torch.Tensor) -> Candidates:
        tokens = torch.tensor([2, 0, 0, 1, 0]).repeat(len(rows), 1)
        tokens[:, U] = rows
        return Candidates(
            x=ids_of(STATE),
            prompt_length=P,
            masked=torch.tensor(STATE) == MASK,
            positions=torch.tensor(U),
            tokens=tokens,
            log_q=log_p,
            log_p=log_p,
            log_probs=den.log_probs,
            orders=random_orders(len(U), 1, None, torch.device("cpu")),
        )

    best = next_best(log_p[U], 6)  # (6, 3) row 0 = the argmax: the highest Q
    # weight 0: every energy is 0; greedy keeps the target's best, log Q, which is candidate 0
    record = choose(candidates(best), {"uni": 0.0}, 1.0, None, greedy=True)
    assert record.total == [0.0] * 6 and record.chosen == 0 and record.keep_probs == [1.0] + [0.0] * 5
    # identical candidates: equal energies and equal Q, a tie: the first
    same = candidates(best[:1].repeat(5, 1))
    record = choose(same, {"uni": 1.0}, 1.0, None, greedy=True)
    assert len(set(record.total)) == 1 and record.chosen == 0
    # not simply "always 0": with the argmax listed last and equal energies, the last is kept
    assert choose(candidates(best.flip(0)), {"uni": 0.0}, 1.0, None, greedy=True).chosen == 5
    # with the energy on, greedy keeps argmax_j log P_chain(y_j) (= log Q - Uni-E with one order)
    c = candidates(best)
    record = choose(c, {"uni": 1.0}, 1.0, None, greedy=True)
    chain = torch.stack([ch[0].sum() for ch in c.chain])
    assert record.chosen == int(torch.argmax(chain))
