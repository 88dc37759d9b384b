"""The command line, run as a subprocess: `python -m explorer decode|branch|alternatives|runs|show`.

Every process pays the torch import (~2 s), so the independent invocations are started
together once per module (a few at a time) and the tests check their results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import explorer
from explorer.cli import _parser, main
from explorer.decoding.energies import ENERGY_TERMS
from explorer.decoding.schedule import SCHEDULES
from explorer.decoding.strategies import STRATEGIES
from explorer.views.verdict import verdict_of

REPO = Path(__file__).resolve().parents[1]
PROMPT = "once upon a time"
GOOD = ["decode", "--prompt", PROMPT, "--gen-length", "32", "--steps", "8", "--strategy", "low_confidence"]
WORKERS = 4
TIMEOUT = 120


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("EXPLORER_DB_URL",)}
    env["EXPLORER_DATA_DIR"] = str(tmp / "data-dir")  # never the user's home, whatever a case does
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "explorer", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def _db(tmp: Path, name: str) -> tuple[str, Path]:
    path = tmp / f"{name}.db"
    return f"sqlite:///{path}", path


# name -> (extra decode args, words the error line must mention); each gets its own --db file
BAD_INPUT = {
    "gen_length_zero": (["--gen-length", "0"], ["gen-length", "0"]),
    "gen_length_huge": (["--gen-length", "10000"], ["gen-length", "10000"]),
    "steps_zero": (["--gen-length", "32", "--steps", "0"], ["steps", "0"]),
    "steps_too_many": (["--gen-length", "32", "--steps", "100"], ["steps", "100"]),
    "block_not_divisor": (["--gen-length", "32", "--block-length", "5"], ["block-length", "5"]),
    "steps_not_multiple_of_blocks": (["--gen-length", "32", "--block-length", "8", "--steps", "6"], ["steps", "6"]),
    "unknown_strategy": (["--gen-length", "32", "--strategy", "nope"], ["strategy", "nope", "low_confidence"]),
    "unknown_schedule": (["--gen-length", "32", "--schedule", "nope"], ["schedule", "nope", "llada", "dream"]),
    "unknown_energy_term": (["--gen-length", "32", "--energy", "nope=1"], ["energy", "nope", "ar, ind, inv, uni"]),
    "energy_weight_not_a_number": (["--gen-length", "32", "--energy", "uni=lots"], ["energy", "lots", "number"]),
    "threshold_zero": (["--gen-length", "32", "--threshold", "0"], ["threshold", "0"]),
    "threshold_above_one": (["--gen-length", "32", "--threshold", "1.5"], ["threshold", "1.5"]),
    "negative_temperature": (["--gen-length", "32", "--temperature", "-1"], ["temperature", "-1"]),
    "unknown_model": (["--gen-length", "32", "--model", "nope"], ["model", "nope"]),
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run every independent invocation concurrently; return name -> (CompletedProcess, db path)."""
    tmp = tmp_path_factory.mktemp("cli")
    env = _env(tmp)
    (tmp / "afile").write_text("a regular file, so afile/x.db cannot be created\n")
    jobs: dict[str, tuple[list[str], Path | None]] = {
        "json_no_store": ([*GOOD, "--json", "--no-store"], None),
        "text_no_store": ([*GOOD, "--no-store"], None),
    }
    url, path = _db(tmp, "stored")
    jobs["json_stored"] = ([*GOOD, "--json", "--db", url], path)
    for name, (extra, _) in BAD_INPUT.items():
        url, path = _db(tmp, name)
        jobs[name] = (["decode", "--prompt", PROMPT, *extra, "--db", url], path)
    url, path = _db(tmp, "unknown_word")
    jobs["unknown_word"] = ([*GOOD[:1], "--prompt", "once upon a zebra", *GOOD[3:], "--db", url], path)
    jobs["unwritable_db"] = ([*GOOD, "--db", f"sqlite:///{tmp / 'afile' / 'x.db'}"], None)
    url, path = _db(tmp, "show_missing")
    jobs["show_missing"] = (["show", "999", "--db", url], path)
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {name: pool.submit(_run, args, env) for name, (args, _) in jobs.items()}
        results = {name: (future.result(), jobs[name][1]) for name, future in futures.items()}
    return {"tmp": tmp, "env": env, **results}


