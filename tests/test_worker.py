"""The model worker pool on its own: real worker processes (spawned) and a real SQLite file.

One pool with one worker serves the whole module (starting a worker imports torch and loads
the model, a few seconds on a small machine); the worker-death test leaves a fresh worker
behind, so the order of the tests does not matter.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from explorer.decoding.config import DecodeConfig
from explorer.decoding.records import DecodeResult, StepRecord
from explorer.jobs import (
    DeviceInfo,
    DeviceReport,
    Job,
    JobDone,
    JobError,
    JobFailed,
    Queued,
    RunStarted,
    Shutdown,
    StepDone,
    WorkerReady,
)
from explorer.store.database import Step, TrajectoryStore
from explorer.worker import WorkerPool

PROMPT = "once upon a time"


@pytest.fixture(scope="module")
def db_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("worker") / "worker.db"


@pytest.fixture(scope="module")
def store(db_path) -> TrajectoryStore:
    return TrajectoryStore(f"sqlite:///{db_path}")


@pytest.fixture(scope="module")
def pool(store):
    pool = WorkerPool(store.url, n_workers=1, threads=1)
    yield pool
    pool.shutdown()


# The typed messages as (kind, payload) pairs, so that a test reads as the sequence of events.
KINDS = {
    Queued: ("queued", "ahead"),
    RunStarted: ("started", "run_id"),
    StepDone: ("step", "record"),
    JobDone: ("done", "result"),
    JobError: ("error", "message"),
    JobFailed: ("failed", "message"),
    DeviceReport: ("device", "device"),
    WorkerReady: ("ready", "device"),
}
TERMINAL = ("done", "error", "failed")


def pair(event) -> tuple[str, object]:
    kind, field = KINDS[type(event)]
    return kind, getattr(event, field)


def collect(handle, until=None, timeout: float = 60.0) -> list[tuple[str, object]]:
    """The handle's events up to and including a terminal one (or the first for which
    `until(events_so_far)` is true); fails the test if nothing comes for `timeout` seconds."""
    events = []
    while True:
        try:
            kind, payload = pair(handle.events.get(timeout=timeout))
        except Exception:  # queue.Empty
            pytest.fail(f"job {handle.job.job_id}: no event for {timeout} s after {[k for k, _ in events]}")
        events.append((kind, payload))
        if kind in TERMINAL or (until is not None and until(events)):
            return events


def kinds(events) -> list[str]:
    return [kind for kind, _ in events]


def n_step_rows(store: TrajectoryStore, run_id: int) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(Step).where(Step.run_id == run_id))


def wait_idle(pool: WorkerPool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while pool.busy() or pool.pending():
        assert time.monotonic() < deadline, "the pool did not become idle"
        time.sleep(0.02)


def test_job_streams_events_and_is_stored(pool, store):
    wait_idle(pool)
    handle = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=32, steps=8))
    events = collect(handle)

    assert kinds(events) == ["queued", "started"] + ["step"] * 8 + ["done"]
    assert events[0][1] == 0  # nothing ahead of it
    run_id = events[1][1]
    assert isinstance(run_id, int) and handle.run_id == run_id
    # the worker's device reports go to the handle and the pool, not into the event stream
    assert handle.device == DeviceInfo("cpu") and pool.device_info == DeviceInfo("cpu")
    records = [payload for kind, payload in events if kind == "step"]
    assert all(isinstance(r, StepRecord) for r in records)
    assert [r.step for r in records] == list(range(8))
    assert sum(r.n_committed for r in records) == 32
    result = events[-1][1]
    assert isinstance(result, DecodeResult)
    assert (result.status, result.n_steps, result.run_id) == ("completed", 8, run_id)

    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["n_steps"] == 8 and run["error"] is None
    assert run["prompt"] == PROMPT and run["final_text"] == result.text
    assert n_step_rows(store, run_id) == 8
    assert store.read_arrays(run_id).commit_step.min() >= 0  # every position committed


def test_two_jobs_on_one_worker_run_one_after_the_other(pool, store):
    wait_idle(pool)
    config = DecodeConfig(gen_length=32, steps=8, temperature=1.0, seed=3)
    first = pool.submit(PROMPT, "embedded", config, pace_ms=20)
    second = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=16, steps=4, temperature=1.0, seed=4))
    assert pair(second.events.get(timeout=5)) == ("queued", 1)  # one job ahead of it

    # read both streams at once, noting when each event arrived
    arrivals: dict[int, list] = {}

    def reader(handle, queued_seen: bool) -> None:
        events = [("queued", 1)] if queued_seen else []
        while not events or events[-1][0] not in TERMINAL:
            kind, payload = pair(handle.events.get(timeout=60))
            events.append((kind, payload, time.monotonic()))
        arrivals[handle.job.job_id] = events

    threads = [
        threading.Thread(target=reader, args=(first, False)),
        threading.Thread(target=reader, args=(second, True)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    a, b = arrivals[first.job.job_id], arrivals[second.job.job_id]
    assert [e[0] for e in a] == ["queued", "started"] + ["step"] * 8 + ["done"]
    assert [e[0] for e in b] == ["queued", "started"] + ["step"] * 4 + ["done"]
    assert a[0][1] == 0
    assert b[1][2] >= a[-1][2], "the second job started before the first one ended"

    ra, rb = store.get_run(a[-1][1].run_id), store.get_run(b[-1][1].run_id)
    assert (ra["status"], ra["n_steps"], rb["status"], rb["n_steps"]) == ("completed", 8, "completed", 4)
    assert (n_step_rows(store, ra["id"]), n_step_rows(store, rb["id"])) == (8, 4)
    assert ra["finished_at"] <= rb["created_at"]  # one after the other, by the worker's own clock


def test_cancel_running_job_keeps_its_steps(pool, store):
    wait_idle(pool)
    handle = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=32, steps=32), pace_ms=100)
    events = collect(handle, until=lambda ev: kinds(ev).count("step") >= 3)
    assert pool.cancel(handle.job.job_id)
    events += collect(handle)

    assert events[-1][0] == "done"
    result = events[-1][1]
    assert result.status == "cancelled"
    assert 3 <= result.n_steps < 32
    assert kinds(events).count("step") == result.n_steps
    run = store.get_run(result.run_id)
    assert run["status"] == "cancelled"
    assert run["n_steps"] == result.n_steps == n_step_rows(store, result.run_id)


def test_cancel_waiting_job_stores_nothing(pool, store):
    wait_idle(pool)
    runs_before = store.count_runs()
    running = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=32, steps=32), pace_ms=50)
    collect(running, until=lambda ev: kinds(ev)[-1] == "started")
    waiting = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=8, steps=8))
    assert pair(waiting.events.get(timeout=5)) == ("queued", 1)
    assert pool.cancel(waiting.job.job_id)
    kind, message = pair(waiting.events.get(timeout=5))
    assert kind == "error" and "cancelled before it started" in message
    assert not pool.cancel(waiting.job.job_id)  # already gone

    pool.cancel(running.job.job_id)  # end the other one early too
    assert collect(running)[-1][0] == "done"
    wait_idle(pool)
    time.sleep(0.3)  # if the cancelled job had reached the worker, it would have written by now
    assert store.count_runs() == runs_before + 1  # only the running job's run
    assert waiting.run_id is None
    assert waiting.events.empty()


def test_killed_worker_fails_the_run_and_a_fresh_worker_takes_over(pool, store, db_path):
    wait_idle(pool)
    deaths_before = pool.deaths
    [old_pid] = pool.worker_pids()
    handle = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=64, steps=64), pace_ms=100)
    events = collect(handle, until=lambda ev: kinds(ev).count("step") >= 3)
    run_id = handle.run_id
    assert run_id is not None
    deadline = time.monotonic() + 10  # the writer flushes steps at least every 0.5 s
    while store.get_run(run_id)["n_steps"] == 0:
        assert time.monotonic() < deadline, "no steps were written before the kill"
        time.sleep(0.05)

    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    events += collect(handle, timeout=10)
    assert time.monotonic() - killed_at < 5
    kind, message = events[-1]
    assert kind == "failed"
    assert "worker died" in message and str(-signal.SIGKILL) in message
    assert pool.deaths == deaths_before + 1

    run = store.get_run(run_id)
    assert run["status"] == "failed" and "worker died" in run["error"]
    assert run["finished_at"] is not None
    assert 0 < run["n_steps"] < 64
    assert run["n_steps"] == n_step_rows(store, run_id)
    with sqlite3.connect(db_path) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    nxt = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=16, steps=4))
    events = collect(nxt, timeout=90)  # a fresh worker imports torch first
    assert events[-1][0] == "done" and events[-1][1].status == "completed"
    assert store.get_run(events[-1][1].run_id)["status"] == "completed"
    [new_pid] = pool.worker_pids()
    assert new_pid != old_pid


def test_bad_job_gives_error_and_worker_survives(pool, store):
    wait_idle(pool)
    [pid] = pool.worker_pids()
    runs_before = store.count_runs()
    # the UI would refuse this word; submitted to the pool directly, the worker must refuse it
    handle = pool.submit("once upon a zebra", "embedded", DecodeConfig(gen_length=8, steps=8))
    events = collect(handle)
    assert kinds(events) == ["queued", "error"]
    assert "zebra" in events[-1][1]
    assert store.count_runs() == runs_before

    handle = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=8, steps=4))
    events = collect(handle)
    assert events[-1][0] == "done" and events[-1][1].status == "completed"
    assert pool.worker_pids() == [pid]
    assert store.count_runs() == runs_before + 1


# ---- out of memory -----------------------------------------------------------------------------
def test_out_of_memory_is_recognised_and_explained():
    import torch

    from explorer.worker import is_out_of_memory, out_of_memory_message

    for exc in (
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)"),
        RuntimeError("CUDA error: out of memory"),
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    ):
        assert is_out_of_memory(exc), exc
    for exc in (RuntimeError("boom"), ValueError("out of memory? no: a bad setting"), KeyError("x")):
        assert not is_out_of_memory(exc), exc
    message = out_of_memory_message(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"), "cuda:0"
    )
    assert message.startswith("out of memory on cuda:0: the run was stopped")
    assert "next run" in message and "shorter generation length" in message
    assert "[OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB]" in message


class _RunsOutOfMemory:
    """The embedded model, whose forward raises CUDA's OutOfMemoryError on call `fail_on` (once)."""

    def __init__(self, denoiser, fail_on: int) -> None:
        self._inner, self.calls, self.fail_on = denoiser, 0, fail_on

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def logits(self, ids):
        import torch

        self.calls += 1
        if self.calls == self.fail_on:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                "capacity of 79.10 GiB of which 3.19 GiB is free."
            )
        return self._inner.logits(ids)


