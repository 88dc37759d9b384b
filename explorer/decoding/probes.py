"""The model calls of the gated strategies (explorer/decoding/gates.py): one batched call per
step that checks the proposed tokens against each other, and the decision it leads to.

`run_gate` is called by the engine after the strategy proposed its K positions. The prefix
probe keeps the logits of the row it committed: that row is the next step's state, so the
engine reuses them instead of running the next step's forward (`GateOutcome.next_ids` /
`next_logits`). That relies on a batched row giving the same logits as the state alone: true
on the CPU (tests/test_gates.py checks it token for token); on a GPU near-ties may differ, so
the reuse can change which of two equal tokens wins there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from explorer.decoding.gates import (
    Gate,
    GateRecord,
    accept_drop,
    accept_energy,
    accept_exact,
    accept_pairwise,
)
from explorer.decoding.knobs import Value
from explorer.decoding.model_pass import ModelPass
from explorer.decoding.resume import DEVICE_STREAM, step_seed
from explorer.decoding.sampling import StepMetrics, step_metrics
from explorer.decoding.strategies import llada_row, top_k_commit
from explorer.decoding.violations import PairwiseViolations, measure, restrict


@dataclass(frozen=True)
class GateInput:
    """What a gated step knows when it runs its probe."""

    x: torch.Tensor  # (1, L) the state before the step
    prompt_length: int
    candidates: torch.Tensor  # (G,) bool: masked positions of the block
    proposal: torch.Tensor  # (G,) bool: the positions the strategy proposed (at most K)
    logits: torch.Tensor  # (G, V) the step's logits, mask at -inf
    metrics: StepMetrics
    temperature: float
    seed: int
    virtual_step: int  # the stream index of this step (the exact gate: tokens committed so far)
    knobs: Mapping[str, Value]


@dataclass(frozen=True)
class GateOutcome:
    commit: torch.Tensor  # (G,) bool
    tokens: torch.Tensor  # (G,) the token a commit writes at each position
    record: GateRecord
    measured: PairwiseViolations | None = None  # pairwise probe: the committed set's matrices
    next_ids: torch.Tensor | None = None  # (1, L) the state after the commit ...
    next_logits: torch.Tensor | None = None  # (G, V) ... and its logits, from the probe


def run_gate(gate: Gate, model: ModelPass, g: GateInput) -> GateOutcome:
    """Run the gate's probe over the proposal and commit what its rule accepts."""
    if gate.rule == "exact":
        return _exact(model, g)
    order = _order(g)
    tokens = g.metrics.proposal[order]  # (K,)
    if order.numel() < 2:
        return _outcome(g, gate.rule, order, tokens, np.ones(order.numel(), bool), np.zeros(order.numel()), None)
    if gate.probe == "pairwise":
        return _pairwise(gate, model, g, order, tokens)
    ids = prefix_rows(g.x, g.prompt_length, order, tokens)  # (K, L)
    rows = model.logits(ids)  # (K, G, V)
    drops, flipped = prefix_drops(rows, g.metrics, order, tokens)
    threshold = float(g.knobs[gate.knob.name])
    n = accept_drop(drops, flipped, threshold) if gate.rule == "drop" else accept_energy(drops, threshold)
    accepted = np.arange(order.numel()) < n
    score = np.concatenate([[0.0], drops])
    out = _outcome(g, gate.rule, order, tokens, accepted, score, np.concatenate([[False], flipped]))
    return _with_next(out, ids[n - 1 : n], rows[n - 1])


def _order(g: GateInput) -> torch.Tensor:
    """(K,) the proposed positions, most confident first (ties as LLaDA's top-k breaks them)."""
    row = llada_row(g.metrics.proposal_prob, g.proposal, g.prompt_length)  # (P + G,)
    return torch.topk(row, int(g.proposal.sum())).indices - g.prompt_length


