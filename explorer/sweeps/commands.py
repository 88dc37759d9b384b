"""The sweep commands of the CLI (explorer/cli.py adds them): `sweep`, `sweep-report`, `sweeps`, `sweep-delete`.

python -m explorer sweep SPEC.toml [--db URL] [--ray auto|ADDRESS|local] [--resume]
python -m explorer sweep-report SWEEP_ID [--out DIR]
python -m explorer sweeps
"""

from __future__ import annotations

import argparse
from pathlib import Path

from explorer.adapters.registry import resolve_registry
from explorer.store import sweeps as table
from explorer.store.database import TrajectoryStore, existing_sqlite_file, resolve_url
from explorer.sweeps.execute import SweepProgress, run_sweep
from explorer.sweeps.on_ray import RayUnavailable, TaskFailed
from explorer.sweeps.report import markdown, write_report
from explorer.sweeps.spec import load_spec
from explorer.sweeps.summary import summarise

RAY_WORKERS_HELP = "Ray workers (actors) to start (default: one per GPU on CUDA, else one per CPU of the cluster)"
MODELS_CONFIG_HELP = "the operator's model configuration (JSON or TOML), for models beyond the built-in ones"


def add_parsers(sub, add_store, sweep_id_type) -> None:
    """The three sub-commands, on the CLI's sub-parser (with its --db / --models-config helpers)."""
    s = sub.add_parser(
        "sweep",
        help="run a sweep (a grid of configurations x seeds), in-process or on a Ray cluster",
        description="Run a sweep: every (cell, seed) of the TOML spec is decoded once and stored, linked to its "
        "sweep and cell. Without --ray it runs here; with --ray each block of seeds is a Ray task.",
    )
    s.add_argument("spec", type=Path, help="the sweep's TOML spec (see docs/scale.md)")
    add_store(s)
    s.add_argument("--models-config", default=None, metavar="FILE", help=MODELS_CONFIG_HELP)
    s.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run on Ray: 'auto' (the cluster this machine belongs to), an address (host:port), "
                   "or 'local' (start a private Ray instance)")  # fmt: skip
    s.add_argument("--ray-workers", type=int, default=None, metavar="N", help=RAY_WORKERS_HELP)
    s.add_argument("--resume", action="store_true", help="finish the stored sweep of this name and spec")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = sub.add_parser("sweep-report", help="a sweep's table and quality-vs-cost figure, from the store")
    r.add_argument("sweep_id", type=sweep_id_type, help="the sweep (see `sweeps`)")
    r.add_argument("--out", type=Path, default=None, help="also write sweep_<id>.md/.json/.html into this folder")
    add_store(r)
    ls = sub.add_parser("sweeps", help="list stored sweeps and their progress")
    add_store(ls)
    d = sub.add_parser("sweep-delete", help="delete a sweep and (unless --keep-runs) the runs it stored")
    d.add_argument("sweep_id", type=sweep_id_type, help="the sweep (see `sweeps`)")
    d.add_argument("--keep-runs", action="store_true", help="keep its runs as ordinary stored runs")
    add_store(d)


def sweep(args: argparse.Namespace) -> None:
    spec = load_spec(args.spec)  # a bad spec stops here: nothing is stored
    registry = resolve_registry(args.models_config)
    store = TrajectoryStore(args.db, args.data_dir)
    store.recover_interrupted()
    try:
        progress = run_sweep(
            store,
            spec,
            resume=args.resume,
            ray_address=args.ray,
            ray_workers=args.ray_workers,
            registry=registry,
            progress_bar=not args.no_progress,
        )
    except RayUnavailable as exc:
        raise ValueError(str(exc)) from None
    except TaskFailed as exc:
        raise ValueError(f"{exc}; what finished is stored: rerun with --resume") from None
    print(_progress_line(progress, args.ray))
    for error in progress.errors:
        print(f"  failed: {error}")
    print(f"report: python -m explorer sweep-report {progress.sweep_id}" + (f" --db {args.db}" if args.db else ""))


def _progress_line(p: SweepProgress, ray: str | None) -> str:
    where = f"on Ray ({ray}), {p.actors} workers" if ray else "in-process"
    per_task = f", {p.seconds / p.tasks:.2f} s per task" if p.tasks else ""
    return (
        f"sweep {p.sweep_id}: {p.counts['done']} runs done, {p.counts['skipped']} already done, "
        f"{p.counts['failed']} failed, {where}, {p.seconds:.1f} s wall{per_task} ({p.tasks} tasks)"
    )


def sweep_report(args: argparse.Namespace) -> None:
    store = _reading_store(args)
    summary = summarise(store, args.sweep_id)
    print(markdown(summary), end="")
    if args.out is not None:
        for path in write_report(summary, args.out):
            print(f"wrote {path}")


def sweeps(args: argparse.Namespace) -> None:
    store = _reading_store(args)
    rows = table.list_sweeps(store)
    if not rows:
        print(f"no sweeps in {store.url}")
        return
    print(f"{'id':>4}  {'created (UTC)':19}  {'cells':>5}  {'done':>7}  {'failed':>6}  name")
    for r in rows:
        print(
            f"{r['id']:>4}  {r['created_at']:%Y-%m-%d %H:%M:%S}  {r['cells']:>5}  "
            f"{r['done']:>3}/{r['planned']:<3}  {r['failed']:>6}  {r['name']}"
        )


def sweep_delete(args: argparse.Namespace) -> None:
    url = resolve_url(args.db, args.data_dir)
    if existing_sqlite_file(url) is False:
        raise ValueError(f"no database at {url}")
    store = TrajectoryStore(url)
    sweep = table.get_sweep(store, args.sweep_id)
    if sweep is None:
        raise ValueError(f"no sweep {args.sweep_id} in {store.url} (see `python -m explorer sweeps`)")
    runs = table.delete_sweep(store, args.sweep_id, with_runs=not args.keep_runs)
    kept = "kept" if args.keep_runs else "deleted"
    print(f"deleted sweep {args.sweep_id} ({sweep['name']}); its {runs} stored runs {kept}")


def _reading_store(args: argparse.Namespace) -> TrajectoryStore:
    url = resolve_url(args.db, args.data_dir)
    if existing_sqlite_file(url) is False:
        raise ValueError(f"no database at {url}")
    return TrajectoryStore(url, read_only=True)


COMMANDS = {"sweep": sweep, "sweep-report": sweep_report, "sweeps": sweeps, "sweep-delete": sweep_delete}
