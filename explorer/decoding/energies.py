"""Energies: which of k candidate assignments a step keeps (DESIGN 3.2).

A step has k candidate commits. By default they come from the strategy's own rule: candidate 0
is what plain decoding commits (so k = 1 is plain decoding, token for token) and the others are
the same rule run with independent random draws (at T = 0 the next-best token assignments of
the same positions, `next_best`); each candidate has its own committed set U. With
`energy_marginal_candidates` they are instead independent draws from the product of marginals
Q(y) = prod_i q_i(y_i) at every masked position, EDLM's proposal, which loses the confidence
ordering (measured: it hurts at one token per step). Each candidate gets a weighted sum of
energy terms, and candidate j is kept with probability softmax_j(-E_j / tau): importance sampling
toward Q * exp(-E). With the rule's candidates the weights still use the per-position proposal
Q at the candidate's own U (the tokens are drawn from it); the rule's choice of U itself (e.g.
the most confident of the draws) is not in the weights, so the keep step is a reweighting by
the energy, not exact importance sampling toward the target. Terms (registry `ENERGY_TERMS`):

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

import heapq
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

    Per candidate j: its committed set U_j (generated-part indices, ascending), a full proposal
    tokens[j] (its tokens at every masked position, the state elsewhere) and the state before
    the commit with U_j masked, x[j]. Candidates that share U (the marginal draws) may give one
    (1, L) state, one (G,) mask, one (n,) U and one (S, n) orders for all."""

    x: torch.Tensor  # (k, L) or (1, L): the state before the commit, the candidate's U masked
    prompt_length: int
    masked: torch.Tensor  # (k, G) or (G,) bool: masked before the commit
    positions: list[torch.Tensor] | torch.Tensor  # per candidate (n_j,) int64 U_j, or one (n,) for all
    tokens: torch.Tensor  # (k, G) int64
    log_q: torch.Tensor  # (G, V) log per-position proposal (what the candidates' tokens were drawn from)
    log_p: torch.Tensor  # (G, V) the denoiser's log-probabilities this step (temperature 1)
    log_probs: LogProbFn  # the denoiser, for the chain passes
    orders: list[torch.Tensor] | torch.Tensor  # per candidate (S, n_j) permutations; row 0 = left to right
    ar_log_probs: ARLogProbFn | None = None
    passes: PassCount = field(default_factory=PassCount)  # extra sequences run

    def __post_init__(self) -> None:
        k = self.tokens.shape[0]
        if isinstance(self.positions, torch.Tensor):
            self.positions = [self.positions] * k
        if isinstance(self.orders, torch.Tensor):
            self.orders = [self.orders] * k
        self.x = self.x.expand(k, -1)
        self.masked = self.masked.expand(k, -1)

    @property
    def k(self) -> int:
        return self.tokens.shape[0]

    @cached_property
    def log_q_each(self) -> torch.Tensor:
        """(k, G) log q_i(y_i) of each candidate's token at every position (0 where unmasked)."""
        lq = self.log_q.gather(-1, self.tokens.T).T  # (k, G)
        return torch.where(self.masked, lq, torch.zeros_like(lq)).double()

    @cached_property
    def chain(self) -> list[torch.Tensor]:
        """Per candidate (S, n_j): log p(y_{pi(m)} | x + y_{pi(<m)}) along each order, by rank m."""
        return chain_log_probs(self)

    @cached_property
    def ar_log_p(self) -> torch.Tensor:
        """(k, G) log p_AR(y_t | y_<t) of each candidate's generated tokens: one batched AR pass."""
        if self.ar_log_probs is None:
            raise ValueError("the AR energy needs an AR scorer; none is configured for this model")
        ids = self.x.clone()
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


def next_best(log_p: torch.Tensor, k: int) -> torch.Tensor:
    """(k', n): the k most probable joint assignments of n positions under the product of
    their marginals log_p (n, V), best first (row 0 = the argmax everywhere); k' <= k when
    fewer exist. Best-first search over rank vectors (the exact k-best of a product)."""
    n = log_p.shape[0]
    if n == 0:
        return torch.zeros((1, 0), dtype=torch.long, device=log_p.device)
    depth = min(k, log_p.shape[1])
    values, ids = log_p.double().topk(depth, dim=-1)  # (n, depth) each position's best tokens
    values, ids_host = values.cpu().numpy(), ids.cpu().numpy()
    start = (0,) * n
    heap, seen, found = [(-float(values[:, 0].sum()), start)], {start}, []
    while heap and len(found) < k:
        score, ranks = heapq.heappop(heap)
        found.append(ranks)
        for i in range(n):
            if ranks[i] + 1 < depth:
                nxt = ranks[:i] + (ranks[i] + 1,) + ranks[i + 1 :]
                if nxt not in seen:
                    seen.add(nxt)
                    heapq.heappush(heap, (score - float(values[i, ranks[i] + 1] - values[i, ranks[i]]), nxt))
    rows = np.array([[ids_host[i, r] for i, r in enumerate(ranks)] for ranks in found])  # (k', n)
    return torch.as_tensor(rows, dtype=torch.long, device=log_p.device)


