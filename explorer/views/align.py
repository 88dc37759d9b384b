"""Several runs on one slider, and where they first part ways (the Compare tab).

Two ways to line runs up: *by step* (the slider's value k shows each run after its step
min(k, last)) and *by fraction of steps* (the slider's value f in [0, 1] shows each run after its
step round(f x last), halves rounded up), so a 4-step run and a 32-step run can be compared at
"halfway". The runs *diverge* at the first slider value whose shown states differ (token ids,
masks included). Pure: numbers and arrays in, numbers out.

A run's "step" here is the index of its recorded step (0 = after the first step, -1 = before
any step: everything masked), i.e. a column of `RunArrays.tokens`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALIGN_MODES = ("step", "fraction")
FRACTION_TICKS = 100  # by fraction, the slider moves in percent: the values scanned for the divergence
MASKED = -1  # a masked position in `states`, whatever the model's mask id


def aligned_steps(n_steps_per_run: Sequence[int], mode: str, value: float | None) -> list[int]:
    """The step each run shows for the shared slider's `value`: by "step", min(value, last); by
    "fraction", round(value x last) with value clamped to [0, 1] and halves rounded up; None: each
    run's last step. last = n_steps - 1; a run with no steps shows -1 (before any step)."""
    if mode not in ALIGN_MODES:
        raise ValueError(f"unknown alignment {mode!r}; valid: {', '.join(ALIGN_MODES)}")
    out = []
    for n in n_steps_per_run:
        last = int(n) - 1
        if last < 0:
            out.append(-1)
        elif value is None:
            out.append(last)
        elif mode == "step":
            out.append(max(min(int(value), last), 0))
        else:
            f = min(max(float(value), 0.0), 1.0)
            out.append(min(math.floor(f * last + 0.5 + 1e-9), last))  # 1e-9: 0.29 * 100 is 28.999...
    return out


def slider_values(n_steps_per_run: Sequence[int], mode: str) -> list[float]:
    """The values the shared slider takes, in order: by step 0..(longest run's last step); by
    fraction 0, 0.01, ..., 1 (percent ticks)."""
    if mode == "step":
        return list(range(max(max((int(n) for n in n_steps_per_run), default=0), 1)))
    return [i / FRACTION_TICKS for i in range(FRACTION_TICKS + 1)]


def masked_states(tokens: np.ndarray, mask_id: int) -> np.ndarray:
    """A run's (G, S) tokens (`RunArrays.tokens`, the mask id where masked) as (S, G) rows, the
    state after each step, with MASKED where masked (so runs of models with other mask ids compare)."""
    states = np.asarray(tokens, dtype=np.int64).T.copy()
    states[states == int(mask_id)] = MASKED
    return states


def state_after(states: np.ndarray, step: int) -> np.ndarray:
    """Row `step` of `states` ((S, G), from masked_states); all MASKED for step -1 (before any step)."""
    if step < 0:
        return np.full(states.shape[1], MASKED, dtype=np.int64)
    return states[step]


def differing(rows: Sequence[np.ndarray]) -> set[int]:
    """Positions where the runs' shown sequences are not all the same (a mask differs from a
    token); positions that only the longer runs have always differ."""
    if len(rows) < 2:
        return set()
    n = min(len(r) for r in rows)
    longest = max(len(r) for r in rows)
    first = rows[0][:n]
    differ = np.zeros(n, dtype=bool)
    for row in rows[1:]:
        differ |= row[:n] != first
    return set(np.flatnonzero(differ).tolist()) | set(range(n, longest))


@dataclass(frozen=True)
class Divergence:
    """Where runs first part ways in an alignment."""

    value: float  # the slider's value (a step, or a fraction) where the shown states first differ
    steps: tuple[int, ...]  # each run's step at that value
    positions: tuple[int, ...]  # the positions that differ there, ascending


def first_divergence(states: Sequence[np.ndarray], mode: str) -> Divergence | None:
    """The first slider value (slider_values order) at which the runs' states differ; None if
    they agree at every value. `states[i]`: run i's (S_i, G_i) rows from masked_states."""
    n_steps = [s.shape[0] for s in states]
    for value in slider_values(n_steps, mode):
        steps = aligned_steps(n_steps, mode, value)
        rows = [state_after(s, k) for s, k in zip(states, steps)]
        positions = differing(rows)
        if positions:
            return Divergence(value, tuple(steps), tuple(sorted(positions)))
    return None


def differing_at(states: Sequence[np.ndarray], mode: str, value: float | None) -> tuple[list[int], set[int]]:
    """(each run's step, the positions that differ) at the slider's `value` (None: the end)."""
    steps = aligned_steps([s.shape[0] for s in states], mode, value)
    return steps, differing([state_after(s, k) for s, k in zip(states, steps)])
