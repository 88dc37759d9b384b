"""The worker pool on Ray (`python app.py --workers ray[:N]`): the same queue, streaming, cancel
and worker-death semantics as the local `WorkerPool` (tests/test_worker.py), on a local Ray
cluster of 2 CPUs. One pool of one actor per store backend serves the module (an actor imports
torch and loads the embedded model, a few seconds here); the killed-actor test leaves a fresh
actor behind, so the order of the tests does not matter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import BACKENDS, new_db_url
from sqlalchemy import func, select

import app
from explorer.adapters.registry import load_registry
from explorer.api import decode
from explorer.branching.plan import BranchRequest
from explorer.decoding.config import DecodeConfig
from explorer.jobs import (
    AlternativesDone,
    DeviceInfo,
    JobDone,
    JobError,
    JobFailed,
    OutcomeDone,
    Queued,
    RunStarted,
    StepDone,
)
from explorer.ray_pool import RayWorkerPool, actor_options, default_workers
from explorer.store.database import Step, TrajectoryStore
from explorer.worker import JobHandle, QueueFullError

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "once upon a time"
NAMES = {
    Queued: "queued",
    RunStarted: "started",
    StepDone: "step",
    OutcomeDone: "outcome",
    JobDone: "done",
    AlternativesDone: "alternatives",
    JobError: "error",
    JobFailed: "failed",
}
TERMINAL = (JobDone, AlternativesDone, JobError, JobFailed)


@pytest.fixture(scope="module")
def ray_cluster():
    # address="local": a cluster of its own, even where `ray start` ran on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module", params=BACKENDS)
def pool(request, ray_cluster, tmp_path_factory):
    """One actor on one CPU; at most 2 jobs wait (the queue-full test). The operator's registry
    adds `story` (the embedded model under another name): the actor can load it only if the
    pool handed it this registry."""
    directory = tmp_path_factory.mktemp("ray_pool")
    config = directory / "models.json"
    config.write_text(json.dumps({"models": [{"name": "story", "family": "embedded", "device": "cpu"}]}))
    url = new_db_url(request, request.param, directory)
    pool = RayWorkerPool(url, load_registry(config), n_workers=1, threads=1, max_pending=2)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def store(pool) -> TrajectoryStore:
    return TrajectoryStore(pool.db_url)


def collect(handle: JobHandle, until=None, timeout: float = 60.0) -> list:
    """The handle's events up to a terminal one (or the first for which `until(events)` holds)."""
    events = []
    while not events or not isinstance(events[-1], TERMINAL):
        events.append(handle.events.get(timeout=timeout))
        if until is not None and until(events):
            break
    return events


def kinds(events) -> list[str]:
    return [NAMES[type(event)] for event in events]


def n_steps_seen(events) -> int:
    return kinds(events).count("step")


def n_step_rows(store: TrajectoryStore, run_id: int) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(Step).where(Step.run_id == run_id))


def wait_idle(pool: RayWorkerPool, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while pool.busy() or pool.pending():
        assert time.monotonic() < deadline, "the pool did not become idle"
        time.sleep(0.02)


def test_a_run_streams_through_an_actor_and_matches_the_api(pool, store):
    wait_idle(pool)
    config = DecodeConfig(gen_length=32, steps=8, temperature=1.0, seed=3)
    handle = pool.submit(PROMPT, "story", config)  # a model of the registry the pool was given
    events = collect(handle)

    assert kinds(events) == ["queued", "started"] + ["step"] * 8 + ["done"]
    assert events[0].ahead == 0
    assert handle.run_id == events[1].run_id
    assert handle.device == DeviceInfo("cpu") and pool.device_info == DeviceInfo("cpu")
    assert [e.record.step for e in events if isinstance(e, StepDone)] == list(range(8))
    result = events[-1].result
    assert (result.status, result.n_steps, result.run_id) == ("completed", 8, handle.run_id)
    # the actor decodes exactly what the Python API decodes in this process
    assert result.token_ids == decode(PROMPT, config=config).token_ids

    run = store.get_run(result.run_id)
    assert (run["status"], run["n_steps"], run["final_text"], run["model"]) == ("completed", 8, result.text, "story")
    assert n_step_rows(store, result.run_id) == 8


def test_cancel_stops_a_running_job_and_keeps_its_steps(pool, store):
    wait_idle(pool)
    handle = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=32, steps=32), pace_ms=100)
    events = collect(handle, until=lambda ev: n_steps_seen(ev) >= 3)
    assert pool.cancel(handle.job.job_id)
    events += collect(handle)

    result = events[-1].result
    assert isinstance(events[-1], JobDone) and result.status == "cancelled"
    assert 3 <= result.n_steps < 32 and n_steps_seen(events) == result.n_steps
    run = store.get_run(result.run_id)
    assert run["status"] == "cancelled" and run["n_steps"] == result.n_steps == n_step_rows(store, result.run_id)
    assert not pool.cancel(handle.job.job_id)  # it is over


