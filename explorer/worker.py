"""The model worker: a separate process that owns the models and runs the engine.

The UI process never loads a model. It submits jobs to a `WorkerPool`, which hands each job
to an idle worker process over a pipe and routes the worker's messages (`RunStarted`, `StepDone`,
`JobDone`, `JobError`: the dataclasses of explorer/jobs.py) to the job's queue. The worker is
given the server's model registry when it starts; it loads models from that registry only.
A worker that dies (killed, out of memory, segfault) is noticed
within a fraction of a second: its run is marked `failed` in the store (the steps it wrote
stay), the job's client gets a clear error, and the next job starts a fresh worker. A run
that runs out of memory (CUDA or CPU) fails with a message saying so, and the worker frees
its cached device memory and takes the next job.

The worker reports the device it decodes on (and, on CUDA, the memory in use) when it is
ready and while a job runs; the pool keeps the latest report on the job's handle
(`JobHandle.device`) and on the pool (`WorkerPool.device_info`) without adding events to the
job's stream.

The code that runs a job (`WorkerContext`: the store and the loaded models; `run_job`,
`run_alternatives`) talks to its submitter through a `JobChannel`: in a worker process, its
pipes (`PipeChannel`); explorer/ray_pool.py runs the very same code in a Ray actor with a
channel of its own. The client side that both pools share (the bounded line of waiting jobs,
the handles, routing a worker's messages to them, failing the job of a dead worker) is
`JobQueue`.
"""

from __future__ import annotations

import gc
import itertools
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Protocol

import torch

from explorer.adapters.loading import ScorerCache, load_denoiser
from explorer.adapters.registry import DEFAULT_REGISTRY, ModelRegistry
from explorer.api import prepare
from explorer.branching.alternatives import AlternativesReport, Outcome, alternatives
from explorer.branching.plan import BranchRequest, plan_branch
from explorer.decoding.callbacks import Callback, RunStart
from explorer.decoding.config import DecodeConfig
from explorer.decoding.engine import run_decode
from explorer.decoding.protocols import Denoiser
from explorer.decoding.records import DecodeResult, StepRecord
from explorer.jobs import (
    TERMINAL,
    AlternativesDone,
    AlternativesJob,
    BranchJob,
    Cancel,
    DeviceInfo,
    DeviceReport,
    Job,
    JobDone,
    JobError,
    JobEvent,
    JobFailed,
    OutcomeDone,
    Queued,
    RunStarted,
    Shutdown,
    StepDone,
    WorkerJob,
    WorkerReady,
)
from explorer.store.database import StoreWriter, TrajectoryStore
from explorer.zerogpu import gpu

DEVICE_REPORT_S = 1.0  # while a job runs, the device's memory in use is reported at most this often
log = logging.getLogger(__name__)


# ---- inside the worker process -----------------------------------------------------------
WorkerMessage = WorkerReady | DeviceReport | RunStarted | StepDone | OutcomeDone | JobDone | AlternativesDone | JobError


class JobChannel(Protocol):
    """How a running job reaches its submitter: `send` a message as it happens, and
    `should_stop` (asked between steps) once a cancel for this job (or a shutdown) arrived."""

    def send(self, message: WorkerMessage) -> None: ...

    def should_stop(self) -> bool: ...


class PipeChannel:
    """One job's channel in a worker process: messages go down the events pipe; the jobs pipe is
    read between steps, and a Cancel of this job (or a Shutdown) stops the run, and so does a
    closed pipe (the app is gone: the run ends cancelled with its steps, not with an
    `EOFError: ` as its error)."""

    def __init__(self, jobs: Connection, events: Connection, job_id: int) -> None:
        self.jobs, self.events, self.job_id, self.cancelled = jobs, events, job_id, False

    def send(self, message: WorkerMessage) -> None:
        self.events.send(message)

    def should_stop(self) -> bool:
        try:
            while self.jobs.poll():
                match self.jobs.recv():
                    case Shutdown() | Cancel(job_id=self.job_id):
                        self.cancelled = True
        except (EOFError, OSError):
            self.cancelled = True
        return self.cancelled


