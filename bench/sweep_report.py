"""The frontier sweep's summary, tables, figure, target check and per-level ROC AUC.

    python bench/sweep_report.py              # reads bench/results/frontier_raw (+ auc_raw if present)
    python bench/sweep_report.py --no-png     # skip the Chromium render of docs/sweep.png

Reads the raw runs of bench/sweep.py (one JSON line per run; a cell may hold fewer runs than the
sweep's 300 while it runs, and every number below gives its n) and writes into docs/:

- sweep_summary.json: every cell (runs, valid rate with its 95% Wilson interval, the rate of
  grammatical sentences with a 95% bootstrap interval over runs, AR NLL, tokens per step, and
  cost per generated token three ways: sequential model calls, sequence forwards, wall-clock ms,
  each a mean with a 95% interval), the target check, and the AUC tables when the auc part exists;
- sweep_table.md: one table per temperature, then the target check;
- sweep.html (self-contained Plotly) and sweep.png (the same HTML rendered by Chromium through
  Playwright, so PNG and HTML cannot disagree): valid % against each cost, one row per temperature;
- auc_table.md (only when bench/results/auc_raw exists): ROC AUC of the violation score and its
  baselines against "the checker names this token's position", per tokens-per-step level (never
  pooled across levels), 95% intervals from resampling runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.sweeps.stats import (
    RESAMPLES,
    SEED,
    Z,
    auc_with_ci,
    bootstrap_ratio,
    interval_text,
    mean_ci,
    resample_counts,
    weighted_auc,  # noqa: F401 (the bench's statistics, with auc_with_ci, live in explorer/sweeps/stats.py)
    wilson_interval,
)

GEN = 64  # generated tokens per run (bench/sweep.py's GEN)
TARGET_VALID = 0.99
TARGET_CALLS = 0.5
PREVIOUS_BEST = {
    "cell": "threshold tau = 0.9 (old sweep: T = 1, 200 seeds)",
    "valid_rate": 0.995,
    "calls_per_token": 0.78,
}
MIN_POSITIVES = 20  # an AUC row by kind or by strategy needs this many checker-named tokens
MIN_RUNS = 20  # ... and a by-strategy row this many runs
COSTS = (  # (key, axis title, log-axis ticks)
    ("calls", "sequential model calls per token", (0.05, 0.1, 0.2, 0.5, 1, 2)),
    ("sequences", "sequence forwards per token", (0.05, 0.1, 0.2, 0.5, 1, 2, 5)),
    ("wall_ms", "wall-clock ms per token (CPU, 1 thread)", (0.2, 0.5, 1, 2, 5, 10, 20, 50)),
)
AUC_METRICS = (
    ("violation", "violation score (-S)"),
    ("cross", "cross-step score (-cross)"),
    ("combined", "combined -min(S, cross)"),
    ("one_minus_confidence", "1 - confidence"),
    ("entropy", "entropy"),
)
ENERGY_NAME = {"uni": "Uni-E (k=4)", "ar": "AR energy (k=4)", "uni-marginals": "Uni-E (k=4), marginal candidates"}
GROUP_ORDER = {"plain": 0, "gated": 1, "energy": 2, "auc": 3}
SERIES_STYLE = {  # series -> (colour, marker)
    "low_confidence": ("#1f77b4", "circle"),
    "threshold": ("#d62728", "circle"),
    "lookahead": ("#2ca02c", "square"),
    "lookahead_exact": ("#17becf", "square"),
    "energy_gate": ("#9467bd", "diamond"),
    "pairwise_gate": ("#8c564b", "diamond"),
    "low_confidence + uni": ("#ff7f0e", "triangle-up"),
    "low_confidence + ar": ("#e377c2", "triangle-up"),
    "low_confidence + uni-marginals": ("#7f7f7f", "triangle-up"),
}
SETTING_NAME = {
    "low_confidence": "tokens/step",
    "threshold": "tau",
    "lookahead": "gamma",
    "lookahead_exact": "K",
    "energy_gate": "bound",
    "pairwise_gate": "tau",
}


# ---------------------------------------------------------------------------------------- loading


def load(raw: Path) -> tuple[list[dict], int]:
    """Every run under `raw` (one per (key, seed); the first kept) and how many lines were unreadable.

    The sweep appends while this reads, so a half-written last line is skipped, not fatal."""
    runs, seen, skipped = [], set(), 0
    if not raw.is_dir():
        return runs, skipped
    for path in sorted(raw.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                run = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if (run["key"], run["seed"]) in seen:
                continue
            seen.add((run["key"], run["seed"]))
            runs.append(run)
    return runs, skipped


def by_key(runs: list[dict]) -> dict[str, list[dict]]:
    cells: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        cells[r["key"]].append(r)
    return cells


# ---------------------------------------------------------------------------------------- cells


def summarise_cell(runs: list[dict], resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """One cell: validity (Wilson), grammatical sentences (bootstrap over runs), AR NLL, cost per token."""
    n = len(runs)
    valid = sum(bool(r["valid"]) for r in runs)
    sentences, sentence_ci = bootstrap_ratio(
        [r["valid_sentences"] for r in runs], [r["sentences"] for r in runs], resamples, seed
    )
    nll = mean_ci([r["ar_nll"] for r in runs])
    first = runs[0]
    kinds: dict[str, int] = defaultdict(int)
    for r in runs:
        for kind in r["kinds"]:
            kinds[kind] += 1
    return {
        "key": first["key"],
        "group": first["group"],
        "strategy": first["strategy"],
        "setting": first["setting"],
        "energy": first["energy"],
        "temperature": float(first["temperature"]),
        "label": cell_label(first),
        "runs": n,
        "valid": valid,
        "valid_rate": valid / n,
        "valid_ci": list(wilson_interval(valid, n)),
        "sentence_rate": sentences,
        "sentence_ci": sentence_ci,
        "ar_nll": nll["mean"],
        "ar_nll_ci": nll["ci"],
        "tokens_per_step": float(np.mean([GEN / r["n_steps"] for r in runs])),
        "cost_per_token": {
            "calls": mean_ci([r["cost"]["calls"] / GEN for r in runs]),
            "sequences": mean_ci([r["cost"]["sequences"] / GEN for r in runs]),
            "wall_ms": mean_ci([1000 * r["cost"]["seconds"] / GEN for r in runs]),
        },
        "measure_sequences_per_token": float(np.mean([r["cost"].get("measure_sequences", 0) / GEN for r in runs])),
        "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
    }


def series_of(cell: dict) -> str:
    return cell["strategy"] if cell["energy"] == "none" else f"{cell['strategy']} + {cell['energy']}"


def cell_label(cell: dict) -> str:
    setting = f"{cell['setting']:g}" if isinstance(cell["setting"], float) else str(cell["setting"])
    if cell["energy"] != "none":
        return f"{cell['strategy']} {setting} tokens/step + {ENERGY_NAME.get(cell['energy'], cell['energy'])}"
    return f"{cell['strategy']} {SETTING_NAME.get(cell['strategy'], 'setting')} = {setting}"


def cell_order(cell: dict) -> tuple:
    return (
        cell["temperature"],
        GROUP_ORDER.get(cell["group"], 9),
        cell["strategy"],
        cell["energy"],
        float(cell["setting"]),
    )


# ------------------------------------------------------------------------------------- target


def target_check(cells: list[dict], valid: float = TARGET_VALID, calls: float = TARGET_CALLS) -> dict:
    """Per temperature: the cells at >= `valid` (point estimate) and <= `calls` calls per token."""
    out = {
        "criterion": f">= {100 * valid:g}% valid (point estimate) at <= {calls:g} sequential calls per token",
        "previous_best": PREVIOUS_BEST,
        "temperatures": [],
    }
    for t in sorted({c["temperature"] for c in cells}):
        at_t = [c for c in cells if c["temperature"] == t]
        reaching = sorted(
            (c for c in at_t if c["valid_rate"] >= valid and c["cost_per_token"]["calls"]["mean"] <= calls),
            key=lambda c: (c["cost_per_token"]["calls"]["mean"], -c["valid_rate"]),
        )
        rows = [_target_row(c, valid) for c in reaching]
        reference = next(
            (c for c in at_t if c["strategy"] == "threshold" and float(c["setting"]) == 0.9 and c["energy"] == "none"),
            None,
        )
        ref = _target_row(reference, valid) if reference is not None else None
        for row in rows:
            row["calls_vs_threshold_0.9"] = row["calls_per_token"] / ref["calls_per_token"] if ref else None
        lines = [f"T = {t:g}: " + _target_headline(rows, at_t, valid, calls)]
        lines += ["  " + _target_line(row, valid) for row in rows]
        if rows and all(not r["lower_bound_reaches"] for r in rows):
            n = max(r["runs"] for r in rows)
            lines.append(
                f"  Honestly: no cell's 95% Wilson lower bound reaches {100 * valid:g}%, so the target is met by the "
                f"point estimate only. With n runs even n/n valid has lower bound n / (n + 1.96^2) "
                f"({100 * wilson_interval(n, n)[0]:.1f}% at n = {n}); {100 * valid:g}% needs n >= "
                f"{math.ceil(valid * Z * Z / (1 - valid))} runs without a failure."
            )
        previous = (
            f"previous best ({PREVIOUS_BEST['cell']}): {100 * PREVIOUS_BEST['valid_rate']:.1f}% valid at "
            f"{PREVIOUS_BEST['calls_per_token']:.2f} calls/token."
        )
        if ref:
            lines.append(
                f"  Reference, threshold tau = 0.9 in this sweep: {_pct(ref)} at {ref['calls_per_token']:.3f} "
                f"calls/token (n = {ref['runs']}); {previous}"
            )
        else:
            lines.append(f"  (no threshold tau = 0.9 cell at T = {t:g} yet); {previous}")
        out["temperatures"].append(
            {
                "temperature": t,
                "cells": rows,
                "threshold_0.9": ref,
                "statement": lines,
            }
        )
    return out


def _target_row(c: dict, valid: float) -> dict:
    calls = c["cost_per_token"]["calls"]
    return {
        "key": c["key"],
        "label": c["label"],
        "runs": c["runs"],
        "valid": c["valid"],
        "valid_rate": c["valid_rate"],
        "valid_ci": c["valid_ci"],
        "lower_bound_reaches": c["valid_ci"][0] >= valid,
        "calls_per_token": calls["mean"],
        "calls_ci": calls["ci"],
        "sequences_per_token": c["cost_per_token"]["sequences"]["mean"],
        "wall_ms_per_token": c["cost_per_token"]["wall_ms"]["mean"],
    }


def _pct(row: dict) -> str:
    lo, hi = row["valid_ci"]
    return f"{100 * row['valid_rate']:.1f}% valid [{100 * lo:.1f}, {100 * hi:.1f}]"


def _target_headline(rows: list[dict], at_t: list[dict], valid: float, calls: float) -> str:
    if rows:
        return f"{len(rows)} cell(s) reach >= {100 * valid:g}% valid at <= {calls:g} calls/token"
    cheap = [c for c in at_t if c["cost_per_token"]["calls"]["mean"] <= calls]
    good = [c for c in at_t if c["valid_rate"] >= valid]
    parts = [f"no cell reaches >= {100 * valid:g}% valid at <= {calls:g} calls/token"]
    if cheap:
        best = max(cheap, key=lambda c: c["valid_rate"])
        parts.append(f"best at <= {calls:g}: {best['label']} {_pct(_target_row(best, valid))}")
    if good:
        cheapest = min(good, key=lambda c: c["cost_per_token"]["calls"]["mean"])
        parts.append(
            f"cheapest at >= {100 * valid:g}%: {cheapest['label']} at "
            f"{cheapest['cost_per_token']['calls']['mean']:.3f} calls/token"
        )
    return "; ".join(parts)


def _target_line(row: dict, valid: float) -> str:
    line = (
        f"{row['label']}: {_pct(row)}, n = {row['runs']}, {row['calls_per_token']:.3f} calls/token, "
        f"{row['sequences_per_token']:.2f} sequences/token, {row['wall_ms_per_token']:.2f} ms/token"
    )
    if row.get("calls_vs_threshold_0.9"):
        line += f", {row['calls_vs_threshold_0.9']:.2f}x the calls of threshold tau = 0.9"
    if not row["lower_bound_reaches"]:
        line += f" (lower bound {100 * row['valid_ci'][0]:.1f}% < {100 * valid:g}%)"
    return line


# ----------------------------------------------------------------------------------------- AUC


def _token_table(runs: list[dict]) -> dict[str, np.ndarray]:
    """Every co-committed token (its step committed >= 2) of `runs`, with its run's index."""
    cols: dict[str, list] = defaultdict(list)
    for i, r in enumerate(runs):
        named = set(r["named"])
        kind_of: dict[int, set] = defaultdict(set)
        for kind, positions in r["named_by_kind"]:
            for p in positions:
                kind_of[p].add(kind)
        for n_step, score, cross, confidence, entropy, pos, _step in r["tokens"]:
            if n_step < 2:
                continue
            cols["run"].append(i)
            cols["score"].append(score)
            cols["cross"].append(np.nan if cross is None else cross)
            cols["confidence"].append(confidence)
            cols["entropy"].append(entropy)
            cols["named"].append(pos in named)
            cols["kinds"].append(frozenset(kind_of.get(pos, ())))
    table = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items() if k not in ("named", "kinds", "run")}
    table["run"] = np.asarray(cols["run"], dtype=np.int64)
    table["named"] = np.asarray(cols["named"], dtype=bool)
    table["kinds"] = cols["kinds"]
    return table


