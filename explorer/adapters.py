"""Model adapters: one interface for the engine, one loader per model family.

A `Denoiser` maps ids (B, L) to logits (B, L, V) and carries its mask id, tokenizer, context
length and device. Loaders are found by family name in `MODEL_FAMILIES`; `load_denoiser`
turns a model name into an adapter (later issues register LLaDA, Dream, MDLM, masked LMs).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from models.tokenizer import WordTokenizer
from models.transformer import Transformer, TransformerConfig, load_model

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "models" / "embedded"


class Denoiser(Protocol):
    name: str
    mask_id: int
    context_length: int
    device: torch.device

    def logits(self, ids: torch.Tensor) -> torch.Tensor: ...  # (B, L) -> (B, L, V)
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def token_text(self, token_id: int) -> str: ...


class EmbeddedDenoiser:
    """The masked diffusion transformer shipped in models/embedded (word-level vocabulary)."""

    def __init__(self, model: Transformer, tokenizer: WordTokenizer, name: str = "embedded") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.mask_id = tokenizer.mask_id
        self.context_length = model.config.context_length
        self.device = next(model.parameters()).device

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(ids)  # (B, L, V)
        # MDLM's "subs" parameterisation: the clean data never holds the mask token, so its
        # logit is -inf (training never gave it a gradient: its raw value is meaningless).
        logits[..., self.mask_id] = float("-inf")
        return logits

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.token(token_id)


def load_embedded(directory: str | Path = EMBEDDED_DIR, device: str = "cpu") -> EmbeddedDenoiser:
    directory = Path(directory)
    return EmbeddedDenoiser(load_model(directory, "mdlm", device), WordTokenizer.load(directory / "vocab.json"))


MODEL_FAMILIES: dict[str, Callable[..., Denoiser]] = {"embedded": load_embedded}

# Model names the CLI and API accept, each with its family and loader arguments.
MODELS: dict[str, tuple[str, dict]] = {"embedded": ("embedded", {})}


class UnknownModelError(ValueError):
    pass


def load_denoiser(name: str, **overrides) -> Denoiser:
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    family, kwargs = MODELS[name]
    return MODEL_FAMILIES[family](**{**kwargs, **overrides})


@dataclass(frozen=True)
class ModelSpec:
    """What the UI process needs to validate a request without loading the model's weights."""

    name: str
    family: str
    context_length: int
    mask_id: int
    encode: Callable[[str], list[int]]
    token_text: Callable[[int], str]
    description: str


def describe_embedded(directory: str | Path = EMBEDDED_DIR) -> ModelSpec:
    directory = Path(directory)
    tokenizer = WordTokenizer.load(directory / "vocab.json")
    config = TransformerConfig.from_json((directory / "mdlm.json").read_text())
    return ModelSpec("embedded", "embedded", config.context_length, tokenizer.mask_id, tokenizer.encode,
                     tokenizer.token, f"story-grammar MDLM shipped with the app ({len(tokenizer)} words, CPU)")


MODEL_DESCRIBERS: dict[str, Callable[..., ModelSpec]] = {"embedded": describe_embedded}


def describe_model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    family, kwargs = MODELS[name]
    return MODEL_DESCRIBERS[family](**{k: v for k, v in kwargs.items() if k != "device"})
