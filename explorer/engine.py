"""The decoding loop: one denoiser pass per step, a strategy picks what to commit.

`iter_steps` is a generator of StepRecords with no side effects. `run_decode` drives it and
calls the callbacks (store writer, progress, live stream) in the spirit of diffusers'
`callback_on_step_end`; it owns the status lifecycle (completed / cancelled / failed).
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from explorer.adapters import Denoiser
from explorer.callbacks import Callback, RunStart
from explorer.config import DecodeConfig
from explorer.records import DecodeResult, StepRecord
from explorer.sampling import step_metrics
from explorer.schedule import block_bounds, tokens_per_step
from explorer.strategies import STRATEGIES, StepInput


class DecodeState:
    """The sequence being decoded: prompt followed by the generated part."""

    def __init__(self, prompt_ids: Sequence[int], gen_length: int, mask_id: int, device: torch.device) -> None:
        self.prompt_length = len(prompt_ids)
        self.mask_id = mask_id
        self.x = torch.full((1, self.prompt_length + gen_length), mask_id, dtype=torch.long, device=device)
        self.x[0, : self.prompt_length] = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)

    @property
    def generated(self) -> torch.Tensor:
        return self.x[0, self.prompt_length:]  # (G,) a view

    def masked(self) -> torch.Tensor:
        return self.generated == self.mask_id  # (G,)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def iter_steps(denoiser: Denoiser, prompt_ids: Sequence[int], config: DecodeConfig) -> Iterator[StepRecord]:
    """Yield one StepRecord per step until every generated position is committed.

    On a GPU the step runs on the device without waiting for it: the only host synchronisation
    of a step is the copy of its results to the host (`_to_host`, once per step). Which
    positions are still masked is mirrored on the host from those results, so the loop
    condition and the schedule never read a device tensor.
    """
    strategy = STRATEGIES[config.strategy]
    device = denoiser.device
    state = DecodeState(prompt_ids, config.gen_length, denoiser.mask_id, device)
    generator = make_generator(config.seed, device)
    P, step = state.prompt_length, 0
    masked_host = state.masked().cpu().numpy().copy()  # (G,) bool, kept in step with the device
    for block, (start, end) in enumerate(block_bounds(config.gen_length, config.block_size)):
        in_block = torch.zeros(config.gen_length, dtype=torch.bool, device=device)
        in_block[start:end] = True
        schedule = tokens_per_step(int(masked_host[start:end].sum()), config.steps_per_block)
        j = 0
        while masked_host[start:end].any():
            began = time.perf_counter()
            logits = denoiser.logits(state.x)[0, P:].clone()  # (G, V)
            logits[:, denoiser.mask_id] = float("-inf")  # the mask is never a proposal
            metrics = step_metrics(logits, config.temperature, generator)
            masked = state.masked()
            # Past the schedule (only adaptive strategies such as `threshold` get there, and they
            # ignore the count) one token per step is the natural default.
            scheduled = schedule[j] if j < len(schedule) else 1
            selection = strategy(StepInput(
                candidates=masked & in_block, confidence=metrics.proposal_prob,
                entropy=metrics.entropy, margin=metrics.margin, n_scheduled=scheduled,
                step_in_block=j, steps_per_block=config.steps_per_block,
                threshold=config.threshold, origin_eps=config.origin_eps, generator=generator))
            commit = selection.commit & masked & in_block
            # torch.where, not boolean indexing: indexing by a mask needs its size on the host.
            state.generated.copy_(torch.where(commit, metrics.proposal, state.generated))
            host = _to_host(commit, metrics)
            masked_before = int(masked_host.sum())
            masked_host &= ~host.commit
            yield _record(step, block, host, masked_before, time.perf_counter() - began)
            step, j = step + 1, j + 1


class _HostStep:
    """One step's per-position results on the host: two device-to-host copies in all."""

    __slots__ = ("commit", "entropy", "margin", "proposal", "proposal_prob", "top_ids", "top_probs")

    def __init__(self, ints: np.ndarray, floats: np.ndarray, k: int) -> None:
        self.top_ids = ints[:k].T  # (G, K)
        self.proposal = ints[k]
        self.commit = ints[k + 1].astype(bool)
        floats = floats.astype(np.float32)
        self.top_probs = floats[:k].T  # (G, K)
        self.proposal_prob, self.entropy, self.margin = floats[k], floats[k + 1], floats[k + 2]


