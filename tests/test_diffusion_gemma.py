"""DiffusionGemma's step-by-step driver against transformers' own `generate()`, on a tiny random model.

The model is built here (2 layers, hidden 32, vocabulary 256, a one-layer vision tower the text
path never calls), saved into tmp_path and loaded through the adapter: no download. A random model
is nearly uniform, so it never stops early or says EOS by itself; a fixture hook on the LM head
adds a fixed per-position bias (peaked, input-independent logits: the canvas converges and the
stable-and-confident stop fires) and, for chosen rows and absolute positions, an EOS bias.
The hook sits on `lm_head`, which both generate and the driver call, so both see the same model.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import transformers
from transformers.models.diffusion_gemma import generation_diffusion_gemma as tf_gen

from explorer.adapters.diffusion_gemma import GemmaDenoiser, IdsCodec, load_gemma
from explorer.adapters.errors import ModelLoadError
from explorer.api import prepare
from explorer.decoding import entropy_bound as rule
from explorer.decoding.callbacks import CollectSteps
from explorer.decoding.canvas_engine import iter_canvas_steps
from explorer.decoding.canvas_settings import canvas_config
from explorer.decoding.config import DecodeConfig
from explorer.decoding.engine import run_decode
from explorer.decoding.records import DecodeResult, StepRecord
from explorer.store.database import StoreWriter, TrajectoryStore

VOCAB, CANVAS, WINDOW, EOS, PAD = 256, 8, 128, 1, 0
PROMPT = torch.tensor([[2, 5, 6, 7, 8]])


def tiny_config() -> transformers.DiffusionGemmaConfig:
    text = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, global_head_dim=16, max_position_embeddings=WINDOW, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2,
        num_experts=2, top_k_experts=1, moe_intermediate_size=32, tie_word_embeddings=False,
    )  # fmt: skip
    vision = dict(
        model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8,
    )  # fmt: skip
    return transformers.DiffusionGemmaConfig(
        text_config=text, vision_config=vision, canvas_length=CANVAS, image_token_id=255, boi_token_id=253,
        eoi_token_id=254, tie_word_embeddings=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = transformers.DiffusionGemmaForBlockDiffusion(tiny_config()).eval()
    model.generation_config = tf_gen.DiffusionGemmaGenerationConfig(
        max_new_tokens=20, max_denoising_steps=6, sampler_config=tf_gen.EntropyBoundSamplerConfig(entropy_bound=0.5),
        t_min=0.4, t_max=0.8, stability_threshold=1, confidence_threshold=0.05, eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("gemma")
    model.save_pretrained(folder)
    return folder


class Bias:
    """Fixture hooks: a fixed per-position token bias on the LM head, EOS at chosen positions, and a
    count of decoder calls. Positions are absolute (read from the decoder's `decoder_position_ids`)."""

    def __init__(
        self, model, strength: float | tuple[float, ...] = 0.0, eos: tuple[tuple[int, int], ...] = (), switch_at=None
    ) -> None:
        self.strength, self.eos, self.switch_at = strength, eos, switch_at
        self.positions, self.decoder_calls, self.call_in_canvas = None, 0, 0
        self.handles = [
            model.model.decoder.register_forward_pre_hook(self._positions, with_kwargs=True),
            model.lm_head.register_forward_hook(self._bias),
        ]

    def _positions(self, module, args, kwargs):
        positions = kwargs["decoder_position_ids"][0]  # (C,)
        same = self.positions is not None and torch.equal(positions, self.positions)
        self.call_in_canvas = self.call_in_canvas + 1 if same else 0
        self.positions = positions
        self.decoder_calls += 1

    def _bias(self, module, args, output):  # output (B, C, V), before the softcap
        if self.positions is None or output.shape[1] != CANVAS:
            return output
        output = output.clone()
        shift = int(self.switch_at is not None and self.call_in_canvas >= self.switch_at)  # a later, other pattern
        tokens = (self.positions.long() * 37 + 11 + shift) % (VOCAB - 10) + 5  # never EOS / PAD
        strength = torch.tensor(self.strength, dtype=output.dtype).reshape(-1, 1)  # (B or 1, 1): per row
        output[:, torch.arange(CANVAS), tokens] += strength
        for row, position in self.eos:
            hit = (self.positions == position).nonzero()
            if len(hit):
                output[row, int(hit[0]), EOS] += 60.0
        return output

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def model(gemma_dir: Path):
    return load_gemma(gemma_dir)


class RecordingStreamerForTest:
    """Records what generate streams: the argmax draft of every denoising step."""

    def __init__(self) -> None:
        self.drafts: list[torch.Tensor] = []

    def put(self, value: torch.Tensor) -> None:
        pass

    def put_draft(self, value: torch.Tensor) -> None:
        self.drafts.append(value.clone())

    def end(self) -> None:
        pass


def reference(model, ids: torch.Tensor, seed: int, **settings):
    """transformers' generate, seeded on the global RNG as a user would; drafts and decoder calls."""
    streamer = RecordingStreamerForTest()
    if "entropy_bound" in settings:  # generate takes it as a sampler config (a bare kwarg would go to the model)
        settings["sampler_config"] = tf_gen.EntropyBoundSamplerConfig(entropy_bound=settings.pop("entropy_bound"))
    torch.manual_seed(seed)
    out = model.generate(ids, streamer=streamer, **settings)
    return out, streamer.drafts


@pytest.fixture(scope="module")
def denoiser(model) -> GemmaDenoiser:
    return GemmaDenoiser("tiny-gemma", model, IdsCodec(), torch.device("cpu"))


def engine_config(denoiser: GemmaDenoiser, seed: int, **settings) -> DecodeConfig:
    """The engine's config for generate's keyword settings (the model's own, then these)."""
    return canvas_config(replace(denoiser.defaults, **settings), seed=seed)


def engine_run(
    denoiser: GemmaDenoiser, ids: torch.Tensor, seed: int, **settings
) -> tuple[list[StepRecord], DecodeResult]:
    torch.manual_seed(12345)  # the engine must not depend on the global RNG
    steps = CollectSteps()
    result = run_decode(denoiser, ids[0].tolist(), engine_config(denoiser, seed, **settings), [steps])
    return steps.steps, result


def run_both(denoiser, ids, seed, strength=0.0, eos=(), **settings):
    """Both runs under the same hooks; returns (generate output, drafts, its decoder calls, steps, result)."""
    bias = Bias(denoiser.model, strength, eos)
    try:
        out, drafts = reference(denoiser.model, ids, seed, **settings)
        calls = bias.decoder_calls
        bias.decoder_calls = 0
        steps, result = engine_run(denoiser, ids, seed, **settings)
        assert bias.decoder_calls == len(steps) == calls
    finally:
        bias.remove()
    return out, drafts, calls, steps, result


def assert_identical(out, drafts, calls, steps, result, prompt_length: int) -> None:
    new = out.sequences[0, prompt_length:].tolist()
    assert result.token_ids[: len(new)] == new  # generate's tokens; canvases it never ran stay noise
    assert set(result.token_ids[len(new) :]) <= {VOCAB}
    assert len(steps) == len(drafts) == calls
    for record, draft in zip(steps, drafts):
        canvas = record.extras.canvas
        assert torch.equal(torch.from_numpy(record.argmax[canvas.start : canvas.start + CANVAS]).long(), draft[0])
    valid = sum(1 for token in new if token != PAD)
    assert out.tokens_per_forward.item() == pytest.approx(valid / len(steps))


def steps_per_canvas(steps: list[StepRecord]) -> list[int]:
    counts: dict[int, int] = {}
    for step in steps:
        counts[step.block] = counts.get(step.block, 0) + 1
    return [counts[k] for k in sorted(counts)]


# --- identity with generate() ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_three_canvases_full_steps_identical(denoiser, seed):
    out, drafts, calls, steps, result = run_both(denoiser, PROMPT, seed)
    assert_identical(out, drafts, calls, steps, result, PROMPT.shape[1])
    assert steps_per_canvas(steps) == [6, 6, 6]  # 20 new tokens -> 3 canvases of 8; never confident
    assert out.sequences.shape == (1, 5 + 3 * CANVAS)
    assert [s.extras.canvas.temperature for s in steps[:6]] == pytest.approx(
        [0.8, 0.4 + 0.4 * 5 / 6, 0.4 + 0.4 * 4 / 6, 0.6, 0.4 + 0.4 * 2 / 6, 0.4 + 0.4 / 6]
    )


@pytest.mark.parametrize("seed", [0, 3])
def test_early_stop_identical(denoiser, seed):
    settings = dict(max_denoising_steps=8, confidence_threshold=0.5, stability_threshold=2, entropy_bound=1.0)
    out, drafts, calls, steps, result = run_both(denoiser, PROMPT, seed, strength=6.0, **settings)
    assert_identical(out, drafts, calls, steps, result, PROMPT.shape[1])
    per_canvas = steps_per_canvas(steps)
    assert len(per_canvas) == 3 and min(per_canvas) < 8  # the stop fired in at least one canvas
    stopped = [s.extras.canvas for s in steps if s.extras.canvas.stop]
    assert stopped and all(c.stable and c.confident and c.final for c in stopped)
    assert all(c.steps_stable >= 2 and c.mean_entropy < 0.5 for c in stopped)


@pytest.mark.parametrize("seed", [0, 2])
def test_eos_ends_generation_and_pads_identical(denoiser, seed):
    eos_at = 5 + CANVAS + 3  # canvas 1, its 4th position
    out, drafts, calls, steps, result = run_both(
        denoiser, PROMPT, seed, strength=8.0, eos=((0, eos_at),), max_new_tokens=40
    )
    assert_identical(out, drafts, calls, steps, result, PROMPT.shape[1])
    assert steps_per_canvas(steps) and max(s.block for s in steps) == 1  # EOS in canvas 1 ended a 5-canvas run
    tail = out.sequences[0, eos_at:]
    assert tail[0].item() == EOS and (tail[1:] == PAD).all() and len(tail) == CANVAS - 3
    assert result.token_ids[2 * CANVAS :] == [VOCAB] * (3 * CANVAS)  # never run: noise, not pad


def test_step_records_are_consistent(denoiser):
    """The events replay the canvas: commits where an accepted token is new there, re-masks where a
    kept token was re-noised, the last step commits the final draft; the canvas record chains."""
    steps, result = engine_run(denoiser, PROMPT, 0)
    state = np.full(3 * CANVAS, VOCAB)
    for before, after in itertools.pairwise([None, *steps]):
        canvas = after.extras.canvas
        window = slice(canvas.start, canvas.start + CANVAS)
        if before is not None and before.extras.canvas.canvas == canvas.canvas:
            assert np.array_equal(canvas.noise_in, before.extras.canvas.renoised)
            previous = before.argmax[window]
            assert np.array_equal(canvas.flipped, after.argmax[window] != previous)
        else:
            assert canvas.noise_in.all() and canvas.flipped.all()
        kept_in = state[window].copy()
        assert np.array_equal(kept_in == VOCAB, canvas.noise_in)  # noise in the store is noise on the canvas
        assert np.array_equal(canvas.tokens_in[~canvas.noise_in], kept_in[~canvas.noise_in])
        state[after.committed] = after.tokens
        state[after.remasked] = VOCAB
        if canvas.final:
            assert np.array_equal(state[window], after.argmax[window])  # no pad: no EOS in this run
        else:
            expected = np.where(canvas.accepted, canvas.sampled, VOCAB)
            assert np.array_equal(state[window], expected)
            assert np.array_equal(canvas.renoised, ~canvas.accepted) and canvas.accepted.sum() >= 1
        assert np.array_equal(after.revised, after.previous != VOCAB)
        assert np.isnan(after.entropy[: canvas.start]).all() and (after.argmax[canvas.start + CANVAS :] == -1).all()
        assert canvas.mean_entropy == pytest.approx(float(after.entropy[window].mean()), rel=1e-5)
    assert state.tolist() == result.token_ids
    assert denoiser.defaults.max_denoising_steps == 6 and denoiser.defaults.entropy_bound == 0.5  # the checkpoint's


def test_other_acceptance_rules_run_on_the_same_model(denoiser):
    """The project's confidence rules accept over the same canvas: top-k grows linearly, threshold keeps >= tau."""
    for strategy, knobs in (("low_confidence", {}), ("threshold", {"threshold": 0.3}), ("pairwise_gate", {})):
        config = replace(engine_config(denoiser, 0), strategy=strategy, **knobs)
        steps = CollectSteps()
        run_decode(denoiser, PROMPT[0].tolist(), config, [steps])
        for record in steps.steps:
            canvas = record.extras.canvas
            if strategy == "pairwise_gate":  # K = 8 probe passes per step, the gate's verdict is what was accepted
                gate = record.extras.gate
                assert record.extras.cost.calls == 9 and gate.accepted[0] and len(gate.proposed) == CANVAS
                assert (
                    sorted(np.array(gate.proposed)[gate.accepted].tolist())
                    == (np.flatnonzero(canvas.accepted) + canvas.start).tolist()
                )
            elif strategy == "low_confidence":
                assert canvas.accepted.sum() == min(CANVAS, -(-CANVAS * (canvas.step + 1) // 6))
            else:
                best = canvas.sampled_prob.argmax()
                assert (
                    canvas.accepted[best]
                    and (canvas.sampled_prob[canvas.accepted] >= 0.3).sum() >= canvas.accepted.sum() - 1
                )


def test_store_round_trip(denoiser, tmp_path):
    store = TrajectoryStore(f"sqlite:///{tmp_path / 'runs.db'}")
    steps = CollectSteps()
    writer = StoreWriter(store, denoiser.token_text)
    result = run_decode(denoiser, PROMPT[0].tolist(), engine_config(denoiser, 0), [steps, writer])
    arrays = store.read_arrays(writer.run_id)
    assert arrays.run["mask_id"] == VOCAB and arrays.tokens[:, -1].tolist() == result.token_ids
    for stored, record in zip(arrays.extras, steps.steps):
        assert stored.canvas.to_json() == record.extras.canvas.to_json()  # rounded as stored


# --- the pure rule on hand-built logits ---------------------------------------------------------


def logits_with_support(sizes: list[int]) -> torch.Tensor:
    """(1, C, V) logits: position i uniform over its first sizes[i] tokens (entropy ln sizes[i])."""
    logits = torch.full((1, len(sizes), 16), -1e4)
    for i, size in enumerate(sizes):
        logits[0, i, :size] = 0.0
    return logits


def test_acceptance_under_the_bound():
    logits = logits_with_support([4, 1, 2, 8])  # entropies ln4, 0, ln2, ln8
    current, sampled = torch.full((1, 4), 9), torch.tensor([[10, 11, 12, 13]])
    # sorted 0, ln2, ln4, ln8: sum - max = 0, 0, ln2, ln2 + ln4
    cases = {0.5: [False, True, True, False], 0.7: [True, True, True, False], 2.1: [True, True, True, True]}
    for bound, expected in cases.items():
        result = rule.accept(current, sampled, logits, bound)
        assert result.accepted[0].tolist() == expected
        assert torch.equal(result.canvas, torch.where(result.accepted, sampled, current))
    assert rule.token_entropy(logits)[0].tolist() == pytest.approx([1.3863, 0.0, 0.6931, 2.0794], abs=1e-4)


def test_acceptance_matches_transformers_including_ties():
    generator = torch.Generator().manual_seed(0)
    tied = torch.randn(1, 1, 32, generator=generator).expand(2, 6, 32)  # every position the same entropy
    for logits in (torch.randn(3, 12, 32, generator=generator) * 3, tied):
        current = torch.randint(0, 32, logits.shape[:2], generator=generator)
        sampled = torch.randint(0, 32, logits.shape[:2], generator=generator)
        for bound in (0.1, 1.0, 5.0):
            sampler = tf_gen.EntropyBoundSampler(tf_gen.EntropyBoundSamplerConfig(bound), logits.shape[1], 32, 4)
            expected = sampler.accept_canvas(current, sampled, logits, cur_step=1)
            ours = rule.accept(current, sampled, logits, bound)
            assert torch.equal(ours.canvas, expected) and torch.equal(ours.accepted, sampler.accepted_token_mask)
    assert rule.accept(current, sampled, tied, 0.1).accepted.sum(dim=-1).tolist() == [1, 1]  # one of the ties


def test_renoise_and_draws_match_transformers_global_rng():
    accepted = torch.tensor([[True, False, True, False, False]])
    canvas = torch.tensor([[3, 4, 5, 6, 7]])
    sampler = tf_gen.EntropyBoundSampler(tf_gen.EntropyBoundSamplerConfig(0.1), 5, 50, 4)
    sampler.accepted_token_mask = accepted
    torch.manual_seed(4)
    expected = sampler.renoise_canvas(canvas, cur_step=1)
    ours = rule.renoise(canvas, accepted, 50, torch.Generator().manual_seed(4))
    assert torch.equal(ours.canvas, expected) and torch.equal(ours.renoised, ~accepted)
    assert ours.canvas[accepted].tolist() == [3, 5]
    logits = torch.randn(2, 5, 50)
    torch.manual_seed(5)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    expected_sample = torch.multinomial(probs.view(-1, 50), num_samples=1).view(2, 5)
    proposal = rule.propose(logits, torch.Generator().manual_seed(5))
    assert torch.equal(proposal.sampled, expected_sample) and torch.equal(proposal.argmax, logits.argmax(-1))


def test_temperature_matches_the_transformers_processor():
    processor = tf_gen.LinearTemperatureScheduleLogitsProcessor(t_min=0.3, t_max=0.9, max_denoising_steps=7)
    logits = torch.randn(1, 4, 10)
    for remaining in range(7, 0, -1):
        expected = processor(None, logits, cur_step=torch.tensor(remaining, dtype=torch.int32))
        assert torch.equal(rule.scale_logits(logits, rule.linear_temperature(0.3, 0.9, remaining, 7)), expected)
    assert float(rule.linear_temperature(0.3, 0.9, 7, 7)) == pytest.approx(0.9)
    assert rule.scale_logits(logits, None) is logits


def test_stop_check_stability_confidence_and_steps_stable():
    peaked, flat = torch.full((1, 3, 5), -30.0), torch.zeros(1, 3, 5)
    peaked[..., 0] = 30.0
    a, b = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 4]])
    criteria = tf_gen.StableAndConfidentStoppingCriteria(stability_threshold=2, confidence_threshold=0.1)
    history = previous = steps = None
    got = []
    for argmax, logits in ((a, peaked), (a, peaked), (a, flat), (a, peaked), (b, peaked)):
        check = rule.stop_check(history, argmax, previous, steps, logits, 2, 0.1)
        assert torch.equal(check.stop, criteria(argmax, logits))
        history, previous, steps = check.history, argmax, check.steps_stable
        got.append((check.stable.item(), check.confident.item(), check.steps_stable.item()))
    assert got == [(False, True, 0), (False, True, 1), (True, False, 2), (True, True, 3), (False, True, 0)]
    never_stable = rule.stop_check(None, a, None, None, peaked, 0, 0.1)
    assert never_stable.stop.item() and never_stable.history is None  # threshold 0: stable at once


