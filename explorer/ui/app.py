"""The Gradio app: Decode, Runs, Compare and Sweeps tabs over a store and a worker pool.

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
from pathlib import Path

import gradio as gr

from explorer.decoding.strategies import STRATEGIES
from explorer.jobs import JobDone, JobError, JobFailed, Queued, RunStarted, StepDone
from explorer.services import Services
from explorer.store.arrays import RunArrays
from explorer.ui.branch import BranchHandlers, branch_panel, wire_branching
from explorer.ui.compare import compare_tab
from explorer.ui.controls import decode_controls, visible_knobs
from explorer.ui.form import preset_of, wire_rerun
from explorer.ui.logic import (
    CANVAS_FORM_FIELDS,
    DECODE_FIELDS,
    ArraysCache,
    RequestError,
    build_config,
    canvas_form_fields,
    device_label,
    model_noise_k,
    model_note,
    preset_form,
    preset_opens,
    strategy_note,
    violations_default,
)
from explorer.ui.permalink import open_permalink
from explorer.ui.runs import runs_tab
from explorer.ui.sweeps import sweeps_tab
from explorer.ui.toasts import refuse, warn
from explorer.ui.view import (
    ANALYSIS_NOTE,
    DecodeView,
    heat_figure,
    lineage,
    pending_analysis,
    render_all,
    status_html,
    step_figures,
)
from explorer.views import figures as plots
from explorer.views import pairwise
from explorer.views.player import LivePlayer, embed, stored_payload
from explorer.views.speed import speed_html
from explorer.views.tokens import legend

METRICS = ("confidence", "entropy", "margin")
LIVE_REFRESH_S = 0.25  # at most this often the page gets new figures while a run streams

# The token view and its step player (slider, play/pause, keys, colouring, the figures' step
# markers), run in the page; it also sends a token's click (the branch panel) with the step shown.
PLAYER_JS = (Path(__file__).resolve().parents[2] / "static" / "components" / "player.js").read_text()
# Drawn once the run ends (a live frame never redraws a figure; the heatmap grows in the page).
LIVE_PENDING = {"order": "Commit order", "bars": "Tokens per step", "changes": "Changes"}

HEADER = """# Diffusion-LM Trajectory Explorer
Watch a masked diffusion language model fill in a text step by step. Pick a preset or type a prompt,
choose how many tokens to commit per step (generation length / steps) and an unmasking strategy, then **Run**.
Every step is stored: replay it with the player above the tokens (▶, the slider, or ← → Home End), colour the tokens by
any metric, reopen runs in **Runs**, put up to four side by side in **Compare**, see the sweeps run from the command
line (settings × seeds, quality against cost) in **Sweeps**.
**Branch**: after a run, click any token to put another one there (or re-mask it) and decode the rest again."""

REPLAY_ONLY_NOTE = """**Replay-only server: no model is loaded here, so Run is disabled.**
This server shows stored runs. Open one from the **Runs** tab (click a row, then *Open in Decode*)
and scrub it with the step slider, or put two side by side in **Compare**. To bring runs recorded elsewhere:
on a server that runs models, select a run in **Runs** and press *Export bundle*; here, drop that `.json` file
on *Import a bundle* in **Runs**."""
REPLAY_ONLY_STATUS = "Replay-only: no model on this server. Open or import a stored run in the Runs tab."


def build_app(services: Services) -> gr.Blocks:
    cache = ArraysCache(services)
    # Uploads and files Gradio keeps for downloads are removed after an hour (checked hourly).
    with gr.Blocks(title="Diffusion-LM Trajectory Explorer", delete_cache=(3600, 3600)) as app:
        run_state = gr.State(None)  # the stored run shown in the Decode tab
        job_state = gr.State(None)  # this session's running job, for Stop
        gr.Markdown(HEADER)
        with gr.Tabs() as tabs:
            with gr.Tab("Decode", id="decode"):
                view, controls, handlers, panel = _decode_tab(services, cache, run_state, job_state)
            with gr.Tab("Runs", id="runs"):
                opener = runs_tab(services, cache, tabs, view, controls)
            with gr.Tab("Compare", id="compare") as compare_page:
                compare = compare_tab(services, cache)
            # A sweep's runs open in Decode as the Runs tab opens them, and go to Compare like a branch.
            with gr.Tab("Sweeps", id="sweeps") as sweeps_page:
                sweeps_tab(services, opener, compare, tabs, sweeps_page)
        # Opening Compare with no run A picked yet: the run shown in the Decode tab is run A.
        picked = compare.components["runs"]
        compare_page.select(compare.on_open, [run_state, picked], [picked], api_name=False)
        # Wired once every tab exists: a branch opens the Compare tab with its parent.
        wire_branching(BranchHandlers(services, cache, view, controls, handlers, panel), tabs, compare)
        # A permalink (?run=ID&step=K, or ?tab=compare&a=ID&b=ID) opens that state.

        def permalink(metric, request: gr.Request):
            return open_permalink(services, cache, view, compare, tabs, metric, request)

        app.load(
            permalink,
            [view.components["metric"]],
            [*view.outputs("slider", "run_state"), tabs, *compare.permalink_outputs()],
            api_name=False,
        )
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
    # Re-run: the opened run's settings into the form, then decoded as a new run (ui/form.py).
    wire_rerun(c, handlers.run, view.outputs("slider", "run_state", "job_state"), show_progress_on=[f["status"]])
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
    # The page's player moved and came to rest (static/components/player.js): the figures of one
    # step (pairwise matrices, candidates) and the step the branch panel starts from follow.
    f["tokens"].input(
        handlers.step_rest,
        [run_state],
        view.outputs("slider"),
        api_name=False,
        trigger_mode="always_last",
        show_progress="hidden",
    )
    f["metric"].change(handlers.metric_changed, [f["slider"], run_state, f["metric"]], [f["heat"]], api_name=False)
    c["preset"].change(
        handlers.load_preset,
        [c["preset"]],
        [c["preset_note"], c["knobs_accordion"], c["energies_accordion"], *handlers.form.values()],
        api_name=False,
    )
    knob_fields = {name: c[name] for name in visible_knobs(c["strategy"].value)}
    c["strategy"].change(
        handlers.strategy_changed,
        [c["strategy"]],
        [c["strategy_note"], c["knobs_accordion"], c["schedule"], *knob_fields.values()],
        api_name=False,
    )
    # `input`: a person picking a model (opening a stored run or a preset sets these fields itself).
    canvas_fields = [c[name] for name in CANVAS_FORM_FIELDS]
    c["model"].input(
        handlers.model_changed,
        [c["model"]],
        [c["violations"], c["model_note"], c["xdlm_k"], *canvas_fields],
        api_name=False,
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
    f["tokens"] = gr.HTML(elem_id="tokens", js_on_load=PLAYER_JS)
    f["speed"] = gr.HTML(speed_html(None), elem_id="speed")
    # The server's copy of the step shown, for the API (/scrub) and the branch panel; people use the
    # player above the tokens, which keeps this in step when it comes to rest.
    f["slider"] = gr.Slider(
        0,
        1,
        value=0,
        step=1,
        label="Step (the state after this step)",
        elem_id="step-slider",
        interactive=True,
        visible="hidden",
    )
    panel = branch_panel(services)
    # Drawn and zipped in the browser (static/export_figures.js): no server round trip.
    gr.HTML(
        '<div class="figure-downloads">Download every figure below (the step shown): '
        '<button type="button" id="download-svg">SVG (zip)</button> '
        '<button type="button" id="download-png">PNG (zip)</button></div>',
        js_on_load=None,
    )
    f["metric"] = gr.Radio(list(METRICS), value="confidence", label="Heatmap")
    f["heat"] = gr.Plot(label="Heatmap", elem_id="heatmap")
    # Under the heatmap, on the same axes: what changed where (unmask, revise, re-mask).
    f["changes"] = gr.Plot(label="Changes", elem_id="changes")
    with gr.Row():
        f["order"] = gr.Plot(label="Commit order", elem_id="order")
        f["bars"] = gr.Plot(label="Tokens per step", elem_id="bars")
    # Relabelled, with another note and no reading guide, while a canvas model's run is shown (ui/view.py).
    f["analysis_note"] = gr.Markdown(ANALYSIS_NOTE, elem_id="analysis-note")
    with gr.Row():
        f["violation_heat"] = gr.Plot(label="Dependency violations", elem_id="violation-heatmap")
        f["energy_heat"] = gr.Plot(label="Energy", elem_id="energy-heatmap")
    with gr.Row():
        f["pair_s"] = gr.Plot(label="Pairwise S of a step", elem_id="pairwise-s")
        f["pair_a"] = gr.Plot(label="Pairwise A of a step", elem_id="pairwise-a")
    with gr.Row():
        f["candidates"] = gr.Plot(label="Energies of a step's candidates", elem_id="candidates")
        f["reading_guide"] = gr.Markdown(pairwise.READING_GUIDE, elem_id="reading-guide")
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
        # the same for every run of a kind (masked, or a canvas model's): built once
        self.pending = {canvas: pending_analysis(canvas) for canvas in (False, True)}

    def live_tokens(self, run: dict, payload: dict) -> str:
        """The token view of a decoding run: the prompt and the new steps for the page's player,
        which appends them to what it holds (never the whole run again)."""
        prompt = html.escape(run.get("prompt", ""), quote=True)
        owner = f' data-run="{int(run["id"])}"' if run.get("id") is not None else ""
        return (
            f'<div class="tokens-view"{owner}><div class="tokens-line"><span class="prompt">{prompt}</span></div>'
            f"{legend(None)}</div>{embed(payload)}"
        )

    def live_status(self, live: LivePlayer, began: float, device: str | None, what: str, step: int | None) -> str:
        done = int((live.current != live.mask_id).sum())
        at = f"step {step + 1} · " if step is not None else ""
        return status_html(
            "busy",
            f"{what}… {at}{done}/{live.G} tokens · {time.monotonic() - began:.1f} s"
            + (f" · {device}" if device else ""),
        )

    def live_start(self, run: dict, live: LivePlayer, metric: str, prefix: RunArrays | None = None) -> dict:
        """The first frame of a live run: the player reset (to a branch's copied steps), the
        heatmap that the page grows step by step, and the figures drawn at the end."""
        if prefix is None:
            payload = live.frame([], run["id"])
        else:
            token_text = self.services.models[run["model"]].token_text
            payload = {**stored_payload(prefix, token_text), "key": live.key, "done": False, "open": None}
            live.resume(prefix)
        pending = {
            name: plots.empty_figure(title, "Drawn when the run ends.", f"pending-{name}")
            for name, title in LIVE_PENDING.items()
        }
        return {
            "tokens": self.live_tokens(run, payload),
            "heat": plots.live_heatmap(run["gen_length"], metric, live.key),
            "speed": speed_html(None),
            **pending,
        }

    def run(self, *values):
        services = self.services
        if services.pool is None:
            raise refuse(
                "this server is replay-only: it runs no model, so Run is disabled. Open a stored run "
                "in the Runs tab, or import a run bundle (.json) there."
            )
        form = dict(zip(DECODE_FIELDS, values))
        try:
            config = build_config(services, form)
            pace = min(max(int(form.get("pace_ms") or 0), 0), services.limits.max_pace_ms)
            handle = services.pool.submit(
                form["prompt"].strip(), form["model"], config, pace_ms=pace, max_seconds=services.limits.max_job_seconds
            )
        except (RequestError, RuntimeError) as exc:
            raise refuse(str(exc)) from None
        run = {
            "id": None,
            "model": form["model"],
            "status": "running",
            "gen_length": config.gen_length,
            "mask_id": self.services.models[form["model"]].mask_id,
            "prompt": form["prompt"].strip(),
            "config": json.loads(config.to_json()),
            "preset": preset_of(services, form),  # the teaching preset the form holds unchanged, if any
        }
        yield from self.stream(handle, run, form["metric"])

    def stream(self, handle, run: dict, metric: str, parent: int | None = None) -> Iterator[dict]:
        """Stream a decode's (or, with `parent`, a branch's) worker events into the Decode view.

        Each live frame sends only the steps that arrived since the last one (the page's player
        appends them and grows the heatmap); the whole run is drawn once, when it ends. A branch's
        copied steps 0..k are in the store once its RunStarted arrives: they open the player. A
        branch refused before it started (bad input: nothing stored) shows its parent again."""
        job_id, bind = handle.job.job_id, self.view.bind
        began, last, new = time.monotonic(), 0.0, []
        spec = self.services.models[run["model"]]
        canvas = getattr(spec, "canvas", None) is not None
        live = LivePlayer(f"live-{job_id}", run["gen_length"], run["mask_id"], spec.token_text, metric, canvas)
        what = "Decoding" if parent is None else f"Decoding the branch of run {parent}"
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
                    self.services.store.set_run_preset(run_id, run.get("preset"))
                    prefix = self.services.store.read_arrays(run_id) if parent is not None else None
                    starting = status_html("busy", "Starting…" + (f" · {device}" if device else ""))
                    # a canvas model's labels; copies: Gradio pops an update's value from the dict it gets
                    pending = {
                        name: dict(value) if isinstance(value, dict) else value
                        for name, value in self.pending[canvas].items()
                    }
                    shown = {**pending, **self.live_start(run, live, metric, prefix), "run_state": run_id}
                    if prefix is not None:
                        shown.update(lineage(self.services, prefix, live=True))
                    yield bind({**shown, "status": starting})
                case StepDone(record=record):
                    new.append(record)
                    if time.monotonic() - last >= LIVE_REFRESH_S:
                        last = time.monotonic()
                        payload, new = live.frame(new, run["id"]), []
                        status = self.live_status(live, began, device, what, payload["steps"][-1])
                        yield bind({"tokens": self.live_tokens(run, payload), "status": status})
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
        warn(message)
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
        """The API's scrub (/scrub): every output of the view at `step`, drawn here. The page itself
        scrubs in the browser and only asks for the per-step figures (`step_rest`)."""
        if run_id is None:
            return {}
        arrays = self.cache.get(run_id)
        step = min(int(step or 0), max(len(arrays.steps) - 1, 0))
        return self.view.bind(render_all(self.services, arrays, step, metric, None))

    def step_rest(self, run_id, evt: gr.EventData):
        """The page's player came to rest on a step: the figures of that step (pairwise S and A,
        the candidates' energies) and the server's copy of the step."""
        data = getattr(evt, "_data", None) or {}
        arrays = self.cache.get(run_id) if run_id is not None and data.get("run") == run_id else None
        if arrays is None or not arrays.n_steps:
            return self.view.bind({"slider": gr.skip()})
        step = min(max(int(data.get("step", 0)), 0), int(arrays.steps[-1]))
        return self.view.bind({**step_figures(self.services, arrays, step), "slider": gr.Slider(value=step)})

    def metric_changed(self, step, run_id, metric):
        """Another heatmap metric: only the heatmap is drawn again (at the step shown)."""
        if run_id is None:
            return gr.skip()
        arrays = self.cache.get(run_id)
        if arrays.run.get("status") == "running" or not arrays.n_steps:
            return gr.skip()
        return heat_figure(arrays, metric, min(int(step or 0), int(arrays.steps[-1])))

    def load_preset(self, name):
        chosen = next((p for p in self.services.presets if p.name == name), None)
        if chosen is None:
            return {}
        form = preset_form(chosen, self.services)
        note = f"**{html.escape(chosen.name)}.** {html.escape(chosen.explanation)}"
        opened = {self.controls[name]: gr.Accordion(open=True) for name, opens in preset_opens(chosen).items() if opens}
        return {
            self.controls["preset_note"]: note,
            **opened,
            **{component: form[name] for name, component in self.form.items()},
        }

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
        """The violations box's default for the model, what the model is, the XDLM strategies'
        k set to the noise the model was trained with (0 for a masked model), and for a canvas
        model (DiffusionGemma) its own lengths, steps and acceptance rule (the others unchanged)."""
        spec = self.services.models.get(name)
        fields = canvas_form_fields(spec)
        canvas = [fields[name] if fields else gr.skip() for name in CANVAS_FORM_FIELDS]
        return violations_default(spec), model_note(spec), model_noise_k(spec), *canvas
