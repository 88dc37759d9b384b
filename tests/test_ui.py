"""The Gradio app end to end over HTTP: gradio_client against the real server and worker.

One server (one model worker, a SQLite file in a temporary directory) serves the module.
One gradio_client.Client is one browser session: session state (the running job for Stop,
the open run for scrubbing) belongs to it.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import signal
from pathlib import Path

import pytest
from app_server import decode_args, running_app
from gradio_client import Client, handle_file
from sqlalchemy import func, select

from explorer.store.bundle import export_run
from explorer.store.database import Step

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")  # pandas deprecations inside gradio

RUN_LINE = re.compile(r"run (\d+) · (\w+)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("ui")) as (services, url):
        yield services, url


@pytest.fixture(scope="module")
def services(server):
    return server[0]


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


def run_id_of(status_html: str, expected_status: str = "completed") -> int:
    match = RUN_LINE.search(status_html)
    assert match, f"no 'run N · status' in {status_html!r}"
    assert match.group(2) == expected_status, status_html
    return int(match.group(1))


def decode(client: Client, **settings) -> int:
    """Run a decode to the end; the new run's id."""
    return run_id_of(client.predict(*decode_args(**settings), api_name="/decode")[0])


def wait_until_decoding(job) -> None:
    """Consume a streaming /decode job's outputs until its status says it is decoding."""
    for outputs in job:
        if "Decoding…" in outputs[0]:
            return
    pytest.fail("the run ended before it was seen decoding")


def n_step_rows(services, run_id: int) -> int:
    with services.store.session() as s:
        return s.scalar(select(func.count()).select_from(Step).where(Step.run_id == run_id))


@pytest.fixture(scope="module")
def two_runs(client):
    """Two completed runs: (A) low_confidence on 'once upon a time', (B) margin on 'the brave cat'."""
    a = decode(client, prompt="once upon a time", strategy="low_confidence", seed=1)
    b = decode(client, prompt="the brave cat", strategy="margin", seed=1)
    return a, b


def test_decode_streams_updates_and_stores_the_run(server, services):
    client = Client(server[1], verbose=False)
    job = client.submit(*decode_args(gen_length=32, steps=8, pace_ms=20), api_name="/decode")
    statuses = [outputs[0] for outputs in job]
    final = job.result(timeout=120)

    assert len(statuses) > 1, statuses
    assert any("Decoding…" in s for s in statuses[:-1]), statuses  # live updates before the end
    assert "completed" in statuses[-1] and final[0] == statuses[-1]
    run_id = run_id_of(final[0])
    assert "8 steps" in final[0] and "32/32 tokens committed" in final[0]
    # where the worker decoded: on this machine's CPU (on CUDA: 'device: cuda:0 · 3.2 GiB in use')
    assert final[0].count("device: cpu") == 1
    assert all("device: cpu" in s for s in statuses if "Decoding…" in s), statuses
    slider = final[-1]
    assert slider["maximum"] == 7 and slider["value"] == 7  # the step slider covers the run

    run = services.store.get_run(run_id)
    assert (run["status"], run["n_steps"], run["gen_length"]) == ("completed", 8, 32)
    assert n_step_rows(services, run_id) == 8

    # the same session scrubs that run: the state after step 0 differs from the final state
    first = client.predict(0, "confidence", api_name="/scrub")
    last = client.predict(7, "confidence", api_name="/scrub")
    assert f"run {run_id}" in first[0] and first[1] != last[1]