def test_a_killed_actor_fails_its_run_and_a_fresh_actor_takes_the_next_job(pool, store):
    """ray.kill on SQLite, the actor's process killed with SIGKILL on PostgreSQL: both are deaths."""
    wait_idle(pool)
    deaths_before, [old_actor], [old_pid] = pool.deaths, pool.actors(), pool.worker_pids()
    handle = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=64, steps=64), pace_ms=100)
    collect(handle, until=lambda ev: n_steps_seen(ev) >= 3)
    deadline = time.monotonic() + 10  # the writer flushes steps at least every 0.5 s
    while store.get_run(handle.run_id)["n_steps"] == 0:
        assert time.monotonic() < deadline, "no steps were written before the kill"
        time.sleep(0.05)

    by_signal = pool.db_url.startswith("postgresql")
    os.kill(old_pid, signal.SIGKILL) if by_signal else ray.kill(old_actor)
    killed_at = time.monotonic()
    events = collect(handle, timeout=10)
    assert time.monotonic() - killed_at < 5
    assert isinstance(events[-1], JobFailed), kinds(events)
    message = events[-1].message
    assert "died during this run" in message and "fresh worker will run the next job" in message
    assert ("worker process has died" if by_signal else "killed by `ray.kill`") in message
    assert pool.deaths == deaths_before + 1

    run = store.get_run(handle.run_id)
    assert run["status"] == "failed" and run["error"] == message and run["finished_at"] is not None
    assert 0 < run["n_steps"] < 64 and run["n_steps"] == n_step_rows(store, handle.run_id)

    nxt = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=16, steps=4))
    events = collect(nxt, timeout=90)  # a fresh actor imports torch first
    assert isinstance(events[-1], JobDone) and events[-1].result.status == "completed"
    assert store.get_run(events[-1].result.run_id)["status"] == "completed"
    assert pool.worker_pids() != [old_pid]


def test_a_full_queue_refuses_and_waiting_jobs_can_be_cancelled(pool, store):
    wait_idle(pool)
    running = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=32, steps=32), pace_ms=50)
    collect(running, until=lambda ev: kinds(ev)[-1] == "started")
    waiting = [pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=8, steps=8)) for _ in range(2)]
    assert [handle.events.get(timeout=5).ahead for handle in waiting] == [1, 2]
    with pytest.raises(QueueFullError):
        pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=8, steps=8))
    assert pool.pending() == 2 and pool.busy() == 1

    for handle in waiting:
        assert pool.cancel(handle.job.job_id)
        event = handle.events.get(timeout=5)
        assert isinstance(event, JobError) and "cancelled before it started" in event.message
    pool.cancel(running.job.job_id)
    assert collect(running)[-1].result.status == "cancelled"
    assert all(handle.run_id is None for handle in waiting)


def test_branch_and_alternatives_run_on_an_actor(pool, store):
    wait_idle(pool)
    parent = collect(pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=16, steps=8)))[-1].result

    branch = collect(pool.submit_branch("embedded", BranchRequest(parent.run_id, 3)))
    assert kinds(branch) == ["queued", "started"] + ["step"] * 4 + ["done"]
    child = branch[-1].result
    assert child.token_ids == parent.token_ids  # no edit at T = 0: the parent reproduced
    assert store.get_run(child.run_id)["parent_run_id"] == parent.run_id

    analysis = collect(pool.submit_alternatives("embedded", parent.run_id, 3, len(parent.token_ids) - 1, top=2))
    assert kinds(analysis)[0] == "queued" and kinds(analysis)[-1] == "alternatives"
    report = analysis[-1].report
    assert [e.outcome for e in analysis if isinstance(e, OutcomeDone)] == list(report.outcomes)
    assert len(report.outcomes) >= 2 and all(store.get_run(o.run_id) for o in report.outcomes)


# ---- the command line ----------------------------------------------------------------------
def test_workers_flag_takes_a_count_or_ray(capsys):
    assert app.parse_args([]).workers == app.Workers(False, 1)
    assert app.parse_args(["--workers", "3"]).workers == app.Workers(False, 3)
    assert app.parse_args(["--workers", "ray"]).workers == app.Workers(True, None)
    args = app.parse_args(["--workers", "ray:2", "--ray-address", "10.0.0.5:6379"])
    assert (args.workers, args.ray_address) == (app.Workers(True, 2), "10.0.0.5:6379")
    for bad in ("bogus", "0", "ray:0", "ray:", "ray:x", "2:3"):
        with pytest.raises(SystemExit):
            app.parse_args(["--workers", bad])
        assert "argument --workers" in capsys.readouterr().err


def test_workers_ray_without_ray_says_what_to_install(monkeypatch):
    monkeypatch.setattr(app.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"pip install -r requirements-scale\.txt"):
        app.require_ray(app.parse_args(["--workers", "ray:2"]))
    app.require_ray(app.parse_args(["--workers", "2"]))  # local workers need no Ray


def test_local_workers_never_import_ray():
    code = "import sys, app; import explorer.services, explorer.worker; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_actors_ask_for_a_gpu_each_on_a_cluster_with_gpus():
    assert actor_options(4.0) == {"num_gpus": 1, "max_concurrency": 2, "max_restarts": 0}
    assert actor_options(0) == {"num_cpus": 1, "max_concurrency": 2, "max_restarts": 0}
    assert (default_workers(4.0), default_workers(0)) == (4, 1)
