"""The UI's logic without Gradio: request validation, run loading and summaries.

Kept apart from `explorer/ui/app.py` (layout and wiring) so it can be tested directly.
"""

from __future__ import annotations

import html
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from explorer.branching.alternatives import CHECKED_MODELS
from explorer.decoding.canvas_engine import check_canvas_config
from explorer.decoding.canvas_rules import CANVAS_KNOBS
from explorer.decoding.canvas_settings import canvas_config
from explorer.decoding.config import KNOBS, KNOBS_BY_NAME, ConfigError, DecodeConfig
from explorer.decoding.cost import estimated_passes
from explorer.decoding.energies import ENERGY_TERMS
from explorer.decoding.knobs import Knob
from explorer.decoding.strategies import STRATEGIES
from explorer.jobs import DeviceInfo
from explorer.services import Services
from explorer.store.arrays import RunArrays
from explorer.views.metrics import arness
from explorer.views.tokens import state_at
from models.checker import check


class RequestError(ValueError):
    """A request the server refuses before queuing anything; the message is shown to the user."""


# The Decode form, in the order of the /decode endpoint's inputs, with its initial values. Every
# knob of a registry entry that is offered in the form (`Knob.in_form`) is a field named after it,
# starting at its default; `violations` None means "the model's default" (on for the embedded
# model), resolved by `violations_default`.
FORM_KNOBS: tuple[Knob, ...] = tuple(knob for knob in KNOBS if knob.in_form)
_CONFIG = DecodeConfig()
FORM_DEFAULTS: dict[str, object] = {
    "prompt": "once upon a time",
    "model": None,
    "gen_length": 32,
    "steps": 8,
    "block_length": 0,
    "strategy": "low_confidence",
    "schedule": _CONFIG.schedule,
    "temperature": 0.0,
    "seed": 0,
    "metric": "confidence",
    "pace_ms": 0,
    **{knob.name: knob.default for knob in FORM_KNOBS},
    "energy_terms": [],
    **{f"weight_{term}": 1.0 for term in ENERGY_TERMS},
    "window_start": _CONFIG.energy_window[0],
    "window_end": _CONFIG.energy_window[1],
    "violations": None,
}
DECODE_FIELDS = tuple(FORM_DEFAULTS)

# This server's caps on the energies' cost (k candidates, S orders: k * S * (n - 1) extra
# sequences per step that commits n tokens), on top of DecodeConfig's own ranges.
SERVER_CAPS = {"energy_candidates": 16, "energy_orders": 8}


def strategy_note(name: str) -> str:
    """One line on what a strategy does, where it comes from, and where its knobs are."""
    spec = STRATEGIES[name]
    note = f"**{name}**: {spec.summary} *({spec.paper})*"
    if spec.knobs:
        note += " Its knob" + ("s are" if len(spec.knobs) > 1 else " is") + " in *Strategy knobs*."
    return note


def model_note(spec) -> str:
    """One line of Markdown on the model picked: its description, escaped as HTML and as Markdown
    (an operator's file may say anything; 'xdlm_* strategies' must not start an emphasis)."""
    if spec is None or not spec.description:
        return ""
    return re.sub(r"([\\`*_\[\]|#~])", r"\\\1", html.escape(spec.description))


def model_noise_k(spec) -> float:
    """The XDLM k field's value for a model: the noise it was trained with (the knob's default
    when the model is unknown)."""
    return spec.noise_k if spec is not None else KNOBS_BY_NAME["xdlm_k"].default


# The form fields a canvas model (DiffusionGemma) sets when it is picked: its own settings.
CANVAS_FORM_FIELDS = ("gen_length", "steps", "block_length", "strategy", "eb_gamma", "temperature")


def canvas_form_fields(spec) -> dict | None:
    """The Decode form's values for a canvas model's own generation settings (None: not a canvas model)."""
    defaults = getattr(spec, "canvas", None)
    if defaults is None:
        return None
    config = canvas_config(defaults)
    return {name: getattr(config, name) for name in CANVAS_FORM_FIELDS}


