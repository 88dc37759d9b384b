"""A uniform-noise canvas model's run (DiffusionGemma) in the views: noise drawn as noise (never as
text), this step's accepted / re-noised / flipped positions marked, the draft line per step, the
canvas maps (entropy, accepted, flips) and the stop criteria; a streamer's run (no canvas record)
still shows; a masked run keeps its rendering. The runs are built by hand and go through a real
store (sqlite) before they are drawn."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from synthetic_runs import replay_segments, synthetic_arrays

from explorer.decoding.callbacks import RunStart
from explorer.decoding.canvas_record import CanvasRecord
from explorer.decoding.config import DecodeConfig
from explorer.decoding.records import DecodeResult, StepExtras, StepRecord
from explorer.store.arrays import RunArrays
from explorer.store.database import StoreWriter, TrajectoryStore
from explorer.views import canvas_figures
from explorer.views.canvas import canvas_grids, draft_line, draft_lines, draft_text, is_canvas_run
from explorer.views.canvas_tokens import (
    NOISE_GLYPH,
    UNSTARTED_GLYPH,
    canvas_legend,
    canvas_segments,
    render_canvas_tokens,
)
from explorer.views.player import stored_payload
from explorer.views.tokens import MASK_GLYPH, render_tokens

G, C, NOISE = 8, 4, 30  # positions, canvas size, the noise marker (= vocabulary size)
EVIL_ID = 7


def token_text(token_id: int) -> str:
    return "<b>" if token_id == EVIL_ID else f"t{token_id}"


@dataclass
class Step:
    canvas: int
    start: int
    step: int
    tokens_in: list[int]
    noise_in: list[bool]
    sampled: list[int]
    accepted: list[bool]
    argmax: list[int]
    flipped: list[bool]
    mean_entropy: float
    steps_stable: int
    final: bool = False


# Canvas 0 (positions 0-3): step 0 accepts 0 and 2; step 1 accepts 0 and 1 and re-noises position 2,
# which held the kept token 6 (its argmax flips 6 -> 8); step 2 is the last: the draft is kept.
# Canvas 1 (positions 4-7): step 3 accepts 4; step 4 is the last.
STEPS = [
    Step(0, 0, 0, [11, 12, 13, 14], [1, 1, 1, 1], [7, 5, 6, 9], [1, 0, 1, 0], [7, 5, 6, 9], [1, 1, 1, 1], 2.5, 0),
    Step(0, 0, 1, [7, 21, 6, 22], [0, 1, 0, 1], [7, 5, 8, 9], [1, 1, 0, 0], [7, 5, 8, 9], [0, 0, 1, 0], 1.25, 0),
    Step(0, 0, 2, [7, 5, 23, 24], [0, 0, 1, 1], [7, 5, 8, 9], [1, 1, 1, 1], [7, 5, 8, 9], [0, 0, 0, 0], 0.003, 1, True),
    Step(1, 4, 0, [15, 16, 17, 18], [1, 1, 1, 1], [1, 2, 3, 4], [1, 0, 0, 0], [1, 2, 3, 4], [1, 1, 1, 1], 2.0, 0),
    Step(
        1, 4, 1, [1, 25, 26, 27], [0, 1, 1, 1], [1, 2, 3, 4], [1, 1, 1, 1], [1, 2, 3, 4], [0, 0, 0, 0], 0.004, 1, True
    ),
]
THRESHOLD = 0.005


def canvas_records(with_canvas: bool = True) -> list[StepRecord]:
    """The StepRecords the engine's convention gives (events against the kept state)."""
    kept = np.full(G, NOISE, np.int64)
    records = []
    for index, s in enumerate(STEPS):
        rows = np.arange(s.start, s.start + C)
        accepted = np.array(s.accepted, bool)
        after = np.array(s.argmax if s.final else np.where(accepted, s.sampled, NOISE), np.int64)
        renoised = np.zeros(C, bool) if s.final else ~accepted
        before = kept[rows]
        changed = (after != NOISE) & (after != before)
        lost = (after == NOISE) & (before != NOISE)
        n = int(changed.sum())
        entropy = np.full(G, np.nan, np.float32)
        entropy[rows] = np.linspace(0.5, 2.0, C) * (index + 1)
        argmax = np.full(G, -1, np.int32)
        argmax[rows] = s.argmax
        metric = np.full(G, np.nan, np.float32)
        metric[rows] = 0.5
        record = CanvasRecord(
            canvas=s.canvas,
            start=s.start,
            step=s.step,
            tokens_in=np.array(s.tokens_in, np.int64),
            noise_in=np.array(s.noise_in, bool),
            sampled=np.array(s.sampled, np.int64),
            sampled_prob=np.full(C, 0.25, np.float32),
            accepted=accepted,
            renoised=renoised,
            flipped=np.array(s.flipped, bool),
            mean_entropy=s.mean_entropy,
            confidence_threshold=THRESHOLD,
            steps_stable=s.steps_stable,
            stable=s.steps_stable >= 1,
            confident=s.mean_entropy < THRESHOLD,
            stop=s.final,
            temperature=0.8,
            final=s.final,
        )
        records.append(
            StepRecord(
                step=index,
                block=s.canvas,
                committed=rows[changed].astype(np.int64),
                tokens=after[changed],
                probs=np.full(n, 0.25, np.float32),
                top_ids=np.tile(np.array([3, 4, 5], np.int64), (n, 1)),
                top_probs=np.tile(np.array([0.5, 0.3, 0.2], np.float32), (n, 1)),
                argmax=argmax,
                confidence=metric,
                entropy=entropy,
                margin=metric,
                masked_before=int((kept == NOISE).sum()),
                seconds=0.0,
                remasked=rows[lost].astype(np.int64),
                remasked_tokens=before[lost],
                remasked_probs=np.full(int(lost.sum()), 0.25, np.float32),
                extras=StepExtras(canvas=record if with_canvas else None),
                previous=before[changed],
                revised=before[changed] != NOISE,
                previous_probs=np.full(n, 0.25, np.float32),
            )
        )
        kept[rows] = after
    return records


