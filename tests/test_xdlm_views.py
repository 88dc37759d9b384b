"""Revisions (XDLM: a visible token changed into another) in the views: the token view's ⇄ badge
and history at every step, the changes map (unmask / revise / re-mask), the commit-order map and
the tokens-per-step bars by last change, a streaming branch keeping its revisions, the summary,
the strategy form's XDLM knobs; then the same on a real embedded-xdlm decode."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
from synthetic_runs import live_segments, replay_segments, span_text

from explorer.decoding.records import StepRecord
from explorer.store.arrays import RunArrays
from explorer.store.database import TrajectoryStore
from explorer.ui.controls import visible_knobs
from explorer.ui.logic import model_note, summarise
from explorer.views import figures as plots
from explorer.views.changes import EDIT, REMASK, REVISE, UNMASK, block_max, change_grid, revision_history
from explorer.views.metrics import arness
from explorer.views.tokens import MASK_GLYPH, render_tokens

MASK = 1
EVIL = "<img src=x onerror=alert(1)>"


def words(token_id: int) -> str:
    return f"w{token_id}"


def evil(token_id: int) -> str:
    return EVIL if token_id == 21 else f"w{token_id}"


def record(step: int, commits, remasked=(), G: int = 5) -> StepRecord:
    """One step: commits as (position, token, p, revised), then re-masks as (position, token)."""
    n = len(commits)
    position, token, prob, revised = (list(column) for column in zip(*commits)) if commits else ([], [], [], [])
    return StepRecord(
        step=step,
        block=0,
        committed=np.array(position, np.int64),
        tokens=np.array(token, np.int64),
        probs=np.array(prob, np.float32),
        top_ids=np.array([[t, 2, 3] for t in token], np.int64).reshape(n, 3),
        top_probs=np.tile(np.array([0.6, 0.3, 0.1], np.float32), (n, 1)),
        argmax=np.zeros(G, np.int32),
        confidence=np.full(G, 0.5, np.float32),
        entropy=np.ones(G, np.float32),
        margin=np.full(G, 0.2, np.float32),
        masked_before=G,
        seconds=0.0,
        remasked=np.array([p for p, _ in remasked], np.int64),
        remasked_tokens=np.array([t for _, t in remasked], np.int64),
        remasked_probs=np.full(len(remasked), 0.4, np.float32),
        revised=np.array(revised, bool),
    )


# 5 positions, 4 steps. Position 0: 10 (step 0, p .5) -> 20 (step 1, p .7) -> 21 (step 2, p .8).
# Position 1: 11 (step 0), re-masked at step 2, 16 at step 3. Position 4: 14 at step 1, revised to
# 24 at step 3 (p .9).
RECORDS = [
    record(0, [(0, 10, 0.5, False), (1, 11, 0.4, False)]),
    record(1, [(0, 20, 0.7, True), (2, 12, 0.6, False), (4, 14, 0.3, False)]),
    record(2, [(0, 21, 0.8, True), (3, 13, 0.5, False)], remasked=[(1, 11)]),
    record(3, [(1, 16, 0.6, False), (4, 24, 0.9, True)]),
]


@pytest.fixture(scope="module")
def run() -> RunArrays:
    return RunArrays.from_records({"gen_length": 5, "mask_id": MASK, "id": 3, "model": "embedded-xdlm"}, RECORDS)


def _line(fragment: str) -> str:
    return fragment.split('<div class="tokens-legend">')[0]


def _spans(fragment: str) -> list[str]:
    return re.findall(r'<span class="tok[^"]*"[^>]*>.*?</span>', _line(fragment))


def _tip(span: str) -> str:
    return html.unescape(re.search(r'data-tip="([^"]*)"', span).group(1))


def _classes(span: str) -> list[str]:
    return re.match(r'<span class="([^"]*)"', span).group(1).split()


def _shown(span: str) -> str:
    """What a span shows: its token text, or the mask glyph."""
    return MASK_GLYPH if "masked" in _classes(span) else _text(span)


def _text(span: str) -> str:
    return html.unescape(re.search(r">([^<]*)</span>$", span).group(1))


# ---- arrays and history ----------------------------------------------------------------------------


def test_commit_step_is_the_last_change(run):
    assert run.commit_step.tolist() == [2, 3, 1, 2, 3]
    assert run.tokens[:, -1].tolist() == [21, 16, 12, 13, 24]
    history = revision_history(run)
    assert sorted(history) == [0, 4]
    first, second = history[0]
    assert (first.step, first.old, first.new, first.old_prob, first.new_prob) == pytest.approx((1, 10, 20, 0.5, 0.7))
    assert (second.step, second.old, second.new, second.old_prob) == pytest.approx((2, 20, 21, 0.7))
    assert [r.step for r in revision_history(run, step=1)[0]] == [1]  # up to a step only
    assert 4 not in revision_history(run, step=2)


# ---- token view ------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_scrubbing_shows_exactly_the_tokens_after_each_step(run, step):
    spans = _spans(render_tokens(run, words, step, prompt_text="p"))
    shown = [_shown(s) for s in spans]
    expected = [MASK_GLYPH if t == MASK else words(t) for t in run.tokens[:, step].tolist()]
    assert shown == expected


def test_revision_badge_counts_the_changes_up_to_the_step(run):
    badges = {
        step: [re.search(r'data-revisions="(\d+)"', s) for s in _spans(render_tokens(run, words, step, "p"))]
        for step in range(4)
    }
    counts = {step: [int(m.group(1)) if m else 0 for m in found] for step, found in badges.items()}
    assert counts == {0: [0, 0, 0, 0, 0], 1: [1, 0, 0, 0, 0], 2: [2, 0, 0, 0, 0], 3: [2, 0, 0, 0, 1]}


def test_revised_token_tooltip_tells_its_history(run):
    spans = _spans(render_tokens(run, words, None, "p"))
    tip = _tip(spans[0])
    head, *history = tip.split("\n")
    assert head == "position 0 · revised at step 2 · p = 0.80 · top-3: w21 0.60, w2 0.30, w3 0.10"
    assert history == [
        "⇄ revised 2×:",
        "step 1: 'w10' (p 0.50 when committed) → 'w20' (p 0.70)",
        "step 2: 'w20' (p 0.70 when committed) → 'w21' (p 0.80)",
    ]
    # scrubbed to step 1: the token of that step, its own p, and what comes next
    tip_1 = _tip(_spans(render_tokens(run, words, 1, "p"))[0])
    assert tip_1.startswith("position 0 · revised at step 1 · revised later (step 2) · p = 0.70")
    assert tip_1.endswith("step 1: 'w10' (p 0.50 when committed) → 'w20' (p 0.70)")
    # the revision outlines the token at its step, and the legend explains the badge
    out = render_tokens(run, words, 1, "p")
    assert _spans(out)[0].startswith('<span class="tok just revised"')
    legend = out.split('<div class="tokens-legend">')[1]
    assert "⇄ = revised" in legend and "committed (or revised) at step 1" in legend
    at_0 = render_tokens(run, words, 0, "p")  # nothing revised yet: no badge, no legend entry
    assert "data-revisions" not in at_0 and "⇄" not in at_0 and "revised later (step 1)" in _tip(_spans(at_0)[0])


def test_history_is_escaped(run):
    out = render_tokens(run, evil, None, prompt_text=EVIL)
    assert "<img" not in out
    assert html.escape(f"→ '{EVIL}' (p 0.80)", quote=True) in out
    for value in re.findall(r'data-tip="([^"]*)"', out):
        assert "<" not in value and ">" not in value


# ---- figures ---------------------------------------------------------------------------------------


def test_change_grid_has_one_code_per_event(run):
    grid = change_grid(run)
    expected = np.zeros((5, 4), np.int8)
    expected[0] = [UNMASK.code, REVISE.code, REVISE.code, 0]
    expected[1] = [UNMASK.code, 0, REMASK.code, UNMASK.code]
    expected[2, 1] = expected[3, 2] = expected[4, 1] = UNMASK.code
    expected[4, 3] = REVISE.code
    np.testing.assert_array_equal(grid, expected)


def test_changes_map_is_titled_labelled_and_has_a_legend(run):
    fig = plots.changes_map(run, step=2, token_text=evil)
    heat = fig.data[0]
    z = np.asarray(heat.z, dtype=np.float64)
    np.testing.assert_array_equal(np.nan_to_num(z), change_grid(run))
    assert "What changed where: unmask, revise, re-mask" in fig.layout.title.text
    assert (
        fig.layout.xaxis.title.text == "decoding step" and fig.layout.yaxis.title.text == "position in generated text"
    )
    assert fig.layout.showlegend and not heat.showscale
    legend = {trace.name: trace.marker.color for trace in fig.data[1:]}
    assert legend == {"unmask (6)": UNMASK.colour, "revise (3)": REVISE.colour, "re-mask (1)": REMASK.colour}
    assert len({UNMASK.colour, REVISE.colour, REMASK.colour, EDIT.colour}) == 4
    # each code is drawn in its kind's colour: z = c sits at (c - zmin) / (zmax - zmin) of the scale
    for kind in (UNMASK, REVISE, REMASK, EDIT):
        at = (kind.code - heat.zmin) / (heat.zmax - heat.zmin)
        assert [colour for stop, colour in heat.colorscale if stop <= at][-1] == kind.colour, kind
    # the hover names the tokens, escaped for Plotly
    hover = np.asarray(heat.customdata, dtype=object)
    assert hover[0, 2] == "revised 'w20' (p 0.70 when committed) → '&lt;img src=x onerror=alert(1)&gt;' (p 0.80)"
    assert hover[1, 2] == "re-masked: took away 'w11'" and hover[0, 3] == ""
    assert "<img" not in fig.to_json()
    assert [s.x0 for s in fig.layout.shapes if s.x0 == s.x1] == [2]  # the selected step


def test_changes_map_downsamples_and_says_so():
    records = [record(s, [(s, 10 + s, 0.5, False)], G=300) for s in range(300)]
    big = RunArrays.from_records({"gen_length": 300, "mask_id": MASK}, records)
    fig = plots.changes_map(big, max_positions=100, max_steps=100)
    assert np.asarray(fig.data[0].z).shape == (100, 100)
    assert "downsampled for display: each cell = the most telling change of 3 positions x 3 steps" in _title(fig)
    assert plots.figure_payload_bytes(fig) < 1_000_000
    grid = np.array([[0, 1, 0], [4, 0, 3]], np.int8)
    np.testing.assert_array_equal(block_max(grid, 2, 2), [[4, 3]])


def _title(fig) -> str:
    return fig.layout.title.text


def test_commit_order_and_arness_use_the_last_change(run):
    fig = plots.commit_order_map(run)
    scatter = fig.data[0]
    np.testing.assert_array_equal(np.asarray(scatter.x), run.commit_step)
    assert f"τ = {arness(run.commit_step):+.2f}" in _title(fig)
    assert "last change" in _title(fig) and "last revision" in _title(fig)
    assert "last changed at step %{x}" in scatter.hovertemplate and "revised %{customdata[1]}×" in scatter.hovertemplate
    rings = list(scatter.marker.line.color)
    assert [c == REVISE.colour for c in rings] == [True, False, False, False, True]


def test_tokens_per_step_stacks_the_revisions(run):
    fig = plots.tokens_per_step(run)
    by_name = {trace.name: np.asarray(trace.y) for trace in fig.data}
    np.testing.assert_array_equal(by_name["revised"], [0, 1, 1, 1])
    np.testing.assert_array_equal(by_name["committed"], [2, 2, 1, 1])
    np.testing.assert_array_equal(by_name["re-masked"], [0, 0, -1, 0])
    assert "3 revisions (purple, on top)" in _title(fig)


# ---- UI logic ------------------------------------------------------------------------------------


def test_a_streaming_branch_keeps_its_revisions(run):
    prefix = RunArrays.from_records(run.run, RECORDS[:2])
    segments = live_segments(prefix, RECORDS[2:], words)
    mask = int(run.run["mask_id"])
    for column, step in enumerate(run.steps.tolist()):
        shown = replay_segments(segments, run.gen_length, step)
        assert [span_text(s) for s in shown] == [
            MASK_GLYPH if t == mask else words(t) for t in run.tokens[:, column].tolist()
        ]
        # a revision is marked as one in the live view too
        revised = {int(p) for p in run.commits.position[run.commits.revised & (run.commits.step == step)]}
        assert all(" revised" in shown[p] for p in revised)


def test_summary_counts_revisions_and_checks_the_xdlm_grammar(run):
    summary = summarise(run, "once upon a time there was a girl named lily .", "embedded-xdlm")
    assert summary.revisions == 3 and "3 revisions" in summary.line()
    assert summary.verdict is not None  # the grammar checker judges the embedded XDLM's text too


def test_the_model_note_is_escaped_text():
    class Spec:
        description = "story-grammar XDLM (k = 0.1; xdlm_* strategies) <img src=x>"

    assert model_note(Spec) == r"story-grammar XDLM (k = 0.1; xdlm\_\* strategies) &lt;img src=x&gt;"
    assert model_note(None) == ""


def test_the_form_shows_the_xdlm_knobs_only_for_their_strategies():
    shown = {s: {k for k, v in visible_knobs(s).items() if v} for s in ("xdlm_ancestral", "xdlm_revise")}
    assert shown == {"xdlm_ancestral": {"xdlm_k", "xdlm_top_p"}, "xdlm_revise": {"xdlm_k"}}
    for strategy in ("low_confidence", "threshold", "rcr", "origin"):
        assert not {"xdlm_k", "xdlm_top_p"} & {k for k, v in visible_knobs(strategy).items() if v}, strategy


# ---- a real embedded-xdlm decode -------------------------------------------------------------------


@pytest.fixture(scope="module")
def xdlm_run(tmp_path_factory):
    """A stored embedded-xdlm decode (xdlm_ancestral, T = 1) that revised at least one token: the
    first seed from 3 on that does (the weights may change: the seed is searched, not fixed)."""
    from explorer.adapters.loading import load_denoiser
    from explorer.api import decode

    store = TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('xdlm')}/x.db")
    denoiser = load_denoiser("embedded-xdlm")
    for seed in range(3, 23):
        out = decode("once upon a time", denoiser, store=store, gen_length=32, steps=8, strategy="xdlm_ancestral",
                     temperature=1.0, seed=seed)  # fmt: skip
        arrays = store.read_arrays(out.run_id)
        if arrays.commits.n_revised:
            return arrays, out, denoiser
    pytest.fail("no seed in 3..22 revised a token")


def test_real_xdlm_run_in_every_view(xdlm_run):
    arrays, out, denoiser = xdlm_run
    live = RunArrays.from_records(arrays.run, out.steps)
    np.testing.assert_array_equal(live.tokens, arrays.tokens)  # the store replays what streamed
    np.testing.assert_array_equal(live.commit_step, arrays.commit_step)
    mask = int(arrays.run["mask_id"])
    for step in range(arrays.n_steps):
        spans = _spans(render_tokens(arrays, denoiser.token_text, step, arrays.run["prompt"]))
        shown = [_shown(s) for s in spans]
        assert shown == [MASK_GLYPH if t == mask else denoiser.token_text(t) for t in arrays.tokens[:, step].tolist()]
    grid = change_grid(arrays)
    assert int((grid == REVISE.code).sum()) == arrays.commits.n_revised
    assert int((grid == UNMASK.code).sum()) == int((~arrays.commits.revised).sum())
    assert int((grid == REMASK.code).sum()) == arrays.remasks.step.size
    final = render_tokens(arrays, denoiser.token_text, None, arrays.run["prompt"])
    badges = sum(int(n) for n in re.findall(r'data-revisions="(\d+)"', _line(final)))
    assert badges == arrays.commits.n_revised
    # every revision's old token is what stood there before its step
    for position, changes in revision_history(arrays).items():
        for change in changes:
            column = int(np.searchsorted(arrays.steps, change.step))
            assert int(arrays.tokens[position, column - 1]) == change.old != mask
            assert int(arrays.tokens[position, column]) == change.new
