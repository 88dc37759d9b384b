"""explorer.recording: a generate() call run in the user's own code, stored as a run.

DiffusionGemma: a tiny random model (bench/bench_gemma_gpu.py's TINY shape, built here: no download)
runs transformers' own `generate(streamer=RecordingStreamer(...))`; the stored run must hold one step
per decoder pass, the draft generate streamed at each, and generate's output as its final state.
A forward hook on the LM head biases the logits (a fixed token per position: the canvas converges and
the stable-and-confident stop fires) and puts EOS at chosen absolute positions, as
tests/test_diffusion_gemma.py does. Dream: hand-made histories (the tiny Dream the tests ship has no
`diffusion_generate`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

transformers = pytest.importorskip("transformers")
from transformers.models.diffusion_gemma import generation_diffusion_gemma as tf_gen

import explorer
from explorer.recording import RecordingStreamer, record_dream_history
from explorer.store.database import TrajectoryStore


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gemma_gpu", ROOT / "bench" / "bench_gemma_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()
TINY = BENCH.TINY
VOCAB, CANVAS = TINY["text"]["vocab_size"], TINY["canvas_length"]
EOS, PAD = TINY["text"]["eos_token_id"], TINY["text"]["pad_token_id"]
PROMPT = torch.tensor([[2, 5, 6, 7, 8]])
CANVASES, STEPS = 3, 4


@pytest.fixture(scope="module")
def model():
    config = transformers.DiffusionGemmaConfig(
        text_config=dict(TINY["text"]),
        vision_config=dict(BENCH.SMALLEST_VISION),
        **{k: TINY[k] for k in ("canvas_length", "image_token_id", "boi_token_id", "eoi_token_id")},
        tie_word_embeddings=TINY["tie_word_embeddings"],
    )
    torch.manual_seed(0)
    model = transformers.DiffusionGemmaForBlockDiffusion(config).eval()
    model.generation_config = tf_gen.DiffusionGemmaGenerationConfig(
        max_new_tokens=CANVASES * CANVAS,
        max_denoising_steps=STEPS,
        sampler_config=tf_gen.EntropyBoundSamplerConfig(entropy_bound=0.5),
        t_min=0.4,
        t_max=0.8,
        stability_threshold=1,
        confidence_threshold=0.05,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return model


class Hooks:
    """Counts decoder passes; optionally a fixed per-position bias (convergence) and EOS at absolute positions."""

    def __init__(self, model, strength: float = 0.0, eos: tuple[int, ...] = (), raise_at: int | None = None):
        self.strength, self.eos, self.raise_at = strength, eos, raise_at
        self.positions, self.passes = None, 0
        self.handles = [
            model.model.decoder.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.lm_head.register_forward_hook(self._bias),
        ]

    def _pre(self, module, args, kwargs):
        self.positions = kwargs["decoder_position_ids"][0]
        self.passes += 1
        if self.raise_at is not None and self.passes == self.raise_at:
            raise RuntimeError("the user's model broke")

    def _bias(self, module, args, output):
        if self.positions is None or output.shape[1] != CANVAS:
            return output
        output = output.clone()
        tokens = (self.positions.long() * 37 + 11) % (VOCAB - 10) + 5  # never EOS / PAD
        output[:, torch.arange(CANVAS), tokens] += self.strength
        for position in self.eos:
            hit = (self.positions == position).nonzero()
            if len(hit):
                output[:, int(hit[0]), EOS] += 60.0
        return output

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


class Capturing(RecordingStreamer):
    """Keeps the drafts generate streamed (the argmax canvas, or the argmax of the logits)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drafts: list[np.ndarray] = []
        self.finals: list[np.ndarray] = []

    def put(self, value):
        if self.drafts:
            self.finals.append(value[0].numpy().copy())
        super().put(value)

    def put_draft(self, value=None, logits=None):
        draft = logits.argmax(-1) if logits is not None else value
        self.drafts.append(draft[0].numpy().copy())
        super().put_draft(value=value, logits=logits)


@pytest.fixture
def store(tmp_path) -> TrajectoryStore:
    return TrajectoryStore(f"sqlite:///{tmp_path / 'runs.db'}")


def record(model, store, seed=0, hooks=None, **kwargs):
    streamer = Capturing(store, model, **kwargs)
    torch.manual_seed(seed)
    out = model.generate(PROMPT, streamer=streamer)
    return streamer, out