def store_run(tmp_path, records: list[StepRecord], model: str = "toy-canvas") -> RunArrays:
    store = TrajectoryStore(f"sqlite:///{tmp_path}/canvas.db")
    writer = StoreWriter(store, token_text)
    config = DecodeConfig(gen_length=G, steps=len(records), block_length=C, canvas_stability=1)
    writer.on_start(RunStart(model, "a <prompt>", [1, 2], config, NOISE, "cpu"))
    for record in records:
        writer.on_step(record)
    final = [7, 5, 8, 9, 1, 2, 3, 4]
    writer.on_end(DecodeResult("completed", final, " ".join(map(token_text, final)), len(records)))
    return store.read_arrays(writer.run_id)


@pytest.fixture
def run(tmp_path) -> RunArrays:
    return store_run(tmp_path, canvas_records())


def spans_of(fragment: str) -> list[str]:
    line = fragment.split('<div class="tokens-line">', 1)[1].split('<div class="tokens-legend', 1)[0]
    return re.findall(r'<span class="tok[^"]*"[^>]*>.*?</span>', line)


def classes(span: str) -> set[str]:
    return set(re.match(r'<span class="([^"]*)"', span).group(1).split())


def shown(span: str) -> str:
    return html.unescape(re.fullmatch(r"<span [^>]*>(.*)</span>", span, re.S).group(1))


def tip(span: str) -> str:
    return html.unescape(re.search(r'data-tip="([^"]*)"', span).group(1))


# ---- the token view ----------------------------------------------------------------------------------


