"""Command line: `python -m explorer decode|branch|alternatives|runs|show|sweep|sweep-report|sweeps`.

Bad input gets one line `error: ...` on stderr naming the problem and the valid range, exit
status 2, and nothing written to the database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from explorer import __version__
from explorer.adapters.entries import BUILTIN_MODELS
from explorer.adapters.loading import load_denoiser
from explorer.adapters.registry import ENV_VAR, resolve_registry
from explorer.api import alternatives, branch, decode, prepare, repairs, run_model
from explorer.branching.alternatives import CHECKED_MODELS, MAX_TOP, AlternativesReport, RepairReport
from explorer.branching.edits import Remask, parse_force, parse_position
from explorer.decoding.callbacks import ProgressBar, StopFlag
from explorer.decoding.canvas_settings import canvas_config
from explorer.decoding.config import KNOBS, DecodeConfig
from explorer.decoding.energies import ENERGY_TERMS
from explorer.decoding.knobs import Knob
from explorer.decoding.records import StepExtras, StepRecord
from explorer.decoding.schedule import SCHEDULES
from explorer.decoding.strategies import STRATEGIES, strategies_using
from explorer.store.database import StoreError, TrajectoryStore, existing_sqlite_file, resolve_url
from explorer.sweeps import commands as sweep_commands
from explorer.views.speed import Speed, speed_of
from explorer.views.verdict import verdict_of
from models.tokenizer import WordTokenizer

EXIT_BAD_INPUT = 2
EXIT_SIGNAL = 128  # + the signal's number, as a shell reports a command a signal ended
MAX_ID = 2**63 - 1  # run ids are 64-bit signed integers in the store
MAX_LIST = 10_000  # `runs --limit`


class CliError(Exception):
    pass


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default: `(default: X)` is added unless the help already
    says what the default is, or there is none to show (a required option, a branch's flags,
    which keep the parent's values)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if not action.option_strings or action.default in (None, argparse.SUPPRESS) or "default" in help:
            return help
        return f"{help} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error:` line and exit status 2 like every other, and
    every command's help shows the defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


_DEFAULT = DecodeConfig()  # one source for the defaults of the decode flags


def _bounded_int(name: str, low: int, high: int):
    """An argparse type: a whole number in [low, high], else a one-line error naming `name`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, not {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be between {low} and {high}, not {text[:40]}")
        return value

    parse.__name__ = name  # argparse names the type in its own messages
    return parse


RUN_ID = _bounded_int("run id", 1, MAX_ID)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m explorer", description="Diffusion-LM Trajectory Explorer")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("decode", help="decode a prompt step by step", description="Decode a prompt step by step.")
    d.add_argument("--prompt", required=True, help="the text to continue")
    _add_model(
        d, "embedded", f"built in: {', '.join(BUILTIN_NAMES)}; or a model listed in the operator's model configuration"
    )
    _add_settings(d, inherit=False)
    store = d.add_mutually_exclusive_group()
    store.add_argument("--db", default=None, help=DB_HELP)
    store.add_argument("--no-store", action="store_true", help="do not record the run")
    d.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    d.add_argument("--json", action="store_true", help="print one JSON object")

    b = sub.add_parser(
        "branch",
        help="decode a stored run again from the state after one of its steps, with edits or other settings",
        description="A branch starts from the exact state after step K of a stored run (K = -1: from the "
        "prompt), applies the edits, and decodes to the end with the run's settings, changed by any decode "
        "flag given. It is stored as a child of the run. With no edits and no flags it reproduces the run. "
        "Every decode setting defaults to the parent run's value.",
    )
    b.add_argument("run_id", type=RUN_ID, help="the stored run to branch (see `runs`)")
    b.add_argument("--step", type=int, required=True, help="K: start from the state after step K (-1: the prompt)")
    b.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="POS=WORD",
        help="put a token at generated position POS (0 = the first generated token): its text, or #ID for an "
        "id; repeatable (default: no edit)",
    )
    b.add_argument(
        "--remask",
        action="append",
        default=[],
        metavar="POS",
        help="mask a committed position again; repeatable (default: none)",
    )
    _add_model(b, None, "the run's model (default), or one with the same vocabulary")
    _add_settings(b, inherit=True)
    _add_store(b, json_flag=True)

    a = sub.add_parser(
        "alternatives",
        help="which decision mattered? re-decode a run once per alternative token at a position",
        description="For step K and position P of a stored run: branch after step K once per token among the "
        "model's top N at P (and once as decoded) and report each outcome. With --sweep: do that at every "
        "token the checker (or the violation pass) flags, at the step that committed it, and list the single "
        "changes that repair the run.",
    )
    a.add_argument("run_id", type=RUN_ID, help="the stored run (see `runs`)")
    a.add_argument("--step", type=int, default=None, help="K: the step whose decision to vary")
    a.add_argument("--position", type=int, default=None, help="P: the generated position to vary")
    a.add_argument("--sweep", action="store_true", help="every flagged token of the run instead of one (K, P)")
    a.add_argument("--top", type=int, default=None, help=f"N alternatives, 1..{MAX_TOP} (default: 5; 3 for --sweep)")
    _add_model(a, None, "the run's model (default)")
    _add_store(a, json_flag=True)

    r = sub.add_parser("runs", help="list stored runs (a branch shows its parent and branch step)")
    _add_store(r)
    r.add_argument("--limit", type=_bounded_int("limit", 1, MAX_LIST), default=20, help="the most recent runs to list")

    s = sub.add_parser(
        "show",
        help="print a stored run and its steps",
        description="Print a stored run: its settings, text and step lines (with re-masks, violation totals and "
        "kept energy candidates) and, for the embedded models, the checker's line, as decode prints them.",
    )
    s.add_argument("run_id", type=RUN_ID, help="the stored run (see `runs`)")
    _add_store(s)
    sweep_commands.add_parsers(sub, _add_store, _bounded_int("sweep id", 1, MAX_ID))
    return parser


