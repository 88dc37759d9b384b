"""Replay-only mode: the app serves stored runs with no model and no worker process.

Two runs are decoded for real on the embedded model (explorer.api.decode) into one temporary
store and exported as bundles (explorer.store.bundle); the bundles are imported into a second
SQLite file, and the app is started on that file the way `python app.py --replay-only` starts
it (app.parse_args + app.create_services). Through gradio_client: a run opens with its
tokens (their texts read from the stored events), the step slider scrubs it, two runs compare,
a bundle imports, and /decode is refused with a message saying why. Counters on every way of
loading the embedded weights (and on the worker pool) stay at zero from the moment the
server is set up.
"""

from __future__ import annotations

import html
import json
import multiprocessing
import os
import re
import urllib.request
from pathlib import Path

import pytest
from app_server import decode_args, running_app
from gradio_client import Client, handle_file

import app
from explorer.api import decode
from explorer.store.bundle import export_run, export_run_json, import_run
from explorer.store.database import TrajectoryStore

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

TOKEN_SPAN = re.compile(r'<span class="tok(?! masked)[^"]*" style="[^"]*" data-tip="[^"]*">([^<]*)</span>')


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, denoiser):
    """Two real embedded decodes, exported from the store that recorded them: [(bundle bytes, token texts)]."""
    source = TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('recorded') / 'source.db'}")
    runs = []
    for prompt, strategy in (("once upon a time", "low_confidence"), ("the brave cat", "margin")):
        out = decode(prompt, denoiser, store=source, gen_length=32, steps=8, strategy=strategy, seed=1)
        assert out.result.status == "completed"
        runs.append((export_run_json(source, out.run_id), [denoiser.token_text(t) for t in out.token_ids]))
    source.engine.dispose()
    return runs


class LoadCounter:
    """Counts every call that would read the embedded model's weights or start a worker."""

    def __init__(self, monkeypatch) -> None:
        from explorer import worker
        from explorer.adapters import embedded, families, loading
        from models import transformer

        self.calls: dict[str, int] = {}

        def counted(name, fn):
            def wrapper(*args, **kwargs):
                self.calls[name] = self.calls.get(name, 0) + 1
                return fn(*args, **kwargs)

            return wrapper

        for module, name in (
            (embedded, "load_embedded"),
            (loading, "load_denoiser"),
            (worker, "load_denoiser"),
            (transformer, "load_model"),
        ):
            monkeypatch.setattr(module, name, counted(f"{module.__name__}.{name}", getattr(module, name)))
        for family, loader in list(families.MODEL_FAMILIES.items()):
            monkeypatch.setitem(families.MODEL_FAMILIES, family, counted(f"MODEL_FAMILIES[{family!r}]", loader))
        monkeypatch.setattr(
            transformer.Transformer, "__init__", counted("Transformer.__init__", transformer.Transformer.__init__)
        )
        monkeypatch.setattr(worker.WorkerPool, "__init__", counted("WorkerPool.__init__", worker.WorkerPool.__init__))
        monkeypatch.setattr(worker, "worker_main", counted("worker_main", worker.worker_main))


def child_pids() -> set[int]:
    """Live child processes of this process (read from /proc: no psutil needed)."""
    me, children = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                children.add(int(entry.name))
    return children


@pytest.fixture(scope="module")
def replay_server(tmp_path_factory, recorded):
    monkeypatch = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("replay")
    url = f"sqlite:///{tmp / 'replay.db'}"
    replay_store = TrajectoryStore(url)
    run_ids = [import_run(replay_store, bundle) for bundle, _ in recorded]
    replay_store.engine.dispose()

    counter = LoadCounter(monkeypatch)
    children_before = child_pids()
    services = app.create_services(app.parse_args(["--replay-only", "--db", url]))
    try:
        with running_app(tmp, services=services) as (services, server_url):
            yield {
                "services": services,
                "url": server_url,
                "run_ids": run_ids,
                "counter": counter,
                "children_before": children_before,
                "tmp": tmp,
            }
    finally:
        monkeypatch.undo()


