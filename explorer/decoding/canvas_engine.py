"""The decoding loop of a uniform-noise canvas model (DiffusionGemma): one StepRecord per decoder pass.

Canvas by canvas (the run's blocks), a canvas of C tokens starts as uniform noise and is refined
for up to N = steps-per-block steps. One step (transformers' `DiffusionGemmaGenerationMixin._denoising_step`):

    logits = model(canvas, self-conditioning = last step's scaled logits)       # (1, C, V)
    scaled = logits / t_j            t_j linear from t_max (step 0) to t_min (step N - 1)
    sampled ~ softmax(scaled); draft = argmax(scaled)
    accepted = the acceptance rule (DiffusionGemma's entropy bound, or another: canvas_rules.py)
    canvas = sampled where accepted, a fresh uniform token elsewhere
    stop once the draft is unchanged for `canvas_stability` steps and mean entropy < `canvas_confidence`

When a canvas stops (or its N steps are spent) its tokens become the last draft; an EOS there ends
the generation (pad after it). With the entropy bound, the same seed and the model's settings this
loop reproduces `generate()` exactly: random numbers are drawn from one generator seeded with the
run's seed, in transformers' order (per canvas one randint; per step one multinomial and one
randint for the re-noise canvas), and the step rule is explorer/decoding/entropy_bound.py.

How a step is recorded (canvas_record.py): the stored state of a position is its kept token or
noise (the run's mask id, the model's noise marker). Accepted tokens that are new there are
commits (revisions when another token was kept), kept tokens not accepted are re-masks (re-noised),
and the canvas's last step commits its final tokens. The per-position metrics (argmax, confidence,
entropy, margin) are the step's canvas, from the scaled logits; elsewhere -1 and NaN.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from explorer.decoding import entropy_bound as rule
from explorer.decoding.canvas_record import CanvasRecord
from explorer.decoding.canvas_rules import CANVAS_RULES, CanvasStep
from explorer.decoding.config import DecodeConfig
from explorer.decoding.knobs import ConfigError
from explorer.decoding.protocols import CanvasDenoiser, CanvasSession
from explorer.decoding.records import StepCost, StepExtras, StepRecord
from explorer.decoding.resume import CANVAS_EDIT_STREAM, step_seed

TOP_K = 3  # alternatives recorded per committed position, as the masked engine


def check_canvas_config(config: DecodeConfig, canvas_length: int) -> None:
    """Raise ConfigError (one line) for a setting a canvas model cannot run."""
    if config.strategy not in CANVAS_RULES:
        raise ConfigError(
            f"strategy {config.strategy} decodes masked positions; a uniform-noise canvas model accepts with "
            f"{', '.join(CANVAS_RULES)}"
        )
    if config.block_size != canvas_length:
        raise ConfigError(
            f"block-length {config.block_size}: this model refines canvases of {canvas_length} tokens; "
            f"set block-length {canvas_length} (and gen-length a multiple of it)"
        )
    if config.temperature != 0:
        raise ConfigError(
            "temperature: a canvas model samples at its own linear schedule (canvas-t-max to canvas-t-min); "
            "leave temperature at 0"
        )
    unsupported = [
        name
        for name, on in (
            ("energies", bool(config.energies)),
            ("prophet", config.prophet),
            ("cfg-scale", config.cfg_scale != 0),
            ("violations", bool(config.violations)),
        )
        if on
    ]
    if unsupported:
        raise ConfigError(f"{', '.join(unsupported)}: not available for a uniform-noise canvas model (no mask token)")
    if config.canvas_t_min > config.canvas_t_max:
        raise ConfigError(f"canvas-t-min {config.canvas_t_min} is above canvas-t-max {config.canvas_t_max}")


@dataclass
class _Canvas:
    """One canvas being refined: its device tensors and the host mirror of what is kept."""

    index: int
    start: int
    current: torch.Tensor  # (1, C) the next input canvas
    noise: np.ndarray  # (C,) bool: positions of `current` holding noise
    self_conditioning: torch.Tensor | None = None
    history: torch.Tensor | None = None
    previous_argmax: torch.Tensor | None = None
    steps_stable: torch.Tensor | None = None


@dataclass(frozen=True)
class CanvasBranch:
    """A branch of a canvas run: the parent's steps 0..k are replayed with the parent's settings
    (the same seed: the same draws, the same self-conditioning and cache, nothing recorded), then
    the edits change the canvas in progress, and the run goes on with the branch's settings.
    Replaying rather than restoring is what makes a branch exact: the self-conditioning logits and
    the random generator's state are not stored."""

    parent: DecodeConfig
    after_step: int  # k: -1 = from the prompt
    kept: np.ndarray  # (G,) the stored state after step k, edits applied: checks the replay
    edits: tuple = ()  # resume.Edit: force (a kept token) or remask (fresh noise) in the canvas in progress