DB_HELP = "SQLAlchemy URL (default: $EXPLORER_DB_URL or trajectories.db in the data dir)"
DATA_DIR_HELP = "where the default SQLite file lives (default: $EXPLORER_DATA_DIR or ~/.diffusion-explorer)"
BUILTIN_NAMES = tuple(entry.name for entry in BUILTIN_MODELS)


def _add_store(parser, json_flag: bool = False) -> None:
    """--db and --data-dir of a command that reads (or adds to) a store, and its --json."""
    parser.add_argument("--db", default=None, help=DB_HELP)
    parser.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON object")


def _add_model(parser, default: str | None, help: str) -> None:
    parser.add_argument("--model", default=default, help=help)
    parser.add_argument(
        "--models-config",
        default=None,
        metavar="FILE",
        help=f"the operator's model configuration, JSON or TOML (default: ${ENV_VAR})",
    )


def _add_settings(parser, inherit: bool) -> None:
    """The decode settings. With `inherit` (a branch) a flag not given keeps the parent's value,
    so every default is argparse.SUPPRESS: only the flags given appear in the namespace."""

    def default(value):
        return argparse.SUPPRESS if inherit else value

    parser.add_argument("--gen-length", type=int, default=default(64), help="tokens to generate")
    parser.add_argument(
        "--steps", type=int, default=default(None), help="decoding steps (default: gen-length, one token per step)"
    )
    parser.add_argument(
        "--block-length", type=int, default=default(None), help="decode in blocks of this length (default: one block)"
    )
    parser.add_argument(
        "--strategy",
        default=default("low_confidence"),
        choices=list(STRATEGIES),
        metavar="NAME",
        help=_strategies_help(),
    )
    parser.add_argument(
        "--schedule",
        default=default("llada"),
        choices=list(SCHEDULES),
        help="tokens per step of the scheduled strategies: "
        + "; ".join(f"{s.name}: {s.help} ({s.paper})" for s in SCHEDULES.values()),
    )
    parser.add_argument("--temperature", type=float, default=default(0.0), help="0 = argmax")
    parser.add_argument("--seed", type=int, default=default(0), help="the run's random seed")
    parser.add_argument(
        "--energy",
        action="append",
        type=_energy_term,
        default=default([]),
        metavar="TERM=WEIGHT",
        help=f"an energy term ({', '.join(ENERGY_TERMS)}) and its weight, repeatable (e.g. --energy uni=1; "
        "default: no energy): " + "; ".join(f"{term.name}: {term.help}" for term in ENERGY_TERMS.values()),
    )
    parser.add_argument(
        "--energy-window",
        type=float,
        nargs=2,
        default=default(_DEFAULT.energy_window),
        metavar=("START", "END"),
        help="apply energies while the masked fraction t is in [START, END]",
    )
    parser.add_argument("--ar-scorer", default=default(None), help="the AR energy's model (default: the model's own)")
    parser.add_argument(
        "--violations",
        action=argparse.BooleanOptionalAction,
        default=default(None),
        help="measure dependency violations (default: on for the embedded model)",
    )
    knobs = parser.add_argument_group(
        "knobs", "one flag per knob of a strategy, option or stage (from their registry entries)"
    )
    for knob in KNOBS:
        _add_knob(knobs, knob, inherit)


