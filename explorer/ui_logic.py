"""The UI's logic without Gradio: request validation, run loading and summaries.

Kept apart from `explorer/ui.py` (layout and wiring) so it can be tested directly.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from explorer.config import ConfigError, DecodeConfig
from explorer.metrics import arness
from explorer.services import Services
from explorer.strategies import STRATEGIES
from explorer.trajectory import RunArrays


class RequestError(ValueError):
    """A request the server refuses before queuing anything; the message is shown to the user."""


def _as_int(name: str, value) -> int:
    if value is None or (isinstance(value, float) and (math.isnan(value) or value != int(value))):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def build_request(services: Services, prompt: str, model: str, gen_length, steps, block_length,
                  strategy: str, threshold, temperature, seed) -> DecodeConfig:
    """Validate every field against the model and the server caps; raise RequestError."""
    limits = services.limits
    if services.pool is None:
        raise RequestError("this server is in replay-only mode: it shows stored runs but runs no model")
    if model not in services.models:
        raise RequestError(f"unknown model {model!r}; offered here: {', '.join(services.models)}")
    prompt = (prompt or "").strip()
    if not prompt:
        raise RequestError("the prompt is empty: type a few words, e.g. 'once upon a time'")
    gen_length, steps, seed = _as_int("generation length", gen_length), _as_int("steps", steps), _as_int("seed", seed)
    if not 1 <= gen_length <= limits.max_gen_length:
        raise RequestError(f"generation length {gen_length} is outside this server's range 1..{limits.max_gen_length}")
    if not 1 <= steps <= limits.max_steps:
        raise RequestError(f"steps {steps} is outside this server's range 1..{limits.max_steps}")
    block = _as_int("block length", block_length) if block_length not in (None, 0, "") else None
    spec = services.models[model]
    config = DecodeConfig(gen_length=gen_length, steps=steps, block_length=block, strategy=strategy,
                          threshold=float(threshold), temperature=float(temperature), seed=seed)
    try:
        config.validate(spec.context_length, len(spec.encode(prompt)), tuple(STRATEGIES))
    except (ConfigError, ValueError) as exc:
        raise RequestError(str(exc)) from None
    return config


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


def device_label(info: dict | None) -> str | None:
    """The worker's device report (explorer.worker.device_info) for the status line:
    'device: cpu' or 'device: cuda:0 · 3.2 GiB in use' (memory held by tensors)."""
    if not info or not info.get("device"):
        return None
    text = f"device: {info['device']}"
    if info.get("allocated") is not None:
        text += f" · {info['allocated'] / 2**30:.1f} GiB in use"
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
        parts = [f"run {self.run_id}" if self.run_id is not None else "live run", self.status,
                 f"{self.n_steps} steps", f"{self.committed}/{self.gen_length} tokens committed"]
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
        from models.checker import check

        result = check(text)
        verdict = "valid" if result.valid else f"{len(result.violations)} violation(s): " + ", ".join(
            sorted({v.kind for v in result.violations}))
    return RunSummary(arrays.run.get("id"), arrays.run.get("status", "running"), len(arrays.steps), committed,
                      arrays.run["gen_length"], arness(arrays.commit_step),
                      float(probs.mean()) if probs.size else math.nan, verdict)
