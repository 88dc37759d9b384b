"""What the Decode tab shows of one state of a run, by output name, and the view that binds the
names to the tab's components (shared by the Decode and Runs tabs)."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from explorer.branching.alternatives import CHECKED_MODELS
from explorer.services import Services
from explorer.store.arrays import RunArrays
from explorer.ui.logic import ArraysCache, summarise, token_text_for, violation_cost_note
from explorer.views import canvas_figures, pairwise
from explorer.views import figures as plots
from explorer.views.canvas import CanvasGrids, draft_line, is_canvas_run
from explorer.views.canvas import status_line as canvas_status_line
from explorer.views.canvas_tokens import render_canvas_tokens
from explorer.views.player import embed, stored_payload
from explorer.views.speed import speed_html, speed_of
from explorer.views.tokens import gate_line, render_tokens
from explorer.views.verdict import final_verdict

# What the Decode tab shows of a run state, by name (the /decode, /scrub and /open_run outputs
# start with these, in this order; the branch line and its two buttons only change when another
# run is shown; the changes map came later, so it is last and the earlier outputs keep their place;
# then the analysis section's note and its reading guide, which say what the maps show for this run).
VIEW = (
    "status",
    "tokens",
    "heat",
    "order",
    "bars",
    "violation_heat",
    "energy_heat",
    "pair_s",
    "pair_a",
    "candidates",
    "violation_cost",
    "lineage",
    "compare_parent",
    "open_parent",
    "changes",
    "speed",
    "analysis_note",
    "reading_guide",
)
BRANCH_HINT = "Click (tap) any token to branch from it: the branch starts after the step on the slider."
# The analysis section's plot labels: a masked run's, and what the same slots show for a canvas run
# (the page's player relabels the plots: static/components/player.js CANVAS_LABELS, by elem_id).
ANALYSIS_TITLES = {
    "violation_heat": "Dependency violations",
    "energy_heat": "Energy",
    "pair_s": "Pairwise S of a step",
    "pair_a": "Pairwise A of a step",
    "candidates": "Energies of a step's candidates",
}
CANVAS_TITLES = {
    "violation_heat": "Accepted tokens",
    "energy_heat": "Argmax flips",
    "pair_s": "Entropy of the canvas",
    "pair_a": "Stop criteria",
    "candidates": "Noise going in",
}
ANALYSIS_NOTE = """#### Dependency violations and energies
Tokens committed in the same step are chosen without seeing each other. **Dependency violations** (tick the box
on the left) measure, for each pair, how knowing one token changes the model's belief in the other: strongly
negative S = they contradict each other (like *an* + *girl*). **Energies** (the accordion on the left) choose
among several candidate fillings of a step. The maps below show where this happened; the matrices and the
candidates show the step picked with the step slider."""
CANVAS_ANALYSIS_NOTE = """#### What each step did to its canvas
A canvas model (uniform noise) has no dependency violations or energies: each step samples a token at every
position of its canvas (a block of the text), **accepts** some and **re-noises** the rest with random tokens; its
argmax is the step's *draft*, and the canvas stops once that draft is stable and confident. The maps below are
position × step, grey outside the step's canvas: which tokens were accepted, where the draft's argmax changed,
each position's entropy (nats), the stop criteria, and where noise went into the step."""

Shown = dict[str, object]  # output name -> value
# A canvas model's run has no dependency-violation pass; its slots show the canvas's maps instead.
CANVAS_COST_NOTE = (
    "Canvas model (uniform noise): the maps below show each step's canvas instead of violations and energies: "
    "accepted, argmax flips, entropy (nats), the stop criteria, noise going in."
)


def status_html(kind: str, text: str) -> str:
    return f'<div class="status status-{kind}">{html.escape(text)}</div>'


