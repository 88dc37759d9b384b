"""The page's player data (explorer/views/player.py): a run's segments replay every stored state
exactly (re-masks, revisions, a branch's edits), live frames carry only their new steps and end
where the stored run ends, the embedded JSON cannot break out of its element, the checker's marks
sit on their exact tokens; and the speed panel, permalinks and presets' accordions."""

from __future__ import annotations

import html
import json
import math
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from synthetic_runs import synthetic_arrays, synthetic_records
from test_tokens_view import _record

from explorer.store.arrays import Edits, RunArrays, assemble
from explorer.views.player import BEFORE_ANY_STEP, LivePlayer, embed, stored_payload
from explorer.views.speed import speed_html, speed_of
from explorer.views.tokens import MASK_GLYPH
from explorer.views.verdict import verdict_of

EVIL = "</template><script>alert(1)</script>"


def words(token_id: int) -> str:
    return f"w{token_id}"


def evil(token_id: int) -> str:
    return EVIL if token_id % 2 else f"w{token_id}&"


def replay(segments: list[list], G: int, step: int) -> list[str]:
    """What the page shows after `step`: each position's last segment starting at or before it
    (the logic of static/components/player.js `segmentAt`)."""
    shown: list[str | None] = [None] * G
    starts = [-(10**9)] * G
    for position, start, span in segments:
        if start <= step and start >= starts[position]:
            shown[position], starts[position] = span, start
    return shown  # type: ignore[return-value]


def text_of(span: str) -> str:
    return html.unescape(re.fullmatch(r"<span [^>]*>(.*)</span>", span, re.S).group(1))


def expected(arrays: RunArrays, column: int, token_text=words) -> list[str]:
    mask = int(arrays.run["mask_id"])
    return [MASK_GLYPH if t == mask else token_text(int(t)) for t in arrays.tokens[:, column].tolist()]


def remasked_run() -> RunArrays:
    records = [
        _record(0, [0, 1], [10, 11]),
        _record(1, [2], [12], [1], [11]),
        _record(2, [1, 3], [13, 14], [0], [10]),
        _record(3, [0], [15]),
    ]
    return RunArrays.from_records({"gen_length": 4, "mask_id": 1, "id": 3}, records)


def revised_run() -> RunArrays:
    records = [
        _record(0, [0, 1], [10, 11]),
        _record(1, [0, 2], [13, 12], revised=[True, False]),
        _record(2, [0, 3], [14, 15], revised=[True, False]),
    ]
    return RunArrays.from_records({"gen_length": 4, "mask_id": 1, "id": 4}, records)


def branched_run() -> RunArrays:
    """A branch of a 4-position run after step 0: position 2 forced to token 20, position 0 re-masked."""
    base = RunArrays.from_records(
        {"gen_length": 4, "mask_id": 1}, [_record(0, [0, 1], [10, 11]), _record(1, [2, 3], [20, 13])]
    )
    edits = Edits.of([(0, 2, 20, True), (0, 0, 10, False)])
    return assemble(
        {"gen_length": 4, "mask_id": 1, "id": 5},
        steps=base.steps,
        blocks=base.blocks,
        n_committed=base.n_committed,
        argmax=base.argmax,
        confidence=base.confidence,
        entropy=base.entropy,
        margin=base.margin,
        commits=base.commits,
        edits=edits,
    )


@pytest.mark.parametrize("make", [lambda: synthetic_arrays(12, 5, seed=3), remasked_run, revised_run, branched_run])
def test_segments_replay_every_stored_state(make):
    arrays = make()
    payload = stored_payload(arrays, words)
    assert payload["steps"] == arrays.steps.tolist() and payload["G"] == arrays.gen_length
    before = replay(payload["seg"], arrays.gen_length, BEFORE_ANY_STEP)
    assert [text_of(s) for s in before] == [MASK_GLYPH] * arrays.gen_length
    for column, step in enumerate(arrays.steps.tolist()):
        shown = replay(payload["seg"], arrays.gen_length, step)
        assert [text_of(s) for s in shown] == expected(arrays, column), step


