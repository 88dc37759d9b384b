"""DiffusionGemma's denoising step rule (entropy-bound sampler), as pure tensor functions.

DiffusionGemma decodes block by block: each canvas of C tokens starts as uniform noise and is
refined for up to N steps. One step (transformers' `DiffusionGemmaGenerationMixin._denoising_step`):

1. the decoder's logits are divided by a linear temperature (`LinearTemperatureScheduleLogitsProcessor`);
2. one token per position is sampled from them and the argmax is taken (the *draft*);
3. the lowest-entropy positions are accepted while sum H - max H <= the entropy bound, over the
   whole canvas, every step (`EntropyBoundSampler.accept_canvas`, EB-sampler, arXiv:2505.24857);
4. every position not accepted is re-noised with a fresh uniform token (`renoise_canvas`);
5. the canvas stops early once its argmax has not changed for `stability_threshold` steps and the
   mean entropy is below `confidence_threshold` (`StableAndConfidentStoppingCriteria`).

The functions below are that step, split so the explorer can record every intermediate, and kept
operation-for-operation identical to transformers (same torch calls, same dtypes, same order of
random draws) so a recorded run reproduces `generate()` bit for bit. They import no transformers:
the rule is testable on hand-built logits. Random draws take an optional `torch.Generator`; with
None they use torch's global RNG, which is what transformers uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Proposal:
    """What the denoiser proposes at one step, from the temperature-scaled logits."""

    sampled: torch.Tensor  # (B, C) long: one multinomial draw per position
    argmax: torch.Tensor  # (B, C) long: the draft transformers streams to `put_draft`
    sampled_prob: torch.Tensor  # (B, C) float32: probability of the sampled token


@dataclass(frozen=True)
class Acceptance:
    """The entropy-bound acceptance over the whole canvas."""

    canvas: torch.Tensor  # (B, C) long: sampled token where accepted, the incoming token elsewhere
    accepted: torch.Tensor  # (B, C) bool
    entropy: torch.Tensor  # (B, C) float32: entropy of each position's distribution (nats)


@dataclass(frozen=True)
class Renoised:
    """The canvas after the positions not accepted got fresh uniform tokens."""

    canvas: torch.Tensor  # (B, C) long: the next step's input canvas
    renoised: torch.Tensor  # (B, C) bool: positions that got a fresh random token


@dataclass(frozen=True)
class StopCheck:
    """The stable-and-confident stopping quantities after one step."""

    stable: torch.Tensor  # (B,) bool: argmax unchanged over the last `stability_threshold` steps
    confident: torch.Tensor  # (B,) bool: mean entropy < confidence_threshold
    stop: torch.Tensor  # (B,) bool: stable & confident
    mean_entropy: torch.Tensor  # (B,) float32: mean over the canvas of the entropy
    steps_stable: torch.Tensor  # (B,) long: consecutive previous steps with this same argmax
    history: torch.Tensor | None  # (S, B, C) long: the argmax history for the next check (None if S == 0)


def linear_temperature(t_min: float, t_max: float, remaining_step: int, max_steps: int) -> torch.Tensor:
    """Temperature of the linear schedule, t_min + (t_max - t_min) * (n / N), n = steps remaining (N..1).

    Mirrors `LinearTemperatureScheduleLogitsProcessor.__call__` with `cur_step` made an int32 tensor
    as `_denoising_step` does, so the float32 rounding (and hence every logit) is the same."""
    cur_step = torch.tensor(remaining_step, dtype=torch.int32)
    return t_min + ((t_max - t_min) * (cur_step / max_steps))  # () float32


def scale_logits(logits: torch.Tensor, temperature: torch.Tensor | None) -> torch.Tensor:
    """Logits divided by the temperature; unchanged without a schedule (no t_min / t_max)."""
    if temperature is None:
        return logits
    return logits / temperature.to(logits.device)  # (B, C, V)


def initial_canvas(
    batch_size: int, canvas_length: int, vocab_size: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """A canvas of uniform random tokens: `EntropyBoundSampler.initialize_canvas` (one randint draw)."""
    return torch.randint(
        low=0, high=vocab_size, size=(batch_size, canvas_length), device=device, generator=generator
    )  # (B, C)


def propose(logits: torch.Tensor, generator: torch.Generator | None) -> Proposal:
    """Sample one token per position and take the argmax, from temperature-scaled logits (B, C, V).

    Mirrors step 1.c.ii of `_denoising_step`: float32 softmax, one multinomial draw over the
    flattened (B*C, V) rows, argmax of the scaled logits."""
    batch_size, canvas_length, vocab_size = logits.shape
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # (B, C, V)
    sampled = torch.multinomial(probs.view(-1, vocab_size), num_samples=1, generator=generator)  # (B*C, 1)
    sampled = sampled.squeeze(-1).view(batch_size, canvas_length)  # (B, C)
    sampled_prob = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # (B, C)
    return Proposal(sampled=sampled, argmax=torch.argmax(logits, dim=-1), sampled_prob=sampled_prob)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each position's categorical distribution, (B, C, V) -> (B, C), computed the
    way transformers does (`torch.distributions.Categorical(logits=...).entropy()`)."""
    return torch.distributions.Categorical(logits=logits).entropy()


