"""The Compare tab: runs lined up by step or by fraction of steps (explorer/views/align.py), the
first step where they part and the two kinds of outline, the summary table (escaped), the tab
opened in-process (open_runs, as a permalink would), and over HTTP: three runs through
gradio_client, five refused."""

from __future__ import annotations

import dataclasses
import html
import json
import re

import gradio as gr
import numpy as np
import pytest
from app_server import decode_args, running_app
from gradio_client import Client

from explorer.api import branch, decode
from explorer.branching.edits import Force
from explorer.services import Services
from explorer.ui.compare import (
    COMPARED,
    SHOWN,
    VIEW,
    compare_tab,
    load_runs,
    picked_ids,
    render_view,
    run_label,
)
from explorer.ui.compare_markup import SUMMARY_COLUMNS, outline_kinds, summary_table
from explorer.ui.logic import ArraysCache
from explorer.views.align import (
    MASKED,
    aligned_steps,
    differing,
    first_divergence,
    masked_states,
    slider_values,
)

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

EVIL = "<img src=x onerror=alert(1)>"
A_AN = dict(gen_length=32, steps=4, temperature=0.7, seed=2)  # the "a/an violation" preset


# ---- alignment (pure) -------------------------------------------------------------------------------


def test_aligned_steps_by_step():
    assert aligned_steps([4, 8, 1], "step", 0) == [0, 0, 0]
    assert aligned_steps([4, 8, 1], "step", 5) == [3, 5, 0]  # a shorter run shows its last step
    assert aligned_steps([4, 8, 1], "step", 99) == [3, 7, 0]
    assert aligned_steps([4, 8, 1], "step", None) == [3, 7, 0]  # None: the end
    assert aligned_steps([4, 0], "step", 2) == [2, -1]  # no steps: before any step
    with pytest.raises(ValueError, match="unknown alignment"):
        aligned_steps([4], "percent", 1)


def test_aligned_steps_by_fraction():
    # runs of 5, 9 and 2 steps (last steps 4, 8, 1): halfway is step 2, 4 and 1 (0.5 rounds up)
    assert aligned_steps([5, 9, 2], "fraction", 0.5) == [2, 4, 1]
    assert aligned_steps([5, 9, 2], "fraction", 0.0) == [0, 0, 0]
    assert aligned_steps([5, 9, 2], "fraction", 1.0) == [4, 8, 1]
    assert aligned_steps([5, 9, 2], "fraction", 0.25) == [1, 2, 0]
    assert aligned_steps([101], "fraction", 0.29) == [29]  # 0.29 * 100 is 28.999... in floating point
    assert aligned_steps([5, 9], "fraction", 7) == [4, 8] and aligned_steps([5], "fraction", -1) == [0]
    assert aligned_steps([5, 9, 0], "fraction", None) == [4, 8, -1]


def test_slider_values():
    assert slider_values([4, 8], "step") == list(range(8))
    assert slider_values([0], "step") == [0]
    values = slider_values([4, 8], "fraction")
    assert len(values) == 101 and values[0] == 0 and values[-1] == 1 and values[50] == 0.5


def _states(columns: list[list[int]]) -> np.ndarray:
    """(S, G) states from the sequence after each step (MASKED where masked)."""
    return np.array(columns, dtype=np.int64)


def test_first_divergence_by_step():
    m = MASKED
    a = _states([[5, m, m], [5, 6, m], [5, 6, 7]])
    same_then_other = _states([[5, m, m], [5, 6, m], [5, 9, 7], [5, 9, 8]])  # parts after step 2
    first = first_divergence([a, same_then_other], "step")
    assert (first.value, first.steps, first.positions) == (2, (2, 2), (1,))
    # a shorter run shows its last state: after step 3, position 2 differs too
    assert differing([a[2], same_then_other[3]]) == {1, 2}
    at_once = _states([[4, m, m], [4, 6, m], [4, 6, 7]])
    assert first_divergence([a, at_once], "step").value == 0  # differ from step 0 on
    assert first_divergence([a, a.copy()], "step") is None  # the same run twice
    # masks count: a token against a mask differs
    later = _states([[m, m, m], [5, 6, m], [5, 6, 7]])
    assert first_divergence([a, later], "step").positions == (0,)
    # lengths differ: the tail differs from the start
    assert first_divergence([a, _states([[5, m], [5, 6]])], "step").positions == (2,)
    # three runs: a position differs when any run differs
    assert first_divergence([a, a.copy(), same_then_other], "step").value == 2


