"""DiffusionGemma (transformers' `diffusion_gemma`, no remote code) as a canvas model for the engine.

DiffusionGemma is an encoder-decoder block-diffusion model: the encoder reads the prompt and every
finished canvas into a KV cache; the decoder refines one canvas of C tokens at a time, starting
from uniform noise, conditioned on that cache and on its own previous logits (self-conditioning).
`GemmaDenoiser` gives the engine what it needs (explorer/decoding/protocols.py `CanvasDenoiser`):
`begin(prompt)` encodes the prompt into a fresh cache, the session's `denoise` is one decoder
pass, `append` puts a finished canvas into the cache (encoded lazily, at the next canvas's first
pass, as generate does). The loop itself is explorer/decoding/canvas_engine.py.

The model is called through its own encoder, cache and mask builders, exactly as
`DiffusionGemmaGenerationMixin.generate` calls them, so the engine reproduces `generate()` (same
final sequence, same decoder passes, same per-step draft). Identity holds for transformers'
default dynamic cache; a checkpoint whose generation config asks for a static (compiled) cache
runs here with a dynamic one, matching `generate(cache_implementation="dynamic")`.
The generation settings a run uses default to the model's generation config (`canvas_defaults`,
`canvas_config`). Text only: image tokens in a prompt are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from explorer.adapters.devices import resolve_device, resolve_dtype
from explorer.adapters.errors import ModelLoadError
from explorer.adapters.hf import TextCodec, _load_tokenizer  # imported late by families: transformers only then
from explorer.adapters.spec import ModelSpec
from explorer.decoding.canvas_settings import CanvasDefaults

FAMILY = "diffusion_gemma"
MAX_CANVAS_LENGTH = 4096  # a canvas is one decoder pass; longer ones are configuration mistakes
MAX_DENOISING_STEPS = 1024  # steps per canvas


class GemmaInputError(ValueError):
    """A prompt or a setting DiffusionGemma cannot run; the message is one line saying what to change."""


def load_gemma(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Any:
    """Load a DiffusionGemma checkpoint from a local directory, refusing what the driver cannot run.

    The raw config.json is checked before loading because the config class fills a missing
    `canvas_length` with its default (256), which would hide a checkpoint that is not block diffusion."""
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"no DiffusionGemma checkpoint at {folder}: config.json not found")
    raw = json.loads(config_file.read_text())
    model_type = raw.get("model_type")
    if model_type != FAMILY:
        raise ModelLoadError(f"{folder} is a {model_type!r} checkpoint, not {FAMILY!r}")
    _check_canvas_length(raw.get("canvas_length"), folder)
    from transformers import DiffusionGemmaForBlockDiffusion
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a CLI's stderr carries its one-line error, not a loading bar
    try:
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(folder, local_files_only=True, dtype=dtype)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()


def _check_canvas_length(canvas_length: Any, where: Any) -> None:
    if canvas_length is None:
        raise ModelLoadError(f"{where}: the config has no canvas_length (not a block-diffusion checkpoint)")
    if not isinstance(canvas_length, int) or not 1 <= canvas_length <= MAX_CANVAS_LENGTH:
        raise ModelLoadError(f"{where}: canvas_length {canvas_length!r} is out of range 1..{MAX_CANVAS_LENGTH}")


def _generation_config(model: Any) -> Any:
    """The generation config `generate()` would use: the model's own, transformers' defaults for what
    it leaves unset (resolved by the model's `_prepare_generation_config`: generate's precedence)."""
    _check_canvas_length(model.config.canvas_length, "model config")
    try:
        config, _ = model._prepare_generation_config(None)
    except ValueError as error:  # transformers' own validation (t_min > t_max, negative thresholds, ...)
        raise ModelLoadError(f"the generation config: {str(error).splitlines()[0]}") from None
    if not 1 <= config.max_denoising_steps <= MAX_DENOISING_STEPS:
        raise ModelLoadError(
            f"max_denoising_steps {config.max_denoising_steps} is out of range 1..{MAX_DENOISING_STEPS}"
        )
    return config


def _encode(model: Any, ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> Any:
    """Run the encoder over `ids` (the prompt, then each finished canvas) into the KV cache.

    Mirrors `_prepare_encoder_inputs` + the encoder call in `generate` step 1.a."""
    ids = ids.clone(memory_format=torch.contiguous_format)
    dummy = torch.empty((ids.shape[0], ids.shape[1], 0), dtype=model.dtype, device=ids.device)
    masks = model.model.encoder.create_masks_for_generate(
        config=model.config,
        inputs_embeds=dummy,
        attention_mask=attention_mask,
        cache=cache,
        position_ids=positions,
        mm_token_type_ids=None,
    )
    out = model.model.encoder(input_ids=ids, attention_mask=masks, cache=cache, position_ids=positions)
    return out.cache


class GemmaSession:
    """One generation: the KV cache of the prompt and the finished canvases, and the positions of the
    canvas being refined. Mirrors generate's 1.a (encode), 1.b (decoder mask) and 1.f (next canvas)."""

    def __init__(self, model: Any, prompt: torch.Tensor, canvas_length: int) -> None:
        from transformers import DynamicCache

        self.model, self.canvas_length = model, canvas_length
        length = prompt.shape[1]
        device = prompt.device
        self.cache = DynamicCache(config=model.config.get_text_config(decoder=True))  # `_prepare_cache_for_generation`
        self.attention_mask = torch.ones((1, length), dtype=torch.bool, device=device)
        self.decoder_attention_mask = torch.nn.functional.pad(self.attention_mask, (0, canvas_length), value=True)
        self.encoder_positions = torch.arange(0, length, dtype=torch.int32, device=device)[None]
        self.decoder_positions = torch.arange(length, length + canvas_length, dtype=torch.int32, device=device)[None]
        self.unprocessed: torch.Tensor | None = prompt  # encoded at the next canvas's first pass
        self.masks: Any = None
        self.embeddings_dtype = model.model.decoder.embed_tokens.weight.dtype

    def denoise(self, canvas: torch.Tensor, self_conditioning: torch.Tensor | None) -> torch.Tensor:
        if self.unprocessed is not None:  # a new canvas: encode what came before it, build its mask
            self.cache = _encode(self.model, self.unprocessed, self.attention_mask, self.encoder_positions, self.cache)
            self.unprocessed = None
            self.masks = self.model.model.decoder.create_diffusion_decoder_attention_mask(
                config=self.model.config,
                inputs_embeds=canvas.unsqueeze(-1),
                cache=self.cache,
                decoder_attention_mask=self.decoder_attention_mask,
            )
        if self_conditioning is not None:
            self_conditioning = self_conditioning.to(self.embeddings_dtype)  # generate 1.c.v
        # generate calls `self.forward` (not `__call__`): top-level hooks do not fire
        return self.model.forward(
            decoder_input_ids=canvas,
            self_conditioning_logits=self_conditioning,
            decoder_attention_mask=self.masks,
            cache=self.cache,
            decoder_position_ids=self.decoder_positions,
        ).logits  # (1, C, V) float32

    def append(self, canvas: torch.Tensor) -> None:
        """The finished canvas joins the context: `_prepare_kwargs_for_next_canvas`."""
        c = self.canvas_length
        pad = torch.nn.functional.pad
        self.decoder_attention_mask = pad(self.decoder_attention_mask, (0, c), value=True)
        self.attention_mask = pad(self.attention_mask, (0, c), value=True)
        self.encoder_positions = self.decoder_positions
        end = int(self.decoder_positions[0, -1]) + 1
        self.decoder_positions = torch.arange(end, end + c, dtype=torch.int32, device=canvas.device)[None]
        self.unprocessed = canvas


