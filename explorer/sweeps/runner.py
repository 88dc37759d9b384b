"""One block of a sweep: a cell's seeds, each decoded into the store and linked to its (cell, seed).

The same function runs in-process and inside a Ray task, so a (cell, seed) gives the same tokens
wherever it runs: the prompt and config come from the cell and seed alone, and on the CPU each
decode runs on one torch thread (a matrix product's rounding can depend on the thread count,
which would break a near-tie differently on two machines).
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from explorer.adapters.loading import ScorerCache, load_denoiser
from explorer.adapters.registry import ModelRegistry
from explorer.api import prepare
from explorer.decoding.engine import run_decode
from explorer.decoding.protocols import Denoiser
from explorer.store import sweeps as table
from explorer.store.database import StoreWriter, TrajectoryStore
from explorer.sweeps.metrics import METRICS, CostTotals, Outcome
from explorer.sweeps.spec import Cell
from models.corpus import generate_story

STORY_SEED_OFFSET = 100_000  # greedy cells: seed s opens story s of the grammar's generator, drawn with this offset


@dataclass(frozen=True)
class SeedDone:
    """Progress of one (cell, seed), sent to the driver: done, skipped (done before) or failed."""

    cell_index: int
    seed: int
    status: str  # done | skipped | failed
    worker: str
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Block:
    """A task: some seeds of one cell of a sweep."""

    sweep_id: int
    cell_id: int
    cell_index: int
    cell: Cell
    seeds: tuple[int, ...]


@dataclass
class Models:
    """The models a worker process has loaded, kept for its next blocks (owned by the runner's caller)."""

    registry: ModelRegistry | None = None
    device: str = "auto"
    _denoisers: dict[str, Denoiser] = field(default_factory=dict)
    _scorers: ScorerCache | None = None

    def denoiser(self, name: str) -> Denoiser:
        if name not in self._denoisers:
            overrides = {} if self.device == "auto" else {"device": self.device}
            self._denoisers[name] = load_denoiser(name, registry=self.registry, **overrides)
        return self._denoisers[name]

    @property
    def scorers(self) -> ScorerCache:
        if self._scorers is None:
            self._scorers = ScorerCache(self.registry)
        return self._scorers


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def prompt_of(cell: Cell, seed: int) -> str:
    """The prompt of (cell, seed): the cell's, or the opening of story `seed` (greedy cells, whose
    seeds would otherwise all decode the same text)."""
    if not cell.story_prompts:
        return cell.prompt
    return " ".join(generate_story(random.Random(STORY_SEED_OFFSET + seed))[: cell.prompt_words])


def run_block(
    store: TrajectoryStore,
    block: Block,
    models: Models,
    metrics: Iterable[str],
    on_seed: Callable[[SeedDone], None] = lambda done: None,
) -> list[SeedDone]:
    """Decode every seed of the block not done yet; each is written once (see explorer/store/sweeps.py)."""
    out = []
    with one_thread_on_cpu():
        for seed in block.seeds:
            done = run_seed(store, block, seed, models, tuple(metrics))
            on_seed(done)
            out.append(done)
    return out


def run_seed(store: TrajectoryStore, block: Block, seed: int, models: Models, metrics: tuple[str, ...]) -> SeedDone:
    worker = worker_name()
    attempt = table.claim(store, block.sweep_id, block.cell_id, seed, worker)
    if attempt is None:
        return SeedDone(block.cell_index, seed, "skipped", worker)
    began = time.perf_counter()
    try:
        run_id, values = _decode(store, block, seed, attempt, models, metrics)
    except table.TakenOver:  # another attempt holds the seed now (this one was presumed dead): leave it
        return SeedDone(block.cell_index, seed, "skipped", worker, time.perf_counter() - began)
    except (ValueError, RuntimeError) as exc:  # a config the model refuses, out of memory
        table.fail(store, block.cell_id, seed, attempt, f"{type(exc).__name__}: {exc}")
        return SeedDone(block.cell_index, seed, "failed", worker, time.perf_counter() - began, str(exc))
    if not table.complete(store, block.cell_id, seed, attempt, run_id, values):
        return SeedDone(block.cell_index, seed, "skipped", worker, time.perf_counter() - began)
    return SeedDone(block.cell_index, seed, "done", worker, time.perf_counter() - began)


def _decode(
    store: TrajectoryStore, block: Block, seed: int, attempt: str, models: Models, metrics: tuple[str, ...]
) -> tuple[int, dict]:
    cell = block.cell
    denoiser = models.denoiser(cell.model)
    config = cell.decode_config(seed)
    prompt = prompt_of(cell, seed)
    prompt_ids = prepare(prompt, denoiser, config)
    wanted = [METRICS[name] for name in metrics]
    scorer = models.scorers.configured(config, denoiser) if any(m.needs_scorer for m in wanted) else None
    if any(m.needs_scorer for m in wanted) and scorer is None:
        raise ValueError(f"metric ar_nll needs an AR scorer for model {cell.model!r}: set ar_scorer in the cell")

    def link(session, run_id: int) -> None:
        table.attach(session, block.cell_id, seed, attempt, run_id)

    writer = StoreWriter(store, denoiser.token_text, batch_steps=64, max_delay=5.0, link=link)
    cost = CostTotals()
    result = run_decode(
        denoiser,
        prompt_ids,
        config,
        [writer, cost],
        prompt_text=prompt,
        ar_scorer=models.scorers.for_run(config, denoiser),
    )
    if result.status != "completed":
        raise RuntimeError(f"the decode ended {result.status}: {result.error}")
    tokens = list(result.token_ids)
    outcome = Outcome(cell.model, prompt_ids, tokens, denoiser.decode(prompt_ids + tokens), scorer)
    values = cost.metrics()
    for metric in wanted:
        values |= metric.compute(outcome)
    return writer.run_id, values


@contextmanager
def one_thread_on_cpu() -> Iterator[None]:
    """torch on one thread while the block runs (restored after): a run's tokens must not depend on the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
