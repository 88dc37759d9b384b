"""A uniform-noise canvas model's run (DiffusionGemma) as (position x step) arrays, and its draft per step.

A canvas model refines a canvas of C tokens (positions [start, start + C) of the generated part)
that starts as uniform random tokens: each step samples a token everywhere, accepts some, re-noises
the rest, and its argmax is the step's *draft*. The store keeps kept tokens in `RunArrays.tokens`
and noise as the run's mask id (the noise marker); what only a canvas model has is each step's
`StepExtras.canvas` (explorer/decoding/canvas_record.py). This module reads those records into
the grids the figures draw and the draft the token view shows.

Pure: RunArrays in, arrays or escaped HTML out.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from explorer.decoding.canvas_record import CanvasRecord
from explorer.store.arrays import RunArrays

# Runs of a canvas model whose steps carry no canvas record (a user's generate() recorded through a
# streamer) are still canvas runs when their row says so: these names, in the model, its family, the
# strategy or the config.
CANVAS_NAMES = ("diffusion_gemma", "diffusiongemma", "diffusion-gemma")
DRAFT_FLIP_COLOUR = "#d6336c"  # an argmax that changed at this step, here and in the token view


def is_canvas_run(arrays: RunArrays) -> bool:
    """A run of a uniform-noise canvas model: a step carries a canvas record, or the run's model,
    family, strategy or config names a canvas model (a streamer's run records drafts only)."""
    if any(extras.canvas is not None for extras in arrays.extras):
        return True
    run, config = arrays.run, arrays.run.get("config") or {}
    names = [run.get("model"), run.get("family"), run.get("strategy")]
    if isinstance(config, dict):
        names += [config.get("family"), config.get("strategy"), config.get("model")]
    return any(isinstance(n, str) and any(c in n.lower() for c in CANVAS_NAMES) for n in names)


def canvas_record(arrays: RunArrays, column: int) -> CanvasRecord | None:
    """The canvas record of the step in `column` (None: none, or a column outside the run, or a
    record that does not fit the run's positions)."""
    if not 0 <= column < len(arrays.extras):
        return None
    record = arrays.extras[column].canvas
    if record is None or record.start + record.size > arrays.gen_length:
        return None
    return record


def state_column(arrays: RunArrays, step: int | None) -> int:
    """The column of the state after `step` (None: the last; -1: before any step; a step not stored:
    the last one before it). `views.changes.column_of` is the exact column of a stored step."""
    if step is None:
        return arrays.n_steps - 1
    return int(np.searchsorted(arrays.steps, int(step), side="right")) - 1


@dataclass(frozen=True)
class CanvasGrids:
    """A canvas run's records as (G, S) maps (NaN outside each step's canvas) and (S,) series
    (NaN / -1 where a step has no record)."""

    accepted: np.ndarray  # (G, S) float32 0/1: kept by the acceptance rule
    renoised: np.ndarray  # (G, S) float32 0/1: given a fresh random token for the next step
    flipped: np.ndarray  # (G, S) float32 0/1: the argmax differs from the previous step's
    noise_in: np.ndarray  # (G, S) float32 0/1: went into the step as noise (not a kept token)
    sampled_prob: np.ndarray  # (G, S) float32: p of the sampled token
    canvas: np.ndarray  # (S,) int: the step's canvas (-1: no record)
    canvas_step: np.ndarray  # (S,) int: the step within its canvas (-1: no record)
    mean_entropy: np.ndarray  # (S,) float64 nats
    threshold: np.ndarray  # (S,) float64: the stop rule's bound on the mean entropy (NaN: none)
    steps_stable: np.ndarray  # (S,) float64
    stop: np.ndarray  # (S,) bool: the canvas stops after this step
    final: np.ndarray  # (S,) bool: the canvas ended here

    @property
    def any(self) -> bool:
        return bool((self.canvas >= 0).any())


def canvas_grids(arrays: RunArrays) -> CanvasGrids:
    G, S = arrays.gen_length, arrays.n_steps
    maps = {name: np.full((G, S), np.nan, np.float32) for name in ("accepted", "renoised", "flipped", "noise_in")}
    sampled_prob = np.full((G, S), np.nan, np.float32)
    canvas, canvas_step = np.full(S, -1, np.int64), np.full(S, -1, np.int64)
    mean_entropy, threshold, stable = (np.full(S, np.nan, np.float64) for _ in range(3))
    stop, final = np.zeros(S, bool), np.zeros(S, bool)
    for column in range(S):
        record = canvas_record(arrays, column)
        if record is None:
            continue
        rows = slice(record.start, record.start + record.size)
        for name, values in maps.items():
            values[rows, column] = getattr(record, name).astype(np.float32)
        sampled_prob[rows, column] = record.sampled_prob
        canvas[column], canvas_step[column] = record.canvas, record.step
        mean_entropy[column] = record.mean_entropy
        if record.confidence_threshold is not None:
            threshold[column] = record.confidence_threshold
        stable[column] = record.steps_stable
        stop[column], final[column] = record.stop, record.final
    return CanvasGrids(
        **maps,
        sampled_prob=sampled_prob,
        canvas=canvas,
        canvas_step=canvas_step,
        mean_entropy=mean_entropy,
        threshold=threshold,
        steps_stable=stable,
        stop=stop,
        final=final,
    )


def stability_threshold(arrays: RunArrays, grids: CanvasGrids | None = None) -> tuple[float | None, bool]:
    """(the stop rule's stability threshold, whether it was inferred): the run's `canvas_stability`
    setting, else the fewest steps stable at a step its records call stable (None: unknown)."""
    config = arrays.run.get("config") or {}
    value = config.get("canvas_stability") if isinstance(config, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), False
    stable = [r.steps_stable for r in (canvas_record(arrays, c) for c in range(arrays.n_steps)) if r and r.stable]
    return (float(min(stable)), True) if stable else (None, False)


def status_line(arrays: RunArrays, status: str, passes: int | None = None) -> str:
    """The status line of a canvas run, in its own words: 'run 1 · completed · 18 steps · 24/24
    tokens kept · 18 decoder passes · 1.33 tokens/pass · 6 kept tokens re-noised' (`passes`: the
    decoder passes the run's steps ran, None: one a step)."""
    G, S = arrays.gen_length, arrays.n_steps
    run_id = arrays.run.get("id")
    kept = int((arrays.tokens[:, -1] != int(arrays.run["mask_id"])).sum()) if S else 0
    passes = S if passes is None or passes <= 0 else int(passes)
    parts = [f"run {run_id}" if run_id is not None else "live run", status, f"{S} steps", f"{kept}/{G} tokens kept"]
    if passes:
        parts += [f"{passes} decoder pass" + ("" if passes == 1 else "es"), f"{kept / passes:.2f} tokens/pass"]
    lost = sum(
        int((r.renoised & ~r.noise_in).sum()) for r in (canvas_record(arrays, c) for c in range(S)) if r is not None
    )
    if lost:
        parts.append(f"{lost} kept token" + (" re-noised" if lost == 1 else "s re-noised"))
    return " · ".join(parts)


# ---- the draft of a step -----------------------------------------------------------------------------


def draft_text(arrays: RunArrays, step: int | None, token_text: Callable[[int], str]) -> str:
    """The argmax draft of `step` (None: the last) as escaped HTML: a caption, then one chip per
    position the step has an argmax for (its canvas), those whose argmax changed at this step in the
    flip colour; '' when the step has no draft (before any step, or no argmax recorded)."""
    column = state_column(arrays, step)
    if column < 0 or column >= arrays.n_steps:
        return ""
    argmax = np.asarray(arrays.argmax[:, column], dtype=np.int64)  # (G,)
    positions = np.flatnonzero(argmax >= 0)
    at = int(arrays.steps[column])
    if positions.size == 0:
        return f'<span class="draft-caption">no draft recorded at step {at}</span>'
    record = canvas_record(arrays, column)
    flipped = np.zeros(arrays.gen_length, bool)
    caption = f"draft (argmax) at step {at}"
    if record is not None:
        flipped[record.start : record.start + record.size] = record.flipped & (record.step > 0)
        last = record.start + record.size - 1
        caption += f" · canvas {record.canvas}, its step {record.step} (positions {record.start}–{last})"
        if record.final:
            caption += " · final: these tokens are kept"
    chips = " ".join(_draft_chip(int(p), int(argmax[p]), bool(flipped[p]), token_text) for p in positions)
    return f'<span class="draft-caption">{html.escape(caption)}:</span> {chips}'


def draft_line(arrays: RunArrays, step: int | None, token_text: Callable[[int], str]) -> str:
    """The `.gate-line` block under a canvas run's token view with the draft of `step` (the page's
    player rewrites it per step from `draft_lines`)."""
    return f'<div class="gate-line canvas-draft">{draft_text(arrays, step, token_text)}</div>'


def draft_lines(arrays: RunArrays, token_text: Callable[[int], str]) -> dict[int, str]:
    """{step: draft_text} for every step of the run."""
    return {int(s): draft_text(arrays, int(s), token_text) for s in arrays.steps.tolist()}


def _draft_chip(position: int, token: int, flipped: bool, token_text: Callable[[int], str]) -> str:
    tip = f"position {position} · argmax '{token_text(token)}'" + (" · changed at this step" if flipped else "")
    border = DRAFT_FLIP_COLOUR if flipped else "#adb5bd"
    style = f"border: 1px solid {border}; border-radius: 3px; padding: 0 3px; white-space: pre"
    if flipped:
        style += f"; color: {DRAFT_FLIP_COLOUR}; font-weight: 600"
    classes = "draft-tok flipped" if flipped else "draft-tok"
    return (
        f'<span class="{classes}" style="{style}" title="{html.escape(tip, quote=True)}">'
        f"{html.escape(str(token_text(token)), quote=True)}</span>"
    )