def _to_host(commit: torch.Tensor, metrics) -> _HostStep:
    """Stack the step's per-position arrays on the device and copy them to the host at once.

    Floats travel as float16: (K + 3, G) = top-K probabilities, p(x̂), entropy, margin. That is
    the precision the store keeps (DESIGN section 4) and halves the transfer; the strategies
    already ranked on the device in full precision, so no decision depends on the rounding.
    float16 keeps 11 significant bits: every value to within 2^-11 (0.05%) relative error.
    Ints (token ids, the commit mask) travel as one (K + 2, G) int64 array.
    """
    k = metrics.top_ids.shape[-1]
    floats = torch.cat([metrics.top_probs.T, metrics.proposal_prob[None], metrics.entropy[None],
                        metrics.margin[None]]).to(torch.float16)
    ints = torch.cat([metrics.top_ids.T, metrics.proposal[None], commit[None].to(metrics.top_ids.dtype)])
    floats_host = floats.cpu()  # the step's one synchronisation with the device
    return _HostStep(ints.cpu().numpy(), floats_host.numpy(), k)


def _record(step: int, block: int, host: _HostStep, masked_before: int, seconds: float) -> StepRecord:
    positions = np.flatnonzero(host.commit)
    return StepRecord(
        step=step, block=block, committed=positions.astype(np.int64),
        tokens=host.proposal[positions].astype(np.int64), probs=host.proposal_prob[positions],
        top_ids=host.top_ids[positions].astype(np.int64), top_probs=host.top_probs[positions],
        argmax=host.top_ids[:, 0].astype(np.int32), confidence=np.ascontiguousarray(host.top_probs[:, 0]),
        entropy=host.entropy, margin=host.margin, masked_before=masked_before, seconds=seconds)


def run_decode(denoiser: Denoiser, prompt_ids: Sequence[int], config: DecodeConfig,
               callbacks: Sequence[Callback] = (), prompt_text: str = "") -> DecodeResult:
    """Run a whole decode, calling each callback's hooks; returns the final result.

    A callback's `should_stop()` returning True cancels the run before the next step; an
    exception in the engine or a callback ends it as failed (and is re-raised after every
    callback's `on_end` ran, so the store records it).
    """
    start = RunStart(model=denoiser.name, prompt=prompt_text, prompt_ids=list(prompt_ids),
                     config=config, mask_id=denoiser.mask_id, device=str(denoiser.device))
    for cb in callbacks:
        cb.on_start(start)
    generated = np.full(config.gen_length, denoiser.mask_id, dtype=np.int64)
    n_steps, status = 0, "completed"
    try:
        for record in iter_steps(denoiser, prompt_ids, config):
            generated[record.committed] = record.tokens
            n_steps += 1
            for cb in callbacks:
                cb.on_step(record)
            if any(cb.should_stop() for cb in callbacks):
                status = "cancelled"
                break
    except BaseException as exc:  # noqa: BLE001 - recorded as failed, then re-raised
        error = f"{type(exc).__name__}: {exc}"
        _end_all(callbacks, DecodeResult("failed", generated.tolist(), denoiser.decode(generated.tolist()),
                                         n_steps, error=error))
        raise
    result = DecodeResult(status, generated.tolist(), denoiser.decode(generated.tolist()), n_steps)
    _end_all(callbacks, result)
    return result


def _end_all(callbacks: Sequence[Callback], result: DecodeResult) -> None:
    """Every callback's on_end runs, even when an earlier one raises; the first error is re-raised."""
    first_error: BaseException | None = None
    for cb in callbacks:
        try:
            cb.on_end(result)
        except BaseException as exc:  # noqa: BLE001
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
