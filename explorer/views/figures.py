"""Plotly figures of a run: pure functions of RunArrays, no Gradio, no I/O.

Every figure reads positions on the y axis from 0 at the top down to G-1 (the order text is
read in) and steps on the x axis, so the heatmaps and the commit-order map line up. Large runs
are downsampled by block means so a figure never carries more than max_positions x max_steps
cells; the title then says so (nothing is ever cut off).

Figures set `uirevision` so that a live update of the same run keeps the user's zoom.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from explorer.store.arrays import RunArrays
from explorer.views.changes import (
    CHANGE_KINDS,
    EDIT,
    KIND_BY_CODE,
    REVISE,
    block_max,
    change_counts,
    change_grid,
    change_texts,
    revision_history,
)
from explorer.views.metrics import arness

FIGURE_HEIGHT = 320
TEMPLATE = "plotly_white"
STEP_AXIS = "decoding step"
POSITION_AXIS = "position in generated text"
STEP_COLORSCALE = "Viridis"  # early -> late steps; views/tokens.py uses the same ramp
BAR_COLOUR = "#4c78a8"
SUBTITLE_PX = 11
TITLE_COLOUR = "#2a3f5f"  # plotly_white's title colour, set explicitly so template-less figures match
MARKER_COLOUR = "#d62728"  # the selected-step line: red reads over every colorscale used here
REMASK_COLOUR = "#e8590c"  # re-masks, as the ↺ badge of static/tokens.css
BLANK_COLOUR = "#e9ecef"  # behind empty cells of the diverging maps, where white means 0
# Negative red, 0 white, positive blue (ColorBrewer RdBu with a pure white middle).
DIVERGING = [
    [0.0, "#67001f"],
    [0.15, "#b2182b"],
    [0.3, "#ef8a62"],
    [0.42, "#fddbc7"],
    [0.5, "#ffffff"],
    [0.58, "#d1e5f0"],
    [0.7, "#67a9cf"],
    [0.85, "#2166ac"],
    [1.0, "#053061"],
]
NATS_FLOOR = 1.0  # the diverging scales reach at least +-1 nat
DIVERGING_REVERSED = [[1.0 - at, colour] for at, colour in reversed(DIVERGING)]  # positive red


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
    before the step; NaN while committed (the model still scores committed positions, but
    those numbers no longer drive any decision)."""
    values = np.asarray(getattr(arrays, _spec(metric).label), dtype=np.float32)  # (G, S)
    return np.where(masked_before(arrays), values, np.float32(np.nan))


def masked_before(arrays: RunArrays) -> np.ndarray:
    """(G, S) bool: each position was masked before each step (replayed from `arrays.tokens`, so
    a token a remasking strategy took away counts as masked again)."""
    G, S = arrays.tokens.shape
    after = arrays.tokens == int(arrays.run["mask_id"])  # (G, S): masked after each step
    return np.concatenate([np.ones((G, min(S, 1)), dtype=bool), after[:, :-1]], axis=1)


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


@dataclass(frozen=True)
class Grid:
    """A (G, S) map as drawn: block means when downsampled, cell centres in real units."""

    z: np.ndarray  # (G', S')
    x: np.ndarray  # (S',) step of each column's centre
    y: np.ndarray  # (G',) position of each row's centre
    fg: int  # positions per cell
    fs: int  # steps per cell

    @classmethod
    def of(cls, full: np.ndarray, max_positions: int, max_steps: int) -> Grid:
        G, S = full.shape
        fg, fs = downsample_factors(G, S, max_positions, max_steps)
        z = block_nanmean(full, fg, fs) if (fg, fs) != (1, 1) else full
        return cls(z, np.arange(z.shape[1]) * fs + (fs - 1) / 2, np.arange(z.shape[0]) * fg + (fg - 1) / 2, fg, fs)

    def notes(self) -> list[str]:
        """The downsampling note for the subtitle (empty at full resolution)."""
        if (self.fg, self.fs) == (1, 1):
            return []
        return [f"downsampled for display: each cell = {_plural(self.fg, 'position')} x {_plural(self.fs, 'step')}"]


