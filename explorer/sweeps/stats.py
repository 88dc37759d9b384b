"""The statistics of sweep summaries: means with normal intervals, ratios with run-bootstrap
intervals, rates with Wilson intervals (models/evaluate.py). Shared by `sweep-report` and
bench/sweep_report.py."""

from __future__ import annotations

import math

import numpy as np

from explorer.views.metrics import roc_auc
from models.evaluate import wilson_interval

Z = 1.96
RESAMPLES = 1000
SEED = 0

__all__ = ["RESAMPLES", "SEED", "Z", "auc_with_ci", "bootstrap_ratio", "interval_text", "mean_ci", "pair_matrix",
           "percentiles", "resample_counts", "weighted_auc", "wilson_interval"]  # fmt: skip


def mean_ci(values) -> dict:
    """Mean and its normal 95% interval (NaN bounds with one value)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    half = Z * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": m, "ci": [m - half, m + half]}


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n): how often each of n runs is drawn in each bootstrap resample (fixed seed)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    offsets = (np.arange(resamples) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=resamples * n).reshape(resamples, n)


def bootstrap_ratio(num, den, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, list[float]]:
    """sum(num) / sum(den) with a percentile 95% interval from resampling runs (rows)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    point = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
    counts = resample_counts(len(num), resamples, seed)
    d = counts @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(d > 0, (counts @ num) / d, np.nan)
    return point, percentiles(ratios)


def pair_matrix(scores, labels, run_index, n_runs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Mann-Whitney counts between runs: M[a, b] = sum over positives of run a and negatives of
    run b of [positive scores higher] + 1/2 [tie]; and each run's positives and negatives."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    run_index = np.asarray(run_index, dtype=np.int64)
    pos_s, pos_run = scores[labels], run_index[labels]
    neg_s, neg_run = scores[~labels], run_index[~labels]
    order = np.lexsort((neg_s, neg_run))
    neg_s, neg_run = neg_s[order], neg_run[order]
    bounds = np.searchsorted(neg_run, np.arange(n_runs + 1))
    M = np.zeros((n_runs, n_runs))
    for b in np.flatnonzero(bounds[1:] > bounds[:-1]):
        neg_b = neg_s[bounds[b] : bounds[b + 1]]
        below = np.searchsorted(neg_b, pos_s, "left") + np.searchsorted(neg_b, pos_s, "right")
        M[:, b] = np.bincount(pos_run, weights=below / 2, minlength=n_runs)
    return M, np.bincount(pos_run, minlength=n_runs), np.bincount(neg_run, minlength=n_runs)


def weighted_auc(scores, labels, run_index, counts: np.ndarray) -> np.ndarray:
    """ROC AUC (ties 1/2) with every token of run r counted counts[:, r] times: one AUC per row.

    With all counts 1 this is the Mann-Whitney AUC of explorer.views.metrics.roc_auc."""
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))  # (B, runs)
    M, pos, neg = pair_matrix(scores, labels, run_index, counts.shape[1])
    numerator = ((counts @ M) * counts).sum(axis=1)
    denominator = (counts @ pos) * (counts @ neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def auc_with_ci(scores, labels, run_index, counts: np.ndarray) -> dict:
    """Point AUC over every token, and a 95% interval from resampling runs (counts: (B, runs))."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    point = roc_auc(scores, labels)
    boot = weighted_auc(scores, labels, run_index, counts)
    return {"auc": point, "ci": percentiles(boot), "positives": int(labels.sum()), "negatives": int((~labels).sum())}


def percentiles(values: np.ndarray) -> list[float]:
    """The 2.5 and 97.5 percentiles of the non-NaN values (NaN, NaN if none)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def interval_text(m: float, ci: list[float], fmt: str = ".3f", scale: float = 1.0) -> str:
    """ "0.512 [0.498, 0.526]"; the mean alone when the interval is undefined."""
    if any(math.isnan(v) for v in ci):
        return f"{scale * m:{fmt}}"
    return f"{scale * m:{fmt}} [{scale * ci[0]:{fmt}}, {scale * ci[1]:{fmt}}]"
