"""The model families: how a registry entry becomes a loaded Denoiser or a ModelSpec.

| family      | what                                                        | module             |
|-------------|-------------------------------------------------------------|--------------------|
| `embedded`  | the story-grammar MDLM shipped in models/embedded           | adapters/embedded  |
| `embedded_xdlm` | the story-grammar XDLM (mask + uniform noise) shipped there | adapters/embedded  |
| `masked_lm` | any `AutoModelForMaskedLM` (BERT, RoBERTa, ModernBERT)      | adapters/hf        |
| `llada`     | LLaDA (`AutoModel`, remote code)                            | adapters/hf        |
| `dream`     | Dream (`AutoModel`, remote code, logits shifted right by 1) | adapters/hf        |
| `mdlm`      | MDLM (`AutoModelForMaskedLM`, remote code, takes a timestep)| adapters/hf        |
| `diffusion_gemma` | DiffusionGemma (transformers, uniform-noise canvases) | adapters/diffusion_gemma |

Which *models* exist is the operator's choice (`registry`); `loading.load_denoiser(name)` looks
a name up there and calls its family's loader here.
"""

from __future__ import annotations

from collections.abc import Callable

from explorer.adapters import embedded
from explorer.adapters.entries import ModelEntry
from explorer.adapters.spec import ModelSpec
from explorer.decoding.protocols import Denoiser

HF_FAMILIES = ("masked_lm", "llada", "dream", "mdlm")


def _hf_loader(family: str) -> Callable[[ModelEntry], Denoiser]:
    def load(entry: ModelEntry) -> Denoiser:
        # Imported here, not at the top: adapters/hf imports transformers (seconds, hundreds of
        # MB), which a process serving only the embedded model never needs.
        from explorer.adapters import hf

        return hf.load(family, entry)

    return load


def _hf_describer(family: str) -> Callable[[ModelEntry], ModelSpec]:
    def describe(entry: ModelEntry) -> ModelSpec:
        from explorer.adapters import hf  # transformers only when a Hugging Face model is listed

        return hf.describe(family, entry)

    return describe


def _gemma_loader(entry: ModelEntry) -> Denoiser:
    from explorer.adapters import diffusion_gemma  # transformers only when a DiffusionGemma is listed

    return diffusion_gemma.load_entry(entry)


def _gemma_describer(entry: ModelEntry) -> ModelSpec:
    from explorer.adapters import diffusion_gemma

    return diffusion_gemma.describe_entry(entry)


# Family name -> loader (registry entry -> Denoiser) and describer (entry -> ModelSpec, no weights).
MODEL_FAMILIES: dict[str, Callable[[ModelEntry], Denoiser]] = {
    "embedded": embedded.load_entry,
    "embedded_xdlm": embedded.load_xdlm_entry,
    **{family: _hf_loader(family) for family in HF_FAMILIES},
    "diffusion_gemma": _gemma_loader,
}
MODEL_DESCRIBERS: dict[str, Callable[[ModelEntry], ModelSpec]] = {
    "embedded": embedded.describe_entry,
    "embedded_xdlm": embedded.describe_xdlm_entry,
    **{family: _hf_describer(family) for family in HF_FAMILIES},
    "diffusion_gemma": _gemma_describer,
}
