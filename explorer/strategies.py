"""Unmasking strategies: which masked positions to commit this step.

Each strategy is a pure function `StepInput -> Selection`, found by name in `STRATEGIES`.
Positions are indices into the generated part; `candidates` are the masked positions a step
may commit (those of the current block: positions right of it are never committed).
Remasking strategies (`rcr`, `remdm_conf`) also return positions to re-mask: committed
positions of the current block (`committed`), ranked by the confidence they had when they
were committed (`commit_confidence`). Prophet's early commit is a switch on top of any
strategy (`prophet_early_commit`), not a strategy of its own.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepInput:
    candidates: torch.Tensor  # (G,) bool: masked positions inside the current block
    confidence: torch.Tensor  # (G,) p(x̂) from the un-noised softmax
    entropy: torch.Tensor  # (G,)
    margin: torch.Tensor  # (G,)
    n_scheduled: int  # k_j of the LLaDA schedule for this step
    step_in_block: int  # j, from 0
    steps_per_block: int  # S
    threshold: float
    origin_eps: float
    generator: torch.Generator | None
    committed: torch.Tensor | None = None  # (G,) bool: committed positions of the current block
    commit_confidence: torch.Tensor | None = None  # (G,) p(token) when each was last committed
    n_later: int = 0  # sum of the scheduled counts after this step: k_{j+1} + ... (RCR)
    factor: float = 1.0  # the `factor` rule's f
    eb_gamma: float = 0.1  # the `eb` rule's gamma (nats)


@dataclass(frozen=True)
class Selection:
    commit: torch.Tensor  # (G,) bool
    remask: torch.Tensor | None = None  # (G,) bool: committed positions to mask again


Strategy = Callable[[StepInput], Selection]


def top_k_commit(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest-scoring candidates. Scores are -inf outside the candidates and the top-k
    runs over the whole vector, as LLaDA does, so ties resolve the same way."""
    # masked_fill takes -inf as a kernel argument: a torch.tensor(-inf) made here would be a
    # blocking host-to-device copy on every step of a GPU run.
    ranked = scores.double().masked_fill(~candidates, float("-inf"))
    commit = torch.zeros_like(candidates)
    # No int(candidates.sum()) here (a host synchronisation on a GPU): when k exceeds the
    # number of candidates the top-k also picks -inf positions, which `& candidates` drops.
    k = min(k, candidates.numel())
    if k > 0:
        commit[torch.topk(ranked, k).indices] = True
    return commit & candidates


def _scored(score: Callable[[StepInput], torch.Tensor]) -> Strategy:
    def strategy(s: StepInput) -> Selection:
        return Selection(top_k_commit(score(s), s.candidates, s.n_scheduled))
    strategy.__doc__ = score.__doc__
    return strategy


@_scored
def low_confidence(s: StepInput) -> torch.Tensor:
    """Commit the scheduled number of most confident positions: score p(x̂) (LLaDA)."""
    return s.confidence


@_scored
def margin(s: StepInput) -> torch.Tensor:
    """Score p_top1 - p_top2 (Dream's topk_margin)."""
    return s.margin


@_scored
def entropy(s: StepInput) -> torch.Tensor:
    """Score -H(p_i): lowest entropy first (Dream's entropy)."""
    return -s.entropy


def random(s: StepInput) -> Selection:
    """Score U(0, 1): a random order with the LLaDA schedule (LLaDA's `random` remasking)."""
    scores = torch.rand(s.candidates.shape, generator=s.generator, device=s.candidates.device)
    return Selection(top_k_commit(scores, s.candidates, s.n_scheduled))


def origin(s: StepInput) -> Selection:
    """MDLM ancestral step from t to s on t = linspace(1, eps, S + 1): each masked position is
    committed independently with probability (t - s) / t; everything left on the last step."""
    if s.step_in_block >= s.steps_per_block - 1:
        return Selection(s.candidates.clone())
    grid = torch.linspace(1.0, s.origin_eps, s.steps_per_block + 1, dtype=torch.float64)
    t, t_next = grid[s.step_in_block], grid[s.step_in_block + 1]
    draw = torch.rand(s.candidates.shape, dtype=torch.float64, generator=s.generator,
                      device=s.candidates.device)
    return Selection(s.candidates & (draw < float((t - t_next) / t)))


def threshold(s: StepInput) -> Selection:
    """Fast-dLLM: every candidate with confidence >= tau, and always the most confident one.
    The scheduled count is ignored: the number of steps becomes adaptive (the engine keeps
    stepping until the block is full)."""
    commit = top_k_commit(s.confidence, s.candidates, 1)
    return Selection(commit | (s.candidates & (s.confidence >= s.threshold)))


