"""Plotly figures of a run: pure functions of RunArrays, no Gradio, no I/O.

Every figure reads positions on the y axis from 0 at the top down to G-1 (the order text is
read in) and steps on the x axis, so the heatmaps and the commit-order map line up. Large runs
are downsampled by block means so a figure never carries more than max_positions x max_steps
cells; the title then says so (nothing is ever cut off).

Figures set `uirevision` so that a live update of the same run keeps the user's zoom.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from explorer.metrics import arness
from explorer.trajectory import RunArrays

FIGURE_HEIGHT = 320
TEMPLATE = "plotly_white"
STEP_AXIS = "decoding step"
POSITION_AXIS = "position in generated text"
STEP_COLORSCALE = "Viridis"  # early -> late steps; tokens_view uses the same ramp
BAR_COLOUR = "#4c78a8"
MARKER_COLOUR = "#d62728"  # the selected-step line: red reads over every colorscale used here


@dataclass(frozen=True)
class MetricSpec:
    label: str
    unit: str  # for the colorbar and the hover
    meaning: str  # one phrase, for the title
    colorscale: str
    zmin: float
    zmax: float | None  # None: the data's maximum (entropy has no fixed top without |V|)


METRICS: dict[str, MetricSpec] = {
    "confidence": MetricSpec("confidence", "probability", "p(top-1 token)", "Viridis", 0.0, 1.0),
    "entropy": MetricSpec("entropy", "nats", "entropy of the predicted token distribution", "Inferno", 0.0, None),
    "margin": MetricSpec("margin", "probability", "p(top-1) − p(top-2)", "Viridis", 0.0, 1.0),
}


# ---- arrays ------------------------------------------------------------------------------------

def masked_metric(arrays: RunArrays, metric: str) -> np.ndarray:
    """(G, S) float32: the metric of each position at each step while it was still masked
    before the step; NaN once committed (the model still scores committed positions, but
    those numbers no longer drive any decision)."""
    values = np.asarray(getattr(arrays, _spec(metric).label), dtype=np.float32)  # (G, S)
    step_index = np.arange(values.shape[1])[None, :]  # (1, S)
    commit = arrays.commit_step[:, None]  # (G, 1)
    still_masked = (commit < 0) | (step_index <= commit)  # (G, S): masked before step s
    return np.where(still_masked, values, np.float32(np.nan))


def downsample_factors(G: int, S: int, max_positions: int, max_steps: int) -> tuple[int, int]:
    """Integer block sizes (positions, steps) so that ceil(G/fg) <= max_positions etc."""
    if max_positions < 1 or max_steps < 1:
        raise ValueError("max_positions and max_steps must be >= 1")
    return max(1, math.ceil(G / max_positions)), max(1, math.ceil(S / max_steps))


def block_nanmean(z: np.ndarray, fg: int, fs: int) -> np.ndarray:
    """(ceil(G/fg), ceil(S/fs)) float32 mean of each fg x fs block, ignoring NaN; NaN where a
    block has no value. Edge blocks are partial (padded with NaN), so nothing is dropped."""
    G, S = z.shape
    rows, cols = math.ceil(G / fg), math.ceil(S / fs)
    padded = np.full((rows * fg, cols * fs), np.nan, dtype=np.float64)
    padded[:G, :S] = z
    blocks = padded.reshape(rows, fg, cols, fs)  # (G', fg, S', fs)
    present = ~np.isnan(blocks)
    counts = present.sum(axis=(1, 3))  # (G', S')
    sums = np.where(present, blocks, 0.0).sum(axis=(1, 3))  # (G', S')
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 -> NaN is the point
        return (sums / counts).astype(np.float32)


def common_zmax(metric: str, *runs: RunArrays) -> float | None:
    """One colour-scale top for several runs (compare view): the metric's fixed top if it has
    one, else the largest value still masked in any run (None if there is none)."""
    spec = _spec(metric)
    if spec.zmax is not None:
        return spec.zmax
    tops = [np.nanmax(z) for z in (masked_metric(r, metric) for r in runs) if np.isfinite(z).any()]
    return float(max(tops)) if tops else None


# ---- figures -----------------------------------------------------------------------------------

def metric_heatmap(arrays: RunArrays, metric: str, step: int | None = None, zmax: float | None = None,
                   max_positions: int = 256, max_steps: int = 256, zmin: float | None = None,
                   uirevision: str | None = None) -> go.Figure:
    """Position x step heatmap of confidence / entropy / margin while each position was masked.

    Blank cells: already committed. `zmin`/`zmax` fix the colour scale (pass the same to two
    runs to compare them; see `common_zmax`). `step` draws a vertical marker at that step.
    """
    spec = _spec(metric)
    full = masked_metric(arrays, metric)  # (G, S)
    G, S = full.shape
    fg, fs = downsample_factors(G, S, max_positions, max_steps)
    z = block_nanmean(full, fg, fs) if (fg, fs) != (1, 1) else full  # (G', S')
    # Cell centres in step / position units, so the step marker and the axes stay in real
    # units whatever the downsampling.
    x = np.arange(z.shape[1]) * fs + (fs - 1) / 2  # (S',)
    y = np.arange(z.shape[0]) * fg + (fg - 1) / 2  # (G',)
    top = zmax if zmax is not None else (spec.zmax if spec.zmax is not None else _nanmax_or(full, 1.0))
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=y, zmin=spec.zmin if zmin is None else zmin, zmax=top, colorscale=spec.colorscale,
        hoverongaps=False, colorbar=dict(title=dict(text=f"{spec.label}<br>({spec.unit})"), thickness=12),
        hovertemplate=_heatmap_hover(spec, fg, fs)))
    title = f"{spec.label.capitalize()} of each still-masked position, per step"
    notes = [f"{spec.label} = {spec.meaning}", "blank = already committed"]
    if (fg, fs) != (1, 1):
        notes.insert(0, f"downsampled for display: each cell = {_plural(fg, 'position')} x {_plural(fs, 'step')}")
    _layout(fig, title, " · ".join(notes), STEP_AXIS, POSITION_AXIS,
            uirevision or _uirevision(arrays, f"heatmap-{metric}"))
    _position_axis(fig, G)
    _step_axis(fig, S)
    _step_marker(fig, step)
    return fig


def commit_order_map(arrays: RunArrays, step: int | None = None, uirevision: str | None = None) -> go.Figure:
    """Scatter of position (y) against the step that committed it (x), coloured by step.

    A left-to-right decode is a diagonal from the top left; the title gives the AR-ness tau.
    """
    committed = np.flatnonzero(arrays.commit_step >= 0)  # (n,)
    steps = arrays.commit_step[committed]  # (n,)
    G, S = arrays.gen_length, arrays.n_steps
    tau = arness(arrays.commit_step)
    fig = go.Figure(go.Scatter(
        x=steps, y=committed, mode="markers", customdata=arrays.commit_prob[committed],
        marker=dict(color=steps, colorscale=STEP_COLORSCALE, cmin=0, cmax=max(S - 1, 1),
                    size=_marker_size(G), colorbar=dict(title=dict(text="commit<br>step"), thickness=12)),
        hovertemplate="position %{y}<br>committed at step %{x}<br>p = %{customdata:.2f} (probability)"
                      "<extra></extra>"))
    subtitle = "Kendall tau between commit order and position: +1 = strictly left to right, 0 = no order"
    if committed.size < G:  # no longer than the line above: a half-width figure clips what runs past it
        subtitle = f"Kendall tau between commit order and position: +1 = left to right · {committed.size} of {G} committed"
    _layout(fig, f"Commit order · AR-ness τ = {format_tau(tau)}", subtitle, STEP_AXIS, POSITION_AXIS,
            uirevision or _uirevision(arrays, "commit-order"))
    _position_axis(fig, G)
    _step_axis(fig, S)
    _step_marker(fig, step)
    return fig


def tokens_per_step(arrays: RunArrays, step: int | None = None, uirevision: str | None = None) -> go.Figure:
    """Bar chart: how many tokens each step committed (the selected step's bar highlighted)."""
    counts = np.asarray(arrays.n_committed, dtype=np.int64)  # (S,)
    steps = np.asarray(arrays.steps, dtype=np.int64)  # (S,)
    colours = [MARKER_COLOUR if s == step else BAR_COLOUR for s in steps.tolist()]
    fig = go.Figure(go.Bar(x=steps, y=counts, marker=dict(color=colours, line=dict(width=0)),
                           hovertemplate="step %{x}<br>%{y} tokens committed<extra></extra>"))
    subtitle = f"{int(counts.sum())} of {arrays.gen_length} positions committed in {arrays.n_steps} steps"
    _layout(fig, "Tokens committed per step", subtitle, STEP_AXIS, "tokens committed",
            uirevision or _uirevision(arrays, "tokens-per-step"))
    fig.update_layout(bargap=0.1)
    _step_axis(fig, arrays.n_steps)
    _step_marker(fig, step)
    return fig


def figure_payload_bytes(fig: go.Figure) -> int:
    """Size of the figure as sent to the browser (its JSON), for the benchmark."""
    return len(fig.to_json())


def format_tau(tau: float) -> str:
    return "n/a" if not np.isfinite(tau) else f"{tau:+.2f}"


# ---- helpers -----------------------------------------------------------------------------------

def _spec(metric: str) -> MetricSpec:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return METRICS[metric]


def _nanmax_or(z: np.ndarray, default: float) -> float:
    return float(np.nanmax(z)) if np.isfinite(z).any() else default


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _heatmap_hover(spec: MetricSpec, fg: int, fs: int) -> str:
    value = f"{spec.label} %{{z:.3f}} ({spec.unit})"
    if (fg, fs) == (1, 1):
        return f"step %{{x}}<br>position %{{y}}<br>{value}<extra></extra>"
    return (f"mean of {_plural(fg, 'position')} x {_plural(fs, 'step')}<br>centred at step %{{x:.1f}}, "
            f"position %{{y:.1f}}<br>mean {value}<extra></extra>")


def _marker_size(G: int) -> float:
    # Big enough to hover at 32 positions, small enough not to overlap at 1024 in ~300 px.
    return float(min(9, max(3, 600 / max(G, 1))))


def _uirevision(arrays: RunArrays, kind: str) -> str:
    # Stable over the live updates of one run (same id, or 'live' before it has one).
    return f"{kind}:{arrays.run.get('id', 'live')}"


def _layout(fig: go.Figure, title: str, subtitle: str, x_title: str, y_title: str, uirevision: str) -> None:
    # The subtitle goes in the title as <sup>: layout.title.subtitle needs a newer plotly.js
    # than some Gradio builds ship.
    fig.update_layout(
        template=TEMPLATE, height=FIGURE_HEIGHT, uirevision=uirevision,
        title=dict(text=f"{title}<br><sup>{subtitle}</sup>", x=0.01, xanchor="left", font=dict(size=14)),
        margin=dict(l=60, r=20, t=64, b=44), xaxis_title=x_title, yaxis_title=y_title, showlegend=False)


def _position_axis(fig: go.Figure, G: int) -> None:
    # Position 0 at the top, as text is read.
    fig.update_yaxes(range=[G - 0.5, -0.5], autorange=False, zeroline=False)


def _step_axis(fig: go.Figure, S: int) -> None:
    fig.update_xaxes(range=[-0.5, max(S, 1) - 0.5], zeroline=False)


def _step_marker(fig: go.Figure, step: int | None) -> None:
    if step is None:
        return
    fig.add_vline(x=step, line=dict(color=MARKER_COLOUR, width=2, dash="dot"), name="selected step",
                  annotation=dict(text=f"step {step}", font=dict(color=MARKER_COLOUR, size=11)),
                  annotation_position="top")
