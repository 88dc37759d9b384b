"""Revisions (XDLM: a visible token changed into another) in the store, arrays, bundles and branches.

Real decodes (gen 32, steps 8, temperature 1, xdlm-k 0.1) of `xdlm_ancestral` and `xdlm_revise`
on the built-in models "embedded-xdlm" and "embedded", each with a seed that is checked to
revise at least once, stored on SQLite and on PostgreSQL (conftest.py's `db_url`):

- revisions are stored as `revise` events, and the store's RunArrays equal those built from the
  in-memory StepRecords; the sequence after each step and each position's last change are
  also checked against a replay of the records written here;
- version 1 and version 2 (a tree with a branch) bundles round-trip them exactly;
- a branch with no edit reproduces its parent (revisions included) from the prompt, mid-run and
  before the last step; for xdlm_revise also from a mid-block step whose block has revised,
  where resuming the revision budget from zero would decode something else, and from runs whose
  steps lack their schedule marks (the block's revisions are then counted from the events);
- a branch with forced tokens on an XDLM run completes and stores its edits;
- a bundle with a malformed revise event is refused with one clear line, and nothing is stored.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import select
from test_bundle import _assert_refused, assert_identical, counts

from explorer.adapters.loading import load_denoiser
from explorer.api import Decoded, branch, decode
from explorer.branching.edits import Force
from explorer.branching.plan import FORCED_CONFIDENCE, BranchRequest, plan_branch, state_after
from explorer.decoding.callbacks import CollectSteps
from explorer.decoding.engine import run_decode
from explorer.decoding.protocols import Denoiser
from explorer.decoding.records import StepRecord
from explorer.store.arrays import Commits, RunArrays, assemble
from explorer.store.bundle import (
    export_run,
    export_run_json,
    export_tree,
    export_tree_json,
    import_bundle,
    import_run,
)
from explorer.store.database import Event, Step, TrajectoryStore

PROMPT = "once upon a time"
G, S = 32, 8
MODELS = ("embedded-xdlm", "embedded")
STRATEGIES = ("xdlm_ancestral", "xdlm_revise")
BASE = {"gen_length": G, "steps": S, "temperature": 1.0, "xdlm_k": 0.1, "violations": False}
SEEDS = range(20)  # where to look for a run that revises


@functools.cache
def model(name: str) -> Denoiser:
    return load_denoiser(name)


@functools.cache
def revising_seed(name: str, strategy: str, block_length: int | None = None) -> int:
    """The first seed whose decode revises at least once (decoded without a store)."""
    for seed in SEEDS:
        out = decode(PROMPT, model(name), strategy=strategy, seed=seed, block_length=block_length, **BASE)
        if any(r.n_revised for r in out.steps):
            return seed
    pytest.fail(f"{strategy} on {name}: no seed in {SEEDS} revises a token")


def revising_decode(store: TrajectoryStore, name: str, strategy: str, **settings) -> Decoded:
    """A stored decode that revises at least once."""
    seed = revising_seed(name, strategy, settings.get("block_length"))
    out = decode(PROMPT, model(name), store=store, strategy=strategy, seed=seed, **{**BASE, **settings})
    assert out.result.status == "completed" and sum(r.n_revised for r in out.steps) > 0
    return out


@pytest.fixture
def store(db_url):
    """An empty store on each backend in turn (SQLite; PostgreSQL where it is available)."""
    store = TrajectoryStore(db_url)
    yield store
    store.engine.dispose()


@pytest.fixture
def sqlite_store(tmp_path):
    store = TrajectoryStore(f"sqlite:///{tmp_path}/source.db")
    yield store
    store.engine.dispose()


both = pytest.mark.parametrize("name", MODELS)
each_strategy = pytest.mark.parametrize("strategy", STRATEGIES)


# ---- helpers -------------------------------------------------------------------------------------


def replayed(records: list[StepRecord], mask_id: int, start: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """From the records alone: (G, S) the sequence after each step and (G,) the step that last
    changed each position (-1: masked at the end), starting from `start` (default all masks)."""
    current = np.full(G, mask_id, np.int64) if start is None else start.astype(np.int64).copy()
    last = np.full(G, -1, np.int64)
    columns = []
    for r in records:
        assert (current[r.committed] == r.previous).all(), f"step {r.step}: previous tokens"
        np.testing.assert_array_equal(r.revised, r.previous != mask_id, err_msg=f"step {r.step}")
        current[r.committed], last[r.committed] = r.tokens, r.step
        current[r.remasked], last[r.remasked] = mask_id, -1
        columns.append(current.copy())
    return np.stack(columns, axis=1), last


def stored_events(store: TrajectoryStore, run_id: int, kinds: tuple[str, ...]) -> list[tuple]:
    """(step, position, kind, token_id, prob) of the run's events of these kinds, in insertion order."""
    query = (
        select(Event.step, Event.position, Event.kind, Event.token_id, Event.prob)
        .where(Event.run_id == run_id, Event.kind.in_(kinds))
        .order_by(Event.id)
    )
    with store.session() as s:
        return [tuple(row) for row in s.execute(query)]