def test_first_divergence_by_fraction():
    m = MASKED
    # the same text decoded in 2 and in 4 steps: half of it after the first half of the steps
    fast = _states([[1, 2, m, m], [1, 2, 3, 4]])
    slow = _states([[1, m, m, m], [1, 2, m, m], [1, 2, 3, m], [1, 2, 3, 4]])
    first = first_divergence([fast, slow], "fraction")
    assert first.value == 0 and first.steps == (0, 0) and first.positions == (1,)  # at 0%: 2 tokens against 1
    aligned = _states([[1, 2, m, m], [1, 2, 3, m], [1, 2, 3, 4]])  # 3 steps: 0%, 50%, 100%
    two = _states([[1, 2, m, m], [1, 2, 3, 4]])
    # by step they part after step 1 (4 tokens against 3: position 3); by fraction at 25%, where the
    # 3-step run is after its step 1 (0.25 x 2 = 0.5 rounds up) and the 2-step run still after its step 0
    by_step = first_divergence([two, aligned], "step")
    assert (by_step.value, by_step.steps, by_step.positions) == (1, (1, 1), (3,))
    by_fraction = first_divergence([two, aligned], "fraction")
    assert (by_fraction.value, by_fraction.steps, by_fraction.positions) == (0.25, (0, 1), (2,))


def test_masked_states_use_each_runs_mask_id():
    tokens = np.array([[7, 7], [9, 3]], dtype=np.int32)  # (G, S): position 0 masked (7) throughout
    assert masked_states(tokens, 7).tolist() == [[MASKED, 9], [MASKED, 3]]


# ---- real runs in a store (no server) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay(tmp_path_factory, denoiser):
    """A replay-only Services over a store holding: the a/an preset run, its branch after step 1
    (position 1 forced to 'boy'), and a run on another prompt."""
    url = f"sqlite:///{tmp_path_factory.mktemp('compare')}/c.db"
    services = Services.create(url, replay_only=True)
    parent = decode("once upon a time there was", store=services.store, model=denoiser, **A_AN).run_id
    child = branch(parent, 1, services.store, (Force(1, "boy"),), denoiser).run_id
    other = decode("the brave cat", store=services.store, model=denoiser, **A_AN).run_id
    return services, ArraysCache(services), {"parent": parent, "child": child, "other": other}


def _line(view) -> str:
    value = view.value if isinstance(view, gr.HTML) else view
    return value.split('<div class="tokens-legend">')[0]


def _classes(view) -> list[set[str]]:
    """Each position's classes, in order."""
    return [set(c.split()) for c in re.findall(r'<span class="(tok[^"]*)"', _line(view))]


def test_a_branch_parts_from_its_parent_at_its_branch_step(replay):
    services, cache, ids = replay
    runs = load_runs(cache, [ids["parent"], ids["child"]])
    states = [masked_states(r.tokens, r.run["mask_id"]) for r in runs]
    first = first_divergence(states, "step")
    assert first.value == 1 and 1 in first.positions  # the edit after step 1
    before = render_view(services, runs, "confidence", "step", 0)
    assert not any("diff" in c for view in (before["tokens_a"], before["tokens_b"]) for c in _classes(view))
    assert "The runs agree up to step 0; they first differ after step 1" in before["note"]
    assert "0 position(s) differ after step 0" in before["note"]
    assert f"is a branch of run #{ids['parent']} after step 1" in before["note"]
    at = render_view(services, runs, "confidence", "step", 1)
    classes = _classes(at["tokens_b"])
    assert {"diff", "diff-first"} <= classes[1]
    assert all("diff-later" not in c for c in classes)  # at the divergence every difference is a first one
    tip = re.findall(r'<span class="tok[^"]*diff-first[^"]*"[^>]*data-tip="([^"]*)"', _line(at["tokens_b"]))[0]
    assert "already differed where the runs first parted (after step 1)" in html.unescape(tip)
    end = render_view(services, runs, "confidence", "step", None)
    firsts = sum("diff-first" in c for c in _classes(end["tokens_a"]))
    laters = sum("diff-later" in c for c in _classes(end["tokens_a"]))
    assert firsts >= 1 and firsts + laters == sum("diff" in c for c in _classes(end["tokens_a"]))
    assert f"{firsts} where the runs first parted, {laters} later" in end["note"]
    # hidden past the runs picked
    assert end["tokens_c"].visible is False and end["heat_d"].visible is False
    assert end["heat_a"].visible is True and "Run B" in end["heat_b"].label


