"""The decoding loop on the embedded model: schedules, blocks, strategies, determinism,
step records, config validation and the run lifecycle with callbacks."""

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from explorer.api import decode, prepare
from explorer.decoding.callbacks import Callback
from explorer.decoding.config import ConfigError, DecodeConfig
from explorer.decoding.engine import iter_steps, run_decode
from explorer.decoding.schedule import tokens_per_step
from explorer.decoding.strategies import STRATEGIES

PROMPT = "once upon a time"
G = 32
F16_RTOL = 1e-3  # StepRecord floats pass through float16 (rounding <= 2^-11 relative)


def run(denoiser, **settings):
    return decode(PROMPT, denoiser, **{"gen_length": G, "steps": G, **settings})


def assert_complete(out, denoiser, gen_length=G):
    """No mask left, every position unmasked once more than it was re-masked (exactly once
    without a remasking strategy; revisions of a visible token are not unmaskings), records
    consistent with the result."""
    assert out.result.status == "completed"
    assert len(out.token_ids) == gen_length
    assert denoiser.mask_id not in out.token_ids
    commits = np.bincount(np.concatenate([r.committed for r in out.steps]), minlength=gen_length)
    remasks = np.bincount(np.concatenate([r.remasked for r in out.steps]), minlength=gen_length)
    revisions = np.bincount(np.concatenate([r.committed[r.revised] for r in out.steps]), minlength=gen_length)
    assert (commits - revisions - remasks == 1).all()
    rebuilt = np.full(gen_length, -1)
    masked = gen_length
    for i, r in enumerate(out.steps):
        assert r.step == i
        assert r.masked_before == masked
        assert len(r.tokens) == len(r.committed) == r.n_committed
        # Only masked positions are committed, unless the step revised a visible token.
        assert ((rebuilt[r.committed] == -1) != r.revised).all()
        assert (rebuilt[r.committed[r.revised]] == r.previous[r.revised]).all()
        assert (rebuilt[r.remasked] == r.remasked_tokens).all()  # a re-mask takes the token there
        rebuilt[r.committed] = r.tokens
        rebuilt[r.remasked] = -1
        masked += len(r.remasked) - r.n_committed + r.n_revised
    assert rebuilt.tolist() == out.token_ids
    assert out.result.n_steps == len(out.steps)
    assert out.result.text == denoiser.decode(out.token_ids)


# ---- (a) schedules, blocks, strategies -------------------------------------------------------
@pytest.mark.parametrize("steps", [8, 32, 5])
def test_schedule_fixes_commits_per_step(denoiser, steps):
    out = run(denoiser, steps=steps)
    assert_complete(out, denoiser)
    assert [r.n_committed for r in out.steps] == tokens_per_step(G, steps)
    if steps == 8:
        assert all(r.n_committed == 4 for r in out.steps)
    assert all(r.block == 0 for r in out.steps)


