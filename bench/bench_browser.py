"""Scrubbing in the browser: slider-move latency in Chromium, and the cost of a live frame.

    python bench/bench_browser.py [--sizes 64 256 1024] [--moves 60] [--no-busy]

(a) Slider move -> updated page. Synthetic stored runs of N positions x N steps (one commit per
    step, bench/bench_store.py's writer) are opened in Chromium by permalink (`?run=ID`); the
    page then moves the player's range input `moves` times, to seeded random steps ("jump") and
    one step at a time ("±1 step", as the arrow keys and play move), each time timing
    from the `input` event until the next frame is painted (token view re-rendered and coloured,
    the step label and the figures' step markers moved; the wait for the display's next frame,
    up to 16.7 ms at 60 Hz, is included). The median (with a distribution-free 95% interval) and
    the 95th percentile are printed against the 50 ms target, once on an idle machine and once
    while `os.cpu_count()` busy-loop processes, started here, keep every core busy (the server's
    CPU busy too: nothing here asks the server while scrubbing).
(b) A live frame at 1024 x 1024, on the server: the new design turns the frame's new steps into
    token segments (`LivePlayer.frame`, what the app sends); the baseline is what the app did
    before, measured in the same run: rebuild RunArrays from every step so far and draw the token
    view and the four figures (`render_view`). Printed per frame at several points of the run,
    against the live refresh interval (0.25 s).
(c) The same frames fed to the page (`explorerPlayer.feed`, what a new value does): the
    browser's time to append them and draw, per frame.

Nothing is asserted; ratios to the targets are printed. Needs /usr/bin/chromium and playwright.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MOVE_TARGET_MS = 50.0
FRAME_TARGET_S = 0.25  # the app's LIVE_REFRESH_S
FRAME_STEPS = 4  # steps a live frame carries in (b) and (c): ~ a 16 steps/s run at 4 frames/s
VIEWPORT = {"width": 1440, "height": 900}
MOVES = ("jump", "±1 step")  # to random steps (the slider dragged far), one step on (arrow keys, play)

# Seeded targets (a linear congruential generator) so both conditions move to the same steps.
# The next frame's animation callback runs after the update's layout; a task queued from it runs
# once that frame is painted. So "updated page" includes waiting for the display's next frame.
PAINTED = "const painted = () => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));"
MOVES_JS = (
    """async ([n, seed]) => {
  """
    + PAINTED
    + """
  const host = document.querySelector('#tokens');
  const range = host.querySelector('.pl-range');
  const last = Number(range.max);
  let x = seed;
  const times = [];
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const target = x % (last + 1);
    const began = performance.now();
    range.value = String(target);
    range.dispatchEvent(new Event('input', {bubbles: true}));
    await painted();
    times.push(performance.now() - began);
    if (host.dataset.step !== String(target)) throw new Error(`shows step ${host.dataset.step}, not ${target}`);
  }
  return times;
}"""
)

FEED_JS = (
    """async (frames) => {
  """
    + PAINTED
    + """
  const player = document.querySelector('#tokens').explorerPlayer;
  const times = [];
  for (const payload of frames) {
    const began = performance.now();
    player.feed(payload);
    await painted();
    times.push(performance.now() - began);
  }
  return times;
}"""
)


def spin() -> None:
    while True:
        pass


def busy_processes() -> list[multiprocessing.Process]:
    procs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(os.cpu_count() or 2)]
    for proc in procs:
        proc.start()
    return procs


def stop(procs: list[multiprocessing.Process]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join()


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def median_interval(times: list[float]) -> tuple[float, float]:
    """A distribution-free 95% interval for the median: the order statistics n/2 -+ 1.96 sqrt(n)/2
    (the normal approximation to the binomial count of values below the median)."""
    ordered, n = sorted(times), len(times)
    half = 1.96 * math.sqrt(n) / 2
    low, high = max(math.floor(n / 2 - half), 0), min(math.ceil(n / 2 + half), n - 1)
    return ordered[low], ordered[high]


def open_run(page, url: str, run_id: int, steps: int) -> None:
    page.goto(f"{url}?run={run_id}")
    page.wait_for_function(f"document.querySelector('#tokens')?.dataset.step === '{steps - 1}'", timeout=120_000)
    page.wait_for_function("document.querySelectorAll('.step-marker').length >= 4", timeout=60_000)


def move_latencies(page, moves: int, seed: int, stepwise: bool) -> list[float]:
    """Jumps to seeded random steps, or (stepwise) one step at a time as the arrow keys and play do."""
    page.evaluate(MOVES_JS, [2, seed + 1, False])  # warm-up
    return page.evaluate(MOVES_JS, [moves, seed, stepwise])


def live_frames(size: int) -> tuple[list[dict], list[tuple[int, float, float]]]:
    """The payloads of a size x size run's live frames, and (steps so far, new frame seconds,
    baseline seconds) at a few points of the run."""
    import bench_store

    from explorer.store.arrays import RunArrays
    from explorer.views import figures as plots
    from explorer.views.player import LivePlayer
    from explorer.views.tokens import render_tokens

    records = bench_store.synthetic_records(size, size)
    run = {"id": None, "gen_length": size, "mask_id": 1, "prompt": "bench", "model": "synthetic"}
    text = lambda t: f"w{int(t)}"  # noqa: E731
    live = LivePlayer("live-bench", size, 1, text, "confidence")
    frames, points = [live.frame([], None)], []
    checkpoints = {size // 4, size // 2, size - FRAME_STEPS}
    for start in range(0, size, FRAME_STEPS):
        batch = records[start : start + FRAME_STEPS]
        began = time.perf_counter()
        frames.append(live.frame(batch, None))
        new = time.perf_counter() - began
        if start in checkpoints:
            began = time.perf_counter()
            arrays = RunArrays.from_records(run, records[: start + len(batch)])
            render_tokens(arrays, text, None, "bench")
            for figure in (
                plots.metric_heatmap(arrays, "confidence"),
                plots.commit_order_map(arrays),
                plots.tokens_per_step(arrays),
                plots.changes_map(arrays, token_text=text),
            ):
                figure.to_json()
            points.append((start + len(batch), new, time.perf_counter() - began))
    return frames, points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--moves", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-busy", action="store_true", help="skip the busy-CPU condition")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    import bench_store
    from bench_ui import BROWSER_ARGS, CHROMIUM, start_app
    from playwright.sync_api import sync_playwright

    print(f"machine: {os.cpu_count()} CPU(s); Chromium {CHROMIUM}; {args.moves} moves per condition")
    out: dict = {"moves": {}, "live": {}}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        runs = {}
        for size in args.sizes:
            _, _, runs[size] = bench_store.write_run(db, bench_store.synthetic_records(size, size), size, 64)
        services, demo, url = start_app(f"sqlite:///{db}")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                print("\n(a) slider move -> page updated (ms), target <= 50 ms")
                header = f"{'run':>12} {'condition':>10} {'moves':>8} {'median':>8} {'95% CI':>13} {'p95':>7}"
                print(f"{header} {'median/target':>14} {'CI top/target':>14}")
                for size in args.sizes:
                    open_run(page, url, runs[size], size)
                    conditions = [("idle", None)] + ([] if args.no_busy else [("CPU busy", busy_processes)])
                    for name, load in conditions:
                        procs = load() if load else []
                        try:
                            time.sleep(0.5 if procs else 0)
                            times = {
                                kind: move_latencies(page, args.moves, args.seed, kind == "±1 step") for kind in MOVES
                            }
                        finally:
                            stop(procs)
                        for kind, measured in times.items():
                            median, p95 = summary(measured)
                            low, high = median_interval(measured)
                            out["moves"][f"{size}x{size} {name} {kind}"] = {
                                "median_ms": median,
                                "median_ci95_ms": [low, high],
                                "p95_ms": p95,
                            }
                            interval = f"{low:.1f}-{high:.1f}"
                            print(
                                f"{size:>5} x {size:<5} {name:>10} {kind:>8} {median:8.1f} {interval:>13} "
                                f"{p95:7.1f} {median / MOVE_TARGET_MS:13.2f}x {high / MOVE_TARGET_MS:13.2f}x"
                            )
                size = max(args.sizes)
                frames, points = live_frames(size)
                print(f"\n(b) live frame on the server at {size} x {size}, {FRAME_STEPS} new steps a frame (ms)")
                print(f"{'steps so far':>12} {'new':>8} {'baseline':>10} {'baseline/new':>13} {'new/0.25 s':>11}")
                for at, new, old in points:
                    out["live"][str(at)] = {"new_ms": 1000 * new, "baseline_ms": 1000 * old}
                    ratio, share = old / new, new / FRAME_TARGET_S
                    print(f"{at:>12} {1000 * new:8.2f} {1000 * old:10.1f} {ratio:12.0f}x {share:10.3f}x")
                bytes_per_frame = statistics.median(len(json.dumps(f)) for f in frames[1:])
                print(f"median frame payload: {bytes_per_frame / 1024:.1f} KiB")
                open_run(page, url, runs[size], size)
                times = page.evaluate(FEED_JS, frames)
                median, p95 = summary(times[1:])
                out["live"]["browser_append"] = {"median_ms": median, "p95_ms": p95}
                print(
                    f"\n(c) the page appends a frame and draws it at {size} x {size}: median {median:.1f} ms, "
                    f"p95 {p95:.1f} ms (refresh interval 250 ms: {median / 1000 / FRAME_TARGET_S:.2f}x)"
                )
                browser.close()
        finally:
            demo.close()
            services.close()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