def assert_same_revisions(parent_steps: list[StepRecord], child_steps: list[StepRecord]) -> None:
    """Step for step: the positions changed, the tokens written and replaced, the re-masks."""
    assert [r.step for r in child_steps] == [r.step for r in parent_steps]
    for a, b in zip(parent_steps, child_steps):
        for name in ("committed", "tokens", "revised", "previous", "remasked", "remasked_tokens"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"step {a.step}: {name}")
        assert a.extras.schedule == b.extras.schedule, f"step {a.step}"


def assert_same_commits(a: RunArrays, b: RunArrays, top_atol: float = 0.0) -> None:
    """Every commit and revision alike; the alternatives' probabilities to within `top_atol`
    (the store keeps them to 5 decimals)."""
    for name in ("step", "position", "token", "prob", "top_ids", "revised"):
        np.testing.assert_array_equal(getattr(a.commits, name), getattr(b.commits, name), err_msg=f"commits.{name}")
    np.testing.assert_allclose(a.commits.top_probs, b.commits.top_probs, rtol=0, atol=top_atol)


# ---- (a) the store writes revisions, read_arrays replays them ------------------------------------


@both
@each_strategy
def test_revisions_are_stored_as_revise_events(store, name, strategy):
    out = revising_decode(store, name, strategy)
    expected = [
        (r.step, p, "revise", t, pytest.approx(q))
        for r in out.steps
        for p, t, q, revised in zip(r.committed.tolist(), r.tokens.tolist(), r.probs.tolist(), r.revised.tolist())
        if revised
    ]
    assert stored_events(store, out.run_id, ("revise",)) == expected
    commits = stored_events(store, out.run_id, ("commit", "revise"))
    assert [sum(e[0] == r.step for e in commits) for r in out.steps] == [r.n_committed for r in out.steps]
    summaries = store.step_summaries(out.run_id)
    assert [s["revised"] for s in summaries] == [r.revised.tolist() for r in out.steps]