def common_zmax(metric: str, *runs: RunArrays) -> float | None:
    """One colour-scale top for several runs (compare view): the metric's fixed top if it has
    one, else the largest value still masked in any run (None if there is none)."""
    spec = _spec(metric)
    if spec.zmax is not None:
        return spec.zmax
    tops = [np.nanmax(z) for z in (masked_metric(r, metric) for r in runs) if np.isfinite(z).any()]
    return float(max(tops)) if tops else None


# ---- figures -----------------------------------------------------------------------------------


def metric_heatmap(
    arrays: RunArrays,
    metric: str,
    step: int | None = None,
    zmax: float | None = None,
    max_positions: int = 256,
    max_steps: int = 256,
    zmin: float | None = None,
    uirevision: str | None = None,
) -> go.Figure:
    """Position x step heatmap of confidence / entropy / margin while each position was masked.

    Blank cells: already committed. `zmin`/`zmax` fix the colour scale (pass the same to two
    runs to compare them; see `common_zmax`). `step` draws a vertical marker at that step.
    """
    spec = _spec(metric)
    full = masked_metric(arrays, metric)  # (G, S)
    grid = Grid.of(full, max_positions, max_steps)
    top = zmax if zmax is not None else (spec.zmax if spec.zmax is not None else _nanmax_or(full, 1.0))
    fig = go.Figure(
        go.Heatmap(
            z=grid.z,
            x=grid.x,
            y=grid.y,
            zmin=spec.zmin if zmin is None else zmin,
            zmax=top,
            colorscale=spec.colorscale,
            hoverongaps=False,
            colorbar=dict(title=dict(text=f"{spec.label}<br>({spec.unit})"), thickness=12),
            hovertemplate=_heatmap_hover(spec.label, spec.unit, grid.fg, grid.fs),
        )
    )
    title = f"{spec.label.capitalize()} of each still-masked position, per step"
    notes = grid.notes() + [f"{spec.label} = {spec.meaning}", "blank = already committed"]
    apply_layout(
        fig, title, " · ".join(notes), STEP_AXIS, POSITION_AXIS, uirevision or _uirevision(arrays, f"heatmap-{metric}")
    )
    _position_axis(fig, full.shape[0])
    _step_axis(fig, full.shape[1])
    _step_marker(fig, step)
    return fig


def commit_order_map(arrays: RunArrays, step: int | None = None, uirevision: str | None = None) -> go.Figure:
    """Scatter of position (y) against the step that last changed it (x), coloured by that step.

    The step is `arrays.commit_step`: the position's commit, or for a token-changing strategy
    (XDLM) its last revision; revised positions get a purple ring and their count in the hover.
    A left-to-right decode is a diagonal from the top left; the title gives the AR-ness tau (of
    the same last-change steps).
    """
    committed = np.flatnonzero(arrays.commit_step >= 0)  # (n,)
    steps = arrays.commit_step[committed]  # (n,)
    G, S = arrays.gen_length, arrays.n_steps
    tau = arness(arrays.commit_step)
    n_revised = revision_counts(arrays)[committed]  # (n,)
    revised = bool(n_revised.any())
    fig = go.Figure(
        go.Scatter(
            x=steps,
            y=committed,
            mode="markers",
            customdata=np.stack([arrays.commit_prob[committed], n_revised], axis=1),
            marker=dict(
                color=steps,
                colorscale=STEP_COLORSCALE,
                cmin=0,
                cmax=max(S - 1, 1),
                size=_marker_size(G),
                line=dict(color=np.where(n_revised > 0, REVISE.colour, "rgba(0,0,0,0)"), width=2 if revised else 0),
                colorbar=dict(title=dict(text="last change<br>step" if revised else "commit<br>step"), thickness=12),
            ),
            hovertemplate=_order_hover(revised),
        )
    )
    apply_layout(
        fig,
        f"Commit order{' (last change)' if revised else ''} · AR-ness τ = {format_tau(tau)}",
        _order_subtitle(committed.size, G, revised),
        STEP_AXIS,
        POSITION_AXIS,
        uirevision or _uirevision(arrays, "commit-order"),
    )
    _position_axis(fig, G)
    _step_axis(fig, S)
    _step_marker(fig, step)
    return fig


def revision_counts(arrays: RunArrays) -> np.ndarray:
    """(G,) int: how often each position was revised (a visible token changed into another)."""
    counts = np.zeros(arrays.gen_length, dtype=np.int64)
    for position, changes in revision_history(arrays).items():
        if 0 <= position < counts.size:
            counts[position] = len(changes)
    return counts


