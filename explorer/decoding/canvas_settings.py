"""A canvas model's generation settings, and the DecodeConfig that runs with them.

Kept apart from the adapter (explorer/adapters/diffusion_gemma.py, which imports transformers) so
that the UI process can fill its form from a model's `ModelSpec.canvas` without importing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from explorer.decoding.config import DecodeConfig


@dataclass(frozen=True)
class CanvasDefaults:
    """A DiffusionGemma checkpoint's generation settings (its generation config over transformers'
    defaults), what a run uses unless told otherwise."""

    canvas_length: int
    max_new_tokens: int
    max_denoising_steps: int
    entropy_bound: float
    t_min: float | None
    t_max: float | None
    stability_threshold: int | None
    confidence_threshold: float | None

    @property
    def canvases(self) -> int:
        return math.ceil(self.max_new_tokens / self.canvas_length)


def canvas_config(defaults: CanvasDefaults, **settings: Any) -> DecodeConfig:
    """The DecodeConfig of a run with the model's own settings (what `generate()` would use), then
    `settings` (any DecodeConfig field). A schedule or stop the model leaves unset runs as generate
    runs it: temperature 1 (t-min = t-max = 1) and no early stop (confidence 0)."""
    no_stop = defaults.stability_threshold is None or defaults.confidence_threshold is None
    no_schedule = defaults.t_min is None or defaults.t_max is None
    base = DecodeConfig(
        gen_length=defaults.canvases * defaults.canvas_length,
        steps=defaults.canvases * defaults.max_denoising_steps,
        block_length=defaults.canvas_length,
        strategy="eb",
        eb_gamma=defaults.entropy_bound,
        canvas_t_min=1.0 if no_schedule else defaults.t_min,
        canvas_t_max=1.0 if no_schedule else defaults.t_max,
        canvas_stability=0 if no_stop else defaults.stability_threshold,
        canvas_confidence=0.0 if no_stop else defaults.confidence_threshold,
        violations=False,
    )
    return replace(base, **settings)