BAD_REQUESTS = [
    pytest.param({"prompt": ""}, r"prompt is empty", id="empty-prompt"),
    pytest.param({"prompt": "   "}, r"prompt is empty", id="blank-prompt"),
    pytest.param({"gen_length": 0}, r"\b0\b.*(minimum value 1\b|range 1\.\.)", id="gen-length-0"),
    pytest.param(
        {"gen_length": "max+1"}, r"\b{max1}\b.*(maximum value {max}\b|range 1\.\.{max}\b)", id="gen-length-over-limit"
    ),
    pytest.param({"gen_length": 32, "steps": 33}, r"steps 33 .*1\.\.32", id="steps-over-length"),
    pytest.param(
        {"gen_length": 32, "steps": 8, "block_length": 5}, r"block-length 5 does not divide", id="block-not-dividing"
    ),
    pytest.param({"prompt": "once upon a zebra"}, r"'zebra'", id="unknown-word"),
    pytest.param(
        {"strategy": "threshold", "threshold": 0.0}, r"0(\.0)?\b.*(minimum value 0\.05|\(0, 1\])", id="threshold-0"
    ),
    pytest.param(
        {"energy_terms": ["uni"], "window_start": 0.9, "window_end": 0.2},
        r"energy-window \(0\.9, 0\.2\) is empty: the start must be <= the end",
        id="window-start-after-end",
    ),
    pytest.param(
        {"energy_terms": ["uni"], "window_end": 1.5},
        r"energy-window end 1\.5 is out of range; valid: 0\.\.1",
        id="window-end-over-1",
    ),
    pytest.param({"energy_terms": ["zzz"]}, r"'zzz'.*not in the list of choices.*'uni'", id="unknown-energy-term"),
    pytest.param({"energy_terms": ["uni"], "weight_uni": None}, r"weight of energy 'uni' is empty", id="empty-weight"),
    pytest.param(
        {"energy_terms": ["ind"], "energy_candidates": 100},
        r"candidates k = 100 .*limit of 16",
        id="too-many-candidates",
    ),
    pytest.param({"energy_terms": ["inv"], "energy_orders": 0}, r"energy-orders 0 is out of range", id="orders-0"),
    pytest.param(
        {"energy_terms": ["ind"], "energy_tau": 0}, r"energy-tau 0(\.0)? is out of range; valid: > 0", id="energy-tau-0"
    ),
    pytest.param({"strategy": "factor", "factor": 0}, r"factor 0(\.0)? is out of range; valid: > 0", id="factor-0"),
    pytest.param({"strategy": "eb", "eb_gamma": -1}, r"eb-gamma -1(\.0)? is out of range", id="eb-gamma-negative"),
    pytest.param({"cfg_scale": -2}, r"cfg-scale -2(\.0)? is out of range; valid: 0\.\.100", id="cfg-negative"),
]


@pytest.mark.parametrize("settings, pattern", BAD_REQUESTS)
def test_bad_request_is_refused_and_nothing_is_stored(client, services, settings, pattern):
    limit = services.limits.max_gen_length
    if settings.get("gen_length") == "max+1":
        settings = {**settings, "gen_length": limit + 1}
    pattern = pattern.replace("{max1}", str(limit + 1)).replace("{max}", str(limit))
    runs_before = services.store.count_runs()
    with pytest.raises(Exception) as refused:
        client.predict(*decode_args(**settings), api_name="/decode")
    assert type(refused.value).__name__ == "AppError"
    assert re.search(pattern, str(refused.value)), str(refused.value)
    assert services.store.count_runs() == runs_before
    assert services.pool.pending() == 0 and services.pool.busy() == 0


def test_stop_cancels_this_sessions_run(server, services):
    client = Client(server[1], verbose=False)  # its own session: Stop reaches its own job
    job = client.submit(*decode_args(gen_length=64, steps=64, pace_ms=100), api_name="/decode")
    wait_until_decoding(job)
    stopping = client.predict(api_name="/stop")
    assert "Stopping" in stopping
    final = job.result(timeout=60)
    run_id = run_id_of(final[0], "cancelled")
    run = services.store.get_run(run_id)
    assert run["status"] == "cancelled"
    assert 0 < run["n_steps"] < 64 and run["n_steps"] == n_step_rows(services, run_id)


def test_stop_without_a_running_job_does_nothing(server, services):
    client = Client(server[1], verbose=False)
    runs_before = services.store.count_runs()
    client.predict(api_name="/stop")
    assert services.store.count_runs() == runs_before


def test_export_import_round_trip(client, services, two_runs):
    original = two_runs[0]
    path, message = client.predict(original, api_name="/export_run")
    assert f"Run {original} exported" in message
    assert json.loads(Path(path).read_bytes()) == export_run(services.store, original)

    runs_before = services.store.count_runs()
    _table, message, new_id = client.predict(handle_file(path), "any", "any", "any", "", "", api_name="/import_run")
    assert f"Imported as run {new_id}" in message
    assert new_id != original and services.store.count_runs() == runs_before + 1
    # everything but the id is identical: the run row, every step's arrays, every event
    assert export_run(services.store, new_id) == export_run(services.store, original)
    skip = {"id", "owner_pid", "owner_host", "heartbeat_at"}  # who decoded it: no one, for an imported run
    assert {k: v for k, v in services.store.get_run(new_id).items() if k not in skip} == {
        k: v for k, v in services.store.get_run(original).items() if k not in skip
    }

    # the confirmation (the id the Confirm button was shown for) must match the selection
    _table, message, *_ = client.predict(new_id, new_id, "any", "any", "any", "", "", api_name="/delete_run")
    assert f"Run {new_id} deleted" in message
    assert services.store.get_run(new_id) is None and services.store.count_runs() == runs_before


