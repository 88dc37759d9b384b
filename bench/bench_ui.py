"""UI latency and payload: the real Gradio server (one model worker) measured from a client.

    python bench/bench_ui.py [--repeats 5] [--positions 1024] [--steps 1024] [--no-browser]

(a) first step visible: submit /decode (embedded model, gen length 64, 64 steps, no slow
    motion) with gradio_client and time until the first streamed output whose status says
    'Decoding' (it carries the token view with the first committed token). Target <= 1 s
    (median). With Chromium at /usr/bin/chromium, also in a real browser: a fresh page, the
    Run button clicked, until #tokens shows a committed token (timed inside the page).
(b) payload of opening a synthetic positions x steps run (default 1024 x 1024, one commit per
    step, written with bench/bench_store.py's helpers): the bytes of the /open_run result
    stream as the server sends it, and the three figures' JSON (plots.figure_payload_bytes)
    plus the token HTML as the app renders them. Target <= 3 MB.
(c) time to open such a stored run via /open_run, request to complete result: the median over
    `repeats` distinct copies of the run (each one read from the store, not the app's cache),
    and over reopening one of them (cached arrays). Target <= 2 s.

Nothing is asserted; ratios to the targets are printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import argparse
import json
import os
import socket
import statistics
import tempfile
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FIRST_STEP_TARGET_S = 1.0
PAYLOAD_TARGET_BYTES = 3_000_000
OPEN_TARGET_S = 2.0
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DECODE = ["once upon a time", "embedded", 64, 64, 0, "low_confidence", 0.9, 0.0, 0, "confidence", 0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(db_url: str):
    import app
    from explorer.services import Services
    from explorer.ui.app import build_app

    services = Services.create(db_url, threads=1)
    demo = build_app(services)
    demo.queue(default_concurrency_limit=None)
    _, url, _ = demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **app.launch_kwargs()
    )
    return services, demo, url


# ---- (a) first step visible ----------------------------------------------------------------------


def first_step_client(url: str, repeats: int) -> list[float]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    client.predict(*DECODE, api_name="/decode")  # warm-up: the worker's first run, gradio_client's first call
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        job = client.submit(*DECODE, api_name="/decode")
        first = None
        for outputs in job:
            if first is None and "Decoding" in str(outputs[0]):
                first = time.perf_counter() - began
        job.result(timeout=120)
        times.append(first if first is not None else float("nan"))
    return times


FIRST_TOKEN_JS = """() => new Promise((resolve) => {
  const committed = () => document.querySelectorAll('#tokens .tokens-line .tok:not(.masked)').length;
  const began = performance.now();
  const observer = new MutationObserver(() => {
    if (committed() > 0) { observer.disconnect(); resolve((performance.now() - began) / 1000); }
  });
  observer.observe(document.querySelector('#tokens'), {childList: true, subtree: true, characterData: true});
  document.querySelector('#run-btn').click();
})"""


def first_step_browser(url: str, repeats: int) -> list[float] | None:
    if not Path(CHROMIUM).exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            for _ in range(repeats):  # a fresh page each time: no tokens from an earlier run on screen
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url)
                page.wait_for_selector("#run-btn")
                page.fill("#gen-length input", "64")
                page.fill("#steps input", "64")
                page.locator("#steps input").blur()
                times.append(page.evaluate(FIRST_TOKEN_JS))
                page.wait_for_function(
                    "document.querySelector('#status').innerText.includes('completed')", timeout=120_000
                )
                page.close()
        finally:
            browser.close()
    return times


# ---- (b), (c) opening a large stored run ----------------------------------------------------------


def call_endpoint(url: str, api_name: str, data: list) -> tuple[float, int, list]:
    """POST /gradio_api/call/<api_name>, read its event stream to the end: (seconds, bytes, data)."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as http:
        began = time.perf_counter()
        event_id = http.post(f"/gradio_api/call/{api_name}", json={"data": data}).raise_for_status().json()["event_id"]
        body = b""
        with http.stream("GET", f"/gradio_api/call/{api_name}/{event_id}") as response:
            for chunk in response.iter_bytes():
                body += chunk
        seconds = time.perf_counter() - began
    text = body.decode("utf-8")
    if "event: complete" not in text:
        raise RuntimeError(f"/{api_name} did not complete: {text[:300]}")
    payload = text.split("event: complete", 1)[1].split("data:", 1)[1].strip().split("\n", 1)[0]
    return seconds, len(body), json.loads(payload)