def _strategies_help() -> str:
    return "one of: " + "; ".join(f"{s.name}: {s.summary} ({s.paper})" for s in STRATEGIES.values())


def _add_knob(group, knob: Knob, inherit: bool = False) -> None:
    """The flag of one knob: its type, default, range and help all come from the Knob."""
    owners = strategies_using(knob)
    where = f"strategy {', '.join(owners)}: " if owners else ""
    default = argparse.SUPPRESS if inherit else knob.default
    if knob.kind is bool:
        group.add_argument(knob.flag, dest=knob.name, action="store_true", default=default, help=f"{where}{knob.help}")
        return
    group.add_argument(
        knob.flag,
        dest=knob.name,
        type=knob.kind,
        default=default,
        metavar=knob.kind.__name__.upper(),
        help=f"{where}{knob.help}; {knob.valid_range()}",
    )


# flag dest -> DecodeConfig field, for the settings that are not knobs (knobs share their names)
_SETTING_FLAGS = {
    "gen_length": "gen_length",
    "steps": "steps",
    "block_length": "block_length",
    "strategy": "strategy",
    "schedule": "schedule",
    "temperature": "temperature",
    "seed": "seed",
    "energy": "energies",
    "energy_window": "energy_window",
    "ar_scorer": "ar_scorer",
    "violations": "violations",
}


def _settings(args: argparse.Namespace) -> dict:
    """The DecodeConfig fields the flags in `args` set (a branch: only the flags given)."""
    given = vars(args)
    settings = {field: given[dest] for dest, field in _SETTING_FLAGS.items() if dest in given}
    settings |= {knob.name: given[knob.name] for knob in KNOBS if knob.name in given}
    if "energies" in settings:
        settings["energies"] = tuple(settings["energies"])
    if "energy_window" in settings:
        settings["energy_window"] = tuple(settings["energy_window"])
    return settings