def test_runs_that_differ_at_once_outline_their_first_differences_apart(replay):
    services, cache, ids = replay
    runs = load_runs(cache, [ids["parent"], ids["other"]])
    start = render_view(services, runs, "entropy", "step", 0)
    assert "The runs differ from their first step on: after step 0 they differ at positions " in start["note"]
    assert "Their prompts differ" in start["note"]
    first = {i for i, c in enumerate(_classes(start["tokens_a"])) if "diff-first" in c}
    assert first and not any("diff-later" in c for c in _classes(start["tokens_a"]))
    end = render_view(services, runs, "entropy", "step", None)
    classes = _classes(end["tokens_b"])
    # at the end: the first differences keep their class wherever they still differ; the rest are later ones
    for i, c in enumerate(classes):
        if "diff" in c:
            assert ("diff-first" in c) == (i in first) and ("diff-later" in c) == (i not in first)
    assert any("diff-later" in c for c in classes)
    # by fraction, the same two runs (4 steps each) at 100%
    frac = render_view(services, runs, "entropy", "fraction", 100)
    assert "at 100% of each run's steps (A after step 3, B after step 3)" in frac["note"]


def test_outline_kinds_leaves_other_spans_alone():
    view = (
        '<div class="tokens-view"><div class="tokens-line"><span class="prompt">p</span> '
        '<span class="tok diff" data-tip="x · differs between the runs here">a</span> '
        '<span class="tok" data-tip="y">b</span> <span class="tok masked diff" data-tip="differs between the runs '
        'here">▒</span></div><div class="tokens-legend"><span class="tok diff">legend</span></div></div>'
    )
    out = outline_kinds(view, {0}, "first <label>")
    assert '<span class="tok diff diff-first" data-tip="x · first &lt;label&gt;">a</span>' in out
    assert '<span class="tok" data-tip="y">b</span>' in out
    assert '<span class="tok masked diff diff-later" data-tip="differs between the runs here">' in out
    assert out.endswith('<div class="tokens-legend"><span class="tok diff">legend</span></div></div>')


def test_summary_table_escapes_a_hostile_prompt(replay):
    services, cache, ids = replay
    runs = load_runs(cache, [ids["parent"], ids["child"]])
    config = {**runs[1].run["config"], "energies": [[EVIL, 1.0]]}
    evil = dataclasses.replace(runs[1], run={**runs[1].run, "prompt": EVIL, "strategy": EVIL, "config": config})
    table = summary_table(services, [runs[0], evil])
    assert "<img" not in table and html.escape(EVIL) in table
    assert table.count("<tr>") == 3  # the header and one row per run
    assert all(row.count("<td") == len(SUMMARY_COLUMNS) - 1 for row in table.split("<tr>")[2:])
    assert f'<td class="prompt">{html.escape(EVIL)}</td>' in table
    for column in ("checker", "checker violations", "AR-ness τ", "forward passes", "wall time", "Σ S < 0 (nats)"):
        assert f"<th>{html.escape(column)}</th>" in table, column
    row_a = table.split("<tr>")[2]
    assert f"<td>{ids['parent']}</td>" in row_a and "<td>embedded</td>" in row_a and "<td>0.7</td><td>2</td>" in row_a
    assert re.search(r"<td>\d+\.\d\d s</td>", row_a)  # created -> finished, as stored
    # the checker's verdict on the a/an preset: its violation, at the generated position it blames
    cell = r'<td class="checker" title="a_an@0: [^"]*">(\d+) violation\(s\): a_an[^<]* at 0\b[^<]*</td><td>(\d+)</td>'
    verdict = re.search(cell, row_a)
    assert verdict and verdict.group(1) == verdict.group(2), row_a
    view = render_view(services, [runs[0], evil], "confidence", "step", None)
    assert "<img" not in view["tokens_b"].value and "<img" not in view["note"]


def test_run_labels_and_picked_ids(replay):
    services, _cache, ids = replay
    label = run_label(services.store.get_run(ids["child"]))
    assert label.startswith(f"#{ids['child']} · embedded · low_confidence · 32 tok / ")
    assert f"T 0.7 · seed 2 · branch of #{ids['parent']} after step 1 · once upon a time there was… " in label
    assert picked_ids([3, "12", "#7 · margin", 3.0]) == [3, 12, 7]
    with pytest.raises(gr.Error, match="is not a run"):
        picked_ids(["margin"])