def rendered_sizes(services, run_id: int) -> dict[str, int]:
    """Bytes of what the Decode tab shows for the run (as the app renders it, before transport)."""
    from explorer.ui.view import render_view
    from explorer.views import figures as plots

    arrays = services.store.read_arrays(run_id)
    text = f"{arrays.run['prompt']} {arrays.run['final_text'] or ''}"
    shown = render_view(services, arrays, None, "confidence", text)
    return {
        "heatmap": plots.figure_payload_bytes(shown["heat"]),
        "commit order": plots.figure_payload_bytes(shown["order"]),
        "tokens per step": plots.figure_payload_bytes(shown["bars"]),
        "token HTML": len(shown["tokens"].encode("utf-8")),
    }


def ratio(value: float, target: float) -> str:
    return f"{value / target:6.2f}x{'' if value <= target else '  MISSED'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--no-browser", action="store_true", help="skip the in-browser measurement of (a)")
    args = parser.parse_args(argv)

    from bench_store import synthetic_records, write_run

    cpus = os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"cpus {cpus}, load average before the run {load}; one model worker (1 torch thread), {args.repeats} repeats")
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        db = Path(tmp) / "ui.db"
        began = time.perf_counter()
        records = synthetic_records(args.positions, args.steps)
        big_ids = [write_run(db, records, args.positions, 16)[2] for _ in range(args.repeats)]
        print(
            f"synthetic runs: {args.repeats} copies of {args.positions} positions x {args.steps} steps written "
            f"in {time.perf_counter() - began:.1f} s (not timed)"
        )
        services, demo, url = start_app(f"sqlite:///{db}")
        try:
            client_times = first_step_client(url, args.repeats)
            browser_times = None if args.no_browser else first_step_browser(url, args.repeats)

            open_cold = [call_endpoint(url, "open_run", [rid, "confidence"]) for rid in big_ids]
            open_warm = [call_endpoint(url, "open_run", [big_ids[0], "confidence"]) for _ in range(args.repeats)]
            sizes = rendered_sizes(services, big_ids[0])
            outputs = open_cold[0][2]
            assert f"run {big_ids[0]}" in str(outputs[0]), outputs[0]  # it opened the right run
        finally:
            demo.close()
            services.close()

    print("\n(a) first step visible after Run (gen length 64, 64 steps, embedded model)")
    print("    gradio_client, submit -> first 'Decoding' output: " + " ".join(f"{t:.3f}" for t in client_times) + " s")
    if browser_times is not None:
        print(
            "    browser, click -> first committed token in #tokens (fresh page each): "
            + " ".join(f"{t:.3f}" for t in browser_times)
            + " s"
        )
    else:
        print("    browser: skipped (no Chromium or playwright, or --no-browser)")

    print(f"\n(b) payload of opening a {args.positions} x {args.steps} run")
    for name, size in sizes.items():
        print(f"    {name:16} {size / 1e6:7.3f} MB")
    rendered = sum(sizes.values())
    print(f"    {'sum (rendered)':16} {rendered / 1e6:7.3f} MB")
    wire = statistics.median(b for _, b, _ in open_cold)
    print(f"    {'/open_run stream':16} {wire / 1e6:7.3f} MB  (bytes of the result's event stream, as sent)")

    print(f"\n(c) /open_run on a {args.positions} x {args.steps} run, request -> complete result")
    print("    distinct runs (read from the store): " + " ".join(f"{s:.3f}" for s, _, _ in open_cold) + " s")
    print("    one run reopened (cached arrays):    " + " ".join(f"{s:.3f}" for s, _, _ in open_warm) + " s")

    rows = [("(a) first step, gradio_client", statistics.median(client_times), FIRST_STEP_TARGET_S, "s")]
    if browser_times is not None:
        rows.append(("(a) first token, browser", statistics.median(browser_times), FIRST_STEP_TARGET_S, "s"))
    rows += [
        ("(b) payload, /open_run stream", wire / 1e6, PAYLOAD_TARGET_BYTES / 1e6, "MB"),
        ("(b) payload, rendered sum", rendered / 1e6, PAYLOAD_TARGET_BYTES / 1e6, "MB"),
        ("(c) open run, from store", statistics.median(s for s, _, _ in open_cold), OPEN_TARGET_S, "s"),
        ("(c) open run, cached", statistics.median(s for s, _, _ in open_warm), OPEN_TARGET_S, "s"),
    ]
    print(f"\n{'':32} {'median':>8} {'target':>8}  unit   ratio")
    for name, value, target, unit in rows:
        print(f"{name:32} {value:8.3f} {target:8.2f}  {unit:5} {ratio(value, target)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