def prefix_rows(x: torch.Tensor, prompt_length: int, order: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(K, L): row k - 1 is the state x (1, L) with the first k proposed tokens revealed."""
    K = order.numel()
    ids = x.expand(K, -1).clone()
    revealed = torch.tril(torch.ones(K, K, dtype=torch.bool, device=x.device))  # (K rows, K proposals)
    cols = prompt_length + order
    ids[:, cols] = torch.where(revealed, tokens.expand(K, -1), ids[:, cols])
    return ids


def prefix_drops(
    rows: torch.Tensor, metrics: StepMetrics, order: torch.Tensor, tokens: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """(K-1,) drops and flips of proposals 2..K: row k - 1 (first k revealed) read at c(k+1)."""
    K = order.numel()
    at = rows[torch.arange(K - 1, device=rows.device), order[1:]].float()  # (K-1, V)
    log_p = torch.log_softmax(at, dim=-1)
    after = log_p.gather(-1, tokens[1:, None]).squeeze(-1)  # (K-1,)
    before = metrics.log_p[order[1:]].gather(-1, tokens[1:, None]).squeeze(-1)  # (K-1,)
    flipped = log_p.argmax(-1) != metrics.argmax[order[1:]]
    return (before - after).double().cpu().numpy(), flipped.cpu().numpy()


def _pairwise(gate: Gate, model: ModelPass, g: GateInput, order: torch.Tensor, tokens: torch.Tensor) -> GateOutcome:
    """The violation pass over the proposal; keep the tokens with no strong contradiction."""
    tokens_of = g.metrics.proposal.cpu().numpy()
    ascending = np.sort(order.cpu().numpy())
    pv = measure(
        model.log_probs,
        g.x,
        g.prompt_length,
        ascending,
        tokens_of,
        g.metrics.log_p,
        g.metrics.proposal_prob.cpu().numpy(),
        len(ascending),
    )
    rank = np.searchsorted(ascending, order.cpu().numpy())  # proposal order -> index in pv
    S, flip = pv.S[np.ix_(rank, rank)], pv.flip[np.ix_(rank, rank)]
    keep = accept_pairwise(S, flip, float(g.knobs[gate.knob.name]))
    before = np.tril(np.ones_like(flip), -1) & keep[None, :]  # (K, K) kept tokens ranked before each
    score = np.where(before, S, np.inf).min(axis=1)
    score = np.where(np.isfinite(score), np.minimum(score, 0.0), 0.0)
    flips = ((flip | flip.T) & before).any(axis=1)
    out = _outcome(g, gate.rule, order, tokens, keep, score, flips)
    kept = np.isin(ascending, order.cpu().numpy()[keep])
    return GateOutcome(out.commit, out.tokens, out.record, measured=restrict(pv, kept) if kept.sum() >= 2 else None)


def _exact(model: ModelPass, g: GateInput) -> GateOutcome:
    """Speculate what one-token-per-step decoding (low_confidence, steps = tokens) would commit
    at its next K steps and keep the part it would really commit.

    Guess k + 1 is the most confident remaining position under the step's logits with the
    random draw of virtual step v + k (what that decoding would draw there); row k (the first k
    revealed) then says what it really commits at v + k, with the same draw."""
    draws = _virtual_draws(g)
    taken = torch.zeros_like(g.candidates)
    positions, tokens = [], []
    for k in range(int(g.knobs["lookahead_k"])):
        fresh = k > 0 and g.temperature > 0  # at T = 0 every draw gives the argmax: the step's own
        metrics = step_metrics(g.logits, g.temperature, draws(k)) if fresh else g.metrics
        left = g.candidates & ~taken
        if not bool(left.any()):
            break
        pos = torch.nonzero(top_k_commit(metrics.proposal_prob, left, 1, g.prompt_length)).flatten()
        positions.append(pos)
        tokens.append(metrics.proposal[pos])
        taken[pos] = True
    order, proposed = torch.cat(positions), torch.cat(tokens)  # (K,)
    if order.numel() < 2:
        return _outcome(g, "exact", order, proposed, np.ones(1, bool), np.zeros(1), None)
    ids = prefix_rows(g.x, g.prompt_length, order, proposed)  # (K, L)
    rows = model.logits(ids)  # (K, G, V)
    next_pos, next_tok = [], []
    for k in range(1, order.numel()):
        metrics = step_metrics(rows[k - 1], g.temperature, draws(k))
        left = g.candidates.clone()
        left[order[:k]] = False
        pos = torch.nonzero(top_k_commit(metrics.proposal_prob, left, 1, g.prompt_length)).flatten()
        next_pos.append(int(pos[0]) if pos.numel() else -1)
        next_tok.append(int(metrics.proposal[pos[0]]) if pos.numel() else -1)
    guess_pos, guess_tok = order[1:].cpu().numpy(), proposed[1:].cpu().numpy()
    n = accept_exact(guess_pos, guess_tok, np.array(next_pos), np.array(next_tok))
    accepted = np.arange(order.numel()) < n
    agree = np.concatenate([[True], (guess_pos == np.array(next_pos)) & (guess_tok == np.array(next_tok))])
    out = _outcome(g, "exact", order, proposed, accepted, np.zeros(order.numel()), ~agree)
    return _with_next(out, ids[n - 1 : n], rows[n - 1])


def _virtual_draws(g: GateInput) -> Callable[[int], torch.Generator]:
    """A generator seeded as the step v + k of a one-token-per-step run is (its device stream)."""
    device = g.logits.device

    def draws(k: int) -> torch.Generator:
        generator = torch.Generator(device=device)
        generator.manual_seed(step_seed(g.seed, g.virtual_step + k, DEVICE_STREAM))
        return generator

    return draws


def _outcome(
    g: GateInput,
    rule: str,
    order: torch.Tensor,
    tokens: torch.Tensor,
    accepted: np.ndarray,
    score: np.ndarray,
    flips: np.ndarray | None,
) -> GateOutcome:
    keep = torch.as_tensor(accepted, device=order.device)
    commit = torch.zeros_like(g.candidates)
    commit[order[keep]] = True
    written = g.metrics.proposal.clone()
    written[order] = tokens
    flips = np.zeros(order.numel(), bool) if flips is None else flips
    record = GateRecord(
        rule,
        order.tolist(),
        tokens.tolist(),
        [bool(a) for a in accepted],
        [float(s) for s in np.clip(score, -1e3, 1e3)],  # a token the reveal made impossible: 1000 nats
        [bool(f) for f in flips],
    )
    return GateOutcome(commit, written, record)


def _with_next(out: GateOutcome, ids: torch.Tensor, logits: torch.Tensor) -> GateOutcome:
    return GateOutcome(out.commit, out.tokens, out.record, out.measured, ids, logits)
