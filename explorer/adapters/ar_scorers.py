"""AR scorers for the AR energy (EDLM): a causal model that gives log p(x_t | x_<t).

An AR scorer (`decoding.protocols.ARScorer`) maps ids (B, L) to (B, L) token log-probabilities,
entry t = log p(ids[t] | ids[<t]) for t >= 1 (entry 0 is 0). It must share the denoiser's
tokenizer: candidates are scored as the same ids. Families (`AR_SCORER_LOADERS`, entries from
the operator configuration):

| family        | what                                                      |
|---------------|-----------------------------------------------------------|
| `embedded_ar` | the story-grammar AR model shipped in models/embedded     |
| `causal_lm`   | any `AutoModelForCausalLM` with the denoiser's vocabulary |
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from explorer.adapters.devices import DTYPES, resolve_device
from explorer.adapters.entries import ArScorerEntry
from explorer.decoding.protocols import ARScorer
from models import EMBEDDED_DIR
from models.transformer import Transformer, load_model


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


def _load_embedded_ar(entry: ArScorerEntry) -> ARScorer:
    return EmbeddedARScorer(load_model(entry.path or EMBEDDED_DIR, "ar", str(resolve_device(entry.device))), entry.name)


def _load_causal_lm(entry: ArScorerEntry) -> ARScorer:
    # Imported here: transformers (seconds, hundreds of MB) only when a causal LM is configured.
    from transformers import AutoModelForCausalLM

    dtype = "auto" if entry.dtype == "auto" else DTYPES[entry.dtype]
    model = AutoModelForCausalLM.from_pretrained(
        entry.path, dtype=dtype, revision=entry.revision, trust_remote_code=entry.trust_remote_code
    )
    return CausalLMScorer(model.to(resolve_device(entry.device)), entry.name)


AR_SCORER_LOADERS: dict[str, Callable[[ArScorerEntry], ARScorer]] = {
    "embedded_ar": _load_embedded_ar,
    "causal_lm": _load_causal_lm,
}