def check_run(store, streamer, out, passes: int, with_logits: bool) -> None:
    run = store.get_run(streamer.run_id)
    arrays = store.read_arrays(streamer.run_id)
    G = CANVASES * CANVAS
    generated = out.sequences[0, PROMPT.shape[1] :].numpy()
    assert run["status"] == "completed" and run["mask_id"] == VOCAB and run["gen_length"] == G
    assert run["strategy"] == "eb" and run["config"]["eb_gamma"] == 0.5 and run["config"]["block_length"] == CANVAS
    assert run["prompt_ids"] == PROMPT[0].tolist()
    assert arrays.n_steps == passes == len(streamer.drafts) == run["n_steps"]
    canvas_of_step = arrays.blocks
    for s, draft in enumerate(streamer.drafts):
        start = int(canvas_of_step[s]) * CANVAS
        inside = np.zeros(G, bool)
        inside[start : start + CANVAS] = True
        np.testing.assert_array_equal(arrays.argmax[inside, s], draft)
        assert (arrays.argmax[~inside, s] == -1).all()
        assert np.isnan(arrays.entropy[~inside, s]).all() and np.isnan(arrays.confidence[~inside, s]).all()
        assert np.isfinite(arrays.entropy[inside, s]).all() == with_logits
        assert np.isnan(arrays.entropy[inside, s]).all() == (not with_logits)
    # commits only at each canvas's last step, every position of the canvas, the final canvas's tokens
    canvases = len(streamer.finals)
    last_steps = [int(np.flatnonzero(canvas_of_step == c)[-1]) for c in range(canvases)]
    assert np.flatnonzero(arrays.n_committed).tolist() == last_steps
    assert (arrays.n_committed[last_steps] == CANVAS).all()
    final = arrays.tokens[:, -1]
    np.testing.assert_array_equal(final[: generated.size], generated)
    assert (final[generated.size :] == VOCAB).all()  # canvases never run stay noise
    assert run["final_token_ids"] == final.tolist()
    probs = arrays.commit_prob[: generated.size]
    assert (probs > 0).all() if with_logits else np.isnan(probs).all()  # NaN: unknown (stored as NULL)
    for extra in arrays.extras:
        assert extra.cost.calls == 1 and extra.cost.sequences == 1 and extra.canvas is None


@pytest.mark.parametrize("with_logits", [True, False])
@pytest.mark.parametrize("seed", [0, 3])
def test_full_canvases_recorded_as_generate_ran(model, store, with_logits, seed):
    with Hooks(model) as hooks:
        streamer, out = record(model, store, seed, with_logits=with_logits)
    assert len(streamer.finals) == CANVASES
    assert hooks.passes == CANVASES * STEPS  # a random model never stops early
    check_run(store, streamer, out, hooks.passes, with_logits)


@pytest.mark.parametrize("with_logits", [True, False])
def test_early_stop_and_eos_across_canvases(model, store, with_logits):
    P = PROMPT.shape[1]
    with Hooks(model, strength=40.0, eos=(P + CANVAS + 3,)) as hooks:  # EOS in the second canvas
        streamer, out = record(model, store, 1, with_logits=with_logits)
    assert hooks.passes < 2 * STEPS  # converged: fewer steps than the most
    assert len(streamer.finals) == 2 and out.sequences.shape[1] == P + 2 * CANVAS  # the third canvas never ran
    generated = out.sequences[0, P:]
    assert generated[CANVAS + 3] == EOS and (generated[CANVAS + 4 :] == PAD).all()
    check_run(store, streamer, out, hooks.passes, with_logits)
    arrays = store.read_arrays(streamer.run_id)
    assert (arrays.argmax[CANVAS + 4 : 2 * CANVAS, -1] != PAD).all()  # the draft had no padding; the commit has


def test_batch_of_two_refused_nothing_stored(model, store):
    streamer = RecordingStreamer(store, model)
    with pytest.raises(ValueError, match="batch of 2 rows") as error:
        model.generate(PROMPT.repeat(2, 1), streamer=streamer)
    assert "\n" not in str(error.value)
    assert store.count_runs() == 0 and streamer.run_id is None


def test_failing_generate_leaves_the_run_failed(model, store):
    with Hooks(model, raise_at=6), pytest.raises(RuntimeError, match="broke"):
        with RecordingStreamer(store, model) as streamer:
            torch.manual_seed(0)
            model.generate(PROMPT, streamer=streamer)
    run = store.get_run(streamer.run_id)
    assert run["status"] == "failed" and "the user's model broke" in run["error"]
    assert run["n_steps"] == 5  # the passes that ran
    arrays = store.read_arrays(streamer.run_id)
    assert arrays.n_committed.tolist() == [0, 0, 0, CANVAS, 0]  # the first canvas ended at its 4th step


def test_one_call_per_streamer_and_more_canvases_than_planned(model, store):
    with Hooks(model):
        streamer, _ = record(model, store)
        with pytest.raises(ValueError, match="one generate"):
            model.generate(PROMPT, streamer=streamer)
        short = RecordingStreamer(store, model, max_new_tokens=CANVAS)  # generate makes 3 canvases
        with pytest.warns(UserWarning, match="more than the 1 canvases"):
            out = model.generate(PROMPT, streamer=short)
    assert out.sequences.shape[1] == PROMPT.shape[1] + CANVASES * CANVAS  # generate was not disturbed
    run = store.get_run(short.run_id)
    assert run["status"] == "failed" and "max_new_tokens" in run["error"] and run["n_steps"] == STEPS


