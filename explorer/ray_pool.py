"""Decode workers as Ray actors (`python app.py --workers ray[:N]`): the worker pool of a cluster.

`RayWorkerPool` is `WorkerPool` (explorer/worker.py) with Ray actors in place of worker
processes; the client side is the same `JobQueue`, so jobs wait in the same bounded line
(`QueueFullError` beyond `max_pending`), each gets a `JobHandle` on which the jobs.py events
arrive as they happen, and the UI cannot tell the two apart. How each part maps:

- worker process -> `DecodeActor`: the same `WorkerContext` (the store URL, the server's model
  registry, `preload`), the same `run_job` / `run_alternatives`. Ray places the actors: one GPU
  each (`num_gpus=1`) when the cluster has GPUs, else one CPU each; no scheduler of ours.
- the events pipe -> `DecodeActor.run(job)`, a streaming generator (`num_returns="streaming"`)
  yielding the jobs.py messages; a thread of the pool per actor reads it and routes them.
- `Cancel` down the jobs pipe -> `DecodeActor.cancel(job_id)`: the actor has
  `max_concurrency=2`, so the call runs while `run` streams, and the run stops at its next step.
- a dead worker process -> `ActorDiedError` out of the stream (`ray.kill`, the process killed,
  its node lost): the run is marked failed in the store (its steps stay), the client gets
  `JobFailed`, and a fresh actor replaces the dead one for the next job.

Only this module and explorer/sweeps/on_ray.py import Ray: the quick start installs no Ray
(requirements-scale.txt does).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayError

from explorer.adapters.registry import DEFAULT_REGISTRY, ModelRegistry
from explorer.jobs import TERMINAL, JobError, WorkerJob, WorkerReady
from explorer.worker import JobHandle, JobQueue, WorkerContext, WorkerMessage

log = logging.getLogger(__name__)


def connect(address: str | None = None) -> bool:
    """Join the Ray cluster at `address` (default: $RAY_ADDRESS), or without one start a local Ray
    instance (no dashboard; a fresh one even where `ray start` ran on this machine, as asked).
    True when this call did it (the pool then disconnects at shutdown); False when this process
    was already connected (a test's cluster, a notebook's)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", include_dashboard=False)
    return True


def actor_options(cluster_gpus: float) -> dict:
    """One GPU per actor on a cluster with GPUs, else one CPU; a dead actor is replaced by the
    pool (which fails its run first), not restarted by Ray (which would not)."""
    resources = {"num_gpus": 1} if cluster_gpus >= 1 else {"num_cpus": 1}
    return {**resources, "max_concurrency": 2, "max_restarts": 0}


def default_workers(cluster_gpus: float) -> int:
    """One actor per GPU of the cluster, or one without GPUs."""
    return max(1, int(cluster_gpus))


# ---- inside the actor ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Accepted:
    """First item of every stream: the actor took the job. An actor that dies before sending it was
    gone before the job reached it, so the job runs on a fresh actor instead of failing."""

    job_id: int


@dataclass
class _ActorChannel:
    """A job's `JobChannel` inside the actor: messages go on a local queue that `run` streams out;
    a stop is asked of the actor's set of cancelled jobs."""

    messages: queue.Queue
    stop: Callable[[], bool]

    def send(self, message: WorkerMessage) -> None:
        self.messages.put(message)

    def should_stop(self) -> bool:
        return self.stop()


