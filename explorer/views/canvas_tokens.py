"""The token view of a uniform-noise canvas model's run (DiffusionGemma): noise drawn as noise.

A position of the step's canvas that holds noise (the run's mask id in `RunArrays.tokens`) is a
hatched grey chip showing a noise glyph, never the random token's text: that token is only named
in the hover. Kept tokens are text, coloured by the step that kept them (as `views.tokens`), and
this step's accepted positions (a ✓ badge and a dark green border, whatever the step colour),
re-noised positions (the ↺ badge) and argmax flips (a pink top bar) are marked. Positions whose
canvas has not started are an empty dashed box holding a faint dot. A run with no canvas record (a
streamer's run: drafts only) shows its kept tokens and masked placeholders.

Canvas spans carry their colour inline and no `data-c`, so the page's player shows them as sent
(static/components/player.js restyles only spans with `data-c`). Every string from the model or
the user is `html.escape`d once before it reaches markup.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from explorer.decoding.canvas_record import CanvasRecord
from explorer.store.arrays import RunArrays
from explorer.views.canvas import DRAFT_FLIP_COLOUR, canvas_record, state_column
from explorer.views.tokens import MASK_GLYPH, STEP_RAMP, step_colour

NOISE_GLYPH = "░"
NOISE_STYLE = (
    "background: repeating-linear-gradient(135deg, #f1f3f5 0 3px, #dee2e6 3px 6px); color: #868e96; "
    "border: 1px dotted #adb5bd"
)
ACCEPTED_COLOUR = "#2b8a3e"  # accepted at this step: a ✓ badge and a border of this colour (static/tokens.css)
UNSTARTED_GLYPH = "·"
UNSTARTED_STYLE = "background: transparent; color: #adb5bd; border: 1px dashed #adb5bd"
RENOISED_COLOUR = "#e8590c"  # as the ↺ badge of re-masked tokens (static/tokens.css)
BEFORE_ANY_STEP = -1


@dataclass(frozen=True)
class CanvasTokens:
    """What every span of a canvas run needs, worked out once: the step that kept each token
    standing at each column (-1: noise or nothing)."""

    arrays: RunArrays
    token_text: Callable[[int], str]
    since: np.ndarray  # (G, S) int: the step that set the kept token standing there after each step

    @classmethod
    def of(cls, arrays: RunArrays, token_text: Callable[[int], str]) -> CanvasTokens:
        G, S = arrays.tokens.shape
        mask_id = int(arrays.run["mask_id"])
        since = np.full((G, S), -1, np.int64)
        before = np.full(G, mask_id, np.int64)
        current = np.full(G, -1, np.int64)
        for column in range(S):
            now = arrays.tokens[:, column].astype(np.int64)
            current = np.where(now == mask_id, -1, np.where(now != before, int(arrays.steps[column]), current))
            since[:, column] = current
            before = now
        return cls(arrays, token_text, since)

    @property
    def mask_id(self) -> int:
        return int(self.arrays.run["mask_id"])

    def span(self, position: int, column: int) -> str:
        """The `.tok` span of `position` after the step in `column` (-1: before any step)."""
        if column < 0:
            return not_started(position)
        record = canvas_record(self.arrays, column)
        token = int(self.arrays.tokens[position, column])
        inside = record is not None and record.start <= position < record.start + record.size
        if token != self.mask_id:
            return self._kept(position, column, token, record if inside else None)
        if inside:
            return self._noise(position, column, record)
        if record is not None and position >= record.start + record.size:
            return not_started(position)
        if record is None and self.arrays.extras[column].canvas is None:
            return placeholder(position, "no kept token yet (this run recorded drafts only)")
        return placeholder(position, "no kept token")

    def _kept(self, position: int, column: int, token: int, record: CanvasRecord | None) -> str:
        since = int(self.since[position, column])
        background, text = step_colour(max(since, 0), self.arrays.n_steps)
        styles, classes = [f"background: {background}", f"color: {text}"], ["tok", "kept"]
        shadows, notes = [], [f"position {position}", f"kept token since step {since}"]
        if record is not None:
            i = position - record.start
            notes += _step_notes(record, i, self.token_text, int(self.arrays.steps[column]))
            if record.accepted[i]:
                classes.append("accepted")  # static/tokens.css: the ✓ badge and a dark green border
            if record.flipped[i] and record.step > 0:
                classes.append("flipped")
                shadows.append(f"inset 0 3px 0 {DRAFT_FLIP_COLOUR}")
            if record.final:
                classes.append("final")
                notes.append(f"canvas {record.canvas} ended here: its draft is kept")
        if shadows:
            styles.append("box-shadow: " + ", ".join(shadows))
        return _span(classes, styles, " · ".join(notes), self.token_text(token))

    def _noise(self, position: int, column: int, record: CanvasRecord) -> str:
        i = position - record.start
        at = int(self.arrays.steps[column])
        classes, styles, extra = ["tok", "noise"], [NOISE_STYLE], ""
        lost = record.renoised[i] and not record.noise_in[i]  # held a kept token going in
        if record.noise_in[i]:
            head = f"noise (random token '{self.token_text(int(record.tokens_in[i]))}' this step)"
        else:
            head = f"noise: its kept token '{self.token_text(int(record.tokens_in[i]))}' was re-noised this step"
        notes = [f"position {position}", head, *_step_notes(record, i, self.token_text, at)]
        following = canvas_record(self.arrays, column + 1)
        if (
            record.renoised[i]
            and following is not None
            and (following.canvas, following.start, following.step) == (record.canvas, record.start, record.step + 1)
        ):
            fresh = self.token_text(int(following.tokens_in[i]))
            notes.append(f"re-noised: random token '{fresh}' goes into the next step")
        if record.renoised[i]:
            classes.append("renoised")
        if lost:
            classes.append("remasked")  # static/tokens.css: a dashed outline and the ↺ badge
            extra = ' data-remasks="1"'
            styles.append(f"outline: 2px dashed {RENOISED_COLOUR}")
        if record.flipped[i] and record.step > 0:
            classes.append("flipped")
            styles.append(f"box-shadow: inset 0 3px 0 {DRAFT_FLIP_COLOUR}")
        return _span(classes, styles, " · ".join(notes), None, extra)

    def spans(self, column: int) -> list[str]:
        return [self.span(p, column) for p in range(self.arrays.gen_length)]


def render_canvas_tokens(
    arrays: RunArrays,
    token_text: Callable[[int], str],
    step: int | None,
    prompt_text: str,
    separator: str = " ",
    hint: str = "",
    footer: str = "",
) -> str:
    """The prompt, then every generated position after `step` (None: the last): one `.tok` span a
    position, in order (as `views.tokens.render_tokens`), a legend, `hint` (plain text), then
    `footer` (markup: the draft line)."""
    spans = CanvasTokens.of(arrays, token_text).spans(state_column(arrays, step))
    prompt = f'<span class="prompt">{_esc(prompt_text)}</span>' if prompt_text else ""
    line = separator.join([prompt, *spans] if prompt else spans)
    run_id = arrays.run.get("id")
    owner = f' data-run="{int(run_id)}"' if run_id is not None else ""
    return (
        f'<div class="tokens-view canvas-view"{owner}><div class="tokens-line">{line}</div>'
        f"{canvas_legend(hint)}{footer}</div>"
    )


def canvas_segments(arrays: RunArrays, token_text: Callable[[int], str]) -> list[list]:
    """The page's player's segments of a canvas run ([[position, start step, span html], ...]): each
    position's placeholder before any step, then a segment at every step at which its span changes
    (its token, noise or marks), in (position, step) order."""
    view = CanvasTokens.of(arrays, token_text)
    G, S = arrays.tokens.shape
    shown = [not_started(p) for p in range(G)]
    out: dict[int, list[list]] = {p: [[p, BEFORE_ANY_STEP, shown[p]]] for p in range(G)}
    previous: set[int] = set()  # positions of the previous step's canvas (their marks may go)
    for column in range(S):
        record = canvas_record(arrays, column)
        here = set(range(record.start, record.start + record.size)) if record is not None else set()
        changed = set(np.flatnonzero(view.since[:, column] != (view.since[:, column - 1] if column else -2)).tolist())
        if record is None:  # a record-less step: every span may change (drafts-only runs are small)
            changed = set(range(G))
        for position in sorted(here | previous | changed):
            span = view.span(position, column)
            if span != shown[position]:
                shown[position] = span
                out[position].append([position, int(arrays.steps[column]), span])
        previous = here
    return [segment for p in range(G) for segment in out[p]]


def canvas_legend(hint: str = "") -> str:
    """One line explaining a canvas run's token view."""
    gradient = ", ".join(STEP_RAMP)
    noise = f'<span class="tok noise" style="{NOISE_STYLE}">{NOISE_GLYPH}</span>'
    accepted = '<span class="tok kept accepted" style="background: #35b779; color: #000000">word</span>'
    lost = (
        f'<span class="tok noise remasked" data-remasks="1" style="{NOISE_STYLE}; '
        f'outline: 2px dashed {RENOISED_COLOUR}">{NOISE_GLYPH}</span>'
    )
    flip = f'<span class="tok" style="box-shadow: inset 0 3px 0 {DRAFT_FLIP_COLOUR}">word</span>'
    tail = f'<div class="tokens-hint">{_esc(hint)}</div>' if hint else ""
    return (
        '<div class="tokens-legend canvas-legend"><span class="legend-colour">colour = step at which the token was '
        f'kept: early → late <span class="ramp" style="background: linear-gradient(to right, {gradient})"></span>; '
        f"</span>{noise} = noise (a random token, named in the hover); {accepted} ✓ = accepted at this step; "
        f"{lost} ↺ = re-noised: lost its kept token at this step; {flip} pink top bar = its argmax changed at "
        f"this step; {_unstarted_chip()} empty dashed box = its canvas has not started; below: the step's draft "
        f"(argmax){tail}</div>"
    )


