"""A sweep's blocks as Ray tasks on a pool of worker actors (imported by every sweep; `ray` itself only when
one runs on Ray).

Each worker is a `SweepWorker` actor: one CPU, plus one GPU when the sweep decodes on CUDA (device
"cuda", or "auto" on a cluster that has GPUs), by default one per GPU (or CPU) of the cluster. It opens
the shared store by URL and loads the models once; each block of seeds is one actor task, handed
out by Ray's ActorPool to the next idle worker. A task claims each seed, decodes it and puts a
`SeedDone` on a Ray queue, which the driver drains into its progress bar. A worker whose process
dies (killed, out of memory) is restarted by Ray, which runs its block again (up to
`RAY_MAX_RETRIES` times); an exception inside a block is not retried (the seed is recorded `failed`).

Why actors rather than plain tasks: Ray starts extra worker processes for queued tasks while others
start, and each new process pays for importing torch and loading the model; a fixed pool pays once
per worker.
"""

from __future__ import annotations

import os
import queue as stdlib_queue
import socket
from collections.abc import Callable

from explorer.adapters.registry import ModelRegistry
from explorer.store.database import TrajectoryStore
from explorer.sweeps.runner import Block, Models, SeedDone, run_block
from explorer.sweeps.spec import SweepSpec

RAY_MAX_RETRIES = 3
RAY_INSTALL = "Ray is not installed: `pip install -r requirements-scale.txt` (for sweeps with --ray)"
POLL_S = 0.2


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says which."""


class TaskFailed(RuntimeError):
    """A block's task failed for good (its retries used up, or an error inside it)."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable(RAY_INSTALL) from None
    return ray


def connect(address: str) -> None:
    """Join the cluster at `address` ("auto", host:port, ray://...) or start a private one ("local").
    A process already connected (a test's `ray.init`) keeps its connection."""
    ray = import_ray()
    if ray.is_initialized():
        return
    _check_reachable(address)
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ""
        if address not in ("local", "auto") and os.environ.get("RAY_AUTH_MODE") is None:
            hint = " (if `ray start` said token authentication is enabled, set RAY_AUTH_MODE=token)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnavailable(f"cannot connect to the Ray cluster at {address!r}: {first}{hint}") from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A host:port that accepts no connection is refused at once (`ray.init` would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "local", "auto", ray://: Ray resolves these itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot connect to the Ray cluster at {address!r}: {exc.strerror or exc}") from None


def prepare(address: str, db_url: str) -> None:
    """Before a Ray sweep stores anything: join the cluster and check that every node can reach the store."""
    connect(address)
    ray = import_ray()
    reason = shared_store_error(db_url, sum(1 for node in ray.nodes() if node.get("Alive")))
    if reason:
        raise RayUnavailable(reason)


def wants_gpu(device: str) -> bool:
    """Whether a worker asks Ray for a GPU."""
    ray = import_ray()
    return device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)


class SweepWorker:
    """A Ray actor that runs blocks: it opens the store and loads the models once, for every block it gets.

    Placed by Ray (one CPU, or one GPU on CUDA). If its process dies, Ray restarts it and runs the
    block it was given again (`max_restarts`, `max_task_retries`): the store's claims make the rerun
    skip the seeds already done and take over the one left half-written."""

    def __init__(self, db_url: str, device: str, registry) -> None:
        self.store = TrajectoryStore(db_url)
        self.models = Models(registry, device)

    def run(self, block: Block, metrics: tuple[str, ...], progress) -> int:
        return len(run_block(self.store, block, self.models, metrics, progress.put))


def shared_store_error(db_url: str, nodes: int) -> str | None:
    """Why the store at `db_url` cannot serve a cluster of `nodes` machines (None: it can). A SQLite
    file is one machine's: on other nodes the workers would each write a file of their own."""
    if db_url.startswith("sqlite") and nodes > 1:
        return (
            f"a SQLite store ({db_url}) cannot be shared by the {nodes} nodes of this Ray cluster: "
            "use a database every node reaches, e.g. --db postgresql+psycopg://user@host/db"
        )
    return None


def worker_count(device: str, requested: int | None) -> int:
    """How many workers: as asked, else one per GPU (CUDA) or per CPU of the cluster."""
    if requested is not None:
        return requested
    ray = import_ray()
    resources = ray.cluster_resources()
    return max(1, int(resources.get("GPU", 0) if wants_gpu(device) else resources.get("CPU", 1)))


def run_blocks(
    db_url: str,
    blocks: list[Block],
    spec: SweepSpec,
    address: str,
    registry: ModelRegistry | None,
    seen: Callable[[SeedDone], None],
    workers: int | None = None,
) -> int:
    """Run every block on a pool of SweepWorker actors and follow them to the end; the number of
    workers used. Raises TaskFailed if a block failed for good."""
    if not blocks:
        return 0
    prepare(address, db_url)
    ray = import_ray()
    from ray.util import ActorPool
    from ray.util.queue import Queue

    device = spec.settings["device"]
    n = min(len(blocks), worker_count(device, workers))
    actor = ray.remote(SweepWorker).options(
        num_cpus=1, num_gpus=1 if wants_gpu(device) else 0, max_restarts=-1, max_task_retries=RAY_MAX_RETRIES
    )
    progress = Queue()
    actors = [actor.remote(db_url, device, registry) for _ in range(n)]
    pool = ActorPool(actors)
    for block in blocks:
        pool.submit(lambda a, b: a.run.remote(b, spec.metrics, progress), block)
    try:
        while pool.has_next():
            _drain(progress, seen)
            try:
                pool.get_next_unordered(timeout=POLL_S)
            except TimeoutError:
                continue
            except ray.exceptions.RayError as exc:
                raise TaskFailed(f"a sweep task failed after {RAY_MAX_RETRIES} retries: {_last_line(exc)}") from exc
        _drain(progress, seen)
    finally:
        for a in actors:
            ray.kill(a)
        ray.kill(progress.actor)
    return n


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[-1] if text else type(exc).__name__)[:300]


def _drain(progress, seen: Callable[[SeedDone], None]) -> None:
    while True:
        try:
            items = progress.get_nowait_batch(max(1, progress.qsize()))
        except stdlib_queue.Empty:
            return
        for item in items:
            seen(item)
        if not items:
            return
