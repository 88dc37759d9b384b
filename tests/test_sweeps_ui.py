"""The Sweeps tab, over HTTP (gradio_client) on a replay-only server (it only reads the store): the
list of sweeps with their progress, a sweep's figure (one legend entry per series, every cost
column) and per-cell table, a cell's runs (its seeds and run ids), opening a run in the Decode
tab (the Runs tab's opener: the stored view and the form filled), sending two runs to Compare,
the refusals, the empty store's note, and labels with markup shown as text. The store holds a
small sweep run in-process by the test (3 cells x 3 seeds of 16 tokens, a few seconds) and a
sweep that has not started.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from app_server import running_app
from gradio_client import Client

from explorer.services import Services
from explorer.store import sweeps as sweep_store
from explorer.store.database import TrajectoryStore
from explorer.sweeps.execute import run_sweep
from explorer.sweeps.report import figure
from explorer.sweeps.spec import parse_spec
from explorer.sweeps.summary import SweepSummary, summarise
from explorer.ui.compare import SHOWN
from explorer.ui.form import RUN_FIELDS
from explorer.ui.sweeps_markup import CELL_COLUMNS, EMPTY_NOTE, cell_rows, compare_choices, run_rows

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

MARKUP = '<img src=x onerror="window.__xss=9">'
# Two series: low_confidence at 1 and 4 tokens per step, and a series labelled with markup (margin).
SPEC = {
    "name": "tiny <b>sweep</b>",
    "gen_length": 16,
    "seeds": 3,
    "metrics": ["checker", "ar_nll"],
    "seeds_per_task": 3,
    "cells": [
        {"strategy": "low_confidence", "tokens_per_step": [1, 4]},
        {"strategy": "margin", "tokens_per_step": [2], "label": f"margin {MARKUP}"},
    ],
}
SERIES = ["low_confidence", f"margin {MARKUP}"]
COSTS = 3  # the figure's columns: calls, sequences and wall-clock ms per token


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """The store: the tiny sweep (run), then a sweep not started. (url, the tiny sweep's id, the other's id)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sweeps_ui')}/sweeps.db"
    store = TrajectoryStore(url)
    spec = parse_spec(SPEC)
    progress = run_sweep(store, spec, progress_bar=False)
    assert progress.counts["done"] == 9, progress
    waiting = parse_spec({**SPEC, "name": "not started"})
    cells = [(c.key, c.label, c.to_json()) for c in waiting.cells]
    pending = sweep_store.create_sweep(store, waiting.name, waiting.to_json(), cells)
    store.engine.dispose()
    return url, progress.sweep_id, pending


@pytest.fixture(scope="module")
def server(db, tmp_path_factory):
    services = Services.create(db[0], replay_only=True)
    with running_app(tmp_path_factory.mktemp("app"), services=services) as (s, url):
        yield s, url


@pytest.fixture
def client(server):
    return Client(server[1], verbose=False)


def _rows(store_url: str, sweep_id: int) -> list[dict]:
    return sweep_store.sweep_rows(TrajectoryStore(store_url), sweep_id)


# ---- over HTTP ------------------------------------------------------------------------------------


def test_the_list_shows_each_sweep_with_its_progress(client, db):
    _, tiny, pending = db
    table, note, picker = client.predict(None, api_name="/list_sweeps")
    assert table["headers"] == ["id", "name", "created (UTC)", "cells", "done / planned", "failed", "running"]
    rows = {row[0]: row for row in table["data"]}
    assert [row[0] for row in table["data"]] == [pending, tiny]  # newest first
    assert rows[tiny][1] == SPEC["name"] and rows[tiny][3:] == [3, "9 / 9", 0, 0]
    assert rows[pending][3:] == [3, "0 / 9", 0, 0]
    assert "2 sweeps in this store" in note and "Click a sweep's row" in note
    assert [value for _, value in picker["choices"]] == [pending, tiny] and picker["value"] is None
    # a sweep picked stays picked across a refresh
    assert client.predict(tiny, api_name="/list_sweeps")[2]["value"] == tiny