@pytest.mark.parametrize(
    "content, pattern",
    [
        pytest.param(
            b'{"format": "diffusion-explorer-run", "version": 1, "run": {',
            r"cannot import this file: .*JSON",
            id="truncated-json",
        ),
        pytest.param(
            b'{"format": "something-else", "version": 1}',
            r"cannot import this file: not a run bundle",
            id="wrong-format",
        ),
        pytest.param(b"\xff\xfe not text", r"cannot import this file: .*UTF-8", id="not-utf8"),
    ],
)
def test_import_malformed_file_is_refused(client, services, tmp_path, content, pattern):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    runs_before = services.store.count_runs()
    with pytest.raises(Exception) as refused:
        client.predict(handle_file(str(bad)), "any", "any", "any", "", "", api_name="/import_run")
    assert re.search(pattern, str(refused.value)), str(refused.value)
    assert services.store.count_runs() == runs_before


def test_import_oversized_file_is_refused(client, services, two_runs, tmp_path, monkeypatch):
    bundle = tmp_path / "big.json"
    bundle.write_text(json.dumps(export_run(services.store, two_runs[0])))
    assert bundle.stat().st_size > 1000
    monkeypatch.setattr(services, "limits", dataclasses.replace(services.limits, max_import_bytes=1000))
    runs_before = services.store.count_runs()
    with pytest.raises(Exception) as refused:
        client.predict(handle_file(str(bundle)), "any", "any", "any", "", "", api_name="/import_run")
    message = str(refused.value)
    assert "accepts bundles up to 1000 bytes" in message, message
    assert f"{bundle.stat().st_size / 1024:.1f} KiB" in message, message
    assert services.store.count_runs() == runs_before


def test_open_run(client, services, two_runs):
    a, _ = two_runs
    outputs = client.predict(a, "confidence", api_name="/open_run")
    assert f"run {a} · completed" in outputs[0]
    with pytest.raises(Exception) as refused:
        client.predict(987654, "confidence", api_name="/open_run")
    assert "there is no run with id 987654" in str(refused.value)


def test_compare_names_both_runs(client, two_runs):
    a, b = two_runs
    _step, summary, note = client.predict([a, b], "step", "entropy", api_name="/compare")[:3]
    assert f"<th>A</th><td>{a}</td>" in summary and f"<th>B</th><td>{b}</td>" in summary
    assert "low_confidence" in summary and "margin" in summary
    assert "position(s) differ" in note
    with pytest.raises(Exception) as refused:
        client.predict([a, 987654], "step", "entropy", api_name="/compare")
    assert "there is no run with id 987654 (run B)" in str(refused.value)


def _listed(client, strategy="any", text="", status="any", since="") -> set[int]:
    table, _message = client.predict("any", strategy, status, since, text, api_name="/list_runs")
    return {row[0] for row in table["data"]}


def test_list_runs_filters(client, services, two_runs):
    a, b = two_runs
    runs = services.store.list_runs(limit=10_000)
    every = {r["id"] for r in runs}
    assert _listed(client) == every

    margin = _listed(client, strategy="margin")
    assert b in margin and a not in margin
    assert margin == {r["id"] for r in runs if r["strategy"] == "margin"}

    # text search is case-insensitive over the prompt and the generated text
    wanted = "Brave Cat"
    expected = {r["id"] for r in runs if wanted.lower() in (r["prompt"] + " " + (r["final_text"] or "")).lower()}
    assert b in expected and expected < every
    assert _listed(client, text=wanted) == expected
    assert _listed(client, strategy="low_confidence", text=wanted) == {
        r["id"] for r in runs if r["id"] in expected and r["strategy"] == "low_confidence"
    }
    assert _listed(client, text="no run says this") == set()

    _table, message = client.predict("any", "any", "any", "2026-13-45", "", api_name="/list_runs")
    assert "must be a date like" in message


