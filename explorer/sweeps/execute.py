"""Running a sweep: create (or resume) it in the store, then run its blocks in-process or as Ray tasks.

In-process, the blocks run one after another in this process (a tqdm bar on stderr). With Ray
(`ray_address`: "auto", an address, or "local" to start a private instance), each block is a
Ray task on a pool of worker actors (one CPU, and one GPU when the sweep decodes on CUDA;
explorer/sweeps/on_ray.py) that writes its runs to the shared store and sends every seed's
progress to the driver through a Ray queue. A task whose worker dies is retried by Ray; the
store's (cell, seed) claims make a retry skip what its first attempt finished and redo what it
left half-written. A driver that dies leaves the sweep as it is: `resume` runs what is missing.

Ray is imported only when a sweep asks for it: the quick start does not install it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from explorer.adapters.registry import ModelRegistry
from explorer.store import sweeps as table
from explorer.store.database import TrajectoryStore
from explorer.sweeps import on_ray
from explorer.sweeps.metrics import METRICS
from explorer.sweeps.runner import Block, Models, SeedDone, run_block
from explorer.sweeps.spec import SpecError, SweepSpec


@dataclass
class SweepProgress:
    """What the driver saw: per status counts, the workers that reported, and the wall time."""

    sweep_id: int
    planned: int
    counts: dict[str, int] = field(default_factory=lambda: {"done": 0, "skipped": 0, "failed": 0})
    workers: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tasks: int = 0
    actors: int = 0  # Ray workers started (0 in-process)

    def add(self, done: SeedDone) -> None:
        self.counts[done.status] += 1
        self.workers.add(done.worker)
        if done.error and len(self.errors) < 20:
            self.errors.append(f"cell {done.cell_index}, seed {done.seed}: {done.error}")


def open_sweep(store: TrajectoryStore, spec: SweepSpec, resume: bool) -> int:
    """The sweep's id: a new one, or (`resume`) the stored sweep of the same name and spec."""
    existing = table.find_sweep(store, spec.name)
    if existing is None:
        if resume:
            raise SpecError(f"no sweep named {spec.name!r} in {store.url} to resume; run it without --resume")
        cells = [(c.key, c.label, c.to_json()) for c in spec.cells]
        return table.create_sweep(store, spec.name, spec.to_json(), cells)
    if not resume:
        raise table.SweepExists(
            f"a sweep named {spec.name!r} exists in {store.url} (id {existing['id']}): add --resume to finish it, "
            "or give this one another name"
        )
    if existing["spec"] != spec.to_json():
        raise SpecError(
            f"sweep {spec.name!r} (id {existing['id']}) was started with another spec; resume it with the same "
            "file, or give the changed spec another name"
        )
    return existing["id"]


def check_metrics(spec: SweepSpec) -> None:
    """Refuse a metric that cannot be measured on one of the spec's models, before anything is stored."""
    for cell in spec.cells:
        for name in spec.metrics:
            reason = METRICS[name].unavailable(cell.model)
            if reason:
                raise SpecError(f"sweep spec: {reason}")


def plan_blocks(store: TrajectoryStore, sweep_id: int, spec: SweepSpec) -> list[Block]:
    """The blocks still to run: each cell's seeds not done, `seeds_per_task` at a time, seed-block-major
    (every cell gains seeds at the same pace, so a sweep stopped early still covers the whole grid)."""
    cells = table.sweep_cells(store, sweep_id)
    done = table.done_seeds(store, sweep_id)
    size = spec.settings["seeds_per_task"]
    blocks = []
    for row, cell in zip(cells, spec.cells):
        todo = [s for s in spec.seed_list if s not in done.get(row["id"], set())]
        blocks += [
            Block(sweep_id, row["id"], row["index"], cell, tuple(todo[i : i + size])) for i in range(0, len(todo), size)
        ]
    blocks.sort(key=lambda b: (spec.seed_list.index(b.seeds[0]), b.cell_index))
    return blocks


def run_sweep(
    store: TrajectoryStore,
    spec: SweepSpec,
    *,
    resume: bool = False,
    ray_address: str | None = None,
    registry: ModelRegistry | None = None,
    ray_workers: int | None = None,
    on_seed: Callable[[SeedDone], None] | None = None,
    progress_bar: bool = True,
) -> SweepProgress:
    """Run (or resume) the sweep; returns the progress the driver saw. The report reads the store."""
    check_metrics(spec)
    if ray_address is not None:
        on_ray.prepare(ray_address, store.url)  # an unreachable cluster, or a store it cannot share: nothing stored
    sweep_id = open_sweep(store, spec, resume)
    blocks = plan_blocks(store, sweep_id, spec)
    progress = SweepProgress(sweep_id, sum(len(b.seeds) for b in blocks), tasks=len(blocks))
    bar = _bar(progress.planned, spec.name, progress_bar)

    def seen(done: SeedDone) -> None:
        progress.add(done)
        bar.update(1)
        bar.set_postfix(failed=progress.counts["failed"], refresh=False)
        if on_seed is not None:
            on_seed(done)

    began = time.perf_counter()
    try:
        if ray_address is None:
            models = Models(registry, spec.settings["device"])
            for block in blocks:
                run_block(store, block, models, spec.metrics, seen)
        else:
            progress.actors = on_ray.run_blocks(store.url, blocks, spec, ray_address, registry, seen, ray_workers)
    finally:
        bar.close()
        progress.seconds = time.perf_counter() - began
    return progress


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, name: str, wanted: bool):
    if not wanted:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc=f"sweep {name}", file=sys.stderr)
