"""The Decode tab's settings column: every field of the Decode form as a Gradio component.

`decode_controls(services)` lays them out and returns {field name: component} for every name
in `ui_logic.DECODE_FIELDS` (the /decode endpoint's inputs, in that order) except `metric`,
which sits with the figures, plus the few components that only explain (notes, accordions).
"""
from __future__ import annotations

import gradio as gr

from explorer.energies import ENERGY_TERMS
from explorer.services import Services
from explorer.strategies import STRATEGIES
from explorer.ui_logic import (FORM_DEFAULTS, MAX_ENERGY_CANDIDATES, MAX_ENERGY_ORDERS, VIOLATION_COST_BEFORE,
                               strategy_note, violations_default)

ENERGY_NOTE = """Each step draws **k candidates** for the tokens it commits from the model's per-position
marginals and keeps one with probability softmax(−E/τ), where E = Σ weight × term: lower energy = more likely kept.
Energies run only while the masked fraction t is inside the window (1 = all masked).

Ind-E, Inv-E and Uni-E here are this project's own exact formulation of the idea of the Uni-E paper (2026),
whose full text we do not have.

- **ar** (EDLM): how much less likely an autoregressive model finds the text than the marginals did; pulls
  toward fluent text (k AR passes per step).
- **ind** (Ind-E): log Q − log P_chain: how far the independent per-position draw is from the model's own
  left-to-right chain over the committed tokens.
- **inv** (Inv-E): how much the model's probability of the committed tokens depends on the order they are
  revealed in (S random orders; 0 when S = 1).
- **uni** (Uni-E) = Ind-E + Inv-E: exact, uses only the diffusion model (with S = 1 it equals Ind-E)."""

TERM_LABELS = {"ar": "ar (EDLM)", "ind": "ind (Ind-E)", "inv": "inv (Inv-E)", "uni": "uni (Uni-E)"}


def decode_controls(services: Services) -> dict:
    """Lay out the settings (inside the caller's column); {field or note name: component}."""
    d, models = FORM_DEFAULTS, list(services.models)
    replay_only = services.pool is None
    c: dict = {}
    c["preset"] = gr.Dropdown([p.name for p in services.presets], label="Teaching presets", value=None,
                              info="one click fills the settings below", visible=not replay_only)
    c["preset_note"] = gr.Markdown(elem_classes=["preset-note"])
    c["prompt"] = gr.Textbox(d["prompt"], label="Prompt", lines=2, elem_id="prompt",
                             info="the embedded model knows the ~120 words of its story grammar")
    # Run / Stop right under the prompt: on screen without scrolling past every setting.
    with gr.Row():
        c["run_btn"] = gr.Button("Run", variant="primary", elem_id="run-btn", scale=2, min_width=100,
                                 interactive=not replay_only)
        c["stop_btn"] = gr.Button("Stop", variant="stop", elem_id="stop-btn", min_width=80, interactive=not replay_only)
    # Replay-only offers no model; any name then reaches the handler, which says why it refuses.
    first = models[0] if models else None
    c["model"] = gr.Dropdown(models, value=first, label="Model", allow_custom_value=replay_only)
    with gr.Row():
        # No min/max on the fields: the server's own check names the field and its range.
        c["gen_length"] = gr.Number(d["gen_length"], label="Generation length", precision=0, elem_id="gen-length",
                                    info=f"1..{services.limits.max_gen_length}")
        c["steps"] = gr.Number(d["steps"], label="Steps", precision=0, elem_id="steps",
                               info="tokens per step = length / steps")
    c["block_length"] = gr.Number(d["block_length"], label="Block length (0 = one block)", precision=0)
    c["strategy"] = gr.Dropdown(list(STRATEGIES), value=d["strategy"], label="Unmasking strategy", elem_id="strategy")
    c["strategy_note"] = gr.Markdown(strategy_note(d["strategy"]), elem_classes=["strategy-note"])
    _strategy_knobs(c, d)
    with gr.Row():
        c["temperature"] = gr.Number(d["temperature"], label="Temperature", info="0 = argmax")
        c["seed"] = gr.Number(d["seed"], label="Seed", precision=0)
    _energies(c, d)
    _violations(c, services.models.get(first))
    c["pace_ms"] = gr.Slider(0, services.limits.max_pace_ms, value=d["pace_ms"], step=10, elem_id="pace",
                             label="Slow motion: pause per step (ms)",
                             info="for watching a fast model; does not change the result")
    return c


