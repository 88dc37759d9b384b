"""The sweep's figure, table and ROC AUC, from the raw runs of bench/sweep.py.

    python bench/sweep_report.py        # reads bench/results/sweep_raw/*.jsonl

Writes docs/sweep_summary.json, docs/sweep_table.md, docs/sweep.html (the
interactive Plotly figure, self-contained) and docs/sweep.png (the same figure rendered by
Chromium through Playwright, so PNG and HTML cannot disagree).
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.views.metrics import auc_standard_error, roc_auc
from models.evaluate import wilson_interval

GEN = 64
ENERGY_LABEL = {"none": "no energy", "ar": "AR energy (k=4)", "uni": "Uni-E (k=4)"}
ENERGY_DASH = {"none": "solid", "ar": "dash", "uni": "dot"}
ENERGY_SYMBOL = {"none": "circle", "ar": "square", "uni": "diamond"}
STRATEGY_COLOUR = {
    "low_confidence": "#1f77b4",
    "margin": "#ff7f0e",
    "entropy": "#2ca02c",
    "threshold": "#d62728",
    "eb": "#9467bd",
}


def load(raw: Path) -> list[dict]:
    runs = []
    for path in sorted(raw.glob("*.jsonl")):
        runs += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return runs


def summarise_cell(runs: list[dict]) -> dict:
    """Validity with a Wilson interval, AR NLL with a normal interval, speed and cost per token."""
    n = len(runs)
    valid = sum(r["valid"] for r in runs)
    low, high = wilson_interval(valid, n)
    nll = np.array([r["ar_nll"] for r in runs])
    half = 1.96 * nll.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    decode = np.array([r["passes"]["step"] + r["passes"]["energy_denoiser"] + r["passes"]["ar"] for r in runs])
    first = runs[0]
    return {
        "strategy": first["strategy"],
        "setting": first["setting"],
        "energy": first["energy"],
        "runs": n,
        "valid_rate": valid / n,
        "valid_ci": [low, high],
        "ar_nll": float(nll.mean()),
        "ar_nll_ci": [float(nll.mean() - half), float(nll.mean() + half)],
        "tokens_per_step": float(np.mean([GEN / r["n_steps"] for r in runs])),
        "passes_per_token": float(decode.mean() / GEN),
        "violation_passes_per_token": float(np.mean([r["passes"]["violations"] for r in runs]) / GEN),
        "kinds": _count_kinds(runs),
    }


def _count_kinds(runs: list[dict]) -> dict:
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        for kind in r["kinds"]:
            counts[kind] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def auc_table(runs: list[dict]) -> list[dict]:
    """ROC AUC of the violation score (and the baselines) against checker-named positions.

    Tokens of steps that committed >= 2 (the only ones with a score), from the runs without an
    energy (those measured violations). Rows: the fixed-schedule strategies by tokens per step,
    the adaptive ones pooled, and everything pooled."""
    groups: dict[str, list] = defaultdict(list)
    for r in runs:
        if r["energy"] != "none":
            continue
        named = set(r["named"])
        for n_step, score, conf, entropy, pos in r["tokens"]:
            row = (score, conf, entropy, pos in named)
            if r["strategy"] in ("threshold", "eb"):
                groups["adaptive (threshold, eb): all steps"].append(row)
            else:
                groups[f"{n_step} tokens/step"].append(row)
            groups[f"{r['strategy']}: all its steps"].append(row)
            groups["all"].append(row)
    table = []
    for name in sorted(groups, key=_group_order):
        a = np.array(groups[name], dtype=np.float64)  # (m, 4)
        labels = a[:, 3] > 0
        row = {"group": name, "tokens": len(a), "named": int(labels.sum())}
        for metric, score in (("violation", -a[:, 0]), ("one_minus_confidence", 1 - a[:, 1]), ("entropy", a[:, 2])):
            auc = roc_auc(score, labels)
            row[metric] = auc
            row[f"{metric}_se"] = auc_standard_error(auc, int(labels.sum()), int((~labels).sum()))
        table.append(row)
    return table


def _group_order(name: str) -> tuple:
    head = name.split(" ")[0]
    return (0, int(head)) if head.isdigit() else (2, name) if name.startswith(("adaptive", "all")) else (1, name)


def figure(cells: list[dict]):
    """Validity and AR NLL against tokens per step and against forward passes per token."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=2,
        horizontal_spacing=0.08,
        vertical_spacing=0.12,
        subplot_titles=("Validity vs parallelism", "Validity vs compute", "AR NLL vs parallelism", "AR NLL vs compute"),
    )
    groups: dict[tuple, list] = defaultdict(list)
    for c in cells:
        groups[(c["strategy"], c["energy"])].append(c)
    for (strategy, energy), group in sorted(groups.items()):
        group.sort(key=lambda c: c["tokens_per_step"])
        name = f"{strategy} · {ENERGY_LABEL[energy]}"
        style = dict(
            mode="lines+markers",
            legendgroup=name,
            name=name,
            line=dict(color=STRATEGY_COLOUR[strategy], dash=ENERGY_DASH[energy], width=1.5),
            marker=dict(symbol=ENERGY_SYMBOL[energy], size=7),
        )
        tps = [c["tokens_per_step"] for c in group]
        cost = [c["passes_per_token"] for c in group]
        valid = [100 * c["valid_rate"] for c in group]
        nll = [c["ar_nll"] for c in group]
        v_err = dict(
            type="data",
            symmetric=False,
            array=[100 * c["valid_ci"][1] - v for c, v in zip(group, valid)],
            arrayminus=[v - 100 * c["valid_ci"][0] for c, v in zip(group, valid)],
            thickness=1,
            width=2,
        )
        n_err = dict(type="data", array=[c["ar_nll_ci"][1] - c["ar_nll"] for c in group], thickness=1, width=2)
        hover = [
            f"{name}<br>setting {c['setting']}<br>{c['tokens_per_step']:.2f} tokens/step<br>"
            f"{c['passes_per_token']:.2f} passes/token<br>valid {100 * c['valid_rate']:.1f}% "
            f"[{100 * c['valid_ci'][0]:.1f}, {100 * c['valid_ci'][1]:.1f}]<br>AR NLL {c['ar_nll']:.3f}"
            f"<br>{c['runs']} seeds<extra></extra>"
            for c in group
        ]
        for row, col, x, y, err in (
            (1, 1, tps, valid, v_err),
            (1, 2, cost, valid, v_err),
            (2, 1, tps, nll, n_err),
            (2, 2, cost, nll, n_err),
        ):
            fig.add_trace(
                go.Scatter(x=x, y=y, error_y=err, hovertemplate=hover, showlegend=(row, col) == (1, 1), **style),
                row=row,
                col=col,
            )
    for row in (1, 2):
        fig.update_xaxes(
            type="log",
            title_text="tokens committed per step (mean, log scale)",
            row=row,
            col=1,
            tickvals=[1, 2, 4, 8, 16, 32],
            ticktext=["1", "2", "4", "8", "16", "32"],
        )
        fig.update_xaxes(
            type="log",
            title_text="sequence forward passes per generated token (log scale)",
            row=row,
            col=2,
            tickvals=[0.05, 0.1, 0.2, 0.5, 1, 2, 5],
            ticktext=["0.05", "0.1", "0.2", "0.5", "1", "2", "5"],
        )
    fig.update_yaxes(title_text="valid samples (%, 95% Wilson CI)", range=[-3, 103], row=1)
    fig.update_yaxes(title_text="AR model NLL (nats/token, 95% CI)", row=2)
    fig.update_layout(
        title=dict(
            text="Embedded model, 64 tokens, T = 1: quality vs parallelism and vs forward-pass cost "
            "(every extra copy counted: energy chains, AR candidates)",
            x=0.5,
        ),
        width=1500,
        height=1000,
        template="plotly_white",
        legend=dict(font=dict(size=10), x=1.01, y=1),
    )
    return fig