def _runs_in(path: Path) -> int:
    """Rows of the runs table; 0 if the file or the table does not exist."""
    if not path.exists():
        return 0
    con = sqlite3.connect(path)
    try:
        if not con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='runs'").fetchall():
            return 0
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        con.close()


def _check_json_decode(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"run_id", "mask_id", "text", "token_ids", "steps"}
    assert isinstance(out["mask_id"], int)
    assert len(out["token_ids"]) == 32
    assert out["mask_id"] not in out["token_ids"]
    assert out["text"].startswith(PROMPT)
    steps = out["steps"]
    assert [s["step"] for s in steps] == list(range(8))
    committed = []
    for s in steps:
        assert len(s["committed"]) == 4 and len(s["tokens"]) == 4
        assert [out["token_ids"][p] for p in s["committed"]] == s["tokens"]
        committed += s["committed"]
    assert sorted(committed) == list(range(32))  # every position exactly once
    return out


def test_decode_json_no_store(cli):
    proc, _ = cli["json_no_store"]
    out = _check_json_decode(proc)
    assert out["run_id"] is None
    assert proc.stderr == ""
    assert not (cli["tmp"] / "data-dir").exists()  # --no-store touches no database


def test_decode_stored_then_show_and_runs(cli):
    proc, path = cli["json_stored"]
    out = _check_json_decode(proc)
    assert isinstance(out["run_id"], int)
    assert _runs_in(path) == 1
    # the same decode as the unstored one (temperature 0, same seed)
    assert out["token_ids"] == json.loads(cli["json_no_store"][0].stdout)["token_ids"]
    url = f"sqlite:///{path}"
    with ThreadPoolExecutor(2) as pool:
        show_f = pool.submit(_run, ["show", str(out["run_id"]), "--db", url], cli["env"])
        runs_f = pool.submit(_run, ["runs", "--db", url], cli["env"])
        show, runs = show_f.result(), runs_f.result()

    assert show.returncode == 0, show.stderr
    lines = show.stdout.splitlines()
    assert lines[0].startswith(f"run {out['run_id']}  completed")
    step_lines = [line for line in lines if line.startswith("step ")]
    assert len(step_lines) == 8
    assert all("+4" in line for line in step_lines)
    assert any(line.startswith("prompt: " + PROMPT) for line in lines)
    text_line = next(line for line in lines if line.startswith("text:"))
    assert text_line.split(None, 1)[1] == out["text"][len(PROMPT) + 1 :]

    assert runs.returncode == 0, runs.stderr
    rows = [line.split() for line in runs.stdout.splitlines()[1:]]
    assert len(rows) == 1
    assert rows[0][0] == str(out["run_id"])
    assert "completed" in rows[0] and "low_confidence" in rows[0] and "embedded" in rows[0]
    assert rows[0][-4:] == PROMPT.split()


@pytest.mark.parametrize("case", [*BAD_INPUT, "unknown_word"])
def test_bad_input_is_one_error_line_and_nothing_stored(cli, case):
    proc, path = cli[case]
    mentions = BAD_INPUT[case][1] if case in BAD_INPUT else ["zebra"]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    for word in mentions:
        assert word in lines[0], (word, lines[0])
    assert _runs_in(path) == 0


def test_unwritable_db_location(cli):
    proc, _ = cli["unwritable_db"]
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "afile" in lines[0], proc.stderr
    assert (cli["tmp"] / "afile").is_file()


def test_show_missing_run(cli):
    proc, path = cli["show_missing"]
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "999" in lines[0], proc.stderr
    assert _runs_in(path) == 0


