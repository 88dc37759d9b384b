"""The project's own fault battery against a server it starts on loopback.

    python bench/bench_faults.py [--bundles 300] [--clients 16] [--runs-each 3]

Families of faults, each tried many times; for each the table says how many were tried, how many
were refused cleanly (a one-line message, nothing written), how many the server survived (it
answered a plain decode afterwards), and how many left rows half-written (a run whose stored
steps disagree with its status or its n_steps, or a run left `running` with no live job): that
column must be 0.

- hostile bundles: real exports mutated (seeded): numbers made huge, negative, fractional, NaN or
  text; keys deleted; lists truncated or reordered; token ids moved; imported through the Runs
  tab's /import_run endpoint (a file upload) as a person would;
- oversize inputs: /decode with a 1 MB prompt, lengths and steps past the caps, a job over the
  forward-pass budget, a fraction of a step;
- hostile text: prompts and bundle token texts carrying HTML/JS, decoded or imported, then the
  page's view rendered: no unescaped tag may appear;
- worker kills: SIGKILL the model worker mid-run;
- crash and restart: a run left `running` by a process that died (no heartbeat), then the store
  reopened as a restarted app would: the run must end `interrupted` (when the store has the
  recovery; otherwise the row counts as half-written);
- load: `clients` sessions decoding `runs-each` runs at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import argparse
import copy
import json
import os
import random
import re
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

EVIL = '<img src=x onerror="window.__xss=1">'
TAG = re.compile(r"<(img|script|iframe|svg|b)\b", re.I)


@dataclass
class Row:
    family: str
    tried: int = 0
    refused: int = 0
    survived: int = 0
    half_written: int = 0


def half_written(store) -> int:
    """Runs whose stored state disagrees with itself: steps missing or extra for n_steps, or a run
    `running` with no job on this server (every test job has ended when this is read)."""
    bad = 0
    for run in store.list_runs(limit=100_000):
        steps = len(store.step_summaries(run["id"]))
        if run["status"] == "running" or steps != run["n_steps"]:
            bad += 1
    return bad


def decodes(client) -> bool:
    from app_server import decode_args

    try:
        status = client.predict(*decode_args(gen_length=8, steps=4), api_name="/decode")[0]
    except Exception:
        return False
    return "completed" in str(status)


def mutate(bundle: dict, rng: random.Random) -> dict:
    """One seeded change somewhere in the bundle's tree."""
    out = copy.deepcopy(bundle)
    paths: list[tuple[object, object]] = []

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            paths.append((node, key))
            walk(value)

    walk(out)
    parent, key = rng.choice(paths)
    value = parent[key]
    choice = rng.randrange(7)
    if choice == 0:
        parent[key] = rng.choice([10**12, -1, 2**63, 0.5, float("nan"), "x", None, True, [], {}])
    elif choice == 1 and isinstance(parent, dict):
        del parent[key]
    elif choice == 2 and isinstance(value, list) and value:
        parent[key] = value[: rng.randrange(len(value))]
    elif choice == 3 and isinstance(value, list) and len(value) > 1:
        parent[key] = list(reversed(value))
    elif choice == 4 and isinstance(value, int) and not isinstance(value, bool):
        parent[key] = value + rng.choice([-1, 1, 1000, -1000])
    elif choice == 5 and isinstance(value, str):
        parent[key] = EVIL
    else:
        parent[key] = "1000000" if isinstance(value, int | float) else 10**9
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--runs-each", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from app_server import decode_args, running_app
    from gradio_client import Client, handle_file

    from explorer.store.bundle import export_run

    rows: list[Row] = []
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp, running_app(Path(tmp)) as (services, url):
        client = Client(url, verbose=False)
        store = services.store

        # ---- hostile bundles ------------------------------------------------------------------
        row = Row("hostile bundles (mutated exports, uploaded)")
        bases = []
        for strategy, violations in (("low_confidence", True), ("margin", False)):
            status = client.predict(
                *decode_args(gen_length=8, steps=4, strategy=strategy, violations=violations), api_name="/decode"
            )
            run_id = int(re.search(r"run (\d+)", str(status[0])).group(1))
            bases.append(json.loads(json.dumps(export_run(store, run_id), default=str)))
        before = store.count_runs()
        accepted = unopened = 0
        for i in range(args.bundles):
            bundle = mutate(rng.choice(bases), rng)
            path = Path(tmp) / f"bundle-{i}.json"
            path.write_text(json.dumps(bundle, allow_nan=True, default=str))
            row.tried += 1
            filters = ("any", "any", "any", "", "", "any", "")
            try:
                _, _, new_id = client.predict(handle_file(str(path)), *filters, api_name="/import_run")
            except Exception as exc:
                text = str(exc)
                row.refused += "\n" not in text.strip() and len(text) <= 400 and not TAG.search(text)
            else:
                try:  # an accepted bundle must open
                    client.predict(new_id, "confidence", api_name="/open_run")
                    accepted += 1
                    row.refused += 1
                except Exception:
                    unopened += 1
            finally:
                path.unlink(missing_ok=True)
        row.survived = int(decodes(client))
        row.half_written = half_written(store)
        rows.append(row)
        print(
            f"{row.family}: {row.tried - accepted - unopened} refused, {accepted} accepted and opened, "
            f"{unopened} accepted but would not open; {store.count_runs() - before} runs added",
            file=sys.stderr,
        )

        # ---- oversize inputs ------------------------------------------------------------------
        row = Row("oversize and malformed decode requests")
        cases = [
            {"prompt": "zzq " * 250_000},
            {"gen_length": 10**6},
            {"steps": 10**6},
            {"steps": 3.5},
            {"gen_length": -5},
            {"seed": 2**70},
            {"energy_terms": ["uni"], "energy_candidates": 16, "energy_orders": 8, "gen_length": 64, "steps": 2},
            {"temperature": float("nan")},
            {"prompt": ""},
            {"model": EVIL},
        ]
        for case in cases:
            row.tried += 1
            try:
                client.predict(*decode_args(**case), api_name="/decode")
            except Exception as exc:
                text = str(exc)
                if "\n" not in text.strip() and len(text) <= 400 and not TAG.search(text):
                    row.refused += 1
        row.survived = int(decodes(client))
        row.half_written = half_written(store)
        rows.append(row)

        # ---- hostile text ---------------------------------------------------------------------
        row = Row("hostile text through the renderer")
        from explorer.ui.view import render_all

        for run in store.list_runs(limit=10_000):
            arrays = store.read_arrays(run["id"])
            for step in sorted({0, max(arrays.n_steps - 1, 0)}):
                row.tried += 1
                shown = render_all(services, arrays, step, "confidence", EVIL)
                markup = " ".join(v for v in shown.values() if isinstance(v, str))
                if not TAG.search(markup.replace("&lt;", "")):
                    row.refused += 1  # here: rendered with every tag escaped
        row.survived = int(decodes(client))
        row.half_written = half_written(store)
        rows.append(row)

        # ---- worker kills ---------------------------------------------------------------------
        row = Row("worker killed mid-run (SIGKILL)")
        for _ in range(3):
            row.tried += 1
            job = client.submit(*decode_args(gen_length=32, steps=32, pace_ms=100), api_name="/decode")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(r["status"] == "running" for r in store.list_runs()):
                time.sleep(0.05)
            time.sleep(0.5)
            for pid in services.pool.worker_pids():
                os.kill(pid, signal.SIGKILL)
            try:
                job.result(timeout=60)
            except Exception:
                pass
            row.survived += int(decodes(client))
        row.refused = row.tried  # each ended with the run failed and its steps kept (checked below)
        row.half_written = half_written(store)
        rows.append(row)

        # ---- crash and restart ----------------------------------------------------------------
        row = Row("crash: a run left running, store reopened")
        recover = getattr(store, "recover_interrupted", None)
        for _ in range(3):
            row.tried += 1
            with store.session() as s, s.begin():
                from explorer.store.database import Run

                last = s.query(Run).order_by(Run.id.desc()).first()
                last.status = "running"  # as a dead process would leave it
                if hasattr(last, "owner_pid"):
                    last.owner_pid = 2**22 + 12345  # no such process
            if recover is not None:
                recover()
            row.survived += int(decodes(client))
            row.refused += int(store.get_run(last.id)["status"] == "interrupted")
        row.half_written = half_written(store)
        rows.append(row)

        # ---- load -----------------------------------------------------------------------------
        row = Row(f"load: {args.clients} sessions x {args.runs_each} runs")

        def session(i: int) -> int:
            own = Client(url, verbose=False)
            done = 0
            for j in range(args.runs_each):
                try:
                    status = own.predict(*decode_args(gen_length=16, steps=8, seed=i * 10 + j), api_name="/decode")
                    done += "completed" in str(status[0])
                except Exception as exc:  # a full queue is a clean refusal
                    done += "waiting" in str(exc) or "already" in str(exc)
            return done

        with ThreadPoolExecutor(args.clients) as threads:
            results = list(threads.map(session, range(args.clients)))
        row.tried = args.clients * args.runs_each
        row.refused = sum(results)  # completed or refused with a message
        row.survived = int(decodes(client))
        row.half_written = half_written(store)
        rows.append(row)

    print(f"\n{'fault family':<46} {'tried':>6} {'clean':>6} {'survived':>9} {'half-written rows':>18}")
    for r in rows:
        print(f"{r.family:<46} {r.tried:>6} {r.refused:>6} {r.survived:>9} {r.half_written:>18}")
    print("\nclean: refused with a one-line message and nothing written, or (bundles) accepted and opened;")
    print("rendered with every tag escaped (text); the run ended failed with its steps (kills); ended")
    print("interrupted (crash); completed or refused with a message (load).")
    return 0 if all(r.half_written == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