class Interrupted(Exception):
    """SIGINT or SIGTERM ended a run: it was stored as `cancelled` with the steps it had."""

    def __init__(self, signum: int, run_id: int | None, steps: int) -> None:
        name = signal.Signals(signum).name
        kept = f"run {run_id} kept as cancelled after {steps} step(s)" if run_id is not None else "nothing stored"
        super().__init__(f"stopped by {name}: {kept}")
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals():
    """A StopFlag that SIGINT (Ctrl-C) and SIGTERM set: the engine ends the run at the next step as
    `cancelled`, every step so far stored. A second signal while it stops ends the process at once."""
    flag, caught = StopFlag(), []

    def handle(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)
        flag.stop()

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag, caught
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _decode(args: argparse.Namespace) -> None:
    denoiser = load_denoiser(args.model, registry=resolve_registry(args.models_config))
    if getattr(denoiser, "loop", "masked") == "canvas":  # DiffusionGemma: its own settings, then the flags given
        config = canvas_config(denoiser.defaults, **_settings(_given_settings(args.argv)))
    else:
        settings = _settings(args)
        if settings["steps"] is None:
            settings["steps"] = settings["gen_length"]  # one token per step
        config = DecodeConfig(**settings)
    prepare(args.prompt, denoiser, config)  # all input checks before the database is touched
    store = None if args.no_store else TrajectoryStore(args.db, args.data_dir)
    if store is not None:
        store.recover_interrupted()  # runs a dead process left `running` (a killed CLI, a crashed app)
    callbacks = [ProgressBar()] if sys.stderr.isatty() and not args.json else []
    with _stop_on_signals() as (flag, caught):
        out = decode(args.prompt, denoiser, config, store=store, callbacks=[*callbacks, flag])
    if caught:
        raise Interrupted(caught[0], out.run_id, out.result.n_steps)
    _print_run(out, denoiser, args, store)


def _branch(args: argparse.Namespace) -> None:
    store = _existing_store(args, args.run_id)
    registry = resolve_registry(args.models_config)
    edits = [*map(parse_force, args.force), *(Remask(parse_position(p)) for p in args.remask)]
    model = run_model(args.run_id, args.model, store, registry)
    callbacks = [ProgressBar()] if sys.stderr.isatty() and not args.json else []
    with _stop_on_signals() as (flag, caught):
        out = branch(args.run_id, args.step, store, edits, model, [*callbacks, flag], registry, **_settings(args))
    if caught:
        raise Interrupted(caught[0], out.run_id, out.result.n_steps)
    if not args.json:
        child = store.get_run(out.run_id)
        print(f"run {out.run_id}: a branch of run {args.run_id} after step {args.step}{_edits_note(store, out.run_id)}")
        print(f"settings changed: {_changed(store.get_run(args.run_id)['config'], child['config']) or 'none'}\n")
    _print_run(out, model, args, store)


def _print_run(out, denoiser, args: argparse.Namespace, store: TrajectoryStore | None) -> None:
    """A decode's (or branch's) text and steps, or one JSON object with --json."""
    if args.json:
        print(json.dumps(_run_json(out)))
        return
    print(out.text)
    print()
    generated = [denoiser.token_text(t) for t in out.token_ids]
    _print_steps([_record_line(r, denoiser) for r in out.steps], denoiser.name, out.prompt_text, generated)
    where = f"run {out.run_id} stored in {store.url}" if store else "not stored (--no-store)"
    print(f"\n{_live_speed(out, denoiser, store).cost_line()}")
    print(f"{out.result.n_steps} steps, {out.result.status}; {where}")


def _live_speed(out, denoiser, store: TrajectoryStore | None) -> Speed:
    """The cost of a decode (or branch) just run: the stored run's when it was stored (a branch's
    copied steps included, as `show` and the app count them), else the steps this command ran."""
    if store is not None and out.run_id is not None:
        return _stored_speed(store, out.run_id)
    run = {"final_token_ids": out.token_ids, "mask_id": out.mask_id, "device": str(getattr(denoiser, "device", ""))}
    steps = [{"seconds": r.seconds} for r in out.steps]
    return speed_of(run, steps, sum(r.forward_passes for r in out.steps), [r.extras for r in out.steps])


def _stored_speed(store: TrajectoryStore, run_id: int, arrays=None) -> Speed:
    """A stored run's speed and cost (`arrays`: its RunArrays when already read)."""
    arrays = store.read_arrays(run_id) if arrays is None else arrays
    steps = store.step_summaries(run_id)
    extras = arrays.extras if len(arrays.extras) == len(steps) else None
    return speed_of(store.get_run(run_id), steps, store.forward_passes(run_id), extras)