def canvas_defaults(model: Any) -> CanvasDefaults:
    """The settings a run of a loaded model uses unless told otherwise (what its `generate()` uses)."""
    config = _generation_config(model)
    _, max_new_tokens = model._prepare_generated_length(config, 1)
    return CanvasDefaults(
        canvas_length=model.config.canvas_length,
        max_new_tokens=max_new_tokens,
        max_denoising_steps=config.max_denoising_steps,
        entropy_bound=config.sampler_config.entropy_bound,
        t_min=config.t_min,
        t_max=config.t_max,
        stability_threshold=config.stability_threshold,
        confidence_threshold=config.confidence_threshold,
    )


class IdsCodec:
    """Text as token ids ("2 17 40"): for a checkpoint with no tokenizer (a test's, the GPU bench's)."""

    def encode(self, text: str) -> list[int]:
        return [int(word) for word in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def token_text(self, token_id: int) -> str:
        return str(int(token_id))


class GemmaDenoiser:
    """A loaded DiffusionGemma for the engine (`loop = "canvas"`); `mask_id` is the noise marker."""

    loop = "canvas"
    violations_default = False

    def __init__(self, name: str, model: Any, codec: Any, device: torch.device) -> None:
        self.name, self.model, self.codec, self.device = name, model, codec, device
        self.defaults = canvas_defaults(model)
        self.vocab_size = model.config.text_config.vocab_size
        self.mask_id = self.vocab_size  # no token of the model: "this position holds noise"
        self.canvas_length = model.config.canvas_length
        self.context_length = model.config.text_config.max_position_embeddings
        config = _generation_config(model)
        eos = config.eos_token_id
        self.eos_ids = () if eos is None else ((eos,) if isinstance(eos, int) else tuple(eos))
        self.pad_id = config.pad_token_id
        self.image_token_id = model.config.image_token_id

    def begin(self, prompt_ids: list[int]) -> GemmaSession:
        if self.image_token_id in prompt_ids:
            raise GemmaInputError("the prompt contains image tokens; image inputs are not supported")
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        return GemmaSession(self.model, prompt, self.canvas_length)

    def encode(self, text: str) -> list[int]:
        return self.codec.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.codec.decode(ids)

    def token_text(self, token_id: int) -> str:
        return self.codec.token_text(token_id)

    def special_ids(self) -> frozenset[int]:
        """The noise marker, EOS, pad and the tokenizer's specials: never written by an edit."""
        pad = [] if self.pad_id is None else [self.pad_id]
        return frozenset({self.mask_id, *self.eos_ids, *pad, *self.codec.hidden_ids, self.image_token_id})

    def vocabulary(self) -> dict[str, int]:
        """Token text -> id of every ordinary token (what a branch's forced token is looked up in)."""
        special = self.special_ids()
        return {self.codec.token_text(i): i for i in sorted(self.codec.vocab_ids - special)}


def _codec(tokenizer: Any, noise_marker: int) -> Any:
    prefix = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    hidden = {i for i in tokenizer.all_special_ids if i is not None}
    codec = TextCodec(tokenizer, noise_marker, prefix_ids=prefix, hidden_ids=hidden)
    codec.mask_text = "[noise]"
    return codec


def load_entry(entry: Any) -> GemmaDenoiser:
    """The registry's loader (family `diffusion_gemma`): a local folder or hub snapshot with a tokenizer."""
    device = resolve_device(entry.device)
    tokenizer = _load_tokenizer(entry)
    try:
        model = load_gemma(entry.path, device=device, dtype=resolve_dtype(entry.dtype, device))
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {entry.name!r}: {exc}") from None
    return GemmaDenoiser(entry.name, model, _codec(tokenizer, model.config.text_config.vocab_size), device)


def describe_entry(entry: Any) -> ModelSpec:
    """What the UI needs without the weights: the tokenizer, the window, the canvas defaults."""
    from transformers import DiffusionGemmaConfig
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

    folder = Path(entry.path)
    if folder.is_dir():  # the raw file: the config class would fill a missing canvas_length with 256
        raw = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        if raw.get("model_type") != FAMILY:
            kind = raw.get("model_type")
            raise ModelLoadError(f"model {entry.name!r}: {folder} is a {kind!r} checkpoint, not {FAMILY!r}")
        _check_canvas_length(raw.get("canvas_length"), folder)
    try:
        config = DiffusionGemmaConfig.from_pretrained(entry.path)
    except Exception as exc:
        raise ModelLoadError(f"model {entry.name!r}: cannot read the configuration of {entry.path!r}: {exc}") from None
    defaults = dict(DiffusionGemmaGenerationConfig._get_default_generation_params())
    if (folder / "generation_config.json").is_file() or not folder.is_dir():
        own = DiffusionGemmaGenerationConfig.from_pretrained(entry.path)
        defaults.update({k: v for k, v in own.to_dict().items() if k in defaults and v is not None})
        if own.sampler_config is not None:
            defaults["sampler_config"] = own.sampler_config
    sampler = defaults["sampler_config"]
    bound = sampler["entropy_bound"] if isinstance(sampler, dict) else sampler.entropy_bound
    canvas = CanvasDefaults(
        canvas_length=config.canvas_length,
        max_new_tokens=defaults["max_new_tokens"],
        max_denoising_steps=defaults["max_denoising_steps"],
        entropy_bound=float(bound),
        t_min=defaults["t_min"],
        t_max=defaults["t_max"],
        stability_threshold=defaults["stability_threshold"],
        confidence_threshold=defaults["confidence_threshold"],
    )
    vocab = config.text_config.vocab_size
    codec = _codec(_load_tokenizer(entry), vocab)
    description = entry.description or f"DiffusionGemma (uniform-noise block diffusion) from {entry.path}"
    return ModelSpec(
        entry.name, FAMILY, config.text_config.max_position_embeddings, vocab, codec.encode, codec.token_text,
        description, canvas=canvas,
    )  # fmt: skip
