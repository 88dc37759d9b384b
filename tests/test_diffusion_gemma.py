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
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import transformers
from transformers.models.diffusion_gemma import generation_diffusion_gemma as tf_gen

from explorer.adapters.diffusion_gemma import (
    GemmaInputError,
    GemmaResult,
    GemmaStep,
    gemma_settings,
    iter_gemma_steps,
    load_gemma,
)
from explorer.adapters.errors import ModelLoadError
from explorer.decoding import entropy_bound as rule

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


def driven(model, ids: torch.Tensor, seed: int, **settings) -> tuple[list[GemmaStep], GemmaResult]:
    torch.manual_seed(12345)  # the driver must not depend on the global RNG when given a seed
    items = list(iter_gemma_steps(model, ids, seed=seed, **settings))
    assert all(isinstance(item, GemmaStep) for item in items[:-1]) and isinstance(items[-1], GemmaResult)
    return items[:-1], items[-1]


def run_both(model, ids, seed, strength=0.0, eos=(), switch_at=None, **settings):
    """Both runs under the same hooks; returns (generate output, drafts, its decoder calls, steps, result)."""
    bias = Bias(model, strength, eos, switch_at)
    try:
        out, drafts = reference(model, ids, seed, **settings)
        calls = bias.decoder_calls
        bias.decoder_calls = 0
        steps, result = driven(model, ids, seed, **settings)
        assert bias.decoder_calls == len(steps) == calls
    finally:
        bias.remove()
    return out, drafts, calls, steps, result


def assert_identical(out, drafts, calls, steps, result) -> None:
    assert torch.equal(result.sequences, out.sequences)
    assert torch.equal(result.tokens_per_forward, out.tokens_per_forward)
    assert len(steps) == len(drafts) == calls
    for step, draft in zip(steps, drafts):
        assert torch.equal(step.argmax, draft), (step.canvas_index, step.step_index)
    if out.sequences.shape[0] == 1:  # one row: its pass count is the number of decoder calls
        assert result.decoder_passes.tolist() == [calls]


def steps_per_canvas(steps: list[GemmaStep]) -> list[int]:
    counts: dict[int, int] = {}
    for step in steps:
        counts[step.canvas_index] = counts.get(step.canvas_index, 0) + 1
    return [counts[k] for k in sorted(counts)]


# --- identity with generate() ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_three_canvases_full_steps_identical(model, seed):
    out, drafts, calls, steps, result = run_both(model, PROMPT, seed)
    assert_identical(out, drafts, calls, steps, result)
    assert steps_per_canvas(steps) == [6, 6, 6]  # 20 new tokens -> 3 canvases of 8; never confident
    assert result.sequences.shape == (1, 5 + 3 * CANVAS)
    assert [s.temperature for s in steps[:6]] == pytest.approx([0.8, 0.4 + 0.4 * 5 / 6, 0.4 + 0.4 * 4 / 6,
                                                                 0.6, 0.4 + 0.4 * 2 / 6, 0.4 + 0.4 / 6])  # fmt: skip


@pytest.mark.parametrize("seed", [0, 3])
def test_early_stop_identical(model, seed):
    settings = dict(max_denoising_steps=8, confidence_threshold=0.5, stability_threshold=2, entropy_bound=1.0)
    out, drafts, calls, steps, result = run_both(model, PROMPT, seed, strength=6.0, **settings)
    assert_identical(out, drafts, calls, steps, result)
    per_canvas = steps_per_canvas(steps)
    assert len(per_canvas) == 3 and min(per_canvas) < 8  # the stop fired in at least one canvas
    last = [s for s in steps if s.finished_denoising.item()]
    assert last and all(s.stable.item() and s.confident.item() for s in last)
    assert all(s.steps_stable.item() >= 2 and s.mean_entropy.item() < 0.5 for s in last)


