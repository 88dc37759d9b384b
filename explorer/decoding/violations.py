"""Dependency violations between the tokens one step commits together (DESIGN 3.3).

For a step that commits n >= 2 tokens y_1..y_n at positions u_1..u_n from the state x, one
batched extra pass of n sequences (x with one committed token y_i revealed) gives
`log p(y_j | x + y_i)` for every pair. With `log q_j(y_j)` from the step's own pass:

    D_ij = log p(y_j | x + y_i) - log q_j(y_j)   how revealing y_i changes the belief in y_j
    S_ij = (D_ij + D_ji) / 2                      pointwise mutual information for a consistent
                                                  model; strongly negative = contradiction
    A_ij = D_ij - D_ji                            0 for a consistent joint: order dependence
    flip_ij = argmax p(. | x + y_i)_j != argmax q_j  revealing y_i would change the model's top
                                                  choice at u_j (DESIGN compares with y_j; the same
                                                  at T = 0, and at T > 0 a sampled y_j would make
                                                  every pair a "flip" without any dependency)

A token's violation score is its most negative S_ij over the others; a step's total is the
sum over pairs i < j of the negative parts min(S_ij, 0) (a positive PMI is agreement, not a
violation). For large models the pass is capped at the `cap` most confident committed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from explorer.decoding.jsonvalues import as_array, as_float, as_int, rounded, same_length, square
from explorer.decoding.knobs import Knob
from explorer.decoding.protocols import LogProbFn

VIOLATIONS_CAP = Knob(
    "violation_cap",
    int,
    16,
    "at most this many (the most confident) committed tokens a step is checked for",
    label="violation cap",
    low=2,
    high=256,
    in_form=False,
)


@dataclass(frozen=True, eq=False)
class PairwiseViolations:
    positions: np.ndarray  # (n,) int64 generated-part positions, ascending
    tokens: np.ndarray  # (n,) int64
    D: np.ndarray  # (n, n) float64, diagonal 0
    S: np.ndarray  # (n, n)
    A: np.ndarray  # (n, n)
    flip: np.ndarray  # (n, n) bool, diagonal False
    token_scores: np.ndarray  # (n,) most negative S_ij over j != i
    total: float  # sum over i < j of min(S_ij, 0)


@dataclass(frozen=True, eq=False)
class ViolationRecord(PairwiseViolations):
    """A step's violations as kept with the step: the matrices (rounded to 4 decimals when
    stored), how many tokens the step committed (more than n when capped) and the extra pass's
    cost next to the step's own forward pass."""

    n_committed: int = 0
    seconds: float = 0.0  # the extra pass
    forward_seconds: float | None = None  # the step's own forward, for the cost ratio

    def __eq__(self, other: object) -> bool:  # numpy fields: compare the stored form
        return isinstance(other, ViolationRecord) and self.to_json() == other.to_json()

    __hash__ = None

    @property
    def capped(self) -> bool:
        return self.n_committed > len(self.positions)

    @classmethod
    def of(
        cls, p: PairwiseViolations, n_committed: int, seconds: float, forward_seconds: float | None
    ) -> ViolationRecord:
        return cls(
            p.positions, p.tokens, p.D, p.S, p.A, p.flip, p.token_scores, p.total, n_committed, seconds, forward_seconds
        )

    def kept(self) -> ViolationRecord:
        """This record as the store keeps it (4 decimals), so live and stored views agree."""
        r = lambda a: np.round(a, 4) + 0.0  # noqa: E731  (+ 0.0 turns -0.0 into 0.0)
        return replace(
            self,
            D=r(self.D),
            S=r(self.S),
            A=r(self.A),
            token_scores=r(self.token_scores),
            total=round(float(self.total), 4) + 0.0,
            seconds=round(self.seconds, 6),
            forward_seconds=None if self.forward_seconds is None else round(self.forward_seconds, 6),
        )

    def to_json(self) -> dict:
        out = {
            "positions": self.positions.tolist(),
            "tokens": self.tokens.tolist(),
            "S": rounded(self.S),
            "A": rounded(self.A),
            "D": rounded(self.D),
            "flip": self.flip.astype(int).tolist(),
            "scores": rounded(self.token_scores),
            "total": round(float(self.total), 4) + 0.0,
            "n_committed": self.n_committed,
            "capped": self.capped,
            "seconds": round(self.seconds, 6),
        }
        if self.forward_seconds is not None:
            out["forward_seconds"] = round(self.forward_seconds, 6)
        return out

    @classmethod
    def from_json(cls, data: object) -> ViolationRecord:
        """Read a stored record back; ValueError names what is malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {data!r:.40}")
        try:
            positions, tokens = as_array(data["positions"], np.int64, 1), as_array(data["tokens"], np.int64, 1)
            n = len(positions)
            D, S, A = (square(as_array(data[k], np.float64, 2), n, k) for k in ("D", "S", "A"))
            flip = square(as_array(data["flip"], bool, 2), n, "flip")
            scores = as_array(data["scores"], np.float64, 1)
            same_length(n, tokens=tokens, scores=scores)
            forward = data.get("forward_seconds")
            return cls(
                positions,
                tokens,
                D,
                S,
                A,
                flip,
                scores,
                as_float(data["total"]),
                as_int(data["n_committed"]),
                as_float(data["seconds"]),
                None if forward is None else as_float(forward),
            )
        except KeyError as exc:
            raise ValueError(f"the field {exc.args[0]!r} is missing") from None


def pairwise(
    logp_revealed: np.ndarray,
    log_q: np.ndarray,
    argmax_revealed: np.ndarray,
    positions: np.ndarray,
    tokens: np.ndarray,
    argmax_step: np.ndarray | None = None,
) -> PairwiseViolations:
    """The matrices from the extra pass, pure arithmetic.

    logp_revealed[i, j] = log p(y_j | x + y_i); argmax_revealed[i, j] the top token at u_j in
    that pass; log_q[j] = log q_j(y_j) and argmax_step[j] the top token at u_j from the step's
    own pass (default: the committed tokens, as at T = 0). All (n, n) / (n,)."""
    n = len(tokens)
    off = ~np.eye(n, dtype=bool)
    D = np.where(off, logp_revealed - log_q[None, :], 0.0)  # (n, n)
    S = (D + D.T) / 2
    A = D - D.T
    reference = tokens if argmax_step is None else argmax_step
    flip = off & (argmax_revealed != reference[None, :])
    scores = np.where(off, S, np.inf).min(axis=1)  # (n,) most negative S over the others
    upper = np.triu(off)
    total = float(np.minimum(S[upper], 0.0).sum())
    return PairwiseViolations(positions, tokens, D, S, A, flip, scores, total)


def restrict(p: PairwiseViolations, keep: np.ndarray) -> PairwiseViolations:
    """The matrices of a subset of the tokens (keep (n,) bool): what the pass over that subset
    alone would give, since row i of the pass reveals only token i."""
    D, flip = p.D[np.ix_(keep, keep)], p.flip[np.ix_(keep, keep)]
    S, A = (D + D.T) / 2, D - D.T
    off = ~np.eye(len(D), dtype=bool)
    scores = np.where(off, S, np.inf).min(axis=1)
    total = float(np.minimum(S[np.triu(off)], 0.0).sum())
    return PairwiseViolations(p.positions[keep], p.tokens[keep], D, S, A, flip, scores, total)


def reveal_each(x: torch.Tensor, prompt_length: int, positions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(n, L): row i is the state x (1, L) with only token i of the committed set revealed."""
    n = positions.numel()
    batch = x.expand(n, -1).clone()
    batch[torch.arange(n, device=x.device), prompt_length + positions] = tokens
    return batch