def test_worker_death_shows_an_error_and_the_next_run_completes(server, services):
    client = Client(server[1], verbose=False)
    job = client.submit(*decode_args(gen_length=64, steps=64, pace_ms=100), api_name="/decode")
    wait_until_decoding(job)
    os.kill(services.pool.worker_pids()[0], signal.SIGKILL)
    final = job.result(timeout=30)
    assert "worker died" in final[0] and "status-error" in final[0]
    failed = services.store.list_runs(limit=1)[0]
    assert failed["status"] == "failed" and "worker died" in failed["error"]
    assert failed["n_steps"] == n_step_rows(services, failed["id"])
    run_id_of(client.predict(*decode_args(), api_name="/decode")[0])  # a fresh worker: completed


def _plot(output) -> dict:
    """A gr.Plot output as the browser gets it: the figure's JSON."""
    return json.loads(output["plot"])


def _title_of(output) -> str:
    return _plot(output)["layout"]["title"]["text"]


def test_decode_with_energies_violations_and_remasking(client, services):
    outputs = client.predict(
        *decode_args(
            strategy="rcr", energy_terms=["uni"], energy_candidates=4, window_start=0.0, violations=True, seed=2
        ),
        api_name="/decode",
    )
    status, tokens, _heat, _order, _bars, violation, energy, pair_s, pair_a, candidates, cost = outputs[:11]
    run_id = run_id_of(status)
    run = services.store.get_run(run_id)
    assert run["strategy"] == "rcr" and run["config"]["energies"] == [["uni", 1.0]] and run["config"]["violations"]
    # the token view marks the re-masked tokens and explains the badge
    assert re.search(r'class="tok[^"]* remasked" [^>]*data-remasks="\d+"', tokens), tokens[:500]
    assert "re-masked" in tokens.split('<div class="tokens-legend">')[1]
    # both position x step maps carry data, not an empty state
    assert "Dependency violations" in _title_of(violation) and _plot(violation)["data"]
    assert "kept candidate" in _title_of(energy) and _plot(energy)["data"]
    # with no step picked, the matrices and the candidates show the run's most negative step
    assert "S: do the tokens committed together agree?" in _title_of(pair_s)
    assert "most negative step" in _title_of(pair_s)
    assert "A: does the order of revealing matter?" in _title_of(pair_a)
    assert len(_plot(pair_s)["layout"]["xaxis"]["ticktext"]) >= 2
    assert "energy of each candidate (nats)" in _title_of(candidates)
    assert {t["name"] for t in _plot(candidates)["data"]} == {"kept", "not kept"}
    assert re.search(rf"Cost on run {run_id}: the extra pass took ≈ [\d.]+× a plain step", cost), cost

    # scrubbing to step 0 shows that step's matrices and candidates
    first = client.predict(0, "confidence", api_name="/scrub")
    assert _title_of(first[7]).startswith("Step 0 · S") and _title_of(first[9]).startswith("Step 0: energy")


def test_violations_off_says_so_and_what_it_would_cost(client):
    outputs = client.predict(*decode_args(violations=False), api_name="/decode")
    violation, pair_s, cost = outputs[5], outputs[7], outputs[10]
    for figure in (violation, pair_s):
        assert "off for this run" in _plot(figure)["layout"]["annotations"][0]["text"]
    assert cost.startswith("Off for run") and "≈ n× a plain step on a CPU" in cost


def test_nan_weight_is_refused_with_the_field_named(server, services):
    """NaN cannot come from the page or gradio_client (JSON has no NaN); a raw request can send it."""
    import httpx

    args = decode_args(energy_terms=["uni"], weight_uni=float("nan"))
    runs_before = services.store.count_runs()
    with httpx.Client(base_url=server[1], timeout=60) as http:
        response = http.post(
            "/gradio_api/call/decode", content=json.dumps({"data": args}), headers={"content-type": "application/json"}
        )
        event_id = response.raise_for_status().json()["event_id"]
        body = http.get(f"/gradio_api/call/decode/{event_id}").text
    assert "event: error" in body and "weight of energy 'uni' must be a finite number, got nan" in body, body
    assert services.store.count_runs() == runs_before


def test_form_defaults_and_presets_fill_every_field(services):
    from explorer.presets import PRESETS
    from explorer.ui.logic import DECODE_FIELDS, build_config, preset_form, violations_default

    assert violations_default(services.models["embedded"])
    assert not violations_default(
        dataclasses.replace(services.models["embedded"], family="llada", violations_default=False)
    )
    by_name = {p.name: p for p in PRESETS}
    energy = preset_form(by_name["Energy repairs the violation (Uni-E)"], services)
    assert set(energy) == set(DECODE_FIELDS)
    assert energy["energy_terms"] == ["uni"] and (energy["window_start"], energy["window_end"]) == (0.0, 1.0)
    assert build_config(services, energy).energies == (("uni", 1.0),)
    # a preset that names no energy turns them off again (the form is reset, not merged)
    plain = preset_form(by_name["One token per step stays grammatical"], services)
    assert plain["energy_terms"] == [] and plain["violations"] is True and plain["strategy"] == "low_confidence"
    assert build_config(services, plain).energies == ()


