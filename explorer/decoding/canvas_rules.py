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
| `pairwise_gate`  | of the K most probable sampled tokens, those with no contradiction with  | lookahead_k, |
|                  | a more probable kept one: S_ij >= -tau and no flip (the project's rule)  | gate_tau   |

The knobs are the masked strategies' own (one knob, one place: explorer/decoding/strategies.py,
gates.py). Each rule is a function of the step's tensors, tested through the engine; the
dependency-aware one also calls the model (`CanvasStep.probe`: K more decoder passes, one per
proposed token, each with that token written into the canvas) and records what it proposed and
kept (`GateRecord`), as the masked pairwise gate does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from explorer.decoding import entropy_bound as rule
from explorer.decoding.gates import GATE_TAU, LOOKAHEAD_K, GateRecord, accept_pairwise
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
    temperature: torch.Tensor | None = None  # the step's, for the probe's logits
    start: int = 0  # the canvas's first generated position (a gate records positions)
    probe: Callable[[torch.Tensor], torch.Tensor] | None = None  # (1, C) canvas -> (1, C, V) logits


@dataclass(frozen=True)
class CanvasChoice:
    """What a rule accepted, and for a gated rule what it proposed and how many decoder passes it ran."""

    acceptance: rule.Acceptance
    gate: GateRecord | None = None
    probe_calls: int = 0


def entropy_bound(step: CanvasStep) -> CanvasChoice:
    """DiffusionGemma's rule, exactly as transformers applies it."""
    return CanvasChoice(rule.accept(step.current, step.proposal.sampled, step.scaled, float(step.knobs["eb_gamma"])))


def top_confidence(step: CanvasStep) -> CanvasChoice:
    """Accept the k most probable sampled tokens, k growing linearly to the whole canvas at step N."""
    canvas_length = step.current.shape[-1]
    k = min(canvas_length, math.ceil(canvas_length * (step.step + 1) / step.steps))
    order = torch.argsort(step.proposal.sampled_prob, dim=-1, descending=True, stable=True)  # (1, C)
    accepted = torch.zeros_like(step.current, dtype=torch.bool).scatter_(-1, order[:, :k], True)
    return _accepted(step, accepted)


def confidence_threshold(step: CanvasStep) -> CanvasChoice:
    """Accept every sampled token at least `threshold` probable, and always the most probable one."""
    prob = step.proposal.sampled_prob  # (1, C)
    accepted = prob >= float(step.knobs["threshold"])
    best = prob.argmax(dim=-1, keepdim=True)
    return _accepted(step, accepted.scatter(-1, best, True))


def pairwise_gate(step: CanvasStep) -> CanvasChoice:
    """The dependency-aware rule on a canvas: propose the K most probable sampled tokens; probe row i
    writes token i alone into the canvas and reads every other proposed token's log-probability:
    D_ij = log p(y_j | canvas + y_i) - log q(y_j), S_ij = (D_ij + D_ji) / 2, flip_ij when the argmax at
    j changes. Keep, in proposal order, each token with S >= -tau and no flip against every kept one
    (`gates.accept_pairwise`); the most probable is always kept."""
    k = min(int(step.knobs["lookahead_k"]), step.current.shape[-1])
    order = torch.argsort(step.proposal.sampled_prob[0], descending=True, stable=True)[:k]  # (K,)
    tokens = step.proposal.sampled[0, order]  # (K,)
    log_q = torch.log_softmax(step.scaled[0].float(), dim=-1)  # (C, V)
    base, top = log_q[order, tokens], log_q[order].argmax(-1)  # (K,)
    D, flip = torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, k, dtype=torch.bool)
    for i in range(k):
        row = step.current.clone()
        row[0, order[i]] = tokens[i]
        log_p = torch.log_softmax(rule.scale_logits(step.probe(row), step.temperature)[0].float(), dim=-1)
        D[i] = (log_p[order, tokens] - base).double().cpu()
        flip[i] = (log_p[order].argmax(-1) != top).cpu()
    D.fill_diagonal_(0.0)
    flip.fill_diagonal_(False)
    S, flips = ((D + D.T) / 2).numpy(), flip.numpy()
    keep = accept_pairwise(S, flips, float(step.knobs["gate_tau"]))
    accepted = torch.zeros_like(step.current, dtype=torch.bool)
    accepted[0, order[torch.from_numpy(keep)]] = True
    score = [0.0 if j == 0 else float(min(0.0, S[j, :j][keep[:j]].min(initial=0.0))) for j in range(k)]
    clash = [bool((flips[j, :j] | flips[:j, j])[keep[:j]].any()) for j in range(k)]
    gate = GateRecord("pairwise", (order + step.start).tolist(), tokens.tolist(), keep.tolist(), score, clash)
    return CanvasChoice(_accepted(step, accepted).acceptance, gate, probe_calls=k)


def _accepted(step: CanvasStep, accepted: torch.Tensor) -> CanvasChoice:
    canvas = torch.where(accepted, step.proposal.sampled, step.current)
    return CanvasChoice(rule.Acceptance(canvas=canvas, accepted=accepted, entropy=rule.token_entropy(step.scaled)))


@dataclass(frozen=True)
class CanvasRule:
    name: str  # the strategy it stands for (STRATEGIES' name)
    accept: Callable[[CanvasStep], CanvasChoice]
    knobs: tuple[Knob, ...]
    summary: str


CANVAS_RULES: dict[str, CanvasRule] = {
    entry.name: entry
    for entry in (
        CanvasRule("eb", entropy_bound, (EB_GAMMA,), "DiffusionGemma's entropy bound (its generate())"),
        CanvasRule("low_confidence", top_confidence, (), "the most probable sampled tokens, linearly more per step"),
        CanvasRule("threshold", confidence_threshold, (THRESHOLD,), "every sampled token at least tau probable"),
        CanvasRule(
            "pairwise_gate", pairwise_gate, (LOOKAHEAD_K, GATE_TAU), "the most probable tokens that do not contradict"
        ),
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
