"""Figures of one step: the pairwise dependency matrices (S, A) of the tokens it committed
together, and the energies of its candidates. Pure functions of RunArrays, no Gradio, no I/O.

Token strings come from the model (`token_text`) and are escaped with `plots.plotly_text`
before they reach a tick label or a hover: Plotly reads tags such as <b> or <a> in any text.
When no step is selected (the end of a run) the figures show `focus_step`, and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from explorer.decoding.records import StepExtras
from explorer.decoding.violations import ViolationRecord
from explorer.store.arrays import RunArrays
from explorer.views.figures import (
    BAR_COLOUR,
    BLANK_COLOUR,
    DIVERGING,
    ENERGIES_OFF,
    MARKER_COLOUR,
    SINGLE_TOKEN_STEPS,
    VIOLATIONS_OFF,
    apply_layout,
    empty_figure,
    energy_terms_text,
    plotly_text,
    symmetric_bound,
)

# Purple (negative) - white - green (positive): A's sign is a direction, not good or bad.
PURPLE_GREEN = [
    [0.0, "#40004b"],
    [0.2, "#9970ab"],
    [0.4, "#e7d4e8"],
    [0.5, "#ffffff"],
    [0.6, "#d9f0d3"],
    [0.8, "#5aae61"],
    [1.0, "#00441b"],
]
FLIP_SYMBOL = "x-thin-open"


@dataclass(frozen=True)
class MatrixSpec:
    key: str  # the ViolationRecord field: "S" or "A"
    question: str  # the title, after "Step s:"
    lines: tuple[str, ...]  # the subtitle
    colorscale: list
    colourbar: str


MATRICES: dict[str, MatrixSpec] = {
    "S": MatrixSpec(
        "S",
        "S: do the tokens committed together agree?",
        ("S_ij = (D_ij + D_ji) / 2 in nats · red = contradict · blue = agree · ✕ = flip",),
        DIVERGING,
        "S<sub>ij</sub><br>(nats)",
    ),
    "A": MatrixSpec(
        "A",
        "A: does the order of revealing matter?",
        ("A_ij = D_ij − D_ji in nats · 0 = consistent · ✕ = flip",),
        PURPLE_GREEN,
        "A<sub>ij</sub><br>(nats)",
    ),
}

# How to read the two matrices (shown beside the figures by the UI).
READING_GUIDE = """**Reading the pairwise matrices** (the step picked with the step slider; rows and columns
are the tokens that step committed together, as *position word*):
- **Dᵢⱼ** = log p(token j | token i revealed) − log p(token j): how knowing token i changes the model's
  belief in token j (nats).
- **Sᵢⱼ** = (Dᵢⱼ + Dⱼᵢ) / 2: strongly **negative (red) = the two tokens contradict each other**, as in
  *an girl*; positive (blue) = they support each other.
- **Aᵢⱼ** = Dᵢⱼ − Dⱼᵢ: 0 for a consistent model; a large size means the model's joint depends on which
  token is revealed first.