def violations_default(spec) -> bool:
    """The Dependency violations box for a model: on for the embedded model (its extra pass is
    cheap), off for the others (a batched pass of n copies per step)."""
    return spec is not None and spec.violations_default


def as_int(name: str, value) -> int:
    not_whole = isinstance(value, float) and (not math.isfinite(value) or value != int(value))
    if value is None or isinstance(value, bool) or not_whole:
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a whole number, got {value!r}") from None


def _as_float(name: str, value) -> float:
    """A number from the form; NaN and infinities pass through to DecodeConfig.validate, which names them."""
    if value is None or isinstance(value, bool):
        raise RequestError(f"{name} is empty: give a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number, got {value!r}") from None


def build_config(services: Services, form: dict) -> DecodeConfig:
    """Validate every field of the Decode form against the model and the server caps; the
    DecodeConfig to run, or RequestError with a message that names the field."""
    spec = _checked_model(services, form.get("model"))
    prompt = (form.get("prompt") or "").strip()
    if not prompt:
        raise RequestError("the prompt is empty: type a few words, e.g. 'once upon a time'")
    if len(prompt) > services.limits.max_prompt_chars:
        raise RequestError(
            f"the prompt is {len(prompt):,} characters; this server accepts up to {services.limits.max_prompt_chars:,}"
        )
    config = DecodeConfig(
        **_base_fields(services, form),
        **_knob_fields(form),
        **_energy_fields(form, spec),
        violations=bool(form.get("violations")),
    )
    canvas = getattr(spec, "canvas", None)
    if canvas is not None:  # a canvas model: its schedule and stop are its own (not in the form)
        own = canvas_config(canvas)
        config = replace(config, **{knob.name: getattr(own, knob.name) for knob in CANVAS_KNOBS})
    try:
        config.validate(spec.context_length, len(spec.encode(prompt)))
        if canvas is not None:
            check_canvas_config(config, canvas.canvas_length)
    except (ConfigError, ValueError) as exc:
        raise RequestError(str(exc)) from None
    check_budget(config, services.limits.max_job_passes)
    return config


def check_budget(config: DecodeConfig, max_passes: int) -> None:
    """Refuse a job whose estimated sequence forwards exceed the server's budget, naming both."""
    passes = estimated_passes(config)
    if passes > max_passes:
        raise RequestError(
            f"this run would take about {passes:,} sequence forwards; this server allows {max_passes:,} a run "
            "(fewer energy candidates or orders, more steps, or a narrower energy window cost less)"
        )


def _checked_model(services: Services, model):
    if services.pool is None:
        raise RequestError("this server is in replay-only mode: it shows stored runs but runs no model")
    if model not in services.models:
        raise RequestError(f"unknown model {model!r}; offered here: {', '.join(services.models)}")
    return services.models[model]


def _base_fields(services: Services, form: dict) -> dict:
    limits = services.limits
    gen_length, steps = as_int("generation length", form.get("gen_length")), as_int("steps", form.get("steps"))
    if not 1 <= gen_length <= limits.max_gen_length:
        raise RequestError(f"generation length {gen_length} is outside this server's range 1..{limits.max_gen_length}")
    if not 1 <= steps <= limits.max_steps:
        raise RequestError(f"steps {steps} is outside this server's range 1..{limits.max_steps}")
    block = form.get("block_length")
    return {
        "gen_length": gen_length,
        "steps": steps,
        "seed": as_int("seed", form.get("seed")),
        "block_length": as_int("block length", block) if block not in (None, 0, "") else None,
        "strategy": form.get("strategy"),
        "schedule": form.get("schedule") or _CONFIG.schedule,
        "temperature": _as_float("temperature", form.get("temperature")),
    }


def _knob_fields(form: dict) -> dict:
    """Every form knob from its field, read by its kind; ranges are DecodeConfig.validate's."""
    out = {}
    for knob in FORM_KNOBS:
        value = form.get(knob.name)
        out[knob.name] = (
            bool(value)
            if knob.kind is bool
            else as_int(knob.label, value)
            if knob.kind is int
            else _as_float(knob.label, value)
        )
    return out


