"""DiffusionGemma (transformers' `diffusion_gemma`, no remote code): a step-by-step block-diffusion driver.

DiffusionGemma is an encoder-decoder block-diffusion model: the encoder reads the prompt and every
finished canvas into a KV cache; the decoder refines one canvas of C tokens at a time, starting
from uniform noise, conditioned on that cache and on its own previous logits (self-conditioning).
`iter_gemma_steps` runs the same loop as `DiffusionGemmaGenerationMixin.generate` but yields one
`GemmaStep` per decoder pass, then one `GemmaResult`, so every intermediate can be recorded.

It is built to reproduce `generate()` exactly (same final sequence, same decoder-pass count, at
every step the same argmax canvas generate hands to a streamer's `put_draft`): the step rule is
explorer/decoding/entropy_bound.py (the same torch calls), the model is called through its own
encoder, cache and mask builders, and random numbers are drawn in the order transformers draws
them: per canvas one randint (the initial canvas), then per step one multinomial (B*C rows) and
one randint (B*C, the re-noise canvas, drawn even for accepted positions and at the last step).
Transformers draws from torch's global RNG; the driver draws from a `torch.Generator` seeded with
`seed`, which gives the same stream as `torch.manual_seed(seed)` before `generate()` (same
algorithm, same seeding) while leaving the global RNG alone. `seed=None` uses the global RNG.

Identity holds for transformers' default dynamic cache; a checkpoint whose generation config asks
for a static (compiled) cache runs here with a dynamic one, matching `generate(cache_implementation="dynamic")`.
Text only: image inputs are refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from explorer.adapters.errors import ModelLoadError
from explorer.decoding import entropy_bound as rule

FAMILY = "diffusion_gemma"
MAX_CANVAS_LENGTH = 4096  # a canvas is one decoder pass; longer ones are configuration mistakes
MAX_DENOISING_STEPS = 1024  # steps per canvas
IMAGE_KWARGS = ("pixel_values", "image_position_ids", "mm_token_type_ids", "mm_encoder_outputs")
# generation settings a caller may override; anything else is refused rather than silently ignored
SETTINGS = (
    "max_new_tokens",
    "max_length",
    "max_denoising_steps",
    "entropy_bound",
    "t_min",
    "t_max",
    "stability_threshold",
    "confidence_threshold",
    "eos_token_id",
    "pad_token_id",
)


class GemmaInputError(ValueError):
    """A prompt or a setting DiffusionGemma cannot run; the message is one line saying what to change."""


@dataclass(frozen=True)
class GemmaSettings:
    """The generation settings a run used: the model's generation config, then the caller's overrides."""

    canvas_length: int
    vocab_size: int
    max_new_tokens: int
    max_length: int
    max_denoising_steps: int
    entropy_bound: float
    t_min: float | None
    t_max: float | None
    stability_threshold: int | None
    confidence_threshold: float | None
    eos_token_id: list[int] | None
    pad_token_id: int | None

    @property
    def canvases(self) -> int:
        return math.ceil(self.max_new_tokens / self.canvas_length)


@dataclass(frozen=True)
class GemmaStep:
    """One denoising step (one decoder pass) of one canvas. Tensors are on the CPU."""

    canvas_index: int
    step_index: int  # 0-based within the canvas
    remaining_step: int  # transformers' `cur_step`: N..1
    canvas_in: torch.Tensor  # (B, C) long: the decoder's input canvas
    noise_in: torch.Tensor  # (B, C) bool: position holds random noise (initial or re-noised), not a kept token
    sampled: torch.Tensor  # (B, C) long: the multinomial draw
    argmax: torch.Tensor  # (B, C) long: the draft (what generate hands to `put_draft`)
    entropy: torch.Tensor  # (B, C) float32: per-position entropy of the temperature-scaled logits
    sampled_prob: torch.Tensor  # (B, C) float32
    accepted: torch.Tensor  # (B, C) bool
    renoised: torch.Tensor  # (B, C) bool
    argmax_changed: torch.Tensor  # (B, C) bool: differs from the previous step's draft (all True at step 0)
    canvas_out: torch.Tensor  # (B, C) long: the next step's input canvas
    mean_entropy: torch.Tensor  # (B,) float32
    confidence_threshold: float | None
    steps_stable: torch.Tensor  # (B,) long
    stable: torch.Tensor  # (B,) bool
    confident: torch.Tensor  # (B,) bool
    finished_denoising: torch.Tensor  # (B,) bool: the canvas stops after this step
    temperature: float | None


@dataclass(frozen=True)
class GemmaResult:
    """The end of a run: what `generate()` returns."""

    sequences: torch.Tensor  # (B, L) long: prompt + canvases, pad after EOS
    decoder_passes: torch.Tensor  # (B,) int: decoder passes each row needed (generate's count)
    tokens_per_forward: torch.Tensor  # (B,) float: non-pad new tokens / decoder passes
    canvases: int
    settings: GemmaSettings


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

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(folder, local_files_only=True, dtype=dtype)
    return model.to(device).eval()


def _check_canvas_length(canvas_length: Any, where: Any) -> None:
    if canvas_length is None:
        raise ModelLoadError(f"{where}: the config has no canvas_length (not a block-diffusion checkpoint)")
    if not isinstance(canvas_length, int) or not 1 <= canvas_length <= MAX_CANVAS_LENGTH:
        raise ModelLoadError(f"{where}: canvas_length {canvas_length!r} is out of range 1..{MAX_CANVAS_LENGTH}")


def gemma_settings(model: Any, prompt_length: int, **overrides: Any) -> GemmaSettings:
    """The settings `generate(**overrides)` would use: the model's generation config, transformers'
    global defaults for what it leaves unset, then the overrides (`entropy_bound` sets the sampler).

    Resolved by the model's own `_prepare_generation_config` and `_prepare_generated_length`, so the
    precedence (and the max_length / max_new_tokens rule) is exactly generate's."""
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise GemmaInputError(f"unknown DiffusionGemma setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "entropy_bound" in overrides:
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

        overrides["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(overrides.pop("entropy_bound")))
    _check_canvas_length(model.config.canvas_length, "model config")
    steps = overrides.get("max_denoising_steps")
    if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= MAX_DENOISING_STEPS):
        raise GemmaInputError(f"max_denoising_steps {steps!r} is out of range 1..{MAX_DENOISING_STEPS}")
    try:
        config, model_kwargs = model._prepare_generation_config(None, **overrides)
        max_length, max_new_tokens = model._prepare_generated_length(config, prompt_length)
    except ValueError as error:  # transformers' own validation (t_min > t_max, negative thresholds, ...)
        raise GemmaInputError(str(error).splitlines()[0]) from None
    if model_kwargs:
        raise GemmaInputError(f"settings not understood by DiffusionGemma: {', '.join(sorted(model_kwargs))}")
    if not 1 <= config.max_denoising_steps <= MAX_DENOISING_STEPS:
        raise GemmaInputError(
            f"max_denoising_steps {config.max_denoising_steps} is out of range 1..{MAX_DENOISING_STEPS}"
        )
    if max_new_tokens is None or max_new_tokens < 1:
        raise GemmaInputError(f"max_new_tokens {max_new_tokens!r} leaves nothing to generate")
    eos = config.eos_token_id
    return GemmaSettings(
        canvas_length=model.config.canvas_length,
        vocab_size=model.config.text_config.vocab_size,
        max_new_tokens=max_new_tokens,
        max_length=max_length,
        max_denoising_steps=config.max_denoising_steps,
        entropy_bound=config.sampler_config.entropy_bound,
        t_min=config.t_min,
        t_max=config.t_max,
        stability_threshold=config.stability_threshold,
        confidence_threshold=config.confidence_threshold,
        eos_token_id=None if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
        pad_token_id=config.pad_token_id,
    )


def _check_prompt(model: Any, input_ids: torch.Tensor, settings: GemmaSettings) -> None:
    """Refuse what generate would run badly or not at all: image tokens, an empty prompt, a run past the window."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise GemmaInputError(
            f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}"
        )
    if (input_ids == model.config.image_token_id).any():
        raise GemmaInputError("the prompt contains image tokens; image inputs are not supported")
    window = model.config.text_config.max_position_embeddings
    needed = input_ids.shape[1] + settings.canvases * settings.canvas_length
    if needed > window:
        raise GemmaInputError(
            f"prompt of {input_ids.shape[1]} tokens + {settings.canvases} canvas(es) of {settings.canvas_length} "
            f"= {needed} positions, longer than the model's window of {window}"
        )


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


def _finalize_canvas(
    input_ids: torch.Tensor, finished: torch.Tensor, settings: GemmaSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mark rows finished by max length or an EOS in the new canvas; pad what follows.

    Mirrors `_finalize_canvas` with generate's stopping criteria (`MaxLengthCriteria`,
    `EosTokenCriteria` over the whole canvas): rows finished at an earlier canvas get all-pad
    canvases; in this canvas every token after the first EOS becomes pad (only when pad is set)."""
    canvas_length = settings.canvas_length
    this_canvas = torch.full_like(finished, input_ids.shape[1] >= settings.max_length)
    eos = None
    if settings.eos_token_id is not None:
        eos = torch.tensor(settings.eos_token_id, device=input_ids.device)
        this_canvas = this_canvas | torch.isin(input_ids[:, -canvas_length:], eos).any(dim=-1)
    previously = finished
    finished = previously | this_canvas
    if settings.pad_token_id is not None and torch.any(finished):
        input_ids[previously, -canvas_length:] = settings.pad_token_id
        if eos is not None and torch.any(this_canvas):
            new_tokens = input_ids[:, -canvas_length:]
            is_eos = torch.isin(new_tokens, eos)
            eos_cumsum = is_eos.cumsum(dim=-1)
            pad_mask = (eos_cumsum > 0) & ~((eos_cumsum == 1) & is_eos)
            new_tokens[pad_mask] = settings.pad_token_id
    return input_ids, finished


def _temperature(settings: GemmaSettings, remaining_step: int) -> torch.Tensor | None:
    if settings.t_min is None or settings.t_max is None:  # generate adds no temperature processor then
        return None
    return rule.linear_temperature(settings.t_min, settings.t_max, remaining_step, settings.max_denoising_steps)


@torch.no_grad()
def iter_gemma_steps(
    model: Any, input_ids: torch.Tensor, *, seed: int | None, **overrides: Any
) -> Iterator[GemmaStep | GemmaResult]:
    """Decode like `model.generate(input_ids, **overrides)` after `torch.manual_seed(seed)`, yielding
    a `GemmaStep` per decoder pass and a `GemmaResult` last. Mirrors `generate` step 1 (the canvas loop)."""
    images = [k for k in IMAGE_KWARGS if k in overrides]
    if images:
        raise GemmaInputError(f"image inputs ({', '.join(images)}) are not supported; give a text-only prompt")
    settings = gemma_settings(model, input_ids.shape[-1], **overrides)
    _check_prompt(model, input_ids, settings)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    from transformers import DynamicCache

    batch_size, cur_len = input_ids.shape
    initial_len, canvas_length, device = cur_len, settings.canvas_length, input_ids.device
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))  # `_prepare_cache_for_generation`
    finished_sequences = torch.zeros(batch_size, dtype=torch.bool, device=device)
    passes = torch.zeros(batch_size, dtype=torch.int, device=device)
    encoder_positions = torch.arange(0, cur_len, dtype=torch.int32, device=device).unsqueeze(0)
    decoder_positions = torch.arange(cur_len, cur_len + canvas_length, dtype=torch.int32, device=device).unsqueeze(0)
    attention_mask = torch.ones((batch_size, cur_len), dtype=torch.bool, device=device)
    decoder_attention_mask = torch.nn.functional.pad(attention_mask, (0, canvas_length), value=True)
    unprocessed = input_ids
    canvases = 0
    for canvas_index in range(settings.canvases):
        cache = _encode(model, unprocessed, attention_mask, encoder_positions, cache)  # 1.a
        canvas = yield from _denoise_canvas(
            model, settings, cache, decoder_attention_mask, decoder_positions, finished_sequences, passes,
            canvas_index, generator,
        )  # fmt: skip
        canvases += 1
        input_ids = torch.cat([input_ids, canvas], dim=-1)  # 1.d
        input_ids, finished_sequences = _finalize_canvas(input_ids, finished_sequences, settings)  # 1.e
        if torch.all(finished_sequences):
            break
        # 1.f `_prepare_kwargs_for_next_canvas`
        cur_len += canvas_length
        decoder_attention_mask = torch.nn.functional.pad(decoder_attention_mask, (0, canvas_length), value=True)
        attention_mask = torch.nn.functional.pad(attention_mask, (0, canvas_length), value=True)
        encoder_positions = decoder_positions
        decoder_positions = torch.arange(cur_len, cur_len + canvas_length, dtype=torch.int32, device=device)[None]
        unprocessed = input_ids[:, -canvas_length:]
    yield _result(input_ids, passes, initial_len, canvases, settings)


