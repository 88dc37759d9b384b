"""The Decode tab's settings column: every field of the Decode form as a Gradio component.

`decode_controls(services)` lays them out and returns {field name: component} for every name
in `logic.DECODE_FIELDS` (the /decode endpoint's inputs, in that order) except `metric`, which
sits with the figures, plus the few components that only explain (notes, accordions). The knob
fields are generated from the registry entries (`logic.FORM_KNOBS`): a strategy's knobs show
while that strategy is picked. Beside Run, Re-run (shown once a stored run is opened), and under
it the line that names the fields changed since (`opened_run`, `changed_since`: ui/form.py).
"""

from __future__ import annotations

import gradio as gr

from explorer.decoding.config import OPTION_KNOBS
from explorer.decoding.energies import ENERGY_KNOBS, ENERGY_TERMS
from explorer.decoding.knobs import Knob
from explorer.decoding.schedule import SCHEDULES
from explorer.decoding.strategies import STRATEGIES, strategies_using
from explorer.services import Services
from explorer.ui.logic import (
    FORM_DEFAULTS,
    FORM_KNOBS,
    SERVER_CAPS,
    VIOLATION_COST_BEFORE,
    model_noise_k,
    model_note,
    strategy_note,
    violations_default,
)

ENERGY_NOTE = """Each step draws **k candidates** for the tokens it commits from the model's per-position
marginals and keeps one with probability softmax(−E/τ), where E = Σ weight × term: lower energy = more likely kept.
Energies run only while the masked fraction t is inside the window (1 = all masked).

Ind-E, Inv-E and Uni-E here are this project's own exact formulation of the idea of the Uni-E paper (2026),
whose full text we do not have.

""" + "\n".join(
    f"- **{term.name}** ({term.label.split('(')[-1].rstrip(')')}): {term.help}." for term in ENERGY_TERMS.values()
)


def decode_controls(services: Services) -> dict:
    """Lay out the settings (inside the caller's column); {field or note name: component}."""
    d, models = FORM_DEFAULTS, list(services.models)
    replay_only = services.pool is None
    c: dict = {}
    c["preset"] = gr.Dropdown(
        [p.name for p in services.presets],
        label="Teaching presets",
        value=None,
        info="one click fills the settings below",
        visible=not replay_only,
    )
    c["preset_note"] = gr.Markdown(elem_classes=["preset-note"])
    c["prompt"] = gr.Textbox(
        d["prompt"],
        label="Prompt",
        lines=2,
        elem_id="prompt",
        info="the embedded model knows the ~120 words of its story grammar",
    )
    # Run / Stop right under the prompt: on screen without scrolling past every setting.
    with gr.Row():
        c["run_btn"] = gr.Button(
            "Run", variant="primary", elem_id="run-btn", scale=2, min_width=100, interactive=not replay_only
        )
        # Re-run: shown once a stored run is opened (Runs tab); decodes its settings as a new run.
        c["rerun_btn"] = gr.Button(
            "Re-run", elem_id="rerun-btn", min_width=90, visible=False, interactive=not replay_only
        )
        c["stop_btn"] = gr.Button("Stop", variant="stop", elem_id="stop-btn", min_width=80, interactive=not replay_only)
    # The run opened from the Runs tab ({"run_id", "form", "missing"}: ui/form.py) and which
    # fields of the form differ from its settings.
    c["opened_run"] = gr.State(None)
    c["changed_since"] = gr.HTML(elem_id="changed-since")
    first = models[0] if models else None
    # Any name reaches the handler, which refuses an unknown one in words (Gradio's own refusal of a
    # value not in the list would show the value as markup).
    c["model"] = gr.Dropdown(models, value=first, label="Model", allow_custom_value=True, elem_id="model")
    c["model_note"] = gr.Markdown(model_note(services.models.get(first)), elem_classes=["model-note"])
    with gr.Row():
        # No min/max on the fields: the server's own check names the field and its range. No
        # rounding either (precision None): 3.5 steps is refused with a message, not run as 4.
        c["gen_length"] = gr.Number(
            d["gen_length"],
            label="Generation length",
            precision=None,
            elem_id="gen-length",
            info=f"1..{services.limits.max_gen_length}",
        )
        c["steps"] = gr.Number(
            d["steps"], label="Steps", precision=None, elem_id="steps", info="tokens per step = length / steps"
        )
    c["block_length"] = gr.Number(d["block_length"], label="Block length (0 = one block)", precision=None)
    c["strategy"] = gr.Dropdown(list(STRATEGIES), value=d["strategy"], label="Unmasking strategy", elem_id="strategy")
    c["strategy_note"] = gr.Markdown(strategy_note(d["strategy"]), elem_classes=["strategy-note"])
    c["schedule"] = gr.Dropdown(
        list(SCHEDULES),
        value=d["schedule"],
        label="Schedule (tokens per step)",
        elem_id="schedule",
        visible=STRATEGIES[d["strategy"]].scheduled,
        info=" · ".join(f"{s.name}: {s.help}" for s in SCHEDULES.values()),
    )
    # The XDLM strategies' k starts at the noise the first model was trained with (0: masked).
    _strategy_knobs(c, {**d, "xdlm_k": model_noise_k(services.models.get(first))})
    with gr.Row():
        c["temperature"] = gr.Number(d["temperature"], label="Temperature", info="0 = argmax")
        c["seed"] = gr.Number(d["seed"], label="Seed", precision=None)
    _energies(c, d)
    _violations(c, services.models.get(first))
    c["pace_ms"] = gr.Slider(
        0,
        services.limits.max_pace_ms,
        value=d["pace_ms"],
        step=10,
        elem_id="pace",
        label="Slow motion: pause per step (ms)",
        info="for watching a fast model; does not change the result",
    )
    return c