def test_a_run_has_one_segment_per_position_and_change_whatever_its_steps():
    arrays = synthetic_arrays(16, 16, seed=1)  # one commit per step: 16 changes
    payload = stored_payload(arrays, words)
    assert len(payload["seg"]) == 16 + 16
    # each committed span carries what the page colours it by: step, p at commit, entropy then
    last = [s for s in payload["seg"] if s[1] >= 0]
    for position, step, span in last:
        assert f' data-c="{step}"' in span
        p = float(re.search(r'data-p="([^"]+)"', span).group(1))
        assert p == pytest.approx(float(arrays.commit_prob[position]), abs=1e-3)
        h = float(re.search(r'data-h="([^"]+)"', span).group(1))
        column = int(np.searchsorted(arrays.steps, step))
        assert h == pytest.approx(float(arrays.entropy[position, column]), abs=1e-3)


def test_revised_and_remasked_segments_keep_their_history():
    spans = {(p, s): span for p, s, span in stored_payload(revised_run(), words)["seg"]}
    assert 'data-revisions="2"' in spans[(0, 2)] and "⇄ revised 2×" in html.unescape(spans[(0, 2)])
    assert 'data-revisions="1"' in spans[(0, 1)]
    remasked = {(p, s): span for p, s, span in stored_payload(remasked_run(), words)["seg"]}
    assert "remasked" in remasked[(1, 1)] and "took away &#x27;w11&#x27;" in remasked[(1, 1)]


def test_embedded_json_cannot_close_its_element_and_reads_back():
    arrays = remasked_run()
    payload = stored_payload(arrays, evil)
    out = embed(payload)
    inner = out[len('<template class="player-data">') : -len("</template>")]
    assert "<" not in inner and ">" not in inner and "&" not in inner
    assert json.loads(inner) == payload
    # the spans themselves hold the hostile token only escaped
    assert all("<script" not in span and "</template" not in span for _, _, span in payload["seg"])
    assert any(html.escape(EVIL, quote=True) in span for _, _, span in payload["seg"])


def test_open_step_is_clamped_to_the_run():
    arrays = synthetic_arrays(8, 4)
    assert stored_payload(arrays, words)["open"] == 3
    assert stored_payload(arrays, words, open_step=1)["open"] == 1
    assert stored_payload(arrays, words, open_step=99)["open"] == 3


def test_checker_marks_sit_on_the_blamed_tokens():
    generated = "there was a owl named emma .".split()
    marks = verdict_of("once upon a time", generated).marks()
    assert sorted(marks) == [2, 3]  # 'a' (blamed for a_an) and 'owl'; prompt words are not counted
    ids = {word: 10 + i for i, word in enumerate(generated)}
    text = {v: k for k, v in ids.items()}.get
    records = [_record(0, list(range(len(generated))), [ids[w] for w in generated], G=len(generated))]
    arrays = RunArrays.from_records({"gen_length": len(generated), "mask_id": 1, "id": 9}, records)
    seg = stored_payload(arrays, text, marks=marks)["seg"]
    flagged = {p: span for p, s, span in seg if s >= 0 and "data-k=" in span}
    assert sorted(flagged) == [2, 3]
    assert 'data-k="a_an" data-kc="1"' in flagged[2]
    assert "✗ checker: a_an: &#x27;a&#x27; before &#x27;owl&#x27;" in flagged[2]
    assert 'data-kc="0"' not in flagged[3] or "syntax" in flagged[3]


def test_verdict_positions_count_the_generated_part_only():
    v = verdict_of(["once", "upon", "a", "time"], ["there", "was", "a", "owl"])
    assert v.line().startswith("a_an@2:")
    assert verdict_of("once upon a time", ["there", "was", "a", "girl", "named", "emma", "."]).line() == "valid"


