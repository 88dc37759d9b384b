"""XDLM: the posterior and the loss against their definitions, both samplers against references,
the engine's step rule on the embedded model and a tiny LLaDA, and the bad-input errors.

The definitions (arXiv 2602.01362; MzeroMiko/XDLM): the kernel pi(e) = k/N + (1 - k)[e = m] over
all N classes, mask included; alpha_t = 1 - (1 - eps) t, eps = 1e-3. Every reference here is written
independently of the code under test: explicit N x N transition matrices and Bayes' rule for
the posterior, a finite-difference KL for the loss, MDLM's absorbing step for k = 0, and a
line-by-line port of LLaDA-XDLM's `generate_xdm` (tests/reference_decoders.py) for xdlm_revise.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from reference_decoders import xdlm_generate

from explorer.adapters.loading import load_denoiser
from explorer.api import decode
from explorer.decoding.config import ConfigError
from explorer.decoding.resume import DEVICE_STREAM, ScheduleMark, step_seed
from explorer.decoding.xdlm import alpha, posterior, revision_allowance, step_times, x0_probs
from explorer.store.database import TrajectoryStore
from models.xdlm import EPS, masked_probs, noise, token_loss, xdlm_loss

REPO = Path(__file__).resolve().parents[1]
PROMPT = "once upon a time"


# ---- the definitions, written out -----------------------------------------------------------
def a_of(t: float) -> float:
    return 1.0 - (1.0 - 1e-3) * t


def stationary(N: int, m: int, k: float) -> np.ndarray:
    pi = np.full(N, k / N)
    pi[m] += 1.0 - k
    return pi


def bayes_posterior(p: np.ndarray, z: int, m: int, k: float, t: float, s: float) -> np.ndarray | None:
    """q(z_s | z_t = z, x = p) by Bayes' rule on the explicit transition matrix
    Q_{t|s} = alpha_{t|s} I + (1 - alpha_{t|s}) 1 pi^T (rows z_s, columns z_t); None when the
    evidence alpha_t p(z) + beta_t pi(z) is 0 (k = 0 and p(z) = 0 at a visible z)."""
    N = p.shape[0]
    a_t, a_s = a_of(t), a_of(s)
    pi = stationary(N, m, k)
    a_ts = a_t / a_s
    Q = a_ts * np.eye(N) + (1.0 - a_ts) * np.outer(np.ones(N), pi)
    prior_s = a_s * p + (1.0 - a_s) * pi  # q(z_s | x = p)
    evidence = a_t * p[z] + (1.0 - a_t) * pi[z]  # q(z_t = z | x = p)
    if evidence == 0.0:
        return None
    return Q[:, z] * prior_s / evidence


def random_law(rng: np.random.Generator, N: int, m: int, zeros: int = 0) -> np.ndarray:
    p = rng.dirichlet(np.ones(N))
    p[m] = 0.0
    if zeros:
        p[rng.choice([e for e in range(N) if e != m], size=zeros, replace=False)] = 0.0
    return p / p.sum()


# ---- 1. the posterior --------------------------------------------------------------------------
N6, M6 = 6, 2  # six classes, the mask in the middle
TIMES = [(1.0, 0.875), (0.5, 0.25), (0.3, 0.2999), (0.05, 0.01), step_times(1, 0), step_times(4, 4), step_times(8, 3)]


@pytest.mark.parametrize("k", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("t,s", TIMES)
def test_posterior_is_bayes_rule_on_the_transition_matrices(k, t, s):
    rng = np.random.default_rng(int(1000 * k + 10 * t))
    laws = [random_law(rng, N6, M6), random_law(rng, N6, M6, zeros=2), random_law(rng, N6, M6, zeros=4)]
    for p in laws:
        z = torch.arange(N6)  # every z_t, one row each
        rows = posterior(torch.tensor(p)[None].repeat(N6, 1), z, M6, k, alpha(t), alpha(s)).numpy()
        assert rows.shape == (N6, N6) and (rows >= 0).all()
        np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-12)
        for zt in range(N6):
            expected = bayes_posterior(p, zt, M6, k, t, s)
            if expected is None:  # k = 0, p(z) = 0: the visible token is carried over
                assert k == 0.0 and zt != M6 and p[zt] == 0.0
                expected = np.eye(N6)[zt]
            np.testing.assert_allclose(rows[zt], expected, rtol=1e-10, atol=1e-13, err_msg=f"z_t={zt} p={p}")
        if s == 0.0:  # the final step leaves no mask
            assert np.all(rows[:, M6] == 0.0)


def test_posterior_k0_carries_a_visible_token_over_when_the_model_gives_it_no_mass():
    p = torch.tensor([[0.0, 0.7, 0.0, 0.3, 0.0, 0.0]], dtype=torch.float64).repeat(3, 1)
    z = torch.tensor([0, 4, M6])  # two visible tokens with p(z) = 0, and the mask
    rows = posterior(p, z, M6, 0.0, alpha(0.6), alpha(0.4))
    assert torch.isfinite(rows).all()
    assert rows[0].tolist() == np.eye(N6)[0].tolist() and rows[1].tolist() == np.eye(N6)[4].tolist()
    np.testing.assert_allclose(rows[2].numpy(), bayes_posterior(p[0].numpy(), M6, M6, 0.0, 0.6, 0.4), rtol=1e-12)


def test_step_times_follow_the_reference_grid_and_end_at_zero():
    for T in (1, 2, 5):
        grid = np.linspace(1.0, 1e-5, T + 1)
        times = [step_times(T, j) for j in range(T + 1)]
        np.testing.assert_allclose([t for t, _ in times[:T]], grid[:T], rtol=1e-12)
        np.testing.assert_allclose([s for _, s in times[:T]], grid[1:], rtol=1e-12)
        assert times[T] == pytest.approx((1e-5, 0.0)) and times[T][1] == 0.0


def test_revision_allowance_is_generate_xdm_float32_floor():
    for k in (0.0, 0.1, 0.3, 0.5, 0.9):
        for n in range(0, 300, 7):
            ref = int((torch.tensor([n]) * k / (1 - k)).int()) if k > 0 else 0
            assert revision_allowance(n, k) == ref, (n, k)


def test_x0_probs_temperature_nucleus_and_mask():
    log_p = torch.log_softmax(torch.tensor([[2.0, float("-inf"), 1.0, 0.5, -1.0]]), -1)  # the mask (id 1) at -inf
    greedy = x0_probs(log_p, 0.0, 1.0, 1)
    assert greedy.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]
    full = x0_probs(log_p, 1.0, 1.0, 1)
    np.testing.assert_allclose(full.numpy(), log_p.exp().double().numpy(), rtol=1e-6)
    top = x0_probs(log_p, 1.0, 0.8, 1)  # p = .61 .22 .14 .03 over ids 0, 2, 3, 4: the nucleus is {0, 2}
    q = log_p.exp().double()[0]
    np.testing.assert_allclose(top[0].numpy(), [q[0] / (q[0] + q[2]), 0, q[2] / (q[0] + q[2]), 0, 0], rtol=1e-6)


# ---- 2. the loss ---------------------------------------------------------------------------------
def kl_rate(p: np.ndarray, x: int, z: int, m: int, k: float, t: float, delta: float) -> float:
    """KL(q(z_s | z_t, x) || p_theta(z_s | z_t)) / (alpha_s - alpha_t) at s = t - delta."""
    s = t - delta
    q = bayes_posterior(np.eye(p.shape[0])[x], z, m, k, t, s)
    model = bayes_posterior(p, z, m, k, t, s)
    support = q > 0
    kl = float(np.sum(q[support] * np.log(q[support] / model[support])))
    return kl / (a_of(s) - a_of(t))


@pytest.mark.parametrize("k", [0.1, 0.5, 1.0])
def test_token_loss_is_the_continuous_time_limit_of_the_posterior_kl(k):
    N, m = 6, 2
    rng = np.random.default_rng(7)
    cases = []
    for t in (0.95, 0.6, 0.2, 0.03):
        p = random_law(rng, N, m)
        for x, z in [(0, m), (3, m), (4, 4), (0, 0), (4, 5), (0, 3)]:  # masked, visible and right, visible and wrong
            cases.append((p, x, z, t))
    probs = torch.tensor(np.stack([c[0] for c in cases]))[:, None]  # (B, 1, N)
    z = torch.tensor([[c[2]] for c in cases])
    x = torch.tensor([[c[1]] for c in cases])
    t = torch.tensor([c[3] for c in cases], dtype=torch.float64)
    ours = token_loss(probs, z, x, t, k, m)[:, 0].numpy()
    for i, (p, xi, zi, ti) in enumerate(cases):
        d = 1e-5  # Richardson: the rate is h + c delta + O(delta^2)
        limit = 2 * kl_rate(p, xi, zi, m, k, ti, d) - kl_rate(p, xi, zi, m, k, ti, 2 * d)
        assert ours[i] == pytest.approx((1 - EPS) * limit, rel=2e-5, abs=1e-8), (k, xi, zi, ti)


def test_token_loss_at_k0_is_mdlm():
    N, m = 6, 2
    rng = np.random.default_rng(3)
    p = torch.tensor(np.stack([random_law(rng, N, m) for _ in range(4)]))[None]  # (1, 4, N)
    x = torch.tensor([[0, 3, 4, 5]])
    z = torch.tensor([[m, m, 4, 5]])  # two masked, two visible (= x: all the absorbing process allows)
    for t in (0.9, 0.4, 0.01):
        tt = torch.tensor([t], dtype=torch.float64)
        ours = token_loss(p, z, x, tt, 0.0, m)[0].numpy()
        p_x = p[0, [0, 1], [0, 3]].numpy()
        expected = -np.log(p_x) / (1 - a_of(t)) * (1 - EPS)
        np.testing.assert_allclose(ours[:2], expected, rtol=1e-12)
        assert ours[2:].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [0.0, 0.1])
def test_token_loss_stays_finite_when_the_model_gives_the_data_no_mass(dtype, k):
    """p(x) underflowing to 0 (a confident wrong model): no nan in the loss or its gradient.
    (It was nan at k = 0 on a visible z = x: log(f / tiny) overflowed to inf, times a weight 0.)"""
    m = 2
    logits = torch.tensor([[[0.0, 0.0, 0.0, 900.0, 0.0, 0.0]] * 4], dtype=dtype, requires_grad=True)
    x = torch.tensor([[0, 4, 0, 5]])
    z = torch.tensor([[0, 4, m, m]])  # visible (= x) and masked, each with p(x) = 0
    for t in (1e-3, 0.5, 1.0):
        loss = token_loss(masked_probs(logits, m).to(dtype), z, x, torch.tensor([t], dtype=dtype), k, m)
        assert torch.isfinite(loss).all(), (t, loss)
        if k == 0.0:
            assert loss[0, :2].tolist() == [0.0, 0.0]  # nothing to learn where the token is visible
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.isfinite(grad).all()


def test_noise_draws_the_marginal_law_and_never_noises_the_prompt():
    N, m, k, t = 6, 2, 0.3, 0.6
    gen = torch.Generator().manual_seed(0)
    for x in (0, 4):
        ids = torch.full((400, 60), x)
        clean = torch.zeros_like(ids, dtype=torch.bool)
        clean[:, :5] = True
        z = noise(ids, torch.full((400,), t), k, m, N, clean, gen)
        assert (z[:, :5] == x).all()
        n = z[:, 5:].numel()
        freq = torch.bincount(z[:, 5:].flatten(), minlength=N).double().numpy() / n
        a = a_of(t)
        expected = a * np.eye(N)[x] + (1 - a) * stationary(N, m, k)
        assert np.abs(freq - expected).max() < 5 * np.sqrt(0.25 / n), (freq, expected)  # five sigma


def test_masked_probs_puts_no_mass_on_the_mask():
    logits = torch.randn(2, 3, 5)
    logits[..., 1] = 50.0  # an untrained mask logit can be anything
    p = masked_probs(logits, 1)
    assert (p[..., 1] == 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3))
    keep = [0, 2, 3, 4]
    torch.testing.assert_close(p[..., keep], torch.softmax(logits[..., keep], -1))


class TableModel(torch.nn.Module):
    """A stand-in network: logits = a per-position table plus a term of the input token; records its inputs."""

    def __init__(self, L: int, V: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.config = SimpleNamespace(vocab_size=V)
        self.table = torch.randn(L, V, generator=gen)
        self.by_token = torch.randn(V, V, generator=gen)
        self.seen: list[torch.Tensor] = []

    def forward(self, z):
        self.seen.append(z.clone())
        return self.table[None] + self.by_token[z]


def test_xdlm_loss_is_the_mean_over_non_prompt_positions_and_never_noises_the_prompt():
    B, L, V, m, k = 8, 10, 7, 3, 0.2
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V - 1, (B, L), generator=gen)
    ids[ids >= m] += 1  # the data never holds the mask
    clean = torch.zeros(B, L, dtype=torch.bool)
    clean[:, :4] = True
    model = TableModel(L, V)
    loss = xdlm_loss(model, ids, m, k, clean, torch.Generator().manual_seed(5))
    (z,) = model.seen
    assert (z[clean] == ids[clean]).all() and (z[~clean] != ids[~clean]).any()
    # The same draws again: t from the same stream, then the loss by hand.
    replay = torch.Generator().manual_seed(5)
    u = torch.rand((), generator=replay)
    t = ((u + torch.arange(B) / B) % 1.0).clamp_min(1e-3)
    per_token = token_loss(masked_probs(model.table[None] + model.by_token[z], m), z, ids, t, k, m)
    assert float(loss) == pytest.approx(float(per_token[~clean].mean()), rel=1e-6)
    # What the model says at prompt positions does not matter; elsewhere it does.
    other = TableModel(L, V)
    other.table[:4] += 5 * torch.randn(4, V)
    assert float(xdlm_loss(other, ids, m, k, clean, torch.Generator().manual_seed(5))) == pytest.approx(float(loss))
    other.table[7] += 5
    other.table[7, 0] -= 9
    assert float(xdlm_loss(other, ids, m, k, clean, torch.Generator().manual_seed(5))) != pytest.approx(float(loss))
    with pytest.raises(ValueError, match=r"k must be in \[0, 1\]"):
        xdlm_loss(model, ids, m, 1.5, clean)


# ---- 3. the ancestral sampler at k = 0 is MDLM's ---------------------------------------------
class HandBuilt:
    """A test double of a denoiser: fixed logits that depend on the sequence (a per-position table
    plus the mean of a per-token term), on a 7-token vocabulary with the mask at id 2; a prompt
    is written as its ids ("0 3 4"). Records every input it sees."""

    name = "hand-built"
    mask_id = 2
    context_length = 40
    device = torch.device("cpu")
    V = 7

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.table = 2.0 * torch.randn(self.context_length, self.V, generator=gen)
        self.by_token = 3.0 * torch.randn(self.V, self.V, generator=gen)
        self.seen: list[torch.Tensor] = []

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        self.seen.append(ids.clone())
        context = self.by_token[ids].mean(1, keepdim=True)  # (B, 1, V)
        return self.table[None, : ids.shape[1]] + context

    def encode(self, text: str) -> list[int]:
        return [int(w) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))

    def token_text(self, token_id: int) -> str:
        return str(token_id)


def mdlm_ancestral(model, prompt, gen_length, steps, block_length, temperature, seed):
    """MDLM's ancestral sampler written out, driven by the engine's random draws: on the grid
    t_i = linspace(1, 1e-5, S + 1) plus a final step to t = 0, a masked position of the current
    block stays masked with probability (1 - alpha_s) / (1 - alpha_t), else takes a token drawn
    from p (softmax(logits / T), the argmax at T = 0); a visible token stays. The categorical is
    drawn as argmax(q / E), E ~ Exp(1), from the step's seeded stream, after the engine's draw of
    x̂ (T > 0). Returns the generated part after every step."""
    m, P = model.mask_id, len(prompt)
    x = torch.tensor([prompt + [m] * gen_length])
    S = steps // (gen_length // block_length)
    grid = np.linspace(1.0, 1e-5, S + 1)
    states, step = [], 0
    for start in range(0, gen_length, block_length):
        for j in range(S + 1):
            gen = torch.Generator().manual_seed(step_seed(seed, step, DEVICE_STREAM))
            logits = model.logits(x)[0, P:].double()  # (G, V)
            logits[:, m] = float("-inf")
            if temperature > 0:
                torch.rand(logits.shape, dtype=torch.float64, generator=gen)  # the engine's x̂ draw
                p = torch.softmax(logits / temperature, -1)
            else:
                p = torch.nn.functional.one_hot(logits.argmax(-1), model.V).double()
            t, s = grid[j], (grid[j + 1] if j < S else 0.0)
            a_t, a_s = a_of(t), a_of(s)
            exp_noise = -torch.log1p(-torch.rand(p.shape, dtype=torch.float64, generator=gen))
            new = x[0, P:].clone()
            for i in range(start, start + block_length):
                if x[0, P + i] != m:
                    continue  # visible: stays
                row = (a_s - a_t) / (1 - a_t) * p[i]
                row[m] = (1 - a_s) / (1 - a_t)
                new[i] = int((row / exp_noise[i]).argmax())
            x[0, P:] = new
            states.append(new.tolist())
            step += 1
    return states


def replay(steps, gen_length: int, mask_id: int) -> list[list[int]]:
    """The generated part after each step, rebuilt from the step records alone; checks that
    `previous` / `revised` say what each changed position held."""
    x = [mask_id] * gen_length
    out = []
    for rec in steps:
        assert [x[p] for p in rec.committed] == rec.previous.tolist()
        assert rec.revised.tolist() == [x[p] != mask_id for p in rec.committed]
        assert all(x[p] != mask_id for p in rec.remasked) and rec.remasked_tokens.tolist() == [
            x[p] for p in rec.remasked
        ]
        for p, tok in zip(rec.committed.tolist(), rec.tokens.tolist(), strict=True):
            assert tok != mask_id and tok != x[p]
            x[p] = tok
        for p in rec.remasked.tolist():
            x[p] = mask_id
        out.append(list(x))
    return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("gen_length,steps,block_length", [(12, 4, 12), (12, 6, 4), (16, 16, 8), (8, 1, 8)])
def test_ancestral_at_k0_is_mdlm_ancestral_with_the_same_noise(temperature, gen_length, steps, block_length):
    prompt = [0, 3, 4]
    for seed in range(3):
        model = HandBuilt(seed)
        out = decode(
            "0 3 4",
            model,
            gen_length=gen_length,
            steps=steps,
            block_length=block_length,
            strategy="xdlm_ancestral",
            xdlm_k=0.0,
            temperature=temperature,
            seed=seed,
        )
        reference = mdlm_ancestral(HandBuilt(seed), prompt, gen_length, steps, block_length, temperature, seed)
        ours = replay(out.steps, gen_length, model.mask_id)
        assert ours == reference, (seed, temperature)
        assert ours[-1] == out.token_ids and model.mask_id not in out.token_ids
        assert not any(rec.remasked.size or rec.n_revised for rec in out.steps)


def test_the_mdlm_comparison_can_fail():
    """One noise draw off (a different seed for the reference) and the runs differ."""
    model = HandBuilt(0)
    kw = dict(gen_length=16, steps=8, block_length=16, strategy="xdlm_ancestral", xdlm_k=0.0, temperature=1.0)
    out = decode("0 3 4", model, seed=0, **kw)
    reference = mdlm_ancestral(HandBuilt(0), [0, 3, 4], 16, 8, 16, 1.0, seed=1)
    assert replay(out.steps, 16, model.mask_id) != reference


# ---- 4. the engine on the embedded model -----------------------------------------------------
@pytest.fixture(scope="module")
def xdlm_model():
    return load_denoiser("embedded-xdlm")


class Recording:
    """The embedded model, recording the prompt part of every input it is given."""

    def __init__(self, inner, prompt_length: int) -> None:
        self.inner, self.P, self.prompts = inner, prompt_length, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def logits(self, ids):
        self.prompts.append(ids[:, : self.P].clone())
        return self.inner.logits(ids)


@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_ancestral_leaves_no_mask_runs_s_plus_one_steps_per_block_and_keeps_the_prompt(xdlm_model, T):
    prompt_ids = xdlm_model.encode(PROMPT)
    G = 32
    changes = {"revised": 0, "remasked": 0}
    settings = [(0.1, 1.0, None), (0.1, 0.0, None), (0.5, 1.0, 16), (1.0, 1.0, 8 if T % 4 == 0 else 16)]
    for k, temperature, block_length in settings:
        blocks = G // (block_length or G)
        if T % blocks:
            continue
        for seed in range(3):
            model = Recording(xdlm_model, len(prompt_ids))
            out = decode(
                PROMPT,
                model,
                gen_length=G,
                steps=T,
                block_length=block_length,
                strategy="xdlm_ancestral",
                xdlm_k=k,
                temperature=temperature,
                seed=seed,
                violations=seed == 0,
            )
            S = T // blocks
            assert xdlm_model.mask_id not in out.token_ids, (k, seed)
            assert len(out.steps) == blocks * (S + 1)
            assert [r.block for r in out.steps] == [b for b in range(blocks) for _ in range(S + 1)]
            marks = [r.extras.schedule for r in out.steps]
            assert [mk.step_in_block for mk in marks] == list(range(S + 1)) * blocks
            assert all(isinstance(mk, ScheduleMark) for mk in marks)
            block = G // blocks
            for r in out.steps:  # a step touches its own block only
                touched = np.concatenate([r.committed, r.remasked])
                assert ((touched >= r.block * block) & (touched < (r.block + 1) * block)).all()
            assert replay(out.steps, G, xdlm_model.mask_id)[-1] == out.token_ids
            assert all((p == torch.tensor(prompt_ids)).all() for p in model.prompts)  # every row of every pass
            changes["revised"] += sum(r.n_revised for r in out.steps)
            changes["remasked"] += sum(r.remasked.size for r in out.steps)
    if T >= 4:  # the runs did exercise the moves only XDLM has
        assert changes["revised"] > 0 and changes["remasked"] > 0, changes


def test_ancestral_and_revise_at_k0_never_revise_or_remask(xdlm_model):
    for strategy, T, block_length in [("xdlm_ancestral", 8, None), ("xdlm_ancestral", 8, 8), ("xdlm_revise", 8, 16)]:
        for seed in range(3):
            out = decode(
                PROMPT,
                xdlm_model,
                gen_length=32,
                steps=T,
                block_length=block_length,
                strategy=strategy,
                xdlm_k=0.0,
                temperature=1.0,
                seed=seed,
                violations=False,
            )
            assert not any(r.n_revised or r.remasked.size for r in out.steps)
            committed = np.concatenate([r.committed for r in out.steps])
            assert sorted(committed.tolist()) == list(range(32))  # every position once
            assert xdlm_model.mask_id not in out.token_ids


# ---- 5. xdlm_revise is LLaDA-XDLM's generate_xdm; both samplers on a tiny LLaDA ---------------
def engine_noise(seed: int, prompt_length: int):
    """The uniform draws of the engine's Gumbel-max x̂ at each step, laid out as generate_xdm
    draws them (the whole (1, P + G, V) row; the prompt's rows never matter)."""

    def noise(step: int, logits: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(step_seed(seed, step, DEVICE_STREAM))
        G, V = logits.shape[1] - prompt_length, logits.shape[2]
        draws = torch.rand((G, V), dtype=torch.float64, generator=gen)
        return torch.cat([torch.full((prompt_length, V), 0.5, dtype=torch.float64), draws])[None]

    return noise


def masked_logits(denoiser):
    """The logits the engine decodes with: the model's, the mask never a proposal."""

    def model(x):
        logits = denoiser.logits(x).clone()
        logits[..., denoiser.mask_id] = float("-inf")
        return logits

    return model


def check_revise_matches_generate_xdm(denoiser, prompt, gen_length, steps, block_length, k, temperature, seed):
    ours = decode(
        prompt,
        denoiser,
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        strategy="xdlm_revise",
        xdlm_k=k,
        temperature=temperature,
        seed=seed,
        violations=False,
    )
    ids = torch.tensor([ours.prompt_ids])
    reference = xdlm_generate(
        masked_logits(denoiser),
        ids,
        steps,
        gen_length,
        block_length,
        temperature=temperature,
        mask_id=denoiser.mask_id,
        k1=k,
        noise=engine_noise(seed, ids.shape[1]),
    )
    assert ours.token_ids == reference[0, ids.shape[1] :].tolist(), (prompt, gen_length, steps, block_length, k)
    assert len(ours.steps) == steps
    # The budget: through each step of a block, at most floor(unmasked x k / (1 - k)) revisions.
    S, G_block = steps // (gen_length // block_length), block_length
    counts = [G_block // S + (1 if j < G_block % S else 0) for j in range(S)]
    carried = 0  # steps that spent budget left over from earlier steps of their block
    for b in range(gen_length // block_length):
        recs = ours.steps[b * S : (b + 1) * S]
        made = np.cumsum([r.n_revised for r in recs])
        allowed = [0] + [revision_allowance(int(sum(counts[: j + 1])), k) for j in range(1, S)]
        assert (made <= allowed).all(), (made, allowed)
        carried += sum(recs[j].n_revised > allowed[j] - allowed[j - 1] for j in range(1, S))
    return np.array([sum(r.n_revised for r in ours.steps), carried])


REVISE_CASES = [(32, 8, 32), (32, 16, 8), (32, 8, 16), (24, 6, 24)]


@pytest.mark.parametrize("prompt", [PROMPT, "the dogs", "once upon a time there was a boy named leo . he"])
@pytest.mark.parametrize("gen_length,steps,block_length", REVISE_CASES)
def test_revise_matches_generate_xdm_on_the_embedded_model(xdlm_model, prompt, gen_length, steps, block_length):
    revised = np.zeros(2, int)
    for k, temperature, seed in [(0.1, 0.0, 0), (0.3, 0.0, 0), (0.5, 0.0, 0), (0.3, 1.0, 1), (0.5, 0.7, 2)]:
        revised += check_revise_matches_generate_xdm(
            xdlm_model, prompt, gen_length, steps, block_length, k, temperature, seed
        )
    assert revised[0] > 0 and revised[1] > 0, revised  # covered revisions, and budget carried over


def test_the_generate_xdm_comparison_can_fail(xdlm_model):
    """Other noise, another budget, or the published code's revisable prompt: the reference then
    disagrees with the engine (on "the dogs" generate_xdm itself rewrites two prompt tokens)."""
    prompt = "the dogs"
    settings = dict(gen_length=32, steps=8, strategy="xdlm_revise", xdlm_k=0.3, temperature=1.0, seed=2)
    ours = decode(prompt, xdlm_model, **settings)
    ids = torch.tensor([ours.prompt_ids])
    P = ids.shape[1]
    model = masked_logits(xdlm_model)
    same = xdlm_generate(model, ids, 8, 32, 32, 1.0, xdlm_model.mask_id, 0.3, engine_noise(2, P))
    assert ours.token_ids == same[0, P:].tolist()
    for k1, seed, freeze in [(0.3, 1, True), (0.1, 2, True), (0.3, 2, False)]:
        other = xdlm_generate(model, ids, 8, 32, 32, 1.0, xdlm_model.mask_id, k1, engine_noise(seed, P), freeze)
        assert other.tolist() != same.tolist(), (k1, seed, freeze)
    assert other[0, :P].tolist() != ids[0].tolist()  # the unfrozen reference revised the prompt


@pytest.fixture(scope="module")
def tiny_llada(tmp_path_factory):
    pytest.importorskip("transformers")
    import fixtures_hf as F

    from explorer.adapters.registry import parse_registry

    folder = F.build_llada(tmp_path_factory.mktemp("hf"))
    entry = {"name": "llada-tiny", "family": "llada", "path": str(folder), "device": "cpu", "trust_remote_code": True}
    yield load_denoiser("llada-tiny", registry=parse_registry({"models": [entry]}, source="test"))
    F.remove_dynamic_modules()


@pytest.fixture
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.usefixtures("_offline")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_revise_matches_generate_xdm_on_a_tiny_llada(tiny_llada):
    revised = np.zeros(2, int)
    for gen_length, steps, block_length, k, temperature, seed in [
        (16, 8, 16, 0.3, 0.0, 0),
        (16, 8, 8, 0.3, 0.0, 0),
        (16, 4, 8, 0.5, 1.0, 3),
        (12, 6, 12, 0.1, 0.8, 1),
    ]:
        revised += check_revise_matches_generate_xdm(
            tiny_llada, "she gave her apple", gen_length, steps, block_length, k, temperature, seed
        )
    assert revised[0] > 0, revised


@pytest.mark.usefixtures("_offline")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_ancestral_runs_on_a_tiny_llada(tiny_llada):
    for k, block_length, seed in [(0.1, 16, 0), (1.0, 8, 1)]:
        out = decode(
            "she gave her apple",
            tiny_llada,
            gen_length=16,
            steps=4,
            block_length=block_length,
            strategy="xdlm_ancestral",
            xdlm_k=k,
            temperature=1.0,
            seed=seed,
        )
        assert len(out.steps) == (16 // block_length) * (4 // (16 // block_length) + 1)
        assert tiny_llada.mask_id not in out.token_ids
        assert replay(out.steps, 16, tiny_llada.mask_id)[-1] == out.token_ids
        assert isinstance(out.text, str)


# ---- 6. the ancestral sampler's law converges on a small joint -----------------------------------
J_N, J_M, J_K = 4, 1, 0.1  # N = 4 classes with the mask at id 1; real tokens 0, 2, 3
J_REAL = [0, 2, 3]


def joint() -> np.ndarray:
    """A dependent law of (x_0, x_1) over the real tokens, as an N x N table (0 on the mask)."""
    J = np.array([[0.30, 0.05, 0.05], [0.02, 0.20, 0.08], [0.10, 0.05, 0.15]])
    P = np.zeros((J_N, J_N))
    P[np.ix_(J_REAL, J_REAL)] = J / J.sum()
    return P


def exact_denoiser(P: np.ndarray, t: float, z: tuple[int, int], leave_one_out: bool) -> list[np.ndarray]:
    """p(x_i | z_t) for i = 0, 1 under the joint: from the other position's noisy token only
    (leave-one-out), or from both (the true marginal, which also counts the position's own)."""
    a = a_of(t)
    Q = a * np.eye(J_N) + (1 - a) * np.outer(np.ones(J_N), stationary(J_N, J_M, J_K))  # q(z | x): [x, z]
    rows = []
    for i in (0, 1):
        w = (P if i == 0 else P.T) @ Q[:, z[1 - i]]
        if not leave_one_out:
            w = w * Q[:, z[i]]
        rows.append(w / w.sum())
    return rows


def sampler_law(P: np.ndarray, T: int, leave_one_out: bool) -> np.ndarray:
    """The exact law of xdlm_ancestral's output (T steps and the final one, from all-mask)."""
    states = [(a, b) for a in range(J_N) for b in range(J_N)]
    law = np.zeros((J_N, J_N))
    law[J_M, J_M] = 1.0
    for j in range(T + 1):
        t, s = step_times(T, j)
        p = torch.tensor(np.array([r for z in states for r in exact_denoiser(P, t, z, leave_one_out)]))
        z = torch.tensor([zi for z in states for zi in z])
        rows = posterior(p, z, J_M, J_K, alpha(t), alpha(s)).numpy()
        law = sum(law[a, b] * np.outer(rows[2 * n], rows[2 * n + 1]) for n, (a, b) in enumerate(states))
    return law


def test_ancestral_law_converges_to_the_joint_with_a_leave_one_out_denoiser():
    P = joint()
    tv = {T: 0.5 * np.abs(sampler_law(P, T, True) - P).sum() for T in (2, 8, 32, 128)}
    assert tv[2] > tv[8] > tv[32] > tv[128], tv
    assert tv[128] < 0.005 and tv[32] / tv[128] > 3, tv  # ~ 0.28 / T
    # The true marginal counts the position's own noisy token twice in the closed form: it levels off.
    plateau = 0.5 * np.abs(sampler_law(P, 128, False) - P).sum()
    assert plateau > 0.03 > 10 * tv[128], plateau


# ---- bad input: one-line errors naming the valid range, nothing stored -------------------------
def runs_in(path: Path) -> int:
    if not path.exists():
        return 0
    con = sqlite3.connect(path)
    try:
        if not con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='runs'").fetchall():
            return 0
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        con.close()


class NoMask(HandBuilt):
    mask_id = None


class MaskOutside(HandBuilt):
    mask_id = 9
    vocab_size = 7


@pytest.mark.parametrize(
    "model,settings,message",
    [
        ("xdlm", {"xdlm_k": 1.5}, r"^xdlm-k 1\.5 is out of range; valid: 0\.\.1$"),
        ("xdlm", {"xdlm_k": -0.1}, r"^xdlm-k -0\.1 is out of range; valid: 0\.\.1$"),
        ("xdlm", {"xdlm_k": float("nan")}, r"^xdlm-k must be a finite number, got nan$"),
        ("xdlm", {"xdlm_top_p": 0.0}, r"^xdlm-top-p 0\.0 is out of range; valid: \(0, 1\]$"),
        ("xdlm", {"strategy": "xdlm_revise", "xdlm_k": 1.0}, r"^xdlm-k 1\.0 with xdlm_revise: .*valid: \[0, 1\)"),
        ("xdlm", {"steps": 33}, r"^steps 33 is out of range; valid: 1\.\.32 \(the generation length\)$"),
        ("nomask", {}, r"^model 'hand-built' has no mask token \(mask_id None\); strategy xdlm_ancestral .*mask_id"),
        ("outside", {}, r"^model 'hand-built': mask id 9 is outside its vocabulary \(0\.\.6\); strategy xdlm_anc"),
    ],
)
def test_bad_input_is_a_config_error_and_nothing_is_stored(xdlm_model, tmp_path, model, settings, message):
    models = {"xdlm": xdlm_model, "nomask": NoMask(), "outside": MaskOutside()}
    prompt = PROMPT if model == "xdlm" else "0 3 4"
    store = TrajectoryStore(f"sqlite:///{tmp_path}/runs.db")
    config = {"gen_length": 32, "steps": 8, "strategy": "xdlm_ancestral"} | settings
    with pytest.raises(ConfigError, match=message) as info:
        decode(prompt, models[model], store=store, **config)
    assert "\n" not in str(info.value)
    assert store.count_runs() == 0


def test_k1_is_fine_for_the_ancestral_sampler(xdlm_model):
    out = decode(PROMPT, xdlm_model, gen_length=16, steps=4, strategy="xdlm_ancestral", xdlm_k=1.0, violations=False)
    assert xdlm_model.mask_id not in out.token_ids


def test_a_masked_lm_without_a_mask_token_is_refused_at_load(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import fixtures_hf as F
    from transformers import AutoTokenizer

    from explorer.adapters.errors import ModelLoadError
    from explorer.adapters.registry import parse_registry

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = F.build_bert(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.mask_token = None
    tokenizer.save_pretrained(folder)
    entry = {"name": "bert-no-mask", "family": "masked_lm", "path": str(folder), "device": "cpu"}
    registry = parse_registry({"models": [entry]}, source="test")
    message = r"^model 'bert-no-mask': the tokenizer has no mask token; set mask_id in the operator configuration$"
    with pytest.raises(ModelLoadError, match=message):
        decode(PROMPT, "bert-no-mask", registry=registry, strategy="xdlm_ancestral", gen_length=8, steps=4)


CLI_BAD = {
    "k_above_one": (["--xdlm-k", "1.5"], ["xdlm-k", "1.5", "0..1"]),
    "k_one_revise": (["--strategy", "xdlm_revise", "--xdlm-k", "1"], ["xdlm-k", "xdlm_revise", "[0, 1)"]),
}  # (steps > gen-length: tests/test_cli.py; the API test above with an XDLM strategy)


def test_cli_bad_input_is_one_error_line_and_nothing_stored(tmp_path):
    env = {**__import__("os").environ, "EXPLORER_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(REPO)
    env.pop("EXPLORER_DB_URL", None)

    def run(name: str, extra: list[str]):
        args = ["decode", "--prompt", PROMPT, "--model", "embedded-xdlm", "--strategy", "xdlm_ancestral"]
        args += ["--gen-length", "32", "--steps", "8", *extra, "--db", f"sqlite:///{tmp_path / name}.db"]
        return subprocess.run(
            [sys.executable, "-m", "explorer", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    with ThreadPoolExecutor(len(CLI_BAD)) as pool:
        procs = dict(zip(CLI_BAD, pool.map(run, CLI_BAD, [extra for extra, _ in CLI_BAD.values()]), strict=True))
    for name, proc in procs.items():
        assert proc.returncode == 2 and proc.stdout == "", (name, proc.stderr)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, proc.stderr)
        for word in CLI_BAD[name][1]:
            assert word in lines[0], (name, word, lines[0])
        assert runs_in(tmp_path / f"{name}.db") == 0
