"""The UI's logic without Gradio: request validation, run loading and summaries.

Kept apart from `explorer/ui/app.py` (layout and wiring) so it can be tested directly.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from explorer.decoding.config import KNOBS, KNOBS_BY_NAME, ConfigError, DecodeConfig
from explorer.decoding.energies import ENERGY_TERMS
from explorer.decoding.knobs import Knob
from explorer.decoding.strategies import STRATEGIES
from explorer.jobs import DeviceInfo
from explorer.services import Services
from explorer.store.arrays import RunArrays
from explorer.views.metrics import arness
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


def violations_default(spec) -> bool:
    """The Dependency violations box for a model: on for the embedded model (its extra pass is
    cheap), off for the others (a batched pass of n copies per step)."""
    return spec is not None and spec.violations_default


def _as_int(name: str, value) -> int:
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
    config = DecodeConfig(
        **_base_fields(services, form),
        **_knob_fields(form),
        **_energy_fields(form, spec),
        violations=bool(form.get("violations")),
    )
    try:
        config.validate(spec.context_length, len(spec.encode(prompt)))
    except (ConfigError, ValueError) as exc:
        raise RequestError(str(exc)) from None
    return config


def _checked_model(services: Services, model):
    if services.pool is None:
        raise RequestError("this server is in replay-only mode: it shows stored runs but runs no model")
    if model not in services.models:
        raise RequestError(f"unknown model {model!r}; offered here: {', '.join(services.models)}")
    return services.models[model]


def _base_fields(services: Services, form: dict) -> dict:
    limits = services.limits
    gen_length, steps = _as_int("generation length", form.get("gen_length")), _as_int("steps", form.get("steps"))
    if not 1 <= gen_length <= limits.max_gen_length:
        raise RequestError(f"generation length {gen_length} is outside this server's range 1..{limits.max_gen_length}")
    if not 1 <= steps <= limits.max_steps:
        raise RequestError(f"steps {steps} is outside this server's range 1..{limits.max_steps}")
    block = form.get("block_length")
    return {
        "gen_length": gen_length,
        "steps": steps,
        "seed": _as_int("seed", form.get("seed")),
        "block_length": _as_int("block length", block) if block not in (None, 0, "") else None,
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
            else _as_int(knob.label, value)
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
            value = _as_int(knob.label, form.get(name))
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
    form["block_length"] = form["block_length"] or 0
    return form


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
    arness: float
    mean_commit_prob: float
    verdict: str | None

    def line(self) -> str:
        parts = [
            f"run {self.run_id}" if self.run_id is not None else "live run",
            self.status,
            f"{self.n_steps} steps",
            f"{self.committed}/{self.gen_length} tokens committed",
        ]
        if self.n_steps:
            parts.append(f"{self.committed / self.n_steps:.2f} tokens/step")
        if not math.isnan(self.arness):
            parts.append(f"AR-ness τ = {self.arness:+.2f}")
        if self.verdict is not None:
            parts.append(f"checker: {self.verdict}")
        return " · ".join(parts)


def summarise(arrays: RunArrays, text: str | None, model: str) -> RunSummary:
    committed = int((arrays.commit_step >= 0).sum())
    probs = arrays.commit_prob[arrays.commit_step >= 0]
    verdict = None
    if model == "embedded" and text and committed == arrays.run["gen_length"]:
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
    )