class DecodeActor:
    """A model worker in a Ray actor: loads the models once, then runs one job at a time."""

    def __init__(self, db_url: str, threads: int | None, preload: tuple[str, ...], registry: ModelRegistry) -> None:
        self.context = WorkerContext.start(db_url, threads, preload, registry)
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()

    def ready(self) -> WorkerReady:
        return self.context.ready()

    def pid(self) -> int:
        return os.getpid()

    def cancel(self, job_id: int) -> None:
        """Stop job `job_id` at its next step (it may not have started yet: calls can overtake)."""
        with self._lock:
            self._cancelled.add(job_id)

    @ray.method(num_returns="streaming")
    def run(self, job: WorkerJob) -> Iterator[WorkerMessage | _Accepted]:
        """Run `job`, yielding its messages as they happen, the terminal one last. The engine
        pushes through callbacks, so the job runs on a thread that this generator drains."""
        yield _Accepted(job.job_id)
        messages: queue.Queue = queue.Queue()
        channel = _ActorChannel(messages, lambda: self._is_cancelled(job.job_id))
        threading.Thread(target=self._run, args=(job, channel), name=f"job-{job.job_id}", daemon=True).start()
        while True:
            message = messages.get()
            yield message
            if isinstance(message, TERMINAL):
                break
        with self._lock:
            self._cancelled.discard(job.job_id)

    def _run(self, job: WorkerJob, channel: _ActorChannel) -> None:
        try:
            terminal = self.context.run(job, channel)
        except BaseException as exc:  # the stream must end even if the job's thread goes down
            terminal = JobError(job.job_id, f"{type(exc).__name__}: {exc}")
        channel.send(terminal)

    def _is_cancelled(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._cancelled


# ---- in the app's process ------------------------------------------------------------------
@dataclass
class _ActorSlot:
    """One actor, the job it is running, and the pool's thread that feeds it and reads its stream."""

    actor: ActorHandle | None = None
    handle: JobHandle | None = None
    thread: threading.Thread | None = None


class RayWorkerPool(JobQueue):
    """Runs jobs on `n_workers` Ray actors (one at a time each; default: one per GPU of the
    cluster, or one); more jobs wait in line. `address`: the cluster to join (default: a local
    Ray instance, see `connect`)."""

    def __init__(
        self,
        db_url: str,
        registry: ModelRegistry = DEFAULT_REGISTRY,
        n_workers: int | None = None,
        threads: int | None = None,
        max_pending: int = 64,
        preload: tuple[str, ...] = ("embedded",),
        address: str | None = None,
    ) -> None:
        super().__init__(db_url, max_pending)
        self.registry, self.threads, self.preload = registry, threads, preload
        self._connected = connect(address)
        gpus = ray.cluster_resources().get("GPU", 0)
        self.n_workers = n_workers or default_workers(gpus)
        self._options = actor_options(gpus)
        self._warn_if_unplaceable(gpus)
        self._cond = threading.Condition(self._lock)
        self._slots = [_ActorSlot(self._new_actor()) for _ in range(self.n_workers)]
        for i, slot in enumerate(self._slots):
            slot.thread = threading.Thread(target=self._serve, args=(slot,), name=f"ray-worker-{i}", daemon=True)
            slot.thread.start()

    # ---- client side ---------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _cancel_running(self, handle: JobHandle) -> bool:
        for slot in self._slots:
            if slot.handle is handle and slot.actor is not None:
                slot.actor.cancel.remote(handle.job.job_id)
                return True
        return False

    def actors(self) -> list[ActorHandle]:
        """The current actors, one per slot (tests kill one to see a death handled)."""
        return [slot.actor for slot in self._slots if slot.actor is not None]

    def worker_pids(self) -> list[int]:
        """The actors' process ids (on whichever node each runs)."""
        return ray.get([actor.pid.remote() for actor in self.actors()])

    def shutdown(self, timeout: float = 5.0) -> None:
        """Like `WorkerPool.shutdown`: running jobs are cancelled (their runs end `cancelled`, steps
        kept), then the actors are killed; Ray is disconnected if the pool connected it."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            running = [slot for slot in self._slots if slot.handle is not None]
            for slot in running:
                self._cancel_running(slot.handle)
        for slot in self._slots:
            slot.thread.join(timeout)
        for actor in self.actors():
            ray.kill(actor)
        if self._connected:
            ray.shutdown()

    # ---- one thread per actor ------------------------------------------------------------
    def _new_actor(self) -> ActorHandle:
        remote = ray.remote(DecodeActor).options(**self._options)
        return remote.remote(self.db_url, self.threads, self.preload, self.registry)

    def _warn_if_unplaceable(self, gpus: float) -> None:
        unit, have = ("GPU", gpus) if "num_gpus" in self._options else ("CPU", ray.cluster_resources().get("CPU", 0))
        if self.n_workers > have:
            log.warning(
                "%d Ray actors asked for but the cluster has %g %ss now: some wait until it grows",
                self.n_workers,
                have,
                unit,
            )

    def _serve(self, slot: _ActorSlot) -> None:
        self._warm(slot)
        while (handle := self._next_job(slot)) is not None:
            try:
                self._run(slot, handle)
            except Exception:  # a bug here must not leave the job's client waiting forever
                log.exception("Ray worker pool: unexpected error running job %d", handle.job.job_id)
                self._fail(slot, "the Ray worker pool failed to run this job (see the server log)", died=False)

    def _warm(self, slot: _ActorSlot) -> None:
        """Wait for the actor's models to load (the first job would wait anyway) and note its device."""
        try:
            self._route(slot, ray.get(slot.actor.ready.remote()))
        except RayError as exc:
            log.warning("a Ray decode actor failed to start: %s", first_line(exc))

    def _next_job(self, slot: _ActorSlot) -> JobHandle | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            slot.handle = self._pending.popleft()
            return slot.handle

    def _run(self, slot: _ActorSlot, handle: JobHandle) -> None:
        """Stream the job's messages from the actor to its handle. The actor dying before it took
        the job (it died idle) sends the job to a fresh actor; dying after fails the job."""
        for attempt in (1, 2):
            accepted = False
            try:
                for ref in slot.actor.run.remote(handle.job):
                    message = ray.get(ref)
                    if isinstance(message, _Accepted):
                        accepted = True
                    else:
                        self._route(slot, message)
                return
            except RayError as exc:
                if accepted or attempt == 2 or self._closed:
                    self._fail(slot, death_message(exc))  # first: the client should not wait for a fresh actor
                    self._replace(slot)
                    return
                self._replace(slot)
                log.warning("Ray decode actor gone before job %d reached it; a fresh one runs it", handle.job.job_id)

    def _replace(self, slot: _ActorSlot) -> None:
        """A fresh actor for the slot (none once the pool is shut down)."""
        old, slot.actor = slot.actor, None
        try:
            ray.kill(old)  # already dead, or in a state we cannot trust
        except RayError:
            pass
        if not self._closed:
            slot.actor = self._new_actor()
            self._warm(slot)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def death_message(exc: RayError) -> str:
    """What the client and the stored run say when the actor died mid-job, with Ray's reason in
    a few words ("it was killed by `ray.kill`", "its worker process has died")."""
    lines = [line.strip() for line in str(exc).splitlines()]
    said = next((line for line in lines if line.startswith("The actor is dead because")), "")
    reason = said.removeprefix("The actor is dead because").strip().split(". ")[0].rstrip(".")
    return (
        f"the model worker (a Ray actor) died during this run ({reason or type(exc).__name__}); "
        "a fresh worker will run the next job"
    )
