"""What a run cost, as the Decode view's speed panel, Compare's summary table and the CLI say it
(calls per token, sequences per token, ms per token, the violation pass apart; "not recorded" for
runs stored before costs were counted), and a gated run's step line (what a step proposed and kept)
in the token view and the player's data. Direct view-function tests on runs the embedded model
decodes into a SQLite file."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select, update

from explorer.adapters.loading import describe_model
from explorer.api import decode
from explorer.cli import main
from explorer.decoding.gates import GateRecord
from explorer.services import Services
from explorer.store.database import Step, TrajectoryStore
from explorer.ui.compare_markup import SUMMARY_COLUMNS, summary_table
from explorer.ui.logic import token_text_for
from explorer.ui.view import render_view, speed_panel
from explorer.views.player import stored_payload
from explorer.views.speed import NOT_RECORDED, speed_of
from explorer.views.tokens import gate_line, gate_text

PROMPT = "Once upon a time"
EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def db(tmp_path_factory, denoiser):
    """{name: run id} in a SQLite file: a lookahead run (violations measured), a plain run, and a
    copy of the plain run's kind stored the old way (its steps' `cost` extras removed)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('costs')}/runs.db"
    store = TrajectoryStore(url)
    ids = {
        "lookahead": decode(
            PROMPT, denoiser, store=store, strategy="lookahead", gen_length=32, steps=32, violations=True
        ).run_id,
        "plain": decode(PROMPT, denoiser, store=store, gen_length=16, steps=16).run_id,
        "old": decode(PROMPT, denoiser, store=store, gen_length=16, steps=4, violations=True).run_id,
    }
    with store.session() as s, s.begin():
        rows = s.execute(select(Step.step, Step.extras).where(Step.run_id == ids["old"])).all()
        for step, extras in rows:
            old = {k: v for k, v in (extras or {}).items() if k != "cost"}
            s.execute(update(Step).where(Step.run_id == ids["old"], Step.step == step).values(extras=old or None))
    store.engine.dispose()
    return url, ids


@pytest.fixture(scope="module")
def services(db):
    store = TrajectoryStore(db[0])
    yield Services(store, object(), {"embedded": describe_model("embedded")})
    store.engine.dispose()


def _panel(services, run_id: int) -> dict[str, str]:
    """The speed panel's cells, {label: value} (unescaped)."""
    out = speed_panel(services, services.store.read_arrays(run_id))
    values = re.findall(r'<div class="speed-value">(.*?)</div><div class="speed-label">(.*?)</div>', out)
    return {html.unescape(label): html.unescape(value) for value, label in values}


def test_speed_panel_of_a_lookahead_run(services, db):
    cells = _panel(services, db[1]["lookahead"])
    calls = float(cells["model calls per token"])
    assert 0 < calls < 1  # several tokens per batched call
    assert float(cells["sequences per token (decoding)"]) >= calls
    assert float(cells["ms per token (decoding)"]) > 0
    assert re.fullmatch(r"\d+ calls, \d+ sequences, \d+ ms", cells["violation pass (measuring)"])
    for label in ("wall time", "ms per step", "tokens per second", "forward passes per token", "forward passes"):
        assert cells[label] != "n/a", label  # the earlier cells still there
    # The panel's numbers are the steps' cost extras summed, per generated token.
    arrays = services.store.read_arrays(db[1]["lookahead"])
    calls_total = sum(e.cost.calls for e in arrays.extras)
    tokens = sum(1 for t in arrays.run["final_token_ids"] if t != arrays.run["mask_id"])
    assert calls == pytest.approx(calls_total / tokens, abs=0.005)


def test_speed_panel_of_a_plain_run(services, db):
    cells = _panel(services, db[1]["plain"])
    assert float(cells["model calls per token"]) == pytest.approx(1.0)  # one token, one call per step
    assert cells["violation pass (measuring)"] == "none"
    assert "incl." not in cells["ms per token (decoding)"]


def test_speed_panel_of_a_run_stored_before_costs(services, db):
    """No cost extras: what can be known (forward passes, the steps' time) and 'not recorded' for the rest."""
    cells = _panel(services, db[1]["old"])
    assert cells["model calls per token"] == NOT_RECORDED
    assert cells["sequences per token (decoding)"] == NOT_RECORDED
    assert cells["violation pass (measuring)"] == NOT_RECORDED
    assert cells["ms per token (decoding)"].endswith("(incl. measuring)")  # its violation pass was not timed apart
    assert int(cells["forward passes"]) == services.store.forward_passes(db[1]["old"]) > 0
    assert float(cells["forward passes per token"]) > 0


def test_speed_without_extras_says_not_recorded():
    """speed_of without the steps' extras (an older caller): nothing is estimated."""
    run = {"final_token_ids": [5, 6, 7, 1], "mask_id": 1, "device": "cpu"}
    speed = speed_of(run, [{"seconds": 0.5}], forward_passes=3)
    calls, sequences, ms, measuring = speed.cost_texts()
    assert (calls, sequences, measuring) == (NOT_RECORDED,) * 3
    assert ms == "166.7 (incl. any measuring)"
    assert "model calls/token not recorded" in speed.cost_line()


