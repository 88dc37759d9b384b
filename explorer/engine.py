"""The decoding loop: one denoiser pass per step, a strategy picks what to commit.

`iter_steps` is a generator of StepRecords with no side effects. `run_decode` drives it and
calls the callbacks (store writer, progress, live stream) in the spirit of diffusers'
`callback_on_step_end`; it owns the status lifecycle (completed / cancelled / failed).
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch

from explorer.adapters import Denoiser
from explorer.ar_scorers import ARScorer
from explorer.callbacks import Callback, RunStart
from explorer.config import DecodeConfig
from explorer.energies import Candidates, choose, draw, random_orders
from explorer.records import DecodeResult, StepRecord
from explorer.sampling import step_metrics
from explorer.schedule import block_bounds, tokens_per_step
from explorer.strategies import STRATEGIES, StepInput, prophet_early_commit
from explorer.violations import measure


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


def resolve_config(config: DecodeConfig, denoiser: Denoiser) -> DecodeConfig:
    """Fill the settings whose default depends on the model (violations: on for the embedded one)."""
    if config.violations is None:
        config = replace(config, violations=bool(getattr(denoiser, "violations_default", False)))
    return config


class ModelPass:
    """Every denoiser forward of a run goes through here: CFG, the mask logit, counting.

    With classifier-free guidance (w > 0) each sequence runs twice, as the prompt-masked copy
    gives the unconditional logits: l = l_u + (w + 1)(l_c - l_u) (LLaDA)."""

    # Bytes of temporaries one extra-pass chunk may hold: ~10 bytes per logit (the model's
    # (B, L, V) output, its float copy, the guided combination), so a few rows of an 8B
    # model's 126k vocabulary at a time and every row of the embedded model's.
    CHUNK_BYTES = 2**32

    def __init__(self, denoiser: Denoiser, prompt_length: int, cfg_scale: float) -> None:
        self.denoiser, self.P, self.w = denoiser, prompt_length, cfg_scale
        self.sequences = 0  # sequence forwards run so far (a batch of n counts n)
        self.vocab: int | None = None  # known after the first pass (the step's own)

    def _guided(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, G, V) logits of the generated positions (with CFG when w > 0)."""
        B = ids.shape[0]
        self.sequences += B * (2 if self.w > 0 else 1)
        if self.w <= 0:
            out = self.denoiser.logits(ids)[:, self.P:]
        else:
            uncond = ids.clone()
            uncond[:, : self.P] = self.denoiser.mask_id
            both = self.denoiser.logits(torch.cat([ids, uncond]))[:, self.P:]  # (2B, G, V)
            out = both[B:] + (self.w + 1) * (both[:B] - both[B:])
        self.vocab = out.shape[-1]
        return out

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, G, V) logits of the generated positions, the mask never a proposal."""
        out = self._guided(ids).clone()
        out[..., self.denoiser.mask_id] = float("-inf")
        return out

    def log_probs(self, ids: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(B, L), (B, m) -> (B, m, V) log-probabilities at generated positions `cols`, from
        batched forward calls of as many rows as `CHUNK_BYTES` allows."""
        L, copies = ids.shape[1], 2 if self.w > 0 else 1
        per_row = 10 * L * (self.vocab or 1) * copies
        chunk = max(1, min(256, self.CHUNK_BYTES // per_row)) if self.vocab else 1
        out = []
        for lo in range(0, ids.shape[0], chunk):
            logits = self._guided(ids[lo:lo + chunk])  # (b, G, V)
            # gather makes a new (b, m, V) tensor: the mask column is set on it, not on the model's.
            picked = logits.gather(1, cols[lo:lo + chunk, :, None].expand(-1, -1, logits.shape[-1])).float()
            picked[..., self.denoiser.mask_id] = float("-inf")
            out.append(torch.log_softmax(picked, dim=-1))
        return torch.cat(out)


@torch.no_grad()
def iter_steps(denoiser: Denoiser, prompt_ids: Sequence[int], config: DecodeConfig,
               ar_scorer: ARScorer | None = None) -> Iterator[StepRecord]:
    """Yield one StepRecord per step until every generated position is committed.

    On a GPU a plain step runs on the device without waiting for it: its only host
    synchronisation is the copy of its results to the host (`_to_host`, once per step). Which
    positions are still masked is mirrored on the host from those results, so the loop
    condition and the schedule never read a device tensor. Energies, violations and Prophet's
    check read small results on the host as well (they need the committed set).
    """
    config = resolve_config(config, denoiser)
    strategy = STRATEGIES[config.strategy]
    device = denoiser.device
    state = DecodeState(prompt_ids, config.gen_length, denoiser.mask_id, device)
    model = ModelPass(denoiser, state.prompt_length, config.cfg_scale)
    generator = make_generator(config.seed, device)
    order_generator = torch.Generator().manual_seed(config.seed ^ 0x5EED)  # Inv-E orders, on the host
    G, step = config.gen_length, 0
    masked_host = state.masked().cpu().numpy().copy()  # (G,) bool, kept in step with the device
    commit_conf = torch.zeros(G, dtype=torch.float32, device=device)  # p(token) at its last commit
    for block, (start, end) in enumerate(block_bounds(G, config.block_size)):
        in_block = torch.zeros(G, dtype=torch.bool, device=device)
        in_block[start:end] = True
        schedule = tokens_per_step(int(masked_host[start:end].sum()), config.steps_per_block)
        j = 0
        while masked_host[start:end].any():
            began = time.perf_counter()
            passes_before = model.sequences
            x_before = state.x.clone() if config.violations else None
            logits = model.logits(state.x)[0]  # (G, V)
            metrics = step_metrics(logits, config.temperature, generator)
            forward_seconds = _synced_seconds(began, device) if config.violations else None
            masked = state.masked()
            extras: dict = {}
            commit, remask = _select(strategy, config, metrics, logits, masked, in_block, commit_conf,
                                     schedule, j, step, generator, extras)
            early = "prophet" in extras and extras["prophet"]["early_commit"]
            tokens = metrics.argmax if early else metrics.proposal  # Prophet fills with the argmax
            ar_passes = 0
            if config.energies and not early and _in_window(config, int(masked_host.sum()) / G):
                tokens, ar_passes = _energy_stage(state, model, metrics, commit, masked, config,
                                                  ar_scorer, generator, order_generator, extras)
            before, conf_before = state.generated.clone(), commit_conf  # what a re-mask takes away
            # torch.where, not boolean indexing: indexing by a mask needs its size on the host.
            state.generated.copy_(torch.where(commit, tokens, state.generated))
            token_prob = metrics.log_p.gather(-1, tokens[:, None]).squeeze(-1).exp()  # (G,)
            commit_conf = torch.where(commit, token_prob, commit_conf)
            if remask is not None:
                state.generated.copy_(torch.where(remask, torch.full_like(tokens, denoiser.mask_id),
                                                  state.generated))
            host = _to_host(commit, remask, tokens, token_prob, metrics, before, conf_before)
            masked_before = int(masked_host.sum())
            masked_host &= ~host.commit
            masked_host |= host.remask
            if config.violations and host.commit.sum() >= 2:
                _violation_stage(model, x_before, state.prompt_length, host, metrics.log_p, config,
                                 forward_seconds, extras)
            passes = model.sequences - passes_before + ar_passes
            yield _record(step, block, host, masked_before, time.perf_counter() - began, passes, extras)
            step, j = step + 1, j + 1


def _select(strategy, config: DecodeConfig, metrics, logits: torch.Tensor, masked: torch.Tensor,
            in_block: torch.Tensor, commit_conf: torch.Tensor, schedule: list[int], j: int, step: int,
            generator: torch.Generator, extras: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The step's commit set (masked positions of the block, or every mask on a Prophet early
    commit) and re-mask set (committed positions of the block), from the strategy."""
    if config.prophet and _prophet_fires(logits, masked, step, config.steps, extras):
        return masked.clone(), None  # fill every remaining mask, every block
    selection = strategy(StepInput(
        candidates=masked & in_block, confidence=metrics.proposal_prob, entropy=metrics.entropy,
        margin=metrics.margin, n_scheduled=schedule[j] if j < len(schedule) else 1,  # past it: adaptive rules
        step_in_block=j, steps_per_block=config.steps_per_block, threshold=config.threshold,
        origin_eps=config.origin_eps, generator=generator, committed=~masked & in_block,
        commit_confidence=commit_conf, n_later=sum(schedule[j + 1:]), factor=config.factor,
        eb_gamma=config.eb_gamma))
    commit = selection.commit & masked & in_block
    remask = None if selection.remask is None else selection.remask & ~masked & in_block
    return commit, remask


def _synced_seconds(began: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def _in_window(config: DecodeConfig, masked_fraction: float) -> bool:
    low, high = config.energy_window
    return low <= masked_fraction <= high


def _prophet_fires(logits: torch.Tensor, masked: torch.Tensor, step: int, total_steps: int, extras: dict) -> bool:
    """Prophet: the mean top-1 minus top-2 logit gap over the still-masked positions."""
    top2 = logits.topk(2, dim=-1).values  # (G, 2)
    gaps = (top2[:, 0] - top2[:, 1]).nan_to_num(posinf=1e4)
    n = masked.sum()
    mean_gap = float((gaps * masked).sum() / n.clamp_min(1))
    fires = prophet_early_commit(mean_gap, step, total_steps)
    extras["prophet"] = {"mean_gap": round(mean_gap, 4), "early_commit": fires}
    return fires


def _energy_stage(state: DecodeState, model: ModelPass, metrics, commit: torch.Tensor, masked: torch.Tensor,
                  config: DecodeConfig, ar_scorer: ARScorer | None, generator: torch.Generator,
                  order_generator: torch.Generator, extras: dict) -> tuple[torch.Tensor, int]:
    """Draw k candidates, keep one by importance sampling; return the step's tokens and AR passes."""
    positions = torch.nonzero(commit).flatten()  # (n,) ascending
    if positions.numel() == 0:
        return metrics.proposal, 0
    chain_rows = config.energy_candidates * config.energy_orders * (positions.numel() - 1)
    if any(name != "ar" for name, _ in config.energies) and chain_rows > config.energy_max_sequences:
        extras["energy"] = {"skipped": f"{positions.numel()} tokens at once: the chain would need {chain_rows} "
                                       f"sequences, over energy_max_sequences = {config.energy_max_sequences}"}
        return metrics.proposal, 0
    sequences_before = model.sequences
    temperature = config.temperature if config.temperature > 0 else 1.0
    # The proposal: the marginals at the run's temperature (1 for greedy runs, whose point
    # mass would make every candidate the same).
    log_q = metrics.log_p if temperature == 1.0 else torch.log_softmax(metrics.log_p / temperature, -1)  # (G, V)
    cands = Candidates(
        x=state.x, prompt_length=state.prompt_length, masked=masked, positions=positions,
        tokens=draw(log_q, masked, state.generated, config.energy_candidates, generator),
        log_q=log_q, log_p=metrics.log_p, log_probs=model.log_probs,
        orders=random_orders(positions.numel(), config.energy_orders, order_generator, positions.device),
        ar_log_probs=ar_scorer.log_probs if ar_scorer is not None else None)
    choice = choose(cands, dict(config.energies), config.energy_tau, generator)
    extras["energy"] = {**choice.to_json(), "positions": positions.tolist()}
    extras["energy"]["passes"]["denoiser"] = model.sequences - sequences_before  # x2 with CFG
    return torch.where(commit, cands.tokens[choice.chosen], metrics.proposal), choice.passes["ar"]


def _violation_stage(model: ModelPass, x_before: torch.Tensor, prompt_length: int, host, log_p: torch.Tensor,
                     config: DecodeConfig, forward_seconds: float, extras: dict) -> None:
    began = time.perf_counter()
    committed = np.flatnonzero(host.commit)
    result = measure(model.log_probs, x_before, prompt_length, committed, host.tokens, log_p,
                     host.proposal_prob, config.violation_cap)
    extras["violations"] = result.to_json(len(committed), time.perf_counter() - began)
    extras["violations"]["forward_seconds"] = round(forward_seconds, 6)


class _HostStep:
    """One step's per-position results on the host: two device-to-host copies in all."""

    __slots__ = ("before", "commit", "conf_before", "entropy", "margin", "proposal_prob", "remask", "tokens",
                 "top_ids", "top_probs")

    def __init__(self, ints: np.ndarray, floats: np.ndarray, k: int) -> None:
        self.top_ids = ints[:k].T  # (G, K)
        self.tokens = ints[k]  # the token a commit writes at each position (x̂ or the energy's pick)
        self.commit = ints[k + 1].astype(bool)
        self.remask = ints[k + 2].astype(bool)
        self.before = ints[k + 3]  # the generated part before this step
        self.conf_before = floats[k + 3].astype(np.float32)  # p(token) at each position's last commit
        floats = floats.astype(np.float32)
        self.top_probs = floats[:k].T  # (G, K)
        self.proposal_prob, self.entropy, self.margin = floats[k], floats[k + 1], floats[k + 2]


def _to_host(commit: torch.Tensor, remask: torch.Tensor | None, tokens: torch.Tensor, token_prob: torch.Tensor,
             metrics, before: torch.Tensor, conf_before: torch.Tensor) -> _HostStep:
    """Stack the step's per-position arrays on the device and copy them to the host at once.

    Floats travel as float16: (K + 4, G) = top-K probabilities, p(token), entropy, margin, the
    confidence of each position's last commit (for re-mask events). That is
    the precision the store keeps (DESIGN section 4) and halves the transfer; the strategies
    already ranked on the device in full precision, so no decision depends on the rounding.
    float16 keeps 11 significant bits: every value to within 2^-11 (0.05%) relative error.
    Ints (token ids, the commit and re-mask masks, the previous tokens) travel as one (K + 4, G)
    int64 array.
    """
    k = metrics.top_ids.shape[-1]
    floats = torch.cat([metrics.top_probs.T, token_prob[None], metrics.entropy[None],
                        metrics.margin[None], conf_before[None]]).to(torch.float16)
    remask = torch.zeros_like(commit) if remask is None else remask
    as_int = metrics.top_ids.dtype
    ints = torch.cat([metrics.top_ids.T, tokens[None], commit[None].to(as_int), remask[None].to(as_int),
                      before[None].to(as_int)])
    floats_host = floats.cpu()  # the step's one synchronisation with the device
    return _HostStep(ints.cpu().numpy(), floats_host.numpy(), k)


def _record(step: int, block: int, host: _HostStep, masked_before: int, seconds: float, passes: int,
            extras: dict) -> StepRecord:
    positions = np.flatnonzero(host.commit)
    return StepRecord(
        step=step, block=block, committed=positions.astype(np.int64),
        tokens=host.tokens[positions].astype(np.int64), probs=host.proposal_prob[positions],
        top_ids=host.top_ids[positions].astype(np.int64), top_probs=host.top_probs[positions],
        argmax=host.top_ids[:, 0].astype(np.int32), confidence=np.ascontiguousarray(host.top_probs[:, 0]),
        entropy=host.entropy, margin=host.margin, masked_before=masked_before, seconds=seconds,
        forward_passes=passes, remasked=(remasked := np.flatnonzero(host.remask).astype(np.int64)),
        remasked_tokens=host.before[remasked].astype(np.int64), remasked_probs=host.conf_before[remasked],
        extras=extras)


def run_decode(denoiser: Denoiser, prompt_ids: Sequence[int], config: DecodeConfig,
               callbacks: Sequence[Callback] = (), prompt_text: str = "",
               ar_scorer: ARScorer | None = None) -> DecodeResult:
    """Run a whole decode, calling each callback's hooks; returns the final result.

    A callback's `should_stop()` returning True cancels the run before the next step; an
    exception in the engine or a callback ends it as failed (and is re-raised after every
    callback's `on_end` ran, so the store records it).
    """
    config = resolve_config(config, denoiser)
    start = RunStart(model=denoiser.name, prompt=prompt_text, prompt_ids=list(prompt_ids),
                     config=config, mask_id=denoiser.mask_id, device=str(denoiser.device))
    for cb in callbacks:
        cb.on_start(start)
    generated = np.full(config.gen_length, denoiser.mask_id, dtype=np.int64)
    n_steps, status = 0, "completed"
    try:
        for record in iter_steps(denoiser, prompt_ids, config, ar_scorer):
            generated[record.committed] = record.tokens
            generated[record.remasked] = denoiser.mask_id
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
