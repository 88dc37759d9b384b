"""Energies: which of k candidate assignments a step keeps (DESIGN 3.2).

k candidates are drawn from the product of marginals Q(y) = prod_i q_i(y_i) over the masked
positions; each gets a weighted sum of energy terms, and candidate j is kept with probability
softmax_j(-E_j / tau): importance sampling toward Q * exp(-E). Terms (registry `ENERGY_TERMS`):

- `ar`  (EDLM): E = -log p_AR(generation | prompt) + sum_{i masked} log q_i(y_i), so that
        Q * exp(-E) is the AR likelihood. Uses the full candidate (every masked position).
- `ind` (Ind-E): log Q(y_U) - log P_chain(y_U), P_chain the denoiser's own left-to-right
        chain over the committed set U: Q * exp(-Ind-E) = P_chain, normalised exactly.
- `inv` (Inv-E): log P_chain(y_U) - logmeanexp_s log P_pi_s(y_U) over S random orders.
- `uni` (Uni-E) = Ind-E + Inv-E = log Q(y_U) - log P_bar(y_U). With one order (the default)
        P_bar = P_chain, so Uni-E = Ind-E and Inv-E = 0: exact, deterministic, no sampling.

The Ind-E / Inv-E / Uni-E formulas are this project's own exact formulation of the idea of the
Uni-E paper ("Unified Energy for Invariant and Independent Decoding in Diffusion Language
Models", 2026), whose full text we do not have.

Pitfalls of the published EDLM sampler avoided here: weights are exp(-E) (not exp(+E)); every
term uses log-probabilities; candidates of a batch are laid out with `repeat_interleave`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from explorer.violations import LogProbFn

# ids (B, L) -> (B, L): log p(ids[t] | ids[<t]) at t >= 1 (entry 0 unused), from an AR model.
ARLogProbFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Candidates:
    """One step's k candidates and everything the terms share (computed once, lazily).

    positions are the committed set U (generated-part indices, ascending); tokens (k, G) a full
    proposal per candidate: drawn tokens at every masked position, the state elsewhere."""

    x: torch.Tensor  # (1, L) the state before the commit
    prompt_length: int
    masked: torch.Tensor  # (G,) bool, before the commit
    positions: torch.Tensor  # (n,) int64 U
    tokens: torch.Tensor  # (k, G) int64
    log_q: torch.Tensor  # (G, V) log proposal marginals (what the candidates were drawn from)
    log_p: torch.Tensor  # (G, V) the denoiser's log-probabilities this step (temperature 1)
    log_probs: LogProbFn  # the denoiser, for the chain passes
    orders: torch.Tensor  # (S, n) permutations of range(n); row 0 = left to right
    ar_log_probs: ARLogProbFn | None = None
    passes: dict = field(default_factory=lambda: {"denoiser": 0, "ar": 0})  # extra sequences run

    @property
    def k(self) -> int:
        return self.tokens.shape[0]

    @cached_property
    def log_q_each(self) -> torch.Tensor:
        """(k, G) log q_i(y_i) of each candidate's token at every position (0 where unmasked)."""
        lq = self.log_q.gather(-1, self.tokens.T).T  # (k, G)
        return torch.where(self.masked, lq, torch.zeros_like(lq)).double()

    @cached_property
    def chain(self) -> torch.Tensor:
        """(k, S, n): log p(y_{pi(m)} | x + y_{pi(<m)}) along each order, indexed by order rank m."""
        return chain_log_probs(self)

    @cached_property
    def ar_log_p(self) -> torch.Tensor:
        """(k, G) log p_AR(y_t | y_<t) of each candidate's generated tokens: one batched AR pass."""
        if self.ar_log_probs is None:
            raise ValueError("the AR energy needs an AR scorer; none is configured for this model")
        ids = self.x.expand(self.k, -1).clone()
        ids[:, self.prompt_length:] = self.tokens
        self.passes["ar"] += self.k
        # The scorer may live on another device than the denoiser: bring its result here.
        return self.ar_log_probs(ids)[:, self.prompt_length:].double().to(self.x.device)


def draw(log_q: torch.Tensor, masked: torch.Tensor, state: torch.Tensor, k: int,
         generator: torch.Generator | None) -> torch.Tensor:
    """(k, G): k independent draws from the product of marginals at the masked positions."""
    probs = log_q.exp()  # (G, V)
    draws = torch.multinomial(probs, k, replacement=True, generator=generator).T  # (k, G)
    return torch.where(masked, draws, state.expand(k, -1))


