"""The Decode form and stored runs: a run's settings as form values (the inverse of
`logic.build_config`), which fields changed since the run was opened, the teaching preset a
form (or a run) is, and the Re-run button's wiring.

`form_from_run(run)` gives every field of the form that is a setting of the run (all of
`DECODE_FIELDS` but the heatmap metric and the slow-motion pace); for a run the form can
express, `build_config(services, form_from_run(run))` equals the run's DecodeConfig. What the
form cannot set (`ar_scorer` and the knobs not offered in the form) is named by
`not_in_form(run)`: a Re-run takes this server's defaults for those.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable

import gradio as gr

from explorer.decoding.config import DecodeConfig
from explorer.decoding.energies import ENERGY_TERMS
from explorer.services import Services
from explorer.ui.logic import _NOT_IN_FORM, DECODE_FIELDS, FORM_DEFAULTS, FORM_KNOBS, preset_form
from explorer.ui.toasts import refuse

NOT_SETTINGS = ("metric", "pace_ms")  # form fields that are not settings of a run
RUN_FIELDS = tuple(name for name in DECODE_FIELDS if name not in NOT_SETTINGS)
FIELD_LABELS: dict[str, str] = {
    "prompt": "prompt",
    "model": "model",
    "gen_length": "generation length",
    "steps": "steps",
    "block_length": "block length",
    "strategy": "strategy",
    "schedule": "schedule",
    "temperature": "temperature",
    "seed": "seed",
    **{knob.name: knob.label for knob in FORM_KNOBS},
    "energy_terms": "energy terms",
    **{f"weight_{term}": f"weight {term}" for term in ENERGY_TERMS},
    "window_start": "window start",
    "window_end": "window end",
    "violations": "dependency violations",
}


def form_from_run(run: dict) -> dict:
    """The Decode form's values that reproduce a stored run (`RUN_FIELDS`, in form order): its
    model, prompt and every setting of its config. The weights of energy terms the run did not
    use keep the form's defaults."""
    config = DecodeConfig.from_dict(run.get("config") or {})
    weights = dict(config.energies)
    form = {
        "prompt": run.get("prompt", ""),
        "model": run.get("model"),
        "gen_length": config.gen_length,
        "steps": config.steps,
        "block_length": config.block_length or 0,  # the form's 0 = one block (None in the config)
        "strategy": config.strategy,
        "schedule": config.schedule,
        "temperature": config.temperature,
        "seed": config.seed,
        **{knob.name: getattr(config, knob.name) for knob in FORM_KNOBS},
        "energy_terms": [term for term, _ in config.energies],
        **{f"weight_{term}": weights.get(term, FORM_DEFAULTS[f"weight_{term}"]) for term in ENERGY_TERMS},
        "window_start": config.energy_window[0],
        "window_end": config.energy_window[1],
        "violations": config.violations,
    }
    return {name: form[name] for name in RUN_FIELDS}


def not_in_form(run: dict) -> list[str]:
    """Settings of the run the form cannot set that differ from their defaults (a Re-run uses
    the defaults for these)."""
    config, default = DecodeConfig.from_dict(run.get("config") or {}), DecodeConfig()
    return sorted(name for name in _NOT_IN_FORM if getattr(config, name) != getattr(default, name))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(name: str, a, b) -> bool:
    if name == "energy_terms":
        return sorted(a or []) == sorted(b or [])
    if name == "violations":
        return bool(a) == bool(b)
    if name == "block_length":
        a, b = a or 0, b or 0
    if name == "prompt":
        return (a or "").strip() == (b or "").strip()
    if _is_number(a) and _is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def changed_fields(opened: dict, current: dict) -> list[str]:
    """The fields of `current` (form values by name) that differ from `opened` (a run's
    `form_from_run`), in form order; the weight of an energy term neither uses is ignored."""
    used = set(opened.get("energy_terms") or []) | set(current.get("energy_terms") or [])
    out = []
    for name in RUN_FIELDS:
        if name.startswith("weight_") and name.removeprefix("weight_") not in used:
            continue
        if not _same(name, opened.get(name), current.get(name)):
            out.append(name)
    return out


