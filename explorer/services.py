"""What the UI is built from: the store, the worker pool, the models on offer and the caps.

`build_app(services)` takes one of these; nothing in the UI lives in module globals. The pool
is a `WorkerPool` of local processes or, with `on_ray`, a `RayWorkerPool` of Ray actors
(explorer/ray_pool.py); both have the same interface, and the UI cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from explorer.adapters.loading import describe_model
from explorer.adapters.registry import DEFAULT_REGISTRY, ModelRegistry
from explorer.adapters.spec import ModelSpec
from explorer.presets import PRESETS, Preset
from explorer.store.database import TrajectoryStore
from explorer.worker import JobQueue, WorkerPool


@dataclass(frozen=True)
class Limits:
    """Server-side caps that protect a public deployment (checked before a job is queued)."""

    max_gen_length: int = 256
    max_steps: int = 256
    max_pending_jobs: int = 32
    max_import_bytes: int = 32 * 1024 * 1024
    runs_table_rows: int = 200
    max_pace_ms: int = 500
    max_prompt_chars: int = 4000  # longer prompts are refused before they are read word by word
    # A job's estimated sequence forwards (explorer/decoding/cost.py), refused above this before
    # it is queued; and its wall-clock limit in the worker (the run ends failed, its steps kept).
    max_job_passes: int = 4096
    max_job_seconds: float = 300.0


@dataclass
class Services:
    store: TrajectoryStore
    pool: JobQueue | None  # a WorkerPool or a RayWorkerPool; None: replay-only (serves stored runs, runs nothing)
    models: dict[str, ModelSpec]  # empty in replay-only mode
    registry: ModelRegistry = DEFAULT_REGISTRY  # the operator's models; the workers load from it
    limits: Limits = field(default_factory=Limits)
    presets: tuple[Preset, ...] = PRESETS

    @property
    def replay_only(self) -> bool:
        return self.pool is None

    @classmethod
    def create(
        cls,
        db_url: str,
        registry: ModelRegistry = DEFAULT_REGISTRY,
        n_workers: int | None = 1,
        threads: int | None = None,
        limits: Limits | None = None,
        replay_only: bool = False,
        model_names: tuple[str, ...] | None = None,
        on_ray: bool = False,
        ray_address: str | None = None,
    ) -> Services:
        """The store, and unless `replay_only` the worker pool (its workers start loading the
        models now) and the specs of the models offered (`model_names`, default: every model
        of `registry`). Replay-only: no worker, no model, no weights read; the app serves the
        stored runs (token texts come from the runs' stored events). `on_ray`: the workers are
        Ray actors on the cluster at `ray_address` (default: a local Ray instance), `n_workers`
        of them (None: one per GPU of the cluster, or one)."""
        limits = limits or Limits()
        store = TrajectoryStore(db_url)
        store.recover_interrupted()  # runs a dead app or worker left `running` end `interrupted`, steps kept
        if replay_only:
            return cls(store, None, {}, registry, limits)
        model_names = registry.names() if model_names is None else model_names
        # Only the embedded model is loaded ahead (milliseconds, and the first Run must be quick);
        # the large families load lazily on their first job, as an operator would expect.
        preload = tuple(name for name in model_names if name == "embedded")
        if on_ray:
            pool = _ray_pool(store.url, registry, n_workers, threads, limits.max_pending_jobs, preload, ray_address)
        else:
            pool = WorkerPool(
                store.url,
                registry,
                n_workers=n_workers or 1,
                threads=threads,
                max_pending=limits.max_pending_jobs,
                preload=preload,
            )
        return cls(store, pool, {name: describe_model(name, registry) for name in model_names}, registry, limits)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _ray_pool(
    db_url: str,
    registry: ModelRegistry,
    n_workers: int | None,
    threads: int | None,
    max_pending: int,
    preload: tuple[str, ...],
    address: str | None,
) -> JobQueue:
    """A `RayWorkerPool`, imported here only: a server with local workers never imports Ray."""
    from explorer.ray_pool import RayWorkerPool

    return RayWorkerPool(db_url, registry, n_workers, threads, max_pending, preload, address)
