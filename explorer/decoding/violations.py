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

Cross-step (`violation_recent_steps` = m > 0): the pairs above only see tokens committed in the
same step. The same batched call also takes one row per recent token r (committed in the last m
steps and still visible before this step): the state x with r masked again. Then

    cross_D[r, j] = log q_j(y_j) - log p(y_j | x - r)   how knowing r changes the belief in y_j;
                                                        strongly negative = a contradiction
                                                        across steps (a pronoun vs a name)
    cross_flip[r, j] = argmax p(. | x - r)_j != argmax q_j   hiding r changes the top choice at u_j

and a token's cross score is its most negative cross_D[r, j] over r. A step with no recent
token to check (m = 0, the first step, or every recent token masked again) has no cross fields
at all (None), never a made-up 0: "not measured" is not "no contradiction".
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
VIOLATION_RECENT_STEPS = Knob(
    "violation_recent_steps",
    int,
    0,
    "cross-step violations: also check each multi-token step's tokens against the tokens committed in the "
    "last this many steps (still visible; at most violation-cap of them, the most recent first), one extra "
    "row each in the same batched pass; 0: off",
    label="violation recent steps",
    low=0,
    high=64,
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
class Recent:
    """The recent tokens a step's tokens are checked against: positions (m,) int64 of the
    generated part, the visible token at each (m,) and how many steps ago it was committed (m,),
    most recent first."""

    positions: np.ndarray
    tokens: np.ndarray
    ago: np.ndarray


@dataclass(frozen=True, eq=False)
class CrossStep:
    """The cross-step matrices: one row per recent token r, one column per token j of the step."""

    positions: np.ndarray  # (m,) int64 the recent tokens' positions, most recent first
    tokens: np.ndarray  # (m,) int64 the token visible at each
    ago: np.ndarray  # (m,) int64 steps ago it was committed (1 = the step before)
    D: np.ndarray  # (m, n) float64 log q_j(y_j) - log p(y_j | x with r masked)
    flip: np.ndarray  # (m, n) bool masking r changes the model's top choice at u_j
    scores: np.ndarray  # (n,) most negative D over the recent tokens


@dataclass(frozen=True, eq=False)
class ViolationRecord(PairwiseViolations):
    """A step's violations as kept with the step: the matrices (rounded to 4 decimals when
    stored), how many tokens the step committed (more than n when capped) and the extra pass's
    cost next to the step's own forward pass."""

    n_committed: int = 0
    seconds: float = 0.0  # the extra pass
    forward_seconds: float | None = None  # the step's own forward, for the cost ratio
    # Cross-step (CrossStep's fields; all None when no recent token was checked): cross_scores
    # (n,) is aligned with `positions`, cross_D / cross_flip are (m, n).
    cross_positions: np.ndarray | None = None
    cross_tokens: np.ndarray | None = None
    cross_ago: np.ndarray | None = None
    cross_D: np.ndarray | None = None
    cross_flip: np.ndarray | None = None
    cross_scores: np.ndarray | None = None

    def __eq__(self, other: object) -> bool:  # numpy fields: compare the stored form
        return isinstance(other, ViolationRecord) and self.to_json() == other.to_json()

    __hash__ = None

    @property
    def capped(self) -> bool:
        return self.n_committed > len(self.positions)

    @property
    def cross(self) -> CrossStep | None:
        if self.cross_positions is None:
            return None
        return CrossStep(
            self.cross_positions, self.cross_tokens, self.cross_ago, self.cross_D, self.cross_flip, self.cross_scores
        )

    @classmethod
    def of(
        cls,
        p: PairwiseViolations,
        n_committed: int,
        seconds: float,
        forward_seconds: float | None,
        cross: CrossStep | None = None,
    ) -> ViolationRecord:
        c = (
            (None,) * 6
            if cross is None
            else (cross.positions, cross.tokens, cross.ago, cross.D, cross.flip, cross.scores)
        )
        return cls(
            p.positions,
            p.tokens,
            p.D,
            p.S,
            p.A,
            p.flip,
            p.token_scores,
            p.total,
            n_committed,
            seconds,
            forward_seconds,
            *c,
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
            cross_D=None if self.cross_D is None else r(self.cross_D),
            cross_scores=None if self.cross_scores is None else r(self.cross_scores),
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
        if self.cross_positions is not None:
            out["cross_positions"] = self.cross_positions.tolist()
            out["cross_tokens"] = self.cross_tokens.tolist()
            out["cross_ago"] = self.cross_ago.tolist()
            out["cross_D"] = rounded(self.cross_D)
            out["cross_flip"] = self.cross_flip.astype(int).tolist()
            out["cross_scores"] = rounded(self.cross_scores)
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
            cross = _cross_from_json(data, n) if "cross_positions" in data else (None,) * 6
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
                *cross,
            )
        except KeyError as exc:
            raise ValueError(f"the field {exc.args[0]!r} is missing") from None


def _cross_from_json(data: dict, n: int) -> tuple[np.ndarray, ...]:
    """The cross-step fields of a stored record (present together, at least one recent token)."""
    positions = as_array(data["cross_positions"], np.int64, 1)
    m = len(positions)
    if m == 0:
        raise ValueError("cross_positions is empty: a record without recent tokens has no cross fields")
    tokens, ago = as_array(data["cross_tokens"], np.int64, 1), as_array(data["cross_ago"], np.int64, 1)
    same_length(m, cross_tokens=tokens, cross_ago=ago)
    D, flip = as_array(data["cross_D"], np.float64, 2), as_array(data["cross_flip"], bool, 2)
    for name, array in (("cross_D", D), ("cross_flip", flip)):
        if array.shape != (m, n):
            raise ValueError(f"{name} must be {m} x {n}, got shape {array.shape}")
    scores = as_array(data["cross_scores"], np.float64, 1)
    same_length(n, cross_scores=scores)
    return positions, tokens, ago, D, flip, scores


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


def cross_step(
    logp_masked: np.ndarray, log_q: np.ndarray, argmax_masked: np.ndarray, argmax_step: np.ndarray, recent: Recent
) -> CrossStep:
    """The cross-step matrices, pure arithmetic: logp_masked[r, j] = log p(y_j | x with recent
    token r masked) and argmax_masked[r, j] the top token at u_j there (m, n); log_q[j] and
    argmax_step[j] from the step's own pass (n,)."""
    D = log_q[None, :] - logp_masked
    flip = argmax_masked != argmax_step[None, :]
    return CrossStep(recent.positions, recent.tokens, recent.ago, D, flip, D.min(axis=0))


def reveal_each(x: torch.Tensor, prompt_length: int, positions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(n, L): row i is the state x (1, L) with only token i of the committed set revealed."""
    n = positions.numel()
    batch = x.expand(n, -1).clone()
    batch[torch.arange(n, device=x.device), prompt_length + positions] = tokens
    return batch


def mask_each(x: torch.Tensor, prompt_length: int, positions: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(m, L): row r is the state x (1, L) with the visible token at positions[r] masked again."""
    m = positions.numel()
    batch = x.expand(m, -1).clone()
    batch[torch.arange(m, device=x.device), prompt_length + positions] = mask_id
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
    return measure_steps(log_probs, x, prompt_length, committed, tokens_of, log_q_step, confidence, cap)[0]


def measure_steps(
    log_probs: LogProbFn,
    x: torch.Tensor,
    prompt_length: int,
    committed: np.ndarray,
    tokens_of: np.ndarray,
    log_q_step: torch.Tensor,
    confidence: np.ndarray,
    cap: int,
    recent: Recent | None = None,
    mask_id: int | None = None,
) -> tuple[PairwiseViolations, CrossStep | None]:
    """`measure`, and with recent tokens (visible in x, none of them committed now; mask_id
    needed then) the cross-step matrices from the same call: n revealed rows, then one row per
    recent token with it masked again; None without recent tokens."""
    positions = most_confident(committed, confidence, cap)
    tokens = tokens_of[positions]
    pos_t = torch.as_tensor(positions, device=x.device)
    tok_t = torch.as_tensor(tokens, device=x.device)
    n, m = len(positions), 0 if recent is None else len(recent.positions)
    batch = reveal_each(x, prompt_length, pos_t, tok_t)
    if m:
        batch = torch.cat(
            [batch, mask_each(x, prompt_length, torch.as_tensor(recent.positions, device=x.device), mask_id)]
        )
    lp = log_probs(batch, pos_t.expand(n + m, -1))  # (n + m, n, V)
    logp = lp.gather(-1, tok_t.expand(n + m, -1)[..., None]).squeeze(-1).double().cpu().numpy()  # (n + m, n)
    argmax = lp.argmax(-1).cpu().numpy()
    log_q = log_q_step[pos_t].gather(-1, tok_t[:, None]).squeeze(-1).double().cpu().numpy()  # (n,)
    argmax_step = log_q_step[pos_t].argmax(-1).cpu().numpy()  # (n,) the step's own top choice at each u_j
    pair = pairwise(logp[:n], log_q, argmax[:n], positions.astype(np.int64), tokens.astype(np.int64), argmax_step)
    cross = cross_step(logp[n:], log_q, argmax[n:], argmax_step, recent) if m else None
    return pair, cross