def most_confident(positions: np.ndarray, confidence: np.ndarray, cap: int) -> np.ndarray:
    """The `cap` most confident of the committed positions (all of them when n <= cap), ascending."""
    if len(positions) <= cap:
        return positions
    keep = np.argsort(-confidence[positions], kind="stable")[:cap]
    return np.sort(positions[keep])


def measure(
    log_probs: LogProbFn,
    x: torch.Tensor,
    prompt_length: int,
    committed: np.ndarray,
    tokens_of: np.ndarray,
    log_q_step: torch.Tensor,
    confidence: np.ndarray,
    cap: int,
) -> PairwiseViolations:
    """Run the one batched extra pass for a step and return its matrices.

    x (1, L) is the state before the commit; committed (n,) the positions committed, tokens_of
    (G,) the committed token at each position; log_q_step (G, V) the step's log-probabilities."""
    positions = most_confident(committed, confidence, cap)
    tokens = tokens_of[positions]
    pos_t = torch.as_tensor(positions, device=x.device)
    tok_t = torch.as_tensor(tokens, device=x.device)
    n = len(positions)
    lp = log_probs(reveal_each(x, prompt_length, pos_t, tok_t), pos_t.expand(n, -1))  # (n, n, V)
    logp_revealed = lp.gather(-1, tok_t.expand(n, -1)[..., None]).squeeze(-1)  # (n, n)
    log_q = log_q_step[pos_t].gather(-1, tok_t[:, None]).squeeze(-1)  # (n,)
    argmax_step = log_q_step[pos_t].argmax(-1)  # (n,) the step's own top choice at each u_j
    return pairwise(
        logp_revealed.double().cpu().numpy(),
        log_q.double().cpu().numpy(),
        lp.argmax(-1).cpu().numpy(),
        positions.astype(np.int64),
        tokens.astype(np.int64),
        argmax_step.cpu().numpy(),
    )
