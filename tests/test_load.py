"""Many sessions at once against one server with the default single model worker.

8 gradio_client sessions (each its own Client, in its own thread) run 3 sampled decodes each.
Every run must complete and be stored whole, with no SQLite lock errors anywhere: jobs wait
in the worker's line while the UI process reads finished runs back from the same file.
Timings are printed for information only.
"""

from __future__ import annotations

import logging
import re
import statistics
import threading
import time

import pytest
from app_server import decode_args, running_app
from gradio_client import Client
from sqlalchemy import func, select

from explorer.store.database import Step

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")  # pandas deprecations inside gradio

SESSIONS, RUNS_EACH = 8, 3
RUN_LINE = re.compile(r"run (\d+) · (\w+)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("load")) as (services, url):
        yield services, url


def test_concurrent_sessions_all_complete(server, capfd, caplog):
    services, url = server
    caplog.set_level(logging.WARNING)
    assert len(services.pool.worker_pids()) == 1
    results: dict[int, list] = {}  # session -> [(seed, streamed statuses, final status, latency)]
    errors: list[BaseException] = []
    start = threading.Barrier(SESSIONS)

    def session(index: int) -> None:
        try:
            client = Client(url, verbose=False)
            start.wait(60)
            mine = results.setdefault(index, [])
            for k in range(RUNS_EACH):
                seed = 1000 + index * RUNS_EACH + k
                began = time.monotonic()
                job = client.submit(
                    *decode_args(gen_length=32, steps=8, temperature=1.0, seed=seed), api_name="/decode"
                )
                final = job.result(timeout=120)
                mine.append((seed, [out[0] for out in job.outputs()], final[0], time.monotonic() - began))
        except BaseException as exc:
            errors.append(exc)

    began = time.monotonic()
    threads = [threading.Thread(target=session, args=(i,), name=f"session-{i}") for i in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    wall = time.monotonic() - began
    assert not any(t.is_alive() for t in threads), "a session did not finish within 300 s"
    assert not errors, errors

    runs = [r for per_session in results.values() for r in per_session]
    assert len(runs) == SESSIONS * RUNS_EACH
    run_ids = {}
    for seed, _streamed, final, _latency in runs:
        match = RUN_LINE.search(final)
        assert match and match.group(2) == "completed", final
        run_ids[int(match.group(1))] = seed
    assert len(run_ids) == SESSIONS * RUNS_EACH  # 24 distinct runs

    stored = {r["id"]: r for r in services.store.list_runs(limit=1000)}
    assert set(stored) == set(run_ids)
    with services.store.session() as s:
        step_rows = dict(s.execute(select(Step.run_id, func.count()).group_by(Step.run_id)).all())
    for run_id, seed in run_ids.items():
        run = stored[run_id]
        assert (run["status"], run["n_steps"], run["seed"]) == ("completed", 8, seed), run
        assert step_rows.get(run_id) == 8, (run_id, step_rows.get(run_id))
    assert services.pool.deaths == 0

    captured = capfd.readouterr()
    texts = [captured.out, captured.err, caplog.text] + [s for r in runs for s in (*r[1], r[2])]
    assert not [t for t in texts if "database is locked" in t.lower()]

    latencies = [r[3] for r in runs]
    with capfd.disabled():
        print(
            f"\nload: {SESSIONS} sessions x {RUNS_EACH} runs (gen_length 32, steps 8, T=1) on 1 worker: "
            f"wall {wall:.1f} s, per-run latency mean {statistics.mean(latencies):.2f} s "
            f"(min {min(latencies):.2f}, max {max(latencies):.2f})"
        )