def _energy_fields(form: dict, spec) -> dict:
    terms = list(form.get("energy_terms") or [])
    unknown = [t for t in terms if t not in ENERGY_TERMS]
    if unknown:
        raise RequestError(f"unknown energy term {unknown[0]!r}; valid: {', '.join(ENERGY_TERMS)}")
    if "ar" in terms and spec.default_ar_scorer is None:
        raise RequestError(
            f"the AR energy (ar) needs an autoregressive model with the same tokenizer as "
            f"{spec.name!r}, and none is paired with it here: use ind, inv or uni instead"
        )
    if terms:
        for name, cap in SERVER_CAPS.items():
            knob = KNOBS_BY_NAME[name]
            value = as_int(knob.label, form.get(name))
            if value > cap:
                raise RequestError(
                    f"energy {knob.label[0].lower()}{knob.label[1:]} = {value} is over this server's limit of {cap}"
                )
    return {
        "energies": tuple((t, _as_float(f"weight of energy {t!r}", form.get(f"weight_{t}"))) for t in terms),
        "energy_window": (
            _as_float("window start", form.get("window_start")),
            _as_float("window end", form.get("window_end")),
        ),
    }


SAME_STRATEGY = "same as run A"


def rerun_config(services: Services, run: dict, model, strategy: str | None = None) -> DecodeConfig:
    """A stored run's settings (its seed included) for another model (the Compare tab's "decode
    run A on another model"), with `strategy` instead of the run's own unless it is None or
    SAME_STRATEGY; checked against that model as the Decode form is, or RequestError."""
    spec = _checked_model(services, model)
    config = DecodeConfig.from_dict(run.get("config") or {})
    if strategy not in (None, "", SAME_STRATEGY):
        if strategy not in STRATEGIES:
            raise RequestError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
        config = replace(config, strategy=strategy)
    if any(term == "ar" for term, _ in config.energies) and spec.default_ar_scorer is None:
        raise RequestError(f"run {run.get('id')} uses the AR energy (ar), which {spec.name!r} has no AR model for")
    try:
        config.validate(spec.context_length, len(spec.encode(run["prompt"])))
    except (ConfigError, ValueError) as exc:
        raise RequestError(f"run {run.get('id')}'s settings do not fit {spec.name!r}: {exc}") from None
    return config


def other_model(services: Services, model: str | None) -> str | None:
    """The first model offered here that is not `model` (None if there is none)."""
    return next((name for name in services.models if name != model), None)


def preset_form(preset, services: Services) -> dict:
    """Every Decode form field for a preset: its settings over FORM_DEFAULTS, so a field it does
    not name is reset (loading a plain preset after an energy one turns the energies off)."""
    s = dict(preset.settings)
    form = {**FORM_DEFAULTS, "model": next(iter(services.models), None)}
    form.update({k: v for k, v in s.items() if k in form})
    for term, weight in s.get("energies", ()):
        form[f"weight_{term}"] = weight
    form["energy_terms"] = [term for term, _ in s.get("energies", ())]
    if "energy_window" in s:
        form["window_start"], form["window_end"] = s["energy_window"]
    if form["violations"] is None:
        form["violations"] = violations_default(services.models.get(form["model"]))
    if "xdlm_k" not in s:
        form["xdlm_k"] = model_noise_k(services.models.get(form["model"]))
    form["block_length"] = form["block_length"] or 0
    return form


def preset_opens(preset) -> dict[str, bool]:
    """Which of the form's accordions a preset changes (so loading it opens them): the strategy
    knobs when it sets one, the energies when it turns any on."""
    settings = dict(preset.settings)
    return {
        "knobs_accordion": any(knob.name in settings for knob in FORM_KNOBS),
        "energies_accordion": bool(settings.get("energies")),
    }