def test_blocks_are_semi_autoregressive(denoiser):
    block, steps = 8, 8
    out = run(denoiser, steps=steps, block_length=block)
    assert_complete(out, denoiser)
    per_block = steps // (G // block)
    assert len(out.steps) == steps
    for j, r in enumerate(out.steps):
        b = j // per_block
        assert r.block == b
        assert r.n_committed == 4
        assert ((r.committed >= b * block) & (r.committed < (b + 1) * block)).all(), (j, r.committed)
        # everything left of the block is already written, nothing right of it is
        assert r.masked_before == G - b * block - (j % per_block) * 4


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_completes(denoiser, strategy):
    out = run(denoiser, steps=8, strategy=strategy, threshold=0.7, seed=3)
    assert_complete(out, denoiser)
    if strategy in ("low_confidence", "margin", "entropy", "random"):
        assert [r.n_committed for r in out.steps] == [4] * 8
    elif strategy == "origin":
        assert len(out.steps) <= 8  # everything left is committed on the block's last step
    else:
        assert 1 <= len(out.steps) <= G
        assert all(r.n_committed >= 1 for r in out.steps)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_with_blocks(denoiser, strategy):
    out = run(denoiser, gen_length=16, steps=8, block_length=4, strategy=strategy, temperature=0.5, seed=1)
    assert_complete(out, denoiser, 16)
    last_block = 0
    for r in out.steps:
        assert r.block >= last_block
        last_block = r.block
        assert ((r.committed // 4) == r.block).all()
    assert last_block == 3


def test_strategies_rank_by_their_score(denoiser):
    # one token per step: the committed position is the best masked position by the score
    for strategy, score in [
        ("low_confidence", lambda r: r.confidence),
        ("margin", lambda r: r.margin),
        ("entropy", lambda r: -r.entropy),
    ]:
        out = run(denoiser, gen_length=16, steps=16, strategy=strategy)
        masked = np.ones(16, dtype=bool)
        for r in out.steps:
            values = score(r).astype(np.float64)
            best = values[masked].max()
            assert values[r.committed[0]] == best, strategy
            masked[r.committed] = False


# ---- (b) determinism ---------------------------------------------------------------------------
def records_equal(a, b):
    if len(a.steps) != len(b.steps):
        return False
    return all(
        np.array_equal(x.committed, y.committed)
        and np.array_equal(x.tokens, y.tokens)
        and np.array_equal(x.confidence, y.confidence)
        and np.array_equal(x.probs, y.probs)
        and np.array_equal(x.entropy, y.entropy)
        for x, y in zip(a.steps, b.steps)
    )


@pytest.mark.parametrize("strategy", ["low_confidence", "random", "origin"])
def test_same_seed_same_run(denoiser, strategy):
    a = run(denoiser, steps=8, temperature=1.0, seed=11, strategy=strategy)
    b = run(denoiser, steps=8, temperature=1.0, seed=11, strategy=strategy)
    assert records_equal(a, b)
    assert a.token_ids == b.token_ids
    c = run(denoiser, steps=8, temperature=1.0, seed=12, strategy=strategy)
    assert c.token_ids != a.token_ids


def test_greedy_ignores_seed(denoiser):
    a = run(denoiser, steps=8, seed=1)
    b = run(denoiser, steps=8, seed=2)
    assert records_equal(a, b)


# ---- (c) step records --------------------------------------------------------------------------
def reference_probs(denoiser, prompt_ids, tokens_so_far):
    """Softmax of the model's logits on the current sequence, the mask token excluded."""
    x = torch.tensor([list(prompt_ids) + tokens_so_far])
    with torch.no_grad():
        logits = denoiser.logits(x)[0, len(prompt_ids) :].double()
    logits[:, denoiser.mask_id] = float("-inf")
    return torch.softmax(logits, dim=-1).numpy()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_step_records(denoiser, temperature):
    out = run(denoiser, gen_length=16, steps=8, temperature=temperature, seed=5)
    V = len(denoiser.tokenizer)
    current = [denoiser.mask_id] * 16
    for r in out.steps:
        for name in ("argmax", "confidence", "entropy", "margin"):
            assert getattr(r, name).shape == (16,), name
        assert ((r.confidence >= 0) & (r.confidence <= 1)).all()
        assert ((r.margin >= 0) & (r.margin <= 1)).all()
        assert (r.margin <= r.confidence + 1e-6).all()
        assert (r.entropy >= 0).all() and (r.entropy <= math.log(V) + 1e-4).all()
        assert (r.argmax != denoiser.mask_id).all()
        assert r.top_ids.shape == (r.n_committed, 3) and r.top_probs.shape == (r.n_committed, 3)
        assert (np.diff(r.top_probs, axis=1) <= 0).all()
        np.testing.assert_array_equal(r.top_probs[:, 0], r.confidence[r.committed])
        np.testing.assert_array_equal(r.top_ids[:, 0], r.argmax[r.committed])
        # the recorded probability is p(committed token), found among the top ids when there
        hit = r.top_ids == r.tokens[:, None]
        rows = hit.any(axis=1)
        np.testing.assert_array_equal(r.probs[rows], r.top_probs[hit])
        assert (r.probs <= r.confidence[r.committed] + 1e-7).all()
        if temperature == 0:
            np.testing.assert_array_equal(r.tokens, r.argmax[r.committed])
            np.testing.assert_array_equal(r.probs, r.confidence[r.committed])
        # against an independent forward pass on the sequence before this step. The engine
        # moves the per-position floats to the host as float16 (one transfer per step; the
        # store keeps float16 too), so each value is within float16's rounding (relative
        # 2^-11) of the float32 computation: rtol 1e-3 covers that, atol the float32 error.
        p = reference_probs(denoiser, out.prompt_ids, current)
        np.testing.assert_allclose(r.probs, p[r.committed, r.tokens], rtol=F16_RTOL, atol=1e-5)
        np.testing.assert_allclose(r.confidence, p.max(-1), rtol=F16_RTOL, atol=1e-5)
        top2 = np.sort(p, axis=-1)[:, -2:]
        np.testing.assert_allclose(r.margin, top2[:, 1] - top2[:, 0], rtol=F16_RTOL, atol=1e-5)
        np.testing.assert_allclose(r.entropy, -(p * np.log(np.where(p > 0, p, 1))).sum(-1), rtol=F16_RTOL, atol=1e-4)
        np.testing.assert_array_equal(r.argmax, p.argmax(-1))
        for pos, tok in zip(r.committed, r.tokens):
            current[pos] = int(tok)
    assert current == out.token_ids


def test_sampling_sometimes_departs_from_argmax(denoiser):
    out = run(denoiser, steps=8, temperature=2.0, seed=0)
    assert any((r.tokens != r.argmax[r.committed]).any() for r in out.steps)


# ---- (d) threshold ------------------------------------------------------------------------------
def test_threshold_one_is_one_token_per_step(denoiser):
    out = run(denoiser, strategy="threshold", threshold=1.0, steps=8)
    assert_complete(out, denoiser)
    assert len(out.steps) == G
    assert all(r.n_committed == 1 for r in out.steps)
    greedy = run(denoiser, strategy="low_confidence", steps=G)
    assert out.token_ids == greedy.token_ids
    assert [r.committed.tolist() for r in out.steps] == [r.committed.tolist() for r in greedy.steps]


@pytest.mark.parametrize("tau", [0.5, 0.3])
def test_low_threshold_takes_fewer_steps(denoiser, tau):
    out = run(denoiser, strategy="threshold", threshold=tau, steps=8)
    assert_complete(out, denoiser)
    assert len(out.steps) < G
    masked = np.ones(G, dtype=bool)
    for r in out.steps:
        confident = set(np.flatnonzero(masked & (r.confidence >= tau)).tolist())
        picked = set(r.committed.tolist())
        assert confident <= picked
        assert len(picked - confident) <= 1
        assert len(picked) >= 1
        if len(picked - confident) == 1:
            assert not confident
            (only,) = picked
            assert r.confidence[only] == r.confidence[masked].max()
        masked[r.committed] = False


# ---- (e) validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"gen_length": 0, "steps": 1}, "gen-length"),
        ({"gen_length": 317, "steps": 8}, "gen-length"),
        ({"gen_length": 1000, "steps": 8}, "gen-length"),
        ({"steps": 0}, "steps"),
        ({"steps": 33}, "steps"),
        ({"block_length": 5, "steps": 8}, "block-length"),
        ({"block_length": 64, "steps": 8}, "block-length"),
        ({"block_length": 0, "steps": 8}, "block-length"),
        ({"block_length": 8, "steps": 6}, "divisible"),
        ({"strategy": "greedy"}, "strategy"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"gen_length": 8.0, "steps": 8}, "gen-length"),
        ({"origin_eps": 1.0}, "origin-eps"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_errors(denoiser, settings, needle):
    config = DecodeConfig(**{"gen_length": G, "steps": 8, **settings})
    with pytest.raises(ConfigError, match=needle):
        prepare(PROMPT, denoiser, config)
    steps = []

    class Spy(Callback):
        def on_step(self, record):
            steps.append(record)

    with pytest.raises(ConfigError):
        decode(PROMPT, denoiser, config, callbacks=[Spy()])
    assert steps == []  # nothing ran


def test_valid_edge_configs(denoiser):
    prompt_ids = denoiser.encode(PROMPT)
    assert len(prompt_ids) == 4 and denoiser.context_length == 320
    for config in (
        DecodeConfig(gen_length=316, steps=316),
        DecodeConfig(gen_length=G, steps=1),
        DecodeConfig(gen_length=G, steps=G, block_length=1),
        DecodeConfig(gen_length=G, steps=4, block_length=8),
        DecodeConfig(threshold=1.0),
        DecodeConfig(temperature=0.0),
    ):
        assert prepare(PROMPT, denoiser, config) == prompt_ids


def test_prompt_errors(denoiser):
    with pytest.raises(ConfigError):
        prepare("", denoiser, DecodeConfig(gen_length=8, steps=8))
    with pytest.raises(ConfigError):
        DecodeConfig(gen_length=8, steps=8).validate(320, 320)
    with pytest.raises(ValueError):
        prepare("once upon a zebra", denoiser, DecodeConfig(gen_length=8, steps=8))


def test_one_step_commits_everything(denoiser):
    out = run(denoiser, steps=1)
    assert_complete(out, denoiser)
    assert len(out.steps) == 1 and out.steps[0].n_committed == G


# ---- (f) lifecycle ------------------------------------------------------------------------------
class Recorder(Callback):
    def __init__(self, stop_after=None, fail_at=None):
        self.stop_after, self.fail_at = stop_after, fail_at
        self.started, self.steps, self.ended = [], [], []

    def on_start(self, start):
        self.started.append(start)

    def on_step(self, record):
        self.steps.append(record)
        if self.fail_at is not None and record.step == self.fail_at:
            raise RuntimeError("boom")

    def on_end(self, result):
        self.ended.append(result)

    def should_stop(self):
        return self.stop_after is not None and len(self.steps) >= self.stop_after


def test_cancel_after_three_steps(denoiser):
    cb = Recorder(stop_after=3)
    config = DecodeConfig(gen_length=G, steps=8)
    result = run_decode(denoiser, denoiser.encode(PROMPT), config, [cb], prompt_text=PROMPT)
    assert result.status == "cancelled"
    assert result.n_steps == 3
    assert len(cb.steps) == 3 and len(cb.started) == 1
    assert cb.ended == [result]
    ids = np.array(result.token_ids)
    assert (ids == denoiser.mask_id).sum() == G - 12  # 3 steps of 4
    for r in cb.steps:
        assert (ids[r.committed] == r.tokens).all()


def test_failing_callback(denoiser):
    cb = Recorder(fail_at=2)
    other = Recorder()
    config = DecodeConfig(gen_length=G, steps=8)
    with pytest.raises(RuntimeError, match="boom"):
        run_decode(denoiser, denoiser.encode(PROMPT), config, [cb, other])
    assert len(cb.ended) == 1 and len(other.ended) == 1
    result = cb.ended[0]
    assert result.status == "failed"
    assert result.error == "RuntimeError: boom"
    assert result.n_steps == 3
    assert other.ended[0] is result
    assert len(other.steps) == 2  # the failing callback came first on the third step


def test_completed_run_calls_every_hook(denoiser):
    cb = Recorder()
    config = DecodeConfig(gen_length=16, steps=4)
    result = run_decode(denoiser, denoiser.encode(PROMPT), config, [cb], prompt_text=PROMPT)
    assert result.status == "completed" and result.n_steps == 4 and result.error is None
    # The run starts with the model-dependent default resolved (violations on for the embedded model).
    assert cb.started[0].config == replace(config, violations=True) and cb.started[0].prompt == PROMPT
    assert cb.started[0].mask_id == denoiser.mask_id
    assert len(cb.steps) == 4 and cb.ended == [result]


def test_iter_steps_without_callbacks(denoiser):
    records = list(iter_steps(denoiser, denoiser.encode(PROMPT), DecodeConfig(gen_length=16, steps=4)))
    assert [r.n_committed for r in records] == [4, 4, 4, 4]
    assert sorted(np.concatenate([r.committed for r in records]).tolist()) == list(range(16))


# ---- engine guards, with a stub denoiser and a rogue strategy ------------------------------------
class MaskLovingDenoiser:
    """Puts almost all probability on the mask token: the engine must never propose it."""

    name, mask_id, context_length, device = "stub", 1, 64, torch.device("cpu")

    def __init__(self, vocab_size=6):
        self.vocab_size = vocab_size

    def logits(self, ids):
        B, L = ids.shape
        logits = torch.arange(L * self.vocab_size, dtype=torch.float32).reshape(1, L, self.vocab_size) % 5
        logits = logits.expand(B, L, self.vocab_size).clone()
        logits[..., self.mask_id] = 50.0
        return logits

    def encode(self, text):
        return [2] * len(text.split())

    def decode(self, ids):
        return " ".join(map(str, ids))

    def token_text(self, token_id):
        return str(token_id)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mask_is_never_proposed(temperature):
    stub = MaskLovingDenoiser()
    config = DecodeConfig(gen_length=8, steps=4, temperature=temperature)
    prompt_ids = prepare("a b", stub, config)
    # bounded: were the mask ever written, its position would stay masked and the loop go on
    records = list(itertools.islice(iter_steps(stub, prompt_ids, config), 20))
    assert len(records) == 4
    assert sorted(np.concatenate([r.committed for r in records]).tolist()) == list(range(8))
    for r in records:
        assert (r.tokens != stub.mask_id).all()
        assert (r.argmax != stub.mask_id).all()
        assert (r.top_ids != stub.mask_id).all()
        # probabilities are renormalised over the other tokens: the mask's share is gone
        assert (r.confidence > 0.3).all()


def test_engine_commits_only_masked_positions_of_the_block(denoiser, monkeypatch):
    from explorer.decoding.strategies import Selection, StrategySpec

    def rogue(s):
        # everything that is NOT a candidate, plus the leftmost candidate
        commit = ~s.candidates
        commit[s.candidates.nonzero()[0]] = True
        return Selection(commit)

    monkeypatch.setitem(STRATEGIES, "rogue", StrategySpec("rogue", rogue, "commits what it must not", "none"))
    out = run(denoiser, steps=4, block_length=8, strategy="rogue")
    assert_complete(out, denoiser)
    assert [r.committed.tolist() for r in out.steps] == [[i] for i in range(G)]
    assert [r.block for r in out.steps] == [i // 8 for i in range(G)]


# ---- (g) one host synchronisation per step ---------------------------------------------------
# Reading a device tensor on the host (bool(), int(), .item(), .tolist(), nonzero(), numpy
# conversion) waits for the GPU. A step may do that once: the copy of its results (`_to_host`,
# two .cpu() calls: float16 metrics, then int ids and the commit mask). On the CPU there is no
# device to wait for, so the test counts the calls that would wait on a GPU. (`origin` calls
# float() on its time grid, a CPU tensor on every device: not a read of the device.)
HOST_READS = ("__bool__", "__int__", "__index__", "item", "tolist", "nonzero", "__array__", "cpu")


@pytest.mark.parametrize("strategy", sorted(name for name, spec in STRATEGIES.items() if spec.gate is None))
def test_a_step_reads_the_device_once(denoiser, monkeypatch, strategy):
    # Violations, energies, Prophet and the gated strategies read small results on the host by
    # design (they need the committed set, or the probe's verdict); a plain step must not.
    config = DecodeConfig(
        gen_length=16,
        steps=8,
        block_length=8,
        strategy=strategy,
        threshold=0.5,
        temperature=0.5,
        seed=1,
        violations=False,
    )
    steps = iter_steps(denoiser, prepare(PROMPT, denoiser, config), config)
    next(steps)  # setting up the run may read the device (the initial mask); steps may not
    counts = {name: 0 for name in HOST_READS}

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    rest = list(steps)
    monkeypatch.undo()
    assert rest
    assert counts.pop("cpu") == 2 * len(rest)  # the one transfer per step (floats, ints)
    assert counts == {name: 0 for name in counts}, counts
