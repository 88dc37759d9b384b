"""What a sweep measures of each run: a registry of metrics, each a pure function of the run's outcome.

Cost (sequential model calls, sequence forwards, the decode's seconds, each split from the
violation pass's measuring) is recorded for every run; the spec's `metrics` adds the others.
A metric's values are stored with the (cell, seed) in `sweep_runs.metrics` and summarised from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from explorer.branching.alternatives import CHECKED_MODELS
from explorer.decoding.callbacks import Callback
from explorer.decoding.protocols import ARScorer
from explorer.decoding.records import StepRecord
from models.checker import check


@dataclass(frozen=True)
class Outcome:
    """A finished run, as the metrics see it."""

    model: str
    prompt_ids: list[int]
    token_ids: list[int]  # the generated part
    text: str  # prompt and generation, decoded (the checker reads whole stories)
    scorer: ARScorer | None  # the model's AR scorer, for the NLL


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    compute: Callable[[Outcome], dict]
    models: tuple[str, ...] | None = None  # the models it applies to (None: any)
    needs_scorer: bool = False

    def unavailable(self, model: str) -> str | None:
        """Why this metric cannot be measured on `model` (None: it can)."""
        if self.models is not None and model not in self.models:
            return f"metric {self.name!r} applies to {', '.join(self.models)} only, not {model!r}"
        return None


def _checker(outcome: Outcome) -> dict:
    result = check(outcome.text)
    prompt_words = len(outcome.prompt_ids)
    return {
        "valid": result.valid,
        "sentences": result.n_sentences,
        "valid_sentences": result.n_valid_sentences,
        "kinds": [v.kind for v in result.violations],
        "named": sorted({p - prompt_words for v in result.violations for p in v.positions if p >= prompt_words}),
    }


def _ar_nll(outcome: Outcome) -> dict:
    """The AR model's mean negative log-likelihood (nats per token) of the generated tokens."""
    ids = torch.tensor([outcome.prompt_ids + outcome.token_ids])
    with torch.no_grad():
        log_probs = outcome.scorer.log_probs(ids)[0, len(outcome.prompt_ids) :]
    return {"ar_nll": -float(log_probs.mean())}


METRICS: dict[str, Metric] = {
    "checker": Metric(
        "checker",
        "the story grammar's checker: fully valid, grammatical sentences / sentences, the violations' kinds",
        _checker,
        models=CHECKED_MODELS,
    ),
    "ar_nll": Metric("ar_nll", "the AR scorer's NLL of the generation (nats per token)", _ar_nll, needs_scorer=True),
    # Nothing per run: the summary reads the stored commit events' violation scores and probabilities
    # and labels them with the checker's `named` positions (explorer/sweeps/summary.py).
    "violation_auc": Metric(
        "violation_auc",
        "ROC AUC of the violation score (and of 1 - p) for the tokens the checker names, per cell",
        lambda outcome: {},
        models=CHECKED_MODELS,
    ),
}
NEEDS = {"violation_auc": "checker"}  # a metric -> the metric it reads


class CostTotals(Callback):
    """Adds up a run's cost over its steps (StepCost: decoding apart from measuring)."""

    def __init__(self) -> None:
        self.totals = {"calls": 0, "sequences": 0, "seconds": 0.0, "measure_calls": 0, "measure_sequences": 0}
        self.steps = 0

    def on_step(self, record: StepRecord) -> None:
        cost = record.extras.cost
        self.steps += 1
        self.totals["seconds"] += record.seconds - (cost.measure_seconds if cost else 0.0)
        if cost is None:
            return
        self.totals["calls"] += cost.calls
        self.totals["sequences"] += cost.sequences
        self.totals["measure_calls"] += cost.measure_calls
        self.totals["measure_sequences"] += cost.measure_sequences

    def metrics(self) -> dict:
        return {"cost": dict(self.totals), "steps": self.steps}
