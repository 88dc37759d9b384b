"""Plotly figures of a uniform-noise canvas model's run (DiffusionGemma): pure functions of RunArrays.

Position x step maps of each step's canvas (a metric, entropy in nats, accepted 0/1, argmax flips
0/1, noise going in 0/1; blank = outside the step's canvas) on the axes of `views.figures`, and the
canvas's stop criteria per step: the mean entropy against its threshold, and the steps stable
against the stability threshold, with the canvas boundaries marked.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from explorer.store.arrays import RunArrays
from explorer.views.canvas import CanvasGrids, canvas_grids, stability_threshold
from explorer.views.figures import (
    BLANK_COLOUR,
    MARKER_COLOUR,
    POSITION_AXIS,
    STEP_AXIS,
    Grid,
    _grid_axes,
    _heatmap_hover,
    _spec,
    _step_axis,
    _step_marker,
    _uirevision,
    apply_layout,
    empty_figure,
)

ACCEPTED_COLOUR = "#2f9e44"
FLIP_COLOUR = "#d6336c"
NOISE_COLOUR = "#868e96"
ENTROPY_COLOUR = "#4c78a8"
STABLE_COLOUR = "#f58518"
BOUNDARY_COLOUR = "#868e96"
NO_RECORDS = "This run recorded drafts only (no canvas record per step):<br>a generate() streamer gives the argmax."


def canvas_metric_heatmap(
    arrays: RunArrays,
    metric: str,
    step: int | None = None,
    max_positions: int = 256,
    max_steps: int = 256,
    uirevision: str | None = None,
) -> go.Figure:
    """Position x step heatmap of confidence / entropy / margin at every position of each step's
    canvas (the scaled logits'; noise and kept tokens alike). Blank: outside the step's canvas."""
    spec = _spec(metric)
    full = np.asarray(getattr(arrays, spec.label), dtype=np.float32)  # (G, S), NaN outside the canvas
    title = f"{spec.label.capitalize()} of each position of the step's canvas"
    revision = uirevision or _uirevision(arrays, f"canvas-heatmap-{metric}")
    if not np.isfinite(full).any():
        return empty_figure(title, "No step has a canvas yet.", revision)
    grid = Grid.of(full, max_positions, max_steps)
    top = spec.zmax if spec.zmax is not None else max(float(np.nanmax(full)), 1e-3)
    fig = go.Figure(
        go.Heatmap(
            z=grid.z,
            x=grid.x,
            y=grid.y,
            zmin=spec.zmin,
            zmax=top,
            colorscale=spec.colorscale,
            hoverongaps=False,
            colorbar=dict(title=dict(text=f"{spec.label}<br>({spec.unit})"), thickness=12),
            hovertemplate=_heatmap_hover(spec.label, spec.unit, grid.fg, grid.fs),
        )
    )
    notes = grid.notes() + [f"{spec.label} = {spec.meaning}", "blank = outside the step's canvas"]
    apply_layout(fig, title, " · ".join(notes), STEP_AXIS, POSITION_AXIS, revision)
    _grid_axes(fig, full.shape, step)
    return fig


def canvas_entropy_heatmap(arrays: RunArrays, step: int | None = None, **kwargs) -> go.Figure:
    """The entropy (nats) of each position of each step's canvas."""
    return canvas_metric_heatmap(arrays, "entropy", step, uirevision=_uirevision(arrays, "canvas-entropy"), **kwargs)


def accepted_map(arrays: RunArrays, step: int | None = None, grids: CanvasGrids | None = None, **kwargs) -> go.Figure:
    """Position x step map: 1 = the acceptance rule kept the sampled token (or kept token) there."""
    grids = grids if grids is not None else canvas_grids(arrays)
    return _binary_map(
        arrays,
        grids.accepted,
        grids,
        "Accepted by the step's acceptance rule",
        ("not accepted (re-noised)", "accepted"),
        ACCEPTED_COLOUR,
        "canvas-accepted",
        step,
        **kwargs,
    )


def flips_map(arrays: RunArrays, step: int | None = None, grids: CanvasGrids | None = None, **kwargs) -> go.Figure:
    """Position x step map: 1 = the argmax changed since the previous step (every position at a
    canvas's first step)."""
    grids = grids if grids is not None else canvas_grids(arrays)
    return _binary_map(
        arrays,
        grids.flipped,
        grids,
        "Argmax flips: the draft token changed at this step",
        ("same argmax", "argmax changed"),
        FLIP_COLOUR,
        "canvas-flips",
        step,
        note="every position counts as changed at a canvas's first step",
        **kwargs,
    )


def noise_map(arrays: RunArrays, step: int | None = None, grids: CanvasGrids | None = None, **kwargs) -> go.Figure:
    """Position x step map: 1 = the position went into the step as noise (a random token)."""
    grids = grids if grids is not None else canvas_grids(arrays)
    return _binary_map(
        arrays,
        grids.noise_in,
        grids,
        "Noise going into each step (random tokens)",
        ("a kept token", "noise"),
        NOISE_COLOUR,
        "canvas-noise",
        step,
        **kwargs,
    )


def stop_criteria(arrays: RunArrays, step: int | None = None, grids: CanvasGrids | None = None) -> go.Figure:
    """The canvas's stop rule per step: mean entropy (nats, left axis) against the confidence
    threshold (dashed), and steps stable (right axis) against the stability threshold (dashed);
    dotted lines mark where each canvas starts, stars the steps after which a canvas stopped."""
    grids = grids if grids is not None else canvas_grids(arrays)
    title = "Stop criteria of each canvas, per step"
    revision = _uirevision(arrays, "canvas-stop")
    if not grids.any:
        return empty_figure(title, NO_RECORDS, revision)
    steps = np.asarray(arrays.steps, dtype=np.int64)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=_series(grids.mean_entropy),
            mode="lines+markers",
            name="mean entropy",
            line=dict(color=ENTROPY_COLOUR),
            hovertemplate="step %{x}<br>mean entropy %{y:.4f} nats<extra></extra>",
        )
    )
    if np.isfinite(grids.threshold).any():
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=_series(grids.threshold),
                mode="lines",
                name="confidence threshold",
                line=dict(color=ENTROPY_COLOUR, dash="dash"),
                hovertemplate="step %{x}<br>confidence threshold %{y:.4f} nats<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=_series(grids.steps_stable),
            mode="lines+markers",
            name="steps stable",
            yaxis="y2",
            line=dict(color=STABLE_COLOUR, shape="hv"),
            hovertemplate="step %{x}<br>%{y} steps with the same argmax<extra></extra>",
        )
    )
    threshold, inferred = stability_threshold(arrays, grids)
    if threshold is not None:
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=np.where(grids.canvas >= 0, threshold, np.nan).tolist(),
                mode="lines",
                name="stability threshold" + (" (inferred)" if inferred else ""),
                yaxis="y2",
                line=dict(color=STABLE_COLOUR, dash="dash"),
                hovertemplate="step %{x}<br>stability threshold %{y} steps<extra></extra>",
            )
        )
    stops = np.flatnonzero(grids.stop)
    if stops.size:
        fig.add_trace(
            go.Scatter(
                x=steps[stops],
                y=grids.mean_entropy[stops],
                mode="markers",
                name="stopped here",
                marker=dict(symbol="star", size=11, color=MARKER_COLOUR),
                hovertemplate="step %{x}: the canvas stopped (stable and confident)<extra></extra>",
            )
        )
    starts = boundary_steps(arrays, grids)
    apply_layout(
        fig,
        title,
        "left: mean entropy over the canvas (nats) · right: steps with the same argmax"
        "<br>dashed = thresholds (stop when stable and below the entropy bound) · dotted = a canvas starts",
        STEP_AXIS,
        "mean entropy (nats)",
        revision,
    )
    fig.update_layout(
        showlegend=True,
        legend=dict(orientation="h", x=0, xanchor="left", y=-0.25, yanchor="top", font=dict(size=10)),
        yaxis2=dict(title=dict(text="steps stable"), overlaying="y", side="right", rangemode="tozero", showgrid=False),
        yaxis=dict(rangemode="tozero"),
        margin=dict(r=60, b=90),
    )
    for at, canvas in starts:
        fig.add_vline(
            x=at - 0.5,
            line=dict(color=BOUNDARY_COLOUR, width=1, dash="dot"),
            name="canvas boundary",
            annotation=dict(text=f"canvas {canvas}", font=dict(color=BOUNDARY_COLOUR, size=10)),
            annotation_position="bottom right",
        )
    _step_axis(fig, arrays.n_steps)
    _step_marker(fig, step)
    return fig


