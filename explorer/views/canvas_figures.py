"""Plotly figures of a uniform-noise canvas model's run (DiffusionGemma): pure functions of RunArrays.

Position x step maps of each step's canvas (a metric, entropy in nats, accepted 0/1, argmax flips
0/1, noise going in 0/1; blank = outside the step's canvas) on the axes of `views.figures`, and the
canvas's stop criteria per step: the mean entropy against its threshold, and the steps stable
against the stability threshold, with the canvas boundaries marked.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.store.arrays import RunArrays
from explorer.views.canvas import CanvasGrids, canvas_grids, stability_threshold
from explorer.views.figures import (
    BLANK_COLOUR,
    FIGURE_HEIGHT,
    INTEGER_TICKS_UP_TO,
    MARKER_COLOUR,
    POSITION_AXIS,
    STEP_AXIS,
    STEP_MARKER,
    Grid,
    _grid_axes,
    _heatmap_hover,
    _spec,
    _step_axis,
    _uirevision,
    apply_layout,
    empty_figure,
)

ACCEPTED_COLOUR = "#2f9e44"
FLIP_COLOUR = "#d6336c"
NOISE_COLOUR = "#495057"
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
    fig = canvas_metric_heatmap(arrays, "entropy", step, uirevision=_uirevision(arrays, "canvas-entropy"), **kwargs)
    step_ticks(fig, arrays.n_steps)
    return fig


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
        colour_names=("white", "green"),
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
        colour_names=("white", "pink"),
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
        colour_names=("white", "dark grey"),
        **kwargs,
    )


def stop_criteria(arrays: RunArrays, step: int | None = None, grids: CanvasGrids | None = None) -> go.Figure:
    """The canvas's stop rule per step, in two panels on one step axis: on top the mean entropy
    (nats) against the confidence threshold (dashed), below the steps stable against the stability
    threshold (dashed); dotted lines mark where each canvas starts (in both), stars the steps after
    which a canvas stopped."""
    grids = grids if grids is not None else canvas_grids(arrays)
    title = "Stop criteria of each canvas, per step"
    revision = _uirevision(arrays, "canvas-stop")
    if not grids.any:
        return empty_figure(title, NO_RECORDS, revision)
    steps = np.asarray(arrays.steps, dtype=np.int64)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1)

    def line(y, name: str, colour: str, hover: str, row: int, dashed: bool = False) -> None:
        style = dict(color=colour, dash="dash") if dashed else dict(color=colour, shape="hv" if row == 2 else "linear")
        mode = "lines" if dashed else "lines+markers"
        trace = go.Scatter(x=steps, y=y, mode=mode, name=name, line=style, hovertemplate=hover + "<extra></extra>")
        fig.add_trace(trace, row=row, col=1)

    line(_series(grids.mean_entropy), "mean entropy", ENTROPY_COLOUR, "step %{x}<br>mean entropy %{y:.4f} nats", 1)
    if np.isfinite(grids.threshold).any():
        hover = "step %{x}<br>confidence threshold %{y:.4f} nats"
        line(_series(grids.threshold), "confidence threshold", ENTROPY_COLOUR, hover, 1, dashed=True)
    hover = "step %{x}<br>%{y} steps with the same argmax"
    line(_series(grids.steps_stable), "steps stable", STABLE_COLOUR, hover, 2)
    threshold, inferred = stability_threshold(arrays, grids)
    if threshold is not None:
        name = "stability threshold" + (" (inferred)" if inferred else "")
        y = np.where(grids.canvas >= 0, threshold, np.nan).tolist()
        line(y, name, STABLE_COLOUR, "step %{x}<br>stability threshold %{y} steps", 2, dashed=True)
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
            ),
            row=1,
            col=1,
        )
    apply_layout(
        fig,
        title,
        "the canvas stops (★) when stable and below the entropy bound"
        "<br>dashed = thresholds · dotted = a canvas starts",
        "",
        "mean entropy<br>(nats)",
        revision,
    )
    top = np.nanmax(np.concatenate([grids.mean_entropy, grids.threshold]))
    fig.update_layout(
        showlegend=False,
        height=FIGURE_HEIGHT + 40,
        yaxis=dict(range=[0, max(float(top), 1e-3) * 1.15]),
        yaxis2=dict(title=dict(text="steps stable"), rangemode="tozero"),
        xaxis2=dict(title=dict(text=STEP_AXIS)),
        margin=dict(r=20),
    )
    for at, canvas in boundary_steps(arrays, grids):
        for row in (1, 2):
            fig.add_vline(
                x=at - 0.5,
                line=dict(color=BOUNDARY_COLOUR, width=1, dash="dot"),
                name="canvas boundary",
                row=row,
                col=1,
                **(
                    dict(
                        annotation=dict(text=f"canvas {canvas}", font=dict(color=BOUNDARY_COLOUR, size=10)),
                        annotation_position="bottom right",
                    )
                    if row == 2
                    else {}
                ),
            )
    _step_axis(fig, arrays.n_steps)
    step_ticks(fig, arrays.n_steps)
    fig.update_xaxes(showticklabels=True, row=2, col=1)
    if step is not None:  # the selected step in both panels, its label on top
        for row in (1, 2):
            fig.add_vline(
                x=step,
                line=dict(color=MARKER_COLOUR, width=2, dash="dot"),
                name=STEP_MARKER,
                row=row,
                col=1,
                **(
                    dict(
                        annotation=dict(text=f"step {step}", font=dict(color=MARKER_COLOUR, size=11), name=STEP_MARKER),
                        annotation_position="top",
                    )
                    if row == 1
                    else {}
                ),
            )
    return fig


def step_ticks(fig: go.Figure, S: int) -> None:
    """A tick every other step (or more) on a half-width figure's step axis: 0..17 at every step overlap."""
    if 10 < S <= INTEGER_TICKS_UP_TO:
        fig.update_xaxes(tickmode="linear", tick0=0, dtick=int(np.ceil(S / 10)))


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
    colour_names: tuple[str, str] = ("white", "coloured"),
    max_positions: int = 256,
    max_steps: int = 256,
) -> go.Figure:
    """A (position x step) 0/1 map (a fraction per cell when downsampled); blank outside the canvas.
    At full resolution the subtitle names the two colours (no colour bar: the plot keeps its width)."""
    revision = _uirevision(arrays, kind)
    if not grids.any:
        return empty_figure(title, NO_RECORDS, revision)
    grid = Grid.of(full, max_positions, max_steps)
    downsampled = (grid.fg, grid.fs) != (1, 1)
    fig = go.Figure(
        go.Heatmap(
            z=grid.z,
            x=grid.x,
            y=grid.y,
            zmin=0.0,
            zmax=1.0,
            colorscale=[[0.0, "#ffffff"], [1.0, colour]],
            hoverongaps=False,
            showscale=downsampled,
            colorbar=dict(title=dict(text=f"fraction<br>{labels[1]}"), thickness=12),
            hovertemplate=_binary_hover(labels, grid.fg, grid.fs),
        )
    )
    if downsampled:
        notes = grid.notes() + [f"colour = fraction {labels[1]}", "grey = outside the step's canvas"]
    else:
        notes = [f"{colour_names[1]} = {labels[1]}", f"{colour_names[0]} = {labels[0]}", "grey = outside the canvas"]
    if note:
        notes.append(f"<br>{note}")
    apply_layout(fig, title, " · ".join(notes).replace(" · <br>", "<br>"), STEP_AXIS, POSITION_AXIS, revision)
    _grid_axes(fig, full.shape, step)
    step_ticks(fig, full.shape[1])
    fig.update_layout(plot_bgcolor=BLANK_COLOUR)
    return fig


