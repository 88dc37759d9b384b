"""Sweeps (explorer/sweeps/, explorer/store/sweeps.py): the spec, the store's (cell, seed) claims, and whole
sweeps in-process and on a local Ray cluster, on SQLite and on PostgreSQL.

- The spec: axes expand to their product, tokens_per_step sets steps, a bad key or value is one line naming
  it, and nothing is stored for a bad spec.
- Claims: a (cell, seed) is written once; a dead attempt's partial run is deleted when the seed is taken
  over; an attempt that was taken over can never mark the seed done.
- Same results anywhere: the same (cell, seed) gives the same token ids in-process and on Ray.
- A Ray task whose worker is killed mid-block is retried: no duplicate rows, no orphan runs.
- A driver killed mid-sweep (in-process, and on Ray) leaves a sweep that `--resume` finishes with the
  same tokens as an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import new_db_url
from sqlalchemy import func, select

from explorer.store import sweeps as table
from explorer.store.database import Run, TrajectoryStore
from explorer.sweeps.execute import run_sweep
from explorer.sweeps.spec import SpecError, load_spec, parse_spec
from explorer.sweeps.summary import summarise

ROOT = Path(__file__).resolve().parents[1]

SPEC = {
    "name": "tiny",
    "gen_length": 16,
    "seeds": 6,
    "temperatures": [0.0, 1.0],
    "greedy_prompts": "stories",
    "metrics": ["checker", "ar_nll"],
    "seeds_per_task": 3,
    "cells": [
        {"strategy": "low_confidence", "tokens_per_step": [1, 4]},
        {"strategy": "pairwise_gate", "lookahead_k": 4, "gate_tau": 1.0},
    ],
}
SPEC_TOML = """
name = "tiny"
gen_length = 16
seeds = 6
temperatures = [0.0, 1.0]
greedy_prompts = "stories"
metrics = ["checker", "ar_nll"]
seeds_per_task = 3

[[cells]]
strategy = "low_confidence"
tokens_per_step = [1, 4]

[[cells]]
strategy = "pairwise_gate"
lookahead_k = 4
gate_tau = 1.0
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def tokens_by_cell_seed(store: TrajectoryStore, sweep_id: int) -> dict[tuple[str, int], list[int]]:
    """(cell key, seed) -> the run's final token ids, for every done row."""
    keys = {c["id"]: c["key"] for c in table.sweep_cells(store, sweep_id)}
    rows = table.sweep_rows(store, sweep_id)
    assert all(r["status"] == "done" for r in rows), [r for r in rows if r["status"] != "done"]
    return {(keys[r["cell_id"]], r["seed"]): r["final_token_ids"] for r in rows}


def run_count(store: TrajectoryStore) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(Run))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[tuple[str, int], list[int]]:
    """The tiny sweep run in-process on SQLite: what every other way of running it must give."""
    store = TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('ref')}/ref.db")
    progress = run_sweep(store, parse_spec(SPEC), progress_bar=False)
    assert progress.counts == {"done": 36, "skipped": 0, "failed": 0}
    return tokens_by_cell_seed(store, progress.sweep_id)


# ---- the spec ------------------------------------------------------------------------------------------


def test_the_spec_expands_axes_per_model_and_temperature():
    spec = parse_spec(SPEC)
    assert len(spec.cells) == 6  # (2 + 1 cells) x 2 temperatures
    assert spec.seed_list == tuple(range(6))
    steps = [(c.temperature, c.config["strategy"], c.config["steps"]) for c in spec.cells]
    assert steps[:3] == [(0.0, "low_confidence", 16), (0.0, "low_confidence", 4), (0.0, "pairwise_gate", 16)]
    assert [c.story_prompts for c in spec.cells] == [True] * 3 + [False] * 3  # stories only where greedy
    assert spec.cells[1].label == "low_confidence (tokens_per_step = 4)" and spec.cells[1].setting == 4
    assert len({c.key for c in spec.cells}) == 6
    assert parse_spec(SPEC).cells[0].key == spec.cells[0].key  # stable


