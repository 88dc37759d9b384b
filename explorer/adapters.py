"""Model adapters: one interface for the engine, one loader per model family.

A `Denoiser` maps ids (B, L) to float32 logits (B, L, V) and carries its mask id, tokenizer,
context length and device. Families are registered by name: `MODEL_FAMILIES` holds each one's
loader (registry entry -> Denoiser), `MODEL_DESCRIBERS` its describer (entry -> ModelSpec, no
weights read), and `REMOTE_CODE_FAMILIES` those that need `trust_remote_code`:

| family      | what                                                        | module              |
|-------------|-------------------------------------------------------------|---------------------|
| `embedded`  | the story-grammar MDLM shipped in models/embedded           | here                |
| `masked_lm` | any `AutoModelForMaskedLM` (BERT, RoBERTa, ModernBERT)      | explorer/hf_adapters|
| `llada`     | LLaDA (`AutoModel`, remote code)                            | explorer/hf_adapters|
| `dream`     | Dream (`AutoModel`, remote code, logits shifted right by 1) | explorer/hf_adapters|
| `mdlm`      | MDLM (`AutoModelForMaskedLM`, remote code, takes a timestep)| explorer/hf_adapters|

Which *models* exist is the operator's choice (`explorer/model_config.py`): `load_denoiser(name)`
and `describe_model(name)` look the name up in a `ModelRegistry` (the one passed, else the active
one: `--models-config` / $EXPLORER_MODELS_CONFIG, else only `embedded`). `trust_remote_code`
comes from that registry entry and nowhere else.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from explorer.model_config import ModelEntry, ModelRegistry, UnknownModelError, active_registry
from models.tokenizer import WordTokenizer
from models.transformer import Transformer, TransformerConfig, load_model

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "models" / "embedded"


class Denoiser(Protocol):
    name: str
    mask_id: int
    context_length: int
    device: torch.device

    def logits(self, ids: torch.Tensor) -> torch.Tensor: ...  # (B, L) -> (B, L, V) float32
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def token_text(self, token_id: int) -> str: ...


class EmbeddedDenoiser:
    """The masked diffusion transformer shipped in models/embedded (word-level vocabulary)."""

    violations_default = True  # small enough that the extra pass of each step is cheap
    default_ar_scorer = "embedded"  # the AR energy's model: the AR twin shipped alongside

    def __init__(self, model: Transformer, tokenizer: WordTokenizer, name: str = "embedded") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.mask_id = tokenizer.mask_id
        self.context_length = model.config.context_length
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size

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


def load_embedded(directory: str | Path = EMBEDDED_DIR, device: str = "cpu",
                  name: str = "embedded") -> EmbeddedDenoiser:
    directory = Path(directory)
    return EmbeddedDenoiser(load_model(directory, "mdlm", device), WordTokenizer.load(directory / "vocab.json"), name)


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
    violations_default: bool = False  # measure dependency violations unless the user turns them off
    default_ar_scorer: str | None = None  # the AR energy's model when the run names none


def describe_embedded(directory: str | Path = EMBEDDED_DIR, name: str = "embedded") -> ModelSpec:
    directory = Path(directory)
    tokenizer = WordTokenizer.load(directory / "vocab.json")
    config = TransformerConfig.from_json((directory / "mdlm.json").read_text())
    return ModelSpec(name, "embedded", config.context_length, tokenizer.mask_id, tokenizer.encode,
                     tokenizer.token, f"story-grammar MDLM shipped with the app ({len(tokenizer)} words, CPU)",
                     violations_default=EmbeddedDenoiser.violations_default,
                     default_ar_scorer=EmbeddedDenoiser.default_ar_scorer)


def _embedded_device(entry: ModelEntry) -> str:
    if entry.device != "auto":
        return entry.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_embedded_entry(entry: ModelEntry) -> Denoiser:
    return load_embedded(entry.path or EMBEDDED_DIR, _embedded_device(entry), entry.name)


def _describe_embedded_entry(entry: ModelEntry) -> ModelSpec:
    spec = describe_embedded(entry.path or EMBEDDED_DIR, entry.name)
    return spec if not entry.description else replace(spec, description=entry.description)


def _hf_loader(family: str) -> Callable[[ModelEntry], Denoiser]:
    """explorer.hf_adapters (and transformers) are imported on first use, not with this module."""
    def load(entry: ModelEntry) -> Denoiser:
        from explorer import hf_adapters
        return hf_adapters.load(family, entry)
    return load


def _hf_describer(family: str) -> Callable[[ModelEntry], ModelSpec]:
    def describe(entry: ModelEntry) -> ModelSpec:
        from explorer import hf_adapters
        return hf_adapters.describe(family, entry)
    return describe


HF_FAMILIES = ("masked_lm", "llada", "dream", "mdlm")

# Family name -> loader (registry entry -> Denoiser) and describer (entry -> ModelSpec, no weights).
MODEL_FAMILIES: dict[str, Callable[[ModelEntry], Denoiser]] = {
    "embedded": _load_embedded_entry, **{family: _hf_loader(family) for family in HF_FAMILIES}}
MODEL_DESCRIBERS: dict[str, Callable[[ModelEntry], ModelSpec]] = {
    "embedded": _describe_embedded_entry, **{family: _hf_describer(family) for family in HF_FAMILIES}}
# Families whose checkpoints ship the modeling code (`trust_remote_code`): only the operator
# configuration can allow them.
REMOTE_CODE_FAMILIES = frozenset({"llada", "dream", "mdlm"})

# Built-in model names (family, loader arguments), always offered whatever the operator
# configuration says; the registry (explorer/model_config.py) lists the rest.
MODELS: dict[str, tuple[str, dict]] = {"embedded": ("embedded", {})}

OVERRIDABLE = ("device", "dtype")


class RemoteCodeNotAllowedError(ValueError):
    """A model whose family runs code from its checkpoint, not allowed by the operator."""


def remote_code_refusal(entry: ModelEntry, source: str | None = None) -> RemoteCodeNotAllowedError:
    where = f"set trust_remote_code = true for it in {source}" if source else "list it with trust_remote_code = true"
    return RemoteCodeNotAllowedError(
        f"model {entry.name!r} needs trust_remote_code; the operator configuration does not allow it "
        f"(family {entry.family!r} runs code shipped with the checkpoint; {where} to allow it)")


def resolve_entry(name: str, registry: ModelRegistry | None = None, **overrides) -> ModelEntry:
    """The registry entry for `name` (with device/dtype overrides); refuses unknown names and
    remote code the operator configuration does not allow."""
    if "trust_remote_code" in overrides:
        raise ValueError("trust_remote_code is only taken from the operator's model configuration "
                         "(--models-config / EXPLORER_MODELS_CONFIG), never from a caller")
    bad = sorted(set(overrides) - set(OVERRIDABLE))
    if bad:
        raise TypeError(f"unexpected override(s) {', '.join(bad)}; valid: {', '.join(OVERRIDABLE)}")
    registry = registry if registry is not None else active_registry()
    entry = registry.get(name)
    if overrides:
        entry = replace(entry, **overrides)
    if entry.family not in MODEL_FAMILIES:
        raise UnknownModelError(f"model {name!r} has family {entry.family!r}, which is not registered; "
                                f"valid: {', '.join(MODEL_FAMILIES)}")
    if entry.family in REMOTE_CODE_FAMILIES and not entry.trust_remote_code:
        raise remote_code_refusal(entry, registry.source)
    return entry


def load_denoiser(name: str, registry: ModelRegistry | None = None, **overrides) -> Denoiser:
    """Load the model `name` offered by `registry` (default: the active registry).

    `overrides` may set `device` or `dtype`; `trust_remote_code` is refused (operator only).
    """
    entry = resolve_entry(name, registry, **overrides)
    return MODEL_FAMILIES[entry.family](entry)


def describe_model(name: str, registry: ModelRegistry | None = None) -> ModelSpec:
    """A ModelSpec for `name` without loading its weights (reads tokenizer and config only)."""
    entry = resolve_entry(name, registry)
    return MODEL_DESCRIBERS[entry.family](entry)