@dataclass(frozen=True)
class _StepLine:
    """What one step line shows, from a live StepRecord (decode, branch) or from the store (show)."""

    step: int
    block: int
    changes: list[tuple[int, str]]  # (position, 'pos:word(p)' or 'pos:old->new(p)' for a revision)
    remasked: list[str]  # 'pos:word' of each position masked again
    extras: StepExtras

    def __str__(self) -> str:
        words = " ".join(text for _, text in sorted(self.changes, key=lambda change: change[0]))
        return f"step {self.step:3d}  block {self.block}  +{len(self.changes)}  {words}{self.notes()}"

    def notes(self) -> str:
        """The step's re-masks, violation total, gate and kept energy candidate, when there are any."""
        notes = []
        if self.remasked:
            notes.append("re-masked " + " ".join(self.remasked))
        if self.extras.violations is not None:
            notes.append(f"violation total {self.extras.violations.total:.2f}")
        if (g := self.extras.gate) is not None:
            notes.append(f"gate kept {g.n_accepted} of {len(g.proposed)} proposed")
        if (e := self.extras.energy_ran) is not None:
            notes.append(f"energy kept {e.chosen} of {len(e.total)} (E = {e.total[e.chosen]:.2f})")
        return ("   [" + "; ".join(notes) + "]") if notes else ""


def _print_steps(lines: Sequence[_StepLine], model: str, prompt: str, generated: Sequence[str] | None) -> None:
    """The step lines and, for a model the story grammar's checker applies to, the checker's line
    (positions in the generated part, as in the step lines). decode, branch and show print these."""
    for line in lines:
        print(line)
    if model in CHECKED_MODELS and generated is not None:
        # The checked models' tokens are words: the prompt's tokens are its words as the tokenizer splits them.
        print(f"\nchecker: {verdict_of(' '.join(WordTokenizer.split(prompt)), generated).line()}")


def _record_line(record: StepRecord, denoiser) -> _StepLine:
    """A live step's line."""
    changes = [(int(record.committed[i]), _change(denoiser, record, i)) for i in range(record.n_committed)]
    remasked = [
        f"{p}:{denoiser.token_text(t)}" for p, t in zip(record.remasked.tolist(), record.remasked_tokens.tolist())
    ]
    return _StepLine(record.step, record.block, changes, remasked, record.extras)


def _stored_lines(store: TrajectoryStore, run_id: int, arrays=None) -> list[_StepLine]:
    """A stored run's step lines, read back from its events and step extras (`arrays`: its
    RunArrays when already read)."""
    arrays = store.read_arrays(run_id) if arrays is None else arrays
    texts = store.token_texts(run_id)

    def text(token: int) -> str:
        return texts.get(token, f"#{token}")

    commits, remasks = arrays.commits, arrays.remasks
    start = np.full(arrays.gen_length, int(arrays.run["mask_id"]), dtype=np.int64)  # before the first stored step
    for step, position, token, forced in arrays.edits.rows():
        if forced and arrays.n_steps and step < arrays.steps[0]:  # a branch from the prompt (k = -1)
            start[position] = token
    lines = []
    for i, step in enumerate(arrays.steps.tolist()):
        before = arrays.tokens[:, i - 1] if i else start  # the sequence a revision changed
        changes = []
        for j in np.flatnonzero(commits.step == step).tolist():
            position, token = int(commits.position[j]), int(commits.token[j])
            old = f"{text(int(before[position]))}->" if commits.revised[j] else ""
            changes.append((position, f"{position}:{old}{text(token)}({_prob_text(float(commits.prob[j]))})"))
        remasked = [
            f"{p}:{text(t)}"
            for s, p, t in zip(remasks.step.tolist(), remasks.position.tolist(), remasks.token.tolist())
            if s == step
        ]
        lines.append(_StepLine(step, int(arrays.blocks[i]), changes, remasked, arrays.extras[i]))
    return lines