def boundary_steps(arrays: RunArrays, grids: CanvasGrids | None = None) -> list[tuple[int, int]]:
    """[(step, canvas), ...]: the first recorded step of each canvas."""
    grids = grids if grids is not None else canvas_grids(arrays)
    out, last = [], None
    for column, canvas in enumerate(grids.canvas.tolist()):
        if canvas >= 0 and canvas != last:
            out.append((int(arrays.steps[column]), int(canvas)))
        last = canvas if canvas >= 0 else last
    return out


def _binary_map(
    arrays: RunArrays,
    full: np.ndarray,
    grids: CanvasGrids,
    title: str,
    labels: tuple[str, str],
    colour: str,
    kind: str,
    step: int | None,
    note: str = "",
    max_positions: int = 256,
    max_steps: int = 256,
) -> go.Figure:
    """A (position x step) 0/1 map (a fraction per cell when downsampled); blank outside the canvas."""
    revision = _uirevision(arrays, kind)
    if not grids.any:
        return empty_figure(title, NO_RECORDS, revision)
    grid = Grid.of(full, max_positions, max_steps)
    downsampled = (grid.fg, grid.fs) != (1, 1)
    unit = "fraction of the cell" if downsampled else "0 / 1"
    fig = go.Figure(
        go.Heatmap(
            z=grid.z,
            x=grid.x,
            y=grid.y,
            zmin=0.0,
            zmax=1.0,
            colorscale=[[0.0, "#f8f9fa"], [1.0, colour]],
            hoverongaps=False,
            colorbar=dict(
                title=dict(text=f"{labels[1]}<br>({unit})"),
                thickness=12,
                tickvals=[0, 1],
                ticktext=["0: " + labels[0], "1: " + labels[1]] if not downsampled else ["0", "1"],
            ),
            hovertemplate=_binary_hover(labels, grid.fg, grid.fs),
        )
    )
    notes = grid.notes() + [f"1 = {labels[1]}, 0 = {labels[0]}", "grey = outside the step's canvas"]
    if note:
        notes.append(f"<br>{note}")
    apply_layout(fig, title, " · ".join(notes).replace(" · <br>", "<br>"), STEP_AXIS, POSITION_AXIS, revision)
    _grid_axes(fig, full.shape, step)
    fig.update_layout(plot_bgcolor=BLANK_COLOUR)
    return fig


def _binary_hover(labels: tuple[str, str], fg: int, fs: int) -> str:
    if (fg, fs) == (1, 1):
        return f"step %{{x}}<br>position %{{y}}<br>%{{z:.0f}} (1 = {labels[1]})<extra></extra>"
    return _heatmap_hover(f"fraction {labels[1]}", "0..1", fg, fs)


def _series(values: np.ndarray) -> list:
    """(S,) floats for a trace, None where NaN (a step with no record: a gap in the line)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).tolist()]
