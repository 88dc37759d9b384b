"""Engine overhead on the embedded model: a bare decode loop vs explorer's engine (+ store).

    python bench/bench_engine.py [--threads 2] [--repeats 3] [--gen-length 256] [--steps 256]

(a) bare:          forward on the full sequence, argmax of the generated part, commit the one
                   most confident masked position per step; plain torch, nothing recorded.
(b) engine+store:  explorer.engine.run_decode with a StoreWriter into a fresh SQLite file
                   (every per-position metric, batched step writes, commit events).
(c) engine:        run_decode with no callbacks (metrics and StepRecords, no store).

The three run interleaved, `--repeats` times each after a warm-up; medians are reported.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import argparse
import os
import statistics
import tempfile
import time

TARGET_RATIO = 1.3


def bare_decode(denoiser, prompt_ids: list[int], gen_length: int, steps: int) -> list[int]:
    """The plainest low-confidence loop: tokens_per_step = gen_length / steps (1 here)."""
    import torch

    mask_id, P = denoiser.mask_id, len(prompt_ids)
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long)
    x[0, :P] = torch.tensor(prompt_ids)
    per_step = gen_length // steps
    with torch.no_grad():
        for _ in range(steps):
            logits = denoiser.logits(x)[0, P:]  # (G, V)
            logits[:, mask_id] = float("-inf")
            conf, token = torch.softmax(logits, dim=-1).max(dim=-1)
            masked = x[0, P:] == mask_id
            if not bool(masked.any()):
                break
            conf = torch.where(masked, conf, torch.tensor(float("-inf")))
            pick = conf.topk(min(per_step, int(masked.sum()))).indices
            x[0, P + pick] = token[pick]
    return x[0, P:].tolist()


def engine_decode(denoiser, prompt_ids, config, db_path: Path | None):
    from explorer.decoding.engine import run_decode
    from explorer.store.database import StoreWriter, TrajectoryStore

    callbacks, store = [], None
    if db_path is not None:
        store = TrajectoryStore(f"sqlite:///{db_path}")  # open + create tables: outside the timing
        callbacks = [StoreWriter(store, denoiser.token_text)]
    began = time.perf_counter()
    result = run_decode(denoiser, prompt_ids, config, callbacks, prompt_text="bench")
    seconds = time.perf_counter() - began
    if store is not None:
        run_id = callbacks[0].run_id
        assert store.get_run(run_id)["n_steps"] == result.n_steps
        store.engine.dispose()
    return seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant (default 3)")
    parser.add_argument("--prompt", default="once upon a time")
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--strategy", default="low_confidence")
    args = parser.parse_args(argv)

    import torch

    from explorer.adapters.embedded import load_embedded
    from explorer.api import prepare
    from explorer.decoding.config import DecodeConfig

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    torch.set_num_threads(args.threads)
    denoiser = load_embedded()
    # violations=False: this measures the engine itself; the violation pass has its own benchmark
    # (bench/bench_violations.py).
    config = DecodeConfig(
        gen_length=args.gen_length, steps=args.steps, strategy=args.strategy, temperature=0.0, violations=False
    )
    prompt_ids = prepare(args.prompt, denoiser, config)

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        tmp = Path(tmp)
        counter = iter(range(10**6))

        def run_a():
            began = time.perf_counter()
            tokens = bare_decode(denoiser, prompt_ids, args.gen_length, args.steps)
            return time.perf_counter() - began, tokens

        def run_b():
            seconds, result = engine_decode(denoiser, prompt_ids, config, tmp / f"run{next(counter)}.db")
            return seconds, result.token_ids

        def run_c():
            seconds, result = engine_decode(denoiser, prompt_ids, config, None)
            return seconds, result.token_ids

        variants = {"a": run_a, "b": run_b, "c": run_c}
        outputs = {name: fn()[1] for name, fn in variants.items()}  # warm-up (and the outputs)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():  # interleaved a, b, c, a, b, c, ...
                times[name].append(fn()[0])

    med = {name: statistics.median(ts) for name, ts in times.items()}
    labels = {"a": "(a) bare loop", "b": "(b) engine + store", "c": "(c) engine, no store"}
    print(
        f"embedded model, prompt {args.prompt!r}, gen_length {args.gen_length}, steps {args.steps}, "
        f"{args.strategy}, T=0, torch threads {args.threads}, {args.repeats} repeats (median)"
    )
    print(f"cpus {os.cpu_count()}, load average before the run {load_before}")
    if args.threads > 1 and os.getloadavg()[0] > (os.cpu_count() or 1) - args.threads + 0.5:
        print(
            f"warning: other processes keep the CPUs busy; {args.threads} torch threads may oversubscribe "
            f"them (OpenMP waits can make each forward many times slower): compare with --threads 1"
        )
    print(f"{'variant':22} {'median s':>9} {'ms/step':>8} {'vs bare':>8}   all runs (s)")
    for name in variants:
        print(
            f"{labels[name]:22} {med[name]:9.3f} {1000 * med[name] / args.steps:8.2f} "
            f"{med[name] / med['a']:7.2f}x   {' '.join(f'{t:.3f}' for t in times[name])}"
        )
    store_cost = med["b"] - med["c"]
    metrics_cost = med["c"] - med["a"]
    print(
        f"engine metrics/records overhead (c - a): {1000 * metrics_cost / args.steps:+.2f} ms/step; "
        f"store overhead (b - c): {1000 * store_cost / args.steps:+.2f} ms/step"
    )
    same = outputs["a"] == outputs["b"] == outputs["c"]
    print(f"same tokens from a, b and c: {'yes' if same else 'NO'}")
    ratio = med["b"] / med["a"]
    print(
        f"ratio engine+store / bare = {ratio:.2f}x (target <= {TARGET_RATIO}x)"
        f"{'' if ratio <= TARGET_RATIO else '  MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
