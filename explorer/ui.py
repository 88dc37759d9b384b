"""The Gradio app: Decode, Runs and Compare tabs over a store and a worker pool.

`build_app(services)` builds the Blocks; nothing lives in module globals. The model runs in
the worker process (`explorer/worker.py`); this process validates requests, streams the
worker's step events into the page, and reads stored runs for scrubbing and comparison.
"""
from __future__ import annotations

import html
import json
import time

import gradio as gr

from explorer import plots
from explorer import plots_pairwise as pairwise
from explorer.services import Services
from explorer.tokens_view import render_tokens
from explorer.trajectory import RunArrays
from explorer.ui_compare import compare_tab
from explorer.ui_controls import decode_controls
from explorer.ui_logic import (DECODE_FIELDS, STRATEGY_KNOBS, ArraysCache, RequestError, build_config, device_label,
                               preset_form, strategy_note, summarise, token_text_for, violation_cost_note,
                               violations_default)
from explorer.ui_runs import runs_tab

METRICS = ("confidence", "entropy", "margin")
LIVE_REFRESH_S = 0.25  # at most this often the page gets new figures while a run streams

HEADER = """# Diffusion-LM Trajectory Explorer
Watch a masked diffusion language model fill in a text step by step. Pick a preset or type a prompt,
choose how many tokens to commit per step (generation length / steps) and an unmasking strategy, then **Run**.
Every step is stored: scrub it with the slider, reopen it in **Runs**, put two runs side by side in **Compare**."""

ANALYSIS_NOTE = """#### Dependency violations and energies
Tokens committed in the same step are chosen without seeing each other. **Dependency violations** (tick the box
on the left) measure, for each pair, how knowing one token changes the model's belief in the other: strongly
negative S = they contradict each other (like *an* + *girl*). **Energies** (the accordion on the left) choose
among several candidate fillings of a step. The maps below show where this happened; the matrices and the
candidates show the step picked with the step slider."""

REPLAY_ONLY_NOTE = """**Replay-only server: no model is loaded here, so Run is disabled.** This server shows stored runs.
Open one from the **Runs** tab (click a row, then *Open in Decode*) and scrub it with the step slider,
or put two side by side in **Compare**. To bring runs recorded elsewhere: on a server that runs models,
select a run in **Runs** and press *Export bundle*; here, drop that `.json` file on *Import a bundle* in **Runs**."""
REPLAY_ONLY_STATUS = "Replay-only: no model on this server. Open or import a stored run in the Runs tab."


def _status(kind: str, text: str) -> str:
    return f'<div class="status status-{kind}">{html.escape(text)}</div>'


def build_app(services: Services) -> gr.Blocks:
    cache = ArraysCache(services)
    with gr.Blocks(title="Diffusion-LM Trajectory Explorer") as app:
        run_state = gr.State(None)  # the stored run shown in the Decode tab
        job_state = gr.State(None)  # this session's running job, for Stop
        gr.Markdown(HEADER)
        with gr.Tabs() as tabs:
            with gr.Tab("Decode", id="decode"):
                view = _decode_tab(services, cache, run_state, job_state)
            with gr.Tab("Runs", id="runs"):
                runs_tab(services, cache, tabs, run_state, view)
            with gr.Tab("Compare", id="compare"):
                compare_tab(services, cache)
    return app


def render_view(services: Services, arrays: RunArrays, step: int | None, metric: str, text: str | None,
                device: str | None = None):
    """The Decode tab's outputs for one state of a run: summary, tokens and figures.
    `device`: the worker's device line, appended to the summary of a run it just decoded."""
    token_text = token_text_for(services, arrays)
    summary = summarise(arrays, text, arrays.run["model"])
    line = summary.line() + (f" · {device}" if device else "")
    return (_status("ok" if summary.status in ("completed", "running") else "warn", line),
            render_tokens(arrays, token_text, step, arrays.run.get("prompt", "")),
            plots.metric_heatmap(arrays, metric, step=step),
            plots.commit_order_map(arrays, step=step),
            plots.tokens_per_step(arrays, step=step))


def render_analysis(services: Services, arrays: RunArrays, step: int | None) -> tuple:
    """The violations and energies of a run: the two position x step maps, the pairwise S and A
    matrices and the candidates' energies of `step` (None: the run's most telling step), and the
    measured cost of the violations' extra pass."""
    token_text = token_text_for(services, arrays)
    return (plots.violation_heatmap(arrays, step=step), plots.energy_heatmap(arrays, step=step),
            pairwise.pairwise_matrix(arrays, step, "S", token_text),
            pairwise.pairwise_matrix(arrays, step, "A", token_text),
            pairwise.candidate_energies(arrays, step), violation_cost_note(arrays))