def render_view(
    services: Services,
    arrays: RunArrays,
    step: int | None,
    metric: str,
    text: str | None,
    device: str | None = None,
    player: bool = False,
) -> Shown:
    """The Decode tab's main outputs for one state of a run: summary, tokens and figures (the
    metric heatmap, the commit order, the tokens per step and the changes map).
    `device`: the worker's device line, appended to the summary of a run it just decoded.
    `player`: the token view also carries every state of the run, for the page's player (a
    run opened or ended; the page then scrubs it without asking the server)."""
    token_text = token_text_for(services, arrays)
    summary = summarise(arrays, text, arrays.run["model"])
    canvas = is_canvas_run(arrays)
    # A canvas run's line in its own words: tokens kept, decoder passes, kept tokens re-noised.
    line = canvas_status_line(arrays, summary.status, forward_passes(services, arrays)) if canvas else summary.line()
    line += f" · {device}" if device else ""
    # A finished run on a server that runs models can be branched: the token view says how.
    branchable = services.pool is not None and summary.status != "running" and arrays.run.get("id") is not None
    if canvas:  # a canvas model's run: noise as noise, this step's marks, and the step's draft below
        tokens = render_canvas_tokens(
            arrays,
            token_text,
            step,
            arrays.run.get("prompt", ""),
            hint=BRANCH_HINT if branchable else "",
            footer=draft_line(arrays, step, token_text),
        )
    else:
        tokens = render_tokens(
            arrays,
            token_text,
            step,
            arrays.run.get("prompt", ""),
            hint=BRANCH_HINT if branchable else "",
            footer=gate_line(arrays, step, token_text),  # a gated run: what the step proposed and kept
        )
    if player:
        marks = None if canvas else checker_marks(arrays, token_text)
        tokens += embed(stored_payload(arrays, token_text, step, marks))

    def worded(fig):  # a canvas run's words, and a tick every other step on the half-width figures
        if canvas:
            canvas_figures.in_canvas_words(fig)
            canvas_figures.step_ticks(fig, arrays.n_steps)
        return fig

    return {
        "status": status_html("ok" if summary.status in ("completed", "running") else "warn", line),
        "tokens": tokens,
        "heat": heat_figure(arrays, metric, step),
        "order": worded(plots.commit_order_map(arrays, step=step)),
        "bars": worded(plots.tokens_per_step(arrays, step=step)),
        "changes": worded(plots.changes_map(arrays, step=step, token_text=token_text)),
    }


def forward_passes(services: Services, arrays: RunArrays) -> int | None:
    """The decoder passes a stored run's steps ran (None: not stored, or no store here)."""
    store, run_id = getattr(services, "store", None), arrays.run.get("id")
    return store.forward_passes(int(run_id)) if store is not None and run_id is not None else None


def heat_figure(arrays: RunArrays, metric: str, step: int | None):
    """The heatmap slot: the metric while each position was masked, or for a canvas model's run
    the metric at every position of each step's canvas."""
    if is_canvas_run(arrays):
        return canvas_figures.canvas_metric_heatmap(arrays, metric, step=step)
    return plots.metric_heatmap(arrays, metric, step=step)


def checker_marks(arrays: RunArrays, token_text) -> dict | None:
    """The story checker's verdicts on a finished run's tokens, by generated position; None where
    the checker does not apply (another model, or masks left)."""
    verdict = final_verdict(arrays, token_text) if arrays.run["model"] in CHECKED_MODELS else None
    return verdict.marks() if verdict is not None else None


def speed_panel(services: Services, arrays: RunArrays) -> str:
    """The speed panel of a stored run that has ended (an empty note while it runs)."""
    run_id = arrays.run.get("id")
    run = services.store.get_run(int(run_id)) if run_id is not None else None
    if run is None or run["status"] == "running":
        return speed_html(None)
    steps = services.store.step_summaries(int(run_id))
    extras = arrays.extras if len(arrays.extras) == len(steps) else None  # the cost extras, read with the arrays
    return speed_html(speed_of(run, steps, services.store.forward_passes(int(run_id)), extras))


def render_analysis(services: Services, arrays: RunArrays, step: int | None, marker: int | None = None) -> Shown:
    """The violations and energies of a run: the two position x step maps (their step marker at
    `marker`, default `step`), the pairwise S and A matrices and the candidates' energies of
    `step` (None: the run's most telling step), and the measured cost of the violations' extra pass."""
    marker = step if marker is None else marker
    if is_canvas_run(arrays):  # no violations or energies: the canvas's own maps in their slots
        grids = canvas_figures.canvas_grids(arrays)
        figures = {
            "violation_heat": canvas_figures.accepted_map(arrays, step=marker, grids=grids),
            "energy_heat": canvas_figures.flips_map(arrays, step=marker, grids=grids),
            **step_figures(services, arrays, marker, grids),
        }
        return {**analysis_frame(figures, canvas=True), "violation_cost": CANVAS_COST_NOTE}
    figures = {
        "violation_heat": plots.violation_heatmap(arrays, step=marker),
        "energy_heat": plots.energy_heatmap(arrays, step=marker),
        **step_figures(services, arrays, step),
    }
    return {**analysis_frame(figures, canvas=False), "violation_cost": violation_cost_note(arrays)}


def analysis_frame(figures: Shown, canvas: bool) -> Shown:
    """The analysis section for a masked or a canvas run: `figures` (by slot name) as they are, the
    section's note, and the pairwise matrices' reading guide (hidden for a canvas run, which has no
    pairwise matrices). The plots' labels follow the run shown in the page (static/components/
    player.js, from the player's payload: CANVAS_TITLES), so the API's outputs stay the figures."""
    return {
        **figures,
        "analysis_note": CANVAS_ANALYSIS_NOTE if canvas else ANALYSIS_NOTE,
        "reading_guide": gr.update(visible=not canvas),
    }


