"""Prophet early commit: a switch on top of any strategy that fills every remaining mask with
its argmax once the model is sure (Prophet: "Diffusion language models know the answer before
decoding", Li et al. 2025)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.decoding.jsonvalues import as_bool, as_float
from explorer.decoding.knobs import Knob

PROPHET = Knob(
    "prophet",
    bool,
    False,
    "fill every mask at once when the mean top-1 minus top-2 logit gap is large",
    label="Prophet early commit",
    paper="Prophet (Li et al. 2025)",
)
PROPHET_THRESHOLDS = (7.5, 5.0, 2.5)  # top-1 minus top-2 logit gap, by third of the steps


def prophet_early_commit(
    mean_gap: float, step: int, total_steps: int, thresholds: tuple[float, float, float] = PROPHET_THRESHOLDS
) -> bool:
    """Prophet: commit every remaining mask now when the mean top-1 minus top-2 logit gap
    reaches the threshold of the current phase (progress step / total < 0.33, < 0.67, else)."""
    progress = step / total_steps
    phase = 0 if progress < 0.33 else 1 if progress < 0.67 else 2
    return mean_gap >= thresholds[phase]


@dataclass(frozen=True)
class ProphetCheck:
    """What a step's Prophet check saw (kept with the step)."""

    mean_gap: float  # mean top-1 minus top-2 logit gap over the still-masked positions
    early_commit: bool

    def to_json(self) -> dict:
        return {"mean_gap": round(self.mean_gap, 4), "early_commit": self.early_commit}

    @classmethod
    def from_json(cls, data: object) -> ProphetCheck:
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {data!r:.40}")
        try:
            return cls(as_float(data["mean_gap"]), as_bool(data["early_commit"]))
        except KeyError as exc:
            raise ValueError(f"the field {exc.args[0]!r} is missing") from None


def prophet_check(logits: torch.Tensor, masked: torch.Tensor, step: int, total_steps: int) -> ProphetCheck:
    """logits (G, V), masked (G,) bool: the mean gap over the masked positions, and whether it fires."""
    top2 = logits.topk(2, dim=-1).values  # (G, 2)
    gaps = (top2[:, 0] - top2[:, 1]).nan_to_num(posinf=1e4)
    mean_gap = float((gaps * masked).sum() / masked.sum().clamp_min(1))
    return ProphetCheck(mean_gap, prophet_early_commit(mean_gap, step, total_steps))
