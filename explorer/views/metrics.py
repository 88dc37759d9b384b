"""Summary numbers of a run, computed from RunArrays fields (pure numpy, no scipy).

`arness` measures how autoregressive a decode was: the Kendall tau-b rank correlation between
the step that committed each position and the position itself. For a token-changing strategy
(XDLM) that step is the position's *last* change (its last revision, else its commit), as
`RunArrays.commit_step` holds it: the order in which the final text took shape.
"""

from __future__ import annotations

import numpy as np

# Rows of the pairwise sign matrix computed at once: keeps memory at ~ROW_CHUNK x n floats
# (a few MB for n = 1024) instead of n x n.
ROW_CHUNK = 256


def arness(commit_step: np.ndarray) -> float:
    """Kendall tau-b between commit step and position, over committed positions (step >= 0).
    `commit_step` is the step that last changed each position (`RunArrays.commit_step`).

    +1: strictly left to right (every position committed no earlier than those on its left),
    -1: right to left, ~0: no order. Several positions committed in one step are ties in the
    commit step (positions never tie), which tau-b corrects for only partly: a perfectly
    left-to-right decode of k tokens per step scores sqrt(1 - ties / pairs), e.g. 0.95 for
    32 positions at 4 per step, and exactly +1 only at one token per step. NaN with fewer
    than two committed positions or when all were committed in the same step (no variation).
    """
    commit_step = np.asarray(commit_step).reshape(-1)  # (G,)
    positions = np.flatnonzero(commit_step >= 0)  # (n,)
    return kendall_tau_b(commit_step[positions], positions)


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall tau-b of two equal-length 1-D arrays, with the tie correction of both.

    tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2)), n0 = n(n-1)/2 pairs, n1 / n2 = pairs tied in
    x / y. O(n^2) time in row chunks, O(ROW_CHUNK * n) memory. NaN if undefined.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)  # (n,)
    y = np.asarray(y, dtype=np.float64).reshape(-1)  # (n,)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    n = x.size
    if n < 2:
        return float("nan")
    n0 = n * (n - 1) / 2
    untied_x, untied_y = n0 - _tied_pairs(x), n0 - _tied_pairs(y)
    if untied_x == 0 or untied_y == 0:
        return float("nan")
    # sum over ordered pairs i != j of sign(dx) sign(dy) = 2 (C - D); the diagonal adds 0.
    total = 0.0
    for start in range(0, n, ROW_CHUNK):
        sx = np.sign(x[start : start + ROW_CHUNK, None] - x[None, :])  # (chunk, n)
        sy = np.sign(y[start : start + ROW_CHUNK, None] - y[None, :])  # (chunk, n)
        total += float(np.einsum("ij,ij->", sx, sy))
    return float(np.clip(total / 2 / np.sqrt(untied_x * untied_y), -1.0, 1.0))


def _tied_pairs(values: np.ndarray) -> float:
    """Number of unordered pairs with equal values: sum over groups of t(t-1)/2."""
    _, counts = np.unique(values, return_counts=True)
    return float((counts * (counts - 1) / 2).sum())


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2.

    The Mann-Whitney form with average ranks, so it is exact with ties. NaN unless both
    classes are present."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average rank (1-based) over each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for lo, hi in zip(starts, ends):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC estimate."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))
