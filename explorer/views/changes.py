"""What changed where: every position's events per step (unmask, revise, re-mask, a branch's edit)
and each position's revision history, derived from RunArrays alone (pure numpy, no Plotly).

A *revision* is a commit at a position that held a visible token (a token-changing strategy such
as XDLM's): the token it replaced is the sequence's token before that step (`arrays.tokens`), and
that token's probability is the one recorded when it was committed (the position's previous commit
event, when it wrote that very token; a token a branch's edit forced has none).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from explorer.store.arrays import RunArrays


@dataclass(frozen=True)
class ChangeKind:
    name: str  # the legend's label
    code: int  # the cell value; a larger code wins a downsampled block (the rarer, more telling event)
    colour: str
    meaning: str  # one phrase, for the hover


# Codes by priority: a block of cells shows its revision over a re-mask over an edit over an unmask.
UNMASK = ChangeKind("unmask", 1, "#74c476", "a masked position got a token")
EDIT = ChangeKind("edit (branch)", 2, "#1c7ed6", "a branch's edit forced a token or re-masked it")
REMASK = ChangeKind("re-mask", 3, "#e8590c", "a visible token was masked again")
REVISE = ChangeKind("revise", 4, "#9c36b5", "a visible token was changed into another")
CHANGE_KINDS: tuple[ChangeKind, ...] = (UNMASK, REVISE, REMASK, EDIT)  # legend order
KIND_BY_CODE = {kind.code: kind for kind in CHANGE_KINDS}


@dataclass(frozen=True)
class Revision:
    """One change of a visible token into another."""

    step: int
    position: int
    old: int  # the token replaced
    new: int  # the token written
    old_prob: float  # p(old) when it was committed (NaN: unknown, e.g. forced by an edit)
    new_prob: float  # p(new) at this step

    def change(self, token_text: Callable[[int], str]) -> str:
        """Plain text (escape before markup): "'cat' (p 0.12 when committed) → 'dog' (p 0.54)"."""
        old, new = token_text(self.old), token_text(self.new)
        return f"'{old}' ({_p(self.old_prob)} when committed) → '{new}' ({_p(self.new_prob)})"

    def text(self, token_text: Callable[[int], str]) -> str:
        """Plain text: "step 3: 'cat' (p 0.12 when committed) → 'dog' (p 0.54)"."""
        return f"step {self.step}: {self.change(token_text)}"


def column_of(arrays: RunArrays, step: int) -> int:
    """The column of `step` in the (G, S) arrays (steps are sorted)."""
    return int(np.searchsorted(arrays.steps, step))


def revisions(arrays: RunArrays) -> list[Revision]:
    """Every revision of the run, in step order (then position)."""
    commits = arrays.commits
    picked = np.flatnonzero(commits.revised)
    if picked.size == 0:
        return []
    order = np.lexsort((commits.position, commits.step))  # (n,) every commit by step, then position
    out = []
    for i in sorted(picked.tolist(), key=lambda i: (int(commits.step[i]), int(commits.position[i]))):
        step, position = int(commits.step[i]), int(commits.position[i])
        old = _token_before(arrays, position, step)
        old_prob = _old_prob(arrays, order, position, step, old)
        out.append(Revision(step, position, old, int(commits.token[i]), old_prob, _f(commits, i)))
    return out


def revision_history(arrays: RunArrays, step: int | None = None) -> dict[int, list[Revision]]:
    """position -> its revisions up to `step` (None: all), in step order."""
    out: dict[int, list[Revision]] = {}
    for revision in revisions(arrays):
        if step is None or revision.step <= step:
            out.setdefault(revision.position, []).append(revision)
    return out


def change_grid(arrays: RunArrays) -> np.ndarray:
    """(G, S) int8: the change at each position in each step, as a `ChangeKind.code` (0: none).

    A step's commits come first, then its re-masks, then a branch's edits (the engine's order; a
    step never re-masks what it commits): where two fall in one cell the later one is shown. An
    edit made before step 0 (a branch from the prompt) shows in step 0's column."""
    G, S = arrays.gen_length, arrays.n_steps
    grid = np.zeros((G, S), dtype=np.int8)
    if S == 0:
        return grid
    commits = arrays.commits
    codes = np.where(commits.revised, REVISE.code, UNMASK.code)
    _mark(arrays, grid, commits.step, commits.position, codes)
    _mark(arrays, grid, arrays.remasks.step, arrays.remasks.position, REMASK.code)
    _mark(arrays, grid, np.maximum(arrays.edits.step, 0), arrays.edits.position, EDIT.code)
    return grid