def test_live_frames_carry_only_new_steps_and_end_where_the_stored_run_ends():
    G, S = 24, 12
    records = synthetic_records(G, S, seed=5)
    live = LivePlayer("live-1", G, 1, words, "entropy")
    frames = [live.frame([], None)]
    for start in range(0, S, 5):
        frames.append(live.frame(records[start : start + 5], 7))
    assert frames[0]["reset"] and not any(f["reset"] for f in frames[1:])
    assert [len(f["steps"]) for f in frames] == [0, 5, 5, 2]
    assert all(len(f["heat"]["cols"]) == len(f["steps"]) for f in frames)
    # every later frame holds segments of its own steps only
    for frame in frames[1:]:
        assert {s for _, s, _ in frame["seg"]} <= set(frame["steps"])
    segments = [seg for f in frames for seg in f["seg"]]
    stored = RunArrays.from_records({"gen_length": G, "mask_id": 1}, records)
    for column, step in enumerate(stored.steps.tolist()):
        assert [text_of(s) for s in replay(segments, G, step)] == expected(stored, column)
    # the heatmap's column of a step: the metric where the position was still masked, else None
    first = frames[1]["heat"]["cols"][0]
    assert first == [round(float(v), 3) for v in records[0].entropy.tolist()]
    assert all(v is None for v in (frames[1]["heat"]["cols"][1][p] for p in records[0].committed.tolist()))


def test_live_revisions_and_remasks_say_what_the_step_did():
    records = [
        _record(0, [0, 1], [10, 11]),
        _record(1, [0], [13], [1], [11], revised=[True]),
    ]
    live = LivePlayer("live-2", 2, 1, evil, "confidence")
    live.frame(records[:1], None)
    frame = live.frame(records[1:], None)
    spans = {p: span for p, _, span in frame["seg"]}
    assert "revised" in spans[0] and "⇄ step 1" in html.unescape(spans[0])
    assert "masked remasked" in spans[1] and html.escape("took away '" + EVIL + "'", quote=True) in spans[1]
    assert "<script" not in json.dumps(frame)


def test_speed_panel_numbers():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    run = {
        "created_at": start,
        "finished_at": start + timedelta(seconds=2),
        "final_token_ids": [5, 6, 7, 1],
        "mask_id": 1,
        "device": "cpu <b>",
    }
    speed = speed_of(run, [{"seconds": 0.5}, {"seconds": 0.25}], forward_passes=9)
    assert speed.wall_seconds == 2 and speed.tokens == 3
    assert speed.ms_per_step == pytest.approx(375) and speed.tokens_per_second == pytest.approx(1.5)
    assert speed.passes_per_token == pytest.approx(3)
    out = speed_html(speed)
    assert "2.00 s" in out and "375.0" in out and "3.00" in out and "cpu &lt;b&gt;" in out
    unfinished = speed_of({**run, "finished_at": None}, [], 0)
    assert math.isnan(unfinished.wall_seconds) and "n/a" in speed_html(unfinished)


def test_permalink_requests():
    from explorer.ui.permalink import permalink_request

    assert permalink_request({}) is None
    assert permalink_request({"run": "12"}) == ("decode", [12], None)
    assert permalink_request({"run": "12", "step": "3"}) == ("decode", [12], 3)
    assert permalink_request({"tab": "compare", "a": "1", "b": "2"}) == ("compare", [1, 2], None)
    with pytest.raises(ValueError, match="step="):
        permalink_request({"run": "1", "step": "<b>x"})


def test_presets_open_the_accordions_they_change():
    from explorer.presets import PRESETS
    from explorer.ui.logic import preset_opens

    opened = {preset.name: preset_opens(preset) for preset in PRESETS}
    assert any(o["energies_accordion"] for o in opened.values())  # an energies preset
    for preset in PRESETS:
        assert opened[preset.name]["energies_accordion"] == bool(dict(preset.settings).get("energies"))