class _Stream(Callback):
    """Sends the device, the run id and every step record to the submitter as they happen."""

    def __init__(self, channel: JobChannel, job_id: int, writer, device=None) -> None:
        self.channel, self.job_id, self.writer, self.device = channel, job_id, writer, device
        self._reported = 0.0

    def report_device(self) -> None:
        self.channel.send(DeviceReport(self.job_id, device_info(self.device)))
        self._reported = time.monotonic()

    def on_start(self, start: RunStart) -> None:
        self.report_device()
        self.channel.send(RunStarted(self.job_id, self.writer.run_id))

    def on_step(self, record: StepRecord) -> None:
        self.channel.send(StepDone(self.job_id, record))
        if time.monotonic() - self._reported >= DEVICE_REPORT_S:
            self.report_device()


def device_info(device=None) -> DeviceInfo:
    """Where the worker decodes: the device or, on CUDA, also the GPU's name and the memory in
    use (bytes held by tensors, by the caching allocator, and the card's total). Host-side
    queries only: nothing here waits for the GPU."""
    device = torch.device(device if device is not None else "cpu")
    if device.type != "cuda" or not torch.cuda.is_available():
        return DeviceInfo(str(device))
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DeviceInfo(
        f"cuda:{index}",
        torch.cuda.get_device_name(index),
        allocated=int(torch.cuda.memory_allocated(index)),
        reserved=int(torch.cuda.memory_reserved(index)),
        total=int(torch.cuda.get_device_properties(index).total_memory),
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, a MemoryError, or a RuntimeError saying it ran out of memory
    (older torch, other backends, and the CPU allocator's "can't allocate memory")."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if (oom is not None and isinstance(exc, oom)) or isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_message(exc: BaseException, device) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    if len(first_line) > 200:
        first_line = first_line[:199] + "…"
    return (
        f"out of memory on {device}: the run was stopped (the steps before it are kept) and the worker "
        f"freed its memory for the next run. Try a shorter generation length or a smaller model. "
        f"[{type(exc).__name__}: {first_line}]"
    )


def free_device_memory() -> None:
    """After an out-of-memory error: drop the failed step's tensors and return CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Pace(Callback):
    """Pauses after each step so a person can follow a fast model; cancel still works."""

    def __init__(self, pace_ms: int) -> None:
        self.seconds = pace_ms / 1000

    def on_step(self, record: StepRecord) -> None:
        time.sleep(self.seconds)


class _CancelCheck(Callback):
    """Asks the job's channel between steps whether the run should stop (a cancel)."""

    def __init__(self, channel: JobChannel) -> None:
        self.channel = channel

    def should_stop(self) -> bool:
        return self.channel.should_stop()


class TimeBudgetExceeded(RuntimeError):
    """A run went past its wall-clock budget: it ends failed, every step so far kept."""

    worded = True  # the run's error is the message itself (engine.error_text)


class _Deadline(Callback):
    """Ends a run that takes longer than `seconds` (this server's `Limits.max_job_seconds`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.began = seconds, time.monotonic()

    def on_step(self, record: StepRecord) -> None:
        took = time.monotonic() - self.began
        if took > self.seconds:
            raise TimeBudgetExceeded(
                f"time budget: the run took {took:.0f} s, over this server's {self.seconds:g} s a run; "
                f"its {record.step + 1} steps are kept"
            )


@dataclass
class WorkerContext:
    """What a worker (a process here, a Ray actor in explorer/ray_pool.py) holds between jobs:
    the store it writes to, the models it loaded (from the server's registry only), the AR scorers."""

    store: TrajectoryStore
    registry: ModelRegistry
    models: dict[str, Denoiser]
    scorers: ScorerCache

    @classmethod
    def start(
        cls,
        db_url: str,
        threads: int | None = None,
        preload: tuple[str, ...] = (),
        registry: ModelRegistry = DEFAULT_REGISTRY,
    ) -> WorkerContext:
        """Set torch's threads, open the store and load the `preload` models."""
        if threads:
            torch.set_num_threads(threads)
        models = {name: load_denoiser(name, registry) for name in preload}
        return cls(TrajectoryStore(db_url), registry, models, ScorerCache(registry))

    def ready(self) -> WorkerReady:
        """The device of the first loaded model (the CPU when none is loaded yet)."""
        first = next(iter(self.models.values()), None)
        return WorkerReady(device_info(first.device if first is not None else None))

    def run(self, job: WorkerJob, channel: JobChannel) -> JobDone | AlternativesDone | JobError:
        """Run one job, streaming through `channel`; its terminal message (see `_run_one`)."""
        return _run_one(job, self.models, self.registry, self.scorers, self.store, channel)


def worker_main(
    jobs: Connection,
    events: Connection,
    db_url: str,
    threads: int | None,
    preload: tuple[str, ...] = (),
    registry: ModelRegistry = DEFAULT_REGISTRY,
) -> None:
    """Entry point of a worker process: load `preload` models, then run jobs until told to stop."""
    context = WorkerContext.start(db_url, threads, preload, registry)
    events.send(context.ready())
    while True:
        match jobs.recv():
            case Shutdown():
                return
            case Job() | BranchJob() | AlternativesJob() as job:
                events.send(context.run(job, PipeChannel(jobs, events, job.job_id)))
            case _:
                continue  # a cancel for a job that already ended


def _run_one(
    job: WorkerJob,
    models: dict[str, Denoiser],
    registry: ModelRegistry,
    scorers: ScorerCache,
    store: TrajectoryStore,
    channel: JobChannel,
) -> JobDone | AlternativesDone | JobError:
    """Run one job; its terminal message. An out-of-memory error frees the device's cache."""
    device = "the model's device"
    try:
        if job.model not in models:
            models[job.model] = load_denoiser(job.model, registry)
        denoiser = models[job.model]
        device = denoiser.device
        if isinstance(job, AlternativesJob):
            return AlternativesDone(job.job_id, run_alternatives(job, denoiser, store, scorers, channel))
        return JobDone(job.job_id, run_job(job, denoiser, store, scorers, channel))
    except _Cancelled:
        return JobError(job.job_id, "cancelled")
    except TimeBudgetExceeded as exc:
        return JobError(job.job_id, str(exc))
    except Exception as exc:
        if not is_out_of_memory(exc):
            return JobError(job.job_id, f"{type(exc).__name__}: {exc}")
        message = out_of_memory_message(exc, device)
    free_device_memory()  # outside the except block: the failed step's tensors are unreferenced by now
    return JobError(job.job_id, message)


@gpu
def run_job(
    job: Job | BranchJob,
    denoiser: Denoiser,
    store: TrajectoryStore,
    scorers: ScorerCache,
    channel: JobChannel,
) -> DecodeResult:
    """A decode or a branch on a loaded model: run it, write every step to the store, stream it
    to the submitter through `channel`. A branch is planned (and every input checked) before
    anything is stored.

    Where the model's forward passes run. `gpu` is ZeroGPU's `spaces.GPU` only when this is
    called in the Gradio process on a ZeroGPU Space, else the identity (explorer/zerogpu.py).
    """
    resume = origin = None
    if isinstance(job, BranchJob):
        plan = plan_branch(store, denoiser, job.request)
        prompt, prompt_ids, config, resume, origin = plan.prompt, plan.prompt_ids, plan.config, plan.resume, plan.origin
    else:
        prompt, config = job.prompt, job.config
        prompt_ids = prepare(prompt, denoiser, config)
    writer = StoreWriter(store, denoiser.token_text)
    stream = _Stream(channel, job.job_id, writer, denoiser.device)
    callbacks = [writer, stream, _CancelCheck(channel)]
    if job.pace_ms > 0:
        callbacks.append(_Pace(job.pace_ms))
    if job.max_seconds > 0:
        callbacks.append(_Deadline(job.max_seconds))
    scorer = scorers.for_run(config, denoiser)
    result = run_decode(
        denoiser, prompt_ids, config, callbacks, prompt_text=prompt, ar_scorer=scorer, resume=resume, origin=origin
    )
    stream.report_device()  # the memory in use at the end of the run
    return replace(result, run_id=writer.run_id)


class _Cancelled(Exception):
    pass


@gpu
def run_alternatives(
    job: AlternativesJob,
    denoiser: Denoiser,
    store: TrajectoryStore,
    scorers: ScorerCache,
    channel: JobChannel,
) -> AlternativesReport:
    """The alternatives analysis: each re-decode's outcome is sent as it finishes; a cancel
    stops the analysis between re-decodes (the runs already made stay stored)."""
    run = store.get_run(job.run_id)
    scorer = scorers.configured(DecodeConfig.from_dict(run["config"]), denoiser) if run else None

    def sent(outcome: Outcome) -> None:
        channel.send(OutcomeDone(job.job_id, outcome))
        if channel.should_stop():
            raise _Cancelled

    return alternatives(store, denoiser, job.run_id, job.step, job.position, job.top, scorer, sent)


# ---- inside the UI process ---------------------------------------------------------------
@dataclass
class JobHandle:
    """A submitted job as its client sees it: `JobEvent`s arrive on `events`."""

    job: WorkerJob
    events: queue.Queue[JobEvent] = field(default_factory=queue.Queue)
    run_id: int | None = None
    submitted_at: float = field(default_factory=time.monotonic)
    device: DeviceInfo | None = None  # the worker's latest device report for this job

    def iter_events(self, timeout: float = 600.0) -> Iterator[JobEvent]:
        """Yield the job's events until its terminal one (JobDone, JobError or JobFailed)."""
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                yield JobFailed(self.job.job_id, f"no news from the worker for {timeout:.0f} s")
                return
            yield event
            if isinstance(event, TERMINAL):
                return


class _HasHandle(Protocol):
    handle: JobHandle | None  # the job the slot's worker is running


class JobQueue:
    """The client side of a pool of workers, the same for worker processes (`WorkerPool`) and Ray
    actors (explorer/ray_pool.py): jobs wait in one bounded line (`QueueFullError` beyond
    `max_pending`), each gets a `JobHandle`, and a worker's messages are routed to it. A subclass
    owns the workers (`_slots`, each with the `handle` it runs), hands them the waiting jobs
    (woken by `_wake`), and stops a running job (`_cancel_running`)."""

    _slots: list  # of slots with a `handle`

    def __init__(self, db_url: str, max_pending: int) -> None:
        self.db_url = db_url
        self.max_pending = max_pending
        self._pending: deque[JobHandle] = deque()
        self._handles: dict[int, JobHandle] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        self.deaths = 0  # workers found dead mid-job (for the UI and tests)
        self.device_info: DeviceInfo | None = None  # the latest device report of any worker
        self._store_instance: TrajectoryStore | None = None

    # ---- client side ---------------------------------------------------------------------
    def submit(
        self, prompt: str, model: str, config: DecodeConfig, pace_ms: int = 0, max_seconds: float = 0.0
    ) -> JobHandle:
        """A decode; `max_seconds` (0: none): its wall-clock budget, enforced in the worker."""
        return self._enqueue(lambda job_id: Job(job_id, prompt, model, config, int(pace_ms), float(max_seconds)))

    def submit_branch(
        self, model: str, request: BranchRequest, pace_ms: int = 0, max_seconds: float = 0.0
    ) -> JobHandle:
        """A branch of a stored run decoded by `model`; it streams like a decode."""
        return self._enqueue(lambda job_id: BranchJob(job_id, model, request, int(pace_ms), float(max_seconds)))

    def submit_alternatives(self, model: str, run_id: int, step: int, position: int, top: int = 5) -> JobHandle:
        """The alternatives analysis at (step, position) of a stored run decoded by `model`."""
        return self._enqueue(lambda job_id: AlternativesJob(job_id, model, run_id, step, position, top))

    def _enqueue(self, make_job: Callable[[int], WorkerJob]) -> JobHandle:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is shut down")
            if len(self._pending) >= self.max_pending:
                raise QueueFullError(f"{len(self._pending)} jobs are already waiting; try again shortly")
            handle = JobHandle(make_job(next(self._ids)))
            self._handles[handle.job.job_id] = handle
            self._pending.append(handle)
            handle.events.put(Queued(len(self._pending) - 1 + self.busy()))
        self._wake()
        return handle

    def cancel(self, job_id: int) -> bool:
        """Cancel a waiting job at once, or a running one at its next step."""
        with self._lock:
            handle = self._handles.get(job_id)
            if handle is None:
                return False
            if handle in self._pending:
                self._pending.remove(handle)
                self._handles.pop(job_id, None)
                handle.events.put(JobError(job_id, "cancelled before it started"))
                return True
            return self._cancel_running(handle)

    def busy(self) -> int:
        return sum(slot.handle is not None for slot in self._slots)

    def pending(self) -> int:
        return len(self._pending)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the workers (a running job ends cancelled, its steps kept)."""
        raise NotImplementedError

    # ---- for the subclasses ----------------------------------------------------------------
    def _wake(self) -> None:
        """A job was queued: hand it to an idle worker."""
        raise NotImplementedError

    def _cancel_running(self, handle: JobHandle) -> bool:
        """Ask the worker running `handle` to stop it (called holding the lock)."""
        raise NotImplementedError

    def _route(self, slot: _HasHandle, message: WorkerMessage) -> None:
        """A worker's message: device reports stay on the pool and the handle; the rest go on to
        the job's client, and a terminal one frees the slot."""
        match message:
            case WorkerReady(device=device):
                self.device_info = device
                return
            case DeviceReport(job_id=job_id, device=device):
                self.device_info = device
                if (handle := self._handles.get(job_id)) is not None:
                    handle.device = device
                return
            case RunStarted(job_id=job_id, run_id=run_id) if job_id in self._handles:
                self._handles[job_id].run_id = run_id
        handle = self._handles.get(message.job_id)
        if handle is None:
            return
        handle.events.put(message)
        if isinstance(message, TERMINAL):
            with self._lock:
                slot.handle = None
                self._handles.pop(message.job_id, None)

    def _fail(self, slot: _HasHandle, message: str, died: bool = True) -> None:
        """The slot's worker died mid-job (or, `died` False, the pool could not run it): its run
        ends failed in the store (the steps it wrote stay), its client gets `JobFailed(message)`,
        and the slot is free."""
        handle = slot.handle
        if handle is None:
            return
        self.deaths += died
        if handle.run_id is not None:
            self._store().mark_failed(handle.run_id, message)
        handle.events.put(JobFailed(handle.job.job_id, message))
        with self._lock:
            self._handles.pop(handle.job.job_id, None)
            slot.handle = None

    def _store(self) -> TrajectoryStore:
        if self._store_instance is None:
            self._store_instance = TrajectoryStore(self.db_url)
        return self._store_instance


@dataclass
class _Slot:
    """One worker process and the job it is running."""

    process: mp.process.BaseProcess | None = None
    jobs: Connection | None = None  # UI -> worker
    events: Connection | None = None  # worker -> UI
    handle: JobHandle | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


class WorkerPool(JobQueue):
    """Runs jobs on `n_workers` worker processes (one at a time each); more jobs wait in line."""

    def __init__(
        self,
        db_url: str,
        registry: ModelRegistry = DEFAULT_REGISTRY,
        n_workers: int = 1,
        threads: int | None = None,
        max_pending: int = 64,
        preload: tuple[str, ...] = ("embedded",),
        start_method: str = "spawn",
    ) -> None:
        super().__init__(db_url, max_pending)
        self.registry = registry  # handed to every worker process: the models they may load
        self.threads = threads
        self.preload = preload
        self._ctx = mp.get_context(start_method)
        self._slots = [_Slot() for _ in range(n_workers)]
        # A self-pipe: submit() wakes the dispatcher out of its wait() on the workers' pipes.
        self._wake_recv, self._wake_send = self._ctx.Pipe(duplex=False)
        for slot in self._slots:  # warm workers: the first Run should not wait for torch to import
            self._start(slot)
        self._thread = threading.Thread(target=self._dispatch, name="worker-dispatch", daemon=True)
        self._thread.start()

    # ---- client side ---------------------------------------------------------------------
    def _wake(self) -> None:
        self._wake_send.send(None)

    def _cancel_running(self, handle: JobHandle) -> bool:
        for slot in self._slots:
            if slot.handle is handle and slot.alive():
                try:
                    slot.jobs.send(Cancel(handle.job.job_id))
                except OSError:
                    pass
                return True
        return False

    def worker_pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.alive()]

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
        self._wake_send.send(None)
        self._thread.join(timeout)
        for slot in self._slots:
            if slot.alive():
                try:
                    slot.jobs.send(Shutdown())
                except OSError:
                    pass
                slot.process.join(timeout)
                if slot.process.is_alive():
                    slot.process.kill()

    # ---- dispatcher thread ---------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        jobs_recv, jobs_send = self._ctx.Pipe(duplex=False)
        events_recv, events_send = self._ctx.Pipe(duplex=False)
        slot.process = self._ctx.Process(
            target=worker_main,
            args=(jobs_recv, events_send, self.db_url, self.threads, self.preload, self.registry),
            name="explorer-worker",
            daemon=True,
        )
        slot.process.start()
        jobs_recv.close()
        events_send.close()
        slot.jobs, slot.events = jobs_send, events_recv

    def _assign(self) -> None:
        with self._lock:
            for slot in self._slots:
                if not self._pending:
                    return
                if slot.handle is None:
                    if not slot.alive():
                        self._start(slot)
                    slot.handle = self._pending.popleft()
                    slot.jobs.send(slot.handle.job)

    def _dispatch(self) -> None:
        while not self._closed:
            try:
                self._dispatch_once()
            except Exception:
                log.exception("worker dispatcher: unexpected error; carrying on")
                time.sleep(0.1)

    def _dispatch_once(self) -> None:
        self._assign()
        conns = [slot.events for slot in self._slots if slot.events is not None]
        ready = wait([self._wake_recv, *conns], timeout=0.1)
        while self._wake_recv.poll():
            self._wake_recv.recv()
        for slot in self._slots:
            if slot.events is not None and slot.events in ready:
                self._drain(slot)
            if slot.process is not None and not slot.alive():
                self._drain(slot)  # whatever it sent before dying
                self._worker_died(slot)

    def _drain(self, slot: _Slot) -> None:
        try:
            while slot.events.poll():
                self._route(slot, slot.events.recv())
        except (EOFError, OSError):
            pass  # the worker is gone; the liveness check handles its job

    def _worker_died(self, slot: _Slot) -> None:
        """Fail the dead worker's job (its stored steps stay) and free the slot for a fresh one."""
        code = slot.process.exitcode
        slot.process = slot.jobs = slot.events = None
        if not self._closed:
            self._start(slot)  # warm again before the next job arrives
        message = f"the model worker died (exit code {code}) during this run; a fresh worker will run the next job"
        self._fail(slot, message)


class QueueFullError(RuntimeError):
    pass
