"""The token view's HTML: escaping, masked positions at a step, tooltips, colours, legend, re-masks."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
from synthetic_runs import synthetic_arrays

from explorer.decoding.records import StepRecord
from explorer.store.arrays import RunArrays
from explorer.views.tokens import MASK_GLYPH, render_tokens, step_colour

EVIL = "<img src=x onerror=alert(1)>"


def words(token_id: int) -> str:
    return f"w{token_id}"


def evil(token_id: int) -> str:
    return EVIL if token_id % 2 else f'"q{token_id}" & <b>'


@pytest.fixture(scope="module")
def arrays():
    return synthetic_arrays(20, 5, seed=7)


def _line(fragment: str) -> str:
    """The sequence itself, without the legend (which shows a sample masked / outlined token)."""
    return fragment.split('<div class="tokens-legend">')[0]


def _spans(fragment: str) -> list[str]:
    return re.findall(r'<span class="tok[^"]*"[^>]*>.*?</span>', fragment)


def test_everything_is_escaped(arrays):
    out = render_tokens(arrays, evil, None, prompt_text=f"prompt {EVIL} & 'quote'")
    assert "<img" not in out and "<b>" not in out
    assert html.escape(EVIL, quote=True) in out  # shown as text, in tokens and tooltips
    assert "&lt;img src=x onerror=alert(1)&gt;" in out
    assert "&#x27;quote&#x27;" in out and "&quot;q" in out
    # every data-tip value is one attribute: no raw quote breaks out of it
    for tip in re.findall(r'data-tip="([^"]*)"', out):
        assert "<" not in tip and ">" not in tip
    assert out.count('data-tip="') == arrays.gen_length


def visible_commits(commit_step: np.ndarray, step: int | None) -> np.ndarray:
    """(G,) bool: positions whose last commit happened by the end of `step` (None: the end).
    Without re-masks, exactly the positions shown committed after `step`."""
    done = commit_step >= 0
    return done if step is None else done & (commit_step <= step)


@pytest.mark.parametrize("step", [None, 0, 2, 4, 10, -1])
def test_masked_count(arrays, step):
    out = render_tokens(arrays, words, step, prompt_text="once upon a time")
    expected = arrays.gen_length - int(visible_commits(arrays.commit_step, step).sum())
    if step is None or step >= 4:
        expected_direct = 0
    elif step < 0:
        expected_direct = arrays.gen_length
    else:
        expected_direct = int((arrays.commit_step > step).sum())
    assert expected == expected_direct
    masked = re.findall(rf'<span class="tok masked"[^>]*>{MASK_GLYPH}</span>', _line(out))
    assert len(masked) == expected
    assert len(_spans(_line(out))) - len(masked) == arrays.gen_length - expected


def test_just_committed_are_outlined(arrays):
    out = render_tokens(arrays, words, 2, prompt_text="p")
    just = re.findall(r'<span class="tok just"[^>]*data-tip="([^"]*)"', _line(out))
    assert len(just) == int((arrays.commit_step == 2).sum()) > 0
    assert all("committed at step 2" in tip for tip in just)
    assert 'class="tok just"' not in _line(render_tokens(arrays, words, None, prompt_text="p"))


def test_tooltip_content(arrays):
    out = render_tokens(arrays, words, None, prompt_text="p")
    p = 5
    s = int(arrays.commit_step[p])
    prob = float(arrays.commit_prob[p])
    ids, probs = arrays.commit_top_ids[p], arrays.commit_top_probs[p]
    top3 = ", ".join(f"w{int(t)} {float(q):.2f}" for t, q in zip(ids, probs))
    expected = f"position {p} · committed at step {s} · p = {prob:.2f} · top-3: {top3}"
    assert f'data-tip="{html.escape(expected, quote=True)}"' in out
    # the token text itself is the final token
    assert f">w{int(arrays.tokens[p, -1])}</span>" in out


def test_masked_tooltip(arrays):
    out = render_tokens(arrays, words, 0, prompt_text="p")
    masked_position = int(np.flatnonzero(arrays.commit_step > 0)[0])
    assert f'data-tip="position {masked_position} · still masked after step 0"' in out


def test_colours_differ_first_to_last_and_text_contrasts(arrays):
    first_bg, first_fg = step_colour(0, arrays.n_steps)
    last_bg, last_fg = step_colour(arrays.n_steps - 1, arrays.n_steps)
    assert first_bg != last_bg
    assert (first_fg, last_fg) == ("#ffffff", "#000000")  # dark purple start, yellow end
    out = render_tokens(arrays, words, None, prompt_text="p")
    first_p = int(np.flatnonzero(arrays.commit_step == 0)[0])
    last_p = int(np.flatnonzero(arrays.commit_step == arrays.n_steps - 1)[0])
    spans = _spans(_line(out))
    assert f"background: {first_bg}" in spans[first_p] and f"background: {last_bg}" in spans[last_p]
    assert f"color: {first_fg}" in spans[first_p] and f"color: {last_fg}" in spans[last_p]


def test_prompt_and_legend(arrays):
    out = render_tokens(arrays, words, 1, prompt_text="once upon a time")
    assert out.index('<span class="prompt">once upon a time</span>') < out.index('<span class="tok')
    assert "colour = step at which the token was committed: early → late" in out
    assert "= still masked" in out and "committed at step 1" in out.split('<div class="tokens-legend">')[1]


def test_live_run_without_steps():
    empty = type(synthetic_arrays(3, 1)).from_records({"gen_length": 3, "mask_id": 1}, [])
    out = render_tokens(empty, words, None, prompt_text="")
    assert out.count(MASK_GLYPH) == 3 + 1  # three positions and the legend
    assert 'class="prompt"' not in out


def test_highlight_marks_positions(arrays):
    out = _line(render_tokens(arrays, evil, None, prompt_text="p", highlight={2, 7}, highlight_label="<differs>"))
    spans = _spans(out)
    assert [i for i, span in enumerate(spans) if " diff" in span.split(">")[0]] == [2, 7]
    assert "&lt;differs&gt;" in spans[2] and "differs" not in spans[3]
    masked_out = _line(render_tokens(arrays, words, -1, prompt_text="p", highlight=[0]))
    assert _spans(masked_out)[0].startswith('<span class="tok masked diff"')


# ---- re-masks ---------------------------------------------------------------------------------------


def _record(step: int, committed, tokens, remasked=(), remasked_tokens=(), G: int = 4, revised=()) -> StepRecord:
    n = len(committed)
    return StepRecord(
        step=step,
        block=0,
        committed=np.array(committed, np.int64),
        tokens=np.array(tokens, np.int64),
        probs=np.full(n, 0.5, np.float32),
        revised=np.array(revised if revised else [False] * n, bool),
        top_ids=np.array([[t, 2, 3] for t in tokens], np.int64).reshape(n, 3),
        top_probs=np.tile(np.array([0.5, 0.3, 0.1], np.float32), (n, 1)),
        argmax=np.zeros(G, np.int32),
        confidence=np.full(G, 0.5, np.float32),
        entropy=np.ones(G, np.float32),
        margin=np.full(G, 0.2, np.float32),
        masked_before=G,
        seconds=0.0,
        remasked=np.array(remasked, np.int64),
        remasked_tokens=np.array(remasked_tokens, np.int64),
        remasked_probs=np.full(len(remasked), 0.4, np.float32),
    )


@pytest.fixture(scope="module")
def remasked():
    """4 positions, 4 steps (mask id 1): position 1 is re-masked at step 1 (token 11 taken away) and
    committed again at step 2; position 0 is re-masked at step 2 (token 10) and committed again at step 3."""
    records = [
        _record(0, [0, 1], [10, 11]),
        _record(1, [2], [12], [1], [11]),
        _record(2, [1, 3], [13, 14], [0], [10]),
        _record(3, [0], [15]),
    ]
    return RunArrays.from_records({"gen_length": 4, "mask_id": 1}, records)


def _tip(span: str) -> str:
    return html.unescape(re.search(r'data-tip="([^"]*)"', span).group(1))


def test_scrubbing_shows_masks_that_came_back(remasked):
    after = {step: _spans(_line(render_tokens(remasked, words, step, prompt_text="p"))) for step in range(4)}
    assert ">w10<" in after[0][0] and ">w11<" in after[0][1] and MASK_GLYPH in after[0][2]
    # step 1 took token 11 away: position 1 is a mask again, with the re-mask badge and its story
    assert after[1][1].startswith('<span class="tok masked remasked" data-remasks="1"')
    assert "still masked after step 1 · ↺ re-masked 1× (step 1 took away 'w11')" in _tip(after[1][1])
    # the token at position 0 still stands after step 1; it is the commit of step 0, re-masked later,
    # with the p and the alternatives of that commit (each commit event keeps its own)
    assert ">w10<" in after[1][0] and "committed at step 0 · re-masked later · p = 0.50" in _tip(after[1][0])
    assert "top-3: w10 0.50, w2 0.30, w3 0.10" in _tip(after[1][0])
    assert MASK_GLYPH in after[2][0] and ">w13<" in after[2][1]
    assert ">w15<" in after[3][0] and "committed at step 3 · p = 0.50" in _tip(after[3][0])


def test_remasked_tokens_get_a_badge_and_the_full_story(remasked):
    out = render_tokens(remasked, words, None, prompt_text="p")
    spans = _spans(_line(out))
    assert [('data-remasks="1"' in s) for s in spans] == [True, True, False, False]
    assert all(" remasked" in s.split(">")[0] for s in spans[:2])
    assert _tip(spans[0]).endswith("↺ re-masked 1× (step 2 took away 'w10')")
    assert _tip(spans[1]).startswith("position 1 · committed at step 2 · p = 0.50")
    assert "↺ re-masked 1× (step 1 took away 'w11')" in _tip(spans[1])
    assert "re-masked" in out.split('<div class="tokens-legend">')[1]  # the legend explains the badge
    plain = render_tokens(synthetic_arrays(6, 3), words, None, prompt_text="p")
    assert "remask" not in plain  # no badge, no legend entry for a run without re-masks


def test_remask_tooltips_are_escaped(remasked):
    out = render_tokens(remasked, evil, 1, prompt_text="p")
    assert "<img" not in out and "<b>" not in out
    assert html.escape(f"took away '{evil(11)}'", quote=True) in out


# ---- revisions (XDLM: a visible token changed into another) ------------------------------------


@pytest.fixture(scope="module")
def revised():
    """4 positions, 3 steps: position 0 holds token 10 (step 0), revised to 13 at step 1 and to 14 at step 2."""
    records = [
        _record(0, [0, 1], [10, 11]),
        _record(1, [0, 2], [13, 12], revised=[True, False]),
        _record(2, [0, 3], [14, 15], revised=[True, False]),
    ]
    return RunArrays.from_records({"gen_length": 4, "mask_id": 1}, records)


def test_revision_history_tooltips_are_escaped(revised):
    out = render_tokens(revised, evil, None, prompt_text=f"p {EVIL}")
    assert "<img" not in out and "<b>" not in out
    spans = _spans(_line(out))
    assert 'data-revisions="2"' in spans[0] and " revised" in spans[0].split(">")[0]
    tip = _tip(spans[0])
    # both changes, old -> new, every token text as text (escaped in the markup, whole here)
    assert f"step 1: '{evil(10)}' (p 0.50 when committed) → '{evil(13)}' (p 0.50)" in tip
    assert f"step 2: '{evil(13)}' (p 0.50 when committed) → '{evil(14)}' (p 0.50)" in tip
    assert html.escape(f"'{evil(10)}' (p 0.50 when committed) → '{evil(13)}'", quote=True) in spans[0]
    for value in re.findall(r'data-tip="([^"]*)"', out):
        assert "<" not in value and ">" not in value
    assert out.count('data-tip="') == revised.gen_length
