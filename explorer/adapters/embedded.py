"""The embedded denoisers: the story-grammar MDLM and XDLM shipped in models/embedded (word vocabulary).

Both are the same transformer on the same vocabulary; they differ in their weights (`mdlm` /
`xdlm` files) and in the noise they were trained with (absorbing mask / mask + uniform, k in
`xdlm_kernel.json`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from explorer.adapters.devices import resolve_device
from explorer.adapters.entries import ModelEntry
from explorer.adapters.spec import ModelSpec
from models import EMBEDDED_DIR
from models.tokenizer import SPECIALS, WordTokenizer
from models.transformer import Transformer, TransformerConfig, load_model


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

    def vocabulary(self) -> dict[str, int]:
        """word -> id of every word of the grammar (not <pad>, <mask>, <unk>)."""
        return {word: i for word, i in self.tokenizer.ids.items() if i not in self.special_ids()}

    def special_ids(self) -> frozenset[int]:
        return frozenset(self.tokenizer.ids[s] for s in SPECIALS)


def load_embedded(
    directory: str | Path = EMBEDDED_DIR, device: str = "cpu", name: str = "embedded", weights: str = "mdlm"
) -> EmbeddedDenoiser:
    directory = Path(directory)
    return EmbeddedDenoiser(load_model(directory, weights, device), WordTokenizer.load(directory / "vocab.json"), name)


def xdlm_k(directory: str | Path = EMBEDDED_DIR, weights: str = "xdlm") -> float:
    """The uniform-noise share k an embedded XDLM was trained with (its `<weights>_kernel.json`)."""
    return float(json.loads((Path(directory) / f"{weights}_kernel.json").read_text())["k"])


def describe_embedded(
    directory: str | Path = EMBEDDED_DIR, name: str = "embedded", weights: str = "mdlm", family: str = "embedded"
) -> ModelSpec:
    directory = Path(directory)
    tokenizer = WordTokenizer.load(directory / "vocab.json")
    config = TransformerConfig.from_json((directory / f"{weights}.json").read_text())
    k = 0.0 if weights == "mdlm" else xdlm_k(directory, weights)
    if weights == "mdlm":
        what = "story-grammar MDLM"
    else:
        what = f"story-grammar XDLM (mask + uniform noise, k = {k:g}; xdlm_* strategies)"
    return ModelSpec(
        name,
        family,
        config.context_length,
        tokenizer.mask_id,
        tokenizer.encode,
        tokenizer.token,
        f"{what} shipped with the app ({len(tokenizer)} words, CPU)",
        violations_default=EmbeddedDenoiser.violations_default,
        default_ar_scorer=EmbeddedDenoiser.default_ar_scorer,
        noise_k=k,
    )


def load_entry(entry: ModelEntry) -> EmbeddedDenoiser:
    return load_embedded(entry.path or EMBEDDED_DIR, str(resolve_device(entry.device)), entry.name)


def describe_entry(entry: ModelEntry) -> ModelSpec:
    spec = describe_embedded(entry.path or EMBEDDED_DIR, entry.name)
    return spec if not entry.description else replace(spec, description=entry.description)


def load_xdlm_entry(entry: ModelEntry) -> EmbeddedDenoiser:
    return load_embedded(entry.path or EMBEDDED_DIR, str(resolve_device(entry.device)), entry.name, "xdlm")


def describe_xdlm_entry(entry: ModelEntry) -> ModelSpec:
    spec = describe_embedded(entry.path or EMBEDDED_DIR, entry.name, "xdlm", "embedded_xdlm")
    return spec if not entry.description else replace(spec, description=entry.description)