def test_the_xdlm_k_field_follows_the_models_training_noise(services):
    """XDLM's k is the noise the model was trained with: 0 for the MDLM, the kernel's k for the
    XDLM (models/embedded/xdlm_kernel.json), set when the model (or a preset naming it) is picked."""
    from explorer.adapters.embedded import xdlm_k
    from explorer.presets import Preset
    from explorer.ui.logic import model_noise_k, preset_form

    assert model_noise_k(services.models["embedded"]) == 0.0
    assert model_noise_k(services.models["embedded-xdlm"]) == xdlm_k() > 0
    on_xdlm = preset_form(Preset("x", "", {"model": "embedded-xdlm", "strategy": "xdlm_ancestral"}), services)
    assert on_xdlm["xdlm_k"] == xdlm_k()
    assert preset_form(Preset("m", "", {"model": "embedded", "strategy": "xdlm_ancestral"}), services)["xdlm_k"] == 0
    named = preset_form(Preset("n", "", {"model": "embedded-xdlm", "xdlm_k": 0.5}), services)
    assert named["xdlm_k"] == 0.5  # a preset that names k keeps it


def test_compare_violation_maps_share_one_scale(client, two_runs):
    a, b = two_runs
    outputs = client.predict([a, b], "step", "violations", api_name="/compare")
    summary, heat_a, heat_b = outputs[1], outputs[7]["value"], outputs[8]["value"]  # step, summary, note, 4 texts
    assert "<th>Σ S &lt; 0 (nats)</th>" in summary and "<td>off</td>" in summary  # energies off in both
    traces = [_plot(h)["data"][0] for h in (heat_a, heat_b)]
    assert all("Dependency violations" in _title_of(h) for h in (heat_a, heat_b))
    assert traces[0]["zmax"] == traces[1]["zmax"] >= 1.0 and traces[0]["zmid"] == 0


# ---- branching ---------------------------------------------------------------------------------

A_AN = dict(prompt="once upon a time there was", gen_length=32, steps=4, temperature=0.7, seed=2)  # 'an girl'


@pytest.fixture(scope="module")
def a_an_run(client):
    """The 'a/an violation' preset's run: position 0 holds 'an' (committed at step 0) before 'girl'."""
    return decode(client, **A_AN)


def branch(client, run_id: int, step: int, position: int, word: str) -> list:
    return client.predict(run_id, step, position, word, "confidence", 0, api_name="/branch")


def test_branch_with_a_token_stores_a_child(client, services, a_an_run):
    parent = services.store.get_run(a_an_run)
    assert parent["final_text"].split()[0] == "an"
    outputs = branch(client, a_an_run, 0, 0, "a")
    child = run_id_of(outputs[0])
    run = services.store.get_run(child)
    assert (run["parent_run_id"], run["branch_step"], run["status"]) == (a_an_run, 0, "completed")
    assert run["final_text"].split()[0] == "a"  # the forced token
    assert run["config"] == parent["config"]  # the parent's settings
    # the Decode view shows the child: the forced token marked, the branch line names the parent
    assert re.search(
        r'<span class="tok[^"]* forced"[^>]*data-tip="[^"]*forced by an edit after step 0[^"]*">a</span>', outputs[1]
    )
    assert f"Run {child} is a branch of run {a_an_run} after step 0 (position 0 forced to &#x27;a&#x27;)" in outputs[11]
    slider = outputs[-1]
    assert slider["maximum"] == 3 and slider["value"] == 3
    # the same session scrubs the child
    first = client.predict(0, "confidence", api_name="/scrub")
    assert f"run {child}" in first[0] and ">a</span>" in first[1]


