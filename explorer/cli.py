"""Command line: `python -m explorer decode|runs|show`.

Bad input gets one line `error: ...` on stderr naming the problem and the valid range, exit
status 2, and nothing written to the database.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from explorer.adapters.loading import load_denoiser
from explorer.adapters.registry import ENV_VAR, resolve_registry
from explorer.api import decode, prepare
from explorer.decoding.callbacks import ProgressBar
from explorer.decoding.config import KNOBS, DecodeConfig
from explorer.decoding.energies import ENERGY_TERMS
from explorer.decoding.knobs import Knob
from explorer.decoding.schedule import SCHEDULES
from explorer.decoding.strategies import STRATEGIES, strategies_using
from explorer.store.database import StoreError, TrajectoryStore, existing_sqlite_file, resolve_url
from models.checker import check

EXIT_BAD_INPUT = 2


class CliError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error:` line and exit status 2 like every other."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


_DEFAULT = DecodeConfig()  # one source for the defaults of the decode flags


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m explorer", description="Diffusion-LM Trajectory Explorer")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("decode", help="decode a prompt step by step")
    d.add_argument("--prompt", required=True)
    d.add_argument(
        "--model", default="embedded", help="'embedded' or a model listed in the operator's model configuration"
    )
    d.add_argument(
        "--models-config",
        default=None,
        metavar="FILE",
        help=f"the operator's model configuration, JSON or TOML (default: ${ENV_VAR})",
    )
    d.add_argument("--gen-length", type=int, default=64)
    d.add_argument("--steps", type=int, default=None, help="default: gen-length (one token per step)")
    d.add_argument("--block-length", type=int, default=None, help="default: gen-length (one block)")
    d.add_argument("--strategy", default="low_confidence", help=_strategies_help())
    d.add_argument(
        "--schedule",
        default="llada",
        choices=list(SCHEDULES),
        help="tokens per step of the scheduled strategies: "
        + "; ".join(f"{s.name}: {s.help} ({s.paper})" for s in SCHEDULES.values()),
    )
    d.add_argument("--temperature", type=float, default=0.0)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--energy",
        action="append",
        default=[],
        metavar="TERM=WEIGHT",
        help="an energy term and its weight, repeatable (e.g. --energy uni=1): "
        + "; ".join(f"{term.name}: {term.help}" for term in ENERGY_TERMS.values()),
    )
    d.add_argument(
        "--energy-window",
        type=float,
        nargs=2,
        default=_DEFAULT.energy_window,
        metavar=("START", "END"),
        help="apply energies while the masked fraction t is in [START, END]",
    )
    d.add_argument("--ar-scorer", default=None, help="the AR energy's model (default: the model's own)")
    d.add_argument(
        "--violations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure dependency violations (default: on for the embedded model)",
    )
    knobs = d.add_argument_group(
        "knobs", "one flag per knob of a strategy, option or stage (from their registry entries)"
    )
    for knob in KNOBS:
        _add_knob(knobs, knob)
    store = d.add_mutually_exclusive_group()
    store.add_argument(
        "--db", default=None, help="SQLAlchemy URL (default: $EXPLORER_DB_URL or a file in the data dir)"
    )
    store.add_argument("--no-store", action="store_true", help="do not record the run")
    d.add_argument("--data-dir", default=None)
    d.add_argument("--json", action="store_true", help="print one JSON object")

    r = sub.add_parser("runs", help="list stored runs")
    r.add_argument("--db", default=None)
    r.add_argument("--data-dir", default=None)
    r.add_argument("--limit", type=int, default=20)

    s = sub.add_parser("show", help="print a stored run and its steps")
    s.add_argument("run_id", type=int)
    s.add_argument("--db", default=None)
    s.add_argument("--data-dir", default=None)
    return parser


def _strategies_help() -> str:
    return "one of: " + "; ".join(f"{s.name}: {s.summary} ({s.paper})" for s in STRATEGIES.values())


def _add_knob(group, knob: Knob) -> None:
    """The flag of one knob: its type, default, range and help all come from the Knob."""
    owners = strategies_using(knob)
    where = f"strategy {', '.join(owners)}: " if owners else ""
    if knob.kind is bool:
        group.add_argument(
            knob.flag, dest=knob.name, action="store_true", default=knob.default, help=f"{where}{knob.help}"
        )
        return
    group.add_argument(
        knob.flag,
        dest=knob.name,
        type=knob.kind,
        default=knob.default,
        metavar=knob.kind.__name__.upper(),
        help=f"{where}{knob.help}; {knob.valid_range()}, default {knob.default}",
    )


def _decode(args: argparse.Namespace) -> None:
    config = DecodeConfig(
        gen_length=args.gen_length,
        steps=args.gen_length if args.steps is None else args.steps,
        block_length=args.block_length,
        strategy=args.strategy,
        schedule=args.schedule,
        temperature=args.temperature,
        seed=args.seed,
        energies=_energy_terms(args.energy),
        energy_window=tuple(args.energy_window),
        ar_scorer=args.ar_scorer,
        violations=args.violations,
        **{knob.name: getattr(args, knob.name) for knob in KNOBS},
    )
    denoiser = load_denoiser(args.model, registry=resolve_registry(args.models_config))
    prepare(args.prompt, denoiser, config)  # all input checks before the database is touched
    store = None if args.no_store else TrajectoryStore(args.db, args.data_dir)
    callbacks = [ProgressBar()] if sys.stderr.isatty() and not args.json else []
    out = decode(args.prompt, denoiser, config, store=store, callbacks=callbacks)
    if args.json:
        print(
            json.dumps(
                {
                    "run_id": out.run_id,
                    "mask_id": out.mask_id,
                    "text": out.text,
                    "token_ids": out.token_ids,
                    "steps": [
                        {
                            "step": r.step,
                            "block": r.block,
                            "committed": r.committed.tolist(),
                            "tokens": r.tokens.tolist(),
                            "remasked": r.remasked.tolist(),
                            "forward_passes": r.forward_passes,
                            **r.extras.to_json(),
                        }
                        for r in out.steps
                    ],
                }
            )
        )
        return
    print(out.text)
    print()
    for r in out.steps:
        words = " ".join(
            f"{p}:{denoiser.token_text(t)}({q:.2f})"
            for p, t, q in zip(r.committed.tolist(), r.tokens.tolist(), r.probs.tolist())
        )
        print(f"step {r.step:3d}  block {r.block}  +{r.n_committed}  {words}{_step_notes(r, denoiser)}")
    if args.model == "embedded":  # the story grammar's exact checker applies to this model only
        print(f"\nchecker: {check(out.text).summary()}")
    where = f"run {out.run_id} stored in {store.url}" if store else "not stored (--no-store)"
    print(f"\n{out.result.n_steps} steps, {out.result.status}; {where}")


def _energy_terms(items: list[str]) -> tuple[tuple[str, float], ...]:
    """'uni=1' -> ('uni', 1.0); a bare 'uni' has weight 1."""
    terms = []
    for item in items:
        name, _, weight = item.partition("=")
        try:
            terms.append((name.strip(), float(weight) if weight else 1.0))
        except ValueError:
            raise CliError(f"--energy {item!r}: the weight must be a number, e.g. --energy uni=1") from None
    return tuple(terms)


def _step_notes(r, denoiser) -> str:
    """The step's re-masks, violation total and kept energy candidate, when there are any."""
    notes = []
    if r.remasked.size:
        notes.append(
            "re-masked "
            + " ".join(f"{p}:{denoiser.token_text(t)}" for p, t in zip(r.remasked.tolist(), r.remasked_tokens.tolist()))
        )
    if r.extras.violations is not None:
        notes.append(f"violation total {r.extras.violations.total:.2f}")
    if (e := r.extras.energy_ran) is not None:
        notes.append(f"energy kept {e.chosen} of {len(e.total)} (E = {e.total[e.chosen]:.2f})")
    return ("   [" + "; ".join(notes) + "]") if notes else ""


