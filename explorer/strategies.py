"""Unmasking strategies: which masked positions to commit this step.

Each strategy is a pure function `StepInput -> Selection`, found by name in `STRATEGIES`.
Positions are indices into the generated part; `candidates` are the masked positions a step
may commit (those of the current block: positions right of it are never committed).
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


@dataclass(frozen=True)
class Selection:
    commit: torch.Tensor  # (G,) bool


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


STRATEGIES: dict[str, Strategy] = {
    "low_confidence": low_confidence,
    "margin": margin,
    "entropy": entropy,
    "random": random,
    "origin": origin,
    "threshold": threshold,
}