def test_no_progress_bar_when_stderr_is_not_a_tty(cli):
    proc, _ = cli["text_no_store"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no tqdm bar (nor anything else) on a pipe
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(PROMPT)
    assert sum(line.startswith("step ") for line in lines) == 8
    assert lines[-1] == "8 steps, completed; not stored (--no-store)"


# ---- branch and alternatives -------------------------------------------------------------------
# name -> (branch args after the run id, words the error line must mention); each on a copy of the db
BAD_BRANCH = {
    "step_out_of_range": (["--step", "8"], ["step 8", "-1..7"]),
    "position_out_of_range": (["--step", "1", "--force", "40=girl"], ["position 40", "0..31"]),
    "unknown_word": (["--step", "1", "--force", "3=gril"], ["gril", "close words: girl"]),
    "mask_token": (["--step", "1", "--force", "3=<mask>"], ["special token"]),
    "remask_a_mask": (["--step", "0", "--remask", "31"], ["31", "already masked"]),
    "bad_force_syntax": (["--step", "1", "--force", "girl"], ["POSITION=WORD"]),
    "other_gen_length": (["--step", "1", "--gen-length", "16"], ["generation length (32)"]),
    "missing_run": (["--step", "1"], ["no run with id"]),
}


@pytest.fixture(scope="module")
def branched(tmp_path_factory):
    """A stored decode, then (concurrently) branches, alternatives and bad branches of it."""
    tmp = tmp_path_factory.mktemp("branch")
    env = _env(tmp)
    url, path = _db(tmp, "tree")
    parent = _run([*GOOD, "--json", "--db", url], env)
    assert parent.returncode == 0, parent.stderr
    run_id = json.loads(parent.stdout)["run_id"]
    committed = str(json.loads(parent.stdout)["steps"][0]["committed"][0])  # a position step 0 decided
    jobs = {
        "no_op": ["branch", str(run_id), "--step", "2", "--json", "--db", url],
        "forced": ["branch", str(run_id), "--step", "1", "--force", "5=girl", "--temperature", "0.5", "--db", url],
        "alternatives": [
            "alternatives",
            str(run_id),
            "--step",
            "0",
            "--position",
            committed,
            "--top",
            "3",
            "--db",
            url,
        ],
    }
    for name, (extra, _) in BAD_BRANCH.items():
        copy = tmp / f"bad_{name}.db"
        copy.write_bytes(path.read_bytes())
        target = "999" if name == "missing_run" else str(run_id)
        jobs[name] = ["branch", target, *extra, "--db", f"sqlite:///{copy}"]
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {name: pool.submit(_run, args, env) for name, args in jobs.items()}
        results = {name: future.result() for name, future in futures.items()}
    runs = _run(["runs", "--db", url], env)
    return {"tmp": tmp, "url": url, "path": path, "parent": json.loads(parent.stdout), "runs": runs, **results}


def test_branch_without_edits_reproduces_the_run(branched):
    proc, parent = branched["no_op"], branched["parent"]
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["token_ids"] == parent["token_ids"]
    assert [s["step"] for s in out["steps"]] == list(range(3, 8))
    for mine, theirs in zip(out["steps"], parent["steps"][3:]):
        assert (mine["committed"], mine["tokens"]) == (theirs["committed"], theirs["tokens"])


def test_branch_with_a_forced_word(branched):
    proc = branched["forced"]
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(f"a branch of run {branched['parent']['run_id']} after step 1, 5=girl")
    assert lines[1] == "settings changed: temperature 0.0 -> 0.5"
    text = lines[3]
    assert text.startswith(PROMPT) and text.split()[len(PROMPT.split()) + 5] == "girl"
    assert [line.split()[1] for line in lines if line.startswith("step ")] == [str(s) for s in range(2, 8)]


def test_alternatives_table(branched):
    proc = branched["alternatives"]
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    position = branched["parent"]["steps"][0]["committed"][0]
    assert lines[0].startswith(f"run {branched['parent']['run_id']}, step 0, position {position} (holds ")
    rows = lines[2:]
    assert 3 <= len(rows) <= 4 and sum("(as decoded)" in row for row in rows) == 1


def test_runs_lists_each_branch_with_its_parent(branched):
    runs = branched["runs"]
    assert runs.returncode == 0, runs.stderr
    assert "branch of" in runs.stdout.splitlines()[0]
    parent = branched["parent"]["run_id"]
    rows = runs.stdout.splitlines()[1:]
    assert sum(f"{parent} @ step 2" in row for row in rows) == 1  # the no-op branch
    assert sum(f"{parent} @ step 1" in row for row in rows) == 1  # the forced one
    assert sum(f"{parent} @ step 0" in row for row in rows) >= 3  # the alternatives' runs


@pytest.mark.parametrize("case", list(BAD_BRANCH))
def test_bad_branch_is_one_error_line_and_nothing_stored(branched, case):
    proc = branched[case]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for word in BAD_BRANCH[case][1]:
        assert word in lines[0], (word, lines[0])
    assert _runs_in(branched["tmp"] / f"bad_{case}.db") == 1  # only the parent


# ---- help, choices, version ------------------------------------------------------------------------
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["decode", "branch", "alternatives", "runs", "show"])
def test_help_shows_every_default(command, capsys):
    parser = _subparsers()[command]
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    formatter = parser._get_formatter()
    with_default = 0
    for action in parser._actions:
        if not action.option_strings or action.default is argparse.SUPPRESS or action.required:
            continue  # -h, a branch's settings (they keep the parent's values, which its description says), --prompt
        if command == "alternatives" and action.dest in ("step", "position"):
            continue  # no default: give both, or --sweep
        assert "default" in formatter._expand_help(action), (command, action.option_strings)
        with_default += 1
    assert with_default >= 2
    expected = {
        "decode": ["tokens to generate (default: 64)", "(default: low_confidence)", "(default: llada)",
                   "(0, 1] (default: 0.9)", "(default: embedded)", "default: no energy"],
        "branch": ["Every decode setting defaults to the parent run's value"],
        "alternatives": ["(default: 5; 3 for --sweep)"],
        "runs": ["the most recent runs to list (default: 20)"],
        "show": ["(default: $EXPLORER_DB_URL or trajectories.db in the data dir)"],
    }  # fmt: skip
    for phrase in expected[command]:
        assert phrase in text, phrase