def _order_hover(revised: bool) -> str:
    if not revised:
        return "position %{y}<br>committed at step %{x}<br>p = %{customdata[0]:.2f} (probability)<extra></extra>"
    return (
        "position %{y}<br>last changed at step %{x} (its commit or its last revision)<br>"
        "p = %{customdata[0]:.2f} (probability of the token standing there)<br>"
        "revised %{customdata[1]}×<extra></extra>"
    )


def _order_subtitle(n_committed: int, G: int, revised: bool) -> str:
    """Lines no longer than a half-width figure shows (it clips what runs past them)."""
    if revised:
        head = "x = each position's last change: its commit or last revision (ringed)"
        tail = "<br>τ = Kendall tau between that step and position: +1 = left to right"
    else:
        head, tail = "Kendall tau between commit order and position: +1 = strictly left to right, 0 = no order", ""
        if n_committed < G:
            head = "Kendall tau between commit order and position: +1 = left to right"
    if n_committed < G:
        tail += f" · {n_committed} of {G} committed"
    return head + tail


def tokens_per_step(arrays: RunArrays, step: int | None = None, uirevision: str | None = None) -> go.Figure:
    """Bar chart: how many tokens each step committed (the selected step's bar highlighted); with
    a token-changing strategy (XDLM) the revisions stacked on top in purple; with a remasking
    strategy also how many it re-masked, as orange bars below zero."""
    counts = np.asarray(arrays.n_committed, dtype=np.int64)  # (S,) commits, revisions included
    steps = np.asarray(arrays.steps, dtype=np.int64)  # (S,)
    revised = _per_step(steps, arrays.commits.step[arrays.commits.revised])  # (S,)
    colours = [MARKER_COLOUR if s == step else BAR_COLOUR for s in steps.tolist()]
    fig = go.Figure(
        go.Bar(
            x=steps,
            y=counts - revised,
            marker=dict(color=colours, line=dict(width=0)),
            name="committed",
            hovertemplate="step %{x}<br>%{y} tokens committed<extra></extra>",
        )
    )
    shown = int((arrays.tokens[:, -1] != int(arrays.run["mask_id"])).sum()) if arrays.n_steps else 0
    subtitle = f"{shown} of {arrays.gen_length} positions committed in {arrays.n_steps} steps"
    y_title = "tokens committed"
    if revised.any():
        fig.add_trace(
            go.Bar(
                x=steps,
                y=revised,
                marker=dict(color=REVISE.colour, line=dict(width=0)),
                name="revised",
                hovertemplate="step %{x}<br>%{y} tokens revised (changed into another)<extra></extra>",
            )
        )
        subtitle = f"{int(revised.sum())} revisions (purple, on top) · " + subtitle
    if arrays.remasks.step.size:
        remasked = _per_step(steps, arrays.remasks.step)  # (S,)
        fig.add_trace(
            go.Bar(
                x=steps,
                y=-remasked,
                customdata=remasked,
                marker=dict(color=REMASK_COLOUR, line=dict(width=0)),
                name="re-masked",
                hovertemplate="step %{x}<br>%{customdata} tokens re-masked<extra></extra>",
            )
        )
        subtitle = f"{int(counts.sum())} commits, {int(remasked.sum())} re-masked (orange, below 0) · " + subtitle
        y_title = "tokens (re-masked below 0)"
    apply_layout(
        fig,
        "Tokens committed per step",
        subtitle.replace(" · ", "<br>", 1) if revised.any() and arrays.remasks.step.size else subtitle,
        STEP_AXIS,
        y_title,
        uirevision or _uirevision(arrays, "tokens-per-step"),
    )
    fig.update_layout(bargap=0.1, barmode="relative")
    if counts.size and int(counts.max(initial=0)) + int(arrays.remask_count.sum()) <= 8:
        fig.update_yaxes(dtick=1)  # whole tokens: no 0.5 ticks on a short axis
    _step_axis(fig, arrays.n_steps)
    _step_marker(fig, step)
    return fig