def longest_prefix(order: torch.Tensor, passes: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Commit order[:n] for the largest n whose first n entries all pass (at least n = 1).

    order (C,) positions in ranking order; passes (C,) bool per rank. Computed on the device
    (cumprod + scatter): no host read of n, so a GPU step still synchronises once."""
    prefix = torch.cumprod(passes.to(torch.int64), 0).bool()  # (C,)
    prefix[:1] = True  # always the first
    commit = torch.zeros_like(candidates).scatter(0, order, prefix)
    return commit & candidates


def _ranked(keys: torch.Tensor, candidates: torch.Tensor, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position sorted by key (stable), non-candidates last (key -inf / +inf), and the keys."""
    fill = float("-inf") if descending else float("inf")
    ranked = keys.double().masked_fill(~candidates, fill)
    sorted_keys, order = torch.sort(ranked, descending=descending, stable=True)
    return order, sorted_keys


def factor(s: StepInput) -> Selection:
    """Fast-dLLM's factor rule: sort confidences c(1) >= c(2) >= ...; commit the longest prefix
    with (n + 1)(1 - c(n)) <= f for every n in it, and always the first. (Fast-dLLM's code
    also commits the whole block when only its last entry fails; we keep the stated rule.)"""
    order, conf = _ranked(s.confidence, s.candidates, descending=True)
    n = torch.arange(1, order.numel() + 1, dtype=torch.float64, device=conf.device)
    return Selection(longest_prefix(order, (n + 1) * (1 - conf) <= s.factor, s.candidates))


def eb(s: StepInput) -> Selection:
    """EB-sampler: sort by entropy ascending; commit the longest prefix whose
    sum(H) - max(H) <= gamma (an upper bound on KL(joint || product of marginals)), at least one."""
    order, h = _ranked(s.entropy, s.candidates, descending=False)
    # Ascending order: the prefix's max is its last entry (non-candidates: inf - inf = NaN, fails).
    return Selection(longest_prefix(order, torch.cumsum(h, 0) - h <= s.eb_gamma, s.candidates))


def rcr(s: StepInput) -> Selection:
    """Running-confidence remasking (MDPO): fill every masked candidate, then re-mask the
    lowest running confidences of the block (new and earlier commits alike) so that exactly
    the scheduled total so far stays committed: k_0 + ... + k_j."""
    commit = s.candidates.clone()
    running = torch.where(s.candidates, s.confidence.double(), s.commit_confidence.double())
    pool = s.candidates | s.committed
    remask = torch.zeros_like(commit)
    if s.n_later > 0:
        remask = top_k_commit(-running, pool, s.n_later)
    return Selection(commit & ~remask, remask & s.committed)


def remdm_conf(s: StepInput) -> Selection:
    """ReMDM-conf on MDLM's time grid t = linspace(1, eps, S + 1), alpha = 1 - t: masked
    positions unmask with probability (t - s) / t as in `origin`; each committed position is
    re-masked with probability sigma_i = softmax_i(-c_i) * min(1, (1 - alpha_s) / alpha_t),
    c_i its confidence at commit, softmax over the committed positions. Nothing is re-masked
    and everything is committed on the last step."""
    if s.step_in_block >= s.steps_per_block - 1:
        return Selection(s.candidates.clone(), torch.zeros_like(s.candidates))
    grid = torch.linspace(1.0, s.origin_eps, s.steps_per_block + 1, dtype=torch.float64)
    t, t_next = float(grid[s.step_in_block]), float(grid[s.step_in_block + 1])
    alpha_t, alpha_s = 1.0 - t, 1.0 - t_next
    sigma_max = min(1.0, (1.0 - alpha_s) / alpha_t) if alpha_t > 0 else 1.0
    draws = torch.rand((2, *s.candidates.shape), dtype=torch.float64, generator=s.generator,
                       device=s.candidates.device)
    commit = s.candidates & (draws[0] < (t - t_next) / t)
    weights = torch.softmax((-s.commit_confidence.double()).masked_fill(~s.committed, float("-inf")), 0)
    remask = s.committed & (draws[1] < torch.nan_to_num(weights) * sigma_max)
    return Selection(commit, remask)


PROPHET_THRESHOLDS = (7.5, 5.0, 2.5)  # top-1 minus top-2 logit gap, by third of the steps


def prophet_early_commit(mean_gap: float, step: int, total_steps: int,
                         thresholds: tuple[float, float, float] = PROPHET_THRESHOLDS) -> bool:
    """Prophet: commit every remaining mask now when the mean top-1 minus top-2 logit gap
    reaches the threshold of the current phase (progress step / total < 0.33, < 0.67, else)."""
    progress = step / total_steps
    phase = 0 if progress < 0.33 else 1 if progress < 0.67 else 2
    return mean_gap >= thresholds[phase]


STRATEGIES: dict[str, Strategy] = {
    "low_confidence": low_confidence,
    "margin": margin,
    "entropy": entropy,
    "random": random,
    "origin": origin,
    "threshold": threshold,
    "factor": factor,
    "eb": eb,
    "rcr": rcr,
    "remdm_conf": remdm_conf,
}
