"""The same small sweep in-process and on a local Ray cluster with 2 workers: wall time and overhead per task.

    python bench/bench_sweep_ray.py [--seeds 20] [--seeds-per-task 5]

The sweep is examples/sweeps/small.toml: the embedded model, 64 tokens, low_confidence at 1 and 4
tokens per step and pairwise_gate (K = 8, tau = 1), T = 0 (story prompts) and T = 1, with the
checker and AR NLL. Each mode writes a fresh SQLite file. Ray runs on `ray.init(num_cpus=2)` on
this machine with 2 worker actors; the Ray sweep's wall time includes starting them (a process
each: importing torch and loading the model), which `startup` reports apart: the time to the
first finished run, less that run's own decoding time.

Printed: each wall time; the speed-up over in-process (the baseline, measured in the same run);
and the overhead per task, (workers x wall - in-process wall) / tasks: the worker-seconds a task
costs beyond the decoding itself (the workers' startup, claiming seeds, the store round trips,
Ray's scheduling and progress queue). The script also checks that both give the same token ids
per (cell, seed).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.store import sweeps as table
from explorer.store.database import TrajectoryStore
from explorer.sweeps.execute import run_sweep
from explorer.sweeps.spec import parse_spec

WORKERS = 2
SMALL = ROOT / "examples" / "sweeps" / "small.toml"


def spec(name: str, seeds: int, per_task: int):
    """examples/sweeps/small.toml, under `name`, with `seeds` seeds in blocks of `per_task`."""
    data = tomllib.loads(SMALL.read_text())
    return parse_spec({**data, "name": name, "seeds": seeds, "seeds_per_task": per_task})


def tokens(store: TrajectoryStore, sweep_id: int) -> dict:
    keys = {c["id"]: c["key"] for c in table.sweep_cells(store, sweep_id)}
    return {(keys[r["cell_id"]], r["seed"]): r["final_token_ids"] for r in table.sweep_rows(store, sweep_id)}


def timed(folder: Path, name: str, seeds: int, per_task: int, ray: str | None) -> tuple[float, float, dict, int]:
    """(wall s, startup s, token ids by (cell, seed), tasks) of one sweep into a fresh SQLite file."""
    store = TrajectoryStore(f"sqlite:///{folder}/{name}.db")
    first: list[float] = []
    began = time.perf_counter()

    def seen(done) -> None:
        if not first:
            first.append(time.perf_counter() - began - done.seconds)

    progress = run_sweep(
        store, spec(name, seeds, per_task), ray_address=ray, ray_workers=WORKERS if ray else None, on_seed=seen,
        progress_bar=False,
    )  # fmt: skip
    wall = time.perf_counter() - began
    assert progress.counts["failed"] == 0 and progress.counts["done"] == progress.planned, progress.counts
    return wall, first[0], tokens(store, progress.sweep_id), progress.tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--seeds-per-task", type=int, default=5)
    args = parser.parse_args(argv)
    import ray

    folder = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    runs = 6 * args.seeds
    print(f"{platform.processor() or platform.machine()}, {runs} runs (6 cells x {args.seeds} seeds), "
          f"{args.seeds_per_task} seeds per task")  # fmt: skip
    base, _, reference, tasks = timed(folder, "inprocess", args.seeds, args.seeds_per_task, None)
    print(f"in-process (baseline): {base:.1f} s, {1000 * base / runs:.0f} ms per run, {tasks} blocks")
    began = time.perf_counter()
    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    print(f"ray.init (local, {WORKERS} CPUs): {time.perf_counter() - began:.1f} s (not counted below)")
    wall, startup, got, tasks = timed(folder, "ray", args.seeds, args.seeds_per_task, "auto")
    same = got == reference
    overhead = (WORKERS * wall - base) / tasks
    print(
        f"Ray, {WORKERS} workers: {wall:.1f} s, {base / wall:.2f}x in-process, startup {startup:.1f} s, "
        f"overhead {overhead:+.2f} worker-s per task ({tasks} tasks), same tokens as in-process: {same}"
    )
    assert same, "a Ray sweep gave other tokens than in-process"
    ray.shutdown()


if __name__ == "__main__":
    main()
