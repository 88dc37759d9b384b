"""The UI's branching logic without a browser: a streaming branch's frame (stored prefix + live
steps), the branch step a token click picks, the settings a "continue with other settings"
branch changes, the Runs tree, the positions that differ at a step, the token view's edit marks,
the alternatives figure, and a replay-only server refusing every way to branch."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from app_server import running_app
from gradio_client import Client
from synthetic_runs import live_segments, replay_segments, span_text

from explorer.api import branch, decode
from explorer.branching.edits import Force, Remask
from explorer.decoding.callbacks import Callback
from explorer.decoding.config import DecodeConfig
from explorer.services import Services
from explorer.store.database import TrajectoryStore
from explorer.ui.branch_markup import outcome_row, outcome_table, panel_head, stored_choices
from explorer.ui.logic import branch_step_for, changed_settings, differing_at, run_tree
from explorer.views.outcomes import alternatives_figure
from explorer.views.tokens import MASK_GLYPH, render_tokens

A_AN = dict(gen_length=32, steps=4, temperature=0.7, seed=2)  # the "a/an violation" preset: 'an girl'


class PrefixAtStart(Callback):
    """What the UI does at RunStarted: read the branch's stored prefix; then keep its live steps."""

    def __init__(self, store: TrajectoryStore) -> None:
        self.store, self.prefix, self.records = store, None, []

    def on_start(self, start) -> None:
        run_id = self.store.list_runs(limit=1)[0]["id"]  # the writer (an earlier callback) made it
        self.prefix = self.store.read_arrays(run_id)

    def on_step(self, record) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('branch-ui')}/t.db")


@pytest.fixture(scope="module")
def parent(store, denoiser):
    return decode("once upon a time there was", store=store, model=denoiser, **A_AN).run_id


@pytest.mark.parametrize("edits", [(Force(1, "boy"),), (Remask(3),), ()], ids=["force", "remask", "none"])
def test_live_frame_of_a_branch_equals_the_stored_child(store, denoiser, parent, edits):
    watch = PrefixAtStart(store)
    child = branch(parent, 1, store, edits, denoiser, [watch]).run_id
    stored = store.read_arrays(child)
    assert watch.prefix.n_steps == 2 and len(watch.records) == stored.n_steps - 2  # steps 0..1 copied
    assert watch.prefix.run["id"] == child and watch.prefix.run["parent_run_id"] == parent
    # What the page's player shows while the branch streams, step by step, is the stored child.
    segments = live_segments(watch.prefix, watch.records, denoiser.token_text)
    mask = int(stored.run["mask_id"])
    for column, step in enumerate(stored.steps.tolist()):
        shown = [span_text(s) for s in replay_segments(segments, stored.gen_length, step)]
        expected = [MASK_GLYPH if t == mask else denoiser.token_text(t) for t in stored.tokens[:, column].tolist()]
        assert shown == expected, step
    if edits and isinstance(edits[0], Force):
        assert stored.forced[1] and denoiser.token_text(int(stored.tokens[1, -1])) == "boy"


def test_branch_step_for_a_click(store, parent):
    arrays = store.read_arrays(parent)
    last = arrays.n_steps - 1
    assert branch_step_for(arrays, 1, 5) == 1  # masks remain after step 1: the slider's step
    # the finished text: the step that committed the clicked token instead
    for position in (0, 6, 31):
        assert branch_step_for(arrays, last, position) == int(arrays.commit_step[position])
    assert branch_step_for(arrays, 99, 0) == int(arrays.commit_step[0])  # clamped to the run


def test_changed_settings(store, parent):
    stored = store.get_run(parent)["config"]
    same = DecodeConfig.from_json(json.dumps(stored))
    assert changed_settings(stored, same) == {}
    other = DecodeConfig.from_json(json.dumps({**stored, "strategy": "margin", "steps": 8, "ar_scorer": "x"}))
    assert changed_settings(stored, other) == {"strategy": "margin", "steps": 8}  # ar_scorer: not in the form


def test_run_tree_groups_branches_under_their_parent():
    runs = [
        {"id": 9, "parent_run_id": None},
        {"id": 8, "parent_run_id": 5},
        {"id": 7, "parent_run_id": 6},
        {"id": 6, "parent_run_id": 5},
        {"id": 5, "parent_run_id": None},
        {"id": 4, "parent_run_id": 2},  # its parent is not listed: a tree of its own
    ]
    assert [(r["id"], depth) for r, depth in run_tree(runs)] == [(9, 0), (5, 0), (6, 1), (7, 2), (8, 1), (4, 0)]
    chain = [{"id": i, "parent_run_id": i - 1 if i else None} for i in range(3000, -1, -1)]
    assert [d for _, d in run_tree(chain)][-1] == 3000  # no recursion limit


def test_differing_at_counts_from_the_branch_step(store, denoiser, parent):
    child = branch(parent, 1, store, (Force(1, "boy"),), denoiser).run_id
    a, b = store.read_arrays(parent), store.read_arrays(child)
    assert differing_at(a, b, 0, since=1) == set()  # before the branch step: one run
    assert 1 in differing_at(a, b, 1, since=1)  # the edit itself
    assert differing_at(a, b, None) == set(np.flatnonzero(a.tokens[:, -1] != b.tokens[:, -1]).tolist())