def _strategy_knobs(c: dict, d: dict) -> None:
    with gr.Accordion("Strategy knobs", open=False, elem_id="strategy-knobs") as c["knobs_accordion"]:
        c["threshold"] = gr.Slider(0.05, 1.0, value=d["threshold"], step=0.01, label="Threshold τ (strategy threshold)",
                                   info="commit every position at least this confident")
        with gr.Row():
            c["factor"] = gr.Number(d["factor"], label="Factor f (strategy factor)", elem_id="factor",
                                    min_width=120, info="larger = more tokens per step")
            c["eb_gamma"] = gr.Number(d["eb_gamma"], label="EB γ, nats (strategy eb)", elem_id="eb-gamma",
                                      min_width=120, info="error budget per step")
        with gr.Row():
            c["prophet"] = gr.Checkbox(d["prophet"], label="Prophet early commit (any strategy)", elem_id="prophet",
                                       min_width=120, info="fill every mask at once when the model is sure (logit gap)")
            c["cfg_scale"] = gr.Number(d["cfg_scale"], label="CFG scale w (any strategy)", elem_id="cfg-scale",
                                       min_width=120, info="0 = off; > 0 runs a 2nd, prompt-masked pass")


def _energies(c: dict, d: dict) -> None:
    with gr.Accordion("Energies", open=False, elem_id="energies") as c["energies_accordion"]:
        gr.Markdown(ENERGY_NOTE, elem_classes=["energy-note"])
        c["energy_terms"] = gr.CheckboxGroup([(TERM_LABELS.get(t, t), t) for t in ENERGY_TERMS],
                                             value=d["energy_terms"], label="Terms (none = energies off)",
                                             elem_id="energy-terms")
        with gr.Row():
            for term in ENERGY_TERMS:
                c[f"weight_{term}"] = gr.Number(d[f"weight_{term}"], label=f"weight {term}", min_width=70,
                                                elem_id=f"weight-{term}")
        with gr.Row():
            c["energy_candidates"] = gr.Number(d["energy_candidates"], label="Candidates k", precision=0,
                                               elem_id="energy-k", min_width=90, info=f"1..{MAX_ENERGY_CANDIDATES}")
            c["energy_orders"] = gr.Number(d["energy_orders"], label="Orders S (inv, uni)", precision=0,
                                           elem_id="energy-orders", min_width=90,
                                           info=f"1..{MAX_ENERGY_ORDERS}; 1 = left to right")
            c["energy_tau"] = gr.Number(d["energy_tau"], label="τ", elem_id="energy-tau", min_width=70,
                                        info="keep ∝ exp(−E/τ)")
        with gr.Row():
            c["window_start"] = gr.Number(d["window_start"], label="Window start t", elem_id="window-start",
                                          min_width=120, info="masked fraction, 0..1")
            c["window_end"] = gr.Number(d["window_end"], label="Window end t", elem_id="window-end",
                                        min_width=120, info="1 = the first step")


def _violations(c: dict, spec) -> None:
    with gr.Row(equal_height=True):
        c["violations"] = gr.Checkbox(violations_default(spec), label="Dependency violations", elem_id="violations",
                                      info="check the tokens each step commits together", scale=1, min_width=150)
        c["violation_cost"] = gr.Markdown(VIOLATION_COST_BEFORE, elem_id="violation-cost", elem_classes=["cost-note"])