def _metric_scores(t: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (higher = more suspect score, mask of the tokens it is defined on)."""
    everywhere = np.ones(len(t["score"]), dtype=bool)
    has_cross = ~np.isnan(t["cross"])
    combined = np.where(has_cross, np.fmin(t["score"], t["cross"]), t["score"])
    return {
        "violation": (-t["score"], everywhere),
        "cross": (-np.nan_to_num(t["cross"]), has_cross),
        "combined": (-combined, everywhere),
        "one_minus_confidence": (1 - t["confidence"], everywhere),
        "entropy": (t["entropy"], everywhere),
    }


def auc_group(runs: list[dict], resamples: int = RESAMPLES, seed: int = SEED, labels=None, keep=None) -> dict:
    """AUC of every metric over the co-committed tokens of `runs`, 95% intervals from resampling runs.

    `labels`/`keep` (functions of the token table) override "the checker names it" and which tokens count."""
    t = _token_table(runs)
    row: dict = {"runs": len(runs), "tokens": len(t["score"])}
    if not len(t["score"]):
        return row | {"named": 0}
    y = t["named"] if labels is None else labels(t)
    base = np.ones(len(y), dtype=bool) if keep is None else keep(t)
    row["tokens"], row["named"] = int(base.sum()), int(y[base].sum())
    counts = resample_counts(len(runs), resamples, seed)  # the same resamples for every metric
    for metric, (scores, defined) in _metric_scores(t).items():
        mask = base & defined
        if not mask.any():
            continue
        row[metric] = auc_with_ci(scores[mask], y[mask], t["run"][mask], counts)
    return row


def kind_coverage(runs: list[dict]) -> dict[str, dict]:
    """Per checker kind: named positions (per run) that were scorable (co-committed) and not."""
    out: dict[str, dict] = defaultdict(lambda: {"named": 0, "scorable": 0, "not_scorable": 0})
    for r in runs:
        scored = {pos for n_step, *_, pos, _step in r["tokens"] if n_step >= 2}
        seen = set()
        for kind, positions in r["named_by_kind"]:
            for p in positions:
                if (kind, p) in seen:
                    continue
                seen.add((kind, p))
                out[kind]["named"] += 1
                out[kind]["scorable" if p in scored else "not_scorable"] += 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["named"]))


def auc_report(runs: list[dict], resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Per tokens-per-step level (never pooled): AUC rows, per-kind coverage and AUC, and by strategy."""
    levels: dict[int, list[dict]] = defaultdict(list)
    by_strategy: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        levels[int(r["setting"])].append(r)
        by_strategy[(r["strategy"], int(r["setting"]))].append(r)
    out: dict = {"levels": [], "kinds": [], "strategies": [], "resamples": resamples, "seed": seed}
    for level in sorted(levels):
        group = levels[level]
        out["levels"].append({"level": level, **auc_group(group, resamples, seed)})
        for kind, coverage in kind_coverage(group).items():
            row = {"level": level, "kind": kind, **coverage}
            if coverage["scorable"] >= MIN_POSITIVES:
                aucs = auc_group(
                    group,
                    resamples,
                    seed,
                    labels=lambda t, kind=kind: np.array([kind in k for k in t["kinds"]]),
                    keep=lambda t, kind=kind: np.array([kind in k or not k for k in t["kinds"]]),
                )
                # its tokens and those no kind names; "named" stays the coverage count above
                row |= {"tokens": aucs["tokens"], "positive_tokens": aucs["named"]}
                row |= {m: aucs[m] for m, _ in AUC_METRICS if m in aucs}
            out["kinds"].append(row)
    for (strategy, level), group in sorted(by_strategy.items()):
        if len(group) < MIN_RUNS:
            continue
        row = {"strategy": strategy, "level": level, **auc_group(group, resamples, seed)}
        if row["named"] >= MIN_POSITIVES:
            out["strategies"].append(row)
    return out


def _auc_cell(row: dict, metric: str) -> str:
    m = row.get(metric)
    if not m or math.isnan(m["auc"]):
        return "–"
    lo, hi = m["ci"]
    return f"{m['auc']:.3f} [{lo:.3f}, {hi:.3f}]"


def auc_markdown(auc: dict) -> str:
    heads = " | ".join(f"AUC {name}" for _, name in AUC_METRICS)
    align = "|".join("---" for _ in AUC_METRICS)
    cells = lambda row: " | ".join(_auc_cell(row, m) for m, _ in AUC_METRICS)  # noqa: E731
    lines = [
        "# ROC AUC of the violation score, per tokens-per-step level",
        "",
        "From `python bench/sweep_report.py` on the auc part of `python bench/sweep.py` (low_confidence, margin "
        "and entropy, T = 1). Tokens of steps that committed >= 2; positive = the checker names the token's "
        "position. Each level separately (never pooled across levels); 95% intervals are percentiles of "
        f"{auc['resamples']} bootstrap resamples of runs (seed {auc['seed']}), not of tokens. The cross-step "
        "score is defined only where recorded; the combined score falls back to S where it is not.",
        "",
        f"| tokens/step | runs | tokens | checker-named | {heads} |",
        f"|---:|---:|---:|---:|{align}|",
    ]
    for row in auc["levels"]:
        lines.append(f"| {row['level']} | {row['runs']} | {row['tokens']} | {row['named']} | {cells(row)} |")
    lines += [
        "",
        "## By checker violation kind",
        "",
        "Named positions (per run) that were scorable (committed in a step with >= 2 tokens) or not; the AUC "
        f"of a kind (its tokens against tokens no kind names) where >= {MIN_POSITIVES} named positions are "
        "scorable.",
        "",
        f"| tokens/step | kind | named | scorable | not scorable | {heads} |",
        f"|---:|---|---:|---:|---:|{align}|",
    ]
    for row in auc["kinds"]:
        lines.append(
            f"| {row['level']} | {row['kind']} | {row['named']} | {row['scorable']} | {row['not_scorable']} | "
            f"{cells(row)} |"
        )
    if auc["strategies"]:
        lines += [
            "",
            "## By strategy and level",
            "",
            f"| strategy | tokens/step | runs | tokens | checker-named | {heads} |",
            f"|---|---:|---:|---:|---:|{align}|",
        ]
        for row in auc["strategies"]:
            lines.append(
                f"| {row['strategy']} | {row['level']} | {row['runs']} | {row['tokens']} | {row['named']} | "
                f"{cells(row)} |"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- tables


def temperature_title(t: float, cells: list[dict]) -> str:
    n = max((c["runs"] for c in cells), default=0)
    if t == 0:
        return f"T = 0 (greedy; the seed picks the prompt: up to {n} prompts per cell)"
    return f"T = {t:g} (sampled; prompt 'once upon a time', up to {n} seeds per cell)"


def markdown_table(cells: list[dict], target: dict | None = None) -> str:
    lines = [
        "# Frontier sweep: every cell",
        "",
        "From `python bench/sweep_report.py` on the runs of `python bench/sweep.py --part frontier` (embedded model, "
        f"{GEN} generated tokens). n = runs in the cell. Valid: the checker's verdict, 95% Wilson interval. "
        "Sentences: grammatical sentences / sentences, 95% bootstrap interval over runs. Costs per generated token "
        "(mean, normal 95% interval): sequential model calls, sequence forwards, wall-clock ms on the CPU with "
        "1 thread. AR NLL in nats/token.",
    ]
    for t in sorted({c["temperature"] for c in cells}):
        at_t = sorted((c for c in cells if c["temperature"] == t), key=cell_order)
        lines += [
            "",
            f"## {temperature_title(t, at_t)}",
            "",
            "| group | strategy | setting | energy | n | tokens/step | calls/token | sequences/token | ms/token | "
            "valid % | sentences % | AR NLL |",
            "|---|---|---:|---|---:|---:|---|---|---|---|---|---|",
        ]
        for c in at_t:
            cost = c["cost_per_token"]
            lines.append(
                f"| {c['group']} | {c['strategy']} | {c['setting']} | {c['energy']} | {c['runs']} | "
                f"{c['tokens_per_step']:.2f} | {interval_text(cost['calls']['mean'], cost['calls']['ci'])} | "
                f"{interval_text(cost['sequences']['mean'], cost['sequences']['ci'])} | "
                f"{interval_text(cost['wall_ms']['mean'], cost['wall_ms']['ci'], '.2f')} | "
                f"{interval_text(c['valid_rate'], c['valid_ci'], '.1f', 100)} | "
                f"{interval_text(c['sentence_rate'], c['sentence_ci'], '.1f', 100)} | "
                f"{interval_text(c['ar_nll'], c['ar_nll_ci'])} |"
            )
    if target:
        lines += ["", f"## Target check: {target['criterion']}", ""]
        for entry in target["temperatures"]:
            lines += [f"- {line.strip()}" for line in entry["statement"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- figure


def figure(cells: list[dict]):
    """Valid % against each of the three costs (columns), one row per temperature."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    temperatures = sorted({c["temperature"] for c in cells})
    n_rows = max(1, len(temperatures))
    fig = make_subplots(rows=n_rows, cols=3, horizontal_spacing=0.06, vertical_spacing=0.16)
    series: dict[str, list] = defaultdict(list)
    for c in cells:
        series[series_of(c)].append(c)
    known = list(SERIES_STYLE)
    ordered = sorted(
        series,
        key=lambda s: (GROUP_ORDER.get(series[s][0]["group"], 9), known.index(s) if s in known else len(known), s),
    )
    titled = set()
    for name in ordered:
        group = series[name]
        kind = group[0]["group"]
        colour, symbol = SERIES_STYLE.get(name, ("#333333", "circle"))
        legend_name = _series_name(name, group[0])
        for row, t in enumerate(temperatures, 1):
            pts = [c for c in group if c["temperature"] == t]
            pts.sort(key=lambda c: float(c["setting"]))  # the line follows the series' parameter
            if not pts:
                continue
            valid = [100 * c["valid_rate"] for c in pts]
            err = dict(
                type="data",
                symmetric=False,
                array=[100 * c["valid_ci"][1] - v for c, v in zip(pts, valid)],
                arrayminus=[v - 100 * c["valid_ci"][0] for c, v in zip(pts, valid)],
                thickness=1,
                width=2,
            )
            hover = [_hover(c) for c in pts]
            text = [_point_text(c) for c in pts]
            for col, (cost, _, _) in enumerate(COSTS, 1):
                show = name not in titled
                titled.add(name)
                fig.add_trace(
                    go.Scatter(
                        x=[c["cost_per_token"][cost]["mean"] for c in pts],
                        y=valid,
                        error_y=err,
                        mode="lines+markers+text",
                        text=text,
                        textposition="top right",
                        textfont=dict(size=8, color=colour),
                        name=legend_name,
                        legendgroup=name,
                        legendgrouptitle=dict(text=kind) if show and name == _first_of(kind, ordered, series) else None,
                        showlegend=show,
                        line=dict(color=colour, width=1.2),
                        marker=dict(symbol=symbol, size=7, color=colour),
                        hovertemplate=hover,
                    ),
                    row=row,
                    col=col,
                )
    for row, t in enumerate(temperatures, 1):
        xs = [c["cost_per_token"]["calls"]["mean"] for c in cells if c["temperature"] == t]
        _target_region(fig, go, row, min(xs + [TARGET_CALLS]) / 1.5)
        for col, (_, title, ticks) in enumerate(COSTS, 1):
            fig.update_xaxes(
                type="log", title_text=title, tickvals=ticks, ticktext=[f"{v:g}" for v in ticks], row=row, col=col
            )
        fig.update_yaxes(
            title_text=f"T = {t:g}{' (greedy)' if t == 0 else ' (sampled)'}: valid % (95% Wilson)",
            range=[-3, 104],
            row=row,
            col=1,
        )
        fig.update_yaxes(range=[-3, 104], row=row, col=2)
        fig.update_yaxes(range=[-3, 104], row=row, col=3)
        fig.add_annotation(
            text=f"<b>{temperature_title(t, [c for c in cells if c['temperature'] == t])}</b>",
            xref="paper",
            yref=f"y{'' if row == 1 else 3 * (row - 1) + 1} domain",
            x=0.5,
            y=1.08,
            showarrow=False,
            font=dict(size=13),
        )
    fig.update_layout(
        title=dict(
            text=f"Embedded model, {GEN} tokens: valid samples vs cost per generated token "
            "(target: >= 99% valid at <= 0.5 sequential calls per token, shaded)",
            x=0.5,
        ),
        width=1700,
        height=520 * n_rows + 80,
        template="plotly_white",
        legend=dict(font=dict(size=10), x=1.01, y=1, tracegroupgap=6, groupclick="togglegroup"),
        margin=dict(t=110),
    )
    return fig


def _first_of(kind: str, ordered: list[str], series: dict) -> str:
    return next(s for s in ordered if series[s][0]["group"] == kind)


def _series_name(name: str, first: dict) -> str:
    if first["energy"] != "none":
        return f"low_confidence + {ENERGY_NAME.get(first['energy'], first['energy'])} (tokens/step)"
    return f"{first['strategy']} ({SETTING_NAME.get(first['strategy'], 'setting')})"


def _point_text(c: dict) -> str:
    return f"{c['setting']:g}" if isinstance(c["setting"], float) else str(c["setting"])


def _hover(c: dict) -> str:
    cost = c["cost_per_token"]
    lo, hi = c["valid_ci"]
    return (
        f"{c['label']}, T = {c['temperature']:g}<br>valid {100 * c['valid_rate']:.1f}% [{100 * lo:.1f}, "
        f"{100 * hi:.1f}] (n = {c['runs']})<br>sentences {100 * c['sentence_rate']:.1f}%<br>"
        f"{cost['calls']['mean']:.3f} calls/token<br>{cost['sequences']['mean']:.3f} sequences/token<br>"
        f"{cost['wall_ms']['mean']:.2f} ms/token<br>{c['tokens_per_step']:.2f} tokens/step<br>"
        f"AR NLL {c['ar_nll']:.3f}<extra></extra>"
    )


def _target_region(fig, go, row: int, x_min: float) -> None:
    """The target region on the calls panel: a shaded band and dashed edges (scatter traces: data units)."""
    edge = dict(color="rgba(0,150,0,0.8)", width=1.5, dash="dash")
    kwargs = dict(row=row, col=1)
    fig.add_trace(
        go.Scatter(
            x=[x_min, TARGET_CALLS, TARGET_CALLS, x_min],
            y=[99, 99, 104, 104],
            fill="toself",
            fillcolor="rgba(0,200,0,0.18)",
            line=dict(width=0),
            mode="lines",
            hoverinfo="skip",
            showlegend=False,
        ),
        **kwargs,
    )
    fig.add_trace(
        go.Scatter(
            x=[x_min, TARGET_CALLS, TARGET_CALLS],
            y=[99, 99, -3],
            mode="lines",
            line=edge,
            name="target: >= 99% valid at <= 0.5 calls/token",
            legendgroup="target",
            showlegend=row == 1,
            hoverinfo="skip",
        ),
        **kwargs,
    )


# ----------------------------------------------------------------------------------------- main


def png(html: Path, out: Path, width: int = 1720, height: int = 1200) -> None:
    """Render the HTML figure with Debian's Chromium (Playwright) and save it as a PNG."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(html.as_uri())
        page.wait_for_selector(".main-svg")
        page.locator(".plotly-graph-div").screenshot(path=str(out))
        browser.close()


def report(
    frontier_raw: Path,
    auc_raw: Path | None,
    docs: Path,
    *,
    write_figure: bool = True,
    write_png: bool = True,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    quiet: bool = False,
) -> dict:
    runs, skipped = load(frontier_raw)
    cells = sorted((summarise_cell(g, resamples, seed) for g in by_key(runs).values()), key=cell_order)
    target = target_check(cells)
    summary: dict = {
        "gen_length": GEN,
        "runs": len(runs),
        "unreadable_lines": skipped,
        "bootstrap": {"resamples": resamples, "seed": seed, "over": "runs"},
        "cells": cells,
        "target": target,
        "auc": None,
    }
    auc_runs, auc_skipped = load(auc_raw) if auc_raw is not None else ([], 0)
    docs.mkdir(parents=True, exist_ok=True)
    if auc_runs:
        summary["auc"] = auc_report(auc_runs, resamples, seed)
        summary["auc"] |= {"runs": len(auc_runs), "unreadable_lines": auc_skipped}
        (docs / "auc_table.md").write_text(auc_markdown(summary["auc"]))
    (docs / "sweep_summary.json").write_text(json.dumps(summary, indent=1))
    table = markdown_table(cells, target)
    (docs / "sweep_table.md").write_text(table)
    if write_figure and cells:
        fig = figure(cells)
        html = docs / "sweep.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True)
        if write_png:
            png(html, docs / "sweep.png", width=fig.layout.width + 20, height=fig.layout.height + 20)
    if not quiet:
        print(f"{len(runs)} runs in {len(cells)} cells ({skipped} unreadable lines skipped)")
        for entry in target["temperatures"]:
            print("\n".join(entry["statement"]))
        if summary["auc"]:
            print(auc_markdown(summary["auc"]))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results = ROOT / "bench" / "results"
    parser.add_argument("--frontier", type=Path, default=results / "frontier_raw")
    parser.add_argument("--auc", type=Path, default=results / "auc_raw")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--no-png", action="store_true", help="write sweep.html but skip the Chromium render")
    parser.add_argument("--no-figure", action="store_true", help="skip sweep.html and sweep.png")
    args = parser.parse_args(argv)
    report(
        args.frontier,
        args.auc,
        args.docs,
        write_figure=not args.no_figure,
        write_png=not (args.no_png or args.no_figure),
        resamples=args.resamples,
        seed=args.seed,
    )


if __name__ == "__main__":
    main()
