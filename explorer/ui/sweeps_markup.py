"""What the Sweeps tab says in words and tables (pure: the store's dicts in, rows or escaped HTML out):
the list of sweeps, a sweep's head line, its per-cell table, a cell's runs, and the runs another
run can be compared with. Labels and names come from a spec file someone wrote: every one that
reaches markup (the head, the figure's titles, legend and hover labels) is escaped here."""

from __future__ import annotations

import html
import math

from explorer.sweeps.stats import interval_text
from explorer.sweeps.summary import SweepSummary

EMPTY_NOTE = (
    "No sweeps in this store yet. A sweep decodes a grid of settings (cells) with many seeds each and "
    "stores every run: start one with `python -m explorer sweep SPEC.toml` on this server's database "
    "(`--db URL`; see docs/scale.md for the spec and for running it on a Ray cluster), then press **Refresh**."
)
LIST_NOTE = (
    "{n} in this store, newest first. **Click a sweep's row** (or pick it in the list) to see its "
    "quality-vs-cost figure and its cells; **Refresh** reads the progress of a sweep still running."
)
SWEEP_COLUMNS = ["id", "name", "created (UTC)", "cells", "done / planned", "failed", "running"]
# Quality first (what people compare), then cost; a metric the spec did not measure reads "not measured".
CELL_COLUMNS = [
    "cell id", "cell", "model", "T", "done / seeds", "valid % [95% CI]", "AR NLL [95% CI]",
    "tokens/step", "calls/token [95% CI]", "ms/token [95% CI]", "failed",
]  # fmt: skip
CELL_WIDTHS = ["56px", "210px", "90px", "40px", "72px", "132px", "140px", "76px", "132px", "120px", "56px"]
QUALITY = {  # metric of the spec -> (cell key, interval key, format, scale)
    "checker": ("valid_rate", "valid_ci", ".1f", 100.0),
    "ar_nll": ("ar_nll", "ar_nll_ci", ".3f", 1.0),
}
RUN_COLUMNS = ["seed", "run id", "status", "valid", "sentences ok", "AR NLL", "steps", "text"]
RUN_WIDTHS = ["64px", "72px", "110px", "64px", "100px", "80px", "64px", "640px"]
MAX_CELL_RUNS = 1000  # rows in a cell's runs table (a cell may have thousands of seeds)
TEXT_CHARS = 90


# ---- the list of sweeps -------------------------------------------------------------------------------
def sweep_rows(sweeps: list[dict]) -> list[list]:
    """One row per sweep (list_sweeps' dicts), in SWEEP_COLUMNS order."""
    return [
        [
            s["id"],
            s["name"],
            f"{s['created_at']:%Y-%m-%d %H:%M:%S}",
            s["cells"],
            f"{s['done']} / {s['planned']}",
            s["failed"],
            s["running"],
        ]
        for s in sweeps
    ]


def sweep_choices(sweeps: list[dict]) -> list[tuple[str, int]]:
    """(label, id) for the sweep picker: '#3 · small · 12 / 16 done'."""
    return [(f"#{s['id']} · {s['name']} · {s['done']} / {s['planned']} done", int(s["id"])) for s in sweeps]


def list_note(sweeps: list[dict]) -> str:
    """Markdown above the list: how to start a sweep when there is none, else what to do."""
    if not sweeps:
        return EMPTY_NOTE
    return LIST_NOTE.format(n="1 sweep" if len(sweeps) == 1 else f"{len(sweeps)} sweeps")


# ---- one sweep ------------------------------------------------------------------------------------------
def sweep_head(summary: SweepSummary) -> str:
    """The line above the figure (escaped HTML): the sweep, its progress and how to read what follows."""
    sweep, spec = summary.sweep, summary.sweep["spec"]
    seeds = len(spec.get("seed_list", []))
    metrics = ", ".join({"checker": "the story checker", "ar_nll": "AR NLL"}.get(m, m) for m in summary.metrics)
    progress = (
        f"{summary.done} of {summary.planned} runs done ({summary.failed} failed, {summary.running} running); "
        f"{len(summary.cells)} cells × {seeds} seeds; generation length {spec.get('gen_length')}; "
        f"quality measured by {metrics or 'nothing (no metric in the spec)'}."
    )
    how = (
        "Each point of the figure is a cell (the mean over its seeds, the bar its 95% interval); a line joins the "
        "cells of one series along its varying setting. Pick a cell (a row of the table, or the list under it) to "
        "list its runs, open one in Decode or send two to Compare."
    )
    name = html.escape(f"Sweep {sweep['id']}: {sweep['name']}")
    return (
        f'<div class="sweep-head"><b>{name}</b> · {html.escape(progress)}'
        f'<div class="sweep-how">{html.escape(how)}</div></div>'
    )


