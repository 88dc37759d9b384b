"""Plotly figures from synthetic RunArrays: matrices, blanks after commit, downsampling,
labels, payload size, step markers, the AR-ness title."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest

from explorer import plots
from explorer.metrics import arness
from explorer.plots import (block_nanmean, commit_order_map, common_zmax, figure_payload_bytes,
                            masked_metric, metric_heatmap, tokens_per_step)
from synthetic_runs import synthetic_arrays

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
        np.testing.assert_array_equal(z[p, :c + 1], values[p, :c + 1])
        # ... blank afterwards
        assert np.isnan(z[p, c + 1:]).all()
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
    arrays = synthetic_arrays(10, 5, seed=3)
    partial = type(arrays)(**{**arrays.__dict__, "commit_step": np.where(arrays.commit_step > 2, -1,
                                                                         arrays.commit_step).astype(np.int32)})
    z = masked_metric(partial, "confidence")
    assert np.isfinite(z[partial.commit_step == -1]).all()


def test_colour_scale_is_fixed_or_shared(small):
    assert (metric_heatmap(small, "confidence").data[0].zmin, metric_heatmap(small, "confidence").data[0].zmax) == (0, 1)
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
    for fig in (commit_order_map(huge, step=500), tokens_per_step(huge, step=500)):
        assert figure_payload_bytes(fig) < 1_000_000


def _vlines(fig: go.Figure) -> list[float]:
    return [s.x0 for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1]


def test_step_marker(small):
    for fig in (metric_heatmap(small, "confidence", step=3), commit_order_map(small, step=3),
                tokens_per_step(small, step=3)):
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
    for fig in (metric_heatmap(empty, "entropy"), commit_order_map(empty), tokens_per_step(empty)):
        fig.to_json()


def test_unknown_metric(small):
    with pytest.raises(ValueError, match="confidence"):
        metric_heatmap(small, "energy")