@both
@each_strategy
def test_store_arrays_equal_the_records(store, name, strategy):
    out = revising_decode(store, name, strategy)
    stored = store.read_arrays(out.run_id)
    live = RunArrays.from_records(store.get_run(out.run_id), out.steps)
    assert stored.commits.n_revised == sum(r.n_revised for r in out.steps) > 0
    assert_same_commits(stored, live, top_atol=5e-6)
    for name_ in ("tokens", "commit_step", "commit_prob", "commit_top_ids", "forced"):
        np.testing.assert_array_equal(getattr(stored, name_), getattr(live, name_), err_msg=name_)
    np.testing.assert_allclose(stored.commit_top_probs, live.commit_top_probs, rtol=0, atol=5e-6)
    for name_ in ("steps", "blocks", "n_committed", "argmax", "remask_count"):
        np.testing.assert_array_equal(getattr(stored, name_), getattr(live, name_), err_msg=name_)
    np.testing.assert_array_equal(stored.confidence, live.confidence.astype(np.float16).astype(np.float32))
    assert stored.extras == live.extras  # the schedule marks, with the block's revisions
    # Independently of assemble: the sequence after each step, and commit_step = the last change.
    tokens, last = replayed(out.steps, out.mask_id)
    np.testing.assert_array_equal(stored.tokens, tokens)
    np.testing.assert_array_equal(stored.commit_step, last)
    np.testing.assert_array_equal(stored.tokens[:, -1], out.token_ids)


@both
@each_strategy
def test_the_state_after_a_revision_holds_its_token_and_confidence(store, name, strategy):
    """A branch starts from state_after(k): a revised position holds the new token, with p of
    that token (as stored, float16 precision: the engine's own commit confidence) as its
    confidence; the step before, it held the token the revision replaced."""
    out = revising_decode(store, name, strategy)
    arrays = store.read_arrays(out.run_id)
    for r in out.steps:
        tokens, conf = state_after(arrays, r.step)
        before, _ = state_after(arrays, r.step - 1)
        np.testing.assert_array_equal(tokens, arrays.tokens[:, r.step])
        for p, t, q, old in zip(r.committed[r.revised], r.tokens[r.revised], r.probs[r.revised], r.previous[r.revised]):
            assert (tokens[p], before[p]) == (t, old), f"step {r.step}, position {p}"
            assert conf[p] == np.float32(np.float16(q)) == q, f"step {r.step}, position {p}"


def test_commits_without_flags_still_replay_revisions(store):
    """Commits joined without their `revised` flags (a caller that drops them) still replay a
    position changed twice: the replay looks for repeated positions, not only the flags."""
    out = revising_decode(store, "embedded-xdlm", "xdlm_revise")
    arrays = store.read_arrays(out.run_id)
    c = arrays.commits
    unflagged = Commits(c.step, c.position, c.token, c.prob, c.top_ids, c.top_probs)
    assert not unflagged.revised.any()
    redone = assemble(
        arrays.run,
        steps=arrays.steps,
        blocks=arrays.blocks,
        n_committed=arrays.n_committed,
        argmax=arrays.argmax,
        confidence=arrays.confidence,
        entropy=arrays.entropy,
        margin=arrays.margin,
        commits=unflagged,
        extras=arrays.extras,
        remasks=arrays.remasks,
    )
    np.testing.assert_array_equal(redone.tokens, arrays.tokens)
    np.testing.assert_array_equal(redone.commit_step, arrays.commit_step)


# ---- (b) bundles -----------------------------------------------------------------------------------


def _tree(source: TrajectoryStore, name: str, strategy: str) -> tuple[Decoded, Decoded, int]:
    """A revising parent and a branch of it after a middle step k with a forced token."""
    parent = revising_decode(source, name, strategy)
    k = len(parent.steps) // 2 - 1
    child = branch(parent.run_id, k, source, edits=[Force(int(parent.steps[0].committed[0]), "girl")])
    return parent, child, k


@both
@each_strategy
def test_a_single_run_bundle_round_trips_revisions(sqlite_store, store, name, strategy):
    parent, child, _ = _tree(sqlite_store, name, strategy)
    new_parent = import_run(store, export_run_json(sqlite_store, parent.run_id))
    assert_identical(sqlite_store, parent.run_id, store, new_parent)
    assert store.read_arrays(new_parent).commits.n_revised > 0
    assert export_run_json(store, new_parent) == export_run_json(sqlite_store, parent.run_id)
    # The branch on its own: linked to the parent already imported (parent_ref), arrays identical.
    report = import_bundle(store, export_run(sqlite_store, child.run_id))
    assert store.get_run(report.run_ids[0])["parent_run_id"] == new_parent
    assert_identical(sqlite_store, child.run_id, store, report.run_ids[0])


