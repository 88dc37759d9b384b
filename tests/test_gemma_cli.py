"""DiffusionGemma from the operator registry: describe == load, the CLI's decode on the model's own
settings (flags given override them), and bad input refused in one line with nothing stored.

The checkpoint is `fixtures_hf.build_gemma`: a tiny random model with a word-level tokenizer, built here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fixtures_hf import GEMMA_VOCAB, build_gemma

from explorer.adapters.loading import describe_model, load_denoiser
from explorer.adapters.registry import load_registry
from explorer.cli import main
from explorer.store.database import TrajectoryStore


@pytest.fixture(scope="module")
def models_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("gemma_cli")
    folder = build_gemma(parent)
    path = parent / "models.json"
    entry = {"name": "tiny-gemma", "family": "diffusion_gemma", "path": str(folder), "device": "cpu"}
    path.write_text(json.dumps({"models": [entry]}))
    return path


def test_describe_agrees_with_the_loaded_model(models_config):
    registry = load_registry(models_config)
    spec, denoiser = describe_model("tiny-gemma", registry), load_denoiser("tiny-gemma", registry)
    assert spec.canvas == denoiser.defaults  # the generation config read without the weights
    assert spec.mask_id == denoiser.mask_id == GEMMA_VOCAB  # the noise marker: one past the vocabulary
    assert spec.context_length == denoiser.context_length == 128
    assert spec.encode("once upon a time") == denoiser.encode("once upon a time")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_decode_uses_the_model_settings_and_flags_override(models_config, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    base = ("decode", "--prompt", "once upon a time", "--model", "tiny-gemma", "--models-config", str(models_config))
    code, _, err = run_cli(capsys, *base, "--db", db, "--json")
    assert code == 0, err
    store = TrajectoryStore(db)
    run = store.list_runs()[0]
    config = json.loads(run["config"]) if isinstance(run["config"], str) else run["config"]
    assert (config["gen_length"], config["steps"], config["block_length"], config["strategy"]) == (24, 18, 8, "eb")
    assert config["eb_gamma"] == 1.0 and config["canvas_t_max"] == 0.8 and config["canvas_confidence"] == 0.05
    arrays = store.read_arrays(run["id"])
    assert all(extras.canvas is not None for extras in arrays.extras) and 3 <= len(arrays.extras) <= 18
    code, _, err = run_cli(capsys, *base, "--db", db, "--strategy", "threshold", "--threshold", "0.2", "--seed", "3")
    assert code == 0, err
    newest = store.list_runs()[0]
    newest_config = json.loads(newest["config"]) if isinstance(newest["config"], str) else newest["config"]
    assert (newest_config["strategy"], newest_config["threshold"], newest_config["seed"]) == ("threshold", 0.2, 3)
    assert newest_config["gen_length"] == 24  # what was not given is still the model's


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--strategy", "margin"), "accepts with eb, low_confidence, threshold"),
        (("--block-length", "4"), "canvases of 8"),
        (("--temperature", "1.0"), "linear schedule"),
        (("--energy", "ar=1"), "energies"),
        (("--steps", "100"), "out of range"),
        (("--gen-length", "200"), "out of range"),
    ],
)
def test_bad_input_is_one_line_and_stores_nothing(models_config, tmp_path, capsys, flags, words):
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    args = ("decode", "--prompt", "once upon a time", "--model", "tiny-gemma", "--models-config", str(models_config))
    code, _, err = run_cli(capsys, *args, "--db", db, *flags)
    assert code == 2 and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs.db").exists() or TrajectoryStore(db).list_runs() == []


def test_wrong_family_checkpoint_is_refused(models_config, tmp_path, capsys):
    folder = Path(json.loads(models_config.read_text())["models"][0]["path"])
    raw = json.loads((folder / "config.json").read_text())
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({**raw, "model_type": "gemma3"}))
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"models": [{"name": "g", "family": "diffusion_gemma", "path": str(wrong)}]}))
    code, _, err = run_cli(capsys, "decode", "--prompt", "once", "--model", "g", "--models-config", str(config))
    assert code == 2 and "not 'diffusion_gemma'" in err and err.count("\n") == 1, err


# --- branching: the parent's steps replayed, then the edits on the canvas in progress ------------


@pytest.fixture(scope="module")
def parent(models_config, tmp_path_factory):
    from explorer import decode
    from explorer.decoding.canvas_settings import canvas_config

    denoiser = load_denoiser("tiny-gemma", load_registry(models_config))
    store = TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('branch') / 'runs.db'}")
    out = decode("once upon a time", denoiser, canvas_config(denoiser.defaults, seed=5), store=store)
    return denoiser, store, out


def step_json(record) -> tuple:
    return (record.step, record.committed.tolist(), record.tokens.tolist(), record.remasked.tolist(),
            record.argmax.tolist(), record.extras.canvas.to_json())  # fmt: skip


@pytest.mark.parametrize("where", ["mid_canvas", "canvas_end", "prompt"])
def test_a_branch_without_edits_reproduces_the_parent(parent, where):
    from explorer import branch

    denoiser, store, out = parent
    finals = [r.step for r in out.steps if r.extras.canvas.final]
    k = {"mid_canvas": 2, "canvas_end": finals[0], "prompt": -1}[where]
    child = branch(out.run_id, k, store, model=denoiser)
    assert [step_json(r) for r in child.steps] == [step_json(r) for r in out.steps[k + 1 :]]
    assert child.token_ids == out.token_ids


def test_force_and_renoise_edit_the_canvas_in_progress(parent):
    from explorer import Force, Remask, branch

    denoiser, store, out = parent
    k = 2
    after = out.steps[k + 1].extras.canvas  # what the parent's next step read
    kept = [after.start + i for i in range(after.size) if not after.noise_in[i]]
    noise = [after.start + i for i in range(after.size) if after.noise_in[i]]
    assert kept and noise
    child = branch(out.run_id, k, store, edits=[Force(noise[0], "girl"), Remask(kept[0])], model=denoiser)
    first = child.steps[0].extras.canvas
    girl = denoiser.vocabulary()["girl"]
    assert first.tokens_in[noise[0] - first.start] == girl and not first.noise_in[noise[0] - first.start]
    assert first.noise_in[kept[0] - first.start]  # re-noised: noise again, with a fresh random token
    stored = store.read_arrays(child.run_id)
    assert stored.edits.size == 2 and sorted(stored.edits.forced.tolist()) == [False, True]


def test_a_branch_may_change_the_acceptance_rule(parent):
    from explorer import branch

    denoiser, store, out = parent
    child = branch(out.run_id, 1, store, model=denoiser, strategy="low_confidence")
    assert child.steps[0].step == 2
    j = child.steps[0].extras.canvas.step
    assert child.steps[0].extras.canvas.accepted.sum() == -(-8 * (j + 1) // 6)  # top-k over the canvas


@pytest.mark.parametrize(
    ("step", "edit", "words"),
    [
        (2, ("force", 20, "girl"), "outside the canvas in progress"),
        (2, ("force", 3, "<eos>"), "special token"),
        (2, ("settings", "strategy", "margin"), "accepts with eb"),
    ],
)
def test_bad_branches_are_refused_before_anything_is_stored(parent, step, edit, words):
    from explorer import Force, branch

    denoiser, store, out = parent
    before = len(store.list_runs())
    kind, a, b = edit
    with pytest.raises(ValueError) as error:
        if kind == "force":
            branch(out.run_id, step, store, edits=[Force(a, b)], model=denoiser)
        else:
            branch(out.run_id, step, store, model=denoiser, **{a: b})
    assert words in str(error.value) and "\n" not in str(error.value)
    assert len(store.list_runs()) == before


def test_compare_in_replay_only_mode_draws_canvas_runs_as_canvases(parent):
    """A replay-only server (no model) opens a canvas run and its branch in Compare: noise as noise."""
    from explorer import branch
    from explorer.services import Services
    from explorer.ui.compare import load_runs, render_view
    from explorer.ui.logic import ArraysCache

    denoiser, store, out = parent
    child = branch(out.run_id, 3, store, model=denoiser, strategy="threshold")
    services = Services.create(store.url, replay_only=True)
    runs = load_runs(ArraysCache(services), [out.run_id, child.run_id])
    shown = render_view(services, runs, "confidence", "step", 4)
    for name in ("tokens_a", "tokens_b"):
        html = shown[name].value
        assert "canvas-view" in html and 'class="tok noise' in html  # step 4 is mid-canvas: noise shows