def violation_cost_note(arrays: RunArrays | None) -> str:
    """The line next to the Dependency violations box: the measured cost of the extra pass on a
    run (mean over its steps of extra-pass seconds / the step's own forward seconds), or before
    any run what it costs in principle."""
    if arrays is None:
        return VIOLATION_COST_BEFORE
    ratios = [
        v.seconds / v.forward_seconds
        for v in (e.violations for e in arrays.extras)
        if v is not None and v.forward_seconds
    ]
    name = f"run {arrays.run['id']}" if arrays.run.get("id") is not None else "this run"
    if ratios:
        return (
            f"Cost on {name}: the extra pass took ≈ {np.mean(ratios):.2g}× a plain step "
            f"(mean over its {len(ratios)} step(s) that committed 2 or more tokens)."
        )
    if (arrays.run.get("config") or {}).get("violations") is False:
        return f"Off for {name}. " + VIOLATION_COST_BEFORE
    return f"No step of {name} committed 2 or more tokens, so no extra pass ran. " + VIOLATION_COST_BEFORE


VIOLATION_COST_BEFORE = (
    "Cost: one extra batched pass of n copies of the sequence per step (n = tokens the step "
    "commits, at most 16): ≈ n× a plain step on a CPU."
)


class ArraysCache:
    """A small LRU of finished runs' arrays, so scrubbing a step does not re-read the store."""

    def __init__(self, services: Services, size: int = 16) -> None:
        self.services, self.size = services, size
        self._items: OrderedDict[int, RunArrays] = OrderedDict()
        self._lock = threading.Lock()  # Gradio runs handlers of all sessions on threads

    def get(self, run_id: int) -> RunArrays:
        with self._lock:
            if run_id in self._items:
                self._items.move_to_end(run_id)
                return self._items[run_id]
        arrays = self.services.store.read_arrays(run_id)
        if arrays.run["status"] != "running":
            with self._lock:
                self._items[run_id] = arrays
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return arrays

    def forget(self, run_id: int) -> None:
        with self._lock:
            self._items.pop(run_id, None)


def device_label(info: DeviceInfo | None) -> str | None:
    """The worker's device report for the status line: 'device: cpu' or
    'device: cuda:0 · 3.2 GiB in use' (memory held by tensors)."""
    if info is None:
        return None
    text = f"device: {info.device}"
    if info.allocated is not None:
        text += f" · {info.allocated / 2**30:.1f} GiB in use"
    return text


def token_text_for(services: Services, arrays: RunArrays):
    """Token ids -> text: the model's own vocabulary when offered here, else what the run stored."""
    spec = services.models.get(arrays.run["model"])
    if spec is not None:
        return spec.token_text
    known = services.store.token_texts(arrays.run["id"])
    return lambda token_id: known.get(int(token_id), f"#{int(token_id)}")


@dataclass(frozen=True)
class RunSummary:
    run_id: int | None
    status: str
    n_steps: int
    committed: int
    gen_length: int
    arness: float  # of the step that last changed each position (its commit or last revision)
    mean_commit_prob: float
    verdict: str | None
    revisions: int = 0  # visible tokens changed into others (XDLM)

    def line(self) -> str:
        parts = [
            f"run {self.run_id}" if self.run_id is not None else "live run",
            self.status,
            f"{self.n_steps} steps",
            f"{self.committed}/{self.gen_length} tokens committed",
        ]
        if self.n_steps:
            parts.append(f"{self.committed / self.n_steps:.2f} tokens/step")
        if self.revisions:
            parts.append(f"{self.revisions} revision" + ("" if self.revisions == 1 else "s"))
        if not math.isnan(self.arness):
            parts.append(f"AR-ness τ = {self.arness:+.2f}")
        if self.verdict is not None:
            parts.append(f"checker: {self.verdict}")
        return " · ".join(parts)


