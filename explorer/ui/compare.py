"""The Compare tab: two to four runs side by side, lined up on one slider, on shared colour scales.

Runs are picked from a searchable list (labels like "#12 · embedded · low_confidence · 32 tok /
8 steps · ..."). The slider aligns them *by step* (each run after step min(k, its last)) or *by
fraction of steps* (each run after step round(f x its last)); see explorer/views/align.py. The
tab finds the first slider value where the runs' sequences differ (tokens and masks): before it
nothing is outlined; from it on the positions that differ at the shown step are outlined, those
that already differed at that first divergence (class `diff-first`) apart from later differences
(`diff-later`), and the note above the texts says where the runs part ways. A branch and its
parent are the same run up to the branch step, so they part there. Below the texts a full-width
table holds one row per run (checker verdict, violations, AR-ness, forward passes, wall time...).
Run B can also be made here: run A's prompt, seed and settings decoded on another model (e.g. the
embedded MDLM against the embedded XDLM), optionally with another strategy."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import gradio as gr

from explorer.decoding.strategies import STRATEGIES
from explorer.jobs import JobDone, JobError, JobFailed, StepDone
from explorer.services import Services
from explorer.store.arrays import RunArrays
from explorer.ui.compare_markup import (
    DIFF_LABEL,
    LETTERS,
    divergence_note,
    is_number,
    outline_kinds,
    run_head,
    step_number,
    summary_table,
    where_note,
)
from explorer.ui.logic import (
    SAME_STRATEGY,
    ArraysCache,
    RequestError,
    check_budget,
    other_model,
    rerun_config,
    token_text_for,
)
from explorer.ui.toasts import refuse
from explorer.ui.view import status_html
from explorer.views import align
from explorer.views import figures as plots
from explorer.views.canvas import is_canvas_run
from explorer.views.canvas_tokens import render_canvas_tokens
from explorer.views.tokens import render_tokens

MAX_RUNS = 4
TOKENS = tuple(f"tokens_{x}" for x in "abcd")
HEATS = tuple(f"heat_{x}" for x in "abcd")
# What the slider moves (/compare_step's outputs, in this order): the note on where the runs
# differ, the token views (one per run, hidden past the runs picked), the heatmaps (likewise).
VIEW = ("note", *TOKENS, *HEATS)
# /compare's outputs: the slider (at the end), the summary table, then VIEW.
COMPARED = ("step", "summary", *VIEW)
# Everything the tab shows: open_runs, permalink_outputs, /compare_branch.
SHOWN = ("runs", "align", "metric", *COMPARED)
# /compare_other_model's outputs: the tab with run A and the new run B, then the status line.
OTHER = (*SHOWN, "other_status")

ALIGN_CHOICES = [("by step", "step"), ("by fraction of steps", "fraction")]
STEP_LABEL = "Step (each run: the state after this step, or its last step if it has fewer)"
FRACTION_LABEL = "Percent of each run's steps (each run: the state after step round(f × its last step))"
LIST_LIMIT = 200  # runs offered in the list, newest first (runs picked are always offered)


@dataclass
class CompareTab:
    """The Compare tab's components by name, and what other tabs (and a permalink) need to open runs in it."""

    services: Services
    cache: ArraysCache
    components: dict[str, gr.components.Component]

    def outputs(self, *names: str) -> list:
        return [self.components[name] for name in names]

    def bind(self, shown: dict) -> dict:
        return {self.components[name]: value for name, value in shown.items()}

    def permalink_outputs(self) -> list:
        """The components open_runs sets, in SHOWN order: everything the tab shows."""
        return self.outputs(*SHOWN)

    def open_runs(self, ids, metric: str = "confidence", mode: str = "step", step: float | None = None) -> dict:
        """The tab showing runs `ids` (2 to 4; run A first) with heatmap `metric`, aligned by
        `mode` ("step" or "fraction"), the slider at `step` (a step, or a percent by fraction;
        None: the end): {component: value} for every component of permalink_outputs()."""
        runs = load_runs(self.cache, ids)
        mode = mode if mode in align.ALIGN_MODES else "step"
        return self.bind(show_runs(self.services, runs, metric or "confidence", mode, step))

    def branch_pair(self, child_id, metric: str) -> dict:
        """A branch (B) and its parent (A), aligned by step, at the last step: {component: value}."""
        child = _load(self.cache, child_id, "B")
        parent = child.run.get("parent_run_id")
        if parent is None:
            raise refuse(f"run {child.run['id']} is not a branch: it has no parent to compare with")
        _load(self.cache, parent, "A (the parent; it may have been deleted)")
        return self.open_runs([parent, child.run["id"]], metric)

    def on_open(self, decode_run, picked):
        """The tab is opened: the list refreshed, and with no run picked yet, the Decode tab's run picked as run A."""
        try:
            ids = picked_ids(picked)
        except gr.Error:
            ids = []
        if not ids and decode_run:
            ids = [int(decode_run)]
        return run_picker(self.services, ids)

    def refresh(self, picked):
        """The list of runs, read again (the runs picked stay picked)."""
        try:
            ids = picked_ids(picked)
        except gr.Error:
            return gr.Dropdown(choices=run_choices(self.services), allow_custom_value=True)
        return run_picker(self.services, ids)


def compare_tab(services: Services, cache: ArraysCache) -> CompareTab:
    gr.Markdown(
        "Two to four runs side by side (e.g. the same prompt and seed with different strategies or models, or a "
        "branch and its parent: press *Compare with parent* under a branch in the Decode tab). Pick them from the "
        "list (type to search: an id, a strategy, a model, words of the prompt). One slider moves every run, "
        "lined up by step or by fraction of their steps; from the first step where the runs differ, the positions "
        "that differ are outlined; all heatmaps share one colour scale."
    )
    c: dict = {}
    with gr.Row():
        c["runs"] = gr.Dropdown(
            run_choices(services),
            value=[],
            multiselect=True,
            max_choices=MAX_RUNS,
            allow_custom_value=True,  # ids typed or sent by the API are checked by load_runs
            filterable=True,
            label=f"Runs to compare (2 to {MAX_RUNS}; the first is run A)",
            elem_id="compare-runs",
            scale=5,
            min_width=360,  # on a phone the button goes below the list
        )
        refresh_btn = gr.Button("↻ Refresh list", scale=0, min_width=130, elem_id="compare-refresh")
    with gr.Row(equal_height=True):
        c["align"] = gr.Radio(ALIGN_CHOICES, value="step", label="Align the runs", elem_id="compare-align")
        c["metric"] = gr.Radio(list(COMPARE_MAPS), value="confidence", label="Heatmap", elem_id="compare-metric")
        go_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn", scale=0, min_width=140)
    other_btn = _other_model_row(services, c)
    c["step"] = gr.Slider(0, 1, value=0, step=1, label=STEP_LABEL, elem_id="compare-step")
    # Right under the slider, what it moves: where the runs differ, then the texts (one per run),
    # then the table of numbers (full width), then the maps in a grid of two by two.
    c["note"] = gr.HTML(elem_id="compare-note")
    for x, name in zip("abcd", TOKENS):
        c[name] = gr.HTML(elem_id=f"compare-tokens-{x}", visible=x in "ab")
    c["summary"] = gr.HTML(elem_id="compare-summary")
    for row in ("ab", "cd"):
        with gr.Row():
            for x in row:
                label, shown = f"Run {x.upper()}: heatmap", x in "ab"
                c[f"heat_{x}"] = gr.Plot(label=label, visible=shown, elem_id=f"compare-heat-{x}")
    tab = CompareTab(services, cache, c)

    def compare(picked, mode, metric_v):
        runs = load_runs(cache, picked)
        shown = show_runs(services, runs, metric_v, mode, None)
        return tuple(shown[name] for name in COMPARED)

    def compare_at(picked, mode, metric_v, step):
        try:
            enough = len(picked_ids(picked)) >= 2
        except gr.Error:
            enough = False
        if not enough:  # nothing (or one run) picked: the slider alone does nothing
            return (gr.skip(),) * len(VIEW)
        shown = render_view(services, load_runs(cache, picked), metric_v, mode, step)
        return tuple(shown[name] for name in VIEW)

    def realign(picked, mode, metric_v, step):
        """The alignment changed: the slider keeps its place (step k <-> percent of the longest run)."""
        try:
            runs = load_runs(cache, picked)
        except gr.Error:
            return (gr.skip(),) * (1 + len(VIEW))
        last = max(max(r.n_steps for r in runs) - 1, 1)
        value = float(step or 0)
        value = round(100 * value / last) if mode == "fraction" else round(value / 100 * last)
        shown = render_view(services, runs, metric_v, mode, value)
        return (step_slider(runs, mode, value), *(shown[name] for name in VIEW))

    inputs = [c["runs"], c["align"], c["metric"]]
    go_btn.click(compare, inputs, tab.outputs(*COMPARED), api_name="compare")
    gr.on(
        [c["step"].release, c["step"].input],
        compare_at,
        [*inputs, c["step"]],
        tab.outputs(*VIEW),
        api_name="compare_step",
        trigger_mode="always_last",
    )
    c["metric"].input(compare_at, [*inputs, c["step"]], tab.outputs(*VIEW), api_name=False)
    c["align"].input(realign, [*inputs, c["step"]], tab.outputs("step", *VIEW), api_name=False)
    refresh_btn.click(tab.refresh, [c["runs"]], [c["runs"]], api_name=False)
    other = OtherModel(tab)
    other_btn.click(
        other.run,
        [c["runs"], c["other_model"], c["other_strategy"], c["metric"]],
        tab.outputs(*OTHER),
        api_name="compare_other_model",
        show_progress_on=[c["other_status"]],
    )
    c["runs"].change(other.suggest, [c["runs"]], [c["other_model"]], api_name=False)
    return tab


OTHER_NOTE = (
    "**Or make run B here**: run A's prompt, seed and settings decoded on another model "
    "(e.g. *embedded* against *embedded-xdlm*), with A's strategy or another one."
)


def _other_model_row(services: Services, c: dict) -> gr.Button:
    """The "decode run A on another model" controls (hidden on a replay-only server); its button."""
    shown = services.pool is not None
    models = list(services.models)
    gr.Markdown(OTHER_NOTE, visible=shown, elem_id="compare-other-note")
    with gr.Row(equal_height=True, visible=shown):
        c["other_model"] = gr.Dropdown(
            models, value=other_model(services, None), label="Model for B", elem_id="compare-other-model"
        )
        c["other_strategy"] = gr.Dropdown(
            [SAME_STRATEGY, *STRATEGIES], value=SAME_STRATEGY, label="Strategy for B", elem_id="compare-other-strategy"
        )
        button = gr.Button("Decode run A on this model as run B", elem_id="compare-other-btn")
    c["other_status"] = gr.HTML(elem_id="compare-other-status", visible=shown)
    return button


@dataclass
class OtherModel:
    """The handlers of "decode run A on another model": a new run B, then A and B compared."""

    tab: CompareTab

    def suggest(self, picked):
        """When run A is picked, offer the first model that is not A's."""
        try:
            ids = picked_ids(picked)
        except gr.Error:
            return gr.skip()
        run = self.tab.services.store.get_run(ids[0]) if ids else None
        if run is None:
            return gr.skip()
        return gr.Dropdown(value=other_model(self.tab.services, run["model"]) or run["model"])

    def run(self, picked, model, strategy, metric):
        services, bind = self.tab.services, self.tab.bind
        ids = picked_ids(picked)
        a = _load(self.tab.cache, ids[0] if ids else None, "A (the first run in the list)")
        model = model or other_model(services, a.run["model"])
        try:
            config = rerun_config(services, a.run, model, strategy)
            check_budget(config, services.limits.max_job_passes)
            handle = services.pool.submit(a.run["prompt"], model, config, max_seconds=services.limits.max_job_seconds)
        except (RequestError, RuntimeError) as exc:
            raise refuse(str(exc)) from None
        what = f"Decoding run {a.run['id']}'s prompt (seed {config.seed}, {config.strategy}) on {model}"
        yield bind({"other_status": status_html("busy", what + "…")})
        steps = 0
        for event in handle.iter_events():
            match event:
                case StepDone():
                    steps += 1
                    yield bind({"other_status": status_html("busy", f"{what}… step {steps}")})
                case JobDone(result=result):
                    b = self.tab.cache.get(int(result.run_id))
                    shown = show_runs(services, [a, b], metric or "confidence", "step", None)
                    done = f"Run {b.run['id']}: run {a.run['id']}'s prompt and seed on {model} ({config.strategy})."
                    yield bind({**shown, "other_status": status_html("ok", done)})
                case JobError(message=message) | JobFailed(message=message):
                    raise refuse(f"the run on {model} ended with an error: {message}")


# ---- picking runs -----------------------------------------------------------------------------------


def run_label(run: dict) -> str:
    """The list's label of a stored run: '#12 · embedded · low_confidence · 32 tok / 8 steps ·
    T 0.7 · seed 2 · once upon a time… there was a girl' (plain text: the list shows it as text)."""
    config = run.get("config") or {}
    parts = [f"#{run['id']}", str(run.get("model")), str(run.get("strategy"))]
    parts.append(f"{run.get('gen_length')} tok / {run.get('n_steps')} steps")
    if is_number(config.get("temperature")):
        parts.append(f"T {config['temperature']:g}")
    parts.append(f"seed {run.get('seed')}")
    if run.get("parent_run_id") is not None:
        parts.append(f"branch of #{run['parent_run_id']} after step {run.get('branch_step')}")
    if run.get("status") != "completed":
        parts.append(str(run.get("status")))
    prompt = _clip(" ".join(str(run.get("prompt") or "").split()), 40)
    text = _clip(" ".join(str(run.get("final_text") or "").split()), 40)
    parts.append(f"{prompt}… {text}" if text else prompt)
    return " · ".join(parts)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def run_choices(services: Services, picked=()) -> list[tuple[str, int]]:
    """(label, run id) of the newest LIST_LIMIT stored runs, then any run picked that is older."""
    runs = services.store.list_runs(limit=LIST_LIMIT)
    listed = {int(r["id"]) for r in runs}
    older = [services.store.get_run(int(i)) for i in picked if int(i) not in listed]
    return [(run_label(r), int(r["id"])) for r in [*runs, *(r for r in older if r is not None)]]


def run_picker(services: Services, ids) -> gr.Dropdown:
    """The list of runs with `ids` picked (those that exist)."""
    choices = run_choices(services, ids)
    offered = {value for _, value in choices}
    return gr.Dropdown(choices=choices, value=[int(i) for i in ids if int(i) in offered], allow_custom_value=True)


def picked_ids(values) -> list[int]:
    """Run ids from the list's value: ids, or text typed into it ('12', '#12 ...'); each once, in order."""
    ids: list[int] = []
    for value in values or []:
        if isinstance(value, bool):
            raise refuse(f"{value!r} is not a run: pick runs from the list")
        if isinstance(value, int | float) and math.isfinite(value) and value == int(value):
            run_id = int(value)
        else:
            match = re.fullmatch(r"\s*#?(\d+)\b.*", str(value), flags=re.DOTALL)
            if match is None:
                raise refuse(f"{str(value)[:60]!r} is not a run: pick runs from the list (or type a run's id)")
            run_id = int(match.group(1))
        if run_id not in ids:
            ids.append(run_id)
    return ids


def load_runs(cache: ArraysCache, values) -> list[RunArrays]:
    """The runs picked (2 to MAX_RUNS), run A first; gr.Error with what to do otherwise."""
    ids = picked_ids(values)
    if len(ids) > MAX_RUNS:
        named = ", ".join(f"#{i}" for i in ids)
        raise refuse(
            f"compare at most {MAX_RUNS} runs at once: {len(ids)} are picked ({named}); "
            f"remove {len(ids) - MAX_RUNS} of them"
        )
    if len(ids) < 2:
        only = f" (only run #{ids[0]} is picked)" if ids else ""
        raise refuse(f"pick two to {MAX_RUNS} runs from the list to compare them{only}")
    return [_load(cache, run_id, LETTERS[i]) for i, run_id in enumerate(ids)]


def _load(cache: ArraysCache, rid, label: str) -> RunArrays:
    if not rid:  # ids start at 1: an empty field arrives as None or 0
        raise refuse(f"give the id of run {label}")
    try:
        return cache.get(int(rid))
    except KeyError:
        raise refuse(f"there is no run with id {int(rid)} (run {label})") from None


# ---- what the tab shows -------------------------------------------------------------------------------


def show_runs(services: Services, runs: list[RunArrays], metric: str, mode: str, value: float | None) -> dict:
    """Every component of the tab (SHOWN) for `runs` at the slider's `value` (None: the end)."""
    return {
        "runs": run_picker(services, [r.run["id"] for r in runs]),
        "align": mode,
        "metric": metric,
        "step": step_slider(runs, mode, value),
        "summary": summary_table(services, runs),
        **render_view(services, runs, metric, mode, value),
    }