@both
@each_strategy
def test_a_tree_bundle_round_trips_revisions(sqlite_store, store, name, strategy):
    parent, child, k = _tree(sqlite_store, name, strategy)
    report = import_bundle(store, export_tree_json(sqlite_store, child.run_id))
    new_parent, new_child = report.run_ids
    assert report.notes == []
    assert_identical(sqlite_store, parent.run_id, store, new_parent)
    assert_identical(sqlite_store, child.run_id, store, new_child)
    run = store.get_run(new_child)
    assert (run["parent_run_id"], run["branch_step"]) == (new_parent, k)
    again = export_tree(store, new_parent)
    original = export_tree(sqlite_store, parent.run_id)
    for entry in (*again["runs"], *original["runs"]):  # ids are local to a store
        entry["id"], entry["run"]["parent_run_id"] = None, None
    assert again == original


# ---- (c) no-op branches reproduce revisions ------------------------------------------------------


def assert_branches_replay(store: TrajectoryStore, out: Decoded, ks) -> None:
    parent = store.read_arrays(out.run_id)
    for k in ks:
        child = branch(out.run_id, k, store)
        assert_same_revisions(out.steps[k + 1 :], child.steps)
        assert child.token_ids == out.token_ids, f"branch at step {k}"
        mine = store.read_arrays(child.run_id)
        np.testing.assert_array_equal(mine.tokens, parent.tokens, err_msg=f"branch at step {k}")
        np.testing.assert_array_equal(mine.commit_step, parent.commit_step, err_msg=f"branch at step {k}")
        assert_same_commits(mine, parent)