def _run_json(out) -> dict:
    return {
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


def _existing_store(args: argparse.Namespace, run_id: int, read_only: bool = False) -> TrajectoryStore:
    """The store holding `run_id`; CliError (no database created) when there is none. `read_only`:
    for commands that only read (a read-only database file can be shown)."""
    url = resolve_url(args.db, args.data_dir)
    if existing_sqlite_file(url) is False:  # do not create an empty database just to read it
        raise CliError(f"no run with id {run_id}: no database at {url} yet")
    store = TrajectoryStore(url, read_only=read_only)
    if store.get_run(run_id) is None:
        raise CliError(f"no run with id {run_id} in {store.url} (see `python -m explorer runs`)")
    return store


def _edits_note(store: TrajectoryStore, run_id: int) -> str:
    edits = store.read_arrays(run_id).edits.rows()
    texts = store.token_texts(run_id)
    if not edits:
        return ", no edits"
    return ", " + ", ".join(
        f"{p}={texts.get(t, t)}" if forced else f"re-mask {p} ({texts.get(t, t)})" for _, p, t, forced in edits
    )


def _changed(parent: dict, child: dict) -> str:
    return ", ".join(f"{k} {parent.get(k)!r} -> {v!r}" for k, v in sorted(child.items()) if parent.get(k) != v)


def _alternatives(args: argparse.Namespace) -> None:
    if args.sweep == (args.step is not None or args.position is not None):
        raise CliError("give --step K and --position P for one decision, or --sweep for every flagged token")
    if not args.sweep and (args.step is None or args.position is None):
        raise CliError("give both --step K and --position P (or --sweep)")
    store = _existing_store(args, args.run_id)
    registry = resolve_registry(args.models_config)
    model = run_model(args.run_id, args.model, store, registry)
    if args.sweep:
        _print_repairs(repairs(args.run_id, store, args.top or 3, model, registry), args.json)
    else:
        report = alternatives(args.run_id, args.step, args.position, store, args.top or 5, model, registry)
        _print_alternatives(report, args.json)


def _print_alternatives(report: AlternativesReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(report)))
        return
    print(f"run {report.run_id}, step {report.step}, position {report.position} (holds {report.parent_token!r}):")
    print(_outcome_table(report.outcomes))


def _outcome_table(outcomes) -> str:
    header = f"  {'token':20} {'p':>6}  {'run':>5}  {'checker':24} {'viol. after k':>13} {'AR NLL':>7}  changed"
    rows = [header]
    for o in outcomes:
        name = f"{o.token_text}{' (as decoded)' if o.as_decoded else ''}"
        verdict = "-" if o.verdict is None else ("valid" if o.valid else f"{o.n_violations} violation(s)")
        nll = "-" if o.ar_nll is None else f"{o.ar_nll:.3f}"
        diff = " ".join(f"{p}:{a}->{b}" for p, a, b in o.changed[:6]) + (" ..." if len(o.changed) > 6 else "")
        rows.append(
            f"  {name:20} {o.prob:6.3f}  {o.run_id:>5}  {verdict:24} {o.violation_score:13.2f} {nll:>7}  {diff or '-'}"
        )
    return "\n".join(rows)


def _print_repairs(report: RepairReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**asdict(report), "repairs": [asdict(o) | {"position": f.position, "step": f.step}
                                                        for f, o in report.repairs]}))  # fmt: skip
        return
    if not report.flagged:
        print(f"run {report.run_id}: nothing flagged (the checker finds it valid, or no token scores below -1 nat)")
        return
    for flag, single in zip(report.flagged, report.reports):
        print(f"position {flag.position} {flag.token_text!r}, committed at step {flag.step}: {flag.reason}")
        print(_outcome_table(single.outcomes))
    print()
    if not report.repairs:
        print(f"no single change repairs run {report.run_id}")
    for flag, o in report.repairs:
        change = f"{flag.token_text!r} -> {o.token_text!r}"
        print(f"repair: step {flag.step}, position {flag.position}: {change} (run {o.run_id})")


def _energy_term(item: str) -> tuple[str, float]:
    """--energy's type: 'uni=1' -> ('uni', 1.0); a bare 'uni' has weight 1. The term is one of
    ENERGY_TERMS (argparse's `choices` cannot see inside TERM=WEIGHT)."""
    name, _, weight = item.partition("=")
    name = name.strip()
    if name not in ENERGY_TERMS:
        raise argparse.ArgumentTypeError(
            f"unknown energy term {name!r} in {item!r}; choose from {', '.join(ENERGY_TERMS)}"
        )
    try:
        return name, float(weight) if weight else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{item!r}: the weight must be a number, e.g. --energy uni=1") from None