def test_out_of_memory_fails_the_run_and_the_worker_takes_the_next_job(denoiser, tmp_path, monkeypatch):
    """worker_main on a thread of this process (so the model can be patched): the third forward
    of the first job raises OutOfMemoryError; the run ends failed with its two steps stored, the
    client gets a message saying so, the worker frees device memory and completes the next job."""
    import multiprocessing

    from explorer import worker

    store = TrajectoryStore(f"sqlite:///{tmp_path / 'oom.db'}")
    model = _RunsOutOfMemory(denoiser, fail_on=3)
    monkeypatch.setattr(worker, "load_denoiser", lambda name, registry=None: model)
    freed = []
    monkeypatch.setattr(worker, "free_device_memory", lambda: freed.append(True))
    jobs_recv, jobs_send = multiprocessing.Pipe(duplex=False)
    events_recv, events_send = multiprocessing.Pipe(duplex=False)
    thread = threading.Thread(
        target=worker.worker_main, args=(jobs_recv, events_send, store.url, None, ("embedded",)), daemon=True
    )
    thread.start()

    def events_until_terminal() -> list:
        got = []
        while not got or got[-1][0] not in TERMINAL:
            assert events_recv.poll(30), f"no event from the worker after {got}"
            got.append(pair(events_recv.recv()))
        return got

    try:
        assert events_recv.poll(30)
        assert events_recv.recv() == WorkerReady(DeviceInfo("cpu"))
        # violations=False: the fake model counts forwards, and the violation pass adds one per step.
        jobs_send.send(Job(1, PROMPT, "embedded", DecodeConfig(gen_length=16, steps=8, violations=False)))
        events = events_until_terminal()
        # ("device" reports also come mid-run, at most once a second: not counted here)
        assert kinds(events)[0] == "device"
        assert [k for k in kinds(events) if k != "device"] == ["started", "step", "step", "error"]
        message = events[-1][1]
        assert message.startswith("out of memory on cpu: the run was stopped"), message
        assert "OutOfMemoryError" in message and freed == [True]
        run = store.get_run(next(payload for kind, payload in events if kind == "started"))
        assert run["status"] == "failed" and "out of memory" in run["error"]
        assert run["n_steps"] == 2 == n_step_rows(store, run["id"])

        jobs_send.send(Job(2, PROMPT, "embedded", DecodeConfig(gen_length=16, steps=4, violations=False)))
        events = events_until_terminal()
        assert kinds(events)[0] == "device" and kinds(events)[-2] == "device"  # at the start and the end
        assert [k for k in kinds(events) if k != "device"] == ["started"] + ["step"] * 4 + ["done"]
        assert events[-1][1].status == "completed" and freed == [True]
        assert store.get_run(events[-1][1].run_id)["status"] == "completed"
    finally:
        jobs_send.send(Shutdown())
        thread.join(10)
    assert not thread.is_alive()


