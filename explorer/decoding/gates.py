"""Dependency-aware parallel decoding: the acceptance rules (DESIGN 3.1, "dependency-gated").

A gated strategy proposes the K most confident masked positions of the block, c1, c2, ...,
cK with their proposed tokens y, and the engine checks them against each other with the model
in one batched call (a *probe*, explorer/decoding/probes.py) before it commits any:

- `prefix` probe: row k is the state with y_{c1..ck} revealed (k = 1..K). It gives, for every
  proposed token after the first, how its log-probability changed once the tokens before it
  were known (its *drop*), and whether the model's top choice there changed (a *flip*). The row
  of the committed prefix is the next step's state, so its logits are the next step's logits:
  one sequential call per step.
- `pairwise` probe: the violation pass over the proposal (row i reveals only y_i): S_ij and
  the flips of every pair, as explorer/decoding/violations.py defines them.

The rules below turn a probe's numbers into how many (or which) proposed tokens to commit. They
are pure functions of small arrays, tested on hand-built values; every rule commits at least
the first (most confident) token, so a gated step never commits less than one token per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explorer.decoding.jsonvalues import as_array, as_str, rounded, same_length
from explorer.decoding.knobs import Knob


def accept_drop(drops: np.ndarray, flipped: np.ndarray, gamma: float) -> int:
    """Lookahead gate: how many of the K proposed tokens to commit, in proposal order.

    drops (K-1,) log q(y_{c(k+1)}) - log p(y_{c(k+1)} | x + y_{c1..ck}): how much less the model
    believes token k+1 once the tokens before it are revealed; flipped (K-1,) its top choice
    there changed. Token k+1 passes with drop <= gamma and no flip; the longest passing prefix
    is committed, and always the first token."""
    passes = (np.asarray(drops) <= gamma) & ~np.asarray(flipped, dtype=bool)
    return 1 + _prefix_length(passes)


def accept_energy(drops: np.ndarray, bound: float) -> int:
    """Energy gate: the largest k whose prefix y_{c1..ck} has Ind-E <= bound (nats), at least 1.

    Along the proposal order the chain P_chain(y_{c1..ck}) = prod_m p(y_cm | x + y_{c<m}), so
    Ind-E of the prefix = log Q - log P_chain = the sum of the first k - 1 drops (the first
    token's own term is 0: it is read from the step's pass)."""
    energy = np.concatenate([[0.0], np.cumsum(np.asarray(drops, dtype=np.float64))])  # (K,) E_1..E_K
    ok = np.flatnonzero(energy <= bound)
    return int(ok[-1]) + 1 if ok.size else 1


def accept_exact(guess_pos: np.ndarray, guess_tok: np.ndarray, next_pos: np.ndarray, next_tok: np.ndarray) -> int:
    """Exact gate (lossless): token k+1 is accepted when one-token-per-step decoding, in the
    state with the first k revealed, would commit exactly it next: the most confident masked
    position there is the guessed c(k+1) and its token is the guessed one. All (K-1,) arrays:
    the guesses for ranks 2..K and what rows 1..K-1 say. The longest agreeing prefix, plus 1."""
    agree = (np.asarray(guess_pos) == np.asarray(next_pos)) & (np.asarray(guess_tok) == np.asarray(next_tok))
    return 1 + _prefix_length(agree)


def accept_pairwise(S: np.ndarray, flip: np.ndarray, tau: float) -> np.ndarray:
    """Pairwise gate: greedily, in proposal order, keep a token that has no strong
    contradiction with any token kept before it: S_ij >= -tau and no flip either way.
    S, flip (K, K) in proposal order; returns (K,) bool, the first always kept."""
    S, flip = np.asarray(S, dtype=np.float64), np.asarray(flip, dtype=bool)
    clash = (S < -tau) | flip | flip.T  # (K, K)
    keep = np.zeros(len(S), dtype=bool)
    for j in range(len(S)):
        keep[j] = j == 0 or not clash[j, keep].any()
    return keep


def _prefix_length(passes: np.ndarray) -> int:
    """How many leading entries are True."""
    failed = np.flatnonzero(~np.asarray(passes, dtype=bool))
    return int(failed[0]) if failed.size else len(passes)


@dataclass(frozen=True)
class Gate:
    """A gated strategy's registry part: which probe it runs and how it decides.

    `virtual_steps`: the step's random draws follow the number of tokens committed so far
    instead of the step index, so that the exact gate draws what one-token-per-step decoding
    draws at the same point (its step k is the k-th commit)."""

    probe: str  # "prefix" or "pairwise"
    rule: str  # "drop", "energy", "exact" or "pairwise": the accept_* function the probe's numbers go to
    knob: Knob | None = None  # the rule's threshold (gamma, the bound, tau); the exact rule has none
    virtual_steps: bool = False


@dataclass(frozen=True)
class GateRecord:
    """What a gated step proposed and what it kept, stored with the step.

    `score` per proposed token: its drop (prefix probe; 0 for the first) or its most negative
    S_ij with the tokens kept before it (pairwise; 0 for the first); `flip` whether its top
    choice flipped; `reused` whether this step's logits came from the previous step's probe."""

    rule: str
    proposed: list[int]  # positions, proposal order
    tokens: list[int]
    accepted: list[bool]
    score: list[float]
    flip: list[bool]
    reused: bool = False

    @property
    def n_accepted(self) -> int:
        return sum(self.accepted)

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "proposed": list(self.proposed),
            "tokens": list(self.tokens),
            "accepted": [int(a) for a in self.accepted],
            "score": rounded(self.score),
            "flip": [int(f) for f in self.flip],
            "reused": int(self.reused),
        }

    @classmethod
    def from_json(cls, data: object) -> GateRecord:
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {data!r:.40}")
        try:
            proposed = as_array(data["proposed"], np.int64, 1).tolist()
            tokens = as_array(data["tokens"], np.int64, 1).tolist()
            accepted = as_array(data["accepted"], bool, 1).tolist()
            score = as_array(data["score"], np.float64, 1).tolist()
            flip = as_array(data["flip"], bool, 1).tolist()
            same_length(len(proposed), tokens=tokens, accepted=accepted, score=score, flip=flip)
            return cls(as_str(data["rule"]), proposed, tokens, accepted, score, flip, bool(data.get("reused", 0)))
        except KeyError as exc:
            raise ValueError(f"the field {exc.args[0]!r} is missing") from None


_OWN = "this project (after Fast-dLLM's threshold and the dependency-violation pass)"
LOOKAHEAD_K = Knob("lookahead_k", int, 8, "tokens proposed per step: the most confident masked positions of the "
                   "block, checked against each other in one batched call", label="Proposed per step K", paper=_OWN,
                   low=2, high=64)  # fmt: skip
GATE_GAMMA = Knob("gate_gamma", float, 1.0, "reject a proposed token whose log-probability drops by more than γ "
                  "nats once the more confident proposals are revealed (or whose top choice flips)",
                  label="Gate γ, nats", paper=_OWN, low=0.0, step=0.1)  # fmt: skip
GATE_TAU = Knob("gate_tau", float, 1.0, "reject a proposed token with S_ij < −τ (or a flip) against a kept one",
                label="Pairwise gate τ, nats", paper=_OWN, low=0.0, step=0.1)  # fmt: skip
ENERGY_BOUND = Knob("energy_bound", float, 1.0, "commit the longest prefix of the proposal whose Ind-E (log Q − "
                    "log P_chain along the proposal order) is at most this", label="Energy bound, nats", paper=_OWN,
                    low=0.0, step=0.1)  # fmt: skip
