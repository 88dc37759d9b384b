"""The Sweeps tab: the sweeps in the store with their progress, a sweep's quality-vs-cost figure and
per-cell table, a cell's runs; a run opens in the Decode tab and two runs go to Compare.

It only reads the store (a sweep is run by `python -m explorer sweep`, in this process's store or
on a Ray cluster writing to it), so it works the same on a replay-only server; Refresh (or opening
the tab) reads a running sweep's progress again. Opening a run is the Runs tab's `RunOpener`;
sending runs to Compare is `CompareTab.open_runs`, as the branch panel and permalinks do. What
the tab says (tables, notes, escaped labels) is in `sweeps_markup.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from explorer.services import Services
from explorer.store import sweeps as sweep_store
from explorer.sweeps.report import figure
from explorer.sweeps.summary import summarise
from explorer.ui.compare import CompareTab
from explorer.ui.runs import RunOpener
from explorer.ui.sweeps_markup import (
    CELL_COLUMNS,
    CELL_WIDTHS,
    RUN_COLUMNS,
    RUN_WIDTHS,
    SWEEP_COLUMNS,
    cell_choices,
    cell_rows,
    compare_choices,
    list_note,
    run_rows,
    runs_note,
    sweep_choices,
    sweep_head,
    sweep_rows,
)
from explorer.ui.toasts import refuse

MAX_ID = 2**63 - 1
# What a picked sweep shows (/show_sweep's outputs, in this order), then a picked cell (/sweep_cell's).
SWEEP_SHOWN = ("details", "head", "figure", "cells", "cell")
CELL_SHOWN = ("runs_note", "runs", "run_a")


WATCH_S = 5.0  # how often a running sweep's list, figure and cells are read again


def as_id(value, what: str) -> int:
    """A store id (a whole number from 1) from a picker, a table or an API client; refused otherwise."""
    if isinstance(value, str) and value.strip().lstrip("#").split(" ")[0].isdigit():
        value = int(value.strip().lstrip("#").split(" ")[0])  # a label typed into a picker: '#3 · small ...'
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value != int(value):
        raise refuse(f"pick a {what} first" if value in (None, "") else f"{str(value)[:40]!r} is not a {what} id")
    if not 1 <= value <= MAX_ID:
        raise refuse(f"a {what} id is a whole number from 1 to {MAX_ID}, not {value}")
    return int(value)


@dataclass
class SweepsHandlers:
    """The tab's event handlers over one app's services (no module state)."""

    services: Services

    def listing(self, picked) -> tuple:
        """The sweeps table, the note above it and the picker (the sweep picked stays picked)."""
        sweeps = sweep_store.list_sweeps(self.services.store)
        keep = _maybe_id(picked) if _maybe_id(picked) in {s["id"] for s in sweeps} else None
        return self.sweeps_table(sweeps), list_note(sweeps), gr.Dropdown(choices=sweep_choices(sweeps), value=keep)

    def sweeps_table(self, sweeps: list[dict] | None = None) -> pd.DataFrame:
        """The sweeps table (`sweeps`: list_sweeps' dicts, read when not given)."""
        sweeps = sweep_store.list_sweeps(self.services.store) if sweeps is None else sweeps
        return pd.DataFrame(sweep_rows(sweeps), columns=SWEEP_COLUMNS)

    def show_sweep(self, sweep_id, cell_id) -> tuple:
        """The sweep's head line, figure and cell table, and the cell picker (`cell_id` kept when it is
        one of this sweep's cells, else its first cell). Nothing picked: the section is hidden."""
        if sweep_id in (None, ""):
            return gr.Column(visible=False), "", None, None, gr.Dropdown(choices=[], value=None)
        summary = self._summary(as_id(sweep_id, "sweep"))
        choices = cell_choices(summary)
        ids = [value for _, value in choices]
        cell = _maybe_id(cell_id) if _maybe_id(cell_id) in ids else (ids[0] if ids else None)
        return (
            gr.Column(visible=True),
            sweep_head(summary),
            figure(summary),
            pd.DataFrame(cell_rows(summary), columns=CELL_COLUMNS),
            gr.Dropdown(choices=choices, value=cell),
        )

    def watch(self, sweep_id) -> gr.Timer:
        """Tick while the picked sweep is being run (seeds claimed, not all finished), so its list,
        figure and cells advance without Refresh; stop once it is finished or nothing runs."""
        picked = _maybe_id(sweep_id)
        row = next((s for s in sweep_store.list_sweeps(self.services.store) if s["id"] == picked), None)
        running = row is not None and row["running"] > 0 and row["done"] + row["failed"] < row["planned"]
        return gr.Timer(active=running)

    def show_cell(self, sweep_id, cell_id, run_a) -> tuple:
        """The cell's runs (each seed), the note above them and run A (kept when it is one of them, else
        the cell's first run done)."""
        if sweep_id in (None, "") or cell_id in (None, ""):
            return runs_note(None, []), pd.DataFrame([], columns=RUN_COLUMNS), None
        sweep, cell = as_id(sweep_id, "sweep"), as_id(cell_id, "cell")
        info = self._cell(sweep, cell)
        rows = sweep_store.sweep_rows(self.services.store, sweep, cell)
        done = [r["run_id"] for r in rows if r["status"] == "done" and r["run_id"] is not None]
        keep = _maybe_id(run_a) if _maybe_id(run_a) in done else (done[0] if done else None)
        return runs_note(info, rows), pd.DataFrame(run_rows(rows), columns=RUN_COLUMNS), keep

    def compare_with(self, sweep_id, run_a, run_b) -> gr.Dropdown:
        """Run B's choices for run A: the same seed in the other cells, then A's cell's other seeds.
        Run B stays when it is still offered, else the first choice."""
        if sweep_id in (None, "") or run_a in (None, ""):
            return gr.Dropdown(choices=[], value=None)
        sweep, a = as_id(sweep_id, "sweep"), as_id(run_a, "run")
        labels = {c["id"]: c["label"] for c in sweep_store.sweep_cells(self.services.store, sweep)}
        choices = compare_choices(self._neighbours(sweep, a), labels, a)
        offered = [value for _, value in choices]
        keep = _maybe_id(run_b) if _maybe_id(run_b) in offered else (offered[0] if offered else None)
        return gr.Dropdown(choices=choices, value=keep)

    def _neighbours(self, sweep_id: int, run_id: int) -> list[dict]:
        """The rows run B is chosen from: the run's own seed in every cell, and its own cell's seeds
        (two small queries, not the whole sweep)."""
        store = self.services.store
        own = sweep_store.sweep_rows(store, sweep_id, run_id=run_id)
        if not own:
            return []
        rows = sweep_store.sweep_rows(store, sweep_id, seed=own[0]["seed"])
        rows += [r for r in sweep_store.sweep_rows(store, sweep_id, own[0]["cell_id"]) if r["seed"] != own[0]["seed"]]
        return rows

    def _summary(self, sweep_id: int):
        try:
            return summarise(self.services.store, sweep_id)
        except ValueError:
            raise refuse(f"there is no sweep with id {sweep_id} in this store (press Refresh)") from None

    def _cell(self, sweep_id: int, cell_id: int) -> dict:
        cells = {c["id"]: c for c in sweep_store.sweep_cells(self.services.store, sweep_id)}
        if cell_id not in cells:
            raise refuse(f"sweep {sweep_id} has no cell with id {cell_id} (pick one of its cells)")
        cell = cells[cell_id]
        config = cell["cell"].get("config", {})
        return {"label": cell["label"], "model": cell["cell"].get("model"), "temperature": config.get("temperature")}


def _maybe_id(value) -> int | None:
    """`value` as an id when it is one, else None (for keeping a selection; never refuses)."""
    try:
        return as_id(value, "")
    except gr.Error:
        return None


def sweeps_tab(services: Services, opener: RunOpener, compare: CompareTab, tabs: gr.Tabs, page: gr.Tab) -> dict:
    """Lay out the Sweeps tab and wire it; its components by name. `opener` opens a run in the Decode
    tab (the Runs tab's), `compare` takes two runs, `page` is this tab (opening it refreshes the list)."""
    h = SweepsHandlers(services)
    c = _layout(services, h)
    listed = [c["list"], c["note"], c["sweep"]]
    sweep_in, cell_in = [c["sweep"], c["cell"]], [c["sweep"], c["cell"], c["run_a"]]
    sweep_out, cell_out = [c[n] for n in SWEEP_SHOWN], [c[n] for n in CELL_SHOWN]
    # A sweep still running advances: the list, the sweep picked and its cell are read again.
    gr.on([c["refresh"].click, page.select], h.listing, [c["sweep"]], listed, api_name="list_sweeps").then(
        h.show_sweep, sweep_in, sweep_out, api_name=False
    ).then(h.show_cell, cell_in, cell_out, api_name=False)
    c["list"].select(_picked_row(0), [c["list"]], [c["sweep"]], api_name=False)
    c["sweep"].change(h.show_sweep, sweep_in, sweep_out, api_name="show_sweep").then(
        h.watch, [c["sweep"]], [c["timer"]], api_name=False
    )
    # While a sweep runs (here or on a cluster), its list, figure and cells are read again every few seconds.
    c["timer"].tick(h.listing, [c["sweep"]], listed, api_name=False, show_progress="hidden").then(
        h.show_sweep, sweep_in, sweep_out, api_name=False, show_progress="hidden"
    ).then(h.watch, [c["sweep"]], [c["timer"]], api_name=False)
    c["cells"].select(_picked_row(0), [c["cells"]], [c["cell"]], api_name=False)
    c["cell"].change(h.show_cell, cell_in, cell_out, api_name="sweep_cell")
    c["runs"].select(_picked_row(1), [c["runs"]], [c["run_a"]], api_name=False)
    c["run_a"].change(h.compare_with, [c["sweep"], c["run_a"], c["run_b"]], [c["run_b"]], api_name="sweep_compare_with")
    decode_metric = opener.view.components["metric"]
    c["open"].click(opener.open, [c["run_a"], decode_metric], opener.outputs(), api_name="sweep_open_run")

    def send_to_compare(a, b, metric) -> dict:
        """Runs A and B in the Compare tab, which is opened."""
        if b in (None, ""):
            raise refuse("pick run B to compare run A with (the list next to run A)")
        pair = [as_id(a, "run"), as_id(b, "run")]
        return {**compare.open_runs(pair, metric or "confidence"), tabs: gr.Tabs(selected="compare")}

    c["compare"].click(
        send_to_compare,
        [c["run_a"], c["run_b"], compare.components["metric"]],
        [*compare.permalink_outputs(), tabs],
        api_name="sweep_compare",
    )
    return c


def _layout(services: Services, h: SweepsHandlers) -> dict:
    """The tab's components: the list of sweeps, then (once one is picked) its figure, cells and runs."""
    c: dict = {}
    sweeps = sweep_store.list_sweeps(services.store)
    c["note"] = gr.Markdown(list_note(sweeps), elem_id="sweeps-note")
    with gr.Row(equal_height=True):
        c["sweep"] = gr.Dropdown(
            sweep_choices(sweeps),
            value=None,
            label="Sweep (or click its row in the table)",
            allow_custom_value=True,  # a sweep started after the page loaded; ids are checked by the handlers
            filterable=True,
            elem_id="sweep-pick",
            scale=4,
        )
        c["refresh"] = gr.Button("Refresh", elem_id="sweeps-refresh", scale=0, min_width=120)
    c["timer"] = gr.Timer(WATCH_S, active=False)
    c["list"] = gr.Dataframe(
        value=h.sweeps_table, headers=SWEEP_COLUMNS, interactive=False, wrap=True, elem_id="sweeps-list"
    )
    with gr.Column(visible=False, elem_id="sweep-details") as c["details"]:
        c["head"] = gr.HTML(elem_id="sweep-head")
        c["figure"] = gr.Plot(label="Quality vs cost per generated token", elem_id="sweep-figure")
        c["cells"] = gr.Dataframe(
            headers=CELL_COLUMNS,
            column_widths=CELL_WIDTHS,
            interactive=False,
            wrap=True,
            label="Cells: each a configuration decoded with every seed (click a row to list its runs)",
            elem_id="sweep-cells",
        )
        c["cell"] = gr.Dropdown([], value=None, label="Cell", allow_custom_value=True, elem_id="sweep-cell")
        c["runs_note"] = gr.HTML(elem_id="sweep-runs-note")
        c["runs"] = gr.Dataframe(
            headers=RUN_COLUMNS,
            column_widths=RUN_WIDTHS,
            interactive=False,
            wrap=True,
            label="Runs of the cell (click a row to make it run A)",
            elem_id="sweep-runs",
        )
        with gr.Row(equal_height=True):
            c["run_a"] = gr.Number(label="Run A (click a row above)", precision=None, elem_id="sweep-run-a", scale=1)
            c["run_b"] = gr.Dropdown(
                [], value=None, label="Run B", allow_custom_value=True, elem_id="sweep-run-b", scale=3
            )
            c["open"] = gr.Button(
                "Open run A in Decode", variant="primary", elem_id="sweep-open", scale=0, min_width=200
            )
            c["compare"] = gr.Button("Compare A and B", elem_id="sweep-compare", scale=0, min_width=180)
    return c


def _picked_row(column: int):
    """A table's select handler: the value in `column` of the row clicked (an id)."""

    def picked(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        value = rows.iloc[row, column] if hasattr(rows, "iloc") else rows[row][column]
        return _maybe_id(value.item() if hasattr(value, "item") else value)  # a numpy number; "" (no run): None

    return picked