@torch.no_grad()
def iter_canvas_steps(
    denoiser: CanvasDenoiser, prompt_ids: Sequence[int], config: DecodeConfig, branch: CanvasBranch | None = None
) -> Iterator[StepRecord]:
    """Yield one StepRecord per decoder pass until every canvas is finished or an EOS ends the run
    (a branch: from step k + 1 on)."""
    check_canvas_config(config, denoiser.canvas_length)
    first = -1 if branch is None else branch.after_step  # steps up to this one are replayed
    generator = torch.Generator(device=denoiser.device).manual_seed(config.seed)
    session = denoiser.begin(list(prompt_ids))
    kept = np.full(config.gen_length, denoiser.mask_id, dtype=np.int64)  # (G,) the stored state
    kept_prob = np.full(config.gen_length, np.nan, dtype=np.float32)  # p(token) at its commit
    step = 0
    for index in range(config.num_blocks):
        canvas = _Canvas(
            index,
            index * config.block_size,
            rule.initial_canvas(1, config.block_size, denoiser.vocab_size, denoiser.device, generator),
            np.ones(config.block_size, dtype=bool),
        )
        final, j = None, 0
        while final is None:
            if branch is not None and step == first + 1:
                _edit(denoiser, branch, canvas, kept, kept_prob)
            settings = branch.parent if branch is not None and step <= first else config
            began = time.perf_counter()
            record, final = _step(denoiser, session, settings, canvas, j, generator, kept, kept_prob, step)
            if step > first:
                yield replace(record, seconds=time.perf_counter() - began)
            step, j = step + 1, j + 1
        session.append(final)
        if _has_eos(denoiser, final):
            return


def _edit(denoiser: CanvasDenoiser, branch: CanvasBranch, canvas: _Canvas, kept: np.ndarray, prob: np.ndarray) -> None:
    """Check that the replay reached the parent's state, then apply the branch's edits to the canvas
    in progress: a forced token is kept there; a re-noised position gets a fresh uniform token (from
    its own stream, so the run's draws stay the parent's)."""
    edited = np.zeros(kept.shape, bool)
    edited[[e.position for e in branch.edits]] = True
    if not np.array_equal(kept[~edited], branch.kept[~edited]):
        raise RuntimeError(
            f"replaying the parent's steps 0..{branch.after_step} did not give its stored state: "
            "was it decoded by this model, with these weights?"
        )
    noise = torch.Generator(device=denoiser.device).manual_seed(
        step_seed(branch.parent.seed, branch.after_step + 1, CANVAS_EDIT_STREAM)
    )
    for edit in branch.edits:
        i = edit.position - canvas.start
        if not 0 <= i < canvas.noise.size:
            raise ConfigError(f"position {edit.position} is outside the canvas in progress ({_span(canvas)})")
        if edit.kind == "force":
            canvas.current[0, i], canvas.noise[i] = edit.token_id, False
            kept[edit.position], prob[edit.position] = edit.token_id, edit.prob
        else:
            canvas.current[0, i] = int(
                torch.randint(0, denoiser.vocab_size, (1,), generator=noise, device=denoiser.device)
            )
            canvas.noise[i] = True
            kept[edit.position], prob[edit.position] = denoiser.mask_id, np.nan


def _span(canvas: _Canvas) -> str:
    return f"positions {canvas.start}..{canvas.start + canvas.noise.size - 1}"


