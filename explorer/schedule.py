"""How many tokens each step commits, and where the semi-autoregressive blocks lie."""
from __future__ import annotations


def tokens_per_step(n_masked: int, steps: int) -> list[int]:
    """LLaDA's schedule: k_j = floor(n/S) + [j < n mod S], so the counts sum to n."""
    if steps <= 0:
        raise ValueError("steps must be positive")
    base, extra = divmod(n_masked, steps)
    return [base + (1 if j < extra else 0) for j in range(steps)]


def block_bounds(gen_length: int, block_length: int) -> list[tuple[int, int]]:
    """[start, end) of each block, as offsets into the generated part."""
    return [(start, start + block_length) for start in range(0, gen_length, block_length)]
