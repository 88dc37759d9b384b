"""The acceptance rules of a canvas model on hand-built logits (explorer/decoding/canvas_rules.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.decoding import entropy_bound as rule
from explorer.decoding.canvas_rules import CANVAS_RULES, CanvasStep

V = 6


def peaked(tokens: list[int], strengths: list[float]) -> torch.Tensor:
    """(1, C, V) logits: position i favours tokens[i] by strengths[i] nats over the others."""
    logits = torch.zeros(1, len(tokens), V)
    for i, (t, s) in enumerate(zip(tokens, strengths)):
        logits[0, i, t] = s
    return logits


def step_of(logits: torch.Tensor, j: int = 0, n: int = 4, probe=None, **knobs) -> CanvasStep:
    probs = torch.softmax(logits, dim=-1)
    sampled = logits.argmax(-1)  # the "draw": the favoured token (a fixed, known proposal)
    proposal = rule.Proposal(sampled, logits.argmax(-1), probs.gather(-1, sampled[..., None]).squeeze(-1))
    current = torch.full_like(sampled, V - 1)
    return CanvasStep(current, proposal, logits, j, n, knobs, None, 10, probe)


def test_entropy_bound_is_the_transformers_rule():
    logits = peaked([0, 1, 2, 3], [9.0, 1.0, 5.0, 0.5])
    step = step_of(logits, eb_gamma=0.3)
    got = CANVAS_RULES["eb"].accept(step).acceptance
    expected = rule.accept(step.current, step.proposal.sampled, logits, 0.3)
    assert torch.equal(got.accepted, expected.accepted) and torch.equal(got.canvas, expected.canvas)
    assert CANVAS_RULES["eb"].accept(step).gate is None


@pytest.mark.parametrize(("j", "n", "count"), [(0, 4, 1), (1, 4, 2), (3, 4, 4), (0, 3, 2), (2, 3, 4)])
def test_top_confidence_accepts_linearly_more(j, n, count):
    logits = peaked([0, 1, 2, 3], [9.0, 1.0, 5.0, 0.5])
    accepted = CANVAS_RULES["low_confidence"].accept(step_of(logits, j, n)).acceptance.accepted[0]
    assert int(accepted.sum()) == count
    order = [0, 2, 1, 3][:count]  # most probable first
    assert sorted(accepted.nonzero().flatten().tolist()) == sorted(order)


def test_threshold_keeps_the_confident_and_always_the_best():
    logits = peaked([0, 1, 2, 3], [9.0, 1.0, 5.0, 0.5])
    choice = CANVAS_RULES["threshold"].accept(step_of(logits, threshold=0.5)).acceptance
    assert choice.accepted[0].tolist() == [True, False, True, False]
    assert torch.equal(choice.canvas[0], torch.tensor([0, V - 1, 2, V - 1]))
    none_pass = CANVAS_RULES["threshold"].accept(step_of(logits, threshold=0.999999)).acceptance
    assert none_pass.accepted[0].tolist() == [True, False, False, False]


def test_pairwise_gate_drops_a_contradicted_token():
    """Proposal order 0, 2, 1 (probabilities). Writing token 0 into the canvas makes position 2's
    token far less likely (a contradiction); position 1 does not care. So 2 is refused, 1 kept."""
    logits = peaked([0, 1, 2, 3], [9.0, 4.0, 6.0, 0.1])
    calls = []

    def probe(row: torch.Tensor) -> torch.Tensor:
        calls.append(row.clone())
        out = logits.clone()
        if row[0, 0] == 0:  # token 0 revealed at position 0: position 2's token 2 loses 8 nats
            out[0, 2, 2] -= 8.0
        if row[0, 2] == 2:  # and the other way round (a symmetric dependency)
            out[0, 0, 0] -= 8.0
        return out

    choice = CANVAS_RULES["pairwise_gate"].accept(step_of(logits, probe=probe, lookahead_k=3, gate_tau=1.0))
    assert choice.acceptance.accepted[0].tolist() == [True, True, False, False]
    assert choice.probe_calls == 3 == len(calls)
    gate = choice.gate
    assert gate.proposed == [10, 12, 11] and gate.tokens == [0, 2, 1] and gate.accepted == [True, False, True]
    assert gate.score[0] == 0.0 and gate.score[1] < -1.0 and gate.score[2] == pytest.approx(0.0, abs=1e-6)
    # every probe wrote exactly one proposed token into the input canvas
    assert [int((row != V - 1).sum()) for row in calls] == [1, 1, 1]


def test_pairwise_gate_keeps_all_when_independent():
    logits = peaked([0, 1, 2, 3], [9.0, 4.0, 6.0, 0.1])
    choice = CANVAS_RULES["pairwise_gate"].accept(
        step_of(logits, probe=lambda row: logits, lookahead_k=4, gate_tau=0.5)
    )
    assert choice.acceptance.accepted[0].all() and choice.gate.n_accepted == 4