def test_a_stored_canvas_run_is_a_canvas_run(run):
    assert is_canvas_run(run)
    assert [e.canvas.step for e in run.extras] == [0, 1, 2, 0, 1]
    assert run.tokens[:, 1].tolist() == [7, 5, NOISE, NOISE, NOISE, NOISE, NOISE, NOISE]
    assert not is_canvas_run(synthetic_arrays(6, 3))


def test_noise_is_drawn_as_noise_never_as_text(run):
    spans = spans_of(render_canvas_tokens(run, token_text, 0, "a <prompt>"))
    assert len(spans) == G  # one .tok span per position, in order
    # after step 0: 0 and 2 kept (accepted), 1 and 3 noise, canvas 1 not started
    assert [shown(s) for s in spans] == ["<b>", NOISE_GLYPH, "t6", NOISE_GLYPH] + [UNSTARTED_GLYPH] * 4
    noise = spans[1]
    assert "noise" in classes(noise) and "masked" not in classes(noise)
    assert "t12" not in shown(noise)  # the random token only in the hover
    assert "noise (random token 't12' this step)" in tip(noise)
    assert "renoised" in classes(noise) and "remasked" not in classes(noise)  # it held no kept token
    for i in range(4, 8):  # an empty dashed box: unlike the noise chip and the masked placeholder
        assert classes(spans[i]) == {"tok", "unstarted"} and "not started" in tip(spans[i])
        assert "dashed" in spans[i] and NOISE_GLYPH not in spans[i] and MASK_GLYPH not in spans[i]


def test_the_legend_names_each_mark_by_a_mark_not_a_colour():
    legend = canvas_legend()
    # accepted: the ✓ badge class (static/tokens.css), not an underline in a colour of the step ramp
    assert 'class="tok kept accepted"' in legend and "✓ = accepted at this step" in legend
    assert "inset 0 -3px" not in legend
    assert "↺ = re-noised" in legend and "pink top bar" in legend
    assert 'class="tok unstarted"' in legend and "empty dashed box = its canvas has not started" in legend


def test_token_text_is_escaped(run):
    fragment = render_canvas_tokens(run, token_text, 0, "a <prompt>")
    assert "<b>" not in fragment  # neither the token nor the prompt reaches markup raw
    assert "&lt;b&gt;" in fragment and "a &lt;prompt&gt;" in fragment
    step1 = render_canvas_tokens(run, token_text, 1, "")
    lost = spans_of(step1)[2]  # its kept token 6 was re-noised; the hover names tokens escaped
    assert "<b>" not in draft_line(run, 0, token_text) and "&lt;b&gt;" in draft_line(run, 0, token_text)
    assert "<b>" not in lost and "&lt;b&gt;" in spans_of(step1)[0]
    # the hover of a noise position whose sampled token is '<b>' (position 0 of canvas 1 samples t1: use
    # a token text that escapes everywhere instead)
    evil = spans_of(render_canvas_tokens(run, lambda t: f"<i>{t}", 0, ""))[1]
    assert "<i>" not in evil and "random token '<i>12' this step" in tip(evil)


def test_accepted_renoised_and_flip_marks(run):
    spans = spans_of(render_canvas_tokens(run, token_text, 1, ""))
    assert [shown(s) for s in spans[:4]] == ["<b>", "t5", NOISE_GLYPH, NOISE_GLYPH]
    assert "accepted" in classes(spans[0]) and "accepted" in classes(spans[1])
    assert "inset 0 -3px" not in spans[0]  # the ✓ badge (static/tokens.css), whatever the step colour
    lost = spans[2]  # held the kept token 6 going in, re-noised at step 1; its argmax flipped 6 -> 8
    assert {"noise", "renoised", "remasked", "flipped"} <= classes(lost)
    assert 'data-remasks="1"' in lost
    assert "kept token 't6' was re-noised" in tip(lost)
    assert "random token 't23' goes into the next step" in tip(lost)
    assert "flipped" not in classes(spans[3]) and "remasked" not in classes(spans[3])
    # the step's first canvas step: every argmax "changed", none is marked
    assert not any("flipped" in classes(s) for s in spans_of(render_canvas_tokens(run, token_text, 0, "")))
    # the final step: the draft is kept, every position is text
    end = spans_of(render_canvas_tokens(run, token_text, 2, ""))
    assert [shown(s) for s in end[:4]] == ["<b>", "t5", "t8", "t9"]
    assert all({"kept", "accepted", "final"} <= classes(s) for s in end[:4])
    last = spans_of(render_canvas_tokens(run, token_text, None, ""))
    assert [shown(s) for s in last] == ["<b>", "t5", "t8", "t9", "t1", "t2", "t3", "t4"]