def live_noise(position: int, step: int, lost: bool) -> str:
    """A noise chip of a run still decoding (the live view: no hover detail until the run ends)."""
    tip = f"position {position} · noise after step {step}" + (" · its kept token was re-noised" if lost else "")
    style = NOISE_STYLE + (f"; outline: 2px dashed {RENOISED_COLOUR}" if lost else "")
    classes, badge = ("tok noise remasked", ' data-remasks="1"') if lost else ("tok noise", "")
    return f'<span class="{classes}"{badge} style="{style}" data-tip="{_esc(tip)}">{NOISE_GLYPH}</span>'


def not_started(position: int) -> str:
    """An empty dashed box with a faint dot: nothing there yet (unlike noise, which is a random token)."""
    return _unstarted_chip(f"position {position} · its canvas has not started")


def _unstarted_chip(tip: str = "") -> str:
    title = f' data-tip="{_esc(tip)}"' if tip else ""
    return f'<span class="tok unstarted" style="{UNSTARTED_STYLE}"{title}>{UNSTARTED_GLYPH}</span>'


def placeholder(position: int, why: str) -> str:
    return f'<span class="tok masked" data-tip="position {position} · {_esc(why)}">{MASK_GLYPH}</span>'


def _step_notes(record: CanvasRecord, i: int, token_text: Callable[[int], str], step: int) -> list[str]:
    """What the step did at canvas entry i: sampled, accepted or re-noised, argmax flip (plain text)."""
    sampled = f"step {step} sampled '{token_text(int(record.sampled[i]))}' (p {float(record.sampled_prob[i]):.2f})"
    sampled += ", accepted" if record.accepted[i] else ", not accepted"
    notes = [sampled]
    if record.flipped[i] and record.step > 0:
        notes.append("its argmax changed at this step")
    return notes


def _span(classes: list[str], styles: list[str], tip: str, text: str | None, extra: str = "") -> str:
    shown = NOISE_GLYPH if text is None else _esc(text)
    return f'<span class="{" ".join(classes)}" style="{"; ".join(styles)}"{extra} data-tip="{_esc(tip)}">{shown}</span>'


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)
