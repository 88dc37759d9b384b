"""What the Compare tab says in words and tables (pure: runs in, escaped HTML or text out): the
note on where the runs part, the outline classes of the token views, each run's header, and the
full-width summary table (checker verdict, violations, AR-ness, forward passes, wall time...)."""

from __future__ import annotations

import html
import math
from datetime import datetime

from explorer.branching.alternatives import CHECKED_MODELS
from explorer.services import Services
from explorer.store.arrays import RunArrays
from explorer.ui.logic import forward_passes, summarise, token_text_for
from explorer.views import align
from explorer.views import figures as plots
from explorer.views.speed import speed_of
from explorer.views.verdict import final_verdict

LETTERS = "ABCD"  # run A is the first run picked, B the second...
SHOWN_POSITIONS = 12  # positions named in the note; more are counted
DIFF_LABEL = "differs between the runs here"
LEGEND = (
    '<div class="compare-legend"><span class="compare-swatch diff-first">word</span> = differs, and already '
    'differed where the runs first parted · <span class="compare-swatch diff-later">word</span> = differs, but did '
    "not where they first parted (a later difference)</div>"
)


def is_number(value) -> bool:
    """A real number (not a bool), as stored in a run's config."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def step_number(arrays: RunArrays, k: int) -> int:
    """The step number of a run's k-th recorded step (-1: before any step)."""
    return -1 if k < 0 else int(arrays.steps[k])


def outline_kinds(view: str, parted: set[int], first_label: str) -> str:
    """A compare token view's outlined (`diff`) positions split in two: `diff-first` where the
    position is one where the runs first parted (its tooltip says so), `diff-later` elsewhere. The
    view holds one `<span class="tok` per position, in order, before its legend."""
    line, legend_tag, rest = view.partition('<div class="tokens-legend">')
    pieces = line.split('<span class="tok')
    plain, marked = html.escape(DIFF_LABEL, quote=True), html.escape(first_label, quote=True)
    for i in range(1, len(pieces)):
        classes, quote, tail = pieces[i].partition('"')
        if "diff" not in classes.split():
            continue
        position = i - 1
        if position in parted:
            pieces[i] = f"{classes} diff-first{quote}{tail.replace(plain, marked, 1)}"
        else:
            pieces[i] = f"{classes} diff-later{quote}{tail}"
    return '<span class="tok'.join(pieces) + legend_tag + rest


def run_head(i: int, arrays: RunArrays, k: int) -> str:
    """The line above a run's token view: its letter, id and settings, and the step shown."""
    run = arrays.run
    config = run.get("config") or {}
    settings = [f"#{run['id']}", str(run.get("model")), str(run.get("strategy"))]
    if is_number(config.get("temperature")):
        settings.append(f"T {config['temperature']:g}")
    settings += [f"seed {run.get('seed')}", f"{arrays.gen_length} tok / {arrays.n_steps} steps"]
    if run.get("parent_run_id") is not None:
        settings.append(f"branch of #{run['parent_run_id']} after step {run.get('branch_step')}")
    last = arrays.n_steps - 1
    where = "before any step" if k < 0 else f"after step {step_number(arrays, k)} of 0–{max(last, 0)}"
    return (
        f'<div class="compare-run-head"><span class="compare-letter">{LETTERS[i]}</span> '
        f"{html.escape(' · '.join(settings), quote=False)} — <b>{html.escape(where, quote=False)}</b></div>"
    )


def where_note(runs: list[RunArrays], mode: str, first: align.Divergence) -> str:
    if mode == "step":
        return f"after step {int(first.value)}"
    return f"at {round(first.value * 100)}%: " + _each_step(runs, first.steps)


def _each_step(runs: list[RunArrays], steps) -> str:
    return ", ".join(
        f"{LETTERS[i]} {'before step 0' if k < 0 else f'after step {step_number(r, k)}'}"
        for i, (r, k) in enumerate(zip(runs, steps))
    )


def _positions(positions) -> str:
    ordered = sorted(positions)
    named = ", ".join(map(str, ordered[:SHOWN_POSITIONS]))
    return f"{named}, … ({len(ordered)} in all)" if len(ordered) > SHOWN_POSITIONS else named


