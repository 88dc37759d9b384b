"""Store throughput: a synthetic 1024-position x 1024-step run written and read back.

    python bench/bench_store.py [--positions 1024] [--steps 1024] [--repeats 3] [--batch-steps 16] [--profile]

Each repeat writes one run through StoreWriter -> TrajectoryStore into a fresh SQLite file
(realistic StepRecords: random per-position arrays, one commit per step, top-3 alternatives)
and reads it back with `read_arrays`. Targets: write <= 2 s, read <= 0.5 s (medians).
With --profile (or when a median misses its target) one extra write and read run under
cProfile and the top functions by cumulative time are printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time

import numpy as np

WRITE_TARGET_S = 2.0
READ_TARGET_S = 0.5
TOP_K = 3


def synthetic_records(positions: int, steps: int, seed: int = 0) -> list:
    """One commit per step at a random not-yet-committed position, like low_confidence at k=1."""
    from explorer.decoding.records import StepRecord

    rng = np.random.default_rng(seed)
    order = rng.permutation(positions)
    records = []
    for step in range(steps):
        position = int(order[step % positions])
        confidence = rng.random(positions, dtype=np.float32)
        top_probs = np.sort(rng.random((1, TOP_K), dtype=np.float32), axis=1)[:, ::-1].copy()
        records.append(
            StepRecord(
                step=step,
                block=0,
                committed=np.array([position], dtype=np.int64),
                tokens=rng.integers(3, 119, size=1).astype(np.int64),
                probs=confidence[[position]],
                top_ids=rng.integers(3, 119, size=(1, TOP_K)).astype(np.int64),
                top_probs=top_probs,
                argmax=rng.integers(3, 119, size=positions).astype(np.int32),
                confidence=confidence,
                entropy=(rng.random(positions, dtype=np.float32) * 4.7).astype(np.float32),
                margin=rng.random(positions, dtype=np.float32),
                masked_before=positions - step,
                seconds=0.01,
            )
        )
    return records


def write_run(db_path: Path, records: list, positions: int, batch_steps: int) -> tuple[float, float, int]:
    """(seconds to open the store, seconds to write the run, run id)."""
    from explorer.decoding.callbacks import RunStart
    from explorer.decoding.config import DecodeConfig
    from explorer.decoding.records import DecodeResult
    from explorer.store.database import StoreWriter, TrajectoryStore

    vocab = [f"w{i}" for i in range(128)]
    began = time.perf_counter()
    store = TrajectoryStore(f"sqlite:///{db_path}")
    opened = time.perf_counter()
    writer = StoreWriter(store, vocab.__getitem__, batch_steps=batch_steps)
    config = DecodeConfig(gen_length=positions, steps=len(records))
    writer.on_start(
        RunStart(model="synthetic", prompt="bench", prompt_ids=[5, 6, 7], config=config, mask_id=1, device="cpu")
    )
    final = np.full(positions, 1, dtype=np.int64)
    for record in records:
        writer.on_step(record)
        final[record.committed] = record.tokens
    writer.on_end(DecodeResult("completed", final.tolist(), "", len(records)))
    written = time.perf_counter()
    store.engine.dispose()
    return opened - began, written - opened, writer.run_id


def read_run(db_path: Path, run_id: int):
    """(seconds for read_arrays on a freshly opened store, the arrays)."""
    from explorer.store.database import TrajectoryStore

    store = TrajectoryStore(f"sqlite:///{db_path}")
    store.get_run(run_id)  # connect outside the timing
    began = time.perf_counter()
    arrays = store.read_arrays(run_id)
    seconds = time.perf_counter() - began
    store.engine.dispose()
    return seconds, arrays


def check(arrays, records: list, positions: int) -> None:
    steps = len(records)
    for name in ("argmax", "confidence", "entropy", "margin", "tokens"):
        shape = getattr(arrays, name).shape
        assert shape == (positions, steps), f"{name}: {shape} != {(positions, steps)}"
    assert arrays.commit_step.shape == (positions,)
    last = records[-1]
    np.testing.assert_array_equal(arrays.argmax[:, -1], last.argmax)
    np.testing.assert_array_equal(arrays.confidence[:, -1], last.confidence.astype(np.float16).astype(np.float32))
    assert int((arrays.commit_step >= 0).sum()) == min(steps, positions)
    assert int((arrays.tokens[:, -1] != 1).sum()) == min(steps, positions)


def profile(label: str, fn, top: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    print(f"\n---- profile: {label} (top {top} by cumulative time) ----")
    print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print(f"---- profile: {label} (top {top} by own time) ----")
    print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-steps", type=int, default=16, help="StoreWriter batch size (its default: 16)")
    parser.add_argument("--profile", action="store_true", help="also profile one write and one read")
    parser.add_argument("--top", type=int, default=18, help="profile lines to print")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    records = synthetic_records(args.positions, args.steps)
    print(
        f"synthetic run: {args.positions} positions x {args.steps} steps, one commit per step, "
        f"batch_steps {args.batch_steps} (records built in {time.perf_counter() - began:.2f} s, not timed)"
    )

    opens, writes, reads, sizes = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        tmp = Path(tmp)
        for i in range(args.repeats):
            db = tmp / f"run{i}.db"
            open_s, write_s, run_id = write_run(db, records, args.positions, args.batch_steps)
            read_s, arrays = read_run(db, run_id)
            check(arrays, records, args.positions)
            sizes.append(sum(p.stat().st_size for p in tmp.glob(f"run{i}.db*")))
            opens.append(open_s)
            writes.append(write_s)
            reads.append(read_s)
            print(
                f"  repeat {i + 1}: open {open_s:.3f} s  write {write_s:.3f} s  read_arrays {read_s:.3f} s  "
                f"db {sizes[-1] / 2**20:.1f} MiB"
            )

        write_med, read_med = statistics.median(writes), statistics.median(reads)
        print(f"{'':12} {'median s':>9} {'target s':>9} {'ratio':>7}")
        print(
            f"{'write':12} {write_med:9.3f} {WRITE_TARGET_S:9.2f} {write_med / WRITE_TARGET_S:6.2f}x"
            f"{'' if write_med <= WRITE_TARGET_S else '  MISSED'}"
        )
        print(
            f"{'read_arrays':12} {read_med:9.3f} {READ_TARGET_S:9.2f} {read_med / READ_TARGET_S:6.2f}x"
            f"{'' if read_med <= READ_TARGET_S else '  MISSED'}"
        )
        print(f"(opening a new store and creating its tables: median {statistics.median(opens):.3f} s, not in write)")
        print(f"shapes checked: (G, S) = ({args.positions}, {args.steps})")

        missed = write_med > WRITE_TARGET_S or read_med > READ_TARGET_S
        if args.profile or missed:
            db = tmp / "profiled.db"
            holder = {}
            profile(
                "write",
                lambda: holder.setdefault("id", write_run(db, records, args.positions, args.batch_steps)[2]),
                args.top,
            )
            profile("read_arrays", lambda: read_run(db, holder["id"]), args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