# --- refusals: one line each ----------------------------------------------------------------------


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def edited_checkpoint(gemma_dir: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(gemma_dir, folder)
    raw = json.loads((folder / "config.json").read_text())
    edit(raw)
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda raw: raw.pop("canvas_length"), "no canvas_length"),
        (lambda raw: raw.update(canvas_length=0), "out of range"),
        (lambda raw: raw.update(canvas_length=10**6), "out of range"),
        (lambda raw: raw.update(model_type="llama"), "'llama' checkpoint"),
    ],
)
def test_bad_checkpoints_refused(gemma_dir, tmp_path, edit, words):
    with pytest.raises(ModelLoadError) as error:
        load_gemma(edited_checkpoint(gemma_dir, tmp_path, edit))
    assert words in one_line(error)


def test_missing_checkpoint_refused(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        load_gemma(tmp_path / "nothing")
    assert "config.json not found" in one_line(error)


@pytest.mark.parametrize(
    ("ids", "settings", "words"),
    [
        (PROMPT, dict(block_length=4, gen_length=24), "canvases of 8"),
        (PROMPT, dict(steps=0), "out of range"),
        (PROMPT, dict(steps=30), "out of range"),
        (torch.full((1, 125), 7), {}, "context 128 minus prompt 125"),
        (torch.tensor([[2, 255, 5]]), {}, "image tokens"),
        (PROMPT, dict(canvas_t_min=0.9, canvas_t_max=0.5), "above canvas-t-max"),
        (PROMPT, dict(temperature=1.0), "linear schedule"),
        (PROMPT, dict(strategy="margin"), "accepts with eb, low_confidence, threshold"),
        (PROMPT, dict(energies=(("ar", 1.0),)), "energies"),
        (PROMPT, dict(violations=True), "violations"),
    ],
)
def test_bad_inputs_refused(denoiser, ids, settings, words):
    config = replace(engine_config(denoiser, 0), **settings)
    with pytest.raises(ValueError) as error:
        prompt_ids = prepare(" ".join(map(str, ids[0].tolist())), denoiser, config)
        list(iter_canvas_steps(denoiser, prompt_ids, config))
    assert words in one_line(error)