def _per_step(steps: np.ndarray, events: np.ndarray) -> np.ndarray:
    """(S,) how many of `events` (their steps) fall on each of `steps`."""
    if steps.size == 0:
        return np.zeros(0, dtype=np.int64)
    events = np.asarray(events, dtype=np.int64)
    columns = np.searchsorted(steps, events)
    known = (columns < steps.size) & (steps[np.minimum(columns, steps.size - 1)] == events)
    return np.bincount(columns[known], minlength=steps.size)[: steps.size].astype(np.int64)


def changes_map(
    arrays: RunArrays,
    step: int | None = None,
    token_text=None,
    max_positions: int = 256,
    max_steps: int = 256,
    uirevision: str | None = None,
) -> go.Figure:
    """Position x step map of what changed: one colour per event (unmask, revise, re-mask, a
    branch's edit), blank where nothing did, with a legend. Hover: the event, with the tokens
    (`token_text`: id -> text; default '#id') and their probabilities. Downsampled blocks show
    their most telling event (revise over re-mask over edit over unmask), and the title says so."""
    token_text = token_text or (lambda t: f"#{int(t)}")
    full = change_grid(arrays)  # (G, S) codes
    G, S = full.shape
    fg, fs = downsample_factors(G, S, max_positions, max_steps)
    z = block_max(full, fg, fs) if (fg, fs) != (1, 1) else full
    x, y = np.arange(z.shape[1]) * fs + (fs - 1) / 2, np.arange(z.shape[0]) * fg + (fg - 1) / 2
    n = len(CHANGE_KINDS)
    fig = go.Figure(
        go.Heatmap(
            z=np.where(z > 0, z, np.nan).astype(np.float32),  # float32: half the payload of float64
            x=x,
            y=y,
            zmin=0.5,
            zmax=n + 0.5,
            colorscale=_categorical_scale(),
            showscale=False,
            xgap=1,  # a thin white line between steps: the cells of one position read as separate events
            hoverongaps=False,
            customdata=_change_hover_text(arrays, full, z, (fg, fs), token_text),
            hovertemplate=_change_hover(fg, fs),
        )
    )
    counts = change_counts(full)
    for kind in CHANGE_KINDS:  # legend entries only (no data): a heatmap has no legend of its own
        if counts[kind] or kind is not EDIT:  # the edits only where a branch has them
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name=f"{kind.name} ({counts[kind]})",
                    marker=dict(symbol="square", size=12, color=kind.colour),
                    hoverinfo="skip",
                )
            )
    lines = ["one colour per event · blank = nothing changed · hover a cell for the tokens"]
    if (fg, fs) != (1, 1):
        block = f"{_plural(fg, 'position')} x {_plural(fs, 'step')}"
        lines.insert(0, f"downsampled for display: each cell = the most telling change of {block}")
    apply_layout(
        fig,
        "What changed where: unmask, revise, re-mask",
        "<br>".join(lines),
        STEP_AXIS,
        POSITION_AXIS,
        uirevision or _uirevision(arrays, "changes"),
    )
    fig.update_layout(
        showlegend=True,
        legend=dict(title=dict(text="event (count)"), x=1.01, xanchor="left", y=1, yanchor="top"),
        margin=dict(r=150),
    )
    _grid_axes(fig, (G, S), step)
    fig.update_layout(plot_bgcolor="#ffffff")
    return fig


def _categorical_scale() -> list:
    """A stepped colorscale: code c (1..n) -> its kind's colour, on zmin 0.5, zmax n + 0.5."""
    n, scale = len(CHANGE_KINDS), []
    for code in range(1, n + 1):
        colour = KIND_BY_CODE[code].colour
        scale += [[(code - 1) / n, colour], [code / n, colour]]
    return scale


def _change_hover_text(arrays: RunArrays, full: np.ndarray, z: np.ndarray, factors: tuple[int, int], token_text):
    """(G', S') hover text: what happened in the cell (full resolution), or the block's shown kind."""
    if factors == (1, 1):
        texts = change_texts(arrays, full, token_text)
        return np.vectorize(plotly_text, otypes=[object])(texts) if texts.size else texts
    return np.vectorize(lambda c: KIND_BY_CODE[int(c)].name if c else "", otypes=[object])(z)


def _change_hover(fg: int, fs: int) -> str:
    if (fg, fs) == (1, 1):
        return "step %{x} · position %{y}<br>%{customdata}<extra></extra>"
    return (
        f"{_plural(fg, 'position')} x {_plural(fs, 'step')} centred at step %{{x:.1f}}, position %{{y:.1f}}"
        "<br>most telling change: %{customdata}<extra></extra>"
    )


