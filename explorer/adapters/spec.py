"""What the UI process knows of a model without loading its weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Enough to validate a request and show tokens: tokenizer functions, lengths, defaults."""

    name: str
    family: str
    context_length: int
    mask_id: int
    encode: Callable[[str], list[int]]
    token_text: Callable[[int], str]
    description: str
    violations_default: bool = False  # measure dependency violations unless the user turns them off
    default_ar_scorer: str | None = None  # the AR energy's model when the run names none
    # The uniform-noise share k the model was trained with (0: absorbing mask only, as MDLM and
    # LLaDA; XDLM's k otherwise): the UI sets the XDLM strategies' k to it when the model is picked.
    noise_k: float = 0.0
    # A uniform-noise canvas model (DiffusionGemma): its generation settings (adapters/diffusion_gemma.py
    # `CanvasDefaults`); None for a masked model. The UI fills the form from them when the model is picked.
    canvas: object | None = None
