"""What the branch panel says, as pure functions of a run (no Gradio): its head, the stored top
choices under it, and the alternatives analysis as table rows."""

from __future__ import annotations

import html
import math
import re

import pandas as pd

from explorer.store.arrays import RunArrays
from explorer.views.tokens import MASK_GLYPH, state_at

ALT_COLUMNS = [
    "token",
    "p",
    "run",
    "checker",
    "violation score after the step (nats)",
    "AR NLL (nats / token)",
    "changed positions (parent → this run)",
]
ROW_KEYS = ("token", "p", "run", "checker", "violations", "ar_nll", "changed")


def outcome_table(rows: list[dict]) -> pd.DataFrame:
    cells = [[_token_cell(row), *(row[key] for key in ROW_KEYS[1:])] for row in rows]
    return pd.DataFrame(cells, columns=ALT_COLUMNS)


def _token_cell(row: dict) -> str:
    return row["token"] + (" (as decoded)" if row["as_decoded"] else "")


def outcome_row(outcome) -> dict:
    """One alternative's outcome: a table row (ROW_KEYS) and the figure's data."""
    if outcome.valid is None:
        checker = "n/a"
    elif outcome.valid:
        checker = "valid"
    else:  # the kinds only ("kind@word: message; ..."): the full messages would crowd out the table
        kinds = sorted(set(re.findall(r"(\w+)@\d+:", outcome.verdict or "")))
        checker = f"{outcome.n_violations} violation(s)" + (f": {', '.join(kinds)}" if kinds else "")
    changed = ", ".join(f"{p}: {old} → {new}" for p, old, new in outcome.changed)
    prob = float(outcome.prob)
    return {
        "token": outcome.token_text,
        "as_decoded": outcome.as_decoded,
        "p": round(prob, 3) if math.isfinite(prob) else "n/a",
        "run": int(outcome.run_id),
        "checker": checker,
        "violations": round(float(outcome.violation_score), 2),
        "ar_nll": "n/a" if outcome.ar_nll is None else round(float(outcome.ar_nll), 3),
        "changed": clip(changed, 100) or "none",
        "valid": outcome.valid,
        "violation_score": float(outcome.violation_score),
    }


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def panel_head(arrays: RunArrays, k: int, position: int, token_text, moved_from: int | None) -> str:
    """The panel's head (escaped): the choice, the token there now, and what a branch does."""
    run_id = arrays.run["id"]
    state = state_at(arrays, k)
    since = int(state.since[position])
    now = (
        f"'{token_text(int(state.tokens[position]))}' (committed at step {since})"
        if since >= 0
        else MASK_GLYPH + " (still masked)"
    )
    masked = int((state.since < 0).sum())
    after = "from the prompt" if k < 0 else f"after step {k}"
    lines = [
        f"<b>Branch run {run_id} {html.escape(after)}, at position {position}</b>: now {html.escape(now)}.",
        html.escape(
            f"A branch is a new run from this exact state: your change here, then the {masked} masked "
            f"position(s) decoded again with run {run_id}'s settings."
        ),
    ]
    if moved_from is not None:
        lines.append(
            html.escape(
                f"Nothing is left to decode after step {moved_from} (the slider), so it starts after step {k}, "
                "where this token was committed. Move the slider to pick another step."
            )
        )
    return '<div class="branch-head">' + "".join(f"<p>{line}</p>" for line in lines) + "</div>"


def stored_choices(
    arrays: RunArrays, position: int, now: int | None, token_text
) -> tuple[str, list[tuple[int, float]]]:
    """(the note above the buttons, [(token id, p)]): the stored top choices of the position's
    last commit, without the token standing there now."""
    at = int(arrays.commit_step[position])
    stored = [
        (int(t), float(p))
        for t, p in zip(arrays.commit_top_ids[position].tolist(), arrays.commit_top_probs[position].tolist())
        if t >= 0 and p == p and int(t) != now  # p == p: not NaN
    ]
    if not stored:
        return "No stored alternatives for this position: type a word below.", []
    where = f"when step {at} committed this position" if at >= 0 else "at its commit"
    return f"**One click branches** with one of the model's other top choices here (p {where}):", stored