def _runs(args: argparse.Namespace) -> None:
    url = resolve_url(args.db, args.data_dir)
    if existing_sqlite_file(url) is False:
        print(f"no runs: no database at {url} yet")
        return
    store = TrajectoryStore(url)
    runs = store.list_runs(limit=args.limit)
    if not runs:
        print(f"no runs in {store.url}")
        return
    header = f"{'id':>5}  {'created (UTC)':19}  {'status':9}  {'model':10}  {'strategy':14}  {'len':>4}  {'steps':>5}"
    print(f"{header}  prompt")
    for r in runs:
        print(
            f"{r['id']:>5}  {r['created_at']:%Y-%m-%d %H:%M:%S}  {r['status']:9}  {r['model']:10}  "
            f"{r['strategy']:14}  {r['gen_length']:>4}  {r['n_steps']:>5}  {r['prompt'][:40]}"
        )


def _show(args: argparse.Namespace) -> None:
    url = resolve_url(args.db, args.data_dir)
    if existing_sqlite_file(url) is False:  # do not create an empty database just to read it
        raise CliError(f"no run with id {args.run_id}: no database at {url} yet")
    store = TrajectoryStore(url)
    run = store.get_run(args.run_id)
    if run is None:
        raise CliError(f"no run with id {args.run_id} in {store.url} (see `python -m explorer runs`)")
    print(
        f"run {run['id']}  {run['status']}  model {run['model']}  device {run['device']}  "
        f"created {run['created_at']:%Y-%m-%d %H:%M:%S} UTC"
    )
    print(f"config {json.dumps(run['config'], sort_keys=True)}")
    print(f"prompt: {run['prompt']}")
    print(f"text:   {run['final_text']}")
    if run["error"]:
        print(f"error:  {run['error']}")
    for s in store.step_summaries(args.run_id):
        words = " ".join(f"{p}:{w}({q:.2f})" for p, w, q in zip(s["committed"], s["token_texts"], s["probs"]))
        print(f"step {s['step']:3d}  block {s['block']}  +{len(s['committed'])}  {words}")


COMMANDS = {"decode": _decode, "runs": _runs, "show": _show}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, StoreError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.stderr.close()
    return 0