def chain_log_probs(c: Candidates) -> list[torch.Tensor]:
    """The chain terms of every candidate along every order, from one batched call.

    Rank 0 of an order is the step's own pass (nothing revealed); rank m >= 1 needs the state
    with the first m tokens of the order revealed: S * (n_j - 1) sequences per candidate, laid
    out candidate after candidate (as repeat_interleave lays them out) in one call."""
    P = c.prompt_length
    out, seqs, reads, read_tokens, sizes = [], [], [], [], []
    for j in range(c.k):
        positions, orders = c.positions[j], c.orders[j]  # (n,), (S, n)
        S, n = orders.shape
        y_u = c.tokens[j, positions]  # (n,)
        first = c.log_p[positions].gather(-1, y_u[:, None]).squeeze(-1).double()  # (n,) nothing revealed
        out.append(first[orders].clone())  # (S, n): rank m of order s reads member orders[s, m]
        if n < 2:
            continue
        # revealed[s, m - 1, i]: is member i revealed before rank m of order s (its rank < m)?
        rank = torch.argsort(orders, dim=1)  # (S, n)
        m = torch.arange(1, n, device=rank.device)
        revealed = (rank[:, None, :] < m[None, :, None]).reshape(S * (n - 1), n)
        rows = c.x[j].expand(S * (n - 1), -1).clone()  # (S(n-1), L) U_j still masked
        cols = P + positions
        rows[:, cols] = torch.where(revealed, y_u.expand(S * (n - 1), -1), rows[:, cols])
        target = orders[:, 1:].reshape(-1)  # (S(n-1),) the member read at rank m
        seqs.append(rows)
        reads.append(positions[target])
        read_tokens.append(y_u[target])
        sizes.append((j, S, n))
    if not seqs:
        return out
    batch = torch.cat(seqs)
    lp = c.log_probs(batch, torch.cat(reads)[:, None])[:, 0]  # (R, V)
    values = lp.gather(-1, torch.cat(read_tokens)[:, None]).squeeze(-1).double()  # (R,)
    c.passes.denoiser += batch.shape[0]
    offset = 0
    for j, S, n in sizes:
        out[j][:, 1:] = values[offset : offset + S * (n - 1)].reshape(S, n - 1)
        offset += S * (n - 1)
    return out


def log_q_u(c: Candidates) -> torch.Tensor:
    """(k,) log Q(y_U): the proposal probability of each candidate on its committed set."""
    return torch.stack([c.log_q_each[j, c.positions[j]].sum() for j in range(c.k)])


def ind_energy(c: Candidates) -> torch.Tensor:
    """Ind-E = log Q(y_U) - log P_chain(y_U), left-to-right chain (order 0)."""
    return log_q_u(c) - torch.stack([chain[0].sum() for chain in c.chain])


def inv_energy(c: Candidates) -> torch.Tensor:
    """Inv-E = log P_chain(y_U) - logmeanexp_s log P_pi_s(y_U); 0 with a single order."""
    per_order = [chain.sum(-1) for chain in c.chain]  # k x (S,)
    return torch.stack([p[0] - (torch.logsumexp(p, 0) - math.log(p.numel())) for p in per_order])


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
        "candidates k per step: the step's own commit and k − 1 more (k = 1: plain decoding)",
        label="Candidates k",
        low=1,
        high=64,
        cli="--candidates",
    ),
    Knob(
        "energy_marginal_candidates",
        bool,
        False,
        "draw the candidates from the product of marginals (EDLM's proposal) instead of the strategy's own rule "
        "with independent noise; loses the confidence ordering",
        label="Candidates from the marginals (EDLM)",
        paper="EDLM (Xu et al. 2025)",
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
    positions = c.positions[j]
    log_q = c.log_q_each[j, positions]  # (n,)
    out = torch.zeros_like(log_q)
    if "ar" in weights:
        out = out + weights["ar"] * (log_q - c.ar_log_p[j, positions])
    for name in ("ind", "uni"):
        if name in weights:  # order 0 is left to right: rank m is member m
            out = out + weights[name] * (log_q - c.chain[j][0])
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
    """softmax(-E / tau): the importance weights of the candidates (note the minus sign).

    A token with probability 0 under both Q and the chain (a far-tail draw of XDLM's uniform
    noise, say) gives E = -inf - (-inf): undefined, so never kept; E = -inf (Q = 0 alone) is
    kept before any finite energy; when no energy is usable the step keeps candidate 0."""
    e = torch.nan_to_num(energies.double(), nan=math.inf, posinf=math.inf, neginf=-math.inf)
    lowest = e == -math.inf
    if bool(lowest.any()):
        return lowest.double() / lowest.sum()
    if bool(torch.isinf(e).all()):
        return (torch.arange(e.numel(), device=e.device) == 0).double()
    return torch.softmax(-e / tau, dim=0)


def choose(
    c: Candidates, weights: dict[str, float], tau: float, generator: torch.Generator | None, greedy: bool = False
) -> EnergyRecord:
    """Score every candidate with the weighted terms and keep one by importance sampling.

    `greedy` (T = 0, where the candidates are the next-best assignments, enumerated rather than
    drawn): keep the candidate the target itself rates highest, argmax_j (log Q(y_j) - E_j) —
    with Uni-E that is log P_bar, with the AR energy log p_AR — the first on a tie, so that a
    step whose energies are all equal keeps candidate 0, plain decoding's choice.
    The record's `passes` count the extra sequences run so far (the caller adds CFG's copies)."""
    terms = {name: ENERGY_TERMS[name].energy(c) for name in weights}  # each (k,)
    total = sum(w * terms[name] for name, w in weights.items())  # (k,)
    if greedy:
        target = torch.nan_to_num(c.log_q_each.sum(-1) - total, nan=-math.inf)  # (k,)
        j = int(torch.argmax(target).item())
        probs = (torch.arange(c.k, device=target.device) == j).double()
    else:
        probs = keep_probabilities(total, tau)
        j = int(torch.multinomial(probs.float(), 1, generator=generator).item())
    return EnergyRecord(
        j,
        {k: v.tolist() for k, v in terms.items()},
        total.tolist(),
        probs.tolist(),
        per_position(c, weights, j).tolist(),
        c.positions[j].tolist(),
        PassCount(**vars(c.passes)),
    )
