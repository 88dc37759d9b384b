"""A sweep's report: a markdown table per temperature and the quality-vs-cost figure (Plotly).

Quality is the checker's valid % when the sweep measured it, else the AR NLL; each point is a
cell with its 95% interval, each line a series (a group of the spec on one model) along its
varying setting, one column per cost and one row per temperature.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.sweeps.stats import interval_text
from explorer.sweeps.summary import COSTS, SweepSummary

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#ff7f0e", "#e377c2", "#7f7f7f", "#bcbd22")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon")


def quality_axis(summary: SweepSummary) -> tuple[str, str, str] | None:
    """(cell key, its interval's key, axis title) of the quality the figure plots, or None."""
    if "checker" in summary.metrics:
        return "valid_rate", "valid_ci", "valid % (checker, 95% Wilson)"
    if "ar_nll" in summary.metrics:
        return "ar_nll", "ar_nll_ci", "AR NLL, nats/token (lower is better; 95% CI)"
    return None


def markdown(summary: SweepSummary) -> str:
    """Every cell, one table per temperature, each number with its interval and n."""
    sweep = summary.sweep
    lines = [
        f"# Sweep {sweep['id']}: {sweep['name']}",
        "",
        f"{summary.done} of {summary.planned} runs done ({summary.failed} failed, {summary.running} running), "
        f"{len(summary.cells)} cells x {len(sweep['spec'].get('seed_list', []))} seeds, generation length "
        f"{sweep['spec'].get('gen_length')}. Costs per generated token: mean [95% normal interval]. "
        "n = runs done in the cell.",
    ]
    checker, nll = "checker" in summary.metrics, "ar_nll" in summary.metrics
    auc = "violation_auc" in summary.metrics
    if auc:
        lines += [
            "",
            'Violation AUC: ROC AUC of the violation score -S for "the checker names this token\'s position" '
            "over the cell's co-committed tokens (positives of tokens after it), and of the baseline 1 - p; "
            "95% intervals from resampling runs; per cell, never pooled; none under 20 positives.",
        ]
    for t in sorted({c["temperature"] for c in summary.cells}):
        header = "| model | cell | n | tokens/step | calls/token | sequences/token | ms/token |"
        rule = "|---|---|---:|---:|---|---|---|"
        if checker:
            header, rule = header + " valid % | sentences % |", rule + "---|---|"
        if nll:
            header, rule = header + " AR NLL |", rule + "---|"
        if auc:
            header, rule = header + " violation AUC | 1 - p AUC |", rule + "---|---|"
        lines += ["", f"## T = {t:g}{' (greedy)' if t == 0 else ''}", "", header, rule]
        for c in (c for c in summary.cells if c["temperature"] == t):
            lines.append(_row(c, checker, nll) + (_auc_columns(c) if auc else ""))
    return "\n".join(lines) + "\n"


def _row(c: dict, checker: bool, nll: bool) -> str:
    head = f"| {c['model']} | {c['label']} | {c['runs']} |"
    if not c["runs"]:
        return head + " - | - | - | - |" + (" - | - |" if checker else "") + (" - |" if nll else "")
    cost = c["cost_per_token"]
    row = (
        f"{head} {c['tokens_per_step']:.2f} | {interval_text(cost['calls']['mean'], cost['calls']['ci'])} | "
        f"{interval_text(cost['sequences']['mean'], cost['sequences']['ci'])} | "
        f"{interval_text(cost['wall_ms']['mean'], cost['wall_ms']['ci'], '.2f')} |"
    )
    if checker:
        row += f" {interval_text(c['valid_rate'], c['valid_ci'], '.1f', 100)} |"
        row += f" {interval_text(c['sentence_rate'], c['sentence_ci'], '.1f', 100)} |"
    if nll:
        row += f" {interval_text(c['ar_nll'], c['ar_nll_ci'])} |"
    return row


def _auc_columns(c: dict) -> str:
    """The violation AUC (with its positives of tokens) and the 1 - p AUC; a dash and why when none."""
    v = c.get("violation_auc")
    if v is None:
        return " - | - |"
    if v["auc"] is None:
        return f" - ({v['reason']}; {v['tokens']} tokens) | - |"
    return (
        f" {interval_text(v['auc'], v['auc_ci'])} ({v['positives']} of {v['tokens']}) |"
        f" {interval_text(v['baseline_auc'], v['baseline_ci'])} |"
    )


def figure(summary: SweepSummary) -> go.Figure:
    """Quality against each cost (columns), one row per temperature; an empty figure says why."""
    axis = quality_axis(summary)
    cells = [c for c in summary.cells if c["runs"]]
    temperatures = sorted({c["temperature"] for c in cells})
    fig = make_subplots(rows=max(1, len(temperatures)), cols=len(COSTS), horizontal_spacing=0.07, vertical_spacing=0.14)
    title = f"Sweep {summary.sweep['id']} ({_text(summary.sweep['name'])}): quality vs cost per generated token"
    if axis is None or not cells:
        why = "no quality metric in the spec (add checker or ar_nll)" if axis is None else "no run done yet"
        fig.update_layout(title=dict(text=f"{title}: {why}", x=0.5), template="plotly_white", height=420)
        return fig
    key, ci_key, y_title = axis
    scale = 100.0 if key == "valid_rate" else 1.0
    series = _series(cells)
    for n, (name, points) in enumerate(series.items()):
        colour, symbol = PALETTE[n % len(PALETTE)], SYMBOLS[(n // len(PALETTE)) % len(SYMBOLS)]
        for row, t in enumerate(temperatures, 1):
            pts = sorted((c for c in points if c["temperature"] == t), key=_setting_order)
            if not pts:
                continue
            y = [scale * c[key] for c in pts]
            err = dict(
                type="data",
                symmetric=False,
                array=[_gap(scale * c[ci_key][1] - v) for c, v in zip(pts, y)],
                arrayminus=[_gap(v - scale * c[ci_key][0]) for c, v in zip(pts, y)],
                thickness=1,
            )
            for col, (cost, _) in enumerate(COSTS, 1):
                fig.add_trace(
                    go.Scatter(
                        x=[c["cost_per_token"][cost]["mean"] for c in pts],
                        y=y,
                        error_y=err,
                        mode="lines+markers",
                        name=name,
                        legendgroup=name,
                        showlegend=row == 1 and col == 1,
                        line=dict(color=colour, width=1.3),
                        marker=dict(color=colour, symbol=symbol, size=8),
                        customdata=[[c["cell_id"]] for c in pts],
                        hovertext=[_hover(c, key, scale) for c in pts],
                        hoverinfo="text",  # not a hovertemplate: a label's "%{...}" stays text
                    ),
                    row=row,
                    col=col,
                )
    for row, t in enumerate(temperatures, 1):
        for col, (cost, x_title) in enumerate(COSTS, 1):
            xs = [c["cost_per_token"][cost]["mean"] for c in cells if c["temperature"] == t]
            fig.update_xaxes(type="log", title_text=x_title, range=_log_range(xs), row=row, col=col)
        fig.update_yaxes(title_text=f"T = {t:g}: {y_title}", row=row, col=1)
    fig.update_layout(
        title=dict(text=title, x=0.5),
        template="plotly_white",
        height=380 * len(temperatures) + 120,
        legend=dict(title=dict(text="series (model: group)"), font=dict(size=11)),
        margin=dict(t=80),
    )
    return fig


def _series(cells: list[dict]) -> dict[str, list[dict]]:
    """Legend name (escaped: Plotly reads tags in legends) -> the series' cells."""
    models = {c["model"] for c in cells}
    out: dict[str, list[dict]] = {}
    for c in cells:
        name = c["group"] if len(models) == 1 else f"{c['model']}: {c['group']}"
        out.setdefault(_text(name), []).append(c)
    return out


def _text(value: object) -> str:
    """A name as Plotly text: its markup escaped (Plotly turns &lt; &gt; &amp; back into text; it
    would show &quot; as written, so quotes stay)."""
    return html.escape(str(value), quote=False)


def _log_range(xs: list[float]) -> list[float] | None:
    """A log axis' range with a margin either side, so no point sits on the frame."""
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    if not xs:
        return None
    low, high = math.log10(min(xs)), math.log10(max(xs))
    pad = max(0.08, 0.08 * (high - low))
    return [low - pad, high + pad]


def _setting_order(cell: dict) -> tuple:
    value = cell["setting"]
    return (0, float(value), "") if isinstance(value, int | float) else (1, 0.0, str(value))


def _gap(value: float) -> float:
    return 0.0 if math.isnan(value) else max(0.0, value)


def _hover(c: dict, key: str, scale: float) -> str:
    cost = c["cost_per_token"]
    return (
        f"<b>{_text(c['label'])}</b><br>{_text(c['model'])}, T = {c['temperature']:g}, n = {c['runs']}<br>"
        f"{'valid' if key == 'valid_rate' else 'AR NLL'}: {scale * c[key]:.3g}<br>"
        f"calls/token {cost['calls']['mean']:.3f}, sequences/token {cost['sequences']['mean']:.3f}, "
        f"{cost['wall_ms']['mean']:.2f} ms/token"
    )


def write_report(summary: SweepSummary, out: Path) -> list[Path]:
    """sweep_<id>.md, sweep_<id>.json and sweep_<id>.html (self-contained figure) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"sweep_{summary.sweep['id']}"
    paths = [stem.with_suffix(".md"), stem.with_suffix(".json"), stem.with_suffix(".html")]
    paths[0].write_text(markdown(summary))
    data = {"sweep": summary.sweep, "planned": summary.planned, "done": summary.done, "failed": summary.failed,
            "cells": summary.cells}  # fmt: skip
    paths[1].write_text(json.dumps(data, indent=1, default=str))
    figure(summary).write_html(paths[2], include_plotlyjs=True, full_html=True)
    return paths
