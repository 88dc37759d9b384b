"""Startup recovery (issue 13, defect 1, the store's side), on SQLite and PostgreSQL: a running run
records its owner (pid, host, heartbeat); `recover_interrupted` marks the runs whose owner is
gone as `interrupted`, every stored step kept; error texts are one readable line."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from explorer.api import decode
from explorer.decoding.engine import run_decode
from explorer.decoding.records import DecodeResult
from explorer.store.database import HOST, STATUSES, Run, StoreWriter, TrajectoryStore, readable_error


@pytest.fixture
def store(db_url):
    s = TrajectoryStore(db_url)
    yield s
    s.engine.dispose()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _left_running(store, denoiser, **owner) -> int:
    """A real decode's run, put back to `running` with the given owner, as a killed writer leaves it."""
    run_id = decode("once upon a time", denoiser, store=store, gen_length=8, steps=4).run_id
    with store.session() as s, s.begin():
        s.execute(update(Run).where(Run.id == run_id).values(status="running", finished_at=None, **owner))
    return run_id


def test_interrupted_is_a_status():
    assert "interrupted" in STATUSES


def test_owner_is_recorded(store, denoiser):
    run_id = decode("once upon a time", denoiser, store=store, gen_length=8, steps=4).run_id
    run = store.get_run(run_id)
    assert run["owner_host"] == HOST and run["owner_pid"] > 0
    assert run["heartbeat_at"] >= run["created_at"]


def test_dead_process_run_is_interrupted_with_its_steps(store, denoiser):
    pid = _dead_pid()
    run_id = _left_running(store, denoiser, owner_pid=pid, owner_host=HOST, heartbeat_at=datetime.now(UTC))
    steps_before = store.step_summaries(run_id)
    assert store.recover_interrupted() == [run_id]
    run = store.get_run(run_id)
    assert run["status"] == "interrupted" and run["finished_at"] is not None
    assert run["error"] == f"interrupted: the process that decoded it (pid {pid} on {HOST}) ended"
    assert store.step_summaries(run_id) == steps_before and len(steps_before) == 4
    assert store.read_arrays(run_id).n_steps == 4
    assert store.recover_interrupted() == []  # done once


