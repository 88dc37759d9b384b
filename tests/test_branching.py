"""Branches: the exact replay property, edits, branches of branches and every refused input.

A branch after step k with no edit and the parent's settings must reproduce the parent's steps
k+1.. token for token (DESIGN 3.4): this is checked for every registered strategy at T = 0 and
T = 1, with and without energies, on the embedded model and the tiny Hugging Face models.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import fields

import fixtures_hf as F
import numpy as np
import pytest
import transformers
from sqlalchemy import update

from explorer import Force, Remask, alternatives, branch, decode, repairs
from explorer.adapters.loading import load_denoiser
from explorer.adapters.registry import parse_registry
from explorer.branching.edits import EditError, parse_force
from explorer.branching.plan import BranchError
from explorer.decoding.config import ConfigError, DecodeConfig
from explorer.decoding.resume import step_seed
from explorer.decoding.strategies import STRATEGIES
from explorer.store.database import Run, Step, TrajectoryStore

PROMPT = "once upon a time"
BASE = {"gen_length": 16, "steps": 4, "block_length": 8, "violations": False}


@pytest.fixture
def store(tmp_path):
    return TrajectoryStore(f"sqlite:///{tmp_path}/runs.db")


def same_steps(parent_steps, child_steps) -> None:
    """Token for token: each step's committed positions and tokens, and its re-masks."""
    assert [r.step for r in child_steps] == [r.step for r in parent_steps]
    for a, b in zip(parent_steps, child_steps):
        np.testing.assert_array_equal(a.committed, b.committed, err_msg=f"step {a.step}")
        np.testing.assert_array_equal(a.tokens, b.tokens, err_msg=f"step {a.step}")
        np.testing.assert_array_equal(a.remasked, b.remasked, err_msg=f"step {a.step}")


