"""The decoded sequence as an HTML fragment: each token coloured by the step that committed it.

Pure: RunArrays in, a string out (styles in static/tokens.css). Every piece of text that
comes from the model or the user (token strings, the prompt, tooltips) goes through
`html.escape(..., quote=True)` exactly once before it is placed in markup, so a token such as
`<img src=x onerror=alert(1)>` is shown, never run.
"""
from __future__ import annotations

import html
from collections.abc import Callable, Collection

import numpy as np

from explorer.trajectory import RunArrays

# Plotly's Viridis, the colorscale of plots.commit_order_map, so a token's colour here
# matches its marker there. Dark purple = early, yellow = late.
STEP_RAMP = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e",
             "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725")
MASK_GLYPH = "▒"


def render_tokens(arrays: RunArrays, token_text: Callable[[int], str], step: int | None,
                  prompt_text: str, separator: str = " ", highlight: Collection[int] = (),
                  highlight_label: str = "differs from the other run") -> str:
    """The prompt, then every generated position as it stood after `step` (None: the end).

    Committed positions: `<span class="tok">` with the step colour, `just` added for those
    committed at `step`; masked ones: `<span class="tok masked">▒</span>`. Each carries a
    `data-tip` tooltip (shown by static/tokens.css). Colours span the run's recorded steps,
    so while a run streams they are relative to the steps so far. `separator` joins tokens
    (a space suits word-level vocabularies). Positions in `highlight` (the compare view's
    differing positions) get the class `diff` and `highlight_label` in their tooltip.
    """
    committed = visible_commits(arrays.commit_step, step)  # (G,) bool
    final = arrays.tokens[:, -1] if arrays.n_steps else np.full(arrays.gen_length, -1)  # (G,)
    highlight = {int(p) for p in highlight}
    spans = []
    for position in range(arrays.gen_length):
        note = f" · {highlight_label}" if position in highlight else ""
        extra = " diff" if position in highlight else ""
        if committed[position]:
            spans.append(_token_span(arrays, position, int(final[position]), token_text, step, extra, note))
        else:
            tip = f"position {position} · still masked" + ("" if step is None else f" after step {step}") + note
            spans.append(f'<span class="tok masked{extra}" data-tip="{_esc(tip)}">{MASK_GLYPH}</span>')
    prompt = f'<span class="prompt">{_esc(prompt_text)}</span>' if prompt_text else ""
    line = separator.join([prompt, *spans] if prompt else spans)
    return (f'<div class="tokens-view"><div class="tokens-line">{line}</div>'
            f'{legend(step)}</div>')


def visible_commits(commit_step: np.ndarray, step: int | None) -> np.ndarray:
    """(G,) bool: positions committed by the end of `step` (None: by the end of the run)."""
    done = commit_step >= 0
    return done if step is None else done & (commit_step <= step)


def step_colour(commit_step: int, n_steps: int) -> tuple[str, str]:
    """(background, text) colours for a token committed at `commit_step` of `n_steps`."""
    fraction = commit_step / max(n_steps - 1, 1)
    background = _ramp(min(max(fraction, 0.0), 1.0))
    return background, _text_colour(background)


def legend(step: int | None = None) -> str:
    """One line explaining the colours, the mask glyph and (with a step) the outline."""
    gradient = ", ".join(STEP_RAMP)
    just = "" if step is None else f'; <span class="tok just legend-just">outlined</span> = committed at step {int(step)}'
    return ('<div class="tokens-legend">colour = step at which the token was committed: early → late '
            f'<span class="ramp" style="background: linear-gradient(to right, {gradient})"></span>; '
            f'<span class="tok masked">{MASK_GLYPH}</span> = still masked{just}</div>')


# ---- helpers -----------------------------------------------------------------------------------

def _token_span(arrays: RunArrays, position: int, token_id: int, token_text: Callable[[int], str],
                step: int | None, extra_class: str = "", note: str = "") -> str:
    committed_at = int(arrays.commit_step[position])
    background, text = step_colour(committed_at, arrays.n_steps)
    classes = ("tok just" if step is not None and committed_at == step else "tok") + extra_class
    tip = _esc(_tooltip(arrays, position, token_text) + note)
    return (f'<span class="{classes}" style="background: {background}; color: {text}" '
            f'data-tip="{tip}">{_esc(token_text(token_id))}</span>')


def _tooltip(arrays: RunArrays, position: int, token_text: Callable[[int], str]) -> str:
    """Plain text (escaped by the caller): 'position P · committed at step S · p = 0.83 · top-3: ...'."""
    parts = [f"position {position}", f"committed at step {int(arrays.commit_step[position])}"]
    prob = float(arrays.commit_prob[position])
    if np.isfinite(prob):
        parts.append(f"p = {prob:.2f}")
    alternatives = [f"{token_text(int(t))} {float(p):.2f}"
                    for t, p in zip(arrays.commit_top_ids[position], arrays.commit_top_probs[position])
                    if t >= 0 and np.isfinite(p)]
    if alternatives:
        parts.append(f"top-{len(alternatives)}: " + ", ".join(alternatives))
    return " · ".join(parts)


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
    return tuple(int(hex_colour[k:k + 2], 16) for k in (1, 3, 5))  # type: ignore[return-value]


def _text_colour(background: str) -> str:
    """Black or white, whichever contrasts more with the background (WCAG luminance)."""
    def linear(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in _rgb(background))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # contrast with black (L + 0.05) / 0.05 vs with white 1.05 / (L + 0.05)
    return "#000000" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "#ffffff"