@pytest.mark.parametrize(
    "step, position, word, pattern",
    [
        pytest.param(
            0,
            0,
            "gril",
            r"EditError: &#x27;gril&#x27; is not a token of model &#x27;embedded&#x27;; close words: girl",
            id="unknown-word",
        ),
        pytest.param(0, 32, "a", r"EditError: position 32 is out of range; valid: 0\.\.31", id="position-out-of-range"),
        pytest.param(
            4, 0, "a", r"BranchError: step 4 is out of range for run \d+; valid: -1\.\.3", id="step-out-of-range"
        ),
        pytest.param(0, 0, "<mask>", r"EditError: .*&lt;mask&gt;.* special token", id="the-mask"),
    ],
)
def test_bad_branch_is_refused_and_nothing_is_stored(client, services, a_an_run, step, position, word, pattern):
    runs_before = services.store.count_runs()
    outputs = branch(client, a_an_run, step, position, word)
    assert "status-error" in outputs[0] and "The branch was not made (nothing stored)" in outputs[0], outputs[0]
    assert re.search(pattern, outputs[0]), outputs[0]
    assert f"run {a_an_run} · completed" not in outputs[0]  # the status is the error, over the parent shown again
    assert services.store.count_runs() == runs_before
    assert services.pool.pending() == 0 and services.pool.busy() == 0


def test_branch_requests_refused_before_the_worker(client, services, a_an_run):
    runs_before = services.store.count_runs()
    for args, pattern in (
        ((987654, 0, 0, "a"), "there is no run with id 987654"),
        ((a_an_run, 0, 0, "  "), "type a word"),
        ((a_an_run, 0, None, "a"), "position is empty|position must be a whole number"),
    ):
        with pytest.raises(Exception) as refused:
            client.predict(*args, "confidence", 0, api_name="/branch")
        assert type(refused.value).__name__ == "AppError"
        assert re.search(pattern, str(refused.value)), str(refused.value)
    assert services.store.count_runs() == runs_before


def test_remask_and_other_settings_branches(client, services, a_an_run):
    outputs = client.predict(a_an_run, 0, 0, "confidence", 0, api_name="/branch_remask")
    remasked = run_id_of(outputs[0])
    arrays = services.store.read_arrays(remasked)
    an = int(services.store.read_arrays(a_an_run).tokens[0, 0])
    assert arrays.edits.rows() == [(0, 0, an, False)]  # the edit took 'an' away after step 0
    mask = int(arrays.run["mask_id"])
    assert int(arrays.tokens[0, 0]) == mask and int(arrays.tokens[0, -1]) != mask  # masked, then decoded again
    assert services.store.get_run(remasked)["parent_run_id"] == a_an_run

    # no edit; the form's settings: one token per step from step 1 on (strategy margin)
    form = decode_args(**{**A_AN, "steps": 32, "strategy": "margin"})
    outputs = client.predict(a_an_run, 0, *form, api_name="/branch_settings")
    child = run_id_of(outputs[0])
    run = services.store.get_run(child)
    assert run["config"]["strategy"] == "margin" and run["config"]["steps"] == 32 and run["branch_step"] == 0
    assert services.store.read_arrays(child).edits.size == 0

    runs_before = services.store.count_runs()
    with pytest.raises(Exception) as refused:
        client.predict(a_an_run, 0, *decode_args(**{**A_AN, "gen_length": 64}), api_name="/branch_settings")
    assert "keeps its parent's generation length" in str(refused.value)
    assert services.store.count_runs() == runs_before


def test_alternatives_rows_are_children_of_the_parent(client, services, a_an_run):
    status, table, plot, _pick = client.predict(a_an_run, 0, 0, 3, api_name="/alternatives")
    assert "Done: " in status and "status-ok" in status, status
    assert table["headers"][:4] == ["token", "p", "run", "checker"]
    rows = table["data"]
    assert len(rows) >= 3
    tokens = [row[0] for row in rows]
    assert "an (as decoded)" in tokens and "a" in tokens
    for row in rows:
        run = services.store.get_run(int(row[2]))
        assert (run["parent_run_id"], run["branch_step"]) == (a_an_run, 0), row
    figure = _plot(plot)
    assert "Which decision mattered?" in figure["layout"]["title"]["text"]
    assert "nats" in figure["layout"]["yaxis"]["title"]["text"]
    assert sum(len(trace["x"]) for trace in figure["data"]) == len(rows)

    with pytest.raises(Exception) as refused:
        client.predict(a_an_run, 0, 0, 11, api_name="/alternatives")
    assert "top-N 11 is out of range; valid: 1..10" in str(refused.value)


