"""How many tokens each step commits, and where the semi-autoregressive blocks lie.

Two schedules (`SCHEDULES`), for the strategies that commit a scheduled number of tokens
(low_confidence, margin, entropy, random, rcr):

- `llada`: k_j = floor(n/S) + [j < n mod S] over the n masked positions of the block at its
  start, so the counts sum to n (LLaDA's `get_num_transfer_tokens`).
- `dream`: on t = linspace(1, eps, S + 1), eps = 1e-3, step j commits int(m (1 - t_{j+1}/t_j))
  of the m positions still masked, and all that are left on the last step (Dream's `_sample`,
  computed in float32 as it is there). A step may commit nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

DREAM_EPS = 1e-3  # Dream's generation_config.eps


def tokens_per_step(n_masked: int, steps: int) -> list[int]:
    """LLaDA's schedule: k_j = floor(n/S) + [j < n mod S], so the counts sum to n."""
    if steps <= 0:
        raise ValueError("steps must be positive")
    return [llada_count(n_masked, j, steps) for j in range(steps)]


def llada_count(n_masked: int, j: int, steps: int) -> int:
    """k_j of LLaDA's schedule for a block that started with n_masked masks."""
    base, extra = divmod(n_masked, steps)
    return base + (1 if j < extra else 0)


def dream_count(n_now: int, j: int, steps: int, eps: float = DREAM_EPS) -> int:
    """Dream's count for step j of `steps` with `n_now` positions still masked."""
    if j >= steps - 1:
        return n_now
    timesteps = torch.linspace(1, eps, steps + 1)  # float32, as Dream's
    t, s = timesteps[j], timesteps[j + 1]
    return int(torch.tensor(float(n_now)) * (1 - s / t))


@dataclass(frozen=True)
class Schedule:
    """A registry entry: the count of step j of S, from the block's masked count at its start
    (n_block) and now (n_now)."""

    name: str
    count: Callable[[int, int, int, int], int]  # (n_block, n_now, j, S) -> tokens this step
    help: str
    paper: str


def _llada(n_block: int, n_now: int, j: int, steps: int) -> int:
    return llada_count(n_block, j, steps)


def _dream(n_block: int, n_now: int, j: int, steps: int) -> int:
    return dream_count(n_now, j, steps)


SCHEDULES: dict[str, Schedule] = {
    "llada": Schedule("llada", _llada, "equal counts per step (LLaDA)", "LLaDA (Nie et al. 2025)"),
    "dream": Schedule(
        "dream",
        _dream,
        "a share int(m (1 - s/t)) of the m still masked, on t = linspace(1, 1e-3, S+1) (Dream)",
        "Dream (Ye et al. 2025)",
    ),
}


def scheduled_count(schedule: str, n_block: int, n_now: int, j: int, steps: int) -> int:
    """Tokens step j commits; past the last scheduled step (adaptive rules) one at a time."""
    return SCHEDULES[schedule].count(n_block, n_now, j, steps) if j < steps else 1


def block_bounds(gen_length: int, block_length: int) -> list[tuple[int, int]]:
    """[start, end) of each block, as offsets into the generated part."""
    return [(start, start + block_length) for start in range(0, gen_length, block_length)]