def divergence_note(
    runs: list[RunArrays], mode: str, at: float, steps, differ: set[int], first: align.Divergence | None
) -> str:
    """Where the runs part ways (in this alignment), how many positions differ at the value
    shown and how they are outlined, and what makes runs comparable (branches, prompts)."""
    lines = [_first_sentence(runs, mode, first)]
    if mode == "step":
        fewer = any(r.n_steps - 1 < at for r in runs)
        shown = f"after step {int(at)}" + (" (a run with fewer steps shows its last state)" if fewer else "")
    else:
        shown = f"at {round(at * 100)}% of each run's steps ({_each_step(runs, steps)})"
    count = f"{len(differ)} position(s) differ {shown}"
    if differ and first is not None:
        already = len(differ & set(first.positions))
        count += f": {already} where the runs first parted, {len(differ) - already} later"
    lines.append(count + ".")
    for child in runs:
        parent = child.run.get("parent_run_id")
        for other in runs:
            if parent is not None and other is not child and other.run.get("id") == parent:
                k = child.run.get("branch_step")
                lines.append(
                    f"Run #{child.run['id']} is a branch of run #{parent} after step {k}: up to step {k} they are "
                    f"the same run (its steps were copied), so they part at step {k} at the earliest, where the "
                    "branch's edit took effect."
                )
    if len({r.run.get("prompt") for r in runs}) > 1:
        lines.append("Their prompts differ: positions count from each run's first generated token.")
    if len({r.gen_length for r in runs}) > 1:
        lines.append("Their lengths differ: the positions only the longer runs have always differ.")
    body = "".join(f"<p>{html.escape(line, quote=False)}</p>" for line in lines)
    return f'<div class="compare-note">{body}{LEGEND if differ else ""}</div>'


def _first_sentence(runs: list[RunArrays], mode: str, first: align.Divergence | None) -> str:
    if first is None:
        return "The runs agree at every step: their sequences are the same (tokens and masks) all the way."
    where = _positions(first.positions)
    if mode == "step":
        d = int(first.value)
        if d == 0:
            return f"The runs differ from their first step on: after step 0 they differ at positions {where}."
        return f"The runs agree up to step {d - 1}; they first differ after step {d}, at positions {where}."
    percent = round(first.value * 100)
    at = _each_step(runs, first.steps)
    if percent == 0:
        return f"The runs differ from their first step on (0%: {at}), at positions {where}."
    return (
        f"The runs agree up to {percent - 1}% of their steps; they first differ at {percent}% ({at}), "
        f"at positions {where}."
    )


# ---- the heatmaps -----------------------------------------------------------------------------------


SUMMARY_COLUMNS = (
    "",
    "run",
    "model",
    "strategy",
    "checker",
    "checker violations",
    "Σ S < 0 (nats)",
    "AR-ness τ",
    "forward passes",
    "calls / token",
    "sequences / token",
    "wall time",
    "tokens / step",
    "steps",
    "T",
    "seed",
    "status",
    "revisions",
    "energies",
    "branch of",
    "prompt",
)


SUMMARY_NOTE = (
    "T: temperature · checker: the story grammar's verdict on the final text, for the embedded models only (hover "
    "for each violation; positions count from the first generated token) · Σ S < 0: the dependency violations "
    "between tokens committed in the same step, summed over the steps (nats; needs the violations pass) · "
    "AR-ness τ: Kendall's τ between each position and the step that last changed it (+1 = left to right) · "
    "forward passes: of the model, as stored per step (a branch's own after its branch step in brackets) · "
    "calls / token: sequential model calls of the decode per generated token (a batched pass is one call) · "
    "sequences / token: sequence forwards of the decode per token (both leave the violation pass out; not recorded "
    "for runs stored before costs were counted) · "
    "wall time: from the run's start to its end, as stored."
)