def test_the_draft_of_each_step(run):
    text = draft_text(run, 1, token_text)
    chips = re.findall(r'<span class="draft-tok[^"]*"[^>]*>(.*?)</span>', text)
    assert [html.unescape(c) for c in chips] == ["<b>", "t5", "t8", "t9"]
    assert re.findall(r'class="draft-tok flipped"[^>]*>(.*?)<', text) == ["t8"]
    assert "canvas 0, its step 1 (positions 0–3)" in text
    assert "canvas 1" in draft_text(run, 3, token_text)
    assert set(draft_lines(run, token_text)) == {0, 1, 2, 3, 4}
    assert draft_text(run, -1, token_text) == ""


def test_the_players_segments_replay_every_step(run):
    segments = canvas_segments(run, token_text)
    for step in range(run.n_steps):
        expected = spans_of(render_canvas_tokens(run, token_text, step, ""))
        assert replay_segments(segments, G, step) == expected
    payload = stored_payload(run, token_text)
    assert payload["seg"] == segments
    assert payload["gates"]["1"] == draft_text(run, 1, token_text)


# ---- figures -------------------------------------------------------------------------------------------


def test_accepted_and_flip_maps_equal_the_records(run):
    grids = canvas_grids(run)
    accepted = canvas_figures.accepted_map(run, step=1).data[0]
    flips = canvas_figures.flips_map(run).data[0]
    z_accepted, z_flips = np.asarray(accepted.z, float), np.asarray(flips.z, float)
    assert z_accepted.shape == (G, run.n_steps)
    for column, s in enumerate(STEPS):
        rows = slice(s.start, s.start + C)
        np.testing.assert_array_equal(z_accepted[rows, column], np.array(s.accepted, float))
        np.testing.assert_array_equal(z_flips[rows, column], np.array(s.flipped, float))
        outside = np.ones(G, bool)
        outside[rows] = False
        assert np.isnan(z_accepted[outside, column]).all() and np.isnan(z_flips[outside, column]).all()
    assert z_flips[2, 1] == 1 and z_accepted[2, 1] == 0  # the re-noised position's flip
    np.testing.assert_array_equal(grids.accepted, np.asarray(accepted.z, np.float32))
    assert accepted.zmin == 0 and accepted.zmax == 1
    layout = canvas_figures.accepted_map(run, step=1).layout
    assert "Accepted" in layout.title.text
    assert layout.xaxis.title.text == "decoding step" and layout.yaxis.title.text == "position in generated text"


def test_entropy_map_in_nats(run):
    fig = canvas_figures.canvas_entropy_heatmap(run, step=2)
    z = np.asarray(fig.data[0].z, float)
    np.testing.assert_allclose(z, run.entropy.astype(float), equal_nan=True)
    assert "nats" in fig.data[0].colorbar.title.text
    assert np.isnan(z[4:, :3]).all()  # canvas 1 had not started