def assert_replays(store, denoiser, out, ks=None) -> None:
    """A no-op branch at each k reproduces the parent's remaining steps and final tokens."""
    n = len(out.steps)
    for k in ks if ks is not None else sorted({-1, n // 2 - 1, n - 2}):
        child = branch(out.run_id, k, store, model=denoiser)
        same_steps(out.steps[k + 1 :], child.steps)
        assert child.token_ids == out.token_ids, f"branch at step {k}"


# ---- the exact replay property -----------------------------------------------------------------
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("energies", [(), (("uni", 1.0), ("ar", 0.5))], ids=["plain", "energies"])
def test_no_op_branch_reproduces_the_parent(denoiser, store, strategy, temperature, energies):
    settings = {**BASE, "strategy": strategy, "temperature": temperature, "seed": 11}
    if energies and STRATEGIES[strategy].gate is not None:
        pytest.skip("a gated strategy takes no energies: a ConfigError (tests/test_gates.py)")
    if energies:
        settings |= {"energies": energies, "energy_window": (0.0, 1.0), "energy_candidates": 4}
    out = decode(PROMPT, denoiser, store=store, **settings)
    assert_replays(store, denoiser, out)


@pytest.mark.parametrize(
    "settings",
    [
        {"prophet": True, "steps": 16, "block_length": None, "temperature": 1.0},  # Prophet's early commit
        {"cfg_scale": 1.5, "temperature": 1.0, "strategy": "random"},
        {"energies": (("ind", 1.0), ("inv", 1.0)), "energy_window": (0.0, 1.0), "temperature": 1.0},
        {"schedule": "dream", "temperature": 1.0, "strategy": "entropy"},
        {"violations": True, "strategy": "rcr", "temperature": 1.0},
    ],
    ids=["prophet", "cfg", "ind-inv", "dream-schedule", "rcr-violations"],
)
def test_no_op_branch_reproduces_options(denoiser, store, settings):
    out = decode(PROMPT, denoiser, store=store, **{**BASE, "seed": 4, **settings})
    assert_replays(store, denoiser, out, ks=range(-1, len(out.steps)))


def test_runs_recorded_without_schedule_marks_still_replay(denoiser, store):
    """Runs stored before steps carried their schedule mark: it is derived from the steps."""
    out = decode(PROMPT, denoiser, store=store, **{**BASE, "strategy": "random", "temperature": 1.0, "seed": 2})
    with store.session() as s, s.begin():
        for row in s.query(Step).filter(Step.run_id == out.run_id):
            row.extras = {k: v for k, v in (row.extras or {}).items() if k != "schedule"} or None
    assert all(e.schedule is None for e in store.read_arrays(out.run_id).extras)
    assert_replays(store, denoiser, out, ks=range(-1, len(out.steps)))


def test_step_seeds_differ_across_steps_streams_and_seeds():
    seeds = {step_seed(seed, step, stream) for seed in range(3) for step in range(50) for stream in (0, 1)}
    assert len(seeds) == 300 and all(0 <= s < 2**64 for s in seeds)


# ---- edits ---------------------------------------------------------------------------------------
def test_a_forced_token_is_in_the_text_and_recorded(denoiser, store):
    out = decode(PROMPT, denoiser, store=store, **BASE)
    word = "dragon" if "dragon" in denoiser.vocabulary() else "unicorn"
    position = 12  # in the second block: still masked after step 1
    child = branch(out.run_id, 1, store, edits=[Force(position, word)], model=denoiser)
    assert denoiser.token_text(child.token_ids[position]) == word
    run = store.get_run(child.run_id)
    assert (run["parent_run_id"], run["branch_step"]) == (out.run_id, 1)
    arrays = store.read_arrays(child.run_id)
    assert arrays.edits.rows() == [(1, position, denoiser.vocabulary()[word], True)]
    assert arrays.forced[position] and arrays.forced.sum() == 1
    assert arrays.tokens[position, 1] == denoiser.vocabulary()[word]  # present from the branch step on
    assert arrays.tokens[position, 0] == denoiser.mask_id  # the copied prefix is the parent's
    assert position not in np.concatenate([r.committed for r in child.steps])  # never committed again


def test_overwriting_a_committed_token(denoiser, store):
    out = decode(PROMPT, denoiser, store=store, **BASE)
    committed = int(out.steps[0].committed[0])
    vocabulary = denoiser.vocabulary()
    other = next(w for w in ("boy", "girl") if vocabulary[w] != out.token_ids[committed])
    child = branch(out.run_id, 0, store, edits=[Force(committed, vocabulary[other])], model=denoiser)
    assert child.token_ids[committed] == vocabulary[other]


def test_a_remasked_position_is_decoded_again(denoiser, store):
    out = decode(PROMPT, denoiser, store=store, **BASE)
    position = int(out.steps[1].committed[0])
    child = branch(out.run_id, 1, store, edits=[Remask(position)], model=denoiser)
    again = [r.step for r in child.steps if position in r.committed]
    assert len(again) == 1 and again[0] >= 2
    arrays = store.read_arrays(child.run_id)
    assert arrays.edits.rows() == [(1, position, out.token_ids[position], False)]
    assert arrays.tokens[position, 1] == denoiser.mask_id and arrays.commit_step[position] == again[0]


def test_a_branch_from_the_prompt_with_an_edit(denoiser, store):
    out = decode(PROMPT, denoiser, store=store, **BASE)
    child = branch(out.run_id, -1, store, edits=[Force(0, "the")], model=denoiser)
    assert denoiser.token_text(child.token_ids[0]) == "the" and child.steps[0].step == 0
    arrays = store.read_arrays(child.run_id)
    assert arrays.tokens[0, 0] == denoiser.vocabulary()["the"] and arrays.commit_step[0] == 0 and arrays.forced[0]


def test_a_branch_of_a_branch(denoiser, store):
    out = decode(PROMPT, denoiser, store=store, **{**BASE, "temperature": 1.0, "seed": 5, "strategy": "rcr"})
    child = branch(out.run_id, 0, store, edits=[Force(9, "girl")], model=denoiser, temperature=0.5)
    grandchild = branch(child.run_id, 2, store, edits=[Remask(int(child.steps[-2].committed[0]))], model=denoiser)
    run = store.get_run(grandchild.run_id)
    assert (run["parent_run_id"], run["branch_step"]) == (child.run_id, 2)
    assert run["config"]["temperature"] == 0.5  # inherited from its parent, not the root
    # The grandchild's prefix holds the child's edit; a no-op branch of the child replays it.
    assert store.read_arrays(grandchild.run_id).edits.rows()[0] == (0, 9, denoiser.vocabulary()["girl"], True)
    child_all = [*out.steps[:1], *child.steps]
    for k in range(1, len(child_all)):
        again = branch(child.run_id, k, store, model=denoiser)
        same_steps(child_all[k + 1 :], again.steps)
        assert again.token_ids == child.token_ids


def test_changed_steps_replan_what_is_left(denoiser, store):
    """One block of 16 at 4 tokens per step; after step 0, --steps 12 decodes the 12 masks left
    in 12 steps (one token each)."""
    out = decode(PROMPT, denoiser, store=store, gen_length=16, steps=4, violations=False)
    child = branch(out.run_id, 0, store, model=denoiser, steps=12)
    assert [r.n_committed for r in child.steps] == [1] * 12


def test_changed_strategy_continues_the_schedule(denoiser, store):
    out = decode(PROMPT, denoiser, store=store, gen_length=16, steps=4, violations=False)
    child = branch(out.run_id, 1, store, model=denoiser, strategy="random", seed=3)
    assert [r.n_committed for r in child.steps] == [4, 4]
    assert store.get_run(child.run_id)["strategy"] == "random"


def test_parse_force():
    assert parse_force("7=girl") == Force(7, "girl") and parse_force("3=#42") == Force(3, 42)
    for bad in ("7", "x=girl", "7="):
        with pytest.raises(EditError):
            parse_force(bad)


# ---- refused inputs: one clear error, nothing stored -------------------------------------------
BAD = {
    "step past the end": ({"step": 4}, BranchError, "valid: -1..3"),
    "step before the prompt": ({"step": -2}, BranchError, "valid: -1..3"),
    "position past the end": ({"edits": [Force(16, "girl")]}, EditError, "valid: 0..15"),
    "position in the prompt": ({"edits": [Force(-1, "girl")]}, EditError, "the prompt cannot be edited"),
    "the mask token": ({"edits": [Force(0, "<mask>")]}, EditError, "special token"),
    "the mask id": ({"edits": [Force(0, 1)]}, EditError, "cannot force the mask"),
    "a special token": ({"edits": [Force(0, "<pad>")]}, EditError, "special token"),
    "an unknown word": ({"edits": [Force(0, "gril")]}, EditError, "close words: girl"),
    "an id past the vocabulary": ({"edits": [Force(0, 10**6)]}, EditError, "out of range"),
    "re-masking a mask": ({"edits": [Remask(15)], "step": 0}, EditError, "already masked"),
    "one position twice": ({"edits": [Force(3, "girl"), Remask(3)]}, EditError, "edited twice"),
    "another generation length": ({"gen_length": 8}, BranchError, "generation length (16)"),
    "an unknown setting": ({"colour": "red"}, BranchError, "unknown setting"),
    "a bad setting": ({"temperature": -1.0}, ConfigError, "temperature"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_and_nothing_is_stored(denoiser, store, case):
    out = decode(PROMPT, denoiser, store=store, gen_length=16, steps=4, violations=False)
    kwargs, error, words = BAD[case]
    kwargs = {"step": 1, **kwargs}
    before = store.count_runs()
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        branch(out.run_id, kwargs.pop("step"), store, model=denoiser, **kwargs)
    assert store.count_runs() == before


def test_a_running_or_missing_run_is_refused(denoiser, store):
    out = decode(PROMPT, denoiser, store=store, gen_length=16, steps=4)
    with store.session() as s, s.begin():
        s.execute(update(Run).where(Run.id == out.run_id).values(status="running"))
    with pytest.raises(BranchError, match="still running"):
        branch(out.run_id, 1, store, model=denoiser)
    with pytest.raises(BranchError, match="no run with id 999"):
        branch(999, 1, store, model=denoiser)
    assert store.count_runs() == 1


def test_a_model_with_another_vocabulary_is_refused(denoiser, store, tmp_path):
    out = decode(PROMPT, denoiser, store=store, gen_length=16, steps=4)
    bert = load_denoiser("tiny-bert", registry=_registry(F.build_bert(tmp_path), "tiny-bert", "masked_lm"))
    with pytest.raises(BranchError, match="its vocabulary differs"):
        branch(out.run_id, 1, store, model=bert)
    assert store.count_runs() == 1


# ---- the tiny Hugging Face models ---------------------------------------------------------------
def _registry(folder, name: str, family: str):
    entry = {"name": name, "family": family, "path": str(folder), "device": "cpu"}
    if family != "masked_lm":
        entry["trust_remote_code"] = True
    if family == "mdlm":  # its default mask id (50257, GPT-2's vocabulary size) is outside the tiny one
        entry["mask_id"] = len(transformers.AutoTokenizer.from_pretrained(folder))
    return parse_registry({"models": [entry]}, source="test-models.json")


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    parent = tmp_path_factory.mktemp("hf-branch")
    builders = {"masked_lm": F.build_bert, "llada": F.build_llada, "dream": F.build_dream, "mdlm": F.build_mdlm}
    loaded = {}
    for family, build in builders.items():
        loaded[family] = load_denoiser(family, registry=_registry(build(parent), family, family))
    yield loaded
    F.remove_dynamic_modules()
    shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.parametrize("family", ["masked_lm", "llada", "dream", "mdlm"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_no_op_branch_reproduces_hf_families(hf_models, store, family, strategy):
    """Every strategy at T = 0 and T = 1, with and without an energy (Uni-E: the tiny models
    have no AR scorer), branched from the prompt, mid-run and before the last step."""
    model = hf_models[family]
    # A gated strategy checks its tokens itself and takes no energies (a ConfigError).
    energy_options = ((), (("uni", 1.0),)) if STRATEGIES[strategy].gate is None else ((),)
    for temperature in (0.0, 1.0):
        for energies in energy_options:
            out = decode(
                "she gave her apple",
                model,
                store=store,
                gen_length=8,
                steps=4,
                strategy=strategy,
                temperature=temperature,
                seed=3,
                energies=energies,
                energy_window=(0.0, 1.0),
                violations=True,
            )
            assert_replays(store, model, out)


def test_forcing_a_word_of_a_hf_model(hf_models, store):
    model = hf_models["llada"]
    out = decode("she gave her apple", model, store=store, gen_length=8, steps=4)
    word = next(w for w in ("girl", " girl", "Ġgirl") if w in model.vocabulary())
    child = branch(out.run_id, 0, store, edits=[Force(5, "girl")], model=model)
    assert child.token_ids[5] == model.vocabulary()[word]
    with pytest.raises(EditError, match="cannot force the mask"):
        branch(out.run_id, 0, store, edits=[Force(5, model.mask_id)], model=model)
    special = min(model.special_ids() - {model.mask_id})
    with pytest.raises(EditError, match="special token"):
        branch(out.run_id, 0, store, edits=[Force(5, special)], model=model)


# ---- "which decision mattered?" -------------------------------------------------------------------
def test_alternatives_report_each_token_and_the_parent_reproduced(denoiser, store):
    out = decode(PROMPT, denoiser, store=store, gen_length=16, steps=4, violations=False)
    position = int(out.steps[1].committed[0])
    report = alternatives(out.run_id, 1, position, store, top=3, model=denoiser)
    tokens = [o.token_id for o in report.outcomes]
    assert len(tokens) == len(set(tokens)) and 3 <= len(tokens) <= 4
    as_decoded = [o for o in report.outcomes if o.as_decoded]
    assert len(as_decoded) == 1 and as_decoded[0].token_id == out.token_ids[position]
    assert as_decoded[0].changed == () and as_decoded[0].text == out.result.text  # the parent, reproduced
    for o in report.outcomes:
        run = store.get_run(o.run_id)
        assert (run["parent_run_id"], run["branch_step"]) == (out.run_id, 1)
        assert run["final_token_ids"][position] == o.token_id
        assert o.ar_nll is not None and o.ar_nll > 0  # the embedded model's AR twin scores it
        assert o.verdict is not None and o.violation_score <= 0
        if not o.as_decoded:
            assert (position, denoiser.token_text(out.token_ids[position]), o.token_text) in o.changed
    probs = [o.prob for o in report.outcomes if not o.as_decoded or o.token_id in tokens[:3]]
    assert probs == sorted(probs, reverse=True) and all(0 < p <= 1 for p in probs)


def test_alternatives_refuse_bad_input(denoiser, store):
    out = decode(PROMPT, denoiser, store=store, gen_length=16, steps=4)
    before = store.count_runs()
    for kwargs, words in (
        ({"step": 4, "position": 0}, "valid: 0..3"),
        ({"step": 0, "position": 16}, "valid: 0..15"),
        ({"step": 0, "position": 0, "top": 11}, "valid: 1..10"),
    ):
        with pytest.raises(BranchError, match=words):
            alternatives(out.run_id, store=store, model=denoiser, **kwargs)
    assert store.count_runs() == before


def test_repairs_find_the_single_change_that_fixes_a_run(denoiser, store):
    """The a/an preset's run at 8 tokens per step ('an girl'): some single change repairs it."""
    out = decode("once upon a time there was", denoiser, store=store, gen_length=32, steps=4, temperature=0.7, seed=2)
    report = repairs(out.run_id, store, top=3, model=denoiser)
    assert report.flagged and all(f.step >= 0 for f in report.flagged)
    assert any(f.reason.startswith("a_an") for f in report.flagged)
    for flag, single in zip(report.flagged, report.reports):
        assert (single.step, single.position) == (flag.step, flag.position)
    for _, outcome in report.repairs:
        assert outcome.valid and not outcome.as_decoded
        assert store.get_run(outcome.run_id)["parent_run_id"] == out.run_id


def test_branch_config_fields_are_decode_config_fields():
    config = DecodeConfig()
    assert json.loads(config.to_json()).keys() == {f.name for f in fields(DecodeConfig)}


class _Renamed:
    """The embedded model under another name, optionally with one token spelled differently."""

    def __init__(self, denoiser, name: str, respell: int | None = None) -> None:
        self._d, self.name, self._respell = denoiser, name, respell

    def __getattr__(self, attribute):
        return getattr(self._d, attribute)

    def token_text(self, token_id: int) -> str:
        text = self._d.token_text(token_id)
        return text.upper() if token_id == self._respell else text


def test_another_model_with_the_same_vocabulary_may_branch(denoiser, store):
    out = decode(PROMPT, denoiser, store=store, gen_length=16, steps=4, violations=False)
    child = branch(out.run_id, 1, store, model=_Renamed(denoiser, "embedded-copy"))
    assert child.token_ids == out.token_ids and store.get_run(child.run_id)["model"] == "embedded-copy"
    respelled = _Renamed(denoiser, "embedded-respelled", respell=out.token_ids[0])
    with pytest.raises(BranchError, match="the vocabularies differ"):
        branch(out.run_id, 1, store, model=respelled)
    assert store.count_runs() == 2


def test_branches_on_every_backend(denoiser, db_url):
    """The prefix copy (INSERT ... SELECT) and the edit events on SQLite and PostgreSQL."""
    store = TrajectoryStore(db_url)
    out = decode(PROMPT, denoiser, store=store, **{**BASE, "strategy": "rcr", "temperature": 1.0, "seed": 6})
    remasked = int(out.steps[0].committed[0])
    child = branch(out.run_id, 1, store, edits=[Force(12, "girl"), Remask(remasked)])
    grandchild = branch(child.run_id, 2, store, model=denoiser)
    assert grandchild.token_ids == child.token_ids
    parent, mine = store.read_arrays(out.run_id), store.read_arrays(child.run_id)
    np.testing.assert_array_equal(mine.confidence[:, :2], parent.confidence[:, :2])  # steps 0..1 copied
    edited = parent.tokens[:, 1].copy()  # the state after step 1 holds the edits
    edited[12], edited[remasked] = denoiser.vocabulary()["girl"], denoiser.mask_id
    np.testing.assert_array_equal(mine.tokens[:, 0], parent.tokens[:, 0])
    np.testing.assert_array_equal(mine.tokens[:, 1], edited)
    assert [kind for *_, kind in mine.edits.rows()] == [True, False]
    assert store.read_arrays(grandchild.run_id).edits.rows() == mine.edits.rows()
