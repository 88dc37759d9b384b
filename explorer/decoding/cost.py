"""What a decode will cost in sequence forwards, estimated from its settings before it runs: a
server refuses a job over its budget with this number named, instead of holding a worker for
hours (energies with many candidates and orders on every step are the expensive case).

Counted as the engine counts `StepRecord.forward_passes`: the step's own pass (two with
classifier-free guidance), the violation pass (a batch of n sequences counts n, at most
`violation_cap`), and inside the energy window the candidates' own pass (k), the chain terms
(k S (n - 1) sequences; the step's energies are skipped above `energy_max_sequences`) and the AR
energy's n. Measured against runs of the embedded model in tests/test_limits.py. n is the most tokens a step
commits under the schedule, so the estimate is an upper bound for the scheduled strategies; for
the threshold strategies, which may commit more in one step and then take fewer steps, it is
the same order (the tests compare it with measured runs). A gated strategy (lookahead,
pairwise_gate, ...) runs its step's pass and one batched probe of K rows per step and commits at
least one token a step; the estimate takes two tokens a step (measured on the embedded model,
K = 8: 2.4 for lookahead_exact, 4-6 for the others), so it is of the same order, not a bound.
"""

from __future__ import annotations

import math

from explorer.decoding.config import DecodeConfig
from explorer.decoding.strategies import STRATEGIES


def tokens_per_step_bound(config: DecodeConfig) -> int:
    """The most tokens one step commits under an even split of each block over its steps."""
    block = config.block_length or config.gen_length
    blocks = max(1, math.ceil(config.gen_length / block))
    steps_per_block = max(1, config.steps // blocks)
    return max(1, math.ceil(block / steps_per_block))


def estimated_passes(config: DecodeConfig) -> int:
    """Sequence forwards of the whole run (an estimate: see the module's note)."""
    if STRATEGIES[config.strategy].gate is not None:
        return _gated_passes(config)
    n = tokens_per_step_bound(config)
    per_step = 2 if config.cfg_scale else 1
    if config.violations and n > 1:
        # the pass over the step's tokens, and one row per recent token (cross-step variant)
        per_step += min(n, config.violation_cap) + min(config.violation_recent_steps * n, config.violation_cap)
    steps = config.steps
    total = steps * per_step
    if config.energies:
        low, high = config.energy_window
        # The window is on the masked fraction: of the whole run, or of each block (all its steps).
        share = max(0.0, min(high, 1.0) - max(low, 0.0))
        in_window = steps if config.block_length else min(steps, math.ceil(steps * share) + 1)
        names = {name for name, _ in config.energies}
        chain = config.energy_candidates * config.energy_orders * (n - 1) if names - {"ar"} else 0
        if chain <= config.energy_max_sequences:  # else the engine skips the step's energies
            # the candidates' own pass (k), the chain, the AR energy's reading of the n tokens
            total += in_window * (config.energy_candidates + chain + (n if "ar" in names else 0))
    return int(total)


def _gated_passes(config: DecodeConfig) -> int:
    """A gated run: per step its own pass and the probe's K rows (with CFG, twice), and the
    violation pass over the committed tokens; two tokens a step (see the module's note)."""
    K, copies = config.lookahead_k, 2 if config.cfg_scale else 1
    steps = math.ceil(config.gen_length / 2)
    # The violation pass over the two tokens; the pairwise gate's probe is that pass already.
    measuring = config.violations and STRATEGIES[config.strategy].gate.probe != "pairwise"
    per_step = copies * (1 + K) + (copies * 2 if measuring else 0)
    return int(steps * per_step)