def test_a_toml_spec_reads_as_the_dict(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SPEC_TOML)
    assert load_spec(path) == parse_spec(SPEC)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cells": [{"strategy": "nope"}]}, "cells[0]"),
        ({"cells": [{"strategy": "threshold", "threshold": 2.0}]}, "threshold"),
        ({"cells": [{"strategy": "low_confidence", "tokens_per_step": 3}]}, "tokens_per_step: 3 must divide"),
        ({"cells": [{"strategy": "low_confidence", "seed": 1}]}, "seeds are set at the top"),
        ({"cells": [{"strategy": "low_confidence", "colour": "red"}]}, "cells[0].colour: not a decode setting"),
        ({"cells": [{"strategy": "low_confidence", "energy": "magic"}]}, "unknown term 'magic'"),
        ({"metrics": ["bleu"]}, "unknown metric 'bleu'"),
        ({"seeds": 0}, "seeds"),
        ({"cells": [{"strategy": "low_confidence"}, {"strategy": "low_confidence"}]}, "appears twice"),
        ({"models": ["llada"], "greedy_prompts": "prompt"}, None),  # valid here; the checker is refused at run
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_key(change, message):
    data = {**SPEC, **change}
    if message is None:
        parse_spec(data)
        return
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_metric_the_model_cannot_have_stores_nothing(tmp_path):
    store = TrajectoryStore(f"sqlite:///{tmp_path}/s.db")
    spec = parse_spec({**SPEC, "models": ["llada"], "greedy_prompts": "prompt"})
    with pytest.raises(SpecError, match="metric 'checker' applies to embedded"):
        run_sweep(store, spec, progress_bar=False)
    assert table.list_sweeps(store) == [] and run_count(store) == 0