def violation_heatmap(
    arrays: RunArrays,
    step: int | None = None,
    max_positions: int = 256,
    max_steps: int = 256,
    uirevision: str | None = None,
    bound: float | None = None,
) -> go.Figure:
    """Position x step map of each token's violation score at the step that committed it: its
    most negative S_ij with the tokens committed in the same step (nats; negative = contradiction).
    `bound`: the colour scale's +-limit (pass the same to two runs to compare them)."""
    return _nats_heatmap(
        arrays,
        arrays.violation,
        "Dependency violations: each token vs the tokens committed with it",
        uirevision or _uirevision(arrays, "violations"),
        _violations_missing,
        DIVERGING,
        "min S<sub>ij</sub><br>(nats)",
        "most negative S_ij",
        [
            "most negative S_ij in nats, at the step that committed the token",
            "<br>red (negative) = contradicts a token committed in the same step · blue = agrees · grey = no value",
        ],
        step,
        max_positions,
        max_steps,
        bound,
    )


def energy_heatmap(
    arrays: RunArrays,
    step: int | None = None,
    max_positions: int = 256,
    max_steps: int = 256,
    uirevision: str | None = None,
    bound: float | None = None,
) -> go.Figure:
    """Position x step map of the kept candidate's energy at the positions its step committed (nats).
    `bound`: the colour scale's +-limit (pass the same to two runs to compare them)."""
    notes = ["nats · red = disfavoured by the energy, blue = favoured", "grey = no value"]
    undecomposed = non_decomposable_terms(arrays.run.get("config") or {})
    if undecomposed:
        notes.append(f"<br>not shown per position: {undecomposed} (see the candidates figure)")
    return _nats_heatmap(
        arrays,
        arrays.energy,
        "Energy of the kept candidate at the positions it committed",
        uirevision or _uirevision(arrays, "energy"),
        _energies_missing,
        DIVERGING_REVERSED,
        "energy<br>(nats)",
        "energy",
        notes,
        step,
        max_positions,
        max_steps,
        bound,
    )


def _nats_heatmap(
    arrays: RunArrays,
    values: np.ndarray,
    title: str,
    revision: str,
    missing,
    colorscale,
    colour_title: str,
    hover_name: str,
    notes: list[str],
    step: int | None,
    max_positions: int,
    max_steps: int,
    bound: float | None,
) -> go.Figure:
    """A (position x step) map in nats on a symmetric diverging scale, or an empty state saying why."""
    full = np.asarray(values, dtype=np.float32)  # (G, S)
    if not np.isfinite(full).any():
        return empty_figure(title, missing(arrays), revision)
    grid = Grid.of(full, max_positions, max_steps)
    bound = bound or symmetric_bound(full)
    fig = go.Figure(
        go.Heatmap(
            z=grid.z,
            x=grid.x,
            y=grid.y,
            zmin=-bound,
            zmax=bound,
            zmid=0.0,
            colorscale=colorscale,
            hoverongaps=False,
            colorbar=dict(title=dict(text=colour_title), thickness=12),
            hovertemplate=_heatmap_hover(hover_name, "nats", grid.fg, grid.fs),
        )
    )
    apply_layout(
        fig, title, " · ".join(grid.notes() + notes).replace(" · <br>", "<br>"), STEP_AXIS, POSITION_AXIS, revision
    )
    _grid_axes(fig, full.shape, step)
    return fig


def common_bound(name: str, *runs: RunArrays) -> float:
    """One +-limit for the violation or energy maps of several runs (compare view)."""
    maps = [np.asarray(getattr(r, name), dtype=np.float32) for r in runs]
    return max(symmetric_bound(z) for z in maps) if maps else NATS_FLOOR


def energy_terms_text(config: dict, empty: str, escape: bool = True) -> str:
    """'uni × 1, ar × 0.5' from a run's config; names escaped for Plotly / HTML unless the caller
    escapes the whole text itself (imported bundles may hold any text)."""
    terms = []
    for item in config.get("energies") or ():
        try:
            name, weight = item
            terms.append(f"{html.escape(str(name)) if escape else name} × {float(weight):g}")
        except (TypeError, ValueError):
            terms.append("?")
    return ", ".join(terms) or empty