def step_figures(services: Services, arrays: RunArrays, step: int | None, grids: CanvasGrids | None = None) -> Shown:
    """The figures of one step (redrawn when the page's player comes to rest): the pairwise S and A
    matrices and the candidates' energies of `step` (None: the run's most telling step); for a canvas
    model's run the entropy map (nats), the stop criteria and the noise map, marked at `step` (`grids`:
    its records' grids when the caller has them already)."""
    if is_canvas_run(arrays):
        grids = grids if grids is not None else canvas_figures.canvas_grids(arrays)
        return {
            "pair_s": canvas_figures.canvas_entropy_heatmap(arrays, step=step),
            "pair_a": canvas_figures.stop_criteria(arrays, step=step, grids=grids),
            "candidates": canvas_figures.noise_map(arrays, step=step, grids=grids),
        }
    token_text = token_text_for(services, arrays)
    return {
        "pair_s": pairwise.pairwise_matrix(arrays, step, "S", token_text),
        "pair_a": pairwise.pairwise_matrix(arrays, step, "A", token_text),
        "candidates": pairwise.candidate_energies(arrays, step),
    }


def render_all(
    services: Services, arrays: RunArrays, step: int | None, metric: str, text: str | None, device: str | None = None
) -> Shown:
    """Every output of the Decode tab's view (`VIEW`)."""
    return {**render_view(services, arrays, step, metric, text, device), **render_analysis(services, arrays, step)}


def lineage(services: Services, arrays: RunArrays, live: bool = False) -> Shown:
    """The line under the status for a branch (its parent, branch step and edits) and its
    buttons (shown once it has ended); empty for a run that is not a branch."""
    run = arrays.run
    parent, k = run.get("parent_run_id"), run.get("branch_step")
    if parent is None or k is None:
        return {"lineage": "", "compare_parent": gr.Button(visible=False), "open_parent": gr.Button(visible=False)}
    token_text = token_text_for(services, arrays)
    edits = [
        f"position {p} forced to '{token_text(t)}'" if forced else f"position {p} re-masked (was '{token_text(t)}')"
        for _, p, t, forced in arrays.edits.rows()
    ]
    what = (
        "; ".join(edits)
        if edits
        else "no edit, " + ("other settings" if _settings_changed(services, run) else "same settings")
    )
    exists = services.store.get_run(int(parent)) is not None
    text = f"↳ Run {run.get('id')} is a branch of run {parent} after step {k} ({what})" + (
        ": decoding…" if live else "."
    )
    if not exists:
        text += " The parent run has been deleted."
    return {
        "lineage": f'<div class="lineage">{html.escape(text)}</div>',
        "compare_parent": gr.Button(visible=exists and not live),
        "open_parent": gr.Button(visible=exists and not live),
    }


def _settings_changed(services: Services, run: dict) -> bool:
    parent = services.store.get_run(int(run["parent_run_id"]))
    return parent is not None and parent.get("config") != run.get("config")


def pending_analysis(canvas: bool = False) -> Shown:
    """The analysis section while a run (of a canvas model: `canvas`) decodes: says when it will show."""
    titles = CANVAS_TITLES if canvas else ANALYSIS_TITLES
    shown: Shown = {
        name: plots.empty_figure(title, "Shown when the run ends.", f"pending-{title}")
        for name, title in titles.items()
    }
    cost = CANVAS_COST_NOTE if canvas else "Cost: measured when the run ends."
    return {**analysis_frame(shown, canvas), "violation_cost": cost}


@dataclass
class DecodeView:
    """The Decode tab's output components by name, and what the other tabs need of it."""

    components: dict[str, gr.components.Component]  # VIEW plus slider, metric, run_state, job_state

    def bind(self, shown: Shown) -> dict:
        """{name: value} -> {component: value}: what a Gradio handler returns."""
        return {self.components[name]: value for name, value in shown.items()}

    def outputs(self, *extra: str) -> list:
        """The components a handler may update: the view, then `extra`, in a fixed order (the
        order an API client sees)."""
        return [self.components[name] for name in (*VIEW, *extra)]

    def stored(
        self,
        services: Services,
        cache: ArraysCache,
        run_id: int,
        metric: str,
        status_html: str | None = None,
        device: str | None = None,
        step: int | None = None,
    ) -> dict:
        """A run as the store holds it (after it ended), on its last step (or `step`), with every
        state in the token view for the page's player."""
        cache.forget(run_id)
        arrays = cache.get(run_id)
        last_step = int(arrays.steps[-1]) if arrays.n_steps else 0
        shown_step = last_step if step is None else min(max(int(step), 0), last_step)
        text = f"{arrays.run['prompt']} {arrays.run['final_text'] or ''}"
        shown = {
            **render_view(services, arrays, shown_step, metric, text, device=device, player=True),
            **render_analysis(services, arrays, step, marker=shown_step),
            "speed": speed_panel(services, arrays),
        }
        if status_html is not None:
            shown["status"] = status_html
        return self.bind(
            {
                **shown,
                **lineage(services, arrays),
                "slider": gr.Slider(0, max(last_step, 1), value=shown_step, step=1, interactive=True),
                "run_state": run_id,
            }
        )