@both
@each_strategy
def test_no_op_branches_reproduce_revisions(store, name, strategy):
    out = revising_decode(store, name, strategy)
    n = len(out.steps)
    first = min(r.step for r in out.steps if r.n_revised)  # from there on the state holds a revision
    ks = sorted({-1, n // 2 - 1, n - 2} | ({first} if first < n - 1 else set()))
    assert_branches_replay(store, out, ks)


def _resumed_without_budget(store: TrajectoryStore, denoiser: Denoiser, run_id: int, k: int) -> list[int]:
    """The tokens a no-op branch after step k would end with, had it forgotten the block's revisions."""
    plan = plan_branch(store, denoiser, BranchRequest(run_id, k))
    resume = replace(plan.resume, block_revisions=0)
    steps = [CollectSteps()]
    return run_decode(denoiser, plan.prompt_ids, plan.config, steps, prompt_text=plan.prompt, resume=resume).token_ids


def _budget_case(store: TrajectoryStore, name: str) -> tuple[Decoded, int]:
    """A two-block xdlm_revise run and a step k inside a block that has revised, after which the
    block's carried-over budget decides what happens (forgetting it decodes other tokens)."""
    for seed in SEEDS:
        out = decode(PROMPT, model(name), store=store, strategy="xdlm_revise", block_length=16, seed=seed, **BASE)
        for r, after in zip(out.steps, out.steps[1:]):
            mark = r.extras.schedule
            if mark.revisions and after.block == r.block:
                if _resumed_without_budget(store, model(name), out.run_id, r.step) != out.token_ids:
                    return out, r.step
    pytest.fail(f"no seed in {SEEDS} makes xdlm_revise's revision budget matter mid-block")


@both
def test_the_revision_budget_resumes_mid_block(store, name):
    out, k = _budget_case(store, name)
    mark = out.steps[k].extras.schedule
    plan = plan_branch(store, model(name), BranchRequest(out.run_id, k))
    assert (plan.resume.block, plan.resume.step_in_block) == (out.steps[k].block, mark.step_in_block + 1)
    assert plan.resume.block_revisions == mark.revisions > 0
    assert_branches_replay(store, out, [k])


@both
@each_strategy
def test_runs_without_schedule_marks_count_revisions_from_events(store, name, strategy):
    """Steps stored without their schedule mark (older runs): the block's revisions so far are
    counted from its revise events, so branches from every step still replay."""
    out = revising_decode(store, name, strategy, block_length=16)
    marks = [r.extras.schedule for r in out.steps]
    with store.session() as s, s.begin():
        for row in s.scalars(select(Step).where(Step.run_id == out.run_id)):
            row.extras = {k: v for k, v in (row.extras or {}).items() if k != "schedule"} or None
    assert all(e.schedule is None for e in store.read_arrays(out.run_id).extras)
    for k in range(len(out.steps) - 1):
        if out.steps[k + 1].block == out.steps[k].block:  # the schedule continues in step k's block
            resume = plan_branch(store, model(name), BranchRequest(out.run_id, k)).resume
            assert (resume.step_in_block - 1, resume.block_n_masked, resume.block_revisions) == (
                marks[k].step_in_block,
                marks[k].block_n_masked,
                marks[k].revisions,
            ), f"step {k}"
    assert_branches_replay(store, out, range(-1, len(out.steps) - 1))


# ---- (d) edits on an XDLM run --------------------------------------------------------------------


@both
@each_strategy
def test_forced_tokens_on_a_revising_run(store, name, strategy):
    out = revising_decode(store, name, strategy)
    vocabulary = model(name).vocabulary()
    k = len(out.steps) // 2 - 1
    after_k = store.read_arrays(out.run_id).tokens[:, k]
    visible = int(np.flatnonzero(after_k != out.mask_id)[0])
    word = next(w for w in ("girl", "boy") if vocabulary[w] != after_k[visible])
    edits = {visible: vocabulary[word]}
    masked = np.flatnonzero(after_k == out.mask_id)
    if masked.size:
        edits[int(masked[0])] = vocabulary["dragon" if "dragon" in vocabulary else "unicorn"]
    child = branch(out.run_id, k, store, edits=[Force(p, t) for p, t in edits.items()])
    assert child.result.status == "completed"
    assert stored_events(store, child.run_id, ("force",)) == [(k, p, "force", t, 1.0) for p, t in edits.items()]
    arrays = store.read_arrays(child.run_id)
    assert arrays.edits.rows() == [(k, p, t, True) for p, t in edits.items()]
    tokens, conf = state_after(arrays, k)
    start = after_k.copy()
    for p, t in edits.items():
        assert (tokens[p], conf[p], arrays.tokens[p, k]) == (t, FORCED_CONFIDENCE, t)
        start[p] = t
    # After k: the child's own steps, replayed from the edited state; a forced token stays forced
    # unless the model changed the position again (an XDLM revision may).
    expected, last = replayed(child.steps, out.mask_id, start)
    np.testing.assert_array_equal(arrays.tokens[:, k + 1 :], expected)
    np.testing.assert_array_equal(arrays.tokens[:, -1], child.token_ids)
    for p, t in edits.items():
        changed_again = last[p] >= 0 or expected[p, -1] != t
        assert arrays.forced[p] == (not changed_again), p
        assert arrays.commit_step[p] == (last[p] if changed_again else k), p
    # A no-op branch of the edited branch replays it, its revisions after the edits included.
    again = branch(child.run_id, k + 1, store)
    assert_same_revisions(child.steps[1:], again.steps)
    assert again.token_ids == child.token_ids


# ---- (e) malformed revise events -----------------------------------------------------------------


@pytest.fixture(scope="module")
def revising_bundle(tmp_path_factory) -> dict:
    """A version 1 bundle of an xdlm_revise run that revises."""
    source = TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('xdlm-bundle') / 'a.db'}")
    out = revising_decode(source, "embedded-xdlm", "xdlm_revise")
    bundle = export_run(source, out.run_id)
    source.engine.dispose()
    return bundle


def _entry(bundle: dict, run_id: int) -> dict:
    """A version 1 bundle as one run of a version 2 tree."""
    return {"id": run_id, **{k: copy.deepcopy(v) for k, v in bundle.items() if k not in ("format", "version")}}


def _index(bundle: dict, kind: str) -> int:
    return next(i for i, e in enumerate(bundle["events"]) if e["kind"] == kind)


def _as_revise(bundle: dict) -> str:
    """A first commit (its position masked before it) relabelled a revision."""
    i = _index(bundle, "commit")
    bundle["events"][i]["kind"] = "revise"
    e = bundle["events"][i]
    return rf"^event {i} \(step {e['step']}\): a revise event at position {e['position']}, which is masked before"


def _as_commit(bundle: dict) -> str:
    i = _index(bundle, "revise")
    bundle["events"][i]["kind"] = "commit"
    e = bundle["events"][i]
    return rf"^event {i} \(step {e['step']}\): a commit event at position {e['position']}, which already holds a token"


def _writes_the_mask(bundle: dict) -> str:
    i = _index(bundle, "revise")
    bundle["events"][i]["token_id"] = bundle["run"]["mask_id"]
    return rf"^event {i} \(step \d+\): a revise event at position \d+ writes the mask id {bundle['run']['mask_id']}"


def _twice_in_a_step(bundle: dict) -> str:
    i = _index(bundle, "revise")
    bundle["events"].append(copy.deepcopy(bundle["events"][i]))
    bundle["steps"][bundle["events"][i]["step"]]["n_committed"] += 1
    return rf"^event {len(bundle['events']) - 1} \(step \d+\): position \d+ has a second commit or revise event"


def _not_counted(bundle: dict) -> str:
    i = _index(bundle, "revise")
    step = bundle["events"][i]["step"]
    n = bundle["steps"][step]["n_committed"]
    del bundle["events"][i]
    return rf"^step {step}: n_committed is {n} but the bundle has {n - 1} commit events"


def _before_the_prompt(bundle: dict) -> str:
    i = _index(bundle, "revise")
    bundle["events"][i]["step"] = -1
    return rf"^event {i}: step -1 holds only edit events \(force, remask_edit\), not revise$"


def _past_the_end(bundle: dict) -> str:
    i = _index(bundle, "revise")
    bundle["events"][i]["step"] = len(bundle["steps"])
    return rf"^event {i}: step {len(bundle['steps'])} does not exist"


def _bad_top_probs(bundle: dict) -> str:
    i = _index(bundle, "revise")
    bundle["events"][i]["top_probs"] = bundle["events"][i]["top_probs"][:1]
    return rf"^event {i}: top_ids has \d+ entries but top_probs has 1$"


MALFORMED = {
    "a revision of a masked position": _as_revise,
    "a revision stored as a commit": _as_commit,
    "a revision that writes the mask": _writes_the_mask,
    "a position revised twice in one step": _twice_in_a_step,
    "a revision left out of n_committed": _not_counted,
    "a revision before the first step": _before_the_prompt,
    "a revision after the last step": _past_the_end,
    "a revision with mismatched alternatives": _bad_top_probs,
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_revise_event_is_refused(revising_bundle, store, case):
    import_run(store, revising_bundle)  # a store that is not empty: "nothing stored" means unchanged
    before = counts(store)
    bundle = copy.deepcopy(revising_bundle)
    pattern = MALFORMED[case](bundle)
    _assert_refused(store, bundle, pattern)
    # A tree whose second run is malformed: neither run is stored.
    tree = {"format": bundle["format"], "version": 2, "runs": [_entry(revising_bundle, 1), _entry(bundle, 2)]}
    _assert_refused(store, tree, "^runs\\[1\\] " + pattern.removeprefix("^"), importer=import_bundle)
    assert counts(store) == before
