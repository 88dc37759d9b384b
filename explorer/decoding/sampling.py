"""Per-step quantities from one forward pass: the proposal x̂ and the free metrics.

`confidence = p_i(x̂_i)` is read from the softmax of the *un-noised* logits, also when x̂ is
sampled with temperature (as LLaDA's `generate()` does); the Gumbel-max draw runs in float64
as `exp(logits) / (-log u)^T`, LLaDA's form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOP_K_ALTERNATIVES = 3


def propose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """x̂ for every position: argmax at T = 0, else a Gumbel-max sample. logits (..., V)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    scores = logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature
    return scores.argmax(dim=-1)


@dataclass(frozen=True)
class StepMetrics:
    """Per position of the generated part, all (G,) tensors on the model's device."""

    proposal: torch.Tensor  # x̂: the token a commit would write (argmax or sample)
    proposal_prob: torch.Tensor  # p(x̂): the confidence the strategies rank by
    argmax: torch.Tensor  # top-1 token
    top_probs: torch.Tensor  # (G, K) the K most probable tokens' probabilities ...
    top_ids: torch.Tensor  # (G, K) ... and ids; K = TOP_K_ALTERNATIVES
    entropy: torch.Tensor  # nats
    margin: torch.Tensor  # p_top1 - p_top2
    log_p: torch.Tensor  # (G, V) log-probabilities (temperature 1), for energies and violations

    @property
    def confidence(self) -> torch.Tensor:
        return self.top_probs[:, 0]


def step_metrics(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> StepMetrics:
    """logits (G, V) for the generated positions, mask token already excluded (-inf)."""
    logits = logits.float()
    log_p = torch.log_softmax(logits, dim=-1)  # (G, V)
    # softmax itself, not log_p.exp(): p(x̂) must be LLaDA's value to the last bit, since exact
    # ties between positions are broken by position (strategies.top_k_commit).
    p = torch.softmax(logits, dim=-1)
    entropy = -(p * log_p.clamp_min(torch.finfo(log_p.dtype).min)).sum(-1)  # 0 * -inf -> 0
    k = min(TOP_K_ALTERNATIVES, p.shape[-1])
    top_probs, top_ids = p.topk(k, dim=-1)  # (G, K)
    proposal = top_ids[:, 0] if temperature == 0 else propose(logits, temperature, generator)
    proposal_prob = p.gather(-1, proposal[:, None]).squeeze(-1)
    margin = top_probs[:, 0] - (top_probs[:, 1] if k > 1 else 0.0)
    return StepMetrics(proposal, proposal_prob, top_ids[:, 0], top_probs, top_ids, entropy, margin, log_p)
