"""The Compare tab: two runs side by side, aligned by position, on the same colour scales."""

from __future__ import annotations

import html

import gradio as gr
import numpy as np

from explorer.services import Services
from explorer.ui.logic import ArraysCache, summarise, token_text_for
from explorer.views import figures as plots
from explorer.views.tokens import render_tokens


def compare_tab(services: Services, cache: ArraysCache) -> None:
    gr.Markdown(
        "Two runs side by side (e.g. the same prompt and seed with different strategies). Positions "
        "where the final tokens differ are outlined in red; both heatmaps share one colour scale."
    )
    with gr.Row():
        a_id = gr.Number(label="Run A", precision=0, elem_id="compare-a")
        b_id = gr.Number(label="Run B", precision=0, elem_id="compare-b")
        metric = gr.Radio(list(COMPARE_MAPS), value="confidence", label="Heatmap")
        go_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn")
    summary = gr.HTML(elem_id="compare-summary")
    with gr.Row():
        with gr.Column():
            gr.Markdown("**Run A**")
            tokens_a = gr.HTML()
            heat_a = gr.Plot(label="Run A: heatmap")
        with gr.Column():
            gr.Markdown("**Run B**")
            tokens_b = gr.HTML()
            heat_b = gr.Plot(label="Run B: heatmap")

    def compare(rid_a, rid_b, metric_v):
        runs = []
        for label, rid in (("A", rid_a), ("B", rid_b)):
            if rid is None:
                raise gr.Error(f"give the id of run {label}")
            try:
                runs.append(cache.get(int(rid)))
            except KeyError:
                raise gr.Error(f"there is no run with id {int(rid)} (run {label})") from None
        a, b = runs
        differ = _differing_positions(a, b)
        views = [render_tokens(r, token_text_for(services, r), None, r.run["prompt"], highlight=differ) for r in (a, b)]
        figures = COMPARE_MAPS[metric_v](a, b)
        return _summary_table(a, b, differ), views[0], figures[0], views[1], figures[1]

    go_btn.click(compare, [a_id, b_id, metric], [summary, tokens_a, heat_a, tokens_b, heat_b], api_name="compare")


def _metric_pair(metric: str):
    def draw(a, b):
        zmax = plots.common_zmax(metric, a, b)
        return [plots.metric_heatmap(r, metric, zmax=zmax) for r in (a, b)]

    return draw


def _nats_pair(name: str, figure):
    def draw(a, b):
        bound = plots.common_bound(name, a, b)
        return [figure(r, bound=bound) for r in (a, b)]

    return draw


# The Heatmap choices of the Compare tab: each draws both runs on one colour scale.
COMPARE_MAPS = {
    **{m: _metric_pair(m) for m in ("confidence", "entropy", "margin")},
    "violations": _nats_pair("violation", plots.violation_heatmap),
    "energy": _nats_pair("energy", plots.energy_heatmap),
}


def _differing_positions(a, b) -> set[int]:
    final_a, final_b = a.tokens[:, -1] if a.tokens.size else None, b.tokens[:, -1] if b.tokens.size else None
    if final_a is None or final_b is None:
        return set()
    n = min(len(final_a), len(final_b))
    differ = set(np.nonzero(final_a[:n] != final_b[:n])[0].tolist())
    return differ | set(range(n, max(len(final_a), len(final_b))))


def _summary_table(a, b, differ: set[int]) -> str:
    rows = []
    sa = summarise(a, f"{a.run['prompt']} {a.run['final_text'] or ''}", a.run["model"])
    sb = summarise(b, f"{b.run['prompt']} {b.run['final_text'] or ''}", b.run["model"])
    fields = [
        ("run", sa.run_id, sb.run_id),
        ("model", a.run["model"], b.run["model"]),
        ("strategy", a.run["strategy"], b.run["strategy"]),
        ("status", sa.status, sb.status),
        ("steps", sa.n_steps, sb.n_steps),
        ("tokens / step", f"{sa.committed / max(sa.n_steps, 1):.2f}", f"{sb.committed / max(sb.n_steps, 1):.2f}"),
        ("AR-ness τ", f"{sa.arness:+.2f}", f"{sb.arness:+.2f}"),
        ("mean p at commit", f"{sa.mean_commit_prob:.3f}", f"{sb.mean_commit_prob:.3f}"),
        ("energies", _energies_text(a), _energies_text(b)),
        ("violations: Σ S < 0 (nats)", _violation_total(a), _violation_total(b)),
        ("checker", sa.verdict or "n/a", sb.verdict or "n/a"),
    ]
    for name, va, vb in fields:
        rows.append(
            f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(str(va))}</td><td>{html.escape(str(vb))}</td></tr>"
        )
    return (
        f'<table class="compare"><tr><th></th><th>A</th><th>B</th></tr>{"".join(rows)}</table>'
        f"<p>{len(differ)} position(s) differ in the final text.</p>"
    )


def _energies_text(arrays) -> str:
    return plots.energy_terms_text(arrays.run.get("config") or {}, "off", escape=False)  # the table escapes


def _violation_total(arrays) -> str:
    """The run's summed violation (negative parts of S over the co-committed pairs of every step)."""
    totals = [e.violations.total for e in arrays.extras if e.violations is not None]
    return f"{sum(totals):+.2f}" if totals else "not measured"