def test_token_view_marks_forced_and_remasked_positions(store, denoiser, parent):
    forced = store.read_arrays(branch(parent, 1, store, (Force(1, "boy"),), denoiser).run_id)
    out = render_tokens(forced, denoiser.token_text, None, "p")
    spans = re.findall(r'<span class="tok[^"]*"[^>]*data-tip="([^"]*)">([^<]*)</span>', out.split("tokens-legend")[0])
    assert len(spans) == forced.gen_length  # one span per position, in order (the click handler counts on it)
    span = re.search(r'<span class="tok[^"]* forced"[^>]*data-tip="([^"]*)">boy</span>', out)
    assert span and spans[1][1] == "boy", out[:800]
    assert "forced by an edit after step 1" in span.group(1)
    assert "✎ = put there" in out  # the legend explains the badge
    before = render_tokens(forced, denoiser.token_text, 0, "p")  # before the branch step: no mark
    assert " forced" not in before.split('<div class="tokens-legend">')[0]

    remasked = store.read_arrays(branch(parent, 1, store, (Remask(3),), denoiser).run_id)
    out = render_tokens(remasked, denoiser.token_text, None, "p")
    spans = re.findall(r'<span class="(tok[^"]*)"[^>]*data-tip="([^"]*)">', out.split("tokens-legend")[0])
    assert "edited" in spans[3][0] and "re-masked by an edit after step 1" in spans[3][1], spans[3]
    assert [i for i, (classes, _) in enumerate(spans) if "edited" in classes] == [3]
    assert render_tokens(remasked, denoiser.token_text, None, "p", hint="click <b>").count("click &lt;b&gt;") == 1


def test_alternatives_figure():
    rows = [
        {"token": "a", "violation_score": -0.1, "valid": True, "as_decoded": False},
        {"token": "<b>an</b>", "violation_score": -9.5, "valid": False, "as_decoded": True},
        {"token": "the", "violation_score": 0.0, "valid": None, "as_decoded": False},
    ]
    fig = alternatives_figure(rows, step=1, position=0)
    names = {t.name for t in fig.data}
    assert names == {"valid story", "checker: violations", "not checked"}
    title = fig.layout.title.text
    assert "position 0" in title and "after step 1" in title
    assert "nats" in fig.layout.yaxis.title.text and fig.layout.showlegend
    labels = [x for t in fig.data for x in t.x]
    assert "&lt;b&gt;an&lt;/b&gt; (as decoded)" in labels  # escaped for Plotly, the parent's own token named
    empty = alternatives_figure([], step=1, position=0)
    assert "Run analysis" in empty.layout.annotations[0].text


@pytest.mark.filterwarnings("ignore:::gradio.queueing")
def test_replay_only_server_refuses_to_branch(tmp_path, store, parent):
    services = Services.create(store.url, replay_only=True)
    with running_app(tmp_path, services=services) as (services, url):
        client = Client(url, verbose=False)
        runs_before = services.store.count_runs()
        for api_name, args in (
            ("/branch", (parent, 0, 0, "a", "confidence", 0)),
            ("/branch_remask", (parent, 0, 0, "confidence", 0)),
            ("/alternatives", (parent, 0, 0, 3)),
        ):
            with pytest.raises(Exception) as refused:
                client.predict(*args, api_name=api_name)
            assert "replay-only" in str(refused.value) and "cannot branch" in str(refused.value), api_name
        assert services.store.count_runs() == runs_before
        # the token view does not invite a click that cannot work
        tokens = client.predict(parent, "confidence", api_name="/open_run")[1]
        assert "branch" not in tokens.lower()


def test_panel_markup_escapes_token_text_and_lists_other_choices(store, parent):
    arrays = store.read_arrays(parent)
    position = int(np.flatnonzero(arrays.commit_step == 0)[0])
    head = panel_head(arrays, 0, position, lambda t: "<b>&", moved_from=3)
    assert "<b>&" not in head and "&lt;b&gt;&amp;" in head and "after step 0" in head
    assert "Nothing is left to decode after step 3" in head
    now = int(arrays.tokens[position, 0])
    note, choices = stored_choices(arrays, position, now, str)
    assert choices and now not in [t for t, _ in choices] and "step 0 committed" in note
    assert all(0 < p <= 1 for _, p in choices)


def test_outcome_rows_name_the_checker_kinds():
    class Outcome:  # the fields outcome_row reads
        token_text, as_decoded, prob, run_id, valid, n_violations = "a", False, 0.78, 7, False, 2
        verdict = "a_an@6: 'an' before 'girl'; syntax@8: expected a noun"
        violation_score, ar_nll, changed = -3.21, 1.5, ((0, "an", "a"),)

    row = outcome_row(Outcome())
    assert row["checker"] == "2 violation(s): a_an, syntax" and row["changed"] == "0: an → a"
    table = outcome_table([row])
    assert list(table.iloc[0])[:3] == ["a", 0.78, 7]