def _binary_hover(labels: tuple[str, str], fg: int, fs: int) -> str:
    if (fg, fs) == (1, 1):
        return f"step %{{x}}<br>position %{{y}}<br>%{{z:.0f}} (1 = {labels[1]})<extra></extra>"
    return _heatmap_hover(f"fraction {labels[1]}", "0..1", fg, fs)


def _series(values: np.ndarray) -> list:
    """(S,) floats for a trace, None where NaN (a step with no record: a gap in the line)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).tolist()]


# A masked run's words in the figures every run has (commit order, tokens per step, changes map), and
# what they mean for a canvas run: a commit keeps a token, a re-mask re-noises it, a revision replaces it.
CANVAS_WORDS = (
    ("What changed where: unmask, revise, re-mask", "What changed where: kept, replaced, re-noised"),
    ("Tokens committed per step", "Tokens kept per step"),
    ("Commit order", "Order in which tokens were kept"),
    ("commit order", "the order kept"),
    ("commit<br>step", "kept at<br>step"),
    ("commits,", "kept,"),
    ("committed", "kept"),
    ("re-masked", "re-noised"),
    ("revisions", "replacements"),
    ("revised", "replaced"),
    ("unmask (", "kept ("),
    ("revise (", "replaced ("),
    ("re-mask (", "re-noised ("),
)


def in_canvas_words(fig: go.Figure) -> go.Figure:
    """`fig` (a figure of views.figures drawn for a canvas run) with its title, axis titles, trace
    names, hovers and colour bars in a canvas run's words (CANVAS_WORDS); changed in place."""

    def say(text):
        if not isinstance(text, str):
            return text
        for masked, canvas in CANVAS_WORDS:
            text = text.replace(masked, canvas)
        return text

    if fig.layout.title.text:
        fig.layout.title.text = say(fig.layout.title.text)
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        if axis.title.text:
            axis.title.text = say(axis.title.text)
    for trace in fig.data:
        if trace.name:
            trace.name = say(trace.name)
        if isinstance(getattr(trace, "hovertemplate", None), str):
            trace.hovertemplate = say(trace.hovertemplate)
        marker = getattr(trace, "marker", None)
        if marker is not None and getattr(marker, "colorbar", None) is not None and marker.colorbar.title.text:
            marker.colorbar.title.text = say(marker.colorbar.title.text)
    return fig