def test_runs_table_shows_branches_under_their_parent(client, services, a_an_run):
    child = run_id_of(branch(client, a_an_run, 1, 5, "the")[0])
    table, _message = client.predict("any", "any", "any", "", "", api_name="/list_runs")
    headers, rows = table["headers"], table["data"]
    assert headers[:3] == ["id", "parent", "branch step"]
    ids = [row[0] for row in rows]
    row = rows[ids.index(child)]
    assert (str(row[1]), str(row[2])) == (str(a_an_run), "1")
    assert row[headers.index("prompt")].startswith("↳ ")
    # every branch of the parent is listed after it, before the next run that is not one of its branches
    start = ids.index(a_an_run)
    block = []
    for row in rows[start + 1 :]:
        if not row[headers.index("prompt")].lstrip("· ").startswith("↳"):
            break
        block.append(row[0])
    assert child in block
    assert services.store.get_run(a_an_run)["parent_run_id"] is None


def test_compare_a_branch_with_its_parent(client, services, a_an_run):
    child = run_id_of(branch(client, a_an_run, 0, 0, "a")[0])
    outputs = client.predict(child, "confidence", api_name="/compare_branch")
    picked, _align, _metric, slider, summary, _note, tokens_a, tokens_b = outputs[:8]  # then 2 texts, 4 maps
    tokens_a, tokens_b = tokens_a["value"], tokens_b["value"]
    assert picked["value"] == [a_an_run, child]
    assert slider["maximum"] == 3 and slider["value"] == 3
    rows = ("checker", "checker violations", "Σ S &lt; 0 (nats)", "AR-ness τ", "forward passes", "wall time")
    for name in (*rows, "steps", "tokens / step"):
        assert f"<th>{name}</th>" in summary, name
    assert f"run {a_an_run} after step 0" in summary and "after step 0)" in summary  # passes after the branch step
    assert 'class="tok diff' in tokens_a and 'class="tok diff' in tokens_b

    # the shared slider: before the branch step nothing differs; at it, the edit
    summary_0 = client.predict([a_an_run, child], "step", "confidence", 0, api_name="/compare_step")[0]  # the note
    assert "1 position(s) differ after step 0" in summary_0, summary_0
    with pytest.raises(Exception) as refused:
        client.predict(a_an_run, "confidence", api_name="/compare_branch")
    assert "is not a branch" in str(refused.value)


# ---- XDLM: revisions, the changes map, MDLM and XDLM compared ----------------------------------------

XDLM = dict(prompt="once upon a time", model="embedded-xdlm", strategy="xdlm_ancestral", temperature=1.0)
# The changes map's place in the /decode, /scrub and /open_run outputs: the view's last, and the
# client leaves out the two buttons before it (compare_parent, open_parent).
CHANGES = 12


def _component(client: Client, elem_id: str) -> dict:
    return next(c["props"] for c in client.config["components"] if c.get("props", {}).get("elem_id") == elem_id)


@pytest.fixture(scope="module")
def xdlm_run(client):
    """An embedded-xdlm run (xdlm_ancestral, T = 1) that revised a token: the first seed from 3 on
    that does (its weights may be retrained: the seed is searched, not fixed); (run id, outputs)."""
    for seed in range(3, 13):
        outputs = client.predict(*decode_args(**XDLM, seed=seed), api_name="/decode")
        if re.search(r"· \d+ revisions? ·", outputs[0]):
            return run_id_of(outputs[0]), seed, outputs
    pytest.fail("no seed in 3..12 revised a token")


def test_the_form_offers_embedded_xdlm_and_its_knobs(client):
    model = _component(client, "model")
    assert "embedded-xdlm" in [choice[1] for choice in model["choices"]]
    # the knobs come from the registry and show only with their strategies (low_confidence at first)
    for knob in ("xdlm-k", "xdlm-top-p"):
        props = _component(client, knob)
        assert props["visible"] is False and "xdlm_ancestral" in props["label"], props["label"]
    assert "xdlm_revise" in _component(client, "xdlm-k")["label"]
    assert "xdlm_revise" not in _component(client, "xdlm-top-p")["label"]