def summary_table(services: Services, runs: list[RunArrays]) -> str:
    """One row per run, every string escaped; wrapped so it scrolls sideways on a narrow screen."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in SUMMARY_COLUMNS)
    rows = [_summary_row(services, LETTERS[i], r) for i, r in enumerate(runs)]
    return (
        '<div class="compare-table-wrap"><table class="compare compare-summary-table">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        f'<p class="compare-table-note">{html.escape(SUMMARY_NOTE, quote=False)}</p>'
    )


def _summary_row(services: Services, letter: str, arrays: RunArrays) -> str:
    run = arrays.run
    s = summarise(arrays, None, run["model"])  # the checker's verdict comes from checker_cells
    verdict, count, detail = checker_cells(services, arrays)
    temperature = (run.get("config") or {}).get("temperature")
    cells = [  # in SUMMARY_COLUMNS order
        run["id"],
        run["model"],
        run["strategy"],
        (verdict, detail, "checker"),
        count,
        _violation_total(arrays),
        "n/a" if math.isnan(s.arness) else f"{s.arness:+.2f}",
        _passes(services, arrays),
        *_cost_cells(arrays),
        wall_time(run),
        f"{s.committed / max(s.n_steps, 1):.2f}",
        s.n_steps,
        f"{temperature:g}" if is_number(temperature) else "n/a" if temperature is None else temperature,
        run.get("seed"),
        s.status,
        s.revisions,
        _energies_text(arrays),
        _origin(arrays),
        (run.get("prompt", ""), None, "prompt"),
    ]
    out = [f"<th>{html.escape(letter)}</th>"]
    for cell in cells:
        text, title, kind = cell if isinstance(cell, tuple) else (cell, None, None)
        tip = f' title="{html.escape(str(title), quote=True)}"' if title else ""
        wraps = f' class="{kind}"' if kind else ""  # the cells that may wrap (static/compare.css)
        out.append(f"<td{wraps}{tip}>{html.escape(str(text))}</td>")
    return f"<tr>{''.join(out)}</tr>"


def checker_cells(services: Services, arrays: RunArrays) -> tuple[str, str, str | None]:
    """(verdict, number of violations, the checker's line) of the story checker on the run's
    final text; only for the models it applies to, and only when every position is committed."""
    model = arrays.run["model"]
    if model not in CHECKED_MODELS:
        return "n/a (no checker for this model)", "n/a", None
    verdict = final_verdict(arrays, token_text_for(services, arrays)) if arrays.gen_length else None
    if verdict is None:
        return "n/a (unfinished)", "n/a", None
    culprits = sorted(p for p, marks in verdict.marks().items() if any(m.culprit for m in marks))
    short = verdict.short() + (f" at {', '.join(map(str, culprits))}" if culprits else "")
    return short, str(len(verdict.result.violations)), verdict.line()


def wall_time(run: dict) -> str:
    """From the run's creation to its end, as stored ('n/a' while running or where not stored)."""
    start, end = run.get("created_at"), run.get("finished_at")
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        return "n/a"
    try:
        seconds = (end - start).total_seconds()
    except TypeError:  # one naive, one aware: not comparable
        return "n/a"
    if seconds < 0:
        return "n/a"
    return f"{seconds:.2f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _origin(arrays: RunArrays) -> str:
    parent = arrays.run.get("parent_run_id")
    return "-" if parent is None else f"run {parent} after step {arrays.run.get('branch_step')}"


def _passes(services: Services, arrays: RunArrays) -> str:
    total, own = forward_passes(services, int(arrays.run["id"]))
    if arrays.run.get("parent_run_id") is None:
        return str(total)
    return f"{total} ({own} after step {arrays.run.get('branch_step')})"


def _cost_cells(arrays: RunArrays) -> tuple[str, str]:
    """(calls per token, sequences per token) of the decode, from the steps' cost extras ('not recorded' for a
    run stored before they were counted)."""
    speed = speed_of(arrays.run, [{}] * len(arrays.extras), 0, arrays.extras)
    calls, sequences, _, _ = speed.cost_texts()
    return calls, sequences


def _energies_text(arrays) -> str:
    return plots.energy_terms_text(arrays.run.get("config") or {}, "off", escape=False)  # the table escapes


def _violation_total(arrays) -> str:
    """The run's summed violation (negative parts of S over the co-committed pairs of every step)."""
    totals = [e.violations.total for e in arrays.extras if e.violations is not None]
    return f"{sum(totals):+.2f}" if totals else "not measured"
