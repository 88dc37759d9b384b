"""A sweep's summary, computed from the store: per cell the runs done, quality and cost with 95% intervals.

Quality: the checker's fully-valid rate (95% Wilson interval) and grammatical sentences /
sentences (95% bootstrap interval over runs) where the spec measured `checker`; the AR NLL
(mean, normal interval) where it measured `ar_nll`. Cost per generated token, three ways (mean,
normal interval): sequential model calls, sequence forwards, and the decode's wall-clock ms (the
violation pass, which only measures, apart). Where it measured `violation_auc`: the ROC AUC of
the violation score -S (and of the baseline 1 - p) for "the checker names this token's position",
over every co-committed token of the cell's runs, with a 95% interval from resampling runs. Every
number comes with its n; cells are never pooled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from explorer.store import sweeps as table
from explorer.store.database import Event, TrajectoryStore
from explorer.sweeps.spec import Cell
from explorer.sweeps.stats import (
    RESAMPLES,
    SEED,
    auc_with_ci,
    bootstrap_ratio,
    mean_ci,
    resample_counts,
    wilson_interval,
)

COSTS = (  # (key, axis title)
    ("calls", "sequential model calls per token"),
    ("sequences", "sequence forwards per token"),
    ("wall_ms", "wall-clock ms per token"),
)
MIN_AUC_POSITIVES = 20  # a violation AUC needs this many checker-named co-committed tokens


@dataclass(frozen=True)
class SweepSummary:
    sweep: dict  # id, name, spec, created_at
    cells: list[dict]  # one per cell in spec order (see summarise_cell)
    planned: int  # cells x seeds
    done: int
    failed: int
    running: int

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.sweep["spec"].get("metrics", ()))

    @property
    def complete(self) -> bool:
        return self.done == self.planned


def summarise(store: TrajectoryStore, sweep_id: int, resamples: int = RESAMPLES) -> SweepSummary:
    """The sweep's summary (ValueError if there is no such sweep)."""
    sweep = table.get_sweep(store, sweep_id)
    if sweep is None:
        raise ValueError(f"no sweep {sweep_id} in {store.url} (see `python -m explorer sweeps`)")
    rows = table.sweep_rows(store, sweep_id)
    by_cell: dict[int, list[dict]] = {}
    for row in rows:
        by_cell.setdefault(row["cell_id"], []).append(row)
    seeds = len(sweep["spec"].get("seed_list", []))
    metrics = tuple(sweep["spec"].get("metrics", ()))
    cells = []
    for c in table.sweep_cells(store, sweep_id):
        cell = summarise_cell(c, by_cell.get(c["id"], []), seeds, metrics, resamples)
        if "violation_auc" in metrics and cell["runs"]:
            cell["violation_auc"] = violation_auc(store, c["id"], by_cell[c["id"]], resamples)
        cells.append(cell)
    count = {status: sum(r["status"] == status for r in rows) for status in table.SWEEP_RUN_STATUSES}
    return SweepSummary(sweep, cells, len(cells) * seeds, count["done"], count["failed"], count["running"])