def test_stop_criteria_trace_the_records(run):
    fig = canvas_figures.stop_criteria(run, step=3)
    traces = {t.name: t for t in fig.data}
    np.testing.assert_allclose(traces["mean entropy"].y, [s.mean_entropy for s in STEPS], rtol=1e-6)
    assert list(traces["confidence threshold"].y) == [THRESHOLD] * len(STEPS)
    assert traces["confidence threshold"].line.dash == "dash"
    assert list(traces["steps stable"].y) == [s.steps_stable for s in STEPS]
    assert list(traces["stability threshold"].y) == [1] * len(STEPS)  # the run's canvas_stability
    assert traces["steps stable"].yaxis == "y2"
    assert list(traces["stopped here"].x) == [2, 4]
    assert canvas_figures.boundary_steps(run) == [(0, 0), (3, 1)]
    boundaries = [s for s in fig.layout.shapes if s.name == "canvas boundary"]
    assert [b.x0 for b in boundaries] == [-0.5, -0.5, 2.5, 2.5]  # in both panels
    # two stacked panels on one step axis: the entropy on top, the steps stable below
    assert traces["mean entropy"].yaxis == "y" and traces["confidence threshold"].yaxis == "y"
    assert traces["stability threshold"].yaxis == "y2" and fig.layout.xaxis2.title.text == "decoding step"
    assert fig.layout.yaxis.domain[0] > fig.layout.yaxis2.domain[1]
    markers = [s for s in fig.layout.shapes if s.name == "selected step"]
    assert [m.x0 for m in markers] == [3, 3]


# ---- a streamer's run, the Decode tab, a masked run ------------------------------------------------------


def test_a_streamer_run_shows_its_drafts(tmp_path):
    run = store_run(tmp_path, canvas_records(with_canvas=False), model="google/diffusiongemma-tiny")
    assert is_canvas_run(run)  # by its model's name
    assert all(e.canvas is None for e in run.extras)
    spans = spans_of(render_canvas_tokens(run, token_text, 1, ""))
    assert [shown(s) for s in spans[:2]] == ["<b>", "t5"] and len(spans) == G
    assert all(shown(s) == MASK_GLYPH for s in spans[2:])
    chips = re.findall(r'<span class="draft-tok[^"]*"[^>]*>(.*?)</span>', draft_text(run, 1, token_text))
    assert [html.unescape(c) for c in chips] == ["<b>", "t5", "t8", "t9"]
    for step in range(run.n_steps):
        assert replay_segments(canvas_segments(run, token_text), G, step) == spans_of(
            render_canvas_tokens(run, token_text, step, "")
        )
    empty = canvas_figures.accepted_map(run)
    assert not empty.data and "drafts only" in empty.layout.annotations[0].text
    assert isinstance(canvas_figures.stop_criteria(run), go.Figure)


class _Model:
    token_text = staticmethod(token_text)


class _Services:
    def __init__(self) -> None:
        self.pool = None
        self.models = {"toy-canvas": _Model()}


def test_the_decode_tab_shows_the_canvas(run):
    from explorer.ui.view import (
        CANVAS_ANALYSIS_NOTE,
        CANVAS_TITLES,
        VIEW,
        heat_figure,
        render_all,
        render_view,
        step_figures,
    )

    run.run["final_text"] = "x"
    shown_all = render_all(_Services(), run, 1, "confidence", None)
    assert set(shown_all) <= set(VIEW)
    assert "canvas-view" in shown_all["tokens"] and "canvas-draft" in shown_all["tokens"]
    # the analysis slots: the canvas's maps (the page's player relabels them), its note, no reading guide
    figure = {name: shown_all[name] for name in CANVAS_TITLES}
    assert "Accepted" in figure["violation_heat"].layout.title.text
    assert "flips" in figure["energy_heat"].layout.title.text
    assert "Entropy" in figure["pair_s"].layout.title.text
    assert "Stop criteria" in figure["pair_a"].layout.title.text
    assert "Noise" in figure["candidates"].layout.title.text
    assert shown_all["analysis_note"] == CANVAS_ANALYSIS_NOTE and "Dependency violations" not in CANVAS_ANALYSIS_NOTE
    assert shown_all["reading_guide"]["visible"] is False
    # the status line and the figures every run has, in a canvas run's words
    status = html.unescape(shown_all["status"])
    assert f"tokens kept · {run.n_steps} decoder passes" in status and "tokens/pass" in status, status
    assert "committed" not in status and "AR-ness" not in status and "revision" not in status
    assert shown_all["bars"].layout.title.text.startswith("Tokens kept per step")
    assert shown_all["changes"].layout.title.text.startswith("What changed where: kept, replaced, re-noised")
    assert not any("unmask" in (t.name or "") or "re-mask" in (t.name or "") for t in shown_all["changes"].data)
    assert "canvas" in heat_figure(run, "entropy", 1).layout.title.text
    assert set(step_figures(_Services(), run, 2)) == {"pair_s", "pair_a", "candidates"}
    opened = render_view(_Services(), run, 4, "entropy", None, player=True)["tokens"]
    assert opened.count('<template class="player-data">') == 1 and "<b>" not in opened