def test_a_sweep_shows_its_figure_and_a_row_per_cell(client, db):
    url, tiny, _ = db
    head, plot, cells, cell_picker = client.predict(tiny, None, api_name="/show_sweep")
    assert "9 of 9 runs done (0 failed, 0 running); 3 cells × 3 seeds; generation length 16" in head
    assert f"Sweep {tiny}: tiny &lt;b&gt;sweep&lt;/b&gt;" in head and "<b>sweep</b>" not in head

    figure = json.loads(plot["plot"])
    traces = figure["data"]
    shown = [t["name"] for t in traces if t.get("showlegend", True)]
    escaped = ["low_confidence", 'margin &lt;img src=x onerror="window.__xss=9"&gt;']
    assert shown == escaped  # one legend entry per series, its label's markup escaped
    assert len(traces) == len(SERIES) * COSTS and {t["name"] for t in traces} == set(escaped)
    assert all(MARKUP not in json.dumps(t) for t in traces) and MARKUP not in json.dumps(figure["layout"])
    assert "quality vs cost" in figure["layout"]["title"]["text"]
    assert figure["layout"]["xaxis"]["title"]["text"] == "sequential model calls per token"
    assert "valid %" in figure["layout"]["yaxis"]["title"]["text"]
    store_cells = sweep_store.sweep_cells(TrajectoryStore(url), tiny)
    points = sorted(cell_id for t in traces[::COSTS] for [cell_id] in t["customdata"])
    assert points == sorted(c["id"] for c in store_cells)  # every cell is a point (customdata: its id)

    assert cells["headers"] == CELL_COLUMNS
    assert CELL_COLUMNS[:7] == ["cell id", "cell", "model", "T", "done / seeds", "valid % [95% CI]", "AR NLL [95% CI]"]
    assert [row[0] for row in cells["data"]] == [c["id"] for c in store_cells]
    assert [row[1] for row in cells["data"]] == [c["label"] for c in store_cells]  # text in a table cell
    for row in cells["data"]:
        assert row[2:5] == ["embedded", "0", "3 / 3"] and row[-1] == 0  # no seed failed
        assert re.fullmatch(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", row[5]), row  # valid % with its interval
        assert re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", row[6]), row  # AR NLL with its interval
    assert [row[7] for row in cells["data"]] == ["1.00", "4.00", "2.00"]  # tokens per step
    assert [value for _, value in cell_picker["choices"]] == [c["id"] for c in store_cells]
    assert cell_picker["value"] == store_cells[0]["id"]  # the first cell, so its runs show at once


def test_a_sweep_with_no_run_done_says_so(client, db):
    _, _, pending = db
    head, plot, cells, _ = client.predict(pending, None, api_name="/show_sweep")
    assert "0 of 9 runs done" in head
    assert "no run done yet" in json.loads(plot["plot"])["layout"]["title"]["text"]
    assert all(row[4] == "0 / 3" and row[5:] == ["-"] * 5 + [0] for row in cells["data"])


def test_a_cells_runs_list_its_seeds_and_run_ids(client, db):
    url, tiny, _ = db
    rows = _rows(url, tiny)
    cell = rows[-1]["cell_id"]  # the markup-labelled margin cell
    mine = [r for r in rows if r["cell_id"] == cell]
    note, runs, run_a = client.predict(tiny, cell, None, api_name="/sweep_cell")
    assert runs["headers"][:3] == ["seed", "run id", "status"]
    assert [row[:3] for row in runs["data"]] == [[r["seed"], r["run_id"], "done"] for r in mine]
    assert [row[0] for row in runs["data"]] == [0, 1, 2]
    assert all(row[3] in ("yes", "no") and re.fullmatch(r"\d+\.\d{3}", row[5]) for row in runs["data"])
    assert run_a == mine[0]["run_id"]  # the cell's first run is run A
    assert "3 runs" in note and "margin &lt;img" in note and MARKUP not in note
    # run A kept when it is one of the cell's runs
    assert client.predict(tiny, cell, mine[2]["run_id"], api_name="/sweep_cell")[2] == mine[2]["run_id"]


def test_run_b_offers_the_same_seed_in_other_cells_then_the_cells_other_seeds(client, db):
    url, tiny, _ = db
    rows = _rows(url, tiny)
    a = rows[0]
    picker = client.predict(tiny, a["run_id"], None, api_name="/sweep_compare_with")
    offered = [value for _, value in picker["choices"]]
    same_seed = [r["run_id"] for r in rows if r["seed"] == a["seed"] and r["cell_id"] != a["cell_id"]]
    same_cell = [r["run_id"] for r in rows if r["cell_id"] == a["cell_id"] and r["run_id"] != a["run_id"]]
    assert offered == same_seed + same_cell and len(offered) == 4
    assert picker["value"] == same_seed[0]  # by default: the same seed, one setting changed
    assert "same seed 0" in picker["choices"][0][0] and "this cell, seed 1" in picker["choices"][2][0]


def test_open_a_sweep_run_in_decode(client, db):
    url, tiny, _ = db
    run_id = _rows(url, tiny)[4]["run_id"]
    outputs = client.predict(run_id, "confidence", api_name="/sweep_open_run")
    assert f"run {run_id} · completed" in outputs[0]  # the Decode tab's status line: the stored view
    assert f'data-run="{run_id}"' in outputs[1]  # its token view holds the run for the player
    values = dict(zip(RUN_FIELDS, outputs[-1 - len(RUN_FIELDS) : -1]))
    # rows[4]: the cell at 4 tokens per step, seed 1
    assert values["strategy"] == "low_confidence" and values["gen_length"] == 16 and values["steps"] == 4
    assert f"The settings of run {run_id}" in outputs[-1]  # the form filled, as the Runs tab's Open does


def test_send_two_runs_to_compare(client, db):
    url, tiny, _ = db
    rows = _rows(url, tiny)
    a, b = rows[0]["run_id"], rows[3]["run_id"]  # seed 0 at 1 and at 4 tokens per step
    outputs = dict(zip(SHOWN, client.predict(a, b, "entropy", api_name="/sweep_compare")))
    assert outputs["runs"]["value"] == [a, b]
    assert outputs["metric"] == "entropy"
    assert f"<td>{a}</td>" in outputs["summary"] and f"<td>{b}</td>" in outputs["summary"]
    assert f"#{a} · embedded" in outputs["tokens_a"]["value"] and f"#{b} · embedded" in outputs["tokens_b"]["value"]


@pytest.mark.parametrize(
    ("args", "api", "says"),
    [
        ((999, None), "/show_sweep", "there is no sweep with id 999"),
        (("abc", None), "/show_sweep", "is not a sweep id"),
        ((1, 999, None), "/sweep_cell", "sweep 1 has no cell with id 999"),
        ((1, None, "confidence"), "/sweep_compare", "pick run B"),
        ((None, "confidence"), "/sweep_open_run", "select a run first"),
    ],
)
def test_refusals_say_what_to_do(client, db, args, api, says):
    with pytest.raises(Exception) as refused:
        client.predict(*args, api_name=api)
    assert says in str(refused.value)


def test_an_empty_store_says_how_to_start_a_sweep(tmp_path):
    services = Services.create(f"sqlite:///{tmp_path}/empty.db", replay_only=True)
    with running_app(tmp_path, services=services) as (_, url):
        table, note, picker = Client(url, verbose=False).predict(None, api_name="/list_sweeps")
    assert table["data"] in ([], [[""] * 7]) and picker["choices"] == []
    assert note == EMPTY_NOTE and "`python -m explorer sweep SPEC.toml`" in note and "docs/scale.md" in note


# ---- the markup, without a server ----------------------------------------------------------------------


def test_run_rows_show_a_failed_seed_and_missing_metrics():
    rows = [
        {"seed": 3, "run_id": None, "status": "failed", "error": "out of memory", "metrics": None, "final_text": None},
        {"seed": 4, "run_id": 7, "status": "done", "metrics": {"valid": False, "steps": 4, "ar_nll": math.nan}},
    ]
    assert run_rows(rows) == [
        [3, "", "failed: out of memory", "", "", "", "", ""],
        [4, 7, "done", "no", "", "", 4, ""],
    ]


def test_compare_choices_skip_runs_not_done():
    rows = [
        {"cell_id": 1, "seed": 0, "run_id": 1, "status": "done"},
        {"cell_id": 2, "seed": 0, "run_id": 2, "status": "running"},
        {"cell_id": 3, "seed": 0, "run_id": None, "status": "failed"},
        {"cell_id": 3, "seed": 1, "run_id": 4, "status": "done"},
        {"cell_id": 1, "seed": 1, "run_id": 5, "status": "done"},
    ]
    assert compare_choices(rows, {1: "a", 2: "b", 3: "c"}, 1) == [("#5 · this cell, seed 1", 5)]
    assert compare_choices(rows, {}, 99) == []


def test_the_figure_escapes_what_plotly_reads_as_markup(db):
    summary = summarise(TrajectoryStore(db[0]), db[1])
    fig = figure(summary)
    assert "tiny &lt;b&gt;sweep&lt;/b&gt;" in fig.layout.title.text and "<b>sweep" not in fig.layout.title.text
    names = {trace.name for trace in fig.data}
    assert 'margin &lt;img src=x onerror="window.__xss=9"&gt;' in names and not any(MARKUP in n for n in names)
    hover = [text for trace in fig.data for text in trace.hovertext]
    assert hover and not any(MARKUP in text for text in hover)
    assert all(trace.hovertemplate is None for trace in fig.data)  # a label's "%{...}" is not a template


def test_a_metric_the_spec_did_not_measure_reads_not_measured():
    cost = {"mean": 0.5, "ci": [0.5, 0.5]}
    cell = {"cell_id": 7, "label": "x", "model": "embedded", "temperature": 1.0, "seeds": 2, "runs": 2, "failed": 1}
    cell |= {"tokens_per_step": 2.0, "cost_per_token": {"calls": cost, "sequences": cost, "wall_ms": cost}}
    cell |= {"ar_nll": 1.25, "ar_nll_ci": [1.0, 1.5]}
    summary = SweepSummary({"id": 1, "name": "n", "spec": {"metrics": ["ar_nll"]}}, [cell], 2, 2, 0, 0)
    assert cell_rows(summary) == [
        [7, "x", "embedded", "1", "2 / 2", "not measured", "1.250 [1.000, 1.500]", "2.00", "0.500 [0.500, 0.500]",
         "0.50 [0.50, 0.50]", 1]
    ]  # fmt: skip


def test_the_tab_watches_a_sweep_only_while_it_runs(tmp_path):
    """The timer ticks for a sweep with a seed being decoded, and not for a finished or an idle one."""
    from explorer.ui.sweeps import SweepsHandlers

    store = TrajectoryStore(f"sqlite:///{tmp_path}/w.db")
    spec = parse_spec({**SPEC, "seeds": 1})
    finished = run_sweep(store, spec, progress_bar=False).sweep_id
    waiting = parse_spec({**SPEC, "name": "being run"})
    cells = [(c.key, c.label, c.to_json()) for c in waiting.cells]
    sweep = sweep_store.create_sweep(store, waiting.name, waiting.to_json(), cells)
    handlers = SweepsHandlers(Services(store, None, {}))
    assert handlers.watch(finished).active is False and handlers.watch(sweep).active is False  # nothing claimed
    cell = sweep_store.sweep_cells(store, sweep)[0]["id"]
    assert sweep_store.claim(store, sweep, cell, 0, "host:1") is not None  # a worker took seed 0
    assert handlers.watch(sweep).active is True
    assert handlers.watch(None).active is False
