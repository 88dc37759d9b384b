""" "Which decision mattered?": the outcomes of re-decoding a run once per alternative token at
one position, as a Plotly figure. Pure: plain rows in (one dict per alternative), a figure out.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from explorer.views.figures import apply_layout, empty_figure, plotly_text

# Checker verdict -> (legend name, colour): green = a valid story, red = the checker objects.
VERDICTS = {
    True: ("valid story", "#2f9e44"),
    False: ("checker: violations", "#e03131"),
    None: ("not checked", "#868e96"),
}


def alternatives_figure(rows: Sequence[dict], step: int, position: int) -> go.Figure:
    """Bars of each alternative's summed violation score after step `step` (nats, <= 0; more
    negative = the steps after it committed more contradicting tokens), coloured by the story
    checker's verdict. A row: {"token", "violation_score", "valid" (True/False/None),
    "as_decoded" (the parent's own token)}; token text is escaped here."""
    title = f"Which decision mattered? Each alternative at position {position}, forced after step {step}"
    if not rows:
        return empty_figure(title, "Press Run analysis: one re-decode per alternative token.", "alternatives")
    fig = go.Figure()
    labels = [_label(row) for row in rows]
    for verdict, (name, colour) in VERDICTS.items():
        chosen = [i for i, row in enumerate(rows) if row.get("valid") is verdict]
        if not chosen:
            continue
        fig.add_trace(
            go.Bar(
                x=[labels[i] for i in chosen],
                y=[float(rows[i]["violation_score"]) for i in chosen],
                name=name,
                marker=dict(color=colour, line=dict(width=0)),
                hovertemplate="%{x}<br>violation score after the step: %{y:.2f} nats<extra>" + name + "</extra>",
            )
        )
    apply_layout(
        fig,
        title,
        "sum of the dependency-violation totals of the later steps · 0 = no conflict, more negative = worse",
        "token forced at the position",
        "violation score after the step (nats)",
        f"alternatives:{step}:{position}",
    )
    fig.update_layout(showlegend=True, legend=dict(orientation="h", y=-0.25), barmode="overlay")
    fig.update_xaxes(categoryorder="array", categoryarray=labels)  # most probable first, as the table
    return fig


def _label(row: dict) -> str:
    return plotly_text(row["token"]) + (" (as decoded)" if row.get("as_decoded") else "")