def _result(
    input_ids: torch.Tensor, passes: torch.Tensor, initial_len: int, canvases: int, settings: GemmaSettings
) -> GemmaResult:
    """Mirrors `_compute_tokens_per_forward`: pad tokens are not counted as generated."""
    new_tokens = input_ids[:, initial_len:]
    if settings.pad_token_id is not None:
        valid = (new_tokens != settings.pad_token_id).sum(dim=-1)
    else:
        valid = new_tokens.shape[1]
    return GemmaResult(
        sequences=input_ids.cpu(),
        decoder_passes=passes.cpu(),
        tokens_per_forward=(valid / passes).cpu(),
        canvases=canvases,
        settings=settings,
    )


def _denoise_canvas(
    model: Any,
    settings: GemmaSettings,
    cache: Any,
    decoder_attention_mask: torch.Tensor,
    decoder_positions: torch.Tensor,
    finished_sequences: torch.Tensor,
    passes: torch.Tensor,
    canvas_index: int,
    generator: torch.Generator | None,
) -> Iterator[GemmaStep]:
    """The denoising loop of one canvas (generate 1.b-1.c); returns the final draft (B, C).

    `passes` is incremented in place, as generate's `decoder_forward_passes`."""
    batch_size, canvas_length = finished_sequences.shape[0], settings.canvas_length
    device = finished_sequences.device
    # 1.b `_prepare_denoiser_inputs`
    current = rule.initial_canvas(batch_size, canvas_length, settings.vocab_size, device, generator)
    masks = model.model.decoder.create_diffusion_decoder_attention_mask(
        config=model.config,
        inputs_embeds=current.unsqueeze(-1),
        cache=cache,
        decoder_attention_mask=decoder_attention_mask,
    )
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    noise = torch.ones((batch_size, canvas_length), dtype=torch.bool, device=device)
    argmax, self_conditioning, history, steps_stable, previous_argmax = current, None, None, None, None
    embeddings_dtype = model.model.decoder.embed_tokens.weight.dtype
    for step_index, remaining in enumerate(reversed(range(1, settings.max_denoising_steps + 1))):
        passes += ~(finished | finished_sequences)
        logits = model.forward(  # generate calls `self.forward` (not `__call__`): top-level hooks do not fire
            decoder_input_ids=current,
            self_conditioning_logits=self_conditioning,
            decoder_attention_mask=masks,
            cache=cache,
            decoder_position_ids=decoder_positions,
        ).logits  # (B, C, V) float32
        temperature = _temperature(settings, remaining)
        scaled = rule.scale_logits(logits, temperature)  # (B, C, V)
        proposal = rule.propose(scaled, generator)
        acceptance = rule.accept(current, proposal.sampled, scaled, settings.entropy_bound)
        renoised = rule.renoise(acceptance.canvas, acceptance.accepted, settings.vocab_size, generator)
        new_argmax, new_current = proposal.argmax, renoised.canvas
        check, was_finished = None, finished
        if settings.stability_threshold is not None and settings.confidence_threshold is not None:
            if finished.any():  # rows already finished keep their draft, canvas and logits
                new_argmax = torch.where(finished[:, None], argmax, new_argmax)
                new_current = torch.where(finished[:, None], current, new_current)
                scaled = torch.where(finished[:, None, None], self_conditioning, scaled)
            check = rule.stop_check(
                history, new_argmax, previous_argmax, steps_stable, scaled,
                settings.stability_threshold, settings.confidence_threshold,
            )  # fmt: skip
            history, steps_stable = check.history, check.steps_stable
            finished = finished | check.stop
        yield _step(
            canvas_index, step_index, remaining, current, noise, proposal, acceptance, renoised, new_argmax,
            previous_argmax, new_current, scaled, check, finished, temperature, settings,
        )  # fmt: skip
        noise = torch.where(was_finished[:, None], noise, renoised.renoised)  # frozen rows keep theirs
        previous_argmax, argmax, current = new_argmax, new_argmax, new_current
        self_conditioning = scaled.to(embeddings_dtype)  # 1.c.v
        if torch.all(finished):
            break
    return argmax


