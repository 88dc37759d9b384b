"""RunArrays built in memory (from_records) against the store's read_arrays of the same run,
and the per-position commit fields (probability and top-3 alternatives at commit)."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_runs import MASK_ID, synthetic_records

from explorer.api import decode
from explorer.store import database as store_module
from explorer.store.arrays import RunArrays
from explorer.store.database import TrajectoryStore

PROMPT = "once upon a time"


@pytest.fixture(scope="module")
def stored(denoiser, tmp_path_factory):
    path = tmp_path_factory.mktemp("traj") / "t.db"
    store = TrajectoryStore(f"sqlite:///{path}")
    out = decode(PROMPT, denoiser, store=store, gen_length=32, steps=8, block_length=16, temperature=1.0, seed=3)
    yield store, out
    store.engine.dispose()


def test_store_module_still_exports_run_arrays():
    assert store_module.RunArrays is RunArrays


def test_from_records_equals_read_arrays(stored):
    store, out = stored
    stored_arrays = store.read_arrays(out.run_id)
    live = RunArrays.from_records({"gen_length": 32, "mask_id": out.mask_id}, out.steps)
    for name in ("steps", "blocks", "n_committed", "argmax", "commit_step", "tokens", "commit_top_ids"):
        a, b = getattr(live, name), getattr(stored_arrays, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    for name in ("confidence", "entropy", "margin"):  # the store keeps float16
        a, b = getattr(live, name), getattr(stored_arrays, name)
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a.astype(np.float16).astype(np.float32), b, err_msg=name)
    np.testing.assert_allclose(live.commit_prob, stored_arrays.commit_prob, rtol=1e-6)
    np.testing.assert_allclose(live.commit_top_probs, stored_arrays.commit_top_probs, atol=1e-5)  # 5 decimals


def test_commit_fields_match_the_records(stored):
    store, out = stored
    arrays = store.read_arrays(out.run_id)
    assert arrays.commit_prob.shape == (32,) and arrays.commit_prob.dtype == np.float32
    assert arrays.commit_top_ids.shape == (32, 3) and arrays.commit_top_ids.dtype == np.int32
    assert arrays.commit_top_probs.shape == (32, 3) and arrays.commit_top_probs.dtype == np.float32
    for r in out.steps:
        np.testing.assert_allclose(arrays.commit_prob[r.committed], r.probs, rtol=1e-6)
        np.testing.assert_array_equal(arrays.commit_top_ids[r.committed], r.top_ids[:, :3])
        np.testing.assert_allclose(arrays.commit_top_probs[r.committed], r.top_probs[:, :3], atol=1e-5)


def test_partial_run_has_nan_and_minus_one_where_uncommitted():
    records = synthetic_records(12, 4)[:2]
    arrays = RunArrays.from_records({"gen_length": 12, "mask_id": MASK_ID}, records)
    done = np.concatenate([r.committed for r in records])
    undone = np.setdiff1d(np.arange(12), done)
    assert arrays.confidence.shape == (12, 2) and arrays.n_steps == 2
    assert (arrays.commit_step[undone] == -1).all() and np.isnan(arrays.commit_prob[undone]).all()
    assert (arrays.commit_top_ids[undone] == -1).all() and np.isnan(arrays.commit_top_probs[undone]).all()
    assert np.isfinite(arrays.commit_prob[done]).all()
    assert (arrays.tokens[undone] == MASK_ID).all()


def test_from_records_without_records():
    arrays = RunArrays.from_records({"gen_length": 5, "mask_id": MASK_ID}, [])
    assert arrays.confidence.shape == (5, 0) and arrays.tokens.shape == (5, 0)
    assert (arrays.commit_step == -1).all() and arrays.commit_top_ids.shape == (5, 3)


def test_fewer_alternatives_are_padded():
    (record,) = synthetic_records(4, 1)
    narrow = type(record)(**{**record.__dict__, "top_ids": record.top_ids[:, :1], "top_probs": record.top_probs[:, :1]})
    arrays = RunArrays.from_records({"gen_length": 4, "mask_id": MASK_ID}, [narrow])
    assert (arrays.commit_top_ids[:, 1:] == -1).all() and np.isnan(arrays.commit_top_probs[:, 1:]).all()
    np.testing.assert_array_equal(arrays.commit_top_ids[:, 0], record.top_ids[:, 0])


@pytest.mark.parametrize("strategy", ["rcr", "remdm_conf"])
def test_remasks_replay_the_same_from_store_and_records(denoiser, tmp_path, strategy):
    """Re-masked positions show a mask again after their re-mask step, from both sources; the
    store keeps remask events with the token taken away and commit events with violation scores."""
    store = TrajectoryStore(f"sqlite:///{tmp_path}/r.db")
    out = decode(
        PROMPT,
        denoiser,
        store=store,
        gen_length=32,
        steps=8,
        strategy=strategy,
        temperature=1.0,
        seed=5,
        violations=True,
    )
    remasks = [(r.step, p, t) for r in out.steps for p, t in zip(r.remasked.tolist(), r.remasked_tokens.tolist())]
    assert remasks, "this seed re-masks nothing: pick another"
    stored_arrays = store.read_arrays(out.run_id)
    live = RunArrays.from_records({"gen_length": 32, "mask_id": out.mask_id}, out.steps)
    for arrays in (stored_arrays, live):
        np.testing.assert_array_equal(arrays.tokens[:, -1], out.token_ids)
        for step, position, token in remasks:
            assert arrays.tokens[position, step] == out.mask_id  # masked again after that step
            assert step == 0 or arrays.tokens[position, step - 1] == token  # it held that token before
        assert arrays.remask_count.sum() == len(remasks)
    np.testing.assert_array_equal(stored_arrays.tokens, live.tokens)
    np.testing.assert_array_equal(stored_arrays.violation, live.violation)
    scored = [r for r in out.steps if "violations" in r.extras.to_json()]
    assert scored and all(
        np.isfinite(live.violation[r.extras.to_json()["violations"]["positions"], r.step]).all() for r in scored
    )
    store.engine.dispose()


def test_malformed_step_extras_are_left_out_not_fatal():
    """An imported bundle may carry any JSON in a step's extras: positions out of range, lengths
    that differ or non-numbers leave those cells NaN instead of breaking the view."""
    from explorer.store.arrays import Commits, assemble

    G, S = 4, 3
    zeros = np.zeros((G, S), np.float32)
    from explorer.decoding.records import StepExtras

    def violations(positions, scores):
        n = len(positions)
        zeros = [[0.0] * n for _ in range(n)]
        return {
            "positions": positions,
            "tokens": [5] * n,
            "S": zeros,
            "A": zeros,
            "D": zeros,
            "flip": [[0] * n for _ in range(n)],
            "scores": scores,
            "total": 0.0,
            "n_committed": n,
            "capped": False,
            "seconds": 0.0,
        }

    stored = [
        {"violations": violations([0, 9], [-1.0, -2.0])},  # well formed, but 9 is out of range
        {"violations": {"positions": [1], "scores": [-1.0, -2.0]}, "energy": "nonsense"},
        {"violations": violations([2, 3], [-0.5, -4.0]), "energy": {"positions": ["a"], "per_position": [1.0]}},
    ]
    extras = [StepExtras.lenient(e) for e in stored]  # what the store does with a row it reads
    arrays = assemble(
        {"gen_length": G, "mask_id": 1},
        steps=np.arange(S),
        blocks=np.zeros(S, np.int64),
        n_committed=np.zeros(S, np.int64),
        argmax=zeros.astype(np.int32),
        confidence=zeros,
        entropy=zeros,
        margin=zeros,
        commits=Commits.empty(),
        extras=extras,
    )
    assert np.isnan(arrays.violation[:, :2]).all() and np.isnan(arrays.energy).all()
    np.testing.assert_array_equal(arrays.violation[2:, 2], [-0.5, -4.0])