def summarise(arrays: RunArrays, text: str | None, model: str) -> RunSummary:
    committed = int((arrays.commit_step >= 0).sum())
    probs = arrays.commit_prob[arrays.commit_step >= 0]
    probs = probs[np.isfinite(probs)]  # a token forced by a branch's edit has no model probability
    verdict = None
    if model in CHECKED_MODELS and text and committed == arrays.run["gen_length"]:
        result = check(text)
        verdict = (
            "valid"
            if result.valid
            else f"{len(result.violations)} violation(s): " + ", ".join(sorted({v.kind for v in result.violations}))
        )
    return RunSummary(
        arrays.run.get("id"),
        arrays.run.get("status", "running"),
        len(arrays.steps),
        committed,
        arrays.run["gen_length"],
        arness(arrays.commit_step),
        float(probs.mean()) if probs.size else math.nan,
        verdict,
        arrays.commits.n_revised,
    )


# ---- branches ------------------------------------------------------------------------------------

# DecodeConfig fields the Decode form does not set: a branch with "other settings" keeps the
# parent's values of these (the form would only hold their defaults).
_NOT_IN_FORM = frozenset({"ar_scorer"} | {knob.name for knob in KNOBS if not knob.in_form})


def changed_settings(parent_config: dict, config: DecodeConfig) -> dict:
    """The fields of the form's `config` that differ from the parent run's stored config: what
    a "continue with other settings" branch changes (an empty dict reproduces the parent)."""
    parent = DecodeConfig.from_dict(parent_config)
    return {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if f.name not in _NOT_IN_FORM and getattr(config, f.name) != getattr(parent, f.name)
    }


def branch_step_for(arrays: RunArrays, step: int, position: int) -> int:
    """The step a branch from `position` starts after: the slider's `step`, unless nothing is
    masked after it (a finished text: a branch there could only swap this one token), then the
    step that committed the token at `position` (its co-committed tokens and everything before
    stay; every later step decodes again)."""
    last = arrays.n_steps - 1
    step = min(max(int(step), -1), last)
    state = state_at(arrays, step)
    still_masked = int((state.since < 0).sum())
    if still_masked > 0 or state.since[position] < 0:
        return step
    return int(state.since[position])


def forward_passes(services: Services, run_id: int) -> tuple[int, int]:
    """(all steps, steps after the branch step) of a run's model forward passes, as stored per
    step; the second equals the first for a run that is not a branch."""
    run = services.store.get_run(run_id) or {}
    after = run.get("branch_step")
    return services.store.forward_passes(run_id), services.store.forward_passes(run_id, -1 if after is None else after)


def run_tree(runs: Sequence[dict]) -> list[tuple[dict, int]]:
    """(run, depth) in display order: each run followed by its branches (oldest first), their
    branches after them, and so on; runs whose parent is not in `runs` start a tree (depth 0)
    in the given order (newest first from the store)."""
    listed = {r["id"] for r in runs}
    children: dict[int, list[dict]] = {}
    roots = []
    for r in runs:
        parent = r.get("parent_run_id")
        if parent is not None and parent in listed and parent != r["id"]:
            children.setdefault(parent, []).append(r)
        else:
            roots.append(r)
    out: list[tuple[dict, int]] = []
    stack = [(r, 0) for r in reversed(roots)]
    while stack:  # depth first, iterative: a long chain of branches must not hit the recursion limit
        run, depth = stack.pop()
        out.append((run, depth))
        stack.extend((c, depth + 1) for c in sorted(children.get(run["id"], []), key=lambda c: c["id"], reverse=True))
    return out


def differing_at(a: RunArrays, b: RunArrays, step: int | None, since: int = -1) -> set[int]:
    """Positions whose token (or mask) differs between two runs after `step` (None: the end;
    a run with fewer steps shows its last state), counted only when `step` >= `since` (the
    branch step: before it a branch and its parent are the same run)."""
    if step is not None and step < since:
        return set()
    states = [state_at(r, None if step is None else min(step, r.n_steps - 1)) for r in (a, b)]
    n = min(a.gen_length, b.gen_length)
    differ = set(np.flatnonzero(states[0].tokens[:n] != states[1].tokens[:n]).tolist())
    return differ | set(range(n, max(a.gen_length, b.gen_length)))