def test_closed_sets_of_names_are_choices():
    decode, branch = _subparsers()["decode"], _subparsers()["branch"]
    for parser in (decode, branch):
        actions = {a.dest: a for a in parser._actions}
        assert actions["strategy"].choices == list(STRATEGIES)
        assert actions["schedule"].choices == list(SCHEDULES)
    # TERM=WEIGHT cannot be a `choices` list: its type checks the term against the registry
    energy = {a.dest: a for a in decode._actions}["energy"]
    assert energy.type("uni=2") == ("uni", 2.0) and energy.type("ar") == ("ar", 1.0)
    for term in ENERGY_TERMS:
        assert energy.type(f"{term}=0.5") == (term, 0.5)
    with pytest.raises(argparse.ArgumentTypeError, match="ar, ind, inv, uni"):
        energy.type("nope=1")
    # model names are open (the operator's configuration), but the help names the built-in ones
    assert {a.dest: a for a in decode._actions}["model"].choices is None
    assert "embedded, embedded-xdlm" in {a.dest: a for a in decode._actions}["model"].help


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"python -m explorer {explorer.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", explorer.__version__)


# ---- show prints what decode printed ---------------------------------------------------------------
# name -> decode args: a plain run with violations, an XDLM run with revisions, a re-masking run with energies
SHOWN = {
    "plain": GOOD,
    "revisions": [*"decode --model embedded-xdlm --strategy xdlm_revise --prompt".split(), PROMPT,
                  *"--gen-length 32 --steps 8 --temperature 0.7 --seed 1".split()],
    "remasks_energies": [*"decode --strategy rcr --energy uni=1 --prompt".split(), PROMPT,
                         *"--gen-length 16 --steps 4 --temperature 1 --seed 3".split()],
}  # fmt: skip