@pytest.fixture(scope="module")
def client(replay_server):
    return Client(replay_server["url"], verbose=False)


def test_replay_only_from_the_command_line_and_the_environment(monkeypatch):
    monkeypatch.delenv(app.REPLAY_ONLY_ENV, raising=False)
    assert not app.parse_args([]).replay_only
    assert app.parse_args(["--replay-only"]).replay_only
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv(app.REPLAY_ONLY_ENV, value)
        assert app.parse_args([]).replay_only is expected, value


def test_no_worker_and_no_model(replay_server):
    services = replay_server["services"]
    assert services.pool is None and services.replay_only
    assert services.models == {}


def test_decode_tab_says_it_is_replay_only(replay_server):
    with urllib.request.urlopen(f"{replay_server['url'].rstrip('/')}/config", timeout=30) as response:
        config = json.loads(response.read())
    components = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    assert components["run-btn"]["props"]["interactive"] is False
    note = components["replay-only-note"]["props"]["value"]
    assert "Replay-only server" in note and "Run is disabled" in note and "Import a bundle" in note
    assert "Replay-only" in components["status"]["props"]["value"]


def test_open_run_shows_the_stored_tokens_and_scrubs(client, replay_server, recorded):
    run_id = replay_server["run_ids"][0]
    outputs = client.predict(run_id, "confidence", api_name="/open_run")
    assert f"run {run_id} · completed" in outputs[0] and "8 steps" in outputs[0]
    shown = [html.unescape(t) for t in TOKEN_SPAN.findall(outputs[1])]
    assert shown == recorded[0][1]  # every token, its text from the stored events (no model here)
    assert not any(t.startswith("#") for t in shown)
    assert "checker:" in outputs[0]  # the grammar checker needs no weights

    first = client.predict(0, "confidence", api_name="/scrub")
    last = client.predict(7, "confidence", api_name="/scrub")
    assert f"run {run_id}" in first[0] and first[1] != last[1]
    assert len(TOKEN_SPAN.findall(first[1])) == 4  # 4 tokens per step: the state after step 0


def test_compare_two_imported_runs(client, replay_server):
    a, b = replay_server["run_ids"]
    _step, summary, note = client.predict([a, b], "step", "entropy", api_name="/compare")[:3]
    assert f"<th>A</th><td>{a}</td>" in summary and f"<th>B</th><td>{b}</td>" in summary
    assert "low_confidence" in summary and "margin" in summary and "position(s) differ" in note


def test_import_a_bundle_through_the_runs_tab(client, replay_server, recorded):
    services = replay_server["services"]
    path = replay_server["tmp"] / "bundle.json"
    path.write_bytes(recorded[1][0])
    _table, message, new_id = client.predict(
        handle_file(str(path)), "any", "any", "any", "", "", api_name="/import_run"
    )
    assert f"Imported as run {new_id}" in message
    assert export_run(services.store, new_id) == json.loads(recorded[1][0])
    table, _message = client.predict("any", "any", "any", "", "", api_name="/list_runs")
    assert {row[0] for row in table["data"]} >= {*replay_server["run_ids"], new_id}


def test_decode_is_refused_with_a_clear_message(client, replay_server):
    services = replay_server["services"]
    runs_before = services.store.count_runs()
    with pytest.raises(Exception) as refused:
        client.predict(*decode_args(), api_name="/decode")
    assert type(refused.value).__name__ == "AppError"
    message = str(refused.value)
    assert "replay-only" in message and "runs no model" in message and "Runs tab" in message, message
    assert services.store.count_runs() == runs_before


def test_no_weights_were_loaded_and_no_process_started(client, replay_server):
    # runs last in this module (pytest keeps file order): every request above is behind it
    client.predict(replay_server["run_ids"][1], "margin", api_name="/open_run")
    assert replay_server["counter"].calls == {}
    assert replay_server["services"].pool is None
    # no process started since the server was set up (other test modules' workers may still live)
    assert child_pids() - replay_server["children_before"] == set()
    assert {p.pid for p in multiprocessing.active_children()} <= replay_server["children_before"]