def _step(
    denoiser: CanvasDenoiser,
    session: CanvasSession,
    config: DecodeConfig,
    canvas: _Canvas,
    j: int,
    generator: torch.Generator,
    kept: np.ndarray,
    kept_prob: np.ndarray,
    step: int,
) -> tuple[StepRecord, torch.Tensor | None]:
    """Run step j of a canvas, update the host state; the record and the final canvas (None: go on)."""
    n = config.steps_per_block
    logits = session.denoise(canvas.current, canvas.self_conditioning)  # (1, C, V)
    # n - j steps remain (a branch with fewer steps than its parent's canvas had run: its last)
    temperature = rule.linear_temperature(config.canvas_t_min, config.canvas_t_max, max(n - j, 1), n)
    scaled = rule.scale_logits(logits, temperature)  # (1, C, V)
    proposal = rule.propose(scaled, generator)
    strategy = CANVAS_RULES[config.strategy]
    knobs = config.knob_values(strategy.knobs)
    choice = strategy.accept(
        CanvasStep(
            canvas.current, proposal, scaled, j, n, knobs, temperature, canvas.start,
            lambda row: session.denoise(row, canvas.self_conditioning),
        )
    )  # fmt: skip
    acceptance = choice.acceptance
    renoised = rule.renoise(acceptance.canvas, acceptance.accepted, denoiser.vocab_size, generator)
    check = rule.stop_check(
        canvas.history, proposal.argmax, canvas.previous_argmax, canvas.steps_stable, scaled,
        config.canvas_stability, config.canvas_confidence,
    )  # fmt: skip
    flipped = np.ones(config.block_size, bool)
    if canvas.previous_argmax is not None:
        flipped = (proposal.argmax != canvas.previous_argmax)[0].cpu().numpy()
    stop = bool(check.stop[0])
    final = _finalize(denoiser, proposal.argmax.clone()) if stop or j >= n - 1 else None
    probs = torch.softmax(scaled[0], dim=-1)  # (C, V) float32
    record = _record(
        denoiser, config, canvas, (j, step, float(temperature)), proposal, acceptance, renoised, check, probs,
        final, flipped,
    )  # fmt: skip
    if choice.probe_calls:  # a gated rule: its probe passes and its proposal
        cost = StepCost(calls=1 + choice.probe_calls, sequences=1 + choice.probe_calls)
        record = replace(
            record, forward_passes=cost.sequences, extras=replace(record.extras, cost=cost, gate=choice.gate)
        )
    record = _apply(record, kept, kept_prob, denoiser.mask_id)
    canvas.current, canvas.noise = renoised.canvas, renoised.renoised[0].cpu().numpy()
    canvas.self_conditioning, canvas.history = scaled, check.history
    canvas.previous_argmax, canvas.steps_stable = proposal.argmax, check.steps_stable
    return record, final


def _finalize(denoiser: CanvasDenoiser, canvas: torch.Tensor) -> torch.Tensor:
    """The finished canvas as generate appends it: every token after the first EOS becomes pad."""
    if not denoiser.eos_ids or denoiser.pad_id is None:
        return canvas
    is_eos = torch.isin(canvas, torch.tensor(denoiser.eos_ids, device=canvas.device))
    eos_cumsum = is_eos.cumsum(dim=-1)
    canvas[(eos_cumsum > 0) & ~((eos_cumsum == 1) & is_eos)] = denoiser.pad_id
    return canvas


def _has_eos(denoiser: CanvasDenoiser, canvas: torch.Tensor) -> bool:
    return bool(denoiser.eos_ids) and bool(
        torch.isin(canvas, torch.tensor(denoiser.eos_ids, device=canvas.device)).any()
    )


