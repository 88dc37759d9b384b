"""The Gradio app end to end over HTTP: gradio_client against the real server and worker.

One server (one model worker, a SQLite file in a temporary directory) serves the module.
One gradio_client.Client is one browser session: session state (the running job for Stop,
the open run for scrubbing) belongs to it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from sqlalchemy import func, select

from app_server import decode_args, running_app
from explorer.bundle import export_run
from explorer.store import Step

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
    pytest.param({"gen_length": "max+1"}, r"\b{max1}\b.*(maximum value {max}\b|range 1\.\.{max}\b)",
                 id="gen-length-over-limit"),
    pytest.param({"gen_length": 32, "steps": 33}, r"steps 33 .*1\.\.32", id="steps-over-length"),
    pytest.param({"gen_length": 32, "steps": 8, "block_length": 5}, r"block-length 5 does not divide",
                 id="block-not-dividing"),
    pytest.param({"prompt": "once upon a zebra"}, r"'zebra'", id="unknown-word"),
    pytest.param({"strategy": "threshold", "threshold": 0.0}, r"0(\.0)?\b.*(minimum value 0\.05|\(0, 1\])",
                 id="threshold-0"),
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
    skip = {"id"}
    assert ({k: v for k, v in services.store.get_run(new_id).items() if k not in skip}
            == {k: v for k, v in services.store.get_run(original).items() if k not in skip})

    _table, message = client.predict(new_id, "any", "any", "any", "", "", api_name="/delete_run")
    assert f"Run {new_id} deleted" in message
    assert services.store.get_run(new_id) is None and services.store.count_runs() == runs_before


@pytest.mark.parametrize("content, pattern", [
    pytest.param(b'{"format": "diffusion-explorer-run", "version": 1, "run": {', r"cannot import this file: .*JSON",
                 id="truncated-json"),
    pytest.param(b'{"format": "something-else", "version": 1}', r"cannot import this file: not a run bundle",
                 id="wrong-format"),
    pytest.param(b"\xff\xfe not text", r"cannot import this file: .*UTF-8", id="not-utf8"),
])
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
    summary = client.predict(a, b, "entropy", api_name="/compare")[0]
    assert f"<tr><th>run</th><td>{a}</td><td>{b}</td></tr>" in summary
    assert "low_confidence" in summary and "margin" in summary
    assert "position(s) differ" in summary
    with pytest.raises(Exception) as refused:
        client.predict(a, 987654, "entropy", api_name="/compare")
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
        r["id"] for r in runs if r["id"] in expected and r["strategy"] == "low_confidence"}
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
