"""bench/sweep_report.py on tiny synthetic raw runs: Wilson intervals per cell, the target check, the
per-level ROC AUC (never pooled across levels) with its bootstrap over runs, deterministic with its seed.
No wall-clock is asserted and no figure is rendered."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from explorer.views.metrics import roc_auc
from models.evaluate import wilson_interval

REPORT = Path(__file__).resolve().parents[1] / "bench" / "sweep_report.py"
RESAMPLES = 200


@pytest.fixture(scope="module")
def sr():
    spec = importlib.util.spec_from_file_location("sweep_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(key_parts, seed, valid, calls, sequences=None, sentences=(10, 10), tokens=(), named_by_kind=(), group="plain"):
    t, strategy, setting, energy = key_parts
    setting_text = f"{setting:g}" if isinstance(setting, float) else str(setting)
    named_by_kind = [[k, list(p)] for k, p in named_by_kind]
    return {
        "key": f"T{t:g}-{strategy}-{setting_text}-{energy}",
        "group": group,
        "strategy": strategy,
        "setting": setting,
        "energy": energy,
        "temperature": float(t),
        "seed": seed,
        "prompt": "p",
        "valid": valid,
        "sentences": sentences[0],
        "valid_sentences": sentences[1],
        "n_steps": 32,
        "kinds": [k for k, _ in named_by_kind],
        "named_by_kind": named_by_kind,
        "named": sorted({p for _, ps in named_by_kind for p in ps}),
        "ar_nll": 1.0 + 0.01 * seed,
        "cost": {"calls": calls, "sequences": sequences or calls, "seconds": 0.1, "measure_sequences": 0},
        "tokens": [list(tok) for tok in tokens],
    }


def cell_runs(key_parts, n, n_valid, calls_per_token, group="plain"):
    return [run(key_parts, s, s < n_valid, round(calls_per_token * 64), group=group) for s in range(n)]


def write(raw: Path, runs: list[dict]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    by: dict[str, list] = {}
    for r in runs:
        by.setdefault(r["key"], []).append(r)
    for key, rs in by.items():
        (raw / f"{key}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))


def frontier_runs() -> list[dict]:
    return (
        cell_runs((0, "lookahead", 1.0, "none"), 20, 20, 0.25, "gated")  # reaches; lower bound < 99%
        + cell_runs((0, "pairwise_gate", 1.0, "none"), 400, 400, 0.375, "gated")  # reaches; lower bound >= 99%
        + cell_runs((0, "low_confidence", 2, "none"), 20, 19, 0.5)  # 95%: misses on validity
        + cell_runs((0, "threshold", 0.9, "none"), 20, 20, 0.75)  # 100% but too costly: the reference
        + cell_runs((1, "low_confidence", 2, "none"), 10, 7, 0.5)  # T = 1: nothing reaches
        + cell_runs((1, "low_confidence", 1, "none"), 10, 10, 1.0)
    )


def test_each_cell_has_its_wilson_interval_and_its_n(sr, tmp_path):
    write(tmp_path / "frontier", frontier_runs())
    summary = sr.report(tmp_path / "frontier", tmp_path / "absent", tmp_path / "docs", write_figure=False, quiet=True)
    cells = {c["key"]: c for c in summary["cells"]}
    assert len(cells) == 6 and summary["runs"] == 480
    c = cells["T1-low_confidence-2-none"]
    assert (c["runs"], c["valid"], c["valid_rate"]) == (10, 7, 0.7)
    assert c["valid_ci"] == pytest.approx(list(wilson_interval(7, 10)))
    assert c["cost_per_token"]["calls"]["mean"] == pytest.approx(0.5)
    assert c["cost_per_token"]["wall_ms"]["mean"] == pytest.approx(100 / 64)
    assert c["sentence_rate"] == 1.0 and c["sentence_ci"] == [1.0, 1.0]
    assert summary["auc"] is None and not (tmp_path / "docs" / "auc_table.md").exists()
    table = (tmp_path / "docs" / "sweep_table.md").read_text()
    assert "## T = 0 (greedy" in table and "## T = 1 (sampled" in table
    row = next(line for line in table.splitlines() if line.startswith("| plain | low_confidence | 2 | none | 10 |"))
    lo, hi = wilson_interval(7, 10)
    assert f"70.0 [{100 * lo:.1f}, {100 * hi:.1f}]" in row
    assert json.loads((tmp_path / "docs" / "sweep_summary.json").read_text())["cells"][0]["runs"] > 0


def test_a_half_written_last_line_is_skipped(sr, tmp_path):
    write(tmp_path, cell_runs((1, "low_confidence", 2, "none"), 3, 3, 0.5))
    with open(tmp_path / "T1-low_confidence-2-none.jsonl", "a") as f:
        f.write('{"key": "T1-low_confidence-2-none", "se')
    runs, skipped = sr.load(tmp_path)
    assert len(runs) == 3 and skipped == 1


def test_the_sentence_rate_bootstraps_runs_with_a_fixed_seed(sr):
    runs = [run((1, "low_confidence", 2, "none"), s, False, 32, sentences=(10, s % 11)) for s in range(30)]
    a, b = sr.summarise_cell(runs, RESAMPLES, seed=3), sr.summarise_cell(runs, RESAMPLES, seed=3)
    assert a["sentence_rate"] == pytest.approx(sum(s % 11 for s in range(30)) / 300)
    assert a["sentence_ci"] == b["sentence_ci"]
    assert a["sentence_ci"][0] < a["sentence_rate"] < a["sentence_ci"][1]
    assert sr.summarise_cell(runs, RESAMPLES, seed=4)["sentence_ci"] != a["sentence_ci"]


def test_the_target_check_picks_the_right_cells(sr):
    cells = [sr.summarise_cell(frontier_runs_of(key), RESAMPLES) for key in keys()]
    target = sr.target_check(cells)
    t0, t1 = target["temperatures"]
    assert t0["temperature"] == 0.0 and t1["temperature"] == 1.0
    assert [r["key"] for r in t0["cells"]] == ["T0-lookahead-1-none", "T0-pairwise_gate-1-none"]
    first, second = t0["cells"]
    assert not first["lower_bound_reaches"] and first["valid_ci"][0] == pytest.approx(wilson_interval(20, 20)[0])
    assert second["lower_bound_reaches"]  # 400/400: lower bound 400 / (400 + 1.96^2) > 0.99
    assert first["calls_vs_threshold_0.9"] == pytest.approx(0.25 / 0.75)
    assert t0["threshold_0.9"]["key"] == "T0-threshold-0.9-none"
    text = "\n".join(t0["statement"])
    assert "lower bound" in text and "Honestly" not in text  # one cell's lower bound does reach 99%
    assert t1["cells"] == [] and t1["threshold_0.9"] is None
    assert "no cell reaches" in t1["statement"][0] and "previous best" in t1["statement"][-1]
    only_low = sr.target_check([c for c in cells if c["key"] == "T0-lookahead-1-none"])
    assert "Honestly" in "\n".join(only_low["temperatures"][0]["statement"])


def keys() -> list[str]:
    return sorted({r["key"] for r in frontier_runs()})


def frontier_runs_of(key: str) -> list[dict]:
    return [r for r in frontier_runs() if r["key"] == key]


# ----------------------------------------------------------------------------------------- AUC


def auc_runs(level: int, n_runs: int, shift: float, strategy: str = "low_confidence", cross: bool = True) -> list:
    """Runs whose named tokens score (-S) higher than their clean ones within the level; `shift`
    moves the whole level, so pooling two levels would mix the classes."""
    rng = np.random.default_rng(level)
    runs = []
    for s in range(n_runs):
        named = {1, 2} if s % 2 else {3}
        tokens = []
        for pos in range(8):
            bad = pos in named
            score = -(shift + (1.0 if bad else 0.0) + 0.5 * rng.random())  # -score separates within the level
            c = score - 0.1 if cross else None
            tokens.append((level, score, c, 0.5 + 0.4 * rng.random(), rng.random(), pos, pos // level))
        kinds = [["syntax", sorted(named)]] + ([["pronoun_gender", [40]]] if s % 3 == 0 else [])
        runs.append(
            run((1, strategy, level, "none"), s, False, 64 // level, tokens=tokens, named_by_kind=kinds, group="auc")
        )
    return runs


def test_the_auc_is_per_level_and_never_pooled(sr):
    two, four = auc_runs(2, 24, shift=0.0), auc_runs(4, 24, shift=3.0)
    report = sr.auc_report(two + four, RESAMPLES, seed=0)
    assert [row["level"] for row in report["levels"]] == [2, 4]
    for row, runs in zip(report["levels"], (two, four)):
        tokens = [(t[1], t[5] in set(r["named"])) for r in runs for t in r["tokens"]]
        scores, labels = -np.array([s for s, _ in tokens]), np.array([y for _, y in tokens])
        assert row["violation"]["auc"] == pytest.approx(roc_auc(scores, labels)) == 1.0
        assert row["tokens"] == len(tokens) and row["named"] == labels.sum() and row["runs"] == 24
        for metric in ("cross", "combined", "one_minus_confidence", "entropy"):
            assert metric in row
    pooled = [(t[1], t[5] in set(r["named"])) for r in two + four for t in r["tokens"]]
    assert roc_auc(-np.array([s for s, _ in pooled]), np.array([y for _, y in pooled])) < 0.9  # what pooling hides
    assert all("level" in row for row in report["levels"] + report["kinds"] + report["strategies"])


def test_the_auc_bootstrap_resamples_runs_and_is_deterministic_with_its_seed(sr):
    runs = auc_runs(2, 30, shift=0.0)
    for r in runs:  # blur the separation so the interval is not a point
        for tok in r["tokens"]:
            tok[1] += float(np.random.default_rng(tok[5] + 8 * r["seed"]).normal(0, 0.6))
    a = sr.auc_report(runs, RESAMPLES, seed=7)["levels"][0]
    b = sr.auc_report(runs, RESAMPLES, seed=7)["levels"][0]
    c = sr.auc_report(runs, RESAMPLES, seed=8)["levels"][0]
    assert a == b and a["violation"]["ci"] != c["violation"]["ci"]
    assert a["violation"]["ci"][0] < a["violation"]["auc"] < a["violation"]["ci"][1]
    counts = sr.resample_counts(30, RESAMPLES, seed=7)
    assert counts.shape == (RESAMPLES, 30) and (counts.sum(axis=1) == 30).all()  # whole runs drawn
    # every resample the identity: the interval collapses onto the point
    scores = np.array([-t[1] for r in runs for t in r["tokens"]])
    labels = np.array([t[5] in set(r["named"]) for r in runs for t in r["tokens"]])
    index = np.array([i for i, r in enumerate(runs) for _ in r["tokens"]])
    same = sr.auc_with_ci(scores, labels, index, np.ones((5, 30), dtype=np.int64))
    assert same["ci"] == pytest.approx([same["auc"]] * 2)


def test_the_weighted_auc_is_the_mann_whitney_auc_with_ties(sr):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.3
    runs = rng.integers(0, 7, 200)  # tokens of 7 runs
    assert sr.weighted_auc(scores, labels, runs, np.ones(7))[0] == pytest.approx(roc_auc(scores, labels))
    counts = rng.integers(0, 3, (4, 7))  # four resamples of the runs
    for row, auc in zip(counts, sr.weighted_auc(scores, labels, runs, counts)):
        repeated = np.concatenate([np.flatnonzero(runs == r).repeat(1) for r in range(7) for _ in range(row[r])])
        assert auc == pytest.approx(roc_auc(scores[repeated], labels[repeated]))


def test_kinds_count_scorable_and_unscorable_positions_and_missing_cross_scores(sr):
    runs = auc_runs(4, 30, shift=0.0, cross=False)
    report = sr.auc_report(runs, RESAMPLES, seed=0)
    kinds = {row["kind"]: row for row in report["kinds"]}
    assert kinds["syntax"]["named"] == 15 * 2 + 15 and kinds["syntax"]["scorable"] == 45
    assert kinds["syntax"]["not_scorable"] == 0 and kinds["syntax"]["violation"]["auc"] == 1.0
    assert kinds["syntax"]["positive_tokens"] == 45 and kinds["syntax"]["tokens"] == 240
    assert kinds["pronoun_gender"] == {"level": 4, "kind": "pronoun_gender", "named": 10, "scorable": 0,
                                       "not_scorable": 10}  # fmt: skip
    level = report["levels"][0]
    assert "cross" not in level  # no cross-step score recorded
    assert level["combined"] == level["violation"]  # min(S, cross) falls back to S
    assert [(row["strategy"], row["level"]) for row in report["strategies"]] == [("low_confidence", 4)]


def test_the_report_writes_the_auc_table_per_level(sr, tmp_path):
    write(tmp_path / "frontier", cell_runs((1, "low_confidence", 2, "none"), 5, 2, 0.5))
    write(tmp_path / "auc", auc_runs(2, 8, 0.0) + auc_runs(16, 8, 2.0, strategy="margin"))
    summary = sr.report(
        tmp_path / "frontier", tmp_path / "auc", tmp_path / "docs", write_figure=False, resamples=50, quiet=True
    )
    assert [row["level"] for row in summary["auc"]["levels"]] == [2, 16]
    table = (tmp_path / "docs" / "auc_table.md").read_text()
    assert "| 2 | 8 | 64 |" in table and "| 16 | 8 | 64 |" in table
    assert json.loads((tmp_path / "docs" / "sweep_summary.json").read_text())["auc"]["runs"] == 16


def test_the_figure_has_a_row_per_temperature_and_the_target_region(sr):
    cells = [sr.summarise_cell(frontier_runs_of(key), 20) for key in keys()]
    fig = sr.figure(cells)
    assert fig.layout.xaxis.title.text == "sequential model calls per token"
    assert fig.layout.xaxis2.title.text == "sequence forwards per token"
    assert fig.layout.xaxis3.title.text == "wall-clock ms per token (CPU, 1 thread)"
    assert fig.layout.xaxis4.type == "log" and fig.layout.yaxis4.title.text.startswith("T = 1")
    assert any(t.name and t.name.startswith("target") for t in fig.data)