def test_open_runs_sets_every_permalink_output(replay):
    services, cache, ids = replay
    with gr.Blocks():
        tab = compare_tab(services, cache)
    assert len(tab.permalink_outputs()) == len(SHOWN) and SHOWN[-len(COMPARED) :] == COMPARED
    shown = tab.open_runs([ids["parent"], ids["child"], ids["other"]], "entropy")
    assert set(shown) == set(tab.permalink_outputs())
    values = {name: shown[tab.components[name]] for name in SHOWN}
    assert values["runs"].value == [ids["parent"], ids["child"], ids["other"]]
    assert values["align"] == "step" and values["metric"] == "entropy"
    assert values["step"].value == values["step"].maximum == 3
    assert values["tokens_c"].visible and not values["tokens_d"].visible
    by_fraction = tab.open_runs([ids["parent"], ids["child"]], "confidence", "fraction", 50)
    assert by_fraction[tab.components["step"]].value == 50
    assert "at 50% of each run's steps" in by_fraction[tab.components["note"]]
    pair = tab.branch_pair(ids["child"], "confidence")
    assert pair[tab.components["runs"]].value == [ids["parent"], ids["child"]]
    with pytest.raises(gr.Error, match="is not a branch"):
        tab.branch_pair(ids["parent"], "confidence")
    # opening the tab: the Decode tab's run becomes run A when none is picked
    assert tab.on_open(ids["other"], []).value == [ids["other"]]
    assert tab.on_open(ids["other"], [ids["parent"]]).value == [ids["parent"]]


def test_refuses_five_runs_and_one(replay):
    _services, cache, ids = replay
    with pytest.raises(gr.Error, match=r"compare at most 4 runs at once: 5 are picked \(#1, #2, #3, #4, #5\)"):
        load_runs(cache, [1, 2, 3, 4, 5])
    with pytest.raises(gr.Error, match=r"pick two to 4 runs .*only run #\d+ is picked"):
        load_runs(cache, [ids["parent"]])
    with pytest.raises(gr.Error, match=r"there is no run with id 987654 \(run B\)"):
        load_runs(cache, [ids["parent"], 987654])


# ---- over HTTP: the real app ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("compare-ui")) as (services, url):
        yield services, url


def test_three_runs_through_the_api(server):
    _services, url = server
    client = Client(url, verbose=False)
    ids = [
        int(re.search(r"run (\d+) · completed", client.predict(*decode_args(**kw), api_name="/decode")[0]).group(1))
        for kw in (
            dict(prompt="once upon a time", strategy="low_confidence", seed=1),
            dict(prompt="once upon a time", strategy="margin", seed=1),
            dict(prompt="once upon a time", strategy="low_confidence", seed=1, steps=16),
        )
    ]
    outputs = client.predict(ids, "step", "entropy", api_name="/compare")
    assert len(outputs) == len(COMPARED)
    out = dict(zip(COMPARED, outputs))
    assert out["step"]["maximum"] == 15 and out["step"]["value"] == 15
    assert out["summary"].count("<tr>") == 4 and all(f"<td>{i}</td>" in out["summary"] for i in ids)
    assert "position(s) differ after step 15 (a run with fewer steps shows its last state)" in out["note"]
    tokens = [out[f"tokens_{x}"] for x in "abcd"]
    assert [t["visible"] for t in tokens] == [True, True, True, False]
    assert all(f"#{i} · embedded" in t["value"] for i, t in zip(ids, tokens))
    heats = [out[f"heat_{x}"] for x in "abcd"]
    assert [h["visible"] for h in heats] == [True, True, True, False]
    traces = [json.loads(h["value"]["plot"])["data"][0] for h in heats[:3]]
    assert traces[0]["zmax"] == traces[1]["zmax"] == traces[2]["zmax"]  # one colour scale for all three

    # by fraction: the slider in percent (a session's slider keeps the bounds /compare gave it)
    by_fraction = dict(zip(COMPARED, client.predict(ids, "fraction", "entropy", api_name="/compare")))
    assert by_fraction["step"]["maximum"] == 100 and by_fraction["step"]["value"] == 100
    assert "at 100% of each run's steps (A after step 7, B after step 7, C after step 15)" in by_fraction["note"]
    # the shared slider, by fraction: halfway is step 4 of the 8-step runs (3.5 rounds up) and step 8 of the 16-step one
    step_out = dict(zip(VIEW, client.predict(ids, "fraction", "entropy", 50, api_name="/compare_step")))
    assert "at 50% of each run's steps (A after step 4, B after step 4, C after step 8)" in step_out["note"]
    assert "after step 8 of 0–15" in step_out["tokens_c"]["value"]

    with pytest.raises(Exception) as refused:
        client.predict([*ids, ids[0] + 100, ids[0] + 101], "step", "entropy", api_name="/compare")
    assert "compare at most 4 runs at once: 5 are picked" in str(refused.value)
    with pytest.raises(Exception) as refused:
        client.predict(ids[:1], "step", "entropy", api_name="/compare")
    assert "pick two to 4 runs" in str(refused.value)