def summarise_cell(cell_row: dict, rows: list[dict], seeds: int, metrics: tuple[str, ...], resamples: int) -> dict:
    """One cell: its identity, progress, and (when a run is done) quality and cost with intervals."""
    cell = Cell.from_json(cell_row["cell"])
    done = [r for r in rows if r["status"] == "done"]
    out = {
        "cell_id": cell_row["id"],
        "index": cell_row["index"],
        "key": cell_row["key"],
        "label": cell_row["label"],
        "model": cell.model,
        "group": cell.group,
        "strategy": cell.config["strategy"],
        "setting_name": cell.setting_name,
        "setting": cell.setting,
        "temperature": cell.temperature,
        "seeds": seeds,
        "runs": len(done),
        "failed": sum(r["status"] == "failed" for r in rows),
        "run_ids": [r["run_id"] for r in done if r["run_id"] is not None],
    }
    if not done:
        return out
    gen = cell.config["gen_length"]
    values = [r["metrics"] for r in done]
    out["tokens_per_step"] = float(np.mean([gen / max(1, v["steps"]) for v in values]))
    out["cost_per_token"] = {
        "calls": mean_ci([v["cost"]["calls"] / gen for v in values]),
        "sequences": mean_ci([v["cost"]["sequences"] / gen for v in values]),
        "wall_ms": mean_ci([1000 * v["cost"]["seconds"] / gen for v in values]),
    }
    if "checker" in metrics:
        valid = sum(bool(v["valid"]) for v in values)
        good, total = [v["valid_sentences"] for v in values], [v["sentences"] for v in values]
        rate, ci = bootstrap_ratio(good, total, resamples, SEED)
        n = len(values)
        out |= {"valid": valid, "valid_rate": valid / n, "valid_ci": list(wilson_interval(valid, n))}
        out |= {"sentence_rate": rate, "sentence_ci": ci}
    if "ar_nll" in metrics:
        nll = mean_ci([v["ar_nll"] for v in values])
        out |= {"ar_nll": nll["mean"], "ar_nll_ci": nll["ci"]}
    return out


def violation_auc(store: TrajectoryStore, cell_id: int, rows: list[dict], resamples: int = RESAMPLES) -> dict:
    """The cell's violation-score AUC: every co-committed token (a commit event with a violation
    score) of its done runs, positive when the checker names its position in that run.

    Both frames are the generated part, 0-based: an event's position indexes the run's generated
    tokens (the store writes StepRecord.committed), and the checker metric's `named` is a word
    position of prompt + generation less the prompt's length (one word per token). The scores:
    -S (S the most negative pairwise score against the co-committed tokens) and the baseline
    1 - p(token at commit); each AUC with a 95% interval from resampling runs (the same resamples
    for both). AUC None, with a reason, under MIN_AUC_POSITIVES positives or without negatives."""
    done = [r for r in rows if r["status"] == "done" and r["run_id"] is not None]
    index = {r["run_id"]: i for i, r in enumerate(done)}
    named = [set(r["metrics"].get("named", ())) for r in done]
    query = (
        select(Event.run_id, Event.position, Event.prob, Event.violation_score)
        .join(table.SweepRun, table.SweepRun.run_id == Event.run_id)
        .where(
            table.SweepRun.cell_id == cell_id,
            table.SweepRun.status == "done",
            Event.kind.in_(("commit", "revise")),  # a revision is a commit over a visible token
            Event.violation_score.is_not(None),
        )
        .order_by(Event.run_id, Event.step, Event.position)
    )
    with store.session() as s:
        events = [e for e in s.execute(query).all() if e.run_id in index]
    run = np.array([index[e.run_id] for e in events], dtype=np.int64)
    labels = np.array([e.position in named[index[e.run_id]] for e in events], dtype=bool)
    score = -np.array([e.violation_score for e in events], dtype=np.float64)
    baseline = 1 - np.array([e.prob for e in events], dtype=np.float64)
    positives = int(labels.sum())
    out = {"runs": len(done), "tokens": len(events), "positives": positives, "negatives": len(events) - positives}
    out |= {"auc": None, "auc_ci": None, "baseline_auc": None, "baseline_ci": None, "reason": None}
    if positives < MIN_AUC_POSITIVES:
        return out | {"reason": f"{positives} positives, fewer than the {MIN_AUC_POSITIVES} an AUC needs"}
    if positives == len(events):
        return out | {"reason": "no negatives: the checker names every co-committed token"}
    counts = resample_counts(len(done), resamples, SEED)
    violation, one_minus_p = (auc_with_ci(x, labels, run, counts) for x in (score, baseline))
    aucs = {"auc": violation["auc"], "auc_ci": violation["ci"]}
    return out | aucs | {"baseline_auc": one_minus_p["auc"], "baseline_ci": one_minus_p["ci"]}
