"""The decoded sequence as an HTML fragment: each token coloured by the step that committed it.

Pure: RunArrays in, a string out (styles in static/tokens.css). Every piece of text that
comes from the model or the user (token strings, the prompt, tooltips) goes through
`html.escape(..., quote=True)` exactly once before it is placed in markup, so a token such as
`<img src=x onerror=alert(1)>` is shown, never run.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from explorer.decoding.gates import GateRecord
from explorer.store.arrays import RunArrays
from explorer.views.changes import Revision, revision_history

# Plotly's Viridis, the colorscale of plots.commit_order_map, so a token's colour here
# matches its marker there. Dark purple = early, yellow = late.
STEP_RAMP = (
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
)
MASK_GLYPH = "▒"


def render_tokens(
    arrays: RunArrays,
    token_text: Callable[[int], str],
    step: int | None,
    prompt_text: str,
    separator: str = " ",
    highlight: Collection[int] = (),
    highlight_label: str = "differs from the other run",
    hint: str = "",
    outline_step: bool = True,
    footer: str = "",
) -> str:
    """The prompt, then every generated position as it stood after `step` (None: the end).

    Committed positions: `<span class="tok">` with the colour of the step that committed the
    token standing there, `just` added for those committed at `step`; masked ones:
    `<span class="tok masked">▒</span>`. The state is replayed from `arrays.tokens`, so a token
    a remasking strategy took away shows as masked again. A position re-masked by then gets the
    class `remasked` and `data-remasks` (its count, drawn as a ↺ badge by static/tokens.css),
    and its tooltip lists every re-mask: the step and the token taken away. Each span carries a
    `data-tip` tooltip. Colours span the run's recorded steps, so while a run streams they are
    relative to the steps so far. `separator` joins tokens (a space suits word-level
    vocabularies). Positions in `highlight` (the compare view's differing positions) get the
    class `diff` and `highlight_label` in their tooltip; `outline_step=False` leaves out the
    outline of the tokens committed at `step` (the compare view, where outlines mean "differs").

    A position a token-changing strategy (XDLM) revised by then (a visible token changed into
    another) gets the class `revised` and `data-revisions` (its count, drawn as a ⇄ badge), its
    colour is the step of its last change, and its tooltip lists every change up to `step`, one a
    line: the step, the old and the new token and their probabilities.

    A branch's edits (after its branch step k, shown from step k on): a token an edit forced
    gets the class `forced` (a ✎ badge) and the tooltip line "forced by an edit after step k";
    a position an edit re-masked gets `edited` and the token it took away. The line holds exactly
    one `.tok` span per position, in order (the Decode tab's click handler counts on it), and the
    view carries `data-run` (the run's id). `hint`: plain text added to the legend (e.g. what a
    click does). `footer`: markup placed last inside the view (a gated run's gate line): inside,
    so that the component's top-level nodes stay the view and the player's template, as in a
    live frame (Gradio updates the component in place and failed to when they differed).
    """
    state = state_at(arrays, step)
    ctx = TokenContext.of(arrays, token_text)
    highlight = {int(p) for p in highlight}
    outlined = step if outline_step else None
    spans = [
        ctx.span(
            position,
            step,
            int(state.tokens[position]),
            int(state.since[position]),
            outlined=outlined,
            highlight_label=highlight_label if position in highlight else None,
        )
        for position in range(arrays.gen_length)
    ]
    prompt = f'<span class="prompt">{_esc(prompt_text)}</span>' if prompt_text else ""
    line = separator.join([prompt, *spans] if prompt else spans)
    shown_legend = legend(
        step if outline_step else None,
        remasked=ctx.any_remask(step),
        edited=bool(edit_marks(arrays, step, state)),
        hint=hint,
        revised=ctx.any_revision(step),
    )
    run_id = arrays.run.get("id")
    owner = f' data-run="{int(run_id)}"' if run_id is not None else ""  # which run a click picks from
    return f'<div class="tokens-view"{owner}><div class="tokens-line">{line}</div>{shown_legend}{footer}</div>'


@dataclass(frozen=True)
class TokenContext:
    """What the span of any position at any step needs, indexed once per run: the commit events,
    and each position's re-masks, revisions and a branch's edits (all of the run; a span keeps
    those up to its step). One renderer for the server's token view and the page's player."""

    arrays: RunArrays
    token_text: Callable[[int], str]
    events: CommitIndex
    remasks: dict[int, list[tuple[int, int]]]  # position -> [(step, token taken away), ...]
    revisions: dict[int, list[Revision]]  # position -> its revisions, in step order
    edits: dict[int, list[tuple[int, int, bool]]]  # position -> [(step, token, forced), ...] in order

    @classmethod
    def of(cls, arrays: RunArrays, token_text: Callable[[int], str]) -> TokenContext:
        edits: dict[int, list[tuple[int, int, bool]]] = {}
        for at, position, token, forced in arrays.edits.rows():
            edits.setdefault(int(position), []).append((int(at), int(token), bool(forced)))
        return cls(
            arrays, token_text, CommitIndex.of(arrays), remask_history(arrays, None), revision_history(arrays), edits
        )

    def any_remask(self, step: int | None) -> bool:
        return any(_upto(events, step) for events in self.remasks.values())

    def any_revision(self, step: int | None) -> bool:
        return any(step is None or r.step <= step for changes in self.revisions.values() for r in changes)

    def edit_mark(self, position: int, step: int | None, token: int) -> EditMark | None:
        """The position's edit in effect after `step` (see `edit_marks`)."""
        mark = None
        for at, edited, forced in self.edits.get(position, []):
            if step is not None and step < at:
                continue
            if forced and token != edited:
                continue  # the model replaced it later (a remasking strategy)
            mark = EditMark(at, edited, forced)
        return mark

    def span(
        self,
        position: int,
        step: int | None,
        token: int,
        since: int,
        outlined: int | None = None,
        highlight_label: str | None = None,
        data: str = "",
        masked_note: str | None = None,
        note: str | None = None,
    ) -> str:
        """The `.tok` span of `position` holding `token` (committed at `since`; -1: masked) after
        `step` (None: the end). `outlined`: the step whose commits get the `just` outline;
        `highlight_label`: the position is highlighted (class `diff`) with this tooltip line;
        `data`: extra attributes (already escaped); `masked_note`: the masked tooltip's first
        part (default 'position P · still masked [after step K]'); `note`: one more tooltip line."""
        taken = _upto(self.remasks.get(position, []), step)
        changes = [r for r in self.revisions.get(position, []) if step is None or r.step <= step]
        mark = self.edit_mark(position, step, token)
        extra = (
            (" diff" if highlight_label is not None else "")
            + (" remasked" if taken else "")
            + (" revised" if changes else "")
            + (f" {mark.css}" if mark is not None else "")
        )
        notes = (
            _remask_notes(taken, self.token_text)
            + ([mark.note(self.token_text)] if mark is not None else [])
            + ([highlight_label] if highlight_label is not None else [])
            + ([note] if note else [])
        )
        badge = _badge(taken) + _revision_badge(changes) + data
        history = _revision_lines(changes, self.token_text)
        if since >= 0:
            tip = " · ".join([_tooltip(self.arrays, self.events, position, token, since, self.token_text), *notes])
            return _token_span(self.arrays, token, since, self.token_text, outlined, extra, tip + history, badge)
        if masked_note is None:
            masked_note = f"position {position} · still masked" + ("" if step is None else f" after step {step}")
        tip = " · ".join([masked_note, *notes]) + history
        return f'<span class="tok masked{extra}"{badge} data-tip="{_esc(tip)}">{MASK_GLYPH}</span>'


def _upto(events: list[tuple[int, int]], step: int | None) -> list[tuple[int, int]]:
    return events if step is None else [e for e in events if e[0] <= step]


@dataclass(frozen=True)
class EditMark:
    """A branch's edit at one position, as the token view shows it."""

    step: int  # the branch step k: the edit was applied after it (-1: before step 0)
    token: int  # forced: the token written; re-mask: the token taken away
    forced: bool

    @property
    def css(self) -> str:
        return "forced" if self.forced else "edited"

    def note(self, token_text: Callable[[int], str]) -> str:
        """Plain tooltip text (escaped by the caller)."""
        after = "before step 0" if self.step < 0 else f"after step {self.step}"
        if self.forced:
            return f"✎ forced by an edit {after} (a branch)"
        return f"✎ re-masked by an edit {after}: took away '{token_text(self.token)}', the model decoded it again"


def edit_marks(arrays: RunArrays, step: int | None, state: SequenceState | None = None) -> dict[int, EditMark]:
    """position -> its edit, for the edits in effect after `step` (None: the end): a forced
    token still standing there, or a re-masked position (whatever stands there now)."""
    state = state if state is not None else state_at(arrays, step)
    marks: dict[int, EditMark] = {}
    for at, position, token, forced in arrays.edits.rows():
        if step is not None and step < at:
            continue
        if forced and int(state.tokens[position]) != int(token):
            continue  # the model replaced it later (a remasking strategy)
        marks[int(position)] = EditMark(int(at), int(token), bool(forced))
    return marks


@dataclass(frozen=True)
class SequenceState:
    """The generated part after one step."""

    tokens: np.ndarray  # (G,) token ids, the mask id where masked
    since: np.ndarray  # (G,) the step that committed the token standing there, -1 where masked


def state_at(arrays: RunArrays, step: int | None) -> SequenceState:
    """The sequence after `step` (None: after the last step; < 0: before any step), replaying
    commits and re-masks from `arrays.tokens`."""
    mask_id = int(arrays.run["mask_id"])
    columns = arrays.n_steps if step is None else int(np.searchsorted(arrays.steps, step, side="right"))
    tokens = np.full(arrays.gen_length, mask_id, dtype=np.int64)
    since = np.full(arrays.gen_length, -1, dtype=np.int64)
    for column in range(columns):  # a token's commit step is where the mask last gave way to it
        now = arrays.tokens[:, column].astype(np.int64)
        since = np.where(now == mask_id, -1, np.where(now != tokens, int(arrays.steps[column]), since))
        tokens = now
    return SequenceState(tokens, since)


def remask_history(arrays: RunArrays, step: int | None) -> dict[int, list[tuple[int, int]]]:
    """position -> [(step, token taken away), ...] of the re-masks up to `step` (None: all), in step order."""
    out: dict[int, list[tuple[int, int]]] = {}
    events = sorted(zip(arrays.remasks.step.tolist(), arrays.remasks.position.tolist(), arrays.remasks.token.tolist()))
    for at, position, token in events:
        if step is None or at <= step:
            out.setdefault(int(position), []).append((int(at), int(token)))
    return out


def step_colour(commit_step: int, n_steps: int) -> tuple[str, str]:
    """(background, text) colours for a token committed at `commit_step` of `n_steps`."""
    fraction = commit_step / max(n_steps - 1, 1)
    background = _ramp(min(max(fraction, 0.0), 1.0))
    return background, _text_colour(background)


def legend(
    step: int | None = None, remasked: bool = False, edited: bool = False, hint: str = "", revised: bool = False
) -> str:
    """One line explaining the colours, the mask glyph, (with a step) the outline, (when the
    run re-masked tokens) the ↺ badge, (revised tokens) the ⇄ badge, (a branch's edits) the ✎
    badge, then `hint` (plain text)."""
    gradient = ", ".join(STEP_RAMP)
    what = "committed (or revised)" if revised else "committed"
    outlined = '<span class="tok just legend-just">outlined</span>'
    just = "" if step is None else f'<span class="legend-step">; {outlined} = {what} at step {int(step)}</span>'
    changed = (
        '; <span class="tok revised legend-revised" data-revisions="1">word</span> ⇄ = revised: the model changed '
        "this visible token into another (its colour is the step of its last change; hover for each change: "
        "step, old → new token, their probabilities)"
        if revised
        else ""
    )
    again = (
        '; <span class="tok masked remasked legend-remask" data-remasks="1">'
        + MASK_GLYPH
        + "</span> ↺ = re-masked: a remasking strategy took its token away (hover for when and which)"
        if remasked
        else ""
    )
    forced = (
        '; <span class="tok forced legend-forced">word</span> ✎ = put there (or re-masked) by an edit of this branch'
        if edited
        else ""
    )
    tail = f'<div class="tokens-hint">{_esc(hint)}</div>' if hint else ""
    return (
        '<div class="tokens-legend"><span class="legend-colour">colour = step at which the token was committed: '
        f'early → late <span class="ramp" style="background: linear-gradient(to right, {gradient})"></span>; </span>'
        f'<span class="tok masked">{MASK_GLYPH}</span> = still masked{just}{again}{changed}{forced}{tail}</div>'
    )


# ---- a gated step's proposal -----------------------------------------------------------------------

GATE_RULES = {  # GateRecord.rule -> what the line calls it
    "drop": "lookahead gate",
    "exact": "exact lookahead gate",
    "energy": "energy gate",
    "pairwise": "pairwise gate",
}
SHOWN_REJECTS = 8  # rejected tokens named in a gate line; more are counted


def gate_text(gate: GateRecord, step: int, token_text: Callable[[int], str]) -> str:
    """Plain text (escaped by the caller): what a gated step proposed and kept, e.g. "lookahead
    gate · step 5: proposed 8, kept 5; rejected position 12 'a' (drop 2.30 nats); after it in
    proposal order position 14 'b' (drop 0.10 nats, flip)". A prefix rule's score is the token's
    drop (and it keeps the proposal up to its first failing token); the pairwise rule's is its most
    negative S_ij against the tokens kept before it."""
    rule = GATE_RULES.get(gate.rule, gate.rule)
    text = f"{rule} · step {step}: proposed {len(gate.proposed)}, kept {gate.n_accepted}"
    rejected = [i for i, kept in enumerate(gate.accepted) if not kept]
    if rejected:
        named = [_rejected(gate, i, token_text) for i in rejected[:SHOWN_REJECTS]]
        more = len(rejected) - SHOWN_REJECTS
        tail = f" and {more} more" if more > 0 else ""
        if gate.rule == "pairwise" or len(named) == 1:
            text += "; rejected " + ", ".join(named) + tail
        else:  # a prefix rule stops at its first failing token: the rest go with it
            text += f"; rejected {named[0]}; after it in proposal order " + ", ".join(named[1:]) + tail
    if gate.reused:
        text += " · logits reused from the previous step's probe"
    return text


def _rejected(gate: GateRecord, i: int, token_text: Callable[[int], str]) -> str:
    score, reasons = float(gate.score[i]), []
    if gate.rule == "pairwise":
        if score < 0:
            reasons.append(f"S {score:+.2f} nats against a kept token")
    elif math.isfinite(score):
        reasons.append(f"drop {round(score, 2) + 0.0:.2f} nats")  # + 0.0: no "-0.00"
    if gate.flip[i]:
        reasons.append("flip")
    why = f" ({', '.join(reasons)})" if reasons else ""
    return f"position {int(gate.proposed[i])} '{token_text(int(gate.tokens[i]))}'{why}"


def gate_lines(arrays: RunArrays, token_text: Callable[[int], str]) -> dict[int, str]:
    """{step: the escaped gate line} of every gated step of a run ({} for a run of another strategy)."""
    return {
        int(step): _esc(gate_text(extras.gate, int(step), token_text))
        for step, extras in zip(arrays.steps.tolist(), arrays.extras)
        if extras.gate is not None
    }


def gate_line(arrays: RunArrays, step: int | None, token_text: Callable[[int], str]) -> str:
    """The `.gate-line` block under a gated run's token view, saying what `step` (None: the last)
    proposed and kept (the page's player rewrites it as it moves); "" for a run with no gated step."""
    if not any(extras.gate is not None for extras in arrays.extras):
        return ""
    text = ""
    if arrays.n_steps:
        column = len(arrays.steps) - 1 if step is None else int(np.searchsorted(arrays.steps, int(step)))
        if column < arrays.n_steps and (step is None or int(arrays.steps[column]) == int(step)):
            gate = arrays.extras[column].gate
            if gate is not None:
                text = _esc(gate_text(gate, int(arrays.steps[column]), token_text))
    return f'<div class="gate-line">{text}</div>'


# ---- helpers -----------------------------------------------------------------------------------


def _token_span(
    arrays: RunArrays,
    token: int,
    committed_at: int,
    token_text: Callable[[int], str],
    step: int | None,
    extra_class: str,
    tip: str,
    badge: str,
) -> str:
    """A visible token: coloured by the step that put it there; `tip` is plain text (escaped here)."""
    background, text = step_colour(committed_at, arrays.n_steps)
    classes = ("tok just" if step is not None and committed_at == step else "tok") + extra_class
    return (
        f'<span class="{classes}" style="background: {background}; color: {text}"{badge} '
        f'data-tip="{_esc(tip)}">{_esc(token_text(token))}</span>'
    )


@dataclass(frozen=True)
class CommitIndex:
    """The run's commit events by (step, position), and each position's event steps, in order."""

    at: dict[tuple[int, int], int]  # (step, position) -> index into arrays.commits
    changes: dict[int, list[tuple[int, str]]]  # position -> [(step, 'commit' | 'revise' | 're-mask'), ...]

    @classmethod
    def of(cls, arrays: RunArrays) -> CommitIndex:
        c = arrays.commits
        at = {(int(s), int(p)): i for i, (s, p) in enumerate(zip(c.step.tolist(), c.position.tolist()))}
        changes: dict[int, list[tuple[int, str]]] = {}
        for s, p, revised in zip(c.step.tolist(), c.position.tolist(), c.revised.tolist()):
            changes.setdefault(int(p), []).append((int(s), "revise" if revised else "commit"))
        for s, p in zip(arrays.remasks.step.tolist(), arrays.remasks.position.tolist()):
            changes.setdefault(int(p), []).append((int(s), "re-mask"))
        return cls(at, {p: sorted(events) for p, events in changes.items()})

    def later(self, position: int, step: int) -> str | None:
        """What next happened to the position after `step` ('re-masked later', 'revised later at
        step 6'), None if nothing did."""
        for at, kind in self.changes.get(position, []):
            if at > step:
                return "re-masked later" if kind == "re-mask" else f"revised later (step {at})"
        return None


def _tooltip(
    arrays: RunArrays,
    events: CommitIndex,
    position: int,
    token: int,
    committed_at: int,
    token_text: Callable[[int], str],
) -> str:
    """Plain text (escaped by the caller): 'position P · committed at step S · p = 0.83 · top-3: ...'
    ('revised at step S' where a revision put the token there). p and the alternatives are those
    the model gave when that token was written (none for a token a branch's edit forced)."""
    i = events.at.get((committed_at, position))
    c = arrays.commits
    later = events.later(position, committed_at)
    if i is None or int(c.token[i]) != token:  # a token a branch's edit forced: the model gave it no probability
        return commit_tooltip(position, committed_at, False, later, None, [], token_text)
    pairs = list(zip(c.top_ids[i].tolist(), c.top_probs[i].tolist()))
    return commit_tooltip(position, committed_at, bool(c.revised[i]), later, float(c.prob[i]), pairs, token_text)


def commit_tooltip(
    position: int,
    committed_at: int,
    revised: bool,
    later: str | None,
    prob: float | None,
    top: Sequence[tuple[int, float]],
    token_text: Callable[[int], str],
) -> str:
    """The tooltip of a visible token, plain text: where, when (and what happened next), p and
    the top alternatives when that token was written (prob None: none, a forced token; NaN: unknown)."""
    parts = [f"position {position}", f"{'revised' if revised else 'committed'} at step {committed_at}"]
    if later is not None:
        parts.append(later)
    if prob is not None:
        parts.append(f"p = {prob:.2f}" if np.isfinite(prob) else "p unknown")
    alternatives = [f"{token_text(int(t))} {float(p):.2f}" for t, p in top if t >= 0 and np.isfinite(p)]
    if alternatives:
        parts.append(f"top-{len(alternatives)}: " + ", ".join(alternatives))
    return " · ".join(parts)


def _revision_lines(changes: list[Revision], token_text: Callable[[int], str]) -> str:
    """The revision history for the tooltip, one change a line (the tooltip keeps line breaks):
    "\n⇄ revised 2×:\nstep 3: 'cat' (p 0.12 when committed) → 'dog' (p 0.54)\n..."; '' if none."""
    if not changes:
        return ""
    return f"\n⇄ revised {len(changes)}×:" + "".join(f"\n{r.text(token_text)}" for r in changes)


def _revision_badge(changes: list[Revision]) -> str:
    """The data attribute static/tokens.css draws as a ⇄ count badge ('' when never revised)."""
    return f' data-revisions="{len(changes)}"' if changes else ""


def _remask_notes(events: list[tuple[int, int]], token_text: Callable[[int], str]) -> list[str]:
    """'re-masked 2× (step 3 took away 'cat', step 5 took away 'dog')' for the tooltip, plain text."""
    if not events:
        return []
    each = ", ".join(f"step {at} took away '{token_text(token)}'" for at, token in events)
    return [f"↺ re-masked {len(events)}× ({each})"]


def _badge(events) -> str:
    """The data attribute static/tokens.css draws as a ↺ count badge ('' when never re-masked)."""
    return f' data-remasks="{len(events)}"' if events else ""


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _ramp(fraction: float) -> str:
    """Linear interpolation in RGB between the STEP_RAMP stops."""
    scaled = fraction * (len(STEP_RAMP) - 1)
    i = min(int(scaled), len(STEP_RAMP) - 2)
    a, b = _rgb(STEP_RAMP[i]), _rgb(STEP_RAMP[i + 1])
    t = scaled - i
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[k : k + 2], 16) for k in (1, 3, 5))  # type: ignore[return-value]


def _text_colour(background: str) -> str:
    """Black or white, whichever contrasts more with the background (WCAG luminance)."""

    def linear(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in _rgb(background))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # contrast with black (L + 0.05) / 0.05 vs with white 1.05 / (L + 0.05)
    return "#000000" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "#ffffff"