def changed_line(run_id: int | None, changed: list[str], missing: list[str] = ()) -> str:
    """The line under Run once a run is open: which fields differ from that run's settings."""
    if run_id is None:
        return ""
    if changed:
        text = f"Changed since run {run_id}: " + ", ".join(FIELD_LABELS.get(n, n) for n in changed)
        kind = "changed"
    else:
        text = f"The settings of run {run_id}; Re-run decodes them again as a new run"
        kind = "same"
    if missing:
        text += f" (run {run_id} also set {', '.join(missing)}, which the form cannot: a run from here uses defaults)"
    return f'<div class="changed-since changed-since-{kind}">{html.escape(text)}.</div>'


# ---- what a stored run opened in the Decode tab is -------------------------------------------------


def opened_state(run: dict) -> dict:
    """What the Decode tab keeps of a run opened from the Runs tab (a gr.State value)."""
    return {"run_id": run["id"], "form": form_from_run(run), "missing": not_in_form(run)}


def changed_since(opened: dict | None, *values) -> str:
    """`changed_line` for the form's current values (`RUN_FIELDS` order) against the opened run."""
    if not opened:
        return ""
    current = dict(zip(RUN_FIELDS, values))
    return changed_line(opened["run_id"], changed_fields(opened["form"], current), opened.get("missing", []))


def rerun_values(opened: dict | None, metric: str, pace_ms) -> list:
    """The /decode inputs (`DECODE_FIELDS` order) that decode the opened run's settings again."""
    if not opened:
        raise refuse("open a run first (Runs tab: select a run, then Open in Decode)")
    form = {**opened["form"], "metric": metric, "pace_ms": pace_ms}
    return [form[name] for name in DECODE_FIELDS]


def wire_changed_since(controls: dict) -> None:
    """Any change of a setting updates the 'changed since run N' line under Run."""
    fields = [controls[name] for name in RUN_FIELDS]
    gr.on(
        [field.change for field in fields],
        changed_since,
        [controls["opened_run"], *fields],
        [controls["changed_since"]],
        api_name=False,
        queue=False,
        show_progress="hidden",
        trigger_mode="always_last",
    )


def wire_rerun(controls: dict, run: Callable, outputs: list, **kwargs) -> None:
    """Re-run: fill the form with the opened run's settings, then decode them as a new run with
    `run` (the /decode handler, called with the `DECODE_FIELDS` values; a generator) into
    `outputs` (the /decode outputs); `kwargs` go to that event (e.g. show_progress_on).
    The decode uses the opened run's settings even if another handler rewrites a field
    meanwhile (a model change resets the violations box): the form only shows them."""
    opened, fields = controls["opened_run"], [controls[name] for name in RUN_FIELDS]

    def fill(state):
        if not state:
            raise refuse("open a run first (Runs tab: select a run, then Open in Decode)")
        return [state["form"][name] for name in RUN_FIELDS]

    def rerun(state, metric, pace_ms):
        yield from run(*rerun_values(state, metric, pace_ms))

    controls["rerun_btn"].click(fill, [opened], fields, api_name=False).success(
        rerun,
        [opened, controls["metric"], controls["pace_ms"]],
        outputs,
        api_name="rerun",
        concurrency_limit=None,
        **kwargs,
    )


# ---- presets ----------------------------------------------------------------------------------------


def preset_of(services: Services, form: dict) -> str | None:
    """The teaching preset whose settings the form holds unchanged (its name), or None."""
    for preset in services.presets:
        wanted = preset_form(preset, services)
        if not changed_fields(wanted, form):
            return preset.name
    return None


class PresetMatcher:
    """Which preset a stored run's settings are (for runs that did not record one), with each
    preset's form computed once."""

    def __init__(self, services: Services) -> None:
        self.forms = [(p.name, preset_form(p, services)) for p in services.presets]

    def __call__(self, run: dict) -> str | None:
        prompt = (run.get("prompt") or "").strip()
        candidates = [(name, f) for name, f in self.forms if (f["prompt"] or "").strip() == prompt]
        if not candidates:
            return None
        form = form_from_run(run)
        return next((name for name, wanted in candidates if not changed_fields(wanted, form)), None)
