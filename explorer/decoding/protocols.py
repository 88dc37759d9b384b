"""The interfaces the engine decodes through; the adapters implement them.

The engine imports these, never an adapter module: any object with these attributes and
methods can be decoded (the embedded model, a Hugging Face family, a test double).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch


class Denoiser(Protocol):
    """Token ids (B, L) with masked positions equal to `mask_id` -> float32 logits (B, L, V)."""

    name: str
    mask_id: int
    context_length: int
    device: torch.device

    def logits(self, ids: torch.Tensor) -> torch.Tensor: ...  # (B, L) -> (B, L, V) float32
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def token_text(self, token_id: int) -> str: ...


class CanvasSession(Protocol):
    """One generation of a canvas model: the prompt and every finished canvas are in its cache."""

    def denoise(self, canvas: torch.Tensor, self_conditioning: torch.Tensor | None) -> torch.Tensor: ...
    # (1, C) canvas, (1, C, V) the previous step's scaled logits or None -> (1, C, V) float32 logits
    def append(self, canvas: torch.Tensor) -> None: ...  # a finished (1, C) canvas joins the context


class CanvasDenoiser(Protocol):
    """A uniform-noise block-diffusion model (DiffusionGemma): `loop = "canvas"`. It refines one
    canvas of `canvas_length` tokens at a time from uniform noise; `mask_id` is the store's noise
    marker (`vocab_size`: no token of the model)."""

    name: str
    loop: str  # "canvas"
    mask_id: int
    vocab_size: int
    canvas_length: int
    context_length: int
    device: torch.device
    eos_ids: tuple[int, ...]  # a canvas holding one ends the generation
    pad_id: int | None  # written after the first EOS (and over canvases never run)

    def begin(self, prompt_ids: list[int]) -> CanvasSession: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def token_text(self, token_id: int) -> str: ...


class Vocabulary(Protocol):
    """What an edit of a branch needs of a model's tokenizer (explorer/branching/edits.py)."""

    def vocabulary(self) -> Mapping[str, int]: ...  # text -> id of every token a person may force
    def special_ids(self) -> frozenset[int]: ...  # ids never written by an edit: the mask, specials


class ARScorer(Protocol):
    """An autoregressive model for the AR energy: ids (B, L) -> (B, L) log p(ids[t] | ids[<t])
    for t >= 1 (entry 0 is 0). It shares the denoiser's tokenizer (vocab_size at least as large)."""

    name: str
    vocab_size: int

    def log_probs(self, ids: torch.Tensor) -> torch.Tensor: ...  # (B, L) -> (B, L) float32


# (ids (B, L), cols (B, m) generated-part positions) -> log-probabilities (B, m, V) at those
# positions, mask token excluded. Implementations batch (and chunk) the forward calls.
LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# ids (B, L) -> (B, L): log p(ids[t] | ids[<t]) at t >= 1 (entry 0 unused), from an AR model.
ARLogProbFn = Callable[[torch.Tensor], torch.Tensor]
