"""Plotly figures from synthetic RunArrays: matrices, blanks after commit, downsampling,
labels, payload size, step markers, the AR-ness title; the violation and energy maps, the
pairwise matrices of a step (escaped token labels) and the candidates' energies."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import plotly.graph_objects as go
import pytest
from synthetic_runs import MASK_ID, synthetic_arrays, synthetic_records

from explorer.decoding.records import StepExtras
from explorer.store.arrays import RunArrays
from explorer.views import figures as plots
from explorer.views import pairwise
from explorer.views.figures import (
    block_nanmean,
    commit_order_map,
    common_zmax,
    figure_payload_bytes,
    masked_metric,
    metric_heatmap,
    tokens_per_step,
)
from explorer.views.metrics import arness

METRICS = ("confidence", "entropy", "margin")


@pytest.fixture(scope="module")
def small():
    return synthetic_arrays(24, 6, seed=1)


@pytest.fixture(scope="module")
def huge():
    return synthetic_arrays(1024, 1024, seed=2)


def _z(fig: go.Figure) -> np.ndarray:
    return np.asarray(fig.data[0].z, dtype=np.float64)


def _title(fig: go.Figure) -> str:
    return fig.layout.title.text


@pytest.mark.parametrize("metric", METRICS)
def test_heatmap_matrix_and_blank_after_commit(small, metric):
    fig = metric_heatmap(small, metric)
    z = _z(fig)
    assert z.shape == (24, 6)
    values = getattr(small, metric)
    for p in range(24):
        c = small.commit_step[p]
        # shown up to and including the step that commits it (masked before that step) ...
        np.testing.assert_array_equal(z[p, : c + 1], values[p, : c + 1])
        # ... blank afterwards
        assert np.isnan(z[p, c + 1 :]).all()
    assert list(fig.data[0].x) == list(range(6)) and list(fig.data[0].y) == list(range(24))
    assert "downsampled" not in _title(fig)


@pytest.mark.parametrize("metric", METRICS)
def test_heatmap_labels(small, metric):
    fig = metric_heatmap(small, metric)
    assert metric in _title(fig).lower()
    assert fig.layout.xaxis.title.text == "decoding step"
    assert fig.layout.yaxis.title.text == "position in generated text"
    unit = "nats" if metric == "entropy" else "probability"
    assert unit in fig.data[0].colorbar.title.text
    assert unit in fig.data[0].hovertemplate and metric in fig.data[0].hovertemplate
    assert fig.layout.height == plots.FIGURE_HEIGHT
    assert fig.layout.uirevision
    assert fig.layout.template.layout.plot_bgcolor == "white"  # plotly_white
    assert tuple(fig.layout.yaxis.range) == (23.5, -0.5)  # position 0 at the top


def test_uncommitted_positions_stay_visible():
    # a run stopped after 3 of its 5 steps: the positions it never committed show at every step
    partial = RunArrays.from_records({"gen_length": 10, "mask_id": MASK_ID}, synthetic_records(10, 5, seed=3)[:3])
    assert (partial.commit_step == -1).any()
    z = masked_metric(partial, "confidence")
    assert np.isfinite(z[partial.commit_step == -1]).all()


def test_colour_scale_is_fixed_or_shared(small):
    assert (metric_heatmap(small, "confidence").data[0].zmin, metric_heatmap(small, "confidence").data[0].zmax) == (
        0,
        1,
    )
    other = synthetic_arrays(24, 6, seed=9)
    top = common_zmax("entropy", small, other)
    assert top == pytest.approx(max(np.nanmax(masked_metric(a, "entropy")) for a in (small, other)))
    fig = metric_heatmap(small, "entropy", zmax=top, zmin=0.5)
    assert fig.data[0].zmax == pytest.approx(top) and fig.data[0].zmin == 0.5
    assert common_zmax("margin", small) == 1.0


def test_block_nanmean():
    z = np.arange(20, dtype=np.float32).reshape(4, 5)
    z[0, 0] = np.nan
    z[2:, 3:] = np.nan
    out = block_nanmean(z, 2, 2)
    assert out.shape == (2, 3)
    assert out[0, 0] == pytest.approx(np.nanmean([1, 5, 6]))
    assert out[0, 2] == pytest.approx(np.mean([4, 9]))  # partial edge block
    assert math.isnan(block_nanmean(np.full((2, 2), np.nan), 2, 2)[0, 0])
    assert out[1, 1] == pytest.approx(np.mean([12, 17]))  # (2,2),(3,2) present; (2,3),(3,3) NaN
    assert math.isnan(out[1, 2])  # (2,4),(3,4) both NaN


def test_downsampling_caps_cells_and_says_so():
    arrays = synthetic_arrays(300, 100, seed=4)
    fig = metric_heatmap(arrays, "confidence", max_positions=64, max_steps=32)
    z = _z(fig)
    assert z.shape == (math.ceil(300 / 5), math.ceil(100 / 4)) == (60, 25)
    assert z.shape[0] <= 64 and z.shape[1] <= 32
    assert "downsampled for display: each cell = 5 positions x 4 steps" in _title(fig)
    # nothing truncated: the axes still reach the last position and step
    assert fig.data[0].y[-1] + 2.5 >= 299 and fig.data[0].x[-1] + 2 >= 99
    assert tuple(fig.layout.yaxis.range) == (299.5, -0.5)
    # the block means are the means of the full-resolution cells
    full = masked_metric(arrays, "confidence")
    assert z[0, 0] == pytest.approx(np.nanmean(full[:5, :4]), rel=1e-5)
    only_steps = metric_heatmap(arrays, "margin", max_positions=300, max_steps=50)
    assert _z(only_steps).shape == (300, 50)
    assert "each cell = 1 position x 2 steps" in _title(only_steps)


def test_huge_run_payloads_under_1mb(huge):
    for metric in METRICS:
        fig = metric_heatmap(huge, metric)
        assert _z(fig).shape == (256, 256)
        assert "each cell = 4 positions x 4 steps" in _title(fig)
        assert figure_payload_bytes(fig) < 1_000_000, metric
    for fig in (commit_order_map(huge, step=500), tokens_per_step(huge, step=500), plots.changes_map(huge, step=500)):
        assert figure_payload_bytes(fig) < 1_000_000


def _vlines(fig: go.Figure) -> list[float]:
    return [s.x0 for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1]


def test_step_marker(small):
    for fig in (
        metric_heatmap(small, "confidence", step=3),
        commit_order_map(small, step=3),
        tokens_per_step(small, step=3),
        plots.changes_map(small, step=3),
    ):
        assert _vlines(fig) == [3]
        assert any("step 3" in a.text for a in fig.layout.annotations)
    for fig in (metric_heatmap(small, "confidence"), commit_order_map(small), tokens_per_step(small)):
        assert _vlines(fig) == []


def test_commit_order_map(small):
    fig = commit_order_map(small)
    tau = arness(small.commit_step)
    assert f"{tau:+.2f}" in _title(fig)
    assert "Kendall tau between commit order and position" in _title(fig)
    scatter = fig.data[0]
    np.testing.assert_array_equal(np.asarray(scatter.y), np.arange(24))
    np.testing.assert_array_equal(np.asarray(scatter.x), small.commit_step)
    np.testing.assert_array_equal(np.asarray(scatter.marker.color), small.commit_step)
    assert "committed at step" in scatter.hovertemplate and "probability" in scatter.hovertemplate
    assert fig.layout.xaxis.title.text == "decoding step"
    assert fig.layout.yaxis.title.text == "position in generated text"
    assert tuple(fig.layout.yaxis.range) == (23.5, -0.5)
    assert fig.layout.height == plots.FIGURE_HEIGHT and fig.layout.uirevision


def test_commit_order_map_left_to_right_and_undefined():
    ltr = synthetic_arrays(16, 16, order=np.arange(16))
    assert "τ = +1.00" in _title(commit_order_map(ltr))
    single = synthetic_arrays(4, 1)
    assert "τ = n/a" in _title(commit_order_map(single))


def test_tokens_per_step(small):
    fig = tokens_per_step(small, step=2)
    bars = fig.data[0]
    np.testing.assert_array_equal(np.asarray(bars.y), small.n_committed)
    np.testing.assert_array_equal(np.asarray(bars.x), np.arange(6))
    assert list(bars.marker.color).count(plots.MARKER_COLOUR) == 1 and bars.marker.color[2] == plots.MARKER_COLOUR
    assert "tokens committed" in bars.hovertemplate
    assert fig.layout.xaxis.title.text == "decoding step" and fig.layout.yaxis.title.text == "tokens committed"
    assert "Tokens committed per step" in _title(fig)


def test_live_run_figures(small):
    """A run still streaming (no id, few steps) and one with no steps yet both render."""
    live = synthetic_arrays(24, 6, seed=1, run_id=None)
    assert "live" in metric_heatmap(live, "confidence").layout.uirevision
    assert metric_heatmap(small, "confidence").layout.uirevision != metric_heatmap(small, "entropy").layout.uirevision
    empty = type(live).from_records({"gen_length": 8, "mask_id": 1}, [])
    for fig in (
        metric_heatmap(empty, "entropy"),
        commit_order_map(empty),
        tokens_per_step(empty),
        plots.changes_map(empty),
    ):
        fig.to_json()


def test_changes_map_of_a_run_without_revisions(small):
    """Every position unmasked once, at its commit step; the legend still names revise and re-mask (0)."""
    fig = plots.changes_map(small)
    z = np.asarray(fig.data[0].z, dtype=np.float64)
    for position, step in enumerate(small.commit_step.tolist()):
        assert z[position, step] == 1 and np.isnan(np.delete(z[position], step)).all()
    assert [t.name for t in fig.data[1:]] == ["unmask (24)", "revise (0)", "re-mask (0)"]
    assert "What changed where" in _title(fig) and "blank = nothing changed" in _title(fig)
    assert (
        fig.layout.xaxis.title.text == "decoding step" and fig.layout.yaxis.title.text == "position in generated text"
    )
    hover = np.asarray(fig.data[0].customdata, dtype=object)
    p = 5
    assert hover[p, small.commit_step[p]].startswith(f"unmasked → '#{int(small.tokens[p, -1])}' (p ")


def test_unknown_metric(small):
    with pytest.raises(ValueError, match="confidence"):
        metric_heatmap(small, "energy")


# ---- dependency violations and energies ----------------------------------------------------------

EVIL_TOKEN = "<b>x</b>"


def _step_extras(record, rng: np.random.Generator, k: int = 3) -> StepExtras:
    """Violations (n >= 2) and energy extras as the engine records them (read from their JSON)."""
    n, off = record.n_committed, ~np.eye(record.n_committed, dtype=bool)
    D = np.where(off, rng.normal(0, 2, (n, n)), 0.0)
    S, A = (D + D.T) / 2, D - D.T
    flip = off & (rng.random((n, n)) < 0.4)
    out = {}
    if n >= 2:
        out["violations"] = {
            "positions": record.committed.tolist(),
            "tokens": record.tokens.tolist(),
            "D": D.tolist(),
            "S": S.tolist(),
            "A": A.tolist(),
            "flip": flip.astype(int).tolist(),
            "scores": np.where(off, S, np.inf).min(1).tolist(),
            "total": float(np.minimum(S[np.triu_indices(n, 1)], 0).sum()),
            "n_committed": n,
            "capped": False,
            "seconds": 0.01,
            "forward_seconds": 0.02,
        }
    total = rng.normal(0, 1, k)
    keep = np.exp(-total) / np.exp(-total).sum()
    out["energy"] = {
        "chosen": int(rng.integers(k)),
        "terms": {"uni": total.tolist()},
        "total": total.tolist(),
        "keep_probs": keep.tolist(),
        "per_position": rng.normal(0, 1, n).tolist(),
        "positions": record.committed.tolist(),
        "passes": {"denoiser": 3, "ar": 0},
    }
    return StepExtras.from_json(StepExtras.from_json(out).to_json())  # rounded as the engine keeps them


def analysed(G: int = 12, S: int = 4, seed: int = 0, config: dict | None = None) -> RunArrays:
    rng = np.random.default_rng(seed)
    records = [replace(r, extras=_step_extras(r, rng)) for r in synthetic_records(G, S, seed=seed)]
    config = {"energies": [["uni", 1.0]], "energy_orders": 1, "violations": True, **(config or {})}
    return RunArrays.from_records({"gen_length": G, "mask_id": MASK_ID, "id": 7, "config": config}, records)


def plain_run(violations: bool = False) -> RunArrays:
    config = {"energies": [], "violations": violations, "energy_window": [0.4, 1.0]}
    return RunArrays.from_records(
        {"gen_length": 8, "mask_id": MASK_ID, "id": 8, "config": config}, synthetic_records(8, 4)
    )


def evil_text(arrays: RunArrays):
    """Token text with one of step 1's committed tokens spelled as markup."""
    target = arrays.extras[1].to_json()["violations"]["tokens"][0]
    return lambda t: EVIL_TOKEN if t == target else f"w{t}"


