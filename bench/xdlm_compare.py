"""MDLM vs XDLM on the embedded story grammar: sample validity as the number of steps T shrinks.

    python bench/xdlm_compare.py [--seeds 300] [--steps 4 8 16 32 64] [--workers 2] [--threads 1]
                                 [--cells mdlm:xdlm_ancestral ... mdlm:xdlm_revise@0.1] [--out docs] [--no-png]

The XDLM paper (arXiv 2602.01362) claims that mixing uniform noise into the mask kernel
(k = 0.1) lets a model revise its tokens and so degrade less than MDLM (k = 0) at few steps,
at a small cost in likelihood. Here both embedded models (same transformer, same 6000 x 32
training budget, same vocabulary) decode prompt "once upon a time" + 64 tokens in one block at
temperature 1, seeds 0..n-1, through the explorer's engine (`iter_steps`, no store, violations
off), with

- `xdlm_ancestral`: XDLM's ancestral sampler, T steps + a final noise-removal step; xdlm_k = 0 on
  the MDLM (exactly MDLM's ancestral sampler), 0.1 on the XDLM;
- `xdlm_revise`: LLaDA-XDLM's low-confidence unmasking with a revision budget k / (1 - k);
  xdlm_k = 0 on the MDLM (plain low-confidence: the LLaDA-style baseline), 0.1 on the XDLM;
- `low_confidence` on both, as a reference.

A cell `model:sampler@k` runs an xdlm_* sampler with another k than the model's own; by default
two such controls run, the MDLM with both xdlm_* samplers at k = 0.1 (does the sampler alone
help a model that was not trained to revise?). They are tabled and drawn, not compared.

Every sample is checked with the exact grammar checker (models/checker.py). Per cell: valid
sample rate and grammatical-sentence rate with 95% Wilson intervals (the sentence interval
treats sentences as independent, so it is too narrow where a sample's sentences are correlated),
revisions and re-masks per sample (mean, 95% normal interval), steps per sample. Per T: the
XDLM - MDLM difference of valid rates (Newcombe's 95% interval) and each model's drop from the
largest T. The models' held-out NELBO (the "understanding" side) comes from their train logs.

Writes <out>/xdlm_comparison.json (every number, per-seed outcomes included),
<out>/xdlm_comparison_table.md and <out>/xdlm_comparison.png (Plotly, rendered by Chromium
through Playwright as bench/sweep_report.py does); prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch
from bench_violations import cpu_model

from models import EMBEDDED_DIR
from models.checker import check
from models.evaluate import PROMPT, summarise, wilson_interval

Z95 = 1.96
MODELS = {"mdlm": "embedded", "xdlm": "embedded-xdlm"}  # short name -> registry name
MODEL_K = {"mdlm": 0.0, "xdlm": 0.1}  # the uniform share each was trained with (xdlm: xdlm_kernel.json)
SAMPLERS = ("xdlm_ancestral", "xdlm_revise", "low_confidence")
# Every model x sampler at the model's own k, and two controls: the MDLM with the XDLM's samplers
# at k = 0.1 (does the sampler alone help a model not trained for revisions?).
CONTROLS = ("mdlm:xdlm_ancestral@0.1", "mdlm:xdlm_revise@0.1")
DEFAULT_CELLS = tuple(f"{m}:{s}" for m in MODELS for s in SAMPLERS) + CONTROLS
SAMPLER_LABEL = {
    "xdlm_ancestral": "ancestral",
    "xdlm_revise": "low-conf. + revisions",
    "low_confidence": "low-confidence",
}
MODEL_COLOUR = {"mdlm": "#1f77b4", "xdlm": "#d62728"}
CONTROL_COLOUR = "#7f7f7f"  # a model run at another k than its own
SAMPLER_DASH = {"xdlm_ancestral": "solid", "xdlm_revise": "dash", "low_confidence": "dot"}
SAMPLER_SYMBOL = {"xdlm_ancestral": "circle", "xdlm_revise": "square", "low_confidence": "diamond"}


@dataclass(frozen=True)
class Task:
    model: str  # mdlm | xdlm
    sampler: str
    k: float | None  # xdlm_k of an xdlm_* sampler (None: low_confidence)
    steps: int
    seeds: tuple[int, ...]
    gen_length: int
    threads: int
    directory: str  # the embedded models' folder (EMBEDDED_DIR unless a test says otherwise)


def knobs(k: float | None) -> dict:
    """The strategy knobs of a cell: xdlm_k (the model's own k unless the cell says otherwise)."""
    return {} if k is None else {"xdlm_k": k}


# One process holds each denoiser once (a worker decodes many tasks).
_DENOISERS: dict[tuple[str, str], object] = {}


def denoiser_for(model: str, directory: str):
    key = (model, directory)
    if key not in _DENOISERS:
        from explorer.adapters.embedded import load_embedded

        _DENOISERS[key] = load_embedded(directory, "cpu", MODELS[model], "mdlm" if model == "mdlm" else "xdlm")
    return _DENOISERS[key]


def model_k(model: str, directory: str | Path) -> float:
    if model == "mdlm":
        return 0.0
    from explorer.adapters.embedded import xdlm_k

    return xdlm_k(directory, "xdlm")


def run_task(task: Task) -> list[dict]:
    """Decode one cell's seeds one sequence at a time; one row per seed."""
    from explorer.decoding.config import DecodeConfig
    from explorer.decoding.engine import iter_steps

    torch.set_num_threads(task.threads)
    denoiser = denoiser_for(task.model, task.directory)
    prompt = denoiser.encode(PROMPT)
    extra = knobs(task.k)
    rows = []
    for seed in task.seeds:
        config = DecodeConfig(
            gen_length=task.gen_length,
            steps=task.steps,
            strategy=task.sampler,
            temperature=1.0,
            seed=seed,
            violations=False,
            **extra,
        )
        generated = [denoiser.mask_id] * task.gen_length
        n_steps = revisions = remasks = 0
        for record in iter_steps(denoiser, prompt, config):
            for position, token in zip(record.committed.tolist(), record.tokens.tolist()):
                generated[position] = token
            for position in record.remasked.tolist():
                generated[position] = denoiser.mask_id
            n_steps += 1
            revisions += record.n_revised
            remasks += int(record.remasked.size)
        rows.append(
            {
                "seed": seed,
                "text": denoiser.decode(prompt + generated),
                "masks_left": generated.count(denoiser.mask_id),
                "steps": n_steps,
                "revisions": revisions,
                "remasks": remasks,
            }
        )
    return rows


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% normal-approximation interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def newcombe_difference(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float, float]:
    """p1 - p2 with Newcombe's hybrid-score 95% interval (method 10), from the two Wilson intervals."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1)
    l2, u2 = wilson_interval(x2, n2)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def summarise_cell(model: str, sampler: str, k: float | None, own_k: float, steps: int, rows: list[dict]) -> dict:
    rows = sorted(rows, key=lambda r: r["seed"])
    texts = [r["text"] for r in rows]
    base = summarise(texts)
    results = [check(t) for t in texts]
    sentences = sum(r.n_sentences for r in results)
    valid_sentences = sum(r.n_valid_sentences for r in results)
    s_low, s_high = wilson_interval(valid_sentences, sentences)
    rev, rev_low, rev_high = mean_interval([r["revisions"] for r in rows])
    rem, rem_low, rem_high = mean_interval([r["remasks"] for r in rows])
    return {
        "model": model,
        "model_name": MODELS[model],
        "sampler": sampler,
        "xdlm_k": k,
        "own_k": k is None or k == own_k,  # False: a control run at another k than the model's
        "steps": steps,
        "samples": base["samples"],
        "valid": base["valid"],
        "valid_rate": base["valid_rate"],
        "valid_ci95": base["ci95"],
        "sentences": sentences,
        "valid_sentences": valid_sentences,
        "sentence_rate": round(valid_sentences / max(1, sentences), 4),
        "sentence_ci95": [round(s_low, 4), round(s_high, 4)],
        "revisions_per_sample": round(rev, 3),
        "revisions_ci95": [round(rev_low, 3), round(rev_high, 3)],
        "remasks_per_sample": round(rem, 3),
        "remasks_ci95": [round(rem_low, 3), round(rem_high, 3)],
        "steps_per_sample": round(sum(r["steps"] for r in rows) / len(rows), 3),
        "masks_left": sum(r["masks_left"] for r in rows),
        "violations_by_kind": base["violations_by_kind"],
        "example_invalid": base["example_invalid"],
        "per_seed": {
            "valid": [int(r.valid) for r in results],
            "revisions": [r["revisions"] for r in rows],
            "remasks": [r["remasks"] for r in rows],
        },
    }


def comparisons(cells: list[dict]) -> list[dict]:
    """Per sampler and T: XDLM - MDLM valid-rate difference (Newcombe 95%), and each model's
    drop from the sampler's largest T (also Newcombe 95%; the two T levels are separate runs)."""
    by = {(c["model"], c["sampler"], c["steps"]): c for c in cells if c["own_k"]}
    out = []
    for sampler in SAMPLERS:
        levels = sorted({t for (_, s, t) in by if s == sampler})
        if not levels or not all((m, sampler, t) in by for m in MODELS for t in levels):
            continue
        top = levels[-1]
        for t in levels:
            x, m = by[("xdlm", sampler, t)], by[("mdlm", sampler, t)]
            d, low, high = newcombe_difference(x["valid"], x["samples"], m["valid"], m["samples"])
            row = {
                "sampler": sampler,
                "steps": t,
                "reference_steps": top,
                "xdlm_minus_mdlm": round(d, 4),
                "xdlm_minus_mdlm_ci95": [round(low, 4), round(high, 4)],
                "verdict": "xdlm higher" if low > 0 else "mdlm higher" if high < 0 else "no clear difference",
            }
            for name, cell in (("xdlm", x), ("mdlm", m)):
                ref = by[(name, sampler, top)]
                drop, d_low, d_high = newcombe_difference(ref["valid"], ref["samples"], cell["valid"], cell["samples"])
                row[f"{name}_drop"] = round(drop, 4)
                row[f"{name}_drop_ci95"] = [round(d_low, 4), round(d_high, 4)]
            out.append(row)
    return out


def understanding(directory: Path) -> dict:
    """Held-out NELBO (nats/token, the same held-out windows) from each model's train log."""
    out = {}
    for model, stem in (("mdlm", "mdlm"), ("xdlm", "xdlm")):
        path = directory / f"{stem}_train_log.json"
        if path.exists():
            log = json.loads(path.read_text())
            out[model] = {
                "held_out_nelbo": log["held_out_nats_per_token"],
                "train_steps": log["train"]["steps"],
                "batch_size": log["train"]["batch_size"],
                "k": log["train"].get("k", 0.0),
                "trained_on": log.get("device_name", log.get("device")),
                "train_seconds": log.get("train_seconds"),
            }
        else:
            out[model] = None  # e.g. the XDLM before its real weights are in place
    return out


def machine_info(threads: int, workers: int) -> dict:
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "threads_per_worker": threads,
        "workers": workers,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _pct(rate: float, ci: list[float]) -> str:
    return f"{100 * rate:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def markdown_table(cells: list[dict]) -> str:
    lines = [
        "| model | sampler | xdlm_k | T | steps run | valid % [95% CI] | grammatical sentences % [95% CI] "
        "| revisions / sample [95% CI] | re-masks / sample [95% CI] |",
        "|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for c in sorted(cells, key=lambda c: (SAMPLERS.index(c["sampler"]), not c["own_k"], c["model"], c["steps"])):
        k = "-" if c["xdlm_k"] is None else f"{c['xdlm_k']:g}"
        model = c["model"].upper() + ("" if c["own_k"] else " (control)")
        lines.append(
            f"| {model} | {c['sampler']} | {k} | {c['steps']} | {c['steps_per_sample']:g} | "
            f"{_pct(c['valid_rate'], c['valid_ci95'])} ({c['valid']}/{c['samples']}) | "
            f"{_pct(c['sentence_rate'], c['sentence_ci95'])} | "
            f"{c['revisions_per_sample']:.2f} [{c['revisions_ci95'][0]:.2f}, {c['revisions_ci95'][1]:.2f}] | "
            f"{c['remasks_per_sample']:.2f} [{c['remasks_ci95'][0]:.2f}, {c['remasks_ci95'][1]:.2f}] |"
        )
    return "\n".join(lines)


def comparison_table(rows: list[dict]) -> str:
    lines = [
        "| sampler | T | XDLM - MDLM valid, pp [95% CI] | verdict | MDLM drop from T_max, pp [95% CI] "
        "| XDLM drop from T_max, pp [95% CI] |",
        "|---|---:|---|---|---|---|",
    ]
    pp = lambda v, ci: f"{100 * v:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {pp(r['xdlm_minus_mdlm'], r['xdlm_minus_mdlm_ci95'])} | "
            f"{r['verdict']} | {pp(r['mdlm_drop'], r['mdlm_drop_ci95'])} | {pp(r['xdlm_drop'], r['xdlm_drop_ci95'])} |"
        )
    return "\n".join(lines)


def understanding_table(info: dict) -> str:
    lines = ["| model | k | held-out NELBO (nats/token) | training |", "|---|---:|---:|---|"]
    for model, entry in info.items():
        if entry is None:
            lines.append(f"| {model.upper()} | - | (no train log yet) | - |")
            continue
        lines.append(
            f"| {model.upper()} | {entry['k']:g} | {entry['held_out_nelbo']:.4f} | {entry['train_steps']} x "
            f"{entry['batch_size']} windows on {entry['trained_on']}, {entry['train_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def figure(cells: list[dict], seeds: int, gen_length: int):
    """Valid rate, grammatical-sentence rate and revisions per sample against T (log2 axis)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=3,
        horizontal_spacing=0.07,
        subplot_titles=(
            "Fully valid samples",
            "Grammatical sentences (interval treats sentences as independent)",
            "Revisions per sample (visible token replaced)",
        ),
    )
    levels = sorted({c["steps"] for c in cells})
    groups: dict[tuple[str, str], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["model"], c["sampler"], c["xdlm_k"]), []).append(c)
    ordered = sorted(groups.items(), key=lambda g: (SAMPLERS.index(g[0][1]), not g[1][0]["own_k"], g[0][0]))
    for index, ((model, sampler, k), group) in enumerate(ordered):
        group.sort(key=lambda c: c["steps"])
        # A small sideways shift per line (x is on a log axis) keeps overlapping interval bars apart.
        shift = 2 ** (0.04 * (index - (len(ordered) - 1) / 2))
        control = not group[0]["own_k"]
        name = f"{model.upper()} · {SAMPLER_LABEL[sampler]}" + ("" if k is None else f" (k = {k:g})")
        name += " [control]" if control else ""
        style = dict(
            mode="lines+markers",
            legendgroup=name,
            name=name,
            line=dict(color=CONTROL_COLOUR if control else MODEL_COLOUR[model], dash=SAMPLER_DASH[sampler], width=2),
            marker=dict(symbol=SAMPLER_SYMBOL[sampler], size=8),
        )
        x = [c["steps"] * shift for c in group]

        def bars(values, lows, highs):
            return dict(
                type="data",
                symmetric=False,
                array=[h - v for v, h in zip(values, highs)],
                arrayminus=[v - lo for v, lo in zip(values, lows)],
                thickness=1.2,
                width=4,
            )

        panels = (
            ("valid_rate", "valid_ci95", 100),
            ("sentence_rate", "sentence_ci95", 100),
            ("revisions_per_sample", "revisions_ci95", 1),
        )
        for col, (key, ci, scale) in enumerate(panels, start=1):
            y = [scale * c[key] for c in group]
            err = bars(y, [scale * c[ci][0] for c in group], [scale * c[ci][1] for c in group])
            fig.add_trace(go.Scatter(x=x, y=y, error_y=err, showlegend=col == 1, **style), row=1, col=col)
    for col in (1, 2, 3):
        fig.update_xaxes(
            type="log",
            title_text="denoising steps T (log2 scale; ancestral runs T + 1 passes)",
            tickvals=levels,
            ticktext=[str(t) for t in levels],
            row=1,
            col=col,
        )
    fig.update_yaxes(title_text="valid samples (%, 95% Wilson CI)", range=[-3, 103], row=1, col=1)
    fig.update_yaxes(title_text="valid sentences (%, 95% Wilson CI)", range=[-3, 103], row=1, col=2)
    fig.update_yaxes(title_text="revisions per sample (mean, 95% CI)", row=1, col=3)
    fig.update_layout(
        title=dict(
            text=f"MDLM (k = 0) vs XDLM (k = 0.1) on the embedded story grammar: "
            f'"{PROMPT}" + {gen_length} tokens, temperature 1, {seeds} seeds per point',
            x=0.5,
        ),
        width=1700,
        height=560,
        template="plotly_white",
        legend=dict(font=dict(size=11), orientation="h", x=0.5, xanchor="center", y=-0.2),
        margin=dict(b=150),
    )
    return fig


def render_png(fig, out: Path) -> None:
    """The Plotly figure as a PNG, rendered by Debian's Chromium through Playwright (no kaleido here)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "figure.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium")
            page = browser.new_page(viewport={"width": fig.layout.width + 20, "height": fig.layout.height + 20})
            page.goto(html.as_uri())
            page.wait_for_selector(".main-svg")
            page.locator(".plotly-graph-div").screenshot(path=str(out))
            browser.close()


def parse_cells(specs: list[str], directory: Path) -> list[tuple[str, str, float | None]]:
    """model:sampler[@k] -> (model, sampler, xdlm_k); k defaults to the model's own."""
    cells = []
    for spec in specs:
        model, _, rest = spec.partition(":")
        sampler, _, k_text = rest.partition("@")
        if model not in MODELS or sampler not in SAMPLERS or (k_text and not sampler.startswith("xdlm_")):
            raise SystemExit(
                f"bad cell {spec!r}: want model:sampler[@k], model in {list(MODELS)}, sampler in {SAMPLERS} "
                "(@k only with an xdlm_* sampler)"
            )
        k = None if not sampler.startswith("xdlm_") else float(k_text) if k_text else model_k(model, directory)
        if (model, sampler, k) in cells:
            raise SystemExit(f"cell {spec!r} given twice")
        cells.append((model, sampler, k))
    return cells


def tasks_for(args, cells: list[tuple[str, str]]) -> list[Task]:
    """Chunks of seeds per (model, sampler, T), the longest first, so workers stay busy to the end."""
    tasks = []
    for model, sampler, k in cells:
        for steps in args.steps:
            for start in range(0, args.seeds, args.chunk):
                seeds = tuple(range(start, min(args.seeds, start + args.chunk)))
                tasks.append(Task(model, sampler, k, steps, seeds, args.gen_length, args.threads, str(args.dir)))
    return sorted(tasks, key=lambda t: -t.steps * len(t.seeds))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=300, help="samples per cell, seeds 0..n-1")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="T levels")
    parser.add_argument("--cells", nargs="+", default=list(DEFAULT_CELLS), help="model:sampler pairs")
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=1, help="processes (1: decode in this one)")
    parser.add_argument("--chunk", type=int, default=50, help="seeds per task handed to a worker")
    parser.add_argument("--dir", type=Path, default=EMBEDDED_DIR, help="the embedded models' folder")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the JSON, table and PNG go")
    parser.add_argument("--no-png", action="store_true", help="skip rendering the figure (needs Chromium)")
    args = parser.parse_args(argv)
    if any(t < 1 or args.gen_length % t for t in args.steps):
        parser.error(f"every T must divide gen_length {args.gen_length}: {args.steps}")
    args.steps = sorted(set(args.steps))
    cells = parse_cells(args.cells, args.dir)
    torch.set_num_threads(args.threads)
    command = "python bench/xdlm_compare.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    machine = machine_info(args.threads, args.workers)
    print(f"command: {command}")
    print(
        f"machine: {machine['cpus']} CPUs ({machine['cpus_usable']} usable, {machine['cpu_model']}), "
        f"torch {machine['torch']}, {args.workers} worker(s) x {args.threads} thread(s)"
    )
    began = time.perf_counter()
    tasks = tasks_for(args, cells)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            chunks = list(pool.map(run_task, tasks))
    else:
        chunks = [run_task(t) for t in tasks]
    decode_seconds = time.perf_counter() - began
    rows_by: dict[tuple, list[dict]] = {}
    for task, rows in zip(tasks, chunks):
        rows_by.setdefault((task.model, task.sampler, task.k, task.steps), []).extend(rows)
    ks = {model: model_k(model, args.dir) for model in MODELS}
    summary = [
        summarise_cell(model, sampler, k, ks[model], steps, rows_by[(model, sampler, k, steps)])
        for model, sampler, k in cells
        for steps in args.steps
    ]
    compared = comparisons(summary)
    info = understanding(args.dir)
    steps_run = sum(row["steps"] for rows in rows_by.values() for row in rows)
    timing = {
        "decode_seconds": round(decode_seconds, 1),
        "samples": sum(len(r) for r in rows_by.values()),
        "denoiser_steps": steps_run,
        "ms_per_step_per_worker": round(1000 * decode_seconds * args.workers / max(1, steps_run), 3),
    }
    report = {
        "command": command,
        "machine": machine,
        "prompt": PROMPT,
        "gen_length": args.gen_length,
        "temperature": 1.0,
        "block": "one block of gen_length",
        "seeds": args.seeds,
        "steps": args.steps,
        "models": {m: {"name": MODELS[m], "k": ks[m]} for m in MODELS},
        "understanding": info,
        "cells": summary,
        "comparisons": compared,
        "timing": timing,
        "identical_samples": identical_pairs(rows_by),
    }
    table = markdown_table(summary)
    versus = comparison_table(compared)
    held_out = understanding_table(info)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "xdlm_comparison.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "xdlm_comparison_table.md").write_text(
        "\n\n".join(
            [
                f"<!-- written by: {command} -->",
                held_out,
                table,
                versus,
            ]
        )
        + "\n"
    )
    if not args.no_png:
        render_png(figure(summary, args.seeds, args.gen_length), args.out / "xdlm_comparison.png")
    print(held_out, table, versus, sep="\n\n")
    print(
        f"\n{timing['samples']} samples, {steps_run} denoiser steps in {decode_seconds:.1f} s "
        f"({timing['ms_per_step_per_worker']} ms per step per worker)"
    )
    for pair in report["identical_samples"]:
        print(f"identical samples: {pair}")
    return report


def identical_pairs(rows_by: dict[tuple, list[dict]]) -> list[str]:
    """Cells of one model and T whose samples are the same text seed by seed (MDLM's
    xdlm_revise at k = 0 is plain low-confidence, so it should match low_confidence)."""
    out = []
    keys = list(rows_by)
    label = lambda key: key[1] + ("" if key[2] is None else f"@{key[2]:g}")  # noqa: E731
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if a[0] == b[0] and a[3] == b[3]:
                ta = [r["text"] for r in sorted(rows_by[a], key=lambda r: r["seed"])]
                tb = [r["text"] for r in sorted(rows_by[b], key=lambda r: r["seed"])]
                if ta == tb:
                    out.append(f"{a[0]} T={a[3]}: {label(a)} == {label(b)}")
    return out


if __name__ == "__main__":
    main()