def test_the_cli_refuses_a_bad_spec_with_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(SPEC_TOML.replace("gate_tau = 1.0", "gate_tau = -1.0"))
    db = tmp_path / "s.db"
    out = subprocess.run(
        [sys.executable, "-m", "explorer", "sweep", str(path), "--db", f"sqlite:///{db}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith("error: sweep spec: cells[1]") and out.stderr.count("\n") == 1
    assert not db.exists()


# ---- claims --------------------------------------------------------------------------------------------


def test_a_seed_is_claimed_once_and_a_dead_attempt_is_taken_over(db_url, denoiser):
    from explorer.api import decode

    store = TrajectoryStore(db_url)
    sweep_id = table.create_sweep(store, "c", {"seed_list": [0]}, [("k", "cell", {})])
    cell_id = table.sweep_cells(store, sweep_id)[0]["id"]
    first = table.claim(store, sweep_id, cell_id, 0, "a:1")
    partial = decode("once upon a time", denoiser, store=store, gen_length=8, steps=2).run_id
    with store.session() as s, s.begin():
        table.attach(s, cell_id, 0, first, partial)
    # The first attempt dies; a retry takes the seed over and deletes the partial run.
    second = table.claim(store, sweep_id, cell_id, 0, "b:2")
    assert second not in (None, first) and store.get_run(partial) is None
    with pytest.raises(table.TakenOver), store.session() as s, s.begin():
        table.attach(s, cell_id, 0, first, partial)  # the dead attempt cannot link a run any more
    late = decode("once upon a time", denoiser, store=store, gen_length=8, steps=2).run_id
    assert not table.complete(store, cell_id, 0, first, late, {"x": 1})  # the dead attempt cannot finish it
    assert store.get_run(late) is None  # ... and its run is not left behind
    run = decode("once upon a time", denoiser, store=store, gen_length=8, steps=2).run_id
    assert table.complete(store, cell_id, 0, second, run, {"x": 2})
    assert table.claim(store, sweep_id, cell_id, 0, "c:3") is None  # done: never run again
    [row] = table.sweep_rows(store, sweep_id)
    assert (row["status"], row["attempts"], row["run_id"], row["metrics"]) == ("done", 2, run, {"x": 2})
    store.engine.dispose()


# ---- whole sweeps in-process ---------------------------------------------------------------------------


def test_an_in_process_sweep_is_stored_and_summarised(tmp_path, reference):
    store = TrajectoryStore(f"sqlite:///{tmp_path}/s.db")
    spec = parse_spec({**SPEC, "seeds": 2})
    progress = run_sweep(store, spec, progress_bar=False)
    assert progress.counts["done"] == 12 and run_count(store) == 12
    got = tokens_by_cell_seed(store, progress.sweep_id)
    assert got == {k: v for k, v in reference.items() if k[1] < 2}
    summary = summarise(store, progress.sweep_id)
    assert summary.complete and [c["runs"] for c in summary.cells] == [2] * 6
    one_per_step = summary.cells[0]
    assert one_per_step["tokens_per_step"] == 1.0 and one_per_step["cost_per_token"]["calls"]["mean"] == 1.0
    assert one_per_step["valid_rate"] == 1.0 and 0 < one_per_step["valid_ci"][0] < 1
    assert summary.cells[1]["cost_per_token"]["calls"]["mean"] == 0.25  # 4 tokens per step
    # A second run of the same spec is refused; --resume has nothing left to do.
    with pytest.raises(table.SweepExists, match="--resume"):
        run_sweep(store, spec, progress_bar=False)
    again = run_sweep(store, spec, resume=True, progress_bar=False)
    assert again.counts == {"done": 0, "skipped": 0, "failed": 0} and run_count(store) == 12


def test_the_cli_lists_reports_and_deletes_a_sweep(tmp_path):
    store = TrajectoryStore(f"sqlite:///{tmp_path}/s.db")
    spec = parse_spec({**SPEC, "seeds": 1, "cells": SPEC["cells"][:1]})
    first = run_sweep(store, spec, progress_bar=False).sweep_id
    second = run_sweep(store, parse_spec({**SPEC, "seeds": 1, "cells": SPEC["cells"][:1], "name": "other"}),
                       progress_bar=False).sweep_id  # fmt: skip
    assert run_count(store) == 8

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "explorer", *args, "--db", store.url]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)

    listing = cli("sweeps").stdout
    assert "4/4" in listing and " tiny" in listing and " other" in listing
    report = cli("sweep-report", str(first), "--out", str(tmp_path / "report"))
    assert report.returncode == 0 and "| embedded | low_confidence (tokens_per_step = 4) | 1 |" in report.stdout
    assert {p.suffix for p in (tmp_path / "report").iterdir()} == {".md", ".json", ".html"}
    assert cli("sweep-delete", str(first), "--keep-runs").stdout.strip().endswith("its 4 stored runs kept")
    assert run_count(store) == 8 and table.get_sweep(store, first) is None
    assert cli("sweep-delete", str(second)).stdout.strip().endswith("its 4 stored runs deleted")
    assert run_count(store) == 4 and table.list_sweeps(store) == []
    missing = cli("sweep-report", str(second))
    assert missing.returncode == 2 and missing.stderr.startswith(f"error: no sweep {second}")


def _wait_for_done(store: TrajectoryStore, n: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        done = sum(1 for rows in table.done_seeds(store, 1).values() for _ in rows) if table.list_sweeps(store) else 0
        if done >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} runs done in {timeout} s")


