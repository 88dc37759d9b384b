"""What the UI is built from: the store, the worker pool, the models on offer and the caps.

`build_app(services)` takes one of these; nothing in the UI lives in module globals.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from explorer.adapters import ModelSpec, describe_model
from explorer.presets import PRESETS, Preset
from explorer.store import TrajectoryStore
from explorer.worker import WorkerPool


@dataclass(frozen=True)
class Limits:
    """Server-side caps that protect a public deployment (checked before a job is queued)."""

    max_gen_length: int = 256
    max_steps: int = 256
    max_pending_jobs: int = 32
    max_import_bytes: int = 32 * 1024 * 1024
    runs_table_rows: int = 200
    max_pace_ms: int = 500


@dataclass
class Services:
    store: TrajectoryStore
    pool: WorkerPool | None  # None: replay-only (serves stored runs, runs nothing)
    models: dict[str, ModelSpec]  # empty in replay-only mode
    limits: Limits = field(default_factory=Limits)
    presets: tuple[Preset, ...] = PRESETS

    @property
    def replay_only(self) -> bool:
        return self.pool is None

    @classmethod
    def create(cls, db_url: str, model_names: tuple[str, ...] = ("embedded",), n_workers: int = 1,
               threads: int | None = None, limits: Limits | None = None, replay_only: bool = False) -> "Services":
        """The store, and unless `replay_only` the worker pool (its workers start loading the
        models now) and the models' specs. Replay-only: no worker, no model, no weights read;
        the app serves the stored runs (token texts come from the runs' stored events)."""
        limits = limits or Limits()
        store = TrajectoryStore(db_url)
        if replay_only:
            return cls(store, None, {}, limits)
        # Only the embedded model is loaded ahead (milliseconds, and the first Run must be quick);
        # the large families load lazily on their first job, as an operator would expect.
        pool = WorkerPool(store.url, n_workers=n_workers, threads=threads, max_pending=limits.max_pending_jobs,
                          preload=tuple(name for name in model_names if name == "embedded"))
        return cls(store, pool, {name: describe_model(name) for name in model_names}, limits)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
