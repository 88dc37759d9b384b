"""AR scorers for the AR energy (EDLM): a causal model that gives log p(x_t | x_<t).

An `ARScorer` maps ids (B, L) to (B, L) token log-probabilities, entry t = log p(ids[t] | ids[<t])
for t >= 1 (entry 0 is 0). It must share the denoiser's tokenizer: candidates are scored as the
same ids. Families (registry `AR_SCORER_LOADERS`, entries from the operator configuration):

| family        | what                                                      |
|---------------|-----------------------------------------------------------|
| `embedded_ar` | the story-grammar AR model shipped in models/embedded     |
| `causal_lm`   | any `AutoModelForCausalLM` with the denoiser's vocabulary |
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import torch

from explorer.model_config import ArScorerEntry, ModelRegistry, active_registry
from models.transformer import Transformer, load_model

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "models" / "embedded"


class ARScorer(Protocol):
    name: str
    vocab_size: int

    def log_probs(self, ids: torch.Tensor) -> torch.Tensor: ...  # (B, L) -> (B, L) float32


def token_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, L) log p(ids[t] | ids[<t]) from next-token logits (B, L, V); entry 0 is 0."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, L-1, V): predicts ids[1:]
    picked = lp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, L-1)
    return torch.cat([torch.zeros_like(picked[:, :1]), picked], dim=1)


class EmbeddedARScorer:
    """The causal transformer shipped in models/embedded (same word vocabulary as the MDLM)."""

    def __init__(self, model: Transformer, name: str = "embedded") -> None:
        self.model = model.eval()
        self.name = name
        self.vocab_size = model.config.vocab_size
        self.device = next(model.parameters()).device

    def next_token_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)  # (B, L, V)

    @torch.no_grad()
    def log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)
        return token_log_probs(self.next_token_logits(ids), ids)


class CausalLMScorer(EmbeddedARScorer):
    """Any Hugging Face causal LM (transformers imported on first use): only the call differs."""

    def next_token_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits  # (B, L, V)


def _device(entry: ArScorerEntry) -> str:
    if entry.device != "auto":
        return entry.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_embedded_ar(entry: ArScorerEntry) -> ARScorer:
    return EmbeddedARScorer(load_model(entry.path or EMBEDDED_DIR, "ar", _device(entry)), entry.name)


def _load_causal_lm(entry: ArScorerEntry) -> ARScorer:
    from transformers import AutoModelForCausalLM
    dtype = "auto" if entry.dtype == "auto" else getattr(torch, entry.dtype)
    model = AutoModelForCausalLM.from_pretrained(entry.path, dtype=dtype, revision=entry.revision,
                                                 trust_remote_code=entry.trust_remote_code)
    return CausalLMScorer(model.to(_device(entry)), entry.name)


AR_SCORER_LOADERS: dict[str, Callable[[ArScorerEntry], ARScorer]] = {
    "embedded_ar": _load_embedded_ar,
    "causal_lm": _load_causal_lm,
}


def load_ar_scorer(name: str, vocab_size: int, registry: ModelRegistry | None = None) -> ARScorer:
    """Load the AR scorer `name` from the registry; refuse one whose vocabulary differs."""
    entry = (registry if registry is not None else active_registry()).get_ar_scorer(name)
    scorer = AR_SCORER_LOADERS[entry.family](entry)
    if scorer.vocab_size < vocab_size:
        raise ValueError(f"AR scorer {name!r} has a vocabulary of {scorer.vocab_size} tokens, smaller than "
                         f"the model's {vocab_size}: it must share the denoiser's tokenizer")
    return scorer


@lru_cache(maxsize=4)
def _cached(name: str, vocab_size: int, registry: ModelRegistry | None) -> ARScorer:
    return load_ar_scorer(name, vocab_size, registry)


def scorer_for(config, denoiser, registry: ModelRegistry | None = None) -> ARScorer | None:
    """The AR scorer a run needs (None unless its energies include `ar`), loaded once per process.

    The config's `ar_scorer`, else the model's own default (the embedded MDLM pairs with the
    embedded AR model); a model with neither gets a clear error."""
    if "ar" not in dict(config.energies):
        return None
    name = config.ar_scorer or getattr(denoiser, "default_ar_scorer", None)
    if name is None:
        names = ", ".join((registry if registry is not None else active_registry()).ar_scorer_names())
        raise ValueError(f"the AR energy needs an AR scorer for model {denoiser.name!r}: set ar_scorer to one "
                         f"that shares its tokenizer (configured: {names})")
    return _cached(name, int(getattr(denoiser, "vocab_size", 0)), registry)