- **✕ flip**: revealing the row token would have changed the model's choice at the column.
- Grey diagonal: a token with itself. The colours reach at least ±1 nat, so a pale cell is a small effect.
  Hover a cell for every number."""


def focus_step(arrays: RunArrays) -> int | None:
    """The step to show when none is selected: the most negative violation total of the run,
    else the last step whose energies ran, else the last step (None without steps)."""
    scored = [(e.violations.total, i) for i, e in enumerate(arrays.extras) if e.violations is not None]
    if scored:
        return int(arrays.steps[min(scored)[1]])
    with_energy = [i for i, e in enumerate(arrays.extras) if e.energy_ran is not None]
    if with_energy:
        return int(arrays.steps[with_energy[-1]])
    return int(arrays.steps[-1]) if arrays.n_steps else None


def pairwise_matrix(
    arrays: RunArrays, step: int | None, which: str, token_text: Callable[[int], str], uirevision: str | None = None
) -> go.Figure:
    """The n x n matrix `which` ('S' or 'A') of the tokens committed at `step` (None: `focus_step`),
    the committed tokens (position and text) on both axes, flips marked with ✕."""
    spec = MATRICES[which]
    chosen, auto = _resolve(arrays, step)
    revision = uirevision or f"pairwise-{which}:{arrays.run.get('id', 'live')}"
    title = f"Step {chosen} · {spec.question}" if chosen is not None else f"Pairwise {which} matrix of a step"
    extras = _step_extras(arrays, chosen)
    data = extras.violations if extras is not None else None
    if data is None or len(data.positions) < 2:
        return empty_figure(title, _pairwise_missing(arrays, chosen), revision)
    labels = [plotly_text(f"{p} {token_text(int(t))}") for p, t in zip(data.positions, data.tokens)]
    z = np.array(getattr(data, spec.key), dtype=np.float64)  # (n, n), a copy
    np.fill_diagonal(z, np.nan)
    bound = symmetric_bound(z)
    n = len(labels)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n)),
            y=list(range(n)),
            zmin=-bound,
            zmax=bound,
            zmid=0.0,
            colorscale=spec.colorscale,
            hoverongaps=False,
            customdata=_cell_hover(data, labels),
            colorbar=dict(title=dict(text=spec.colourbar), thickness=12),
            name=which,
            showlegend=False,
            hovertemplate=(
                "row (revealed): %{customdata[0]}<br>column: %{customdata[1]}<br>"
                "D_ij %{customdata[2]:+.3f} · D_ji %{customdata[3]:+.3f} nats<br>"
                "S_ij %{customdata[4]:+.3f} · A_ij %{customdata[5]:+.3f} nats<br>"
                "%{customdata[6]}<extra></extra>"
            ),
        )
    )
    _flip_marks(fig, data.flip)
    lines = list(spec.lines) + _pairwise_notes(data, auto)
    apply_layout(fig, title, "<br>".join(lines), "token j", "token i (revealed)", revision)
    ticks = dict(tickmode="array", tickvals=list(range(n)), ticktext=labels, showgrid=False, zeroline=False)
    fig.update_xaxes(**ticks, tickangle=-45, range=[-0.5, n - 0.5])
    fig.update_yaxes(**ticks, range=[n - 0.5, -0.5], autorange=False)
    fig.update_layout(plot_bgcolor=BLANK_COLOUR, margin=dict(l=100, b=80))
    return fig


def candidate_energies(arrays: RunArrays, step: int | None, uirevision: str | None = None) -> go.Figure:
    """Bars: the total energy of each of the step's k candidates, the kept one highlighted; the
    hover lists every term and the keep probability softmax(-E / tau)."""
    chosen, auto = _resolve(arrays, step)
    revision = uirevision or f"candidates:{arrays.run.get('id', 'live')}"
    title = (
        f"Step {chosen}: energy of each candidate (nats)" if chosen is not None else "Energies of a step's candidates"
    )
    extras = _step_extras(arrays, chosen)
    data = extras.energy_ran if extras is not None else None
    if data is None:
        return empty_figure(title, _candidates_missing(arrays, chosen), revision)
    total = np.array(data.total, dtype=np.float64)  # (k,)
    keep = np.array(data.keep_probs, dtype=np.float64)  # (k,)
    kept = data.chosen
    k = total.size
    terms = data.terms
    hover = [
        [plotly_text(" · ".join(f"{name} {values[j]:+.3f}" for name, values in terms.items())), keep[j]]
        for j in range(k)
    ]
    fig = go.Figure()
    for label, members, colour in (
        ("not kept", [j for j in range(k) if j != kept], BAR_COLOUR),
        ("kept", [kept], MARKER_COLOUR),
    ):
        fig.add_trace(
            go.Bar(
                x=[j + 1 for j in members],
                y=total[members],
                name=label,
                marker=dict(color=colour),
                text=[f"p={keep[j]:.2f}" for j in members],
                textposition="outside",
                constraintext="none",
                textfont=dict(size=11),
                cliponaxis=False,
                customdata=[hover[j] for j in members],
                hovertemplate=(
                    "candidate %{x}<br>energy E = %{y:+.3f} nats<br>%{customdata[0]}<br>"
                    "kept with probability %{customdata[1]:.3f}<extra>" + label + "</extra>"
                ),
            )
        )
    lines = [
        f"{k} candidates drawn from the marginals; each kept with p = softmax(−E/τ)",
        "lower E = more likely kept · terms: " + _weights_text(arrays),
    ]
    if auto:
        lines.append("no step picked: the step the matrices show; the step slider picks another")
    apply_layout(fig, title, "<br>".join(lines), "candidate (red = the one kept)", "energy E (nats)", revision)
    low, high = min(0.0, float(total.min())), max(0.0, float(total.max()))
    pad = 0.2 * max(high - low, 1e-3)
    fig.update_xaxes(tickmode="array", tickvals=list(range(1, k + 1)), range=[0.4, k + 0.6])
    fig.update_yaxes(range=[low - pad, high + pad])
    fig.update_layout(bargap=0.3)
    return fig


# ---- helpers -----------------------------------------------------------------------------------


def _resolve(arrays: RunArrays, step: int | None) -> tuple[int | None, bool]:
    """(the step to show, whether it was chosen here rather than by the user)."""
    return (step, False) if step is not None else (focus_step(arrays), True)


def _step_extras(arrays: RunArrays, step: int | None) -> StepExtras | None:
    if step is None:
        return None
    columns = np.flatnonzero(np.asarray(arrays.steps) == step)
    if columns.size == 0:
        return None
    return arrays.extras[int(columns[0])]


def _cell_hover(data: ViolationRecord, labels: list[str]) -> list:
    """(n, n, 7) per cell: row label, column label, D_ij, D_ji, S_ij, A_ij, the flip sentence."""
    D, S, A, flip = data.D, data.S, data.A, data.flip
    n = len(labels)
    return [
        [
            [
                labels[i],
                labels[j],
                D[i, j],
                D[j, i],
                S[i, j],
                A[i, j],
                "✕ flip: knowing the row token changes the model's choice here" if flip[i, j] else "no flip",
            ]
            for j in range(n)
        ]
        for i in range(n)
    ]


def _flip_marks(fig: go.Figure, flip: np.ndarray) -> None:
    rows, cols = np.nonzero(flip)
    fig.add_trace(
        go.Scatter(
            x=cols.tolist(),
            y=rows.tolist(),
            mode="markers",
            hoverinfo="skip",
            name="✕ flip",
            showlegend=False,
            marker=dict(symbol=FLIP_SYMBOL, size=10, color="#111111", line=dict(width=2, color="#111111")),
        )
    )


def _pairwise_notes(data: ViolationRecord, auto: bool) -> list[str]:
    notes = []
    if data.capped:
        notes.append(f"capped: the {len(data.positions)} most confident of {data.n_committed} tokens committed")
    if auto:
        notes.append(f"the run's most negative step (Σ S = {data.total:+.2f} nats); the slider picks another")
    return notes


def _violations_on(arrays: RunArrays) -> bool:
    config = arrays.run.get("config") or {}
    return any(e.violations is not None for e in arrays.extras) or bool(config.get("violations"))


def _pairwise_missing(arrays: RunArrays, step: int | None) -> str:
    if step is None:
        return "No step yet."
    if not _violations_on(arrays):
        return VIOLATIONS_OFF
    if not any(e.violations is not None for e in arrays.extras):
        return SINGLE_TOKEN_STEPS
    columns = np.flatnonzero(np.asarray(arrays.steps) == step)
    n = int(arrays.n_committed[columns[0]]) if columns.size else 0
    return (
        f"Step {step} committed {n} token{'' if n == 1 else 's'}: a violation needs<br>"
        "2 or more tokens committed in the same step.<br>"
        "Pick a step with a taller bar in 'Tokens committed per step'."
    )


def _candidates_missing(arrays: RunArrays, step: int | None) -> str:
    config = arrays.run.get("config") or {}
    if not config.get("energies") and not any(e.energy is not None for e in arrays.extras):
        return ENERGIES_OFF
    if step is None:
        return "No step yet."
    low, high = config.get("energy_window") or (0.0, 1.0)
    return (
        f"Energies did not run at step {step}: they run only<br>while the masked fraction t is inside "
        f"the window [{low:g}, {high:g}]<br>and the step commits a token."
    )


def _weights_text(arrays: RunArrays) -> str:
    return energy_terms_text(arrays.run.get("config") or {}, "n/a")