def test_live_process_run_is_left_running(store, denoiser):
    """A run this process is writing (its StoreWriter open) and one of another live process."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = _left_running(store, denoiser, owner_pid=parent.pid, owner_host=HOST, heartbeat_at=datetime.now(UTC))
        seen = {}

        class Probe(StoreWriter):
            def on_step(self, record):
                super().on_step(record)
                if record.step == 1:
                    seen["recovered"] = self.store.recover_interrupted()
                    seen["status"] = self.store.get_run(self.run_id)["status"]

        from explorer.api import prepare
        from explorer.decoding.config import DecodeConfig

        config = DecodeConfig(gen_length=8, steps=4)
        ids = prepare("once upon a time", denoiser, config)
        run_decode(denoiser, ids, config, [Probe(store, denoiser.token_text)], prompt_text="once upon a time")
        assert seen == {"recovered": [], "status": "running"}
        assert store.get_run(other)["status"] == "running"
    finally:
        parent.kill()
        parent.wait()
    assert store.recover_interrupted() == [other]  # once it has ended


def test_run_of_this_pid_not_being_written_is_interrupted(store, denoiser):
    """The pid was reused (a container restarted: the app is pid 1 again): not ours to wait for."""
    import os

    run_id = _left_running(store, denoiser, owner_pid=os.getpid(), owner_host=HOST, heartbeat_at=datetime.now(UTC))
    assert store.recover_interrupted() == [run_id]


def test_other_host_stale_heartbeat_is_interrupted(store, denoiser):
    fresh = _left_running(store, denoiser, owner_pid=1, owner_host="elsewhere", heartbeat_at=datetime.now(UTC))
    stale = _left_running(
        store, denoiser, owner_pid=1, owner_host="elsewhere", heartbeat_at=datetime.now(UTC) - timedelta(minutes=20)
    )
    assert store.recover_interrupted(stale_after_s=300) == [stale]
    run = store.get_run(stale)
    assert run["status"] == "interrupted"
    assert run["error"].startswith("interrupted: the process that decoded it (pid 1 on elsewhere) ended")
    assert store.get_run(fresh)["status"] == "running"
    assert store.recover_interrupted(stale_after_s=0) == [fresh]


def test_run_without_owner_is_judged_by_its_age(store, denoiser):
    """A run left running by a release that did not record owners (upgraded database)."""
    old = _left_running(store, denoiser, owner_pid=None, owner_host=None, heartbeat_at=None)
    assert store.recover_interrupted(stale_after_s=3600) == []
    assert store.recover_interrupted(stale_after_s=0) == [old]


def test_heartbeat_thread_refreshes_a_slow_run(store, denoiser):
    """A step slower than the heartbeat period still refreshes the heartbeat."""
    import time

    from explorer.api import prepare
    from explorer.decoding.config import DecodeConfig

    beats = []

    class Slow(StoreWriter):
        def on_step(self, record):
            super().on_step(record)
            if record.step == 0:
                first = self.store.get_run(self.run_id)["heartbeat_at"]
                time.sleep(0.5)
                beats.append(self.store.get_run(self.run_id)["heartbeat_at"] > first)

    config = DecodeConfig(gen_length=8, steps=2)
    ids = prepare("once upon a time", denoiser, config)
    writer = Slow(store, denoiser.token_text, batch_steps=100, max_delay=100, heartbeat_s=0.1)
    run_decode(denoiser, ids, config, [writer], prompt_text="once upon a time")
    assert beats == [True]
    assert writer._stop_beating.is_set()


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        ("failed", "KeyboardInterrupt: ", ("cancelled", "cancelled: interrupted by Ctrl-C (SIGINT)")),
        (
            "failed",
            "SystemExit: 143",
            ("cancelled", "cancelled: the process was asked to exit (SIGTERM or SystemExit)"),
        ),
        (
            "failed",
            "EOFError: ",
            ("interrupted", "interrupted: the app that started this run closed its connection to the worker"),
        ),
        ("failed", "RuntimeError: ", ("failed", "RuntimeError (no message)")),
        ("failed", "ValueError: bad\n  value\n", ("failed", "ValueError: bad value")),
        ("completed", None, ("completed", None)),
    ],
)
def test_readable_errors(status, error, expected):
    assert readable_error(status, error) == expected


def test_ctrl_c_is_stored_as_cancelled(store, denoiser):
    """The engine passes ("failed", "KeyboardInterrupt: "): stored as one readable line."""
    from explorer.api import prepare
    from explorer.decoding.config import DecodeConfig

    class CtrlC(StoreWriter):
        def on_step(self, record):
            super().on_step(record)
            if record.step == 1:
                raise KeyboardInterrupt

    config = DecodeConfig(gen_length=8, steps=4)
    ids = prepare("once upon a time", denoiser, config)
    writer = CtrlC(store, denoiser.token_text)
    with pytest.raises(KeyboardInterrupt):
        run_decode(denoiser, ids, config, [writer], prompt_text="once upon a time")
    run = store.get_run(writer.run_id)
    assert (run["status"], run["error"]) == ("cancelled", "cancelled: interrupted by Ctrl-C (SIGINT)")
    assert run["n_steps"] == 2
    store.mark_failed(writer.run_id, "EOFError: ")  # not running any more: left as it is
    assert store.get_run(writer.run_id)["status"] == "cancelled"
    assert DecodeResult  # (the engine's result type, for readers)


def test_the_app_and_the_cli_recover_on_start(tmp_path, denoiser):
    """A run a dead app left `running` ends `interrupted` when the app starts again (Services.create)
    or the CLI next decodes; the one the CLI then decodes completes."""
    from explorer.cli import main
    from explorer.services import Services

    url = f"sqlite:///{tmp_path / 'restart.db'}"
    store = TrajectoryStore(url)
    first = _left_running(store, denoiser, owner_pid=_dead_pid(), owner_host=HOST, heartbeat_at=datetime.now(UTC))
    services = Services.create(url, replay_only=True)
    try:
        assert services.store.get_run(first)["status"] == "interrupted"
    finally:
        services.close()
    second = _left_running(store, denoiser, owner_pid=_dead_pid(), owner_host=HOST, heartbeat_at=datetime.now(UTC))
    assert main(["decode", "--prompt", "once upon a time", "--gen-length", "8", "--steps", "4", "--db", url]) == 0
    assert store.get_run(second)["status"] == "interrupted"
    assert store.list_runs(limit=1)[0]["status"] == "completed"


def test_sigterm_to_the_app_ends_its_run_cancelled_with_the_steps(tmp_path):
    """`docker stop` sends SIGTERM: the app shuts its worker pool down, the run being decoded stops at
    its next step and is stored `cancelled`, never left `running`; its steps are kept."""
    import os
    import signal
    import socket
    import time
    from pathlib import Path

    from gradio_client import Client

    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"sqlite:///{tmp_path / 'app.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    app = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--db", url, "--threads", "1"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        client = None
        while client is None and time.monotonic() < deadline:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:
                time.sleep(0.5)
        assert client is not None, "the app did not start"
        from app_server import decode_args

        client.submit(*decode_args(gen_length=32, steps=32, pace_ms=200), api_name="/decode")
        store = TrajectoryStore(url)
        while time.monotonic() < deadline:
            runs = store.list_runs()
            if runs and store.step_summaries(runs[0]["id"]):
                break
            time.sleep(0.1)
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
    store = TrajectoryStore(url)
    [run] = store.list_runs()
    assert run["status"] == "cancelled", run
    assert 0 < len(store.step_summaries(run["id"])) < 32