def _record(
    denoiser: CanvasDenoiser,
    config: DecodeConfig,
    canvas: _Canvas,
    when: tuple[int, int, float],
    proposal: rule.Proposal,
    acceptance: rule.Acceptance,
    renoised: rule.Renoised,
    check: rule.StopCheck,
    probs: torch.Tensor,
    final: torch.Tensor | None,
    flipped: np.ndarray,
) -> StepRecord:
    """The step as the store keeps it, before its events are worked out against the state (`_apply`).
    `when`: the step within the canvas, over the run, and its temperature."""
    (j, step, temperature), G, C, start = when, config.gen_length, config.block_size, canvas.start
    top = probs.topk(min(TOP_K, probs.shape[-1]), dim=-1)
    argmax = np.full(G, -1, np.int32)
    argmax[start : start + C] = proposal.argmax[0].cpu().numpy()
    confidence, entropy, margin = (np.full(G, np.nan, np.float32) for _ in range(3))
    top_probs = top.values.cpu().numpy()
    confidence[start : start + C] = top_probs[:, 0]
    entropy[start : start + C] = acceptance.entropy[0].cpu().numpy()
    margin[start : start + C] = top_probs[:, 0] - (top_probs[:, 1] if top_probs.shape[1] > 1 else 0.0)
    after = (final if final is not None else torch.where(acceptance.accepted, proposal.sampled, denoiser.mask_id))[0]
    token_probs = probs.gather(-1, after.clamp(max=probs.shape[-1] - 1)[:, None]).squeeze(-1)  # (C,)
    extras = StepExtras(
        cost=StepCost(calls=1, sequences=1),
        canvas=CanvasRecord(
            canvas=canvas.index,
            start=start,
            step=j,
            tokens_in=canvas.current[0].cpu().numpy().astype(np.int64),
            noise_in=canvas.noise.copy(),
            sampled=proposal.sampled[0].cpu().numpy().astype(np.int64),
            sampled_prob=proposal.sampled_prob[0].cpu().numpy().astype(np.float32),
            accepted=acceptance.accepted[0].cpu().numpy(),
            renoised=renoised.renoised[0].cpu().numpy() if final is None else np.zeros(C, bool),
            flipped=flipped,
            mean_entropy=float(check.mean_entropy[0]),
            confidence_threshold=config.canvas_confidence,
            steps_stable=int(check.steps_stable[0]),
            stable=bool(check.stable[0]),
            confident=bool(check.confident[0]),
            stop=bool(check.stop[0]),
            temperature=temperature,
            final=final is not None,
        ),
    )
    # Carried to `_apply` in the record's own fields: the canvas's state after the step, with the
    # probabilities and alternatives of every canvas position (cut down to the commits there).
    return StepRecord(
        step=step,
        block=canvas.index,
        committed=np.arange(start, start + C, dtype=np.int64),
        tokens=after.cpu().numpy().astype(np.int64),
        probs=token_probs.cpu().numpy().astype(np.float32),
        top_ids=top.indices.cpu().numpy().astype(np.int64),
        top_probs=top_probs.astype(np.float32),
        argmax=argmax,
        confidence=confidence,
        entropy=entropy,
        margin=margin,
        masked_before=0,
        seconds=0.0,
        extras=extras,
    )


def _apply(record: StepRecord, kept: np.ndarray, kept_prob: np.ndarray, noise_marker: int) -> StepRecord:
    """Turn the canvas's state after the step into events against the stored state, and update it."""
    positions, after = record.committed, record.tokens
    before = kept[positions]
    changed = (after != noise_marker) & (after != before)
    renoised = (after == noise_marker) & (before != noise_marker)
    committed = positions[changed]
    revised = before[changed] != noise_marker
    remasked = positions[renoised]
    out = replace(
        record,
        committed=committed,
        tokens=after[changed],
        probs=record.probs[changed],
        top_ids=record.top_ids[changed],
        top_probs=record.top_probs[changed],
        masked_before=int((kept == noise_marker).sum()),
        remasked=remasked,
        remasked_tokens=kept[remasked].copy(),
        remasked_probs=kept_prob[remasked].copy(),
        previous=before[changed].copy(),
        revised=revised,
        previous_probs=np.where(revised, kept_prob[committed], np.float32(np.nan)).astype(np.float32),
    )
    kept[committed], kept_prob[committed] = out.tokens, out.probs
    kept[remasked], kept_prob[remasked] = noise_marker, np.nan
    return out