def chain_log_probs(c: Candidates) -> torch.Tensor:
    """The chain terms of every candidate along every order, from batched passes.

    Rank 0 of an order is the step's own pass (nothing revealed); rank m >= 1 needs the state
    with the first m tokens of the order revealed: k * S * (n - 1) sequences in all."""
    k, (S, n) = c.k, c.orders.shape
    y_u = c.tokens[:, c.positions]  # (k, n)
    first = c.log_p[c.positions].gather(-1, y_u.T).T.double()  # (k, n) nothing revealed
    out = first[:, None, :].expand(k, S, n).gather(-1, c.orders.expand(k, S, n)).clone()  # (k, S, n)
    if n < 2:
        return out
    # revealed[s, m, j]: is U-member j revealed before rank m of order s (rank of j < m)?
    rank = torch.argsort(c.orders, dim=1)  # (S, n) rank of each member in each order
    m = torch.arange(1, n, device=rank.device)
    revealed = rank[:, None, :] < m[None, :, None]  # (S, n-1, n)
    target = c.orders[:, 1:]  # (S, n-1) the member read at rank m
    G0 = c.prompt_length
    # Layout: candidate-major with repeat_interleave, so row r belongs to candidate r // (S(n-1)).
    per_cand = S * (n - 1)
    seqs = c.x.expand(k * per_cand, -1).clone()  # (k*S*(n-1), L) the state, U still masked
    reveal = revealed.reshape(per_cand, n).repeat(k, 1)  # (k*S*(n-1), n)
    cand_tokens = y_u.repeat_interleave(per_cand, dim=0)  # (k*S*(n-1), n)
    cols = G0 + c.positions  # (n,)
    seqs[:, cols] = torch.where(reveal, cand_tokens, seqs[:, cols])
    read_pos = c.positions[target.reshape(-1)].repeat(k)  # (rows,) generated index to read
    read_tok = cand_tokens.gather(1, target.reshape(-1).repeat(k)[:, None]).squeeze(1)  # (rows,)
    lp = c.log_probs(seqs, read_pos[:, None])[:, 0]  # (rows, V)
    values = lp.gather(-1, read_tok[:, None]).squeeze(-1)  # (rows,)
    c.passes["denoiser"] += seqs.shape[0]
    out[:, :, 1:] = values.double().reshape(k, S, n - 1)
    return out


def log_q_u(c: Candidates) -> torch.Tensor:
    """(k,) log Q(y_U): the proposal probability of each candidate on the committed set."""
    return c.log_q_each[:, c.positions].sum(-1)


def ind_energy(c: Candidates) -> torch.Tensor:
    """Ind-E = log Q(y_U) - log P_chain(y_U), left-to-right chain (order 0)."""
    return log_q_u(c) - c.chain[:, 0].sum(-1)


def inv_energy(c: Candidates) -> torch.Tensor:
    """Inv-E = log P_chain(y_U) - logmeanexp_s log P_pi_s(y_U); 0 with a single order."""
    per_order = c.chain.sum(-1)  # (k, S)
    log_bar = torch.logsumexp(per_order, dim=1) - math.log(per_order.shape[1])
    return per_order[:, 0] - log_bar


def uni_energy(c: Candidates) -> torch.Tensor:
    """Uni-E = Ind-E + Inv-E = log Q(y_U) - log P_bar(y_U)."""
    return ind_energy(c) + inv_energy(c)


def ar_energy(c: Candidates) -> torch.Tensor:
    """EDLM: -log p_AR(generation | prompt) + sum over masked i of log q_i(y_i)."""
    return -c.ar_log_p.sum(-1) + c.log_q_each.sum(-1)


ENERGY_TERMS: dict[str, Callable[[Candidates], torch.Tensor]] = {
    "ar": ar_energy,
    "ind": ind_energy,
    "inv": inv_energy,
    "uni": uni_energy,
}


def per_position(c: Candidates, weights: dict[str, float], j: int) -> np.ndarray:
    """(n,) the kept candidate's energy split over the committed positions, for the heatmap.

    The left-to-right chain (`ind`, and `uni` with one order) is a sum over the committed
    positions. `ar` is a sum over every generated position, of which only the committed ones'
    terms are shown. `inv` (and the S-order part of `uni`) is not a sum and is left out."""
    log_q = c.log_q_each[j, c.positions]  # (n,)
    out = torch.zeros_like(log_q)
    if "ar" in weights:
        out = out + weights["ar"] * (log_q - c.ar_log_p[j, c.positions])
    for name in ("ind", "uni"):
        if name in weights:  # order 0 is left to right: rank m is member m
            out = out + weights[name] * (log_q - c.chain[j, 0])
    return out.cpu().numpy()


def random_orders(n: int, S: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(S, n): row 0 the left-to-right order over U, rows 1.. uniform random permutations.

    `generator` is a CPU generator (permutations are drawn on the host and moved)."""
    rows = [torch.arange(n)] + [torch.randperm(n, generator=generator) for _ in range(S - 1)]
    return torch.stack(rows).to(device)


@dataclass(frozen=True)
class EnergyChoice:
    chosen: int
    terms: dict[str, list[float]]  # term -> (k,) values
    total: list[float]  # (k,) weighted sum
    keep_probs: list[float]  # (k,) softmax(-total / tau)
    per_position: list[float]  # (n,) the kept candidate's decomposable energy at U
    passes: dict

    def to_json(self) -> dict:
        r = lambda v: [round(float(a), 4) + 0.0 for a in v]  # noqa: E731  (+ 0.0: no -0.0)
        return {"chosen": self.chosen, "terms": {k: r(v) for k, v in self.terms.items()},
                "total": r(self.total), "keep_probs": r(self.keep_probs),
                "per_position": r(self.per_position), "passes": dict(self.passes)}


def keep_probabilities(energies: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax(-E / tau): the importance weights of the candidates (note the minus sign)."""
    return torch.softmax(-energies.double() / tau, dim=0)


def choose(c: Candidates, weights: dict[str, float], tau: float,
           generator: torch.Generator | None) -> EnergyChoice:
    """Score every candidate with the weighted terms and keep one by importance sampling."""
    terms = {name: ENERGY_TERMS[name](c) for name in weights}  # each (k,)
    total = sum(w * terms[name] for name, w in weights.items())  # (k,)
    probs = keep_probabilities(total, tau)
    j = int(torch.multinomial(probs.float(), 1, generator=generator).item())
    return EnergyChoice(j, {k: v.tolist() for k, v in terms.items()}, total.tolist(), probs.tolist(),
                        per_position(c, weights, j).tolist(), dict(c.passes))
