"""The statistics of sweep summaries: means with normal intervals, ratios with run-bootstrap
intervals, rates with Wilson intervals (models/evaluate.py). Shared by `sweep-report` and
bench/sweep_report.py."""

from __future__ import annotations

import math

import numpy as np

from models.evaluate import wilson_interval

Z = 1.96
RESAMPLES = 1000
SEED = 0

__all__ = ["RESAMPLES", "SEED", "Z", "bootstrap_ratio", "interval_text", "mean_ci", "percentiles", "resample_counts",
           "wilson_interval"]  # fmt: skip


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