def _step(
    canvas_index: int,
    step_index: int,
    remaining: int,
    current: torch.Tensor,
    noise: torch.Tensor,
    proposal: rule.Proposal,
    acceptance: rule.Acceptance,
    renoised: rule.Renoised,
    argmax: torch.Tensor,
    previous_argmax: torch.Tensor | None,
    canvas_out: torch.Tensor,
    scaled: torch.Tensor,
    check: rule.StopCheck | None,
    finished: torch.Tensor,
    temperature: torch.Tensor | None,
    settings: GemmaSettings,
) -> GemmaStep:
    """Pack one step's tensors (moved to the CPU) into a record."""
    changed = torch.ones_like(argmax, dtype=torch.bool) if previous_argmax is None else argmax != previous_argmax
    if check is None:  # no stopping criteria configured: report the quantities anyway
        mean_entropy = acceptance.entropy.mean(dim=-1)
        stable = confident = torch.zeros_like(finished)
        steps_stable = torch.zeros(finished.shape, dtype=torch.long)
    else:
        mean_entropy, stable, confident, steps_stable = (
            check.mean_entropy, check.stable, check.confident, check.steps_stable
        )  # fmt: skip
    return GemmaStep(
        canvas_index=canvas_index,
        step_index=step_index,
        remaining_step=remaining,
        canvas_in=current.cpu(),
        noise_in=noise.cpu(),
        sampled=proposal.sampled.cpu(),
        argmax=argmax.cpu(),
        entropy=acceptance.entropy.cpu(),
        sampled_prob=proposal.sampled_prob.cpu(),
        accepted=acceptance.accepted.cpu(),
        renoised=renoised.renoised.cpu(),
        argmax_changed=changed.cpu(),
        canvas_out=canvas_out.cpu(),
        mean_entropy=mean_entropy.cpu(),
        confidence_threshold=settings.confidence_threshold,
        steps_stable=steps_stable.cpu(),
        stable=stable.cpu(),
        confident=confident.cpu(),
        finished_denoising=finished.cpu(),
        temperature=None if temperature is None else float(temperature),
    )
