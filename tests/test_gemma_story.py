"""The tiny story DiffusionGemma committed in models/embedded/gemma (models/gemma_story.py trains it),
offered through examples/models/story-gemma.toml: it loads as an operator's model, the engine
reproduces its own `generate()`, and the training code runs (a few steps, into a temporary folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.adapters.loading import describe_model, load_denoiser
from explorer.adapters.registry import load_registry
from explorer.decoding.callbacks import CollectSteps
from explorer.decoding.canvas_settings import canvas_config
from explorer.decoding.engine import run_decode
from models import gemma_story

EXAMPLE = ROOT / "examples" / "models" / "story-gemma.toml"


class Drafts:
    def __init__(self) -> None:
        self.drafts = []

    def put(self, value) -> None:
        pass

    def put_draft(self, value) -> None:
        self.drafts.append(value[0].tolist())

    def end(self) -> None:
        pass


@pytest.fixture(scope="module")
def denoiser():
    return load_denoiser("story-gemma", load_registry(EXAMPLE))


def test_the_example_config_offers_the_committed_model(denoiser):
    spec = describe_model("story-gemma", load_registry(EXAMPLE))
    assert spec.canvas == denoiser.defaults and spec.canvas.canvas_length == gemma_story.CANVAS
    assert denoiser.vocab_size == gemma_story.VOCAB_SIZE and denoiser.mask_id == gemma_story.VOCAB_SIZE
    assert denoiser.encode("once upon a time") == [
        2,
        *[gemma_story.story_vocab()[w] for w in "once upon a time".split()],
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_engine_reproduces_generate_on_the_trained_model(denoiser, seed):
    prompt = denoiser.encode("once upon a time there was a girl named")
    streamer = Drafts()
    torch.manual_seed(seed)
    out = denoiser.model.generate(torch.tensor([prompt]), streamer=streamer)
    steps = CollectSteps()
    result = run_decode(denoiser, prompt, canvas_config(denoiser.defaults, seed=seed), [steps])
    new = out.sequences[0, len(prompt) :].tolist()
    assert result.token_ids[: len(new)] == new and len(steps.steps) == len(streamer.drafts)
    for record, draft in zip(steps.steps, streamer.drafts):
        canvas = record.extras.canvas
        assert record.argmax[canvas.start : canvas.start + canvas.size].tolist() == draft
    assert any(r.extras.canvas.stop for r in steps.steps) or len(steps.steps) == 24  # trained: it may stop early
    words = result.text.split()
    assert words and all(w.strip(".") in gemma_story.story_vocab() or w == "." for w in words)


def test_training_runs_and_saves_a_loadable_checkpoint(tmp_path):
    summary = gemma_story.train(tmp_path / "g", steps=3, batch_size=4)
    assert summary["steps"] == 3 and summary["log"][-1]["step"] == 2
    model = load_denoiser_from(tmp_path / "g")
    assert model.config.canvas_length == gemma_story.CANVAS


def load_denoiser_from(folder: Path):
    from explorer.adapters.diffusion_gemma import load_gemma

    return load_gemma(folder)
