"""Every accepted bundle opens and renders; every refused one says why in one line and writes nothing.

Five real bundles of the embedded models (16 tokens): a plain greedy run, one with dependency
violations, one with energies, an XDLM run that revises, and a branch tree (a child with a forced
token, a grandchild with a re-mask, as a version 2 bundle). A seeded mutator (random.Random, so
the same 1,200 mutations every run) changes them: a number made huge, negative, NaN, infinite,
fractional, a string or a boolean; a token id moved to or past the vocabulary's end; a key
deleted; a list item duplicated, dropped, swapped or the list truncated; a value of another type.
For each mutated bundle, `import_bundle` (with the server's caps and the models' vocabularies)
either refuses with a one-line BundleError (no newline, <= 300 characters) and the store's
counts of runs, steps and events unchanged, or the imported runs open (`read_arrays`) and render:
`render_all` at every step (the view with the real ModelSpecs of the embedded models) and the
player's `stored_payload`. Also: a 1 KB bundle claiming gen_length 1,000,000 is refused (defect 2),
the defect-3 cases are refused, and the Runs tab's import toast escapes bundle text (defect 7).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import math
import pickle
import random
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from explorer.adapters.loading import describe_model, load_denoiser
from explorer.api import branch, decode
from explorer.branching.edits import Force, Remask
from explorer.services import Limits, Services
from explorer.store.bundle import BundleError, export_run, export_tree, import_bundle
from explorer.store.bundle_schema import DEFAULT_MAX_GEN_LENGTH, DEFAULT_MAX_STEPS, MAX_MESSAGE_CHARS
from explorer.store.database import Event, Run, Step, TrajectoryStore
from explorer.ui.logic import token_text_for
from explorer.ui.view import render_all
from explorer.views.player import stored_payload

PROMPT = "once upon a time"
G, S = 16, 8
N_MUTATIONS = 1000
SEED = 20240613
MODELS = ("embedded", "embedded-xdlm")


def _vocab(spec) -> int:
    return len(spec.token_text.__self__)


@pytest.fixture(scope="module")
def specs():
    return {name: describe_model(name) for name in MODELS}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, dict]:
    """The five source bundles, decoded here on the embedded models."""
    store = TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('mutation-source') / 'a.db'}")
    mdlm, xdlm = load_denoiser("embedded"), load_denoiser("embedded-xdlm")
    base = {"gen_length": G, "steps": S}
    plain = decode(PROMPT, mdlm, store=store, violations=False, **base).run_id
    violations = decode(PROMPT, mdlm, store=store, violations=True, temperature=1.0, seed=3, **base).run_id
    energies = decode(
        PROMPT, mdlm, store=store, violations=False, energies=(("uni", 1.0),), energy_candidates=2, **base
    ).run_id
    revising = None
    for seed in range(40):
        out = decode(
            PROMPT, xdlm, strategy="xdlm_revise", temperature=1.0, xdlm_k=0.1, seed=seed, violations=False, **base
        )
        if any(r.n_revised for r in out.steps):
            revising = decode(
                PROMPT, xdlm, store=store, strategy="xdlm_revise", temperature=1.0, xdlm_k=0.1, seed=seed,
                violations=False, **base,
            ).run_id  # fmt: skip
            break
    assert revising is not None, "no seed below 40 makes xdlm_revise revise"
    child = branch(plain, 2, store, edits=[Force(3, "girl")], model=mdlm).run_id
    branch(child, 4, store, edits=[Remask(3)], model=mdlm)
    out = {
        "plain": export_run(store, plain),
        "violations": export_run(store, violations),
        "energies": export_run(store, energies),
        "xdlm": export_run(store, revising),
        "tree": export_tree(store, plain),
    }
    assert any(s["extras"] and "violations" in s["extras"] for s in out["violations"]["steps"])
    assert any(s["extras"] and "keep_probs" in (s["extras"].get("energy") or {}) for s in out["energies"]["steps"])
    assert any(e["kind"] == "revise" for e in out["xdlm"]["events"])
    assert len(out["tree"]["runs"]) == 3
    store.engine.dispose()
    return out


@pytest.fixture(scope="module")
def target(tmp_path_factory, specs):
    """One store (SQLite) and the Services the views read: replay only, the embedded specs."""
    store = TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('mutation-target') / 'b.db'}")
    services = Services(store, None, dict(specs))
    yield services
    store.engine.dispose()


def counts(store: TrajectoryStore) -> tuple[int, int, int]:
    with store.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Run, Step, Event))


def importer(services: Services):
    limits = services.limits

    def vocab_size(model: str) -> int | None:
        spec = services.models.get(model)
        return None if spec is None else _vocab(spec)

    def run(data):
        return import_bundle(
            services.store,
            data,
            max_gen_length=limits.max_gen_length,
            max_steps=limits.max_steps,
            vocab_size=vocab_size,
        )

    return run


def opens_and_renders(services: Services, run_id: int, seen: set | None = None) -> None:
    """read_arrays, the player's payload, and render_all at every step (skipped when `seen` holds
    a run with the same arrays and run row but its id: the views would draw the same)."""
    arrays = services.store.read_arrays(run_id)
    token_text = token_text_for(services, arrays)
    json.dumps(stored_payload(arrays, token_text))
    if seen is not None:
        key = hashlib.sha256(pickle.dumps(dataclasses.replace(arrays, run={**arrays.run, "id": None}))).hexdigest()
        if key in seen:
            return
        seen.add(key)
    for step in [*range(len(arrays.steps)), None]:
        shown = render_all(services, arrays, step, "confidence", None)
        assert shown["tokens"] is not None


# ---- the mutator ------------------------------------------------------------------------------


def _paths(node, path=()):
    """Every (path, value) of a JSON tree, containers included (the root excepted)."""
    if path:
        yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*path, i))


def _parent(root, path):
    node = root
    for part in path[:-1]:
        node = node[part]
    return node


BIG = (10**6, 2**31, 2**40, 2**63, 2**70, 1_000_000_000)
ODD = (float("nan"), float("inf"), -float("inf"), "5", "", None, True, False, [], {}, 0.5, -1, -(2**63) - 1)
TOKENISH = ("token_id", "top_ids", "prompt_ids", "final_token_ids", "mask_id", "tokens")
HOT = (*TOKENISH, "position", "step", "gen_length", "n_steps", "positions", "chosen", "n_committed", "branch_step")
HOT += ("config", "extras", "energies", "keep_probs", "S", "flip", "block", "masked_before", "kind")


def _number(rng: random.Random, value):
    choice = rng.randrange(8)
    if choice == 0:
        return rng.choice(BIG)
    if choice == 1:
        return -rng.choice((1, 2, 10**6))
    if choice == 2:
        return rng.choice((float("nan"), float("inf"), -float("inf")))
    if choice == 3:
        return (value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0) + 0.5
    if choice == 4:
        return str(value)
    if choice == 5:
        return rng.choice((True, None))
    if choice == 6:
        return rng.choice((0, 1, 117, 118, 119, 120, 15, 16, 17))  # vocabulary and gen_length edges
    return rng.randrange(-3, 300)


def _blob(rng: random.Random, blob: dict) -> dict:
    dtype = "<i4" if blob.get("dtype") == "<i4" else "<f2"
    try:
        values = np.frombuffer(base64.b64decode(blob["data"]), dtype).copy()
    except Exception:
        return blob
    if not len(values):
        return blob
    i = rng.randrange(len(values))
    if dtype == "<i4":
        values[i] = rng.choice((-1, 118, 119, 5000, 2**31 - 1))
    else:
        values[i] = rng.choice((np.nan, np.inf, -0.5, 1.5, 60000.0, -np.inf))
    if rng.random() < 0.2:
        values = values[: rng.randrange(len(values))]
    return {**blob, "data": base64.b64encode(values.tobytes()).decode("ascii")}


def mutate(rng: random.Random, bundle: dict) -> tuple[dict, str]:
    """A deep copy of the bundle with one to three random changes; and what they were."""
    out, done = copy.deepcopy(bundle), []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        paths = list(_paths(out))
        # weight the fields that index things (token ids, positions, steps, lengths) more
        hot = [
            p
            for p in paths
            if isinstance(p[0][-1], str)
            and p[0][-1]
            in (
                *TOKENISH,
                "position",
                "step",
                "gen_length",
                "n_steps",
                "positions",
                "chosen",
                "n_committed",
                "branch_step",
                "config",
                "extras",
                "energies",
            )
        ]
        path, value = rng.choice(hot if hot and rng.random() < 0.5 else paths)
        parent, key = _parent(out, path), path[-1]
        op = rng.randrange(7)
        if isinstance(value, dict) and {"dtype", "data"} <= set(value) and op < 4:
            parent[key], what = _blob(rng, value), "blob values"
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and op < 5:
            parent[key], what = _number(rng, value), "number"
        elif isinstance(value, list) and value and op < 5:
            which = rng.randrange(5)
            i = rng.randrange(len(value))
            if which == 0:
                value.insert(i, copy.deepcopy(value[i]))
                what = "duplicate item"
            elif which == 1:
                j = rng.randrange(len(value))
                value[i], value[j] = value[j], value[i]
                what = "swap items"
            elif which == 2:
                del value[i:]
                what = "truncate"
            elif which == 3:
                del value[i]
                what = "drop item"
            else:
                value.reverse()
                what = "reverse"
        elif op == 5 and isinstance(parent, dict):
            del parent[key]
            what = "delete key"
        elif isinstance(value, str) and op < 5:
            parent[key] = rng.choice(("", "x" * 300, "<b>x</b>", "\n", "running", "commit", "1"))
            what = "string"
        else:
            parent[key] = rng.choice(ODD)
            what = "type"
        done.append(f"{what} at {'.'.join(map(str, path))}")
    return out, "; ".join(done)


# ---- the property -----------------------------------------------------------------------------


def test_caps_default_to_the_limits():
    assert (DEFAULT_MAX_GEN_LENGTH, DEFAULT_MAX_STEPS) == (Limits().max_gen_length, Limits().max_steps)


def test_source_bundles_import_and_render(bundles, target):
    run = importer(target)
    for bundle in bundles.values():
        for run_id in run(bundle).run_ids:
            opens_and_renders(target, run_id)


def test_mutated_bundles_are_refused_cleanly_or_open(bundles, target):
    rng, run = random.Random(SEED), importer(target)
    names = sorted(bundles)
    refused = accepted = 0
    seen: set[str] = set()
    started = time.perf_counter()
    for i in range(N_MUTATIONS):
        source = names[i % len(names)]
        data, what = mutate(rng, bundles[source])
        before = counts(target.store)
        try:
            report = run(data)
        except BundleError as exc:
            message = str(exc)
            assert message and "\n" not in message and len(message) <= MAX_MESSAGE_CHARS, (what, message)
            assert counts(target.store) == before, (what, message)
            refused += 1
            continue
        for run_id in report.run_ids:
            try:
                opens_and_renders(target, run_id, seen)
            except Exception as exc:  # pragma: no cover - the failure says which mutation
                pytest.fail(f"mutation {i} of {source} ({what}) was accepted but does not render: {exc!r}")
            target.store.delete_run(run_id)
        accepted += 1
    elapsed = time.perf_counter() - started
    print(
        f"{N_MUTATIONS} mutations: {refused} refused, {accepted} accepted and opened "
        f"({len(seen)} distinct runs rendered at every step), {elapsed:.1f} s"
    )
    assert refused + accepted == N_MUTATIONS
    assert refused > N_MUTATIONS // 2 and accepted > 20  # the mutator reaches both sides


# ---- the named defects ------------------------------------------------------------------------


def _small(bundles) -> dict:
    return copy.deepcopy(bundles["plain"])


def test_huge_gen_length_without_steps_is_refused(bundles, target):
    """Defect 2: a tiny bundle claiming gen_length 1,000,000 (no steps) is over the cap."""
    data = _small(bundles)
    data["run"].update(gen_length=1_000_000, n_steps=0, final_token_ids=None, branch_step=None)
    data["run"]["config"].update(gen_length=1_000_000)
    data.update(steps=[], events=[])
    raw = json.dumps(data).encode()
    assert len(raw) < 2048
    before = counts(target.store)
    with pytest.raises(BundleError, match=r"^run: gen_length 1000000 is over this server's limit of 256"):
        importer(target)(raw)
    assert counts(target.store) == before


def test_steps_over_the_cap_are_refused(bundles, target):
    with pytest.raises(BundleError, match=r"^run: n_steps 8 is over this server's limit of 4 steps$"):
        import_bundle(target.store, _small(bundles), max_steps=4)


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("energies 5", r"^run: config is not a valid decode configuration"),
        ("violations mistyped", r"^step \d+: extras\.violations\.S must be an array, got string"),
        ("energy without keep_probs", r"^step \d+: extras\.energy: missing field keep_probs$"),
        (
            "token id outside the vocabulary",
            r"^event 3 \(step \d+\): token_id: token id 99999 is outside the vocabulary of model "
            r"'embedded' \(0\.\.118\)$",
        ),
    ],
)
def test_defect_3_cases_are_refused(bundles, target, case, pattern):
    """Defect 3: bundles that used to be accepted and then could not be opened or scrubbed."""
    source = (
        "energies" if "energ" in case and case != "energies 5" else "violations" if "violations" in case else "plain"
    )
    data = copy.deepcopy(bundles[source])
    if case == "energies 5":
        data["run"]["config"]["energies"] = 5
    elif case == "violations mistyped":
        step = next(s for s in data["steps"] if s["extras"] and "violations" in s["extras"])
        step["extras"]["violations"]["S"] = "wrong"
    elif case == "energy without keep_probs":
        step = next(s for s in data["steps"] if s["extras"] and "keep_probs" in (s["extras"].get("energy") or {}))
        del step["extras"]["energy"]["keep_probs"]
    else:
        data["events"][3]["token_id"] = 99999
    before = counts(target.store)
    with pytest.raises(BundleError, match=pattern):
        importer(target)(data)
    assert counts(target.store) == before


def test_runs_tab_import_toast_escapes_bundle_text(bundles, target, tmp_path):
    """Defect 7: the import handler's error toast shows the bundle's text as text, not markup."""
    import gradio as gr

    from explorer.ui.app import build_app

    data = _small(bundles)
    data["run"]["status"] = "<b>x</b><img src=x>"
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(data))
    demo = build_app(target)
    handlers = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "do_import"]
    assert len(handlers) == 1
    before = counts(target.store)
    with pytest.raises(gr.Error) as info:
        handlers[0](str(path), "(any)", "(any)", "(any)", "", "")
    message = info.value.message
    assert "<b>" not in message and "<img" not in message, message
    assert "&lt;b>x&lt;/b>&lt;img src=x>" in message, message  # every tag opener escaped (ui/toasts.py)
    assert counts(target.store) == before
    assert not path.exists()  # the upload is removed once read, refused or not (defect 4)


def test_messages_are_one_line_even_for_multiline_bundle_text(bundles, target):
    data = _small(bundles)
    data["run"]["status"] = "line one\nline two" + "y" * 500
    with pytest.raises(BundleError) as info:
        importer(target)(data)
    assert "\n" not in str(info.value) and len(str(info.value)) <= MAX_MESSAGE_CHARS


def test_nan_in_a_probability_is_refused(bundles, target):
    data = _small(bundles)
    data["events"][0]["prob"] = math.nan
    with pytest.raises(BundleError, match=r"^event 0: prob must be finite"):
        importer(target)(data)


def test_unknown_model_bounds_token_ids_to_int32(bundles, target):
    data = _small(bundles)
    data["run"]["model"] = "somewhere-else"
    run_id = import_bundle(target.store, data).run_ids[0]
    opens_and_renders(target, run_id)
    target.store.delete_run(run_id)
    data["events"][0]["token_id"] = 2**31
    with pytest.raises(BundleError, match=r"^event 0: token_id .* is over the limit of 2147483647$"):
        import_bundle(target.store, data)
