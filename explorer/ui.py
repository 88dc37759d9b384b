"""The Gradio app: Decode, Runs and Compare tabs over a store and a worker pool.

`build_app(services)` builds the Blocks; nothing lives in module globals. The model runs in
the worker process (`explorer/worker.py`); this process validates requests, streams the
worker's step events into the page, and reads stored runs for scrubbing and comparison.
"""
from __future__ import annotations

import html
import time

import gradio as gr

from explorer import plots
from explorer.services import Services
from explorer.strategies import STRATEGIES
from explorer.tokens_view import render_tokens
from explorer.trajectory import RunArrays
from explorer.ui_logic import ArraysCache, RequestError, build_request, device_label, summarise, token_text_for
from explorer.ui_runs import runs_tab
from explorer.ui_compare import compare_tab

METRICS = ("confidence", "entropy", "margin")
LIVE_REFRESH_S = 0.25  # at most this often the page gets new figures while a run streams

HEADER = """# Diffusion-LM Trajectory Explorer
Watch a masked diffusion language model fill in a text step by step. Pick a preset or type a prompt,
choose how many tokens to commit per step (generation length / steps) and an unmasking strategy, then **Run**.
Every step is stored: scrub it with the slider, reopen it in **Runs**, put two runs side by side in **Compare**."""

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