def accept(current: torch.Tensor, sampled: torch.Tensor, logits: torch.Tensor, entropy_bound: float) -> Acceptance:
    """Accept the k lowest-entropy positions such that sum H - max H <= entropy_bound.

    Mirrors `EntropyBoundSampler.accept_canvas`: recomputed over the whole canvas every step (an
    accepted position can be rejected at a later step), ascending `torch.sort` (ties broken as torch
    sorts them), and the lowest-entropy position always accepted (its sum - max is 0)."""
    entropy = token_entropy(logits)  # (B, C)
    sorted_entropy, sorted_indices = torch.sort(entropy, dim=-1, descending=False)  # (B, C)
    cumulative = torch.cumsum(sorted_entropy, dim=-1)  # (B, C)
    # sorted ascending, so the running maximum is the current element
    sorted_selected = cumulative - sorted_entropy <= entropy_bound  # (B, C)
    accepted = torch.scatter(
        input=torch.zeros_like(sorted_selected), dim=-1, index=sorted_indices, src=sorted_selected
    )  # (B, C)
    return Acceptance(canvas=torch.where(accepted, sampled, current), accepted=accepted, entropy=entropy)


def renoise(
    accepted_canvas: torch.Tensor, accepted: torch.Tensor, vocab_size: int, generator: torch.Generator | None
) -> Renoised:
    """Give every position not accepted a fresh uniform token.

    Mirrors `EntropyBoundSampler.renoise_canvas`: a whole new random canvas is drawn (B*C draws,
    even for accepted positions and even at a canvas's last step), then kept where not accepted."""
    batch_size, canvas_length = accepted_canvas.shape
    random_canvas = initial_canvas(batch_size, canvas_length, vocab_size, accepted_canvas.device, generator)
    renoised = ~accepted  # (B, C)
    return Renoised(canvas=torch.where(renoised, random_canvas, accepted_canvas), renoised=renoised)


def stop_check(
    history: torch.Tensor | None,
    argmax: torch.Tensor,
    previous_argmax: torch.Tensor | None,
    previous_steps_stable: torch.Tensor | None,
    logits: torch.Tensor,
    stability_threshold: int,
    confidence_threshold: float,
) -> StopCheck:
    """The stable-and-confident stop after one step; `history` None at a canvas's first step.

    Mirrors `StableAndConfidentStoppingCriteria.__call__`: a history of the last S argmax canvases,
    filled with -1 at a canvas's start; stable when all S equal this step's argmax (S = 0: always);
    confident when the mean entropy of the scaled logits is below the threshold. `steps_stable`
    (not in transformers) counts the consecutive previous steps with the same argmax, uncapped."""
    batch_size = logits.shape[0]
    if stability_threshold == 0:
        stable = torch.ones((batch_size,), device=logits.device, dtype=torch.bool)
    else:
        if history is None:
            history = torch.full(
                (stability_threshold, *argmax.shape), -1, dtype=argmax.dtype, device=argmax.device
            )  # (S, B, C)
        stable = (history == argmax[None, :, :]).all(dim=-1).all(dim=0)  # (B,)
        history = torch.roll(history, shifts=-1, dims=0)
        history[-1] = argmax
    mean_entropy = torch.mean(token_entropy(logits), dim=-1)  # (B,)
    confident = mean_entropy < confidence_threshold
    if previous_argmax is None:
        steps_stable = torch.zeros((batch_size,), dtype=torch.long, device=argmax.device)
    else:
        same = (argmax == previous_argmax).all(dim=-1)  # (B,)
        steps_stable = torch.where(same, previous_steps_stable + 1, 0)
    return StopCheck(
        stable=stable,
        confident=confident,
        stop=stable & confident,
        mean_entropy=mean_entropy,
        steps_stable=steps_stable,
        history=history,
    )