def test_compare_table_shows_calls_and_sequences_per_token(services, db):
    runs = [services.store.read_arrays(db[1][name]) for name in ("lookahead", "old")]
    table = summary_table(services, runs)
    assert "calls / token" in SUMMARY_COLUMNS and "sequences / token" in SUMMARY_COLUMNS
    rows = table.split("<tr>")[2:]
    assert all(row.count("<td") == len(SUMMARY_COLUMNS) - 1 for row in rows)
    at = SUMMARY_COLUMNS.index("calls / token") - 1  # the first column is the row's letter (a th)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    assert 0 < float(cells[0][at]) < 1 and float(cells[0][at + 1]) > 0
    assert cells[1][at] == cells[1][at + 1] == NOT_RECORDED


def test_gate_line_in_the_token_view(services, db):
    arrays = services.store.read_arrays(db[1]["lookahead"])
    token_text = token_text_for(services, arrays)
    gated = [(int(s), e.gate) for s, e in zip(arrays.steps.tolist(), arrays.extras) if e.gate is not None]
    assert gated
    step, gate = next((s, g) for s, g in gated if not all(g.accepted))  # a step that rejected some
    tokens = render_view(services, arrays, step, "confidence", None)["tokens"]
    line = re.search(r'<div class="gate-line">(.*?)</div>', tokens).group(1)
    text = html.unescape(line)
    assert text.startswith(f"lookahead gate · step {step}: proposed {len(gate.proposed)}, kept {gate.n_accepted}")
    first = gate.accepted.index(False)
    named = f"position {gate.proposed[first]} '{token_text(gate.tokens[first])}' ("
    assert "; rejected " + named in text and ("nats" in text or "flip" in text)
    # The player's data carries every gated step's line, so the page's player shows the step it replays.
    payload = stored_payload(arrays, token_text)
    assert set(payload["gates"]) == {str(s) for s, _ in gated}
    assert payload["gates"][str(step)] == line
    # A run of another strategy has no gate line.
    plain = services.store.read_arrays(db[1]["plain"])
    assert "gate-line" not in render_view(services, plain, None, "confidence", None)["tokens"]
    assert "gates" not in stored_payload(plain, token_text_for(services, plain))


def test_gate_line_is_escaped(services, db):
    arrays = services.store.read_arrays(db[1]["lookahead"])
    step = int(next(s for s, e in zip(arrays.steps.tolist(), arrays.extras) if e.gate is not None))
    out = gate_line(arrays, step, lambda token: EVIL)
    assert "<img" not in out and html.escape(EVIL, quote=True) in out


def test_gate_text_of_each_rule():
    drop = GateRecord("drop", [3, 12, 14], [1, 2, 3], [True, False, False], [0.0, 2.345, 0.1], [False, False, True])
    text = gate_text(drop, 5, lambda token: "ab"[token % 2])
    assert text == (
        "lookahead gate · step 5: proposed 3, kept 1; rejected position 12 'a' (drop 2.35 nats); "
        "after it in proposal order position 14 'b' (drop 0.10 nats, flip)"
    )
    pairwise = GateRecord("pairwise", [1, 2], [7, 8], [True, False], [0.0, -3.5], [False, False], reused=True)
    text = gate_text(pairwise, 0, str)
    assert "rejected position 2 '8' (S -3.50 nats against a kept token)" in text and "reused" in text
    kept_all = GateRecord("energy", [1, 2], [7, 8], [True, True], [0.0, 0.2], [False, False])
    assert gate_text(kept_all, 2, str) == "energy gate · step 2: proposed 2, kept 2"


def test_cli_show_prints_the_three_costs(db, capsys):
    url, ids = db
    assert main(["show", str(ids["lookahead"]), "--db", url]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("cost:"))
    calls = float(re.search(r"model calls/token ([\d.]+)", line).group(1))
    assert 0 < calls < 1
    assert re.search(r"sequences/token \(decoding\) [\d.]+", line) and re.search(r"ms/token [\d.]+ on \S+", line)
    assert re.search(r"violation pass \(measuring\): \d+ calls, \d+ sequences, \d+ ms", line)
    assert main(["show", str(ids["old"]), "--db", url]) == 0
    old = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("cost:"))
    assert "model calls/token not recorded" in old and "sequences/token (decoding) not recorded" in old
    assert "violation pass (measuring): not recorded" in old and "forward passes" in old


def test_cli_decode_prints_the_three_costs(capsys):
    args = [
        "decode",
        "--prompt",
        PROMPT,
        "--strategy",
        "lookahead",
        "--gen-length",
        "16",
        "--no-store",
        "--no-violations",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("cost:"))
    assert 0 < float(re.search(r"model calls/token ([\d.]+)", line).group(1)) < 1
    assert "sequences/token (decoding)" in line and "ms/token" in line and "violation pass (measuring): none" in line
    assert "gate kept" in out  # the step lines say what each gated step kept