def test_without_a_model_the_sizes_are_required(store):
    with pytest.raises(ValueError, match="canvas_length= and vocab_size="):
        RecordingStreamer(store)
    streamer = RecordingStreamer(store, canvas_length=4, vocab_size=10, max_new_tokens=8, with_logits=False)
    streamer.put(torch.tensor([[1, 2]]))
    streamer.put_draft(value=torch.tensor([[3, 4, 5, 6]]))
    streamer.put(torch.tensor([[3, 4, 5, 0]]))
    streamer.end()
    arrays = store.read_arrays(streamer.run_id)
    assert arrays.tokens[:, -1].tolist() == [3, 4, 5, 0, 10, 10, 10, 10]
    assert store.get_run(streamer.run_id)["final_text"] == ""


def test_exported_from_the_package():
    assert explorer.RecordingStreamer is RecordingStreamer
    assert explorer.record_dream_history is record_dream_history


# ---- Dream history ------------------------------------------------------------------------------
MASK = 99


def dream_output(*states: list[int]) -> SimpleNamespace:
    history = [torch.tensor([state]) for state in states]
    return SimpleNamespace(sequences=history[-1].clone(), history=history)


def test_dream_history_commits_remasks_and_revisions(store):
    prompt = [7, 8]
    out = dream_output(
        prompt + [MASK, 11, MASK, MASK],
        prompt + [12, 11, MASK, 13],
        prompt + [12, MASK, 14, 13],  # 11 re-masked
        prompt + [12, 15, 14, 16],  # 13 revised into 16
    )
    run_id = record_dream_history(store, out, torch.tensor([prompt]), mask_id=MASK, temperature=0.2, strategy="entropy")
    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["gen_length"] == 4 and run["n_steps"] == 4
    assert run["strategy"] == "entropy" and run["config"]["temperature"] == 0.2 and run["config"]["steps"] == 4
    assert run["final_token_ids"] == [12, 15, 14, 16] and run["mask_id"] == MASK
    arrays = store.read_arrays(run_id)
    np.testing.assert_array_equal(arrays.tokens.T, [[MASK, 11, MASK, MASK], [12, 11, MASK, 13], [12, MASK, 14, 13],
                                                    [12, 15, 14, 16]])  # fmt: skip
    assert arrays.remasks.position.tolist() == [1] and arrays.remasks.step.tolist() == [2]
    assert arrays.commits.revised.tolist() == [False, False, False, False, False, True]
    assert (arrays.argmax == -1).all() and np.isnan(arrays.entropy).all() and np.isnan(arrays.commit_prob).all()
    assert (arrays.commit_top_ids == -1).all()
    assert store.step_summaries(run_id)[3]["revised"] == [False, True]


@pytest.mark.parametrize(
    ("output", "prompt", "words"),
    [
        (SimpleNamespace(sequences=torch.tensor([[7, 1]]), history=None), [7], "output_history=True"),
        (SimpleNamespace(sequences=torch.tensor([[7, 1]])), [7], "return_dict_in_generate=True"),
        (SimpleNamespace(sequences=torch.tensor([[7, 1], [7, 2]]), history=[torch.tensor([[7, 1], [7, 2]])]), [7],
         "batch of 2"),
        (dream_output([7, MASK, 1], [7, 1]), [7], "shapes must agree"),
        (dream_output([7, 1, MASK], [7, 1, 2]), [6], "does not start with the prompt"),
        (SimpleNamespace(sequences=torch.tensor([[7, 1, 3]]), history=[torch.tensor([[7, 1, 2]])]), [7],
         "differs from output.sequences"),
    ],
)  # fmt: skip
def test_dream_history_refused(store, output, prompt, words):
    with pytest.raises(ValueError, match=words) as error:
        record_dream_history(store, output, torch.tensor([prompt]), mask_id=MASK)
    assert "\n" not in str(error.value)
    assert store.count_runs() == 0


def test_dream_history_unknown_strategy_refused(store):
    with pytest.raises(ValueError, match="unknown strategy 'dream_alg'"):
        record_dream_history(store, dream_output([7, 1]), [7], mask_id=MASK, strategy="dream_alg")
    assert store.count_runs() == 0


@pytest.mark.parametrize("with_logits", [True, False])
def test_recorded_runs_on_every_backend(model, db_url, with_logits):
    """Unknown probabilities and alternatives must be storable everywhere (no NaN in events or their JSON)."""
    store = TrajectoryStore(db_url)
    with Hooks(model):
        streamer, out = record(model, store, 2, with_logits=with_logits)
    arrays = store.read_arrays(streamer.run_id)
    np.testing.assert_array_equal(arrays.tokens[:, -1], out.sequences[0, PROMPT.shape[1] :].numpy())
    run_id = record_dream_history(store, dream_output([7, MASK, MASK], [7, 3, MASK], [7, 3, 4]), [7], mask_id=MASK)
    assert store.read_arrays(run_id).tokens[:, -1].tolist() == [3, 4]
    assert [store.get_run(i)["status"] for i in (streamer.run_id, run_id)] == ["completed", "completed"]