def render_all(services: Services, arrays: RunArrays, step: int | None, metric: str, text: str | None,
               device: str | None = None) -> tuple:
    """Every output of the Decode tab's view (`view["outputs"]`, in order)."""
    return (*render_view(services, arrays, step, metric, text, device), *render_analysis(services, arrays, step))


def _figures_column(services: Services) -> dict:
    """The right-hand column: status, tokens, step slider and every figure."""
    f: dict = {}
    replay_only = services.pool is None
    f["status"] = gr.HTML(_status("warn", REPLAY_ONLY_STATUS) if replay_only else _status("idle", "Ready. Press Run."),
                          elem_id="status")
    f["tokens"] = gr.HTML(elem_id="tokens")
    f["slider"] = gr.Slider(0, 1, value=0, step=1, label="Step (the state after this step)",
                            elem_id="step-slider", interactive=True)
    f["metric"] = gr.Radio(list(METRICS), value="confidence", label="Heatmap")
    f["heat"] = gr.Plot(label="Heatmap", elem_id="heatmap")
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
    return f


# The Decode tab's view outputs: render_view's five, then render_analysis's six.
VIEW_FIELDS = ("status", "tokens", "heat", "order", "bars", "violation_heat", "energy_heat", "pair_s", "pair_a",
               "candidates", "violation_cost")
N_BASE = 5


def _decode_tab(services: Services, cache: ArraysCache, run_state: gr.State, job_state: gr.State) -> dict:
    if services.pool is None:
        gr.Markdown(REPLAY_ONLY_NOTE, elem_id="replay-only-note")
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            c = decode_controls(services)
        with gr.Column(scale=3):
            f = _figures_column(services)
    c["metric"] = f["metric"]
    view_outputs = [f[name] if name in f else c[name] for name in VIEW_FIELDS]
    handlers = _DecodeHandlers(services, cache)
    inputs = [c[name] for name in DECODE_FIELDS]
    # Progress and a refusal (gr.Error) show on the status line only, not as a badge over every figure.
    run_event = c["run_btn"].click(handlers.run, inputs, view_outputs + [f["slider"], run_state, job_state],
                                   concurrency_limit=None, api_name="decode", show_progress_on=[f["status"]])
    c["stop_btn"].click(handlers.stop, [job_state], [f["status"]], api_name="stop", queue=False)
    # `release` alone misses a step typed into the slider's number box (Gradio sends `release`
    # there only on blur) and the arrow keys on the range; `input` covers both. Neither fires
    # on the programmatic update after a run.
    gr.on([f["slider"].release, f["slider"].input], handlers.scrub, [f["slider"], run_state, f["metric"]],
          view_outputs, api_name="scrub", trigger_mode="always_last")
    f["metric"].change(handlers.scrub, [f["slider"], run_state, f["metric"]], view_outputs, api_name=False)
    preset_fields = [name for name in DECODE_FIELDS if name != "metric"]
    c["preset"].change(handlers.load_preset, [c["preset"]], [c["preset_note"]] + [c[n] for n in preset_fields],
                       api_name=False)
    c["strategy"].change(handlers.strategy_changed, [c["strategy"]], [c["strategy_note"], c["knobs_accordion"]],
                         api_name=False)
    c["model"].change(handlers.model_changed, [c["model"]], [c["violations"]], api_name=False)
    return {"outputs": view_outputs, "slider": f["slider"], "metric": f["metric"], "run_event": run_event,
            "render": render_all}