def change_counts(grid: np.ndarray) -> dict[ChangeKind, int]:
    """How many cells of each kind (legend order)."""
    return {kind: int((grid == kind.code).sum()) for kind in CHANGE_KINDS}


def block_max(grid: np.ndarray, fg: int, fs: int) -> np.ndarray:
    """(ceil(G/fg), ceil(S/fs)) the largest code of each fg x fs block (the most telling change)."""
    G, S = grid.shape
    rows, cols = -(-G // fg), -(-S // fs)
    padded = np.zeros((rows * fg, cols * fs), dtype=grid.dtype)
    padded[:G, :S] = grid
    return padded.reshape(rows, fg, cols, fs).max(axis=(1, 3))


def change_texts(arrays: RunArrays, grid: np.ndarray, token_text: Callable[[int], str]) -> np.ndarray:
    """(G, S) object: plain text saying what happened in each cell ('' where nothing did), for the hover."""
    out = np.full(grid.shape, "", dtype=object)
    commits = arrays.commits
    moved = {(r.step, r.position): r for r in revisions(arrays)}
    for i in range(commits.step.shape[0]):
        step, position = int(commits.step[i]), int(commits.position[i])
        c = _cell(arrays, step)
        if c is None or not 0 <= position < grid.shape[0]:
            continue
        revision = moved.get((step, position))
        if revision is not None:
            out[position, c] = "revised " + revision.change(token_text)
        else:
            out[position, c] = f"unmasked → '{token_text(int(commits.token[i]))}' ({_p(_f(commits, i))})"
    for step, position, token in zip(arrays.remasks.step.tolist(), arrays.remasks.position.tolist(),
                                     arrays.remasks.token.tolist()):  # fmt: skip
        c = _cell(arrays, step)
        if c is not None and 0 <= position < grid.shape[0]:
            out[position, c] = f"re-masked: took away '{token_text(token)}'"
    for step, position, token, forced in arrays.edits.rows():
        c = _cell(arrays, max(step, 0))
        if c is not None and 0 <= position < grid.shape[0]:
            what = f"forced '{token_text(token)}'" if forced else f"re-masked '{token_text(token)}'"
            out[position, c] = f"edit of this branch: {what}"
    return out


# ---- helpers -----------------------------------------------------------------------------------


def _mark(arrays: RunArrays, grid: np.ndarray, steps, positions, codes) -> None:
    steps, positions = np.asarray(steps, dtype=np.int64), np.asarray(positions, dtype=np.int64)
    codes = np.broadcast_to(np.asarray(codes, dtype=np.int8), steps.shape)
    columns = np.searchsorted(arrays.steps, steps)
    columns_ok = columns < arrays.n_steps
    known = columns_ok & (arrays.steps[np.minimum(columns, arrays.n_steps - 1)] == steps)
    ok = known & (positions >= 0) & (positions < grid.shape[0])
    grid[positions[ok], columns[ok]] = codes[ok]


def _cell(arrays: RunArrays, step: int) -> int | None:
    c = column_of(arrays, step)
    return c if c < arrays.n_steps and int(arrays.steps[c]) == step else None


def _token_before(arrays: RunArrays, position: int, step: int) -> int:
    """The token at `position` just before `step` (the mask id before the first step)."""
    c = column_of(arrays, step)
    return int(arrays.tokens[position, c - 1]) if c > 0 else int(arrays.run["mask_id"])


def _old_prob(arrays: RunArrays, order: np.ndarray, position: int, step: int, old: int) -> float:
    """p(old) at the position's latest commit before `step`, if that commit wrote `old` (else NaN)."""
    commits = arrays.commits
    before = order[(commits.position[order] == position) & (commits.step[order] < step)]
    if before.size == 0 or int(commits.token[before[-1]]) != old:
        return math.nan
    return _f(commits, int(before[-1]))


def _f(commits, i: int) -> float:
    return float(commits.prob[i])


def _p(prob: float) -> str:
    return f"p {prob:.2f}" if math.isfinite(prob) else "p n/a"