def _decode_tab(services: Services, cache: ArraysCache, run_state: gr.State, job_state: gr.State) -> dict:
    models = list(services.models)
    replay_only = services.pool is None
    if replay_only:
        gr.Markdown(REPLAY_ONLY_NOTE, elem_id="replay-only-note")
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            preset = gr.Dropdown([p.name for p in services.presets], label="Teaching presets",
                                 value=None, info="one click fills the settings below", visible=not replay_only)
            preset_note = gr.Markdown(elem_classes=["preset-note"])
            prompt = gr.Textbox("once upon a time", label="Prompt", lines=2, elem_id="prompt",
                                info="the embedded model knows the ~120 words of its story grammar")
            # Run / Stop right under the prompt: on screen without scrolling past every setting.
            with gr.Row():
                run_btn = gr.Button("Run", variant="primary", elem_id="run-btn", scale=2, min_width=100,
                                    interactive=services.pool is not None)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", min_width=80,
                                     interactive=not replay_only)
            # Replay-only offers no model; any name then reaches the handler, which says why it refuses.
            model = gr.Dropdown(models, value=models[0] if models else None, label="Model",
                                allow_custom_value=replay_only)
            with gr.Row():
                # No min/max on the fields: the server's own check names the field and its range.
                gen_length = gr.Number(32, label="Generation length", precision=0, elem_id="gen-length",
                                       info=f"1..{services.limits.max_gen_length}")
                steps = gr.Number(8, label="Steps", precision=0, elem_id="steps",
                                  info="tokens per step = length / steps")
            block_length = gr.Number(0, label="Block length (0 = one block)", precision=0)
            strategy = gr.Dropdown(list(STRATEGIES), value="low_confidence", label="Unmasking strategy")
            threshold = gr.Slider(0.05, 1.0, value=0.9, step=0.01, label="Threshold τ (strategy threshold)")
            with gr.Row():
                temperature = gr.Number(0.0, label="Temperature", info="0 = argmax")
                seed = gr.Number(0, label="Seed", precision=0)
            pace = gr.Slider(0, 500, value=0, step=10, label="Slow motion: pause per step (ms)",
                             info="for watching a fast model; does not change the result", elem_id="pace")
        with gr.Column(scale=3):
            status = gr.HTML(_status("warn", REPLAY_ONLY_STATUS) if replay_only else _status("idle", "Ready. Press Run."),
                             elem_id="status")
            tokens = gr.HTML(elem_id="tokens")
            slider = gr.Slider(0, 1, value=0, step=1, label="Step (the state after this step)",
                               elem_id="step-slider", interactive=True)
            metric = gr.Radio(list(METRICS), value="confidence", label="Heatmap")
            heat = gr.Plot(label="Heatmap", elem_id="heatmap")
            with gr.Row():
                order = gr.Plot(label="Commit order", elem_id="order")
                bars = gr.Plot(label="Tokens per step", elem_id="bars")

    view_outputs = [status, tokens, heat, order, bars]

    def stored_view(run_id: int, metric_v: str, status_html: str | None = None, device: str | None = None) -> tuple:
        """A run as the store holds it (after it ended), with the slider on its last step."""
        cache.forget(run_id)
        arrays = cache.get(run_id)
        last_step = max(len(arrays.steps) - 1, 0)
        text = f"{arrays.run['prompt']} {arrays.run['final_text'] or ''}"
        shown = render_view(services, arrays, None, metric_v, text, device=device)
        return ((status_html or shown[0]), *shown[1:],
                gr.Slider(0, max(last_step, 1), value=last_step, step=1, interactive=True), run_id, None)

    def live_view(run: dict, records: list, config, began: float, metric_v: str, job_id: int,
                  device: str | None = None) -> tuple:
        arrays = RunArrays.from_records(run, records)
        _, tok, h, o, b = render_view(services, arrays, None, metric_v, None)
        done = int((arrays.commit_step >= 0).sum())
        line = (f"Decoding… step {records[-1].step + 1} · {done}/{config.gen_length} tokens · "
                f"{time.monotonic() - began:.1f} s" + (f" · {device}" if device else ""))
        return (_status("busy", line), tok, h, o, b, gr.skip(), run["id"], job_id)

    def run(prompt_v, model_v, gen_v, steps_v, block_v, strategy_v, thr_v, temp_v, seed_v, metric_v, pace_v=0):
        if services.pool is None:
            raise gr.Error("this server is replay-only: it runs no model, so Run is disabled. Open a stored run "
                           "in the Runs tab, or import a run bundle (.json) there.")
        try:
            config = build_request(services, prompt_v, model_v, gen_v, steps_v, block_v, strategy_v,
                                   thr_v, temp_v, seed_v)
            handle = services.pool.submit(prompt_v.strip(), model_v, config,
                                          pace_ms=min(max(int(pace_v or 0), 0), services.limits.max_pace_ms))
        except (RequestError, RuntimeError) as exc:
            raise gr.Error(str(exc)) from None
        job_id = handle.job.job_id
        run = {"id": None, "model": model_v, "status": "running", "gen_length": config.gen_length,
               "mask_id": services.models[model_v].mask_id, "prompt": prompt_v.strip()}
        records, last, began = [], 0.0, time.monotonic()
        # The slider belongs to the finished run: locked at 0 while this one streams.
        yield (_status("busy", "Queued…"), *(gr.skip(),) * 4,
               gr.Slider(0, 1, value=0, step=1, interactive=False), None, job_id)
        for kind, payload in handle.iter_events():
            if kind == "queued" and payload:
                yield (_status("busy", f"Waiting for the worker: {payload} job(s) ahead"),
                       *(gr.skip(),) * 5, None, job_id)
            elif kind == "started":
                run["id"] = payload
                # Not yet "Decoding…" (that line carries the first step); says where the run runs.
                yield (_status("busy", "Starting…" + (f" · {device_label(handle.device)}" if handle.device else "")),
                       *(gr.skip(),) * 5, payload, job_id)
            elif kind == "step":
                records.append(payload)
                if time.monotonic() - last >= LIVE_REFRESH_S:
                    last = time.monotonic()
                    yield live_view(run, records, config, began, metric_v, job_id, device_label(handle.device))
            elif kind == "done":
                yield stored_view(payload.run_id, metric_v, device=device_label(handle.device))
            elif kind in ("error", "failed"):  # show what was stored, so a partial run can be scrubbed
                message = f"The run ended with an error: {payload}"
                gr.Warning(message)
                if run["id"] is None:
                    yield (_status("error", message), *(gr.skip(),) * 4, gr.Slider(interactive=True), None, None)
                else:
                    yield stored_view(run["id"], metric_v, _status("error", message))

    def stop(job_id):
        if job_id is not None and services.pool is not None:
            services.pool.cancel(job_id)
        return _status("busy", "Stopping at the next step…") if job_id is not None else gr.skip()

    def scrub(step, run_id, metric_v):
        if run_id is None:
            return (gr.skip(),) * 5
        arrays = cache.get(run_id)
        step = min(int(step or 0), max(len(arrays.steps) - 1, 0))
        return render_view(services, arrays, step, metric_v, None)

    def load_preset(name):
        chosen = next((p for p in services.presets if p.name == name), None)
        if chosen is None:
            return (gr.skip(),) * 11
        s = chosen.settings
        return (f"**{html.escape(chosen.name)}.** {html.escape(chosen.explanation)}", s.get("prompt"),
                s.get("model", models[0] if models else None), s.get("gen_length"), s.get("steps"), s.get("block_length") or 0,
                s.get("strategy"), s.get("threshold", 0.9), s.get("temperature", 0.0), s.get("seed", 0),
                s.get("pace_ms", 0))

    inputs = [prompt, model, gen_length, steps, block_length, strategy, threshold, temperature, seed, metric, pace]
    # Progress and a refusal (gr.Error) show on the status line only, not as a badge over every figure.
    run_event = run_btn.click(run, inputs, view_outputs + [slider, run_state, job_state],
                              concurrency_limit=None, api_name="decode", show_progress_on=[status])
    stop_btn.click(stop, [job_state], [status], api_name="stop", queue=False)
    # `release` alone misses a step typed into the slider's number box (Gradio sends `release`
    # there only on blur) and the arrow keys on the range; `input` covers both. Neither fires
    # on the programmatic update after a run.
    gr.on([slider.release, slider.input], scrub, [slider, run_state, metric], view_outputs, api_name="scrub",
          trigger_mode="always_last")
    metric.change(scrub, [slider, run_state, metric], view_outputs, api_name=False)
    preset.change(load_preset, [preset], [preset_note, prompt, model, gen_length, steps, block_length,
                                          strategy, threshold, temperature, seed, pace], api_name=False)
    return {"outputs": view_outputs, "slider": slider, "metric": metric, "run_event": run_event,
            "render": render_view}