def markdown_table(cells: list[dict]) -> str:
    lines = [
        "| strategy | setting | energy | tokens/step | passes/token | valid % [95% CI] | AR NLL [95% CI] |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for c in sorted(cells, key=lambda c: (c["strategy"], c["tokens_per_step"], c["energy"])):
        lines.append(
            f"| {c['strategy']} | {c['setting']} | {c['energy']} | {c['tokens_per_step']:.2f} | "
            f"{c['passes_per_token']:.2f} | {100 * c['valid_rate']:.1f} "
            f"[{100 * c['valid_ci'][0]:.1f}, {100 * c['valid_ci'][1]:.1f}] | {c['ar_nll']:.3f} "
            f"[{c['ar_nll_ci'][0]:.3f}, {c['ar_nll_ci'][1]:.3f}] |"
        )
    return "\n".join(lines)


def pivot_markdown(cells: list[dict]) -> str:
    """One row per strategy and setting, the three energies side by side (the README's table)."""
    by = {(c["strategy"], c["setting"], c["energy"]): c for c in cells}
    rows = sorted(
        {(c["strategy"], c["setting"]) for c in cells},
        key=lambda r: (r[0], by.get((*r, "none"), {}).get("tokens_per_step", 0)),
    )
    energies = ("none", "ar", "uni")
    lines = [
        "| strategy | setting | tokens/step | valid % none / AR / Uni-E | AR NLL none / AR / Uni-E | "
        "passes/token none / AR / Uni-E |",
        "|---|---|---:|---|---|---|",
    ]
    for strategy, setting in rows:
        got = [by.get((strategy, setting, e)) for e in energies]
        if None in got:
            continue
        fmt = lambda key, f, got=got: " / ".join(f(c[key]) for c in got)  # noqa: E731
        lines.append(
            f"| {strategy} | {setting} | {got[0]['tokens_per_step']:.2f} | "
            f"{fmt('valid_rate', lambda v: f'{100 * v:.1f}')} | {fmt('ar_nll', lambda v: f'{v:.2f}')} | "
            f"{fmt('passes_per_token', lambda v: f'{v:.2f}')} |"
        )
    return "\n".join(lines)


def auc_markdown(table: list[dict]) -> str:
    lines = [
        "| co-committed tokens | tokens | checker-named | AUC violation score | AUC 1 - confidence | AUC entropy |",
        "|---|---:|---:|---|---|---|",
    ]
    for r in table:
        cell = lambda m, r=r: f"{r[m]:.3f} ± {1.96 * r[m + '_se']:.3f}"  # noqa: E731
        lines.append(
            f"| {r['group']} | {r['tokens']} | {r['named']} | {cell('violation')} | "
            f"{cell('one_minus_confidence')} | {cell('entropy')} |"
        )
    return "\n".join(lines)


def png(html: Path, out: Path) -> None:
    """Render the HTML figure with Debian's Chromium (Playwright) and save it as a PNG."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1520, "height": 1020})
        page.goto(html.as_uri())
        page.wait_for_selector(".main-svg")
        page.locator(".plotly-graph-div").screenshot(path=str(out))
        browser.close()


def report(raw: Path, results: Path, docs: Path) -> dict:
    runs = load(raw)
    by_cell: dict[str, list] = defaultdict(list)
    for r in runs:
        by_cell[r["key"]].append(r)
    cells = [summarise_cell(group) for group in by_cell.values()]
    table = auc_table(runs)
    summary = {"cells": cells, "auc": table, "runs": len(runs)}
    results.mkdir(parents=True, exist_ok=True)
    (results / "sweep_summary.json").write_text(json.dumps(summary, indent=1))
    md = pivot_markdown(cells) + "\n\n" + markdown_table(cells) + "\n\n" + auc_markdown(table) + "\n"
    (results / "sweep_table.md").write_text(md)
    fig = figure(cells)
    html = docs / "sweep.html"
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    png(html, docs / "sweep.png")
    print(md)
    return summary


if __name__ == "__main__":
    report(ROOT / "bench" / "results" / "sweep_raw", ROOT / "docs", ROOT / "docs")