@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    """Each SHOWN decode (text output, stored), then `show` of each run; name -> (decode, show)."""
    tmp = tmp_path_factory.mktemp("show")
    env = _env(tmp)
    urls = {name: _db(tmp, name)[0] for name in SHOWN}
    with ThreadPoolExecutor(WORKERS) as pool:
        decodes = dict(zip(SHOWN, pool.map(lambda n: _run([*SHOWN[n], "--db", urls[n]], env), SHOWN)))
    for name, proc in decodes.items():
        assert proc.returncode == 0, (name, proc.stderr)
    with ThreadPoolExecutor(WORKERS) as pool:
        shows = dict(zip(SHOWN, pool.map(lambda n: _run(["show", "1", "--db", urls[n]], env), SHOWN)))
    return {name: (decodes[name], shows[name]) for name in SHOWN}


def _lines(out: str, prefix: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("name", list(SHOWN))
def test_show_prints_the_step_violation_and_checker_lines_that_decode_printed(shown, name):
    decoded, show = shown[name]
    assert show.returncode == 0, show.stderr
    steps, checker = _lines(decoded.stdout, "step "), _lines(decoded.stdout, "checker: ")
    assert steps and len(checker) == 1
    assert _lines(show.stdout, "step ") == steps
    assert _lines(show.stdout, "checker: ") == checker
    notes = " ".join(steps)
    assert "violation total" in notes  # on by default for the embedded models
    if name == "revisions":
        assert re.search(r" \d+:\w+->\w+\(", notes)  # a revision, old -> new
    if name == "remasks_energies":
        assert "re-masked " in notes and "energy kept " in notes


def test_the_checker_line_counts_positions_in_the_generated_part(shown):
    decoded, _ = shown["plain"]
    lines = decoded.stdout.splitlines()
    prompt_words = PROMPT.split()
    generated = lines[0].split()[len(prompt_words) :]
    checker = _lines(decoded.stdout, "checker: ")[0].removeprefix("checker: ")
    assert checker == verdict_of(PROMPT, generated).line()
    assert checker != "valid"  # 4 tokens per step break this story (the step lines' positions are checked below)
    committed = {}  # generated position -> word, from the step lines
    for line in _lines(decoded.stdout, "step "):
        for pos, word in re.findall(r" (\d+):(\S+?)\(\d\.\d\d\)", line):
            committed[int(pos)] = word
    assert sorted(committed) == list(range(32))
    for pos in map(int, re.findall(r"@(\d+):", checker)):
        assert generated[pos] == committed[pos]  # the step lines' position system, not the whole text's


def _running_steps(path: Path) -> int:
    """Steps stored of the run still `running` in this database (0 while there is none)."""
    import sqlite3

    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            row = db.execute(
                "SELECT COUNT(*) FROM steps JOIN runs ON runs.id = steps.run_id WHERE runs.status = 'running'"
            ).fetchone()
        except sqlite3.OperationalError:  # the tables are not there yet
            return 0
    return int(row[0])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_run_as_cancelled_with_one_line(tmp_path, signum):
    url, path = _db(tmp_path, "signal")
    args = ["decode", "--prompt", PROMPT, "--gen-length", "256", "--steps", "256", "--db", url]
    proc = subprocess.Popen(
        [sys.executable, "-m", "explorer", *args],
        cwd=REPO,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT
    while _running_steps(path) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the decode ended before it could be interrupted"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signum
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"stopped by {signal.Signals(signum).name}: run "), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        status, error, n_steps = db.execute("SELECT status, error, n_steps FROM runs").fetchone()
        stored = db.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    assert status == "cancelled" and 0 < stored < 256 and n_steps == stored
    assert error is None or "KeyboardInterrupt" not in error


@pytest.mark.parametrize(
    "args, words",
    [
        (["show", "99999999999999999999"], "between 1 and"),
        (["show", "abc"], "whole number"),
        (["runs", "--limit", "-1"], "between 1 and"),
        (["runs", "--limit", "0"], "between 1 and"),
    ],
)
def test_ids_and_limits_out_of_range_are_one_error_line(tmp_path, args, words):
    proc = _run(args, _env(tmp_path))
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr
