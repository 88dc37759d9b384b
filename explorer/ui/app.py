"""The Gradio app: Decode, Runs and Compare tabs over a store and a worker pool.

`build_app(services)` builds the Blocks; nothing lives in module globals. The model runs in
the worker process (`explorer/worker.py`); this process validates requests, streams the
worker's step events into the page, and reads stored runs for scrubbing and comparison.

Handlers return {output name: value}; `DecodeView.bind` (ui/view.py) turns the names into the
components, so an output that a handler leaves out keeps what it shows (no positional padding).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterator

import gradio as gr

from explorer.decoding.strategies import STRATEGIES
from explorer.jobs import JobDone, JobError, JobFailed, Queued, RunStarted, StepDone
from explorer.services import Services
from explorer.store.arrays import RunArrays
from explorer.ui.branch import BranchHandlers, branch_panel, wire_branching
from explorer.ui.compare import compare_tab
from explorer.ui.controls import decode_controls, visible_knobs
from explorer.ui.logic import (
    DECODE_FIELDS,
    ArraysCache,
    RequestError,
    build_config,
    device_label,
    model_noise_k,
    model_note,
    preset_form,
    strategy_note,
    violations_default,
    with_prefix,
)
from explorer.ui.runs import runs_tab
from explorer.ui.view import DecodeView, lineage, pending_analysis, render_all, render_view, status_html
from explorer.views import pairwise

METRICS = ("confidence", "entropy", "margin")
LIVE_REFRESH_S = 0.25  # at most this often the page gets new figures while a run streams

# The token view's click: the position of the token clicked (tapped) and the run it belongs to,
# to the server (`trigger`), which opens the branch panel; the picked token keeps an outline
# across re-renders (scrubbing) while the same run is shown.
PICK_TOKEN_JS = """
const tokensOf = (view) => Array.from(view.querySelectorAll('.tokens-line .tok'));  // one per position, in order
const mark = () => {
  const view = element.querySelector('.tokens-view');
  element.querySelectorAll('.tok.picked').forEach((el) => el.classList.remove('picked'));
  if (!view || view.dataset.run !== element.dataset.pickRun) return;
  const tok = tokensOf(view)[Number(element.dataset.pickPos)];
  if (tok) tok.classList.add('picked');
};
element.addEventListener('click', (event) => {
  const tok = event.target.closest('.tokens-line .tok');
  const view = tok && tok.closest('.tokens-view');
  if (!view || !view.dataset.run) return;
  const position = tokensOf(view).indexOf(tok);
  element.dataset.pickRun = view.dataset.run;
  element.dataset.pickPos = String(position);
  mark();
  trigger('click', {position: position, run: Number(view.dataset.run)});
});
watch('value', mark);
"""

HEADER = """# Diffusion-LM Trajectory Explorer
Watch a masked diffusion language model fill in a text step by step. Pick a preset or type a prompt,
choose how many tokens to commit per step (generation length / steps) and an unmasking strategy, then **Run**.
Every step is stored: scrub it with the slider, reopen it in **Runs**, put two runs side by side in **Compare**.
**Branch**: after a run, click any token to put another one there (or re-mask it) and decode the rest again."""

ANALYSIS_NOTE = """#### Dependency violations and energies
Tokens committed in the same step are chosen without seeing each other. **Dependency violations** (tick the box
on the left) measure, for each pair, how knowing one token changes the model's belief in the other: strongly
negative S = they contradict each other (like *an* + *girl*). **Energies** (the accordion on the left) choose
among several candidate fillings of a step. The maps below show where this happened; the matrices and the
candidates show the step picked with the step slider."""

REPLAY_ONLY_NOTE = """**Replay-only server: no model is loaded here, so Run is disabled.**
This server shows stored runs. Open one from the **Runs** tab (click a row, then *Open in Decode*)
and scrub it with the step slider, or put two side by side in **Compare**. To bring runs recorded elsewhere:
on a server that runs models, select a run in **Runs** and press *Export bundle*; here, drop that `.json` file
on *Import a bundle* in **Runs**."""
REPLAY_ONLY_STATUS = "Replay-only: no model on this server. Open or import a stored run in the Runs tab."


def build_app(services: Services) -> gr.Blocks:
    cache = ArraysCache(services)
    with gr.Blocks(title="Diffusion-LM Trajectory Explorer") as app:
        run_state = gr.State(None)  # the stored run shown in the Decode tab
        job_state = gr.State(None)  # this session's running job, for Stop
        gr.Markdown(HEADER)
        with gr.Tabs() as tabs:
            with gr.Tab("Decode", id="decode"):
                view, controls, handlers, panel = _decode_tab(services, cache, run_state, job_state)
            with gr.Tab("Runs", id="runs"):
                runs_tab(services, cache, tabs, view, controls)
            with gr.Tab("Compare", id="compare") as compare_page:
                compare = compare_tab(services, cache)
        # Opening Compare with no run A picked yet: the run shown in the Decode tab is run A.
        picked = compare.components["runs"]
        compare_page.select(compare.on_open, [run_state, picked], [picked], api_name=False)
        # Wired once every tab exists: a branch opens the Compare tab with its parent.
        wire_branching(BranchHandlers(services, cache, view, controls, handlers, panel), tabs, compare)
    return app


def _decode_tab(
    services: Services, cache: ArraysCache, run_state: gr.State, job_state: gr.State
) -> tuple[DecodeView, dict, _DecodeHandlers, dict]:
    """The Decode tab; (its view, the form's controls, its handlers, the branch panel's components)."""
    if services.pool is None:
        gr.Markdown(REPLAY_ONLY_NOTE, elem_id="replay-only-note")
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            c = decode_controls(services)
        with gr.Column(scale=3):
            f, panel = _figures_column(services)
    c["metric"] = f["metric"]
    view = DecodeView({**f, "violation_cost": c["violation_cost"], "run_state": run_state, "job_state": job_state})
    handlers = _DecodeHandlers(services, cache, view, c)
    inputs = [c[name] for name in DECODE_FIELDS]
    # Progress and a refusal (gr.Error) show on the status line only, not as a badge over every figure.
    c["run_btn"].click(
        handlers.run,
        inputs,
        view.outputs("slider", "run_state", "job_state"),
        concurrency_limit=None,
        api_name="decode",
        show_progress_on=[f["status"]],
    )
    c["stop_btn"].click(handlers.stop, [job_state], [f["status"]], api_name="stop", queue=False)
    # `release` alone misses a step typed into the slider's number box (Gradio sends `release`
    # there only on blur) and the arrow keys on the range; `input` covers both. Neither fires
    # on the programmatic update after a run.
    gr.on(
        [f["slider"].release, f["slider"].input],
        handlers.scrub,
        [f["slider"], run_state, f["metric"]],
        view.outputs(),
        api_name="scrub",
        trigger_mode="always_last",
    )
    f["metric"].change(handlers.scrub, [f["slider"], run_state, f["metric"]], view.outputs(), api_name=False)
    c["preset"].change(handlers.load_preset, [c["preset"]], [c["preset_note"], *handlers.form.values()], api_name=False)
    knob_fields = {name: c[name] for name in visible_knobs(c["strategy"].value)}
    c["strategy"].change(
        handlers.strategy_changed,
        [c["strategy"]],
        [c["strategy_note"], c["knobs_accordion"], c["schedule"], *knob_fields.values()],
        api_name=False,
    )
    c["model"].change(
        handlers.model_changed, [c["model"]], [c["violations"], c["model_note"], c["xdlm_k"]], api_name=False
    )
    return view, c, handlers, panel


def _figures_column(services: Services) -> tuple[dict, dict]:
    """The right-hand column: status, the branch line, tokens, step slider, the branch panel and
    every figure; (the view's components, the branch panel's)."""
    f: dict = {}
    replay_only = services.pool is None
    f["status"] = gr.HTML(
        status_html("warn", REPLAY_ONLY_STATUS) if replay_only else status_html("idle", "Ready. Press Run."),
        elem_id="status",
    )
    with gr.Row(elem_id="lineage-row", equal_height=True):
        f["lineage"] = gr.HTML(elem_id="lineage")
        f["compare_parent"] = gr.Button(
            "Compare with parent", visible=False, size="sm", scale=0, min_width=160, elem_id="compare-parent-btn"
        )
        f["open_parent"] = gr.Button("Open parent", visible=False, size="sm", scale=0, min_width=110)
    f["tokens"] = gr.HTML(elem_id="tokens", js_on_load=PICK_TOKEN_JS)
    f["slider"] = gr.Slider(
        0, 1, value=0, step=1, label="Step (the state after this step)", elem_id="step-slider", interactive=True
    )
    panel = branch_panel(services)
    f["metric"] = gr.Radio(list(METRICS), value="confidence", label="Heatmap")
    f["heat"] = gr.Plot(label="Heatmap", elem_id="heatmap")
    # Under the heatmap, on the same axes: what changed where (unmask, revise, re-mask).
    f["changes"] = gr.Plot(label="Changes", elem_id="changes")
    with gr.Row():
        f["order"] = gr.Plot(label="Commit order", elem_id="order")
        f["bars"] = gr.Plot(label="Tokens per step", elem_id="bars")
    gr.Markdown(ANALYSIS_NOTE, elem_id="analysis-note")
    with gr.Row():
        f["violation_heat"] = gr.Plot(label="Dependency violations", elem_id="violation-heatmap")
        f["energy_heat"] = gr.Plot(label="Energy", elem_id="energy-heatmap")
    with gr.Row():
        f["pair_s"] = gr.Plot(label="Pairwise S of a step", elem_id="pairwise-s")
        f["pair_a"] = gr.Plot(label="Pairwise A of a step", elem_id="pairwise-a")
    with gr.Row():
        f["candidates"] = gr.Plot(label="Energies of a step's candidates", elem_id="candidates")
        gr.Markdown(pairwise.READING_GUIDE, elem_id="reading-guide")
    return f, panel


def _decode_run_as_a(run_id, a_id):
    """Run ids start at 1: an empty field may arrive as None or as 0."""
    return run_id if not a_id and run_id is not None else gr.skip()


def _no_lineage() -> dict:
    return {"lineage": "", "compare_parent": gr.Button(visible=False), "open_parent": gr.Button(visible=False)}


class _DecodeHandlers:
    """The Decode tab's event handlers over one app's services (no module state)."""

    def __init__(self, services: Services, cache: ArraysCache, view: DecodeView, controls: dict) -> None:
        self.services, self.cache, self.view, self.controls = services, cache, view, controls
        self.form = {name: controls[name] for name in DECODE_FIELDS if name != "metric"}  # what a preset fills
        self.pending = pending_analysis()  # the same for every run: built once

    def live_view(
        self, arrays: RunArrays, began: float, metric: str, device: str | None = None, what: str = "Decoding"
    ) -> dict:
        """A streaming run: tokens and the three main figures; the violations and energies section
        waits for the end of the run (it would double the cost of every live frame)."""
        shown = render_view(self.services, arrays, None, metric, None)
        done = int((arrays.commit_step >= 0).sum())
        step = f"step {int(arrays.steps[-1]) + 1} · " if arrays.n_steps else ""
        shown["status"] = status_html(
            "busy",
            f"{what}… {step}{done}/{arrays.gen_length} tokens · "
            f"{time.monotonic() - began:.1f} s" + (f" · {device}" if device else ""),
        )
        return self.view.bind(shown)

    def run(self, *values):
        services = self.services
        if services.pool is None:
            raise gr.Error(
                "this server is replay-only: it runs no model, so Run is disabled. Open a stored run "
                "in the Runs tab, or import a run bundle (.json) there."
            )
        form = dict(zip(DECODE_FIELDS, values))
        try:
            config = build_config(services, form)
            pace = min(max(int(form.get("pace_ms") or 0), 0), services.limits.max_pace_ms)
            handle = services.pool.submit(form["prompt"].strip(), form["model"], config, pace_ms=pace)
        except (RequestError, RuntimeError) as exc:
            raise gr.Error(str(exc)) from None
        run = {
            "id": None,
            "model": form["model"],
            "status": "running",
            "gen_length": config.gen_length,
            "mask_id": self.services.models[form["model"]].mask_id,
            "prompt": form["prompt"].strip(),
            "config": json.loads(config.to_json()),
        }
        yield from self.stream(handle, run, form["metric"])

    def stream(self, handle, run: dict, metric: str, parent: int | None = None) -> Iterator[dict]:
        """Stream a decode's (or, with `parent`, a branch's) worker events into the Decode view.

        A branch's copied steps 0..k are in the store once its RunStarted arrives: they are read
        then and every live frame shows them before the branch's own steps. A branch refused
        before it started (bad input: nothing stored) shows its parent again, with the error."""
        job_id, bind = handle.job.job_id, self.view.bind
        records, last, began, prefix = [], 0.0, time.monotonic(), None
        what = "Decoding" if parent is None else f"Decoding the branch of run {parent}"
        # The slider belongs to the finished run: locked at 0 while this one streams.
        yield bind(
            {
                "status": status_html("busy", "Queued…"),
                "slider": gr.Slider(0, 1, value=0, step=1, interactive=False),
                "run_state": None,
                "job_state": job_id,
                **_no_lineage(),
            }
        )
        for event in handle.iter_events():
            device = device_label(handle.device)
            match event:
                case Queued(ahead=ahead) if ahead:
                    yield bind({"status": status_html("busy", f"Waiting for the worker: {ahead} job(s) ahead")})
                case RunStarted(run_id=run_id):
                    run["id"] = run_id
                    if parent is None:
                        # Not yet "Decoding…" (that line carries the first step); says where the run runs.
                        starting = status_html("busy", "Starting…" + (f" · {device}" if device else ""))
                        yield bind({**self.pending, "status": starting, "run_state": run_id})
                    else:
                        prefix = self.services.store.read_arrays(run_id)
                        yield {
                            **bind({**self.pending, **lineage(self.services, prefix, live=True), "run_state": run_id}),
                            **self.live_view(prefix, began, metric, device, what),
                        }
                case StepDone(record=record):
                    records.append(record)
                    if time.monotonic() - last >= LIVE_REFRESH_S:
                        last = time.monotonic()
                        arrays = (
                            with_prefix(prefix, {"status": "running"}, records)
                            if prefix is not None
                            else RunArrays.from_records(run, records)
                        )
                        yield self.live_view(arrays, began, metric, device, what)
                case JobDone(result=result):
                    yield {
                        **self.view.stored(self.services, self.cache, result.run_id, metric, device=device),
                        **bind({"job_state": None}),
                    }
                case JobError(message=message) | JobFailed(message=message):
                    # show what was stored, so a partial run can be scrubbed
                    refused = parent is not None and run["id"] is None  # before RunStarted: nothing stored
                    text = "The branch was not made (nothing stored)" if refused else "The run ended with an error"
                    yield self._failed(run, f"{text}: {message}", metric, parent)

    def _failed(self, run: dict, message: str, metric: str, parent: int | None = None) -> dict:
        gr.Warning(message)
        shown_id = run["id"] if run["id"] is not None else parent
        if shown_id is None:
            return self.view.bind(
                {
                    "status": status_html("error", message),
                    "slider": gr.Slider(interactive=True),
                    "run_state": None,
                    "job_state": None,
                }
            )
        return {
            **self.view.stored(self.services, self.cache, shown_id, metric, status_html("error", message)),
            **self.view.bind({"job_state": None}),
        }

    def stop(self, job_id):
        if job_id is not None and self.services.pool is not None:
            self.services.pool.cancel(job_id)
        return status_html("busy", "Stopping at the next step…") if job_id is not None else gr.skip()

    def scrub(self, step, run_id, metric):
        if run_id is None:
            return {}
        arrays = self.cache.get(run_id)
        step = min(int(step or 0), max(len(arrays.steps) - 1, 0))
        return self.view.bind(render_all(self.services, arrays, step, metric, None))

    def load_preset(self, name):
        chosen = next((p for p in self.services.presets if p.name == name), None)
        if chosen is None:
            return {}
        form = preset_form(chosen, self.services)
        note = f"**{html.escape(chosen.name)}.** {html.escape(chosen.explanation)}"
        return {self.controls["preset_note"]: note, **{component: form[name] for name, component in self.form.items()}}

    def strategy_changed(self, name):
        """The strategy's note, its knobs shown (and the accordion opened when it has any), the
        schedule shown for the scheduled strategies."""
        shown = visible_knobs(name)
        scheduled = name in STRATEGIES and STRATEGIES[name].scheduled
        return {
            self.controls["strategy_note"]: strategy_note(name),
            self.controls["knobs_accordion"]: gr.Accordion(open=True) if any(shown.values()) else gr.skip(),
            self.controls["schedule"]: gr.Dropdown(visible=scheduled),
            **{self.controls[knob]: gr.update(visible=visible) for knob, visible in shown.items()},
        }

    def model_changed(self, name):
        """The violations box's default for the model, what the model is, and the XDLM strategies'
        k set to the noise the model was trained with (0 for a masked model)."""
        spec = self.services.models.get(name)
        return violations_default(spec), model_note(spec), model_noise_k(spec)