@pytest.mark.parametrize("seed", [0, 2])
def test_eos_ends_generation_and_pads_identical(model, seed):
    eos_at = 5 + CANVAS + 3  # canvas 1, its 4th position
    out, drafts, calls, steps, result = run_both(
        model, PROMPT, seed, strength=8.0, eos=((0, eos_at),), max_new_tokens=40
    )
    assert_identical(out, drafts, calls, steps, result)
    assert result.canvases == 2 < result.settings.canvases  # EOS in canvas 1 ended a 5-canvas run
    tail = result.sequences[0, eos_at:]
    assert tail[0].item() == EOS and (tail[1:] == PAD).all() and len(tail) == CANVAS - 3


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_with_one_row_finished_identical(model, seed):
    """Row 0 is peaked (stops denoising at its 2nd step) and says EOS in canvas 0, so it is padded
    afterwards while row 1 (unbiased) runs every step of every canvas. From the 4th step on, row 0's
    bias moves to other tokens: generate keeps a stopped row's draft, canvas and logits frozen, so
    its draft must not follow; the per-row pass counts differ."""
    ids = torch.cat([PROMPT, torch.tensor([[2, 9, 9, 9, 4]])])
    settings = dict(max_denoising_steps=8, confidence_threshold=0.5, stability_threshold=1, entropy_bound=1.0)
    out, drafts, calls, steps, result = run_both(model, ids, seed, (8.0, 0.0), ((0, 6),), switch_at=3, **settings)
    assert_identical(out, drafts, calls, steps, result)
    assert (result.sequences[0, 5 + CANVAS :] == PAD).all() and result.sequences[0, 6].item() == EOS
    assert steps_per_canvas(steps) == [8, 8, 8] and result.decoder_passes.tolist() == [2, 24]
    first = [s for s in steps if s.canvas_index == 0]
    assert all(torch.equal(s.argmax[0], first[1].argmax[0]) for s in first[1:])  # frozen after stopping
    assert not torch.equal(first[1].canvas_in[1], first[7].canvas_in[1])  # row 1 kept denoising


def test_global_rng_when_no_seed(model):
    """seed=None draws from the global RNG, as generate does: seeding it gives generate's run."""
    out, _ = reference(model, PROMPT, 7)
    torch.manual_seed(7)
    items = list(iter_gemma_steps(model, PROMPT, seed=None))
    assert torch.equal(items[-1].sequences, out.sequences)


def test_step_records_are_consistent(model):
    steps, result = driven(model, PROMPT, 0)
    for before, after in itertools.pairwise(steps):
        if after.canvas_index == before.canvas_index:
            assert torch.equal(after.canvas_in, before.canvas_out)
            assert torch.equal(after.noise_in, before.renoised)
            assert torch.equal(after.argmax_changed, after.argmax != before.argmax)
        else:
            assert after.noise_in.all() and after.argmax_changed.all()
    for step in steps:
        assert torch.equal(step.renoised, ~step.accepted) and step.accepted.sum() >= 1
        assert torch.equal(step.canvas_out[step.accepted], step.sampled[step.accepted])
        assert ((step.sampled_prob > 0) & (step.sampled_prob <= 1)).all()
        assert step.mean_entropy.item() == pytest.approx(step.entropy.mean().item())
    assert result.settings.max_denoising_steps == 6 and result.settings.entropy_bound == 0.5  # the checkpoint's


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
        (PROMPT, dict(max_denoising_steps=0), "out of range"),
        (PROMPT, dict(max_denoising_steps=5000), "out of range"),
        (torch.full((1, 125), 7), {}, "window of 128"),
        (PROMPT, dict(pixel_values=torch.zeros(1, 3, 4, 4)), "image inputs"),
        (torch.tensor([[2, 255, 5]]), {}, "image tokens"),
        (PROMPT, dict(t_min=0.9, t_max=0.5), "t_max"),
        (PROMPT, dict(temperature=1.0), "unknown"),
        (torch.zeros((1, 0), dtype=torch.long), {}, "non-empty"),
    ],
)
def test_bad_inputs_refused(model, ids, settings, words):
    with pytest.raises(GemmaInputError) as error:
        list(iter_gemma_steps(model, ids, seed=0, **settings))
    assert words in one_line(error)


def test_settings_come_from_the_checkpoint_then_overrides(model):
    settings = gemma_settings(model, 5)
    assert (settings.max_new_tokens, settings.max_denoising_steps, settings.entropy_bound) == (20, 6, 0.5)
    assert (settings.t_min, settings.t_max, settings.eos_token_id, settings.pad_token_id) == (0.4, 0.8, [EOS], PAD)
    overridden = gemma_settings(model, 5, max_new_tokens=9, entropy_bound=2.0)
    assert (overridden.max_new_tokens, overridden.entropy_bound, overridden.canvases) == (9, 2.0, 2)