def step_slider(runs: list[RunArrays], mode: str, value: float | None = None) -> gr.Slider:
    """One slider over every run: steps 0..the longest run's last step, or percent 0..100."""
    if mode == "fraction":
        shown = 100 if value is None else min(max(round(float(value)), 0), 100)
        return gr.Slider(0, 100, value=shown, step=1, label=FRACTION_LABEL, interactive=True)
    last = max(max((r.n_steps for r in runs), default=1), 1) - 1
    shown = last if value is None else min(max(int(value), 0), last)
    return gr.Slider(0, max(last, 1), value=shown, step=1, label=STEP_LABEL, interactive=True)


def _end(runs: list[RunArrays], mode: str) -> float:
    return 1.0 if mode == "fraction" else max(max(r.n_steps for r in runs) - 1, 0)


def render_view(services: Services, runs: list[RunArrays], metric: str, mode: str, value: float | None) -> dict:
    """The note, the token views and the heatmaps (VIEW) at the slider's `value`: a step, or a
    percent by fraction (None: the end). Views past the runs picked are hidden."""
    mode = mode if mode in align.ALIGN_MODES else "step"
    at = _end(runs, mode) if value is None else (float(value) / 100 if mode == "fraction" else int(value))
    states = [align.masked_states(r.tokens, r.run["mask_id"]) for r in runs]
    first = align.first_divergence(states, mode)
    steps, differ = align.differing_at(states, mode, at)
    if first is None or at < first.value:
        differ = set()  # before the runs part ways nothing is outlined
    parted = set(first.positions) if first is not None else set()
    shown_steps = [step_number(r, k) for r, k in zip(runs, steps)]
    texts = [token_text_for(services, r) for r in runs]
    first_label = (
        DIFF_LABEL
        + " · it already differed where the runs first parted"
        + (f" ({where_note(runs, mode, first)})" if first is not None else "")
    )
    out: dict = {"note": divergence_note(runs, mode, at, steps, differ, first)}
    figures = COMPARE_MAPS.get(metric, COMPARE_MAPS["confidence"])(runs, shown_steps, texts)
    for i, (tokens_name, heat_name) in enumerate(zip(TOKENS, HEATS)):
        if i >= len(runs):
            out[tokens_name] = gr.HTML(value="", visible=False)
            out[heat_name] = gr.Plot(value=None, visible=False)
            continue
        r = runs[i]
        if is_canvas_run(r):  # a canvas model's run: noise drawn as noise, the step's accepted / re-noised marks
            view = render_canvas_tokens(r, texts[i], shown_steps[i], r.run["prompt"])
        else:
            view = render_tokens(
                r,
                texts[i],
                shown_steps[i],
                r.run["prompt"],
                highlight=differ,
                highlight_label=DIFF_LABEL,
                outline_step=False,
            )
            view = outline_kinds(view, parted, first_label)
        out[tokens_name] = gr.HTML(value=run_head(i, r, steps[i]) + view, visible=True)
        label = f"Run {LETTERS[i]} (#{r.run['id']}): {metric}"
        out[heat_name] = gr.Plot(value=figures[i], label=label, visible=True)
    return out


def _metric_maps(metric: str):
    def draw(runs, steps, texts):
        zmax = plots.common_zmax(metric, *runs)
        return [plots.metric_heatmap(r, metric, zmax=zmax, step=_marker(s)) for r, s in zip(runs, steps)]

    return draw


def _nats_maps(name: str, figure):
    def draw(runs, steps, texts):
        bound = plots.common_bound(name, *runs)
        return [figure(r, bound=bound, step=_marker(s)) for r, s in zip(runs, steps)]

    return draw


def _changes_maps(runs, steps, texts):
    """Every run's changes map (one fixed colour per event, so they compare as they are)."""
    return [plots.changes_map(r, step=_marker(s), token_text=t) for r, s, t in zip(runs, steps, texts)]


def _marker(step: int) -> int | None:
    return None if step < 0 else step


# The Heatmap choices of the Compare tab: each draws every run on one colour scale, each with the
# marker at its own step shown; `texts`: each run's token id -> text, for the hovers that name tokens.
COMPARE_MAPS = {
    **{m: _metric_maps(m) for m in ("confidence", "entropy", "margin")},
    "violations": _nats_maps("violation", plots.violation_heatmap),
    "energy": _nats_maps("energy", plots.energy_heatmap),
    "changes": _changes_maps,
}


# ---- the summary table ----------------------------------------------------------------------------