def non_decomposable_terms(config: dict) -> str:
    """The energy terms of a run that the per-position map omits or shows only in part: inv,
    the order part of a multi-order uni, and ar outside the committed positions."""
    terms = [str(name) for name, _ in config.get("energies") or ()]
    orders = int(config.get("energy_orders") or 1)
    out = ["ar at the positions not committed that step"] if "ar" in terms else []
    out += ["inv"] if "inv" in terms else []
    if "uni" in terms and orders > 1:
        out.append(f"the order part of uni ({orders} orders)")
    return " and ".join(out)


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


def _heatmap_hover(label: str, unit: str, fg: int, fs: int) -> str:
    value = f"{label} %{{z:.3f}} ({unit})"
    if (fg, fs) == (1, 1):
        return f"step %{{x}}<br>position %{{y}}<br>{value}<extra></extra>"
    return (
        f"mean of {_plural(fg, 'position')} x {_plural(fs, 'step')}<br>centred at step %{{x:.1f}}, "
        f"position %{{y:.1f}}<br>mean {value}<extra></extra>"
    )


def symmetric_bound(z: np.ndarray, floor: float = NATS_FLOOR) -> float:
    """max |z| (at least `floor`): a colour scale symmetric around 0, so 0 is always white and
    a difference far below `floor` nats stays pale instead of filling the scale."""
    return max(floor, float(np.nanmax(np.abs(z)))) if np.isfinite(z).any() else floor


def _grid_axes(fig: go.Figure, shape: tuple[int, int], step: int | None) -> None:
    """Position and step axes of a (G, S) map, grey behind empty cells, the step marker."""
    fig.update_layout(plot_bgcolor=BLANK_COLOUR)
    fig.update_xaxes(showgrid=False)
    fig.update_yaxes(showgrid=False)
    _position_axis(fig, shape[0])
    _step_axis(fig, shape[1])
    _step_marker(fig, step)


# Empty states, in lines short enough for a half-width figure.
VIOLATIONS_OFF = (
    "Dependency violations were off for this run.<br>Tick 'Dependency violations' (left)<br>"
    "and Run again to measure them."
)
SINGLE_TOKEN_STEPS = (
    "Every step so far committed a single token:<br>there is no pair of tokens to check.<br>"
    "Commit several tokens per step to see them."
)
ENERGIES_OFF = "Energies were off for this run.<br>Tick terms in 'Energies' (left) and Run again."


def _violations_missing(arrays: RunArrays) -> str:
    """Why a run has no violation scores: off, no step yet, or no step committed 2 or more tokens."""
    on = (arrays.run.get("config") or {}).get("violations")
    if on is False:
        return VIOLATIONS_OFF
    if arrays.n_steps == 0:
        return "No step yet."
    return SINGLE_TOKEN_STEPS + ("" if on else "<br>(or violations were off for this run)")


def _energies_missing(arrays: RunArrays) -> str:
    config = arrays.run.get("config") or {}
    if not config.get("energies"):
        return ENERGIES_OFF
    low, high = config.get("energy_window") or (0.0, 1.0)
    if arrays.n_steps == 0:
        return "No step yet."
    return (
        f"Energies did not run in any step so far:<br>they run only while the masked fraction t<br>"
        f"is inside the window [{low:g}, {high:g}]."
    )


def _marker_size(G: int) -> float:
    # Big enough to hover at 32 positions, small enough not to overlap at 1024 in ~300 px.
    return float(min(9, max(3, 600 / max(G, 1))))


def _uirevision(arrays: RunArrays, kind: str) -> str:
    # Stable over the live updates of one run (same id, or 'live' before it has one).
    return f"{kind}:{arrays.run.get('id', 'live')}"


