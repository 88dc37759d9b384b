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
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import torch

from explorer.decoding.jsonvalues import as_array, as_int, as_str, rounded, same_length
from explorer.decoding.knobs import Knob
from explorer.decoding.protocols import ARLogProbFn, LogProbFn


@dataclass
class PassCount:
    """Extra sequence forwards an energy step ran: the denoiser's chain rows, the AR scorer's rows."""

    denoiser: int = 0
    ar: int = 0


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
    passes: PassCount = field(default_factory=PassCount)  # extra sequences run

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
        ids[:, self.prompt_length :] = self.tokens
        self.passes.ar += self.k
        # The scorer may live on another device than the denoiser: bring its result here.
        return self.ar_log_probs(ids)[:, self.prompt_length :].double().to(self.x.device)


def draw(
    log_q: torch.Tensor, masked: torch.Tensor, state: torch.Tensor, k: int, generator: torch.Generator | None
) -> torch.Tensor:
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
    c.passes.denoiser += seqs.shape[0]
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


@dataclass(frozen=True)
class EnergyTerm:
    """A registry entry: the term, its label in the UI, what it measures, where it comes from."""

    name: str
    energy: Callable[[Candidates], torch.Tensor]  # (k,) one value per candidate
    label: str
    help: str
    paper: str


_UNI_E = "this project's formulation of Uni-E (2026)"
ENERGY_TERMS: dict[str, EnergyTerm] = {
    term.name: term
    for term in (
        EnergyTerm(
            "ar",
            ar_energy,
            "ar (EDLM)",
            "how much less likely an autoregressive model finds the text than the "
            "marginals did; pulls toward fluent text (k AR passes per step)",
            "EDLM (Xu et al. 2025)",
        ),
        EnergyTerm(
            "ind",
            ind_energy,
            "ind (Ind-E)",
            "log Q − log P_chain: how far the independent per-position draw is "
            "from the model's own left-to-right chain over the committed tokens",
            _UNI_E,
        ),
        EnergyTerm(
            "inv",
            inv_energy,
            "inv (Inv-E)",
            "how much the model's probability of the committed tokens depends on "
            "the order they are revealed in (S random orders; 0 when S = 1)",
            _UNI_E,
        ),
        EnergyTerm(
            "uni",
            uni_energy,
            "uni (Uni-E)",
            "Ind-E + Inv-E: exact, uses only the diffusion model (with S = 1 it equals Ind-E)",
            _UNI_E,
        ),
    )
}

# The energy stage's knobs (any term): how many candidates, orders, the keep temperature, the cap.
ENERGY_KNOBS: tuple[Knob, ...] = (
    Knob(
        "energy_candidates",
        int,
        4,
        "candidates k drawn per step",
        label="Candidates k",
        low=1,
        high=64,
        cli="--candidates",
    ),
    Knob(
        "energy_orders",
        int,
        1,
        "orders S of Inv-E / Uni-E (1 = the deterministic left-to-right chain)",
        label="Orders S (inv, uni)",
        low=1,
        high=64,
    ),
    Knob(
        "energy_tau",
        float,
        1.0,
        "keep candidate j with probability softmax(-E / tau)",
        label="τ",
        low=0.0,
        low_open=True,
    ),
    Knob(
        "energy_max_sequences",
        int,
        4096,
        "a step whose chain would need more sequences, k S (n - 1), keeps its own proposal and says why",
        label="max chain sequences",
        low=1,
        high=2**20,
        in_form=False,
    ),
)


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
class EnergyRecord:
    """A step's energies as kept with the step: every candidate's terms, the weighted total,
    the keep probabilities, the kept one and its energy per committed position."""

    chosen: int
    terms: dict[str, list[float]]  # term -> (k,) values
    total: list[float]  # (k,) weighted sum
    keep_probs: list[float]  # (k,) softmax(-total / tau)
    per_position: list[float]  # (n,) the kept candidate's decomposable energy at U
    positions: list[int]  # (n,) U, the committed set
    passes: PassCount

    def kept(self) -> EnergyRecord:
        """This record as the store keeps it (4 decimals), so live and stored views agree."""
        return replace(
            self,
            terms={k: rounded(v) for k, v in self.terms.items()},
            total=rounded(self.total),
            keep_probs=rounded(self.keep_probs),
            per_position=rounded(self.per_position),
        )

    def to_json(self) -> dict:
        return {
            "chosen": self.chosen,
            "terms": {k: rounded(v) for k, v in self.terms.items()},
            "total": rounded(self.total),
            "keep_probs": rounded(self.keep_probs),
            "per_position": rounded(self.per_position),
            "positions": list(self.positions),
            "passes": {"denoiser": self.passes.denoiser, "ar": self.passes.ar},
        }

    @classmethod
    def from_json(cls, data: dict) -> EnergyRecord:
        """Read a stored record back; ValueError names what is malformed."""
        try:
            total = as_array(data["total"], np.float64, 1).tolist()
            k = len(total)
            terms = data["terms"]
            if not isinstance(terms, dict) or not all(isinstance(name, str) for name in terms):
                raise ValueError(f"terms must map names to lists, got {terms!r:.40}")
            terms = {name: as_array(v, np.float64, 1).tolist() for name, v in terms.items()}
            keep = as_array(data["keep_probs"], np.float64, 1).tolist()
            per_position = as_array(data["per_position"], np.float64, 1).tolist()
            positions = as_array(data["positions"], np.int64, 1).tolist()
            same_length(k, keep_probs=keep, **{f"terms[{name!r}]": v for name, v in terms.items()})
            same_length(len(positions), per_position=per_position)
            chosen = as_int(data["chosen"])
            if not 0 <= chosen < k:
                raise ValueError(f"chosen {chosen} is not one of the {k} candidates")
            passes = data["passes"]
            if not isinstance(passes, dict):
                raise ValueError(f"passes must be an object, got {passes!r:.40}")
            return cls(
                chosen,
                terms,
                total,
                keep,
                per_position,
                positions,
                PassCount(as_int(passes["denoiser"]), as_int(passes["ar"])),
            )
        except KeyError as exc:
            raise ValueError(f"the field {exc.args[0]!r} is missing") from None


@dataclass(frozen=True)
class EnergySkipped:
    """A step inside the window whose chain would have been too large: it kept its own proposal."""

    reason: str

    def to_json(self) -> dict:
        return {"skipped": self.reason}


def energy_from_json(data: object) -> EnergyRecord | EnergySkipped:
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {data!r:.40}")
    if "skipped" in data:
        return EnergySkipped(as_str(data["skipped"]))
    return EnergyRecord.from_json(data)


def keep_probabilities(energies: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax(-E / tau): the importance weights of the candidates (note the minus sign)."""
    return torch.softmax(-energies.double() / tau, dim=0)


def choose(c: Candidates, weights: dict[str, float], tau: float, generator: torch.Generator | None) -> EnergyRecord:
    """Score every candidate with the weighted terms and keep one by importance sampling.
    The record's `passes` count the extra sequences run so far (the caller adds CFG's copies)."""
    terms = {name: ENERGY_TERMS[name].energy(c) for name in weights}  # each (k,)
    total = sum(w * terms[name] for name, w in weights.items())  # (k,)
    probs = keep_probabilities(total, tau)
    j = int(torch.multinomial(probs.float(), 1, generator=generator).item())
    return EnergyRecord(
        j,
        {k: v.tolist() for k, v in terms.items()},
        total.tolist(),
        probs.tolist(),
        per_position(c, weights, j).tolist(),
        c.positions.tolist(),
        PassCount(**vars(c.passes)),
    )