def knob_field(knob: Knob, value, label: str, visible: bool = True, cap: int | None = None):
    """The component of one knob: a checkbox, a slider (bounded, with a step) or a number box."""
    info = knob.help + (f" ({knob.paper})" if knob.paper else "")
    common = dict(label=label, elem_id=knob.display, visible=visible, min_width=120)
    if knob.kind is bool:
        return gr.Checkbox(value, info=info, **common)
    if knob.step is not None and knob.low is not None and knob.high is not None:
        # The slider may reach an open bound: the server's check then names the valid range.
        return gr.Slider(knob.low, knob.high, value=value, step=knob.step, info=info, **common)
    valid = f"1..{cap}" if cap is not None else knob.valid_range()
    return gr.Number(value, precision=None, info=f"{valid}: {info}", **common)


def visible_knobs(strategy: str) -> dict[str, bool]:
    """Which strategy-knob fields show for `strategy` (the any-strategy options always do)."""
    spec = STRATEGIES.get(strategy)
    return {knob.name: spec is not None and knob in spec.knobs for knob in _FORM_STRATEGY_KNOBS}


_FORM_STRATEGY_KNOBS = tuple(knob for knob in FORM_KNOBS if strategies_using(knob))


def _strategy_knobs(c: dict, d: dict) -> None:
    shown = visible_knobs(d["strategy"])
    with gr.Accordion("Strategy knobs", open=False, elem_id="strategy-knobs") as c["knobs_accordion"]:
        for knob in _FORM_STRATEGY_KNOBS:
            label = f"{knob.label} (strategy {', '.join(strategies_using(knob))})"
            c[knob.name] = knob_field(knob, d[knob.name], label, shown[knob.name])
        with gr.Row():
            for knob in OPTION_KNOBS:
                c[knob.name] = knob_field(knob, d[knob.name], f"{knob.label} (any strategy)")


def _energies(c: dict, d: dict) -> None:
    with gr.Accordion("Energies", open=False, elem_id="energies") as c["energies_accordion"]:
        gr.Markdown(ENERGY_NOTE, elem_classes=["energy-note"])
        c["energy_terms"] = gr.CheckboxGroup(
            [(term.label, term.name) for term in ENERGY_TERMS.values()],
            value=d["energy_terms"],
            label="Terms (none = energies off)",
            elem_id="energy-terms",
        )
        with gr.Row():
            for term in ENERGY_TERMS:
                c[f"weight_{term}"] = gr.Number(
                    d[f"weight_{term}"], label=f"weight {term}", min_width=70, elem_id=f"weight-{term}"
                )
        with gr.Row():
            for knob in ENERGY_KNOBS:
                if knob.in_form:
                    c[knob.name] = knob_field(knob, d[knob.name], knob.label, cap=SERVER_CAPS.get(knob.name))
        with gr.Row():
            c["window_start"] = gr.Number(
                d["window_start"],
                label="Window start t",
                elem_id="window-start",
                min_width=120,
                info="masked fraction, 0..1",
            )
            c["window_end"] = gr.Number(
                d["window_end"], label="Window end t", elem_id="window-end", min_width=120, info="1 = the first step"
            )


def _violations(c: dict, spec) -> None:
    with gr.Row(equal_height=True):
        c["violations"] = gr.Checkbox(
            violations_default(spec),
            label="Dependency violations",
            elem_id="violations",
            info="check the tokens each step commits together",
            scale=1,
            min_width=150,
        )
        c["violation_cost"] = gr.Markdown(VIOLATION_COST_BEFORE, elem_id="violation-cost", elem_classes=["cost-note"])
