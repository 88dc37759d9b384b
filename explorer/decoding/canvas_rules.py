"""Acceptance rules of a uniform-noise canvas model, and its options (temperature schedule, early stop).

At every step a canvas model samples a token at every position of its canvas; the acceptance
rule decides which of them to keep (the rest are re-noised). DiffusionGemma's own rule is the
entropy bound (`eb`, transformers' `EntropyBoundSampler.accept_canvas`); the project's confidence
rules apply the same way, over the whole canvas, recomputed every step:

| strategy         | accepted at step j of N                                                  | knob       |
|------------------|--------------------------------------------------------------------------|------------|
| `eb`             | lowest-entropy positions while sum H - max H <= gamma (DiffusionGemma's) | eb_gamma   |
| `low_confidence` | the ceil(C (j + 1) / N) positions whose sampled token is most probable   | (none)     |
| `threshold`      | every position whose sampled token has p >= tau, and always the best one | threshold  |

The knobs are the masked strategies' own (one knob, one place: explorer/decoding/strategies.py).
Each rule is a pure function of the step's tensors, tested on hand-built logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from explorer.decoding import entropy_bound as rule
from explorer.decoding.knobs import Knob, Value
from explorer.decoding.strategies import EB_GAMMA, THRESHOLD


@dataclass(frozen=True)
class CanvasStep:
    """What an acceptance rule sees: the canvas going in, the step's proposal and its scaled logits."""

    current: torch.Tensor  # (1, C) long: the input canvas
    proposal: rule.Proposal  # sampled tokens, their probabilities, the argmax
    scaled: torch.Tensor  # (1, C, V) the temperature-scaled logits
    step: int  # j, from 0
    steps: int  # N, the canvas's step budget
    knobs: Mapping[str, Value]


def entropy_bound(step: CanvasStep) -> rule.Acceptance:
    """DiffusionGemma's rule, exactly as transformers applies it."""
    return rule.accept(step.current, step.proposal.sampled, step.scaled, float(step.knobs["eb_gamma"]))


def top_confidence(step: CanvasStep) -> rule.Acceptance:
    """Accept the k most probable sampled tokens, k growing linearly to the whole canvas at step N."""
    canvas_length = step.current.shape[-1]
    k = min(canvas_length, math.ceil(canvas_length * (step.step + 1) / step.steps))
    order = torch.argsort(step.proposal.sampled_prob, dim=-1, descending=True, stable=True)  # (1, C)
    accepted = torch.zeros_like(step.current, dtype=torch.bool).scatter_(-1, order[:, :k], True)
    return _accepted(step, accepted)


def confidence_threshold(step: CanvasStep) -> rule.Acceptance:
    """Accept every sampled token at least `threshold` probable, and always the most probable one."""
    prob = step.proposal.sampled_prob  # (1, C)
    accepted = prob >= float(step.knobs["threshold"])
    best = prob.argmax(dim=-1, keepdim=True)
    return _accepted(step, accepted.scatter(-1, best, True))


def _accepted(step: CanvasStep, accepted: torch.Tensor) -> rule.Acceptance:
    canvas = torch.where(accepted, step.proposal.sampled, step.current)
    return rule.Acceptance(canvas=canvas, accepted=accepted, entropy=rule.token_entropy(step.scaled))


@dataclass(frozen=True)
class CanvasRule:
    name: str  # the strategy it stands for (STRATEGIES' name)
    accept: Callable[[CanvasStep], rule.Acceptance]
    knobs: tuple[Knob, ...]
    summary: str


CANVAS_RULES: dict[str, CanvasRule] = {
    entry.name: entry
    for entry in (
        CanvasRule("eb", entropy_bound, (EB_GAMMA,), "DiffusionGemma's entropy bound (its generate())"),
        CanvasRule("low_confidence", top_confidence, (), "the most probable sampled tokens, linearly more per step"),
        CanvasRule("threshold", confidence_threshold, (THRESHOLD,), "every sampled token at least tau probable"),
    )
}

# The options every canvas run has. transformers' defaults; a model's own generation config
# overrides them (explorer/adapters/diffusion_gemma.py `canvas_config`). Set t-min = t-max = 1 for
# no temperature scaling, confidence 0 for no early stop.
CANVAS_T_MIN = Knob(
    "canvas_t_min", float, 0.4, "temperature at a canvas's last step (linear schedule)", label="t_min",
    paper="DiffusionGemma (transformers)", low=0.0, low_open=True, in_form=False,
)  # fmt: skip
CANVAS_T_MAX = Knob(
    "canvas_t_max", float, 0.8, "temperature at a canvas's first step (linear schedule)", label="t_max",
    paper="DiffusionGemma (transformers)", low=0.0, low_open=True, in_form=False,
)  # fmt: skip
CANVAS_STABILITY = Knob(
    "canvas_stability", int, 1, "early stop: steps the argmax canvas must stay the same", label="stability",
    paper="DiffusionGemma (transformers)", low=0, high=1024, in_form=False,
)  # fmt: skip
CANVAS_CONFIDENCE = Knob(
    "canvas_confidence", float, 0.005, "early stop: mean entropy (nats) must be below this (0: never stop early)",
    label="confidence", paper="DiffusionGemma (transformers)", low=0.0, in_form=False,
)  # fmt: skip
CANVAS_KNOBS: tuple[Knob, ...] = (CANVAS_T_MIN, CANVAS_T_MAX, CANVAS_STABILITY, CANVAS_CONFIDENCE)