class _DecodeHandlers:
    """The Decode tab's event handlers over one app's services (no module state)."""

    def __init__(self, services: Services, cache: ArraysCache) -> None:
        self.services, self.cache = services, cache
        self.n_view = len(VIEW_FIELDS)
        self.pending = self.pending_analysis()  # the same for every run: built once

    def stored_view(self, run_id: int, metric: str, status_html: str | None = None, device: str | None = None) -> tuple:
        """A run as the store holds it (after it ended), with the slider on its last step."""
        self.cache.forget(run_id)
        arrays = self.cache.get(run_id)
        last_step = max(len(arrays.steps) - 1, 0)
        text = f"{arrays.run['prompt']} {arrays.run['final_text'] or ''}"
        shown = render_all(self.services, arrays, None, metric, text, device=device)
        return ((status_html or shown[0]), *shown[1:],
                gr.Slider(0, max(last_step, 1), value=last_step, step=1, interactive=True), run_id, None)

    def live_view(self, run: dict, records: list, config, began: float, metric: str, job_id: int,
                  device: str | None = None) -> tuple:
        """A streaming run: tokens and the three main figures; the violations and energies section
        waits for the end of the run (it would double the cost of every live frame)."""
        arrays = RunArrays.from_records(run, records)
        shown = render_view(self.services, arrays, None, metric, None)
        done = int((arrays.commit_step >= 0).sum())
        line = (f"Decoding… step {records[-1].step + 1} · {done}/{config.gen_length} tokens · "
                f"{time.monotonic() - began:.1f} s" + (f" · {device}" if device else ""))
        return (_status("busy", line), *shown[1:], *self._skips(len(VIEW_FIELDS) - N_BASE), gr.skip(), run["id"],
                job_id)

    @staticmethod
    def pending_analysis() -> tuple:
        """The violations and energies section while a run decodes: says when it will show."""
        figures = [plots.empty_figure(title, "Shown when the run ends.", f"pending-{title}")
                   for title in ("Dependency violations", "Energy", "Pairwise S of a step", "Pairwise A of a step",
                                 "Energies of a step's candidates")]
        return (*figures, "Cost: measured when the run ends.")

    def _skips(self, n: int | None = None) -> tuple:
        return (gr.skip(),) * (self.n_view - 1 if n is None else n)

    def run(self, *values):
        services = self.services
        if services.pool is None:
            raise gr.Error("this server is replay-only: it runs no model, so Run is disabled. Open a stored run "
                           "in the Runs tab, or import a run bundle (.json) there.")
        form = dict(zip(DECODE_FIELDS, values))
        try:
            config = build_config(services, form)
            pace = min(max(int(form.get("pace_ms") or 0), 0), services.limits.max_pace_ms)
            handle = services.pool.submit(form["prompt"].strip(), form["model"], config, pace_ms=pace)
        except (RequestError, RuntimeError) as exc:
            raise gr.Error(str(exc)) from None
        yield from self._stream(handle, form, config)

    def _stream(self, handle, form: dict, config):
        job_id, metric = handle.job.job_id, form["metric"]
        run = {"id": None, "model": form["model"], "status": "running", "gen_length": config.gen_length,
               "mask_id": self.services.models[form["model"]].mask_id, "prompt": form["prompt"].strip(),
               "config": json.loads(config.to_json())}
        records, last, began = [], 0.0, time.monotonic()
        # The slider belongs to the finished run: locked at 0 while this one streams.
        yield (_status("busy", "Queued…"), *self._skips(), gr.Slider(0, 1, value=0, step=1, interactive=False),
               None, job_id)
        for kind, payload in handle.iter_events():
            device = device_label(handle.device)
            if kind == "queued" and payload:
                yield (_status("busy", f"Waiting for the worker: {payload} job(s) ahead"), *self._skips(self.n_view),
                       None, job_id)
            elif kind == "started":
                run["id"] = payload
                # Not yet "Decoding…" (that line carries the first step); says where the run runs.
                yield (_status("busy", "Starting…" + (f" · {device}" if device else "")), *self._skips(N_BASE - 1),
                       *self.pending, gr.skip(), payload, job_id)
            elif kind == "step":
                records.append(payload)
                if time.monotonic() - last >= LIVE_REFRESH_S:
                    last = time.monotonic()
                    yield self.live_view(run, records, config, began, metric, job_id, device)
            elif kind == "done":
                yield self.stored_view(payload.run_id, metric, device=device)
            elif kind in ("error", "failed"):  # show what was stored, so a partial run can be scrubbed
                yield self._failed(run, f"The run ended with an error: {payload}", metric)

    def _failed(self, run: dict, message: str, metric: str) -> tuple:
        gr.Warning(message)
        if run["id"] is None:
            return (_status("error", message), *self._skips(), gr.Slider(interactive=True), None, None)
        return self.stored_view(run["id"], metric, _status("error", message))

    def stop(self, job_id):
        if job_id is not None and self.services.pool is not None:
            self.services.pool.cancel(job_id)
        return _status("busy", "Stopping at the next step…") if job_id is not None else gr.skip()

    def scrub(self, step, run_id, metric):
        if run_id is None:
            return self._skips(self.n_view)
        arrays = self.cache.get(run_id)
        step = min(int(step or 0), max(len(arrays.steps) - 1, 0))
        return render_all(self.services, arrays, step, metric, None)

    def load_preset(self, name):
        chosen = next((p for p in self.services.presets if p.name == name), None)
        fields = [n for n in DECODE_FIELDS if n != "metric"]
        if chosen is None:
            return self._skips(len(fields) + 1)
        form = preset_form(chosen, self.services)
        return (f"**{html.escape(chosen.name)}.** {html.escape(chosen.explanation)}", *(form[n] for n in fields))

    @staticmethod
    def strategy_changed(name):
        has_knob = name in STRATEGY_KNOBS
        return strategy_note(name), (gr.Accordion(open=True) if has_knob else gr.skip())

    def model_changed(self, name):
        return violations_default(self.services.models.get(name))