def apply_layout(
    fig: go.Figure, title: str, subtitle: str, x_title: str, y_title: str, uirevision: str, template: str = TEMPLATE
) -> None:
    """The look every figure shares. `subtitle` may hold several lines joined by '<br>'.
    Text from the model (tokens) must already be escaped (`plotly_text`)."""
    # The subtitle goes in the title as 11 px lines: layout.title.subtitle needs a newer plotly.js
    # than some Gradio builds ship, and <sup> would shrink it to ~10 px, too small on a phone.
    lines = subtitle.split("<br>")
    sup = "<br>".join(f'<span style="font-size:{SUBTITLE_PX}px">{line}</span>' for line in lines)
    fig.update_layout(
        template=template,
        height=FIGURE_HEIGHT + 14 * (len(lines) - 1),
        uirevision=uirevision,
        title=dict(text=f"{title}<br>{sup}", x=0.01, xanchor="left", font=dict(size=14, color=TITLE_COLOUR)),
        margin=dict(l=60, r=20, t=64 + 14 * (len(lines) - 1), b=44),
        xaxis_title=x_title,
        yaxis_title=y_title,
        showlegend=False,
        # The toolbar stands on the right edge, top to bottom, clear of the title and its subtitle.
        modebar=dict(orientation="v", bgcolor="rgba(255,255,255,0.7)"),
    )


def empty_figure(title: str, message: str, uirevision: str) -> go.Figure:
    """A figure that says why there is nothing to draw (message in the middle, no axes)."""
    fig = go.Figure()
    # No axes, so no template: plotly_white would add ~6 KB and ~10 ms to a figure that only talks.
    # The full height: a Gradio plot that grows a lot at once (an empty state replaced by a
    # figure) makes plotly.js fail with "Something went wrong with axis scaling".
    apply_layout(fig, title, "", "", "", uirevision, template="none")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.add_annotation(
        text=message,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        showarrow=False,
        font=dict(size=13, color="#555555"),
        align="center",
    )
    return fig


def plotly_text(text: str) -> str:
    """Model or user text for a Plotly label, hover or tick: Plotly reads tags such as <b>, <br>
    and <a> in any text it draws, so &, < and > are escaped (Plotly shows the entities as the
    characters). Quotes stay: Plotly has no attribute context outside a tag, and it would show
    &quot; literally."""
    return html.escape(str(text), quote=False)


def _position_axis(fig: go.Figure, G: int) -> None:
    # Position 0 at the top, as text is read.
    fig.update_yaxes(range=[G - 0.5, -0.5], autorange=False, zeroline=False)


INTEGER_TICKS_UP_TO = 20  # steps; a run with fewer gets a tick at every step (no "2.5")


def _step_axis(fig: go.Figure, S: int) -> None:
    fig.update_xaxes(range=[-0.5, max(S, 1) - 0.5], zeroline=False)
    if S <= INTEGER_TICKS_UP_TO:
        fig.update_xaxes(tickmode="linear", tick0=0, dtick=1)
    else:
        fig.update_xaxes(tickformat="d")


STEP_MARKER = "selected step"  # the name of the marker's line and label: the page's player moves them


def _step_marker(fig: go.Figure, step: int | None) -> None:
    if step is None:
        return
    fig.add_vline(
        x=step,
        line=dict(color=MARKER_COLOUR, width=2, dash="dot"),
        name=STEP_MARKER,
        annotation=dict(text=f"step {step}", font=dict(color=MARKER_COLOUR, size=11), name=STEP_MARKER),
        annotation_position="top",
    )


def live_heatmap(gen_length: int, metric: str, key: str) -> go.Figure:
    """The metric heatmap of a run that is decoding, with no step yet: the page appends each new
    step's column to it (static/components/player.js), so a live frame never redraws it here.
    Stored column-wise (`transpose`): z[step][position]."""
    spec = _spec(metric)
    fig = go.Figure(
        go.Heatmap(
            z=[],
            x=[],
            y=list(range(gen_length)),
            transpose=True,
            zmin=spec.zmin,
            zmax=spec.zmax,
            zauto=spec.zmax is None,
            colorscale=spec.colorscale,
            hoverongaps=False,
            meta="live-heatmap",
            colorbar=dict(title=dict(text=f"{spec.label}<br>({spec.unit})"), thickness=12),
            hovertemplate=_heatmap_hover(spec.label, spec.unit, 1, 1),
        )
    )
    title = f"{spec.label.capitalize()} of each still-masked position, per step (live)"
    apply_layout(
        fig, title, f"{spec.label} = {spec.meaning} · blank = already committed", STEP_AXIS, POSITION_AXIS, key
    )
    _position_axis(fig, gen_length)
    fig.update_xaxes(range=[-0.5, 1.5], zeroline=False)
    return fig