def test_violation_heatmap():
    arrays = analysed()
    fig = plots.violation_heatmap(arrays, step=2)
    np.testing.assert_array_equal(_z(fig), arrays.violation)  # NaN where no token was committed
    heat = fig.data[0]
    assert heat.zmid == 0 and heat.zmin == -heat.zmax and heat.zmax >= 1.0  # diverging, 0 white, at least +-1 nat
    assert heat.colorscale[len(heat.colorscale) // 2][1] == "#ffffff"
    assert heat.colorscale[0][1] != heat.colorscale[-1][1]
    assert "nats" in heat.colorbar.title.text and "nats" in heat.hovertemplate
    title = _title(fig)
    assert "Dependency violations" in title and "most negative S_ij in nats" in title
    assert "red (negative) = contradicts" in title
    assert fig.layout.xaxis.title.text == "decoding step"
    assert fig.layout.yaxis.title.text == "position in generated text"
    assert _vlines(fig) == [2] and fig.layout.plot_bgcolor == plots.BLANK_COLOUR  # grey, so white = 0
    # off for the run: an empty state that says so and how to turn it on
    off = plots.violation_heatmap(plain_run(violations=False))
    assert len(off.data) == 0 and "off for this run" in off.layout.annotations[0].text


def test_energy_heatmap_and_the_non_decomposable_note():
    arrays = analysed()
    fig = plots.energy_heatmap(arrays)
    np.testing.assert_array_equal(_z(fig), arrays.energy)
    assert "kept candidate" in _title(fig) and "at the positions it committed" in _title(fig)
    assert "nats" in fig.data[0].colorbar.title.text and fig.data[0].zmid == 0
    assert "not shown per position" not in _title(fig)
    inv = plots.energy_heatmap(analysed(config={"energies": [["inv", 1.0]]}))
    assert "not shown per position: inv (see the candidates figure)" in _title(inv)
    multi = plots.energy_heatmap(analysed(config={"energies": [["uni", 1.0]], "energy_orders": 4}))
    assert "not shown per position: the order part of uni (4 orders)" in _title(multi)
    ar = plots.energy_heatmap(analysed(config={"energies": [["ar", 1.0]]}))
    assert "not shown per position: ar at the positions not committed that step" in _title(ar)
    off = plots.energy_heatmap(plain_run())
    assert "Energies were off for this run" in off.layout.annotations[0].text
    outside = {**plain_run().run, "config": {"energies": [["uni", 1.0]], "energy_window": [0.0, 0.1]}}
    never = plots.energy_heatmap(RunArrays.from_records(outside, synthetic_records(8, 4)))
    assert "window [0, 0.1]" in never.layout.annotations[0].text


def test_violation_heatmap_downsamples_and_says_so():
    arrays = analysed(G=300, S=60, seed=3)
    fig = plots.violation_heatmap(arrays, max_positions=64, max_steps=32)
    assert _z(fig).shape == (60, 30)
    assert "downsampled for display: each cell = 5 positions x 2 steps" in _title(fig)
    assert tuple(fig.layout.yaxis.range) == (299.5, -0.5)  # nothing cut off


@pytest.mark.parametrize("which", ["S", "A"])
def test_pairwise_matrix(which):
    arrays = analysed()
    data = arrays.extras[1].to_json()["violations"]
    fig = pairwise.pairwise_matrix(arrays, 1, which, evil_text(arrays))
    z = _z(fig)
    n = len(data["positions"])
    expected = np.array(data[which], dtype=np.float64)
    np.fill_diagonal(expected, np.nan)
    np.testing.assert_allclose(z, expected)
    assert _title(fig).startswith(f"Step 1 · {which}:") and "nats" in _title(fig)
    assert "nats" in fig.data[0].colorbar.title.text and fig.data[0].zmid == 0
    # the committed tokens, with their positions, label both axes, escaped for Plotly
    labels = list(fig.layout.xaxis.ticktext)
    assert labels == list(fig.layout.yaxis.ticktext) and len(labels) == n
    assert labels[0] == f"{data['positions'][0]} &lt;b&gt;x&lt;/b&gt;"
    assert labels[1] == f"{data['positions'][1]} w{data['tokens'][1]}"
    assert EVIL_TOKEN not in fig.to_json().replace("\\u003c", "<").replace("\\u003e", ">")
    # flips: one ✕ marker per flipped cell
    flips = fig.data[1]
    cells = {(int(y), int(x)) for x, y in zip(flips.x, flips.y)}
    assert cells == {(i, j) for i in range(n) for j in range(n) if data["flip"][i][j]}
    assert fig.layout.xaxis.title.text == "token j" and fig.layout.yaxis.title.text == "token i (revealed)"


def test_pairwise_matrix_picks_a_step_and_explains_empty_states():
    arrays = analysed()
    totals = [e.to_json().get("violations", {}).get("total", np.inf) for e in arrays.extras]
    worst = int(np.argmin(totals))
    assert pairwise.focus_step(arrays) == worst
    auto = pairwise.pairwise_matrix(arrays, None, "S", lambda t: f"w{t}")
    assert _title(auto).startswith(f"Step {worst} ·") and "the run's most negative step" in _title(auto)
    mixed = analysed(G=7, S=5)  # 2, 2, 1, 1, 1 tokens per step
    empty = pairwise.pairwise_matrix(mixed, 2, "S", lambda t: f"w{t}")
    assert len(empty.data) == 0 and "Step 2 committed 1 token" in empty.layout.annotations[0].text
    assert empty.layout.height == plots.FIGURE_HEIGHT  # the same height as a drawn figure (see empty_figure)
    single = analysed(G=5, S=5)  # one token per step: no pair anywhere
    for fig in (pairwise.pairwise_matrix(single, 2, "S", lambda t: f"w{t}"), plots.violation_heatmap(single)):
        assert "Every step so far committed a single token" in fig.layout.annotations[0].text
    off = pairwise.pairwise_matrix(plain_run(violations=False), 1, "A", lambda t: f"w{t}")
    assert "off for this run" in off.layout.annotations[0].text


def test_candidate_energies():
    arrays = analysed()
    data = arrays.extras[2].to_json()["energy"]
    fig = pairwise.candidate_energies(arrays, 2)
    kept = data["chosen"]
    bars = {trace.name: trace for trace in fig.data}
    assert list(bars["kept"].x) == [kept + 1] and bars["kept"].marker.color == plots.MARKER_COLOUR
    assert bars["kept"].y[0] == pytest.approx(data["total"][kept])
    others = [j for j in range(3) if j != kept]
    assert list(bars["not kept"].x) == [j + 1 for j in others]
    assert list(bars["kept"].text) == [f"p={data['keep_probs'][kept]:.2f}"]
    assert "uni" in bars["kept"].customdata[0][0] and "kept with probability" in bars["kept"].hovertemplate
    assert _title(fig).startswith("Step 2: energy of each candidate (nats)") and "softmax(−E/τ)" in _title(fig)
    assert fig.layout.yaxis.title.text == "energy E (nats)" and "kept" in fig.layout.xaxis.title.text
    off = pairwise.candidate_energies(plain_run(), 1)
    assert "Energies were off" in off.layout.annotations[0].text


def test_plotly_text_escapes_markup_but_not_quotes():
    assert plots.plotly_text("<b>x</b> & 'y' \"z\"") == "&lt;b&gt;x&lt;/b&gt; &amp; 'y' \"z\""
