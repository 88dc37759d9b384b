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