def _change(denoiser, record, i: int) -> str:
    """One committed position of a step: `pos:word(p)`, or `pos:old->new(p)` for a revision."""
    position, token, prob = int(record.committed[i]), int(record.tokens[i]), float(record.probs[i])
    revised = record.revised.size == record.n_committed and bool(record.revised[i])
    old = f"{denoiser.token_text(int(record.previous[i]))}->" if revised else ""
    return f"{position}:{old}{denoiser.token_text(token)}({_prob_text(prob)})"


def _prob_text(prob: float) -> str:
    """A commit's probability, or `p ?` where the run does not know it (a recorded generate())."""
    return f"{prob:.2f}" if math.isfinite(prob) else "p ?"


def _runs(args: argparse.Namespace) -> None:
    url = resolve_url(args.db, args.data_dir)
    if existing_sqlite_file(url) is False:
        print(f"no runs: no database at {url} yet")
        return
    store = TrajectoryStore(url, read_only=True)  # it only reads: a read-only database is listed too
    runs = store.list_runs(limit=args.limit)
    if not runs:
        print(f"no runs in {store.url}")
        return
    header = f"{'id':>5}  {'created (UTC)':19}  {'status':9}  {'model':10}  {'strategy':14}  {'len':>4}  {'steps':>5}"
    print(f"{header}  {'branch of':12}  prompt")
    for r in runs:
        origin = f"{r['parent_run_id']} @ step {r['branch_step']}" if r["parent_run_id"] is not None else "-"
        print(
            f"{r['id']:>5}  {r['created_at']:%Y-%m-%d %H:%M:%S}  {r['status']:9}  {r['model']:10}  "
            f"{r['strategy']:14}  {r['gen_length']:>4}  {r['n_steps']:>5}  {origin:12}  {r['prompt'][:40]}"
        )


def _show(args: argparse.Namespace) -> None:
    store = _existing_store(args, args.run_id, read_only=True)
    run = store.get_run(args.run_id)
    print(
        f"run {run['id']}  {run['status']}  model {run['model']}  device {run['device']}  "
        f"created {run['created_at']:%Y-%m-%d %H:%M:%S} UTC"
    )
    print(f"config {json.dumps(run['config'], sort_keys=True)}")
    print(f"prompt: {run['prompt']}")
    print(f"text:   {run['final_text']}")
    if run["error"]:
        print(f"error:  {run['error']}")
    # The checked models' tokens are words, so the stored text splits into exactly the token texts.
    generated = run["final_text"].split() if run["final_text"] is not None else None
    arrays = store.read_arrays(args.run_id)
    _print_steps(_stored_lines(store, args.run_id, arrays), run["model"], run["prompt"], generated)
    if run["status"] != "running":
        print(f"\n{_stored_speed(store, args.run_id, arrays).cost_line()}")


COMMANDS = {
    "decode": _decode,
    "branch": _branch,
    "alternatives": _alternatives,
    "runs": _runs,
    "show": _show,
    **sweep_commands.COMMANDS,
}


def _given_settings(argv: Sequence[str]) -> argparse.Namespace:
    """Only the decode settings given on the command line (a canvas model fills the rest itself)."""
    parser = _Parser(prog="python -m explorer decode", add_help=False)
    _add_settings(parser, inherit=True)
    return parser.parse_known_args(list(argv))[0]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        COMMANDS[args.command](args)
    except (ValueError, StoreError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return EXIT_SIGNAL + exc.signum
    except KeyboardInterrupt:  # a second Ctrl-C while the run was stopping, or one outside a run
        print("\ninterrupted", file=sys.stderr)
        return EXIT_SIGNAL + signal.SIGINT
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.stderr.close()
    return 0