def test_device_report_and_its_status_line():
    from explorer.ui.logic import device_label
    from explorer.worker import device_info

    assert device_info() == device_info("cpu") == DeviceInfo("cpu")
    assert device_label(device_info("cpu")) == "device: cpu"
    cuda = DeviceInfo("cuda:0", "NVIDIA H200", allocated=int(3.2 * 2**30), reserved=4 * 2**30, total=140 * 2**30)
    assert device_label(cuda) == "device: cuda:0 · 3.2 GiB in use"
    assert device_label(None) is None


def test_gpu_decorator_is_spaces_gpu_only_in_the_main_process_on_zerogpu(monkeypatch):
    import multiprocessing
    import sys
    import types

    from explorer import zerogpu
    from explorer.worker import run_job

    assert zerogpu.gpu is zerogpu._identity  # here: no ZeroGPU
    assert zerogpu.gpu(run_job) is run_job and zerogpu.gpu(duration=60)(run_job) is run_job
    fake = types.ModuleType("spaces")
    fake.GPU = lambda fn=None, **kw: fn
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert zerogpu._resolve() is fake.GPU
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())  # as in a worker process
    assert zerogpu._resolve() is zerogpu._identity
    monkeypatch.setenv("SPACES_ZERO_GPU", "")
    assert zerogpu._resolve() is zerogpu._identity
