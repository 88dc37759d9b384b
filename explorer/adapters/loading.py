"""Load a model or an AR scorer by name: the operator's registry says what exists, its family
how to load it.

`load_denoiser(name)` / `describe_model(name)` look the name up in a `ModelRegistry` (the one
passed, else `registry_from_env()`: $EXPLORER_MODELS_CONFIG, else only `embedded`).
`trust_remote_code` comes from that registry entry and nowhere else.
"""

from __future__ import annotations

from dataclasses import replace

from explorer.adapters.ar_scorers import AR_SCORER_LOADERS
from explorer.adapters.entries import REMOTE_CODE_FAMILIES, ModelEntry
from explorer.adapters.errors import UnknownModelError, remote_code_refusal
from explorer.adapters.families import MODEL_DESCRIBERS, MODEL_FAMILIES
from explorer.adapters.registry import ModelRegistry, registry_from_env
from explorer.adapters.spec import ModelSpec
from explorer.decoding.config import DecodeConfig
from explorer.decoding.protocols import ARScorer, Denoiser

OVERRIDABLE = ("device", "dtype")


def resolve_entry(name: str, registry: ModelRegistry | None = None, **overrides) -> ModelEntry:
    """The registry entry for `name` (with device/dtype overrides); refuses unknown names and
    remote code the operator configuration does not allow."""
    if "trust_remote_code" in overrides:
        raise ValueError(
            "trust_remote_code is only taken from the operator's model configuration "
            "(--models-config / EXPLORER_MODELS_CONFIG), never from a caller"
        )
    bad = sorted(set(overrides) - set(OVERRIDABLE))
    if bad:
        raise TypeError(f"unexpected override(s) {', '.join(bad)}; valid: {', '.join(OVERRIDABLE)}")
    registry = registry if registry is not None else registry_from_env()
    entry = registry.get(name)
    if overrides:
        entry = replace(entry, **overrides)
    if entry.family not in MODEL_FAMILIES:
        raise UnknownModelError(
            f"model {name!r} has family {entry.family!r}, which is not registered; valid: {', '.join(MODEL_FAMILIES)}"
        )
    if entry.family in REMOTE_CODE_FAMILIES and not entry.trust_remote_code:
        raise remote_code_refusal(entry, registry.source)
    return entry


def load_denoiser(name: str, registry: ModelRegistry | None = None, **overrides) -> Denoiser:
    """Load the model `name` offered by `registry` (default: `registry_from_env()`).

    `overrides` may set `device` or `dtype`; `trust_remote_code` is refused (operator only).
    """
    entry = resolve_entry(name, registry, **overrides)
    return MODEL_FAMILIES[entry.family](entry)


def describe_model(name: str, registry: ModelRegistry | None = None) -> ModelSpec:
    """A ModelSpec for `name` without loading its weights (reads tokenizer and config only)."""
    entry = resolve_entry(name, registry)
    return MODEL_DESCRIBERS[entry.family](entry)


def load_ar_scorer(name: str, vocab_size: int, registry: ModelRegistry | None = None) -> ARScorer:
    """Load the AR scorer `name` from the registry; refuse one whose vocabulary differs."""
    entry = (registry if registry is not None else registry_from_env()).get_ar_scorer(name)
    scorer = AR_SCORER_LOADERS[entry.family](entry)
    if scorer.vocab_size < vocab_size:
        raise ValueError(
            f"AR scorer {name!r} has a vocabulary of {scorer.vocab_size} tokens, smaller than "
            f"the model's {vocab_size}: it must share the denoiser's tokenizer"
        )
    return scorer


class ScorerCache:
    """AR scorers loaded so far, by (name, vocabulary size): a worker loads each once.

    Owned by whoever runs decodes (a worker process, the Python API's caller); not module state."""

    def __init__(self, registry: ModelRegistry | None = None) -> None:
        self.registry = registry
        self._loaded: dict[tuple[str, int], ARScorer] = {}

    def for_run(self, config: DecodeConfig, denoiser: Denoiser) -> ARScorer | None:
        """The AR scorer a run needs (None unless its energies include `ar`).

        The config's `ar_scorer`, else the model's own default (the embedded MDLM pairs with
        the embedded AR model); a model with neither gets a clear error."""
        if "ar" not in dict(config.energies):
            return None
        scorer = self.configured(config, denoiser)
        if scorer is None:
            registry = self.registry if self.registry is not None else registry_from_env()
            raise ValueError(
                f"the AR energy needs an AR scorer for model {denoiser.name!r}: set ar_scorer to one "
                f"that shares its tokenizer (configured: {', '.join(registry.ar_scorer_names())})"
            )
        return scorer

    def configured(self, config: DecodeConfig, denoiser: Denoiser) -> ARScorer | None:
        """The config's `ar_scorer`, else the model's default, else None (for measuring the AR
        NLL of a text, which any run may do without an AR energy)."""
        name = config.ar_scorer or getattr(denoiser, "default_ar_scorer", None)
        if name is None:
            return None
        key = (name, int(getattr(denoiser, "vocab_size", 0)))
        if key not in self._loaded:
            registry = self.registry if self.registry is not None else registry_from_env()
            self._loaded[key] = load_ar_scorer(name, key[1], registry)
        return self._loaded[key]


def scorer_for(config: DecodeConfig, denoiser: Denoiser, registry: ModelRegistry | None = None) -> ARScorer | None:
    """The AR scorer a run needs, loaded now (one-off callers; a worker keeps a ScorerCache)."""
    return ScorerCache(registry).for_run(config, denoiser)
