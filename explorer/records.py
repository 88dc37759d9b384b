"""What the engine yields: one StepRecord per step, and the DecodeResult at the end.

Positions are indices into the generated part (0 .. gen_length - 1); token ids are the
model's. Per-position arrays are host numpy arrays, moved from the device once per step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class StepRecord:
    step: int  # 0-based over the whole run
    block: int
    committed: np.ndarray  # (n,) int64 positions committed this step
    tokens: np.ndarray  # (n,) int64 their token ids
    probs: np.ndarray  # (n,) float32 p(token) at commit
    top_ids: np.ndarray  # (n, K) int64 the K most probable tokens at each committed position
    top_probs: np.ndarray  # (n, K) float32 and their probabilities
    argmax: np.ndarray  # (G,) int32 top-1 token at every position before this step's commit
    confidence: np.ndarray  # (G,) float32 p_top1
    entropy: np.ndarray  # (G,) float32 nats
    margin: np.ndarray  # (G,) float32 p_top1 - p_top2
    masked_before: int  # masked positions in the generated part before this step
    seconds: float  # wall time of this step (forward, metrics, selection)
    # Sequence forwards this step ran, of any model: the step's pass (2 with CFG), the energies'
    # chain copies and AR candidates, the violation pass (a batch of n counts n).
    forward_passes: int = 1
    remasked: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (r,) positions masked again
    remasked_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (r,) the tokens removed
    remasked_probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (r,) p at their commit
    # JSON-ready step extras: "energy" (every candidate's terms, the kept one), "violations"
    # (D, S, A, flip, scores of the committed set), "prophet" (the logit gap) when they ran.
    extras: dict = field(default_factory=dict)

    @property
    def n_committed(self) -> int:
        return int(self.committed.size)


@dataclass(frozen=True)
class DecodeResult:
    status: str  # completed | cancelled | failed
    token_ids: list[int]  # the generated part (mask ids where a cancelled run left masks)
    text: str
    n_steps: int
    run_id: int | None = None
    error: str | None = None