def cell_rows(summary: SweepSummary) -> list[list]:
    """One row per cell in spec order, in CELL_COLUMNS order ('-' where no run is done yet)."""
    rows = []
    for c in summary.cells:
        head = [c["cell_id"], c["label"], c["model"], f"{c['temperature']:g}", f"{c['runs']} / {c['seeds']}"]
        if not c["runs"]:
            rows.append([*head, *["-"] * 5, c["failed"]])
            continue
        cost = c["cost_per_token"]
        quality = [_quality(summary, c, metric) for metric in QUALITY]
        costs = [
            f"{c['tokens_per_step']:.2f}",
            interval_text(cost["calls"]["mean"], cost["calls"]["ci"]),
            interval_text(cost["wall_ms"]["mean"], cost["wall_ms"]["ci"], ".2f"),
        ]
        rows.append([*head, *quality, *costs, c["failed"]])
    return rows


def _quality(summary: SweepSummary, cell: dict, metric: str) -> str:
    if metric not in summary.metrics:
        return "not measured"
    key, ci, fmt, scale = QUALITY[metric]
    return interval_text(cell[key], cell[ci], fmt, scale)


def cell_choices(summary: SweepSummary) -> list[tuple[str, int]]:
    """(label, cell id) for the cell picker: 'low_confidence (tokens_per_step = 4) · embedded · T 0 · 3 / 3'."""
    return [
        (f"{c['label']} · {c['model']} · T {c['temperature']:g} · {c['runs']} / {c['seeds']} done", int(c["cell_id"]))
        for c in summary.cells
    ]


# ---- a cell's runs ------------------------------------------------------------------------------------------
def run_rows(rows: list[dict]) -> list[list]:
    """One row per (cell, seed) of sweep_rows, in RUN_COLUMNS order, at most MAX_CELL_RUNS."""
    return [_run_row(r) for r in rows[:MAX_CELL_RUNS]]


def _run_row(r: dict) -> list:
    metrics = r.get("metrics") or {}
    valid = metrics.get("valid")
    sentences = f"{metrics['valid_sentences']} / {metrics['sentences']}" if "sentences" in metrics else ""
    nll = metrics.get("ar_nll")
    status = r["status"] if r["status"] != "failed" else f"failed: {r.get('error') or ''}"
    text = " ".join(str(r.get("final_text") or "").split())
    return [
        r["seed"],
        "" if r["run_id"] is None else r["run_id"],
        _clip(status, 120),
        "" if valid is None else ("yes" if valid else "no"),
        sentences,
        "" if not isinstance(nll, int | float) or math.isnan(nll) else f"{nll:.3f}",
        metrics.get("steps", ""),
        _clip(text, TEXT_CHARS),
    ]


def runs_note(cell: dict | None, rows: list[dict]) -> str:
    """Escaped HTML above a cell's runs: which cell, how many runs, what to do."""
    if cell is None:
        return '<div class="sweep-runs-note">Pick a cell to list its runs.</div>'
    clipped = f" (the first {MAX_CELL_RUNS} shown)" if len(rows) > MAX_CELL_RUNS else ""
    what = html.escape(f"{cell['label']} on {cell['model']}, T = {cell['temperature']:g}")
    return (
        f'<div class="sweep-runs-note"><b>{what}</b>: {len(rows)} runs{clipped}. Click a row to make its run '
        "run A, then open it in Decode, or pick run B (the same seed in another cell, or another seed of this "
        "cell) and compare the two.</div>"
    )


def compare_choices(rows: list[dict], cells: dict[int, str], run_id: int) -> list[tuple[str, int]]:
    """What run `run_id` (one of the sweep's `rows`) can be compared with: the same seed in the other
    cells first (one setting changed), then the other seeds of its own cell. (label, run id)."""
    own = next((r for r in rows if r["run_id"] == run_id), None)
    if own is None:
        return []
    same_seed = [r for r in rows if r["seed"] == own["seed"] and r["cell_id"] != own["cell_id"]]
    same_cell = [r for r in rows if r["cell_id"] == own["cell_id"] and r["run_id"] != run_id]
    out = [(f"#{r['run_id']} · same seed {r['seed']} · {cells.get(r['cell_id'], '?')}", r) for r in same_seed]
    out += [(f"#{r['run_id']} · this cell, seed {r['seed']}", r) for r in same_cell[:MAX_CELL_RUNS]]
    return [(label, int(r["run_id"])) for label, r in out if r["run_id"] is not None and r["status"] == "done"]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