def _kill_driver_then_resume(tmp_path, db_url: str, reference, ray_args: list[str]) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC_TOML)
    command = [sys.executable, "-m", "explorer", "sweep", str(spec), "--db", db_url, "--no-progress", *ray_args]
    store = TrajectoryStore(db_url)
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_done(store, 8, driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done_before = sum(len(seeds) for seeds in table.done_seeds(store, 1).values())
    assert 8 <= done_before < 36, "the driver was killed mid-sweep"
    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout
    assert tokens_by_cell_seed(store, 1) == reference
    assert run_count(store) == 36  # the killed attempts' partial runs are gone
    store.engine.dispose()


def test_a_killed_driver_leaves_a_sweep_that_resume_finishes(tmp_path, reference):
    _kill_driver_then_resume(tmp_path, f"sqlite:///{tmp_path}/s.db", reference, [])


def test_an_unreachable_cluster_is_one_line_and_stores_nothing(tmp_path):
    pytest.importorskip("ray")
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC_TOML)
    db = tmp_path / "s.db"
    out = subprocess.run(
        [sys.executable, "-m", "explorer", "sweep", str(spec), "--db", f"sqlite:///{db}", "--ray", "127.0.0.1:9"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr.startswith("error: cannot connect to the Ray cluster at '127.0.0.1:9'")
    assert out.stderr.count("\n") == 1 and "--resume" not in out.stderr
    assert table.list_sweeps(TrajectoryStore(f"sqlite:///{db}")) == []


def test_a_sqlite_store_is_refused_for_a_cluster_of_several_nodes():
    from explorer.sweeps.on_ray import shared_store_error

    assert shared_store_error("sqlite:///runs.db", 1) is None  # one machine: every worker opens the file
    assert "cannot be shared by the 3 nodes" in shared_store_error("sqlite:///runs.db", 3)
    assert shared_store_error("postgresql+psycopg://u@h/db", 3) is None


# ---- on a local Ray cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance for this module (2 CPUs, no dashboard); its address for other drivers."""
    try:
        import ray
    except ImportError:
        if _in_ci():
            pytest.fail("Ray is required in CI (requirements-scale.txt)", pytrace=False)
        pytest.skip("Ray is not installed (pip install -r requirements-scale.txt)")
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_a_ray_sweep_gives_the_in_process_tokens(request, tmp_path, backend, ray_cluster, reference):
    store = TrajectoryStore(new_db_url(request, backend, tmp_path))
    progress = run_sweep(store, parse_spec(SPEC), ray_address="auto", progress_bar=False)
    assert progress.counts == {"done": 36, "skipped": 0, "failed": 0}
    assert progress.tasks == 12 and len(progress.workers) >= 1
    assert tokens_by_cell_seed(store, progress.sweep_id) == reference
    assert run_count(store) == 36
    store.engine.dispose()


@pytest.mark.postgresql
def test_a_ray_task_killed_mid_block_is_retried_without_duplicates(request, tmp_path, ray_cluster, reference):
    store = TrajectoryStore(new_db_url(request, "postgresql", tmp_path))
    killed: list[str] = []
    seen: list = []

    def kill_first_worker(done) -> None:
        seen.append(done)
        if not killed:  # the task that reported first is mid-block: kill its process
            killed.append(done.worker)
            os.kill(int(done.worker.rsplit(":", 1)[1]), signal.SIGKILL)

    progress = run_sweep(store, parse_spec(SPEC), ray_address="auto", on_seed=kill_first_worker, progress_bar=False)
    retried = [d for d in seen if d.status == "skipped" and d.worker != killed[0]]
    assert retried, "the killed task's retry skips the seed its first attempt finished"
    assert progress.counts["done"] == 36 and progress.counts["failed"] == 0  # each seed finished exactly once
    rows = table.sweep_rows(store, progress.sweep_id)
    assert len(rows) == 36 and len({(r["cell_id"], r["seed"]) for r in rows}) == 36
    assert tokens_by_cell_seed(store, progress.sweep_id) == reference
    assert run_count(store) == 36  # a partial run of the killed attempt was deleted when its seed was taken over
    store.engine.dispose()


@pytest.mark.postgresql
def test_a_killed_ray_driver_leaves_a_sweep_that_resume_finishes(request, tmp_path, ray_cluster, reference):
    _kill_driver_then_resume(tmp_path, new_db_url(request, "postgresql", tmp_path), reference, ["--ray", ray_cluster])


def test_the_example_frontier_spec_is_the_bench_frontier():
    """examples/sweeps/frontier.toml decodes exactly the 48 configurations of bench/sweep.py's frontier."""
    sys.path.insert(0, str(ROOT / "bench"))
    import sweep as bench_sweep

    from explorer.decoding.config import DecodeConfig

    def normal(config: dict) -> str:
        return DecodeConfig.from_dict({**config, "seed": 0}).to_json()

    bench = {
        normal({"gen_length": bench_sweep.GEN, "strategy": c["strategy"], "temperature": c["temperature"],
                "energies": bench_sweep.ENERGIES[c["energy"]], "violations": False, **c["config"]})
        for c in bench_sweep.grid("frontier")
    }  # fmt: skip
    spec = load_spec(ROOT / "examples" / "sweeps" / "frontier.toml")
    assert {normal(c.config) for c in spec.cells} == bench and len(spec.cells) == 48
    assert all(c.story_prompts == (c.temperature == 0) for c in spec.cells)
    assert load_spec(ROOT / "examples" / "sweeps" / "small.toml").cells  # the docs' example reads too


# ---- the violation-score AUC, from the store -----------------------------------------------------------

AUC_SPEC = {
    "name": "auc",
    "gen_length": 32,
    "seeds": 12,
    "temperatures": [1.0],
    "metrics": ["checker", "violation_auc"],
    "seeds_per_task": 12,
    "cells": [{"strategy": "low_confidence", "tokens_per_step": [4, 8], "violations": True}],
}


def test_the_violation_auc_is_computed_per_cell_from_the_stored_events(tmp_path):
    from explorer.store.database import Event
    from explorer.sweeps.report import markdown

    store = TrajectoryStore(f"sqlite:///{tmp_path}/s.db")
    progress = run_sweep(store, parse_spec(AUC_SPEC), progress_bar=False)
    assert progress.counts["done"] == 24
    summary = summarise(store, progress.sweep_id)
    for cell in summary.cells:
        auc = cell["violation_auc"]
        assert auc["runs"] == 12 and auc["reason"] is None and auc["positives"] >= 20 and auc["negatives"] > 0
        for key, ci in (("auc", "auc_ci"), ("baseline_auc", "baseline_ci")):
            assert 0 <= auc[ci][0] <= auc[key] <= auc[ci][1] <= 1 and auc[ci][0] < auc[ci][1]
    # The same number by brute force from the cell's events: every (positive, negative) pair, ties 1/2.
    cell = summary.cells[1]
    rows = [r for r in table.sweep_rows(store, progress.sweep_id) if r["cell_id"] == cell["cell_id"]]
    named = {r["run_id"]: set(r["metrics"]["named"]) for r in rows}
    assert all(0 <= p < 32 for positions in named.values() for p in positions)  # the generated part, 0-based
    with store.session() as s:
        events = s.execute(
            select(Event.run_id, Event.position, Event.violation_score, Event.prob).where(
                Event.run_id.in_(list(named)), Event.kind == "commit"
            )
        ).all()
    for run_id in named:  # each run commits its 32 generated positions once, numbered from 0
        assert sorted(e.position for e in events if e.run_id == run_id) == list(range(32))
    scored = [e for e in events if e.violation_score is not None]
    assert len(events) == 12 * 32 and len(scored) == cell["violation_auc"]["tokens"]

    def brute(score) -> float:
        pos = [score(e) for e in scored if e.position in named[e.run_id]]
        neg = [score(e) for e in scored if e.position not in named[e.run_id]]
        return sum(float(p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))

    assert cell["violation_auc"]["auc"] == pytest.approx(brute(lambda e: -e.violation_score))
    assert cell["violation_auc"]["baseline_auc"] == pytest.approx(brute(lambda e: 1 - e.prob))
    assert cell["violation_auc"]["positives"] == sum(e.position in named[e.run_id] for e in scored)
    text = markdown(summary)
    assert "| violation AUC | 1 - p AUC |" in text
    assert f"({cell['violation_auc']['positives']} of {cell['violation_auc']['tokens']}) |" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics": ["violation_auc"]}, "metric 'violation_auc' labels tokens with the 'checker' metric"),
        (
            {"cells": [{"strategy": "low_confidence", "tokens_per_step": [4, 8], "violations": [True, False]}]},
            "the cell 'low_confidence (tokens_per_step = 4, violations = False)' (embedded, T = 1) sets violations",
        ),
    ],
)
def test_a_violation_auc_without_the_checker_or_the_violation_pass_is_refused(change, message):
    with pytest.raises(SpecError) as err:
        parse_spec({**AUC_SPEC, **change})
    assert message in str(err.value) and "\n" not in str(err.value)