def test_xdlm_run_shows_revisions_and_the_changes_map(client, services, xdlm_run):
    run_id, _seed, outputs = xdlm_run
    arrays = services.store.read_arrays(run_id)
    assert arrays.commits.n_revised > 0
    assert f"· {arrays.commits.n_revised} revision" in outputs[0] and "checker: " in outputs[0]
    tokens = outputs[1].split('<div class="tokens-legend">')[0]  # the line (the legend shows a sample badge)
    badges = re.findall(r'<span class="tok[^"]* revised[^"]*" [^>]*data-revisions="(\d+)"', tokens)
    assert sum(map(int, badges)) == arrays.commits.n_revised
    assert re.search(r"⇄ revised \d×:\nstep \d+: &#x27;", tokens)  # the history, one change a line, escaped
    changes = _plot(outputs[CHANGES])
    assert "What changed where" in changes["layout"]["title"]["text"] and changes["layout"]["showlegend"]
    legend = [trace["name"] for trace in changes["data"][1:]]
    assert f"revise ({arrays.commits.n_revised})" in legend, legend
    # the commit order and the AR-ness are of each position's last change, and say so
    order = outputs[3]
    assert "last change" in _title_of(order) and "last changed at step" in _plot(order)["data"][0]["hovertemplate"]

    # scrubbing: the token view after step s holds exactly tokens[:, s]; the changes map marks s
    mask = int(arrays.run["mask_id"])
    text = services.models["embedded-xdlm"].token_text
    for step in (0, arrays.n_steps // 2, arrays.n_steps - 1):
        shown = client.predict(step, "confidence", api_name="/scrub")
        line = shown[1].split('<div class="tokens-legend">')[0]
        spans = re.findall(r'<span class="tok([^"]*)"[^>]*>([^<]*)</span>', line)
        got = ["▒" if "masked" in classes.split() else html.unescape(word) for classes, word in spans]
        assert got == ["▒" if t == mask else text(t) for t in arrays.tokens[:, step].tolist()], step
        assert any(a["text"] == f"step {step}" for a in _plot(shown[CHANGES])["layout"]["annotations"])


def test_compare_mdlm_and_xdlm_on_the_same_prompt_and_seed(client, services, xdlm_run):
    a, seed, _outputs = xdlm_run
    outputs = client.predict([a], "embedded", "low_confidence", "changes", api_name="/compare_other_model")
    picked, _align, _metric, slider, summary, _note, tokens_a, tokens_b = outputs[:8]  # then 2 texts, 4 maps
    heat_a, heat_b, status = outputs[10]["value"], outputs[11]["value"], outputs[-1]
    b_id, tokens_a, tokens_b = picked["value"][1], tokens_a["value"], tokens_b["value"]
    assert picked["value"][0] == a
    run_a, run_b = services.store.get_run(a), services.store.get_run(int(b_id))
    assert (run_b["model"], run_b["strategy"], run_b["prompt"], run_b["seed"]) == (
        "embedded",
        "low_confidence",
        run_a["prompt"],
        seed,
    )
    assert run_b["config"]["gen_length"] == run_a["config"]["gen_length"] and run_b["status"] == "completed"
    assert f"Run {b_id}: run {a}&#x27;s prompt and seed on embedded (low_confidence)" in status
    assert f"<th>A</th><td>{a}</td><td>embedded-xdlm</td><td>xdlm_ancestral</td>" in summary
    assert f"<td>1</td><td>{seed}</td><td>completed</td>" in summary  # T, seed, status
    assert f"<th>B</th><td>{b_id}</td><td>embedded</td><td>low_confidence</td>" in summary
    assert '<td class="prompt">once upon a time</td></tr>' in summary
    assert "<th>revisions</th>" in summary and "<th>AR-ness τ</th>" in summary
    assert slider["value"] == max(services.store.get_run(a)["n_steps"], run_b["n_steps"]) - 1
    legends = [[t["name"] for t in _plot(h)["data"][1:]] for h in (heat_a, heat_b)]
    assert any(name.startswith("revise (") and name != "revise (0)" for name in legends[0]), legends
    assert "revise (0)" in legends[1]  # low_confidence never revises
    assert 'data-revisions="' in tokens_a and 'data-revisions="' not in tokens_b
    # A's own strategy on the MDLM too; the Compare heatmap choice "changes" is there for both
    same = client.predict([a], "embedded", "same as run A", "confidence", api_name="/compare_other_model")
    assert services.store.get_run(int(same[0]["value"][1]))["strategy"] == "xdlm_ancestral"
    assert "Confidence" in _title_of(same[10]["value"]) and "Confidence" in _title_of(same[11]["value"])

    runs_before = services.store.count_runs()
    for args, pattern in (
        (([a], "nonexistent", "same as run A", "changes"), "not in the list of choices|unknown model"),
        (([987654], "embedded", "same as run A", "changes"), "there is no run with id 987654"),
    ):
        with pytest.raises(Exception) as refused:
            client.predict(*args, api_name="/compare_other_model")
        assert re.search(pattern, str(refused.value)), str(refused.value)
    assert services.store.count_runs() == runs_before
