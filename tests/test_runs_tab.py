"""The Runs tab and the Decode form's link to stored runs.

Pure parts: `form_from_run` inverts `build_config` for runs of several strategies and energies;
the 'changed since run N' line; the preset a run's settings are; the export folder stays
bounded. Over HTTP (gradio_client, a replay-only server on runs decoded beforehand: no worker
needed): Open fills the form with the run's settings, Delete needs a matching confirmation,
tags and notes are stored, filterable and escaped, the table has its columns and filters, and
CSV/Parquet exports download.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import gradio as gr
import pyarrow.parquet as pq
import pytest
from app_server import free_port, running_app
from gradio_client import Client

from explorer.adapters.loading import describe_model
from explorer.api import decode
from explorer.decoding.config import DecodeConfig
from explorer.services import Services
from explorer.store.database import RunNote, TrajectoryStore
from explorer.store.export import read_csv
from explorer.ui.controls import decode_controls
from explorer.ui.form import (
    RUN_FIELDS,
    PresetMatcher,
    changed_fields,
    changed_line,
    changed_since,
    form_from_run,
    not_in_form,
    opened_state,
    preset_of,
    rerun_values,
    wire_rerun,
)
from explorer.ui.logic import DECODE_FIELDS, build_config, preset_form
from explorer.ui.runs import COLUMNS, ExportDir, run_verdict

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

PROMPT = "once upon a time"
# Runs of several strategies, knobs and energies (each a DecodeConfig the form can express).
SETTINGS = {
    "plain": dict(strategy="low_confidence", gen_length=16, steps=4),
    "threshold": dict(strategy="threshold", threshold=0.8, gen_length=16, steps=8, block_length=8, seed=7),
    "sampled": dict(strategy="margin", gen_length=16, steps=4, temperature=0.7, seed=3, violations=False),
    "energies": dict(
        strategy="rcr",
        gen_length=16,
        steps=4,
        energies=(("uni", 0.5), ("ind", 2.0)),
        energy_candidates=4,
        energy_window=(0.1, 0.9),
        temperature=0.5,
        seed=11,
    ),
    "eb": dict(strategy="eb", eb_gamma=0.2, gen_length=16, steps=16, schedule="dream", prophet=True),
}


@pytest.fixture(scope="module")
def db(tmp_path_factory, denoiser):
    """A SQLite file with one run per SETTINGS entry, plus one XDLM run: {name: run id}."""
    url = f"sqlite:///{tmp_path_factory.mktemp('runs_tab')}/runs.db"
    store = TrajectoryStore(url)
    ids = {name: decode(PROMPT, denoiser, store=store, **kw).run_id for name, kw in SETTINGS.items()}
    ids["xdlm"] = decode(
        PROMPT, "embedded-xdlm", store=store, strategy="xdlm_revise", gen_length=16, steps=4, xdlm_k=0.1
    ).run_id
    store.engine.dispose()
    return url, ids


@pytest.fixture(scope="module")
def services(db):
    """Services whose build_config accepts the embedded models (a stand-in pool: nothing runs)."""
    store = TrajectoryStore(db[0])
    yield Services(store, object(), {name: describe_model(name) for name in ("embedded", "embedded-xdlm")})
    store.engine.dispose()


# ---- pure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*SETTINGS, "xdlm"])
def test_form_from_run_inverts_build_config(services, db, name):
    run = services.store.get_run(db[1][name])
    form = form_from_run(run)
    assert tuple(form) == RUN_FIELDS
    assert build_config(services, form) == DecodeConfig.from_dict(run["config"])
    assert (form["prompt"], form["model"]) == (run["prompt"], run["model"])
    assert not_in_form(run) == []


def test_form_from_run_fields(services, db):
    run = services.store.get_run(db[1]["energies"])
    form = form_from_run(run)
    assert form["energy_terms"] == ["uni", "ind"] and (form["weight_uni"], form["weight_ind"]) == (0.5, 2.0)
    assert (form["window_start"], form["window_end"]) == (0.1, 0.9)
    assert form["weight_ar"] == 1.0  # a term the run did not use keeps the form's default weight
    assert (form["strategy"], form["temperature"], form["seed"], form["energy_candidates"]) == ("rcr", 0.5, 11, 4)
    assert form_from_run(services.store.get_run(db[1]["plain"]))["block_length"] == 0  # one block


def test_changed_since_line(services, db):
    run = services.store.get_run(db[1]["threshold"])
    state = opened_state(run)
    values = [state["form"][n] for n in RUN_FIELDS]
    assert changed_since(state, *values) == changed_line(run["id"], [])
    assert f"The settings of run {run['id']}" in changed_since(state, *values)
    edited = {**state["form"], "steps": 4, "seed": 8, "prompt": " once upon a time "}  # spaces: same prompt
    line = changed_since(state, *[edited[n] for n in RUN_FIELDS])
    assert f"Changed since run {run['id']}: steps, seed." in line
    assert changed_fields(state["form"], {**state["form"], "threshold": 0.8000000001}) == []
    assert changed_fields(state["form"], {**state["form"], "weight_uni": 3.0}) == []  # uni not used
    assert changed_fields(state["form"], {**state["form"], "energy_terms": ["uni"]}) == ["energy_terms"]
    assert changed_since(None, *values) == ""
    # Re-run: the opened run's settings, with the page's metric and pace
    values = rerun_values(state, "entropy", 40)
    assert dict(zip(DECODE_FIELDS, values)) == {**state["form"], "metric": "entropy", "pace_ms": 40}
    # escaped: a field name never carries markup, but the line is HTML
    assert "<script>" not in changed_line(1, ["<script>"])


def test_presets_are_recognised(services, db):
    for preset in services.presets:
        assert preset_of(services, preset_form(preset, services)) == preset.name
    form = preset_form(services.presets[0], services)
    assert preset_of(services, {**form, "seed": form["seed"] + 1}) is None
    matcher = PresetMatcher(services)
    plain = services.store.get_run(db[1]["plain"])
    assert matcher(plain) is None
    # a stored run whose settings are a preset's (pace and metric aside) is that preset
    config = json.loads(build_config(services, form).to_json())
    looks_like = {**plain, "prompt": form["prompt"], "config": config}
    assert matcher(looks_like) == services.presets[0].name


def test_export_dir_is_bounded(tmp_path):
    exports = ExportDir()
    paths = [exports.write("csv", f"run-{i}.zip", b"x") for i in range(ExportDir.KEEP + 3)]
    other = exports.write("parquet", "run-1.zip", b"y")
    root = paths[0].parent.parent
    assert all(p.parent.parent == root for p in [*paths, other])
    assert [p.exists() for p in paths] == [False] * 3 + [True] * ExportDir.KEEP
    assert other.exists() and paths[-1].name == "run-6.zip"
    assert len(list(root.iterdir())) == ExportDir.KEEP + 1


# ---- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(db, tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app"), services=Services.create(db[0], replay_only=True)) as (s, url):
        yield s, url


@pytest.fixture
def client(server):
    return Client(server[1], verbose=False)


def _table(client, **filters):
    values = {"model": "any", "strategy": "any", "status": "any", "since": "", "text": "", "verdict": "any", "tag": ""}
    values.update(filters)
    table, message = client.predict(*values.values(), api_name="/list_runs")
    return table, message


def _ids(table) -> list[int]:
    return [int(row[0]) for row in table["data"]]


def test_open_fills_the_form(client, db):
    run_id = db[1]["energies"]
    outputs = client.predict(run_id, "confidence", api_name="/open_run")
    assert f"run {run_id} · completed" in outputs[0]
    # the form's values come last (the opened-run state and the Re-run button are not API
    # outputs), then the 'changed since' line
    line, values = outputs[-1], outputs[-1 - len(RUN_FIELDS) : -1]
    expected = form_from_run(TrajectoryStore(db[0]).get_run(run_id))
    got = dict(zip(RUN_FIELDS, values))
    assert got["prompt"] == PROMPT and got["model"] == "embedded" and got["strategy"] == "rcr"
    assert got["energy_terms"] == ["uni", "ind"] and got["seed"] == 11 and got["temperature"] == 0.5
    assert got == expected
    assert f"The settings of run {run_id}" in line and "changed-since" in line


def test_delete_needs_a_matching_confirmation(client, server, denoiser):
    services = server[0]
    run_id = decode(PROMPT, denoiser, store=services.store, gen_length=8, steps=2).run_id
    services.store.set_notes(run_id, "doomed", "its note goes with it")
    filters = ("any", "any", "any", "", "", "any", "")
    for confirm in (None, run_id + 1):
        with pytest.raises(Exception) as refused:
            client.predict(run_id, confirm, *filters, api_name="/delete_run")
        assert f"run {run_id} is not deleted" in str(refused.value)
        assert services.store.get_run(run_id) is not None
    asked = client.predict(run_id, api_name="/ask_delete")
    assert run_id in asked and f"Confirm delete run {run_id}" in asked[-1]
    table, message, *_ = client.predict(run_id, run_id, *filters, api_name="/delete_run")
    assert f"Run {run_id} deleted" in message and run_id not in _ids(table)
    assert services.store.get_run(run_id) is None
    with services.store.session() as s:
        assert s.get(RunNote, run_id) is None


def test_tags_and_notes_are_stored_filterable_and_escaped(client, server, db):
    services, run_id, other = server[0], db[1]["sampled"], db[1]["plain"]
    filters = ("any", "any", "any", "", "", "any", "")
    table, message, tags = client.predict(
        run_id,
        "Keep,  <script>alert(1)</script> , keep",
        "a note, with <b>markup</b>",
        *filters,
        api_name="/save_notes",
    )
    assert tags == "Keep, <script>alert(1)</script>"  # stripped, the case-insensitive repeat dropped
    assert "&lt;script&gt;" in message and "<script>" not in message
    assert services.store.get_notes(run_id)["note"] == "a note, with <b>markup</b>"
    row = table["data"][_ids(table).index(run_id)]
    assert row[COLUMNS.index("tags")] == "Keep, <script>alert(1)</script>"
    # the table shows cells as text, never as HTML or Markdown: the tag is not markup there
    props = next(c["props"] for c in client.config["components"] if c.get("props", {}).get("elem_id") == "runs-table")
    assert props["datatype"] in ("str", ["str"] * len(COLUMNS)), props["datatype"]

    assert _ids(_table(client, tag="keep")[0]) == [run_id]  # case-insensitive, the whole tag
    assert _ids(_table(client, tag="<script>alert(1)</script>")[0]) == [run_id]
    assert _ids(_table(client, tag="kee")[0]) == []
    client.predict(other, "keep", "", *filters, api_name="/save_notes")
    assert set(_ids(_table(client, tag="keep")[0])) == {run_id, other}
    assert _ids(_table(client, tag="keep, <script>alert(1)</script>")[0]) == [run_id]  # both tags
    assert list(client.predict(run_id, api_name="/run_notes")[:2]) == [
        "Keep, <script>alert(1)</script>",
        "a note, with <b>markup</b>",
    ]
    # cleared
    client.predict(other, "", "", *filters, api_name="/save_notes")
    assert _ids(_table(client, tag="keep")[0]) == [run_id]


def test_columns_and_filters(client, server, db):
    services = server[0]
    table, _ = _table(client)
    assert table["headers"] == COLUMNS
    for name in ("verdict", "violations", "temperature", "seed", "tokens/step", "energies", "preset", "parent", "tags"):
        assert name in table["headers"]
    rows = {int(r[0]): dict(zip(COLUMNS, r)) for r in table["data"]}
    energies, plain = rows[db[1]["energies"]], rows[db[1]["plain"]]
    assert energies["energies"] == "uni, ind" and plain["energies"] == "none"
    assert energies["tokens/step"] == "4" and str(energies["seed"]) == "11" and energies["temperature"] == "0.5"
    assert rows[db[1]["threshold"]]["tokens/step"] == "2"
    verdicts = {}
    for run_id, row in rows.items():
        verdict = run_verdict(services.store.get_run(run_id))
        assert row["verdict"] == ("" if verdict is None else verdict.short())
        assert str(row["violations"]) == ("" if verdict is None else str(len(verdict.result.violations)))
        verdicts[run_id] = verdict
    valid = {i for i, v in verdicts.items() if v is not None and v.valid}
    invalid = {i for i, v in verdicts.items() if v is not None and not v.valid}
    assert set(_ids(_table(client, verdict="valid")[0])) == valid
    assert set(_ids(_table(client, verdict="invalid")[0])) == invalid
    assert set(_ids(_table(client, strategy="rcr")[0])) == {db[1]["energies"]}
    # the older 5-filter calls still work: the new filters take their defaults
    assert _ids(client.predict("any", "any", "any", "", "", api_name="/list_runs")[0]) == _ids(table)


def test_recorded_preset_shows(client, server, db):
    services = server[0]
    services.store.set_run_preset(db[1]["eb"], "A preset")
    rows = {int(r[0]): dict(zip(COLUMNS, r)) for r in _table(client)[0]["data"]}
    assert rows[db[1]["eb"]]["preset"] == "A preset"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_tables(client, db, fmt):
    run_id = db[1]["plain"]
    path, message = client.predict(run_id, api_name=f"/export_{fmt}")
    assert f"Run {run_id}" in message and fmt.upper() in message
    assert Path(path).name == f"run-{run_id}-{fmt}.zip"
    archive = zipfile.ZipFile(path)
    data = archive.read(f"run-{run_id}-events.{fmt}")
    events = read_csv(data) if fmt == "csv" else pq.read_table(io.BytesIO(data))
    assert events.num_rows == 16 and set(events["kind"].to_pylist()) == {"commit"}
    assert re.fullmatch(r"run-\d+-(steps|positions|events)\." + fmt, archive.namelist()[0])


def test_wire_rerun_decodes_the_opened_runs_settings(server, db):
    """Re-run fills the form with the opened run's settings and calls the /decode handler with
    them (a stand-in handler here, which reports what it was given)."""
    services, run_id = server[0], db[1]["threshold"]
    calls = []

    def fake_decode(*values):
        calls.append(dict(zip(DECODE_FIELDS, values)))
        yield "decoding"
        yield "done"

    with gr.Blocks() as demo:
        controls = decode_controls(services)
        controls["metric"] = gr.Radio(["confidence", "entropy"], value="confidence")
        shown = gr.Textbox()
        pick = gr.Number(precision=0)
        gr.Button().click(
            lambda rid: opened_state(services.store.get_run(int(rid))),
            [pick],
            [controls["opened_run"]],
            api_name="open_for_test",
        )
        wire_rerun(controls, fake_decode, [shown])
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="open a run first"):
            client.predict("entropy", 0, api_name="/rerun")
        client.predict(run_id, api_name="/open_for_test")
        assert client.predict("entropy", 30, api_name="/rerun") == "done"
    finally:
        demo.close()
    expected = form_from_run(services.store.get_run(run_id))
    assert calls == [{**expected, "metric": "entropy", "pace_ms": 30}]


def test_notes_table_appears_in_an_older_database(tmp_path):
    """A database written before run_notes existed (the previous release's, committed as a fixture)
    gets the table on the next open (the migrations), and its runs take notes."""
    import shutil
    import sqlite3

    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "release_e9573b2.db", path)
    assert "run_notes" not in {r[0] for r in sqlite3.connect(path).execute("select name from sqlite_master")}
    store = TrajectoryStore(f"sqlite:///{path}")
    assert "run_notes" in {r[0] for r in sqlite3.connect(path).execute("select name from sqlite_master")}
    store.set_notes(1, "old, kept", "written after the upgrade")
    assert store.get_notes(1)["tags"] == ["old", "kept"]
    with pytest.raises(KeyError):
        store.set_notes(999, "a", "")
    store.engine.dispose()