def test_a_masked_run_is_rendered_as_before():
    arrays = synthetic_arrays(6, 3)
    fragment = render_tokens(arrays, str, 1, "p")
    assert "canvas" not in fragment and "noise" not in fragment
    payload = stored_payload(arrays, str)
    assert "gates" not in payload and payload["canvas"] is False


def test_a_masked_run_gets_the_analysis_labels_back():
    from explorer.ui.view import ANALYSIS_NOTE, ANALYSIS_TITLES, CANVAS_TITLES, analysis_frame, pending_analysis

    figures = {name: go.Figure() for name in ANALYSIS_TITLES}
    masked, canvas = analysis_frame(figures, canvas=False), analysis_frame(figures, canvas=True)
    assert all(masked[name] is figures[name] and canvas[name] is figures[name] for name in figures)  # the API's
    assert masked["analysis_note"] == ANALYSIS_NOTE and masked["reading_guide"]["visible"] is True
    assert canvas["analysis_note"] != ANALYSIS_NOTE and canvas["reading_guide"]["visible"] is False
    assert set(CANVAS_TITLES) == set(ANALYSIS_TITLES)
    assert pending_analysis(True)["pair_a"].layout.title.text.startswith("Stop criteria")
    assert pending_analysis()["pair_a"].layout.title.text.startswith("Pairwise A of a step")
    # the page's player relabels the plots by elem_id with the same words
    player = (Path(__file__).resolve().parents[1] / "static" / "components" / "player.js").read_text()
    assert all(f'"{label}"' in player for label in CANVAS_TITLES.values())


def test_the_live_view_draws_noise_and_unstarted_canvases():
    """While a canvas run decodes, the live frames draw its canvas's noise as noise chips (a re-noised
    kept token outlined) and canvases not yet started as empty boxes, never as masked ▒."""
    from explorer.views.player import LivePlayer

    records = canvas_records()
    live = LivePlayer("live-1", G, NOISE, token_text, "confidence", canvas=True)
    first = live.frame(records[:1], 1)
    initial = [seg for seg in first["seg"] if seg[1] == -1]
    assert len(initial) == G and all("unstarted" in seg[2] and "░" not in seg[2] for seg in initial)
    step0 = {seg[0]: seg[2] for seg in first["seg"] if seg[1] == 0}
    canvas = records[0].extras.canvas
    for i in range(canvas.size):
        span = step0[canvas.start + i]
        assert ("tok noise" in span) == (not canvas.accepted[i]), span  # accepted: its token; else noise
    later = live.frame(records[1:], 1)
    lost = {int(p) for r in records[1:] for p in r.remasked}
    assert lost, "the hand-built run re-noises a kept token"
    renoised = [seg for seg in later["seg"] if seg[0] in lost and "remasked" in seg[2]]
    assert renoised and all("░" in seg[2] and "outline" in seg[2] for seg in renoised)
    assert not any("▒" in seg[2] for seg in first["seg"] + later["seg"])
