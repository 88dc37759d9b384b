"""The decoding loop: one denoiser pass per step, a strategy picks what to commit.

`iter_steps` is a generator of StepRecords with no side effects; each step reads as a pipeline:
forward -> select -> gate -> energy -> commit -> violations -> record. The forward is skipped
when a gated strategy's probe already ran the step's state (`DecodeRun.step_logits`); every step
records its cost (sequential calls, sequence forwards; measuring apart). `run_decode` drives it and calls
the callbacks (store writer, progress, live stream) in the spirit of diffusers'
`callback_on_step_end`; it owns the status lifecycle (completed / cancelled / failed).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from explorer.decoding.callbacks import Callback, RunStart
from explorer.decoding.canvas_engine import CanvasBranch, iter_canvas_steps
from explorer.decoding.config import DecodeConfig
from explorer.decoding.energies import Candidates, EnergyRecord, EnergySkipped, choose, draw, next_best, random_orders
from explorer.decoding.gates import GateRecord
from explorer.decoding.knobs import ConfigError
from explorer.decoding.model_pass import ModelPass
from explorer.decoding.probes import GateInput, run_gate
from explorer.decoding.prophet import ProphetCheck, prophet_check
from explorer.decoding.protocols import ARScorer, Denoiser
from explorer.decoding.records import DecodeResult, StepCost, StepExtras, StepRecord
from explorer.decoding.resume import (
    CANDIDATE_STREAM,
    DEVICE_STREAM,
    HOST_STREAM,
    Origin,
    Resume,
    ScheduleMark,
    step_seed,
)
from explorer.decoding.sampling import StepMetrics, step_metrics
from explorer.decoding.schedule import block_bounds, scheduled_count
from explorer.decoding.state import Block, DecodeState, HostStep
from explorer.decoding.strategies import STRATEGIES, StepInput, StrategySpec
from explorer.decoding.violations import PairwiseViolations, Recent, ViolationRecord, measure_steps


def resolve_config(config: DecodeConfig, denoiser: Denoiser) -> DecodeConfig:
    """Fill the settings whose default depends on the model (violations: on for the embedded one)."""
    if config.violations is None:
        config = replace(config, violations=bool(getattr(denoiser, "violations_default", False)))
    return config


@dataclass
class DecodeRun:
    """Everything one decode holds besides its state: the settings, the rule, the model pass,
    the random streams (re-seeded from (seed, step) at every step: explorer/decoding/resume.py)."""

    config: DecodeConfig
    strategy: StrategySpec
    model: ModelPass
    generator: torch.Generator  # x̂ sampling, random scores, the time-grid draws, energies
    order_generator: torch.Generator  # Inv-E orders, on the host
    ar_scorer: ARScorer | None
    # A prefix probe's row that the step committed: (the state (1, L), its logits (G, V)).
    ahead: tuple[torch.Tensor, torch.Tensor] | None = None
    # The positions each of the last `violation_recent_steps` steps committed, newest last (the
    # cross-step violations; empty when that is 0). A branch starts it afresh.
    recent: deque[np.ndarray] = field(default_factory=deque)

    def step_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(G, V) logits of the state x, and whether they came from the last step's probe (no
        call): a prefix probe already ran the state its step committed."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None and torch.equal(ahead[0], x):
            return ahead[1], True
        return self.model.logits(x)[0], False

    def stream_step(self, state: DecodeState) -> int:
        """The index a step's random draws are seeded by: the step, or for the exact gate the
        number of tokens committed so far (one-token-per-step decoding's step there)."""
        if self.strategy.gate is not None and self.strategy.gate.virtual_steps:
            return int((~state.masked_host).sum())
        return state.step

    def reseed(self, step: int) -> None:
        """The step's random streams depend on (seed, step) only, so a branch from step k draws
        what its parent drew. Seeding is host-side state: no device synchronisation."""
        self.generator.manual_seed(step_seed(self.config.seed, step, DEVICE_STREAM))
        self.order_generator.manual_seed(step_seed(self.config.seed, step, HOST_STREAM))

    @classmethod
    def start(
        cls, denoiser: Denoiser, prompt_length: int, config: DecodeConfig, ar_scorer: ARScorer | None
    ) -> DecodeRun:
        return cls(
            config,
            STRATEGIES[config.strategy],
            ModelPass(denoiser, prompt_length, config.cfg_scale),
            torch.Generator(device=denoiser.device),
            torch.Generator(),
            ar_scorer,
        )


@dataclass(frozen=True)
class StepChoice:
    """What a step commits (before the commit is applied): the positions, the tokens written
    there, what it re-masks, and what the Prophet check and the energies said."""

    commit: torch.Tensor  # (G,) bool
    tokens: torch.Tensor  # (G,) the token a commit writes at each position
    remask: torch.Tensor | None = None  # (G,) bool
    prophet: ProphetCheck | None = None
    energy: EnergyRecord | EnergySkipped | None = None
    ar_passes: int = 0  # the AR scorer's sequence forwards
    gate: GateRecord | None = None  # a gated strategy's proposal and verdict
    measured: PairwiseViolations | None = None  # the pairwise gate's matrices of the committed set

    @property
    def early_commit(self) -> bool:
        return self.prophet is not None and self.prophet.early_commit


@torch.no_grad()
def iter_steps(
    denoiser: Denoiser,
    prompt_ids: Sequence[int],
    config: DecodeConfig,
    ar_scorer: ARScorer | None = None,
    resume: Resume | None = None,
) -> Iterator[StepRecord]:
    """Yield one StepRecord per step until every generated position is committed.

    From the prompt, or from `resume` (a branch): its tokens, commit confidences and step index;
    the block in progress continues its schedule, every other block that holds masks starts
    afresh, left to right.

    On a GPU a plain step runs on the device without waiting for it: its only host
    synchronisation is the copy of its results to the host (`DecodeState.commit`, once per
    step). Which positions are still masked is mirrored on the host from those results, so the
    loop condition and the schedule never read a device tensor. Energies, violations and
    Prophet's check read small results on the host as well (they need the committed set).
    """
    config = resolve_config(config, denoiser)
    state = DecodeState(prompt_ids, config.gen_length, denoiser.mask_id, denoiser.device)
    if resume is not None:
        state.restore(resume)
    run = DecodeRun.start(denoiser, state.prompt_length, config, ar_scorer)
    for index, (start, end) in enumerate(block_bounds(config.gen_length, config.block_size)):
        if resume is not None and resume.block == index:
            block = state.enter_block(
                index, start, end, resume.step_in_block, resume.block_n_masked, resume.block_revisions
            )
        else:
            block = state.enter_block(index, start, end)
        while _block_open(run, state, block):
            began, calls_before, passes_before = time.perf_counter(), run.model.calls, run.model.sequences
            run.reseed(run.stream_step(state))
            x_before = state.x.clone()
            logits, reused = run.step_logits(state.x)  # (G, V)
            metrics = step_metrics(logits, config.temperature, run.generator)
            forward_seconds = _synced_seconds(began, denoiser.device) if config.violations else None
            choice = _select(run, state, block, metrics, logits)
            choice = _gate_stage(run, state, block, metrics, logits, choice, reused)
            choice = _energy_stage(run, state, block, metrics, logits, choice)
            host = state.commit(choice.commit, choice.tokens, choice.remask, metrics)
            calls, decoded = run.model.calls - calls_before, run.model.sequences - passes_before
            violations = _violations(run, choice, x_before, state.prompt_length, host, metrics.log_p, forward_seconds)
            cost = StepCost(
                calls=calls + (1 if choice.ar_passes else 0),
                sequences=decoded + choice.ar_passes,
                measure_calls=run.model.calls - calls_before - calls,
                measure_sequences=run.model.sequences - passes_before - decoded,
                measure_seconds=violations.seconds if violations is not None else 0.0,
            )
            passes = run.model.sequences - passes_before + choice.ar_passes
            mark = ScheduleMark(state.step_in_block, block.n_masked, state.revisions_in_block)
            extras = StepExtras(violations, choice.energy, choice.prophet, mark, choice.gate, cost)
            yield _record(state, block, host, time.perf_counter() - began, passes, extras)
            state.advance()


def _block_open(run: DecodeRun, state: DecodeState, block: Block) -> bool:
    """Does the block take another step? While it holds masks; the fixed-step (XDLM ancestral)
    rule runs exactly S + 1 steps on a block that started with masks, whatever is masked."""
    if run.strategy.fixed_steps:
        return block.n_masked > 0 and state.step_in_block <= run.config.steps_per_block
    return state.masked_in(block) > 0


def _select(
    run: DecodeRun,
    state: DecodeState,
    block: Block,
    metrics: StepMetrics,
    logits: torch.Tensor,
    generator: torch.Generator | None = None,
) -> StepChoice:
    """The step's commit set (masked positions of the block, or every mask on a Prophet early
    commit, filled with the argmax) and re-mask set (committed positions of the block).
    `generator`: the strategy's random draws (default: the step's own stream)."""
    config, masked = run.config, state.masked()
    prophet = prophet_check(logits, masked, state.step, config.steps) if config.prophet else None
    if prophet is not None and prophet.early_commit:
        return StepChoice(masked.clone(), metrics.argmax, prophet=prophet)  # fill every mask, every block
    n_now, j = state.masked_in(block), state.step_in_block
    k = scheduled_count(config.schedule, block.n_masked, n_now, j, config.steps_per_block)
    selection = run.strategy.select(
        StepInput(
            candidates=masked & block.in_block,
            confidence=metrics.proposal_prob,
            entropy=metrics.entropy,
            margin=metrics.margin,
            n_scheduled=k,
            step_in_block=j,
            steps_per_block=config.steps_per_block,
            knobs=config.knob_values(run.strategy.knobs),
            generator=run.generator if generator is None else generator,
            committed=~masked & block.in_block,
            commit_confidence=state.commit_conf,
            n_later=n_now - k,
            n_block=block.n_masked,
            prompt_length=state.prompt_length,
            log_p=metrics.log_p,
            tokens=state.generated,
            proposal=metrics.proposal,
            revisable=~masked & block.up_to_end,
            revisions_in_block=state.revisions_in_block,
            mask_id=state.mask_id,
            temperature=config.temperature,
        )
    )
    # A strategy commits masked positions of the block; one that revises may also change the
    # visible tokens of this block and the earlier ones (never the prompt, never a later block).
    may_commit = block.up_to_end if run.strategy.revises else masked & block.in_block
    remask = None if selection.remask is None else selection.remask & ~masked & block.in_block
    tokens = metrics.proposal if selection.tokens is None else selection.tokens
    return StepChoice(selection.commit & may_commit, tokens, remask, prophet)


def _synced_seconds(began: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def _gate_stage(
    run: DecodeRun,
    state: DecodeState,
    block: Block,
    metrics: StepMetrics,
    logits: torch.Tensor,
    choice: StepChoice,
    reused: bool,
) -> StepChoice:
    """A gated strategy: its proposal goes through the gate's probe, which decides what to
    commit; a prefix probe leaves the committed state's logits for the next step."""
    gate = run.strategy.gate
    if gate is None or choice.early_commit:
        return choice
    config = run.config
    outcome = run_gate(
        gate,
        run.model,
        GateInput(
            x=state.x,
            prompt_length=state.prompt_length,
            candidates=state.masked() & block.in_block,
            proposal=choice.commit,
            logits=logits,
            metrics=metrics,
            temperature=config.temperature,
            seed=config.seed,
            virtual_step=run.stream_step(state),
            knobs=config.knob_values(run.strategy.knobs),
        ),
    )
    if outcome.next_ids is not None:
        run.ahead = (outcome.next_ids, outcome.next_logits)
    record = replace(outcome.record, reused=reused)
    return replace(choice, commit=outcome.commit, tokens=outcome.tokens, gate=record, measured=outcome.measured)


def _energy_stage(
    run: DecodeRun, state: DecodeState, block: Block, metrics: StepMetrics, logits: torch.Tensor, choice: StepChoice
) -> StepChoice:
    """Inside the energy window: k candidate commits, one kept by importance sampling.

    Candidate 0 is the step's own choice (so k = 1 is plain decoding, token for token); the
    others are the strategy's rule run again with independent random draws (at T = 0, where
    the rule has none, the next-best token assignments of the same positions, of which the
    target's best is kept: `choose(greedy=True)`), or with `energy_marginal_candidates` fresh
    draws from the product of marginals (EDLM's proposal)."""
    config = run.config
    low, high = config.energy_window
    if not config.energies or choice.early_commit or not low <= state.masked_fraction() <= high:
        return choice
    if not bool(choice.commit.any()):
        return choice
    temperature = config.temperature if config.temperature > 0 else 1.0
    # The per-position proposal: the marginals at the run's temperature (1 for greedy runs,
    # whose point mass would make every draw the same).
    log_q = metrics.log_p if temperature == 1.0 else torch.log_softmax(metrics.log_p / temperature, -1)  # (G, V)
    if config.energy_marginal_candidates:
        choices = _marginal_candidates(run, state, choice, log_q)
    else:
        choices = _rule_candidates(run, state, block, metrics, logits, choice)
    cands = _candidates(run, state, choices, metrics, log_q)
    chain_rows = sum(config.energy_orders * max(0, p.numel() - 1) for p in cands.positions)
    if any(name != "ar" for name, _ in config.energies) and chain_rows > config.energy_max_sequences:
        n = int(choice.commit.sum())
        return replace(
            choice,
            energy=EnergySkipped(
                f"{n} tokens at once: the chain would need {chain_rows} sequences, over "
                f"energy_max_sequences = {config.energy_max_sequences}"
            ),
        )
    sequences_before = run.model.sequences
    greedy = config.temperature == 0 and not config.energy_marginal_candidates
    record = choose(cands, dict(config.energies), config.energy_tau, run.generator, greedy)
    record.passes.denoiser = run.model.sequences - sequences_before  # x2 with CFG
    kept = choices[record.chosen]
    # A re-drawn revision may put the old token back: that position no longer changes.
    commit = kept.commit & (kept.tokens != state.generated)
    return replace(
        choice, commit=commit, tokens=kept.tokens, remask=kept.remask, energy=record.kept(), ar_passes=record.passes.ar
    )


def _rule_candidates(
    run: DecodeRun, state: DecodeState, block: Block, metrics: StepMetrics, logits: torch.Tensor, choice: StepChoice
) -> list[StepChoice]:
    """The step's own choice and k - 1 more from the strategy's rule with independent draws
    (streams CANDIDATE_STREAM + j of this step); at T = 0 the next-best assignments instead."""
    config, k = run.config, run.config.energy_candidates
    if config.temperature == 0:
        # Candidate 0 is the choice itself: a rule that draws its tokens even at T = 0
        # (xdlm_ancestral's posterior) need not commit the argmax that next_best starts from.
        positions = torch.nonzero(choice.commit).flatten()
        own = choice.tokens[positions]
        out = [choice]
        for row in next_best(metrics.log_p[positions], k + 1):  # (k', n) row 0 = the argmax
            if len(out) == k:
                break
            if torch.equal(row, own):
                continue
            written = choice.tokens.clone()
            written[positions] = row
            out.append(replace(choice, tokens=written))
        return out
    out = [choice]
    for j in range(1, k):
        generator = torch.Generator(device=logits.device)
        generator.manual_seed(step_seed(config.seed, run.stream_step(state), CANDIDATE_STREAM + j))
        drawn = step_metrics(logits, config.temperature, generator)
        out.append(_select(run, state, block, drawn, logits, generator))
    return out


def _marginal_candidates(
    run: DecodeRun, state: DecodeState, choice: StepChoice, log_q: torch.Tensor
) -> list[StepChoice]:
    """EDLM's proposal: k independent draws from the product of marginals at every masked (or
    changed) position; each commits the step's positions with its drawn tokens."""
    masked = state.masked() | choice.commit
    base = torch.where(masked, state.mask_id, state.generated)
    drawn = draw(log_q, masked, base, run.config.energy_candidates, run.generator)  # (k, G)
    return [replace(choice, tokens=row) for row in drawn]


def _candidates(
    run: DecodeRun, state: DecodeState, choices: list[StepChoice], metrics: StepMetrics, log_q: torch.Tensor
) -> Candidates:
    """The energies' view of the candidate commits: per candidate its full proposal (its tokens
    at its commit, the step's proposal at every other masked position), the state with its
    changed positions masked, and its committed set U."""
    masked_now, mask_id = state.masked(), state.mask_id
    masked = torch.stack([masked_now | c.commit for c in choices])  # (k, G)
    # A candidate's tokens hold a proposal at every masked position (the strategy's x̂, the
    # marginal draw), except where an XDLM step leaves a position masked: the step's x̂ there.
    fallback = torch.where(masked_now, metrics.proposal, state.generated)
    tokens = torch.stack([torch.where(m & (c.tokens != mask_id), c.tokens, fallback) for m, c in zip(masked, choices)])
    bases = state.x.expand(len(choices), -1).clone()  # (k, L)
    bases[:, state.prompt_length :] = torch.where(masked, state.mask_id, state.generated)
    positions = [torch.nonzero(c.commit).flatten() for c in choices]
    S, orders = run.config.energy_orders, {}
    for p in positions:  # one draw of orders per set size: candidates of equal size share them
        if p.numel() not in orders:
            orders[p.numel()] = random_orders(p.numel(), S, run.order_generator, p.device)
    return Candidates(
        x=bases,
        prompt_length=state.prompt_length,
        masked=masked,
        positions=positions,
        tokens=tokens,
        log_q=log_q,
        log_p=metrics.log_p,
        log_probs=run.model.log_probs,
        orders=[orders[p.numel()] for p in positions],
        ar_log_probs=run.ar_scorer.log_probs if run.ar_scorer is not None else None,
    )


def _violations(
    run: DecodeRun,
    choice: StepChoice,
    x_before: torch.Tensor,
    prompt_length: int,
    host: HostStep,
    log_p: torch.Tensor,
    forward_seconds: float | None,
) -> ViolationRecord | None:
    """The step's violation record: the pairwise gate's probe when it measured the committed set
    (no second pass), else the violation pass (which the cross-step variant always needs, for its
    memory of recent steps), falling back to the probe's matrices when that pass ran none."""
    probed = None
    if choice.measured is not None:
        probed = ViolationRecord.of(choice.measured, int(host.commit.sum()), 0.0, forward_seconds).kept()
        if not run.config.violation_recent_steps:
            return probed
    return _violation_stage(run, x_before, prompt_length, host, log_p, forward_seconds) or probed


def _violation_stage(
    run: DecodeRun,
    x_before: torch.Tensor | None,
    prompt_length: int,
    host: HostStep,
    log_p: torch.Tensor,
    forward_seconds: float | None,
) -> ViolationRecord | None:
    """The pairwise pass over the tokens the step committed together (two or more).

    With `violation_recent_steps` = m > 0 the same call also checks them against the tokens
    committed in the last m steps that are still visible before this step (not masked again
    since, not re-masked or re-committed by this step): at most `violation_cap` of them, the most
    recent step first (a step's own in position order), one row each (violations.py)."""
    if not run.config.violations:
        return None
    committed = np.flatnonzero(host.commit)
    recent = _recent_tokens(run, host)
    if run.config.violation_recent_steps > 0:
        run.recent.append(committed)
        while len(run.recent) > run.config.violation_recent_steps:
            run.recent.popleft()
    if len(committed) < 2:
        return None
    began = time.perf_counter()
    # The pass reads the committed set from the state before the step with that set masked;
    # a revised position held a visible token there, so mask it as well.
    mask_id = run.model.denoiser.mask_id
    x_before[0, prompt_length + torch.as_tensor(committed, device=x_before.device)] = mask_id
    result, cross = measure_steps(
        run.model.log_probs,
        x_before,
        prompt_length,
        committed,
        host.tokens,
        log_p,
        host.proposal_prob,
        run.config.violation_cap,
        recent,
        mask_id,
    )
    return ViolationRecord.of(result, len(committed), time.perf_counter() - began, forward_seconds, cross).kept()


def _recent_tokens(run: DecodeRun, host: HostStep) -> Recent | None:
    """The tokens of the last m steps a step's tokens are checked against (None: none)."""
    mask_id, cap = run.model.denoiser.mask_id, run.config.violation_cap
    visible = (host.before != mask_id) & ~host.commit & ~host.remask
    positions, ago, seen = [], [], set()
    for k, step_positions in enumerate(reversed(run.recent), start=1):
        for p in step_positions.tolist():
            if len(positions) < cap and visible[p] and p not in seen:
                seen.add(p)
                positions.append(p)
                ago.append(k)
    if not positions:
        return None
    pos = np.array(positions, dtype=np.int64)
    return Recent(pos, host.before[pos].astype(np.int64), np.array(ago, dtype=np.int64))


def _record(
    state: DecodeState, block: Block, host: HostStep, seconds: float, passes: int, extras: StepExtras
) -> StepRecord:
    positions = np.flatnonzero(host.commit)
    remasked = np.flatnonzero(host.remask).astype(np.int64)
    previous = host.before[positions].astype(np.int64)
    revised = previous != state.mask_id
    return StepRecord(
        step=state.step,
        block=block.index,
        committed=positions.astype(np.int64),
        tokens=host.tokens[positions].astype(np.int64),
        probs=host.proposal_prob[positions],
        top_ids=host.top_ids[positions].astype(np.int64),
        top_probs=host.top_probs[positions],
        argmax=host.top_ids[:, 0].astype(np.int32),
        confidence=np.ascontiguousarray(host.top_probs[:, 0]),
        entropy=host.entropy,
        margin=host.margin,
        masked_before=host.masked_before,
        seconds=seconds,
        forward_passes=passes,
        remasked=remasked,
        remasked_tokens=host.before[remasked].astype(np.int64),
        remasked_probs=host.conf_before[remasked],
        extras=extras,
        previous=previous,
        revised=revised,
        # p of the replaced token at its commit; NaN where the position was masked (a re-masked
        # position keeps its old confidence in the state, which means nothing once it is masked).
        previous_probs=np.where(revised, host.conf_before[positions], np.float32(np.nan)).astype(np.float32),
    )


def run_decode(
    denoiser: Denoiser,
    prompt_ids: Sequence[int],
    config: DecodeConfig,
    callbacks: Sequence[Callback] = (),
    prompt_text: str = "",
    ar_scorer: ARScorer | None = None,
    resume: Resume | None = None,
    origin: Origin | None = None,
) -> DecodeResult:
    """Run a whole decode (from the prompt, or from `resume`: a branch, whose `origin` the
    callbacks get in `RunStart`), calling each callback's hooks; returns the final result.

    A callback's `should_stop()` returning True cancels the run before the next step; an
    exception in the engine or a callback ends it as failed (and is re-raised after every
    callback's `on_end` ran, so the store records it).
    """
    config = resolve_config(config, denoiser)
    start = RunStart(
        model=denoiser.name,
        prompt=prompt_text,
        prompt_ids=list(prompt_ids),
        config=config,
        mask_id=denoiser.mask_id,
        device=str(denoiser.device),
        origin=origin,
    )
    for cb in callbacks:
        cb.on_start(start)
    generated = np.full(config.gen_length, denoiser.mask_id, dtype=np.int64)
    if resume is not None:
        generated[:] = resume.tokens
    n_steps, status = 0, "completed"
    try:
        for record in _steps(denoiser, prompt_ids, config, ar_scorer, resume, origin):
            generated[record.committed] = record.tokens
            generated[record.remasked] = denoiser.mask_id
            n_steps += 1
            for cb in callbacks:
                cb.on_step(record)
            if any(cb.should_stop() for cb in callbacks):
                status = "cancelled"
                break
    except BaseException as exc:
        error = error_text(exc)
        _end_all(
            callbacks,
            DecodeResult("failed", generated.tolist(), denoiser.decode(generated.tolist()), n_steps, error=error),
        )
        raise
    result = DecodeResult(status, generated.tolist(), denoiser.decode(generated.tolist()), n_steps)
    _end_all(callbacks, result)
    return result


def _steps(
    denoiser: Denoiser,
    prompt_ids: Sequence[int],
    config: DecodeConfig,
    ar_scorer: ARScorer | None,
    resume: Resume | None,
    origin: Origin | None,
) -> Iterator[StepRecord]:
    """The loop the model decodes with: the masked one, or a uniform-noise canvas model's (`loop = "canvas"`)."""
    if getattr(denoiser, "loop", "masked") != "canvas":
        return iter_steps(denoiser, prompt_ids, config, ar_scorer, resume)
    if resume is None:
        return iter_canvas_steps(denoiser, prompt_ids, config)
    if not isinstance(resume.parent, DecodeConfig):
        raise ConfigError("a canvas model's branch replays its parent's steps: give the parent's settings")
    edits = origin.edits if origin is not None else ()
    return iter_canvas_steps(
        denoiser, prompt_ids, config, CanvasBranch(resume.parent, resume.step - 1, resume.tokens, edits)
    )


# Exceptions that carry no message of their own, said in words (a run's stored error text).
_SAID = {
    KeyboardInterrupt: "interrupted (Ctrl-C)",
    SystemExit: "the process was told to exit",
    EOFError: "the connection to the app closed",
    BrokenPipeError: "the connection to the app closed",
}


def error_text(exc: BaseException) -> str:
    """One line for a run's error: the exception's own message with its type (without it for an
    exception that says `worded = True`: its message is already a sentence for people), or words
    for the ones that have none (never a bare 'KeyboardInterrupt: ')."""
    message = " ".join(str(exc).split())
    if message:
        return message if getattr(exc, "worded", False) else f"{type(exc).__name__}: {message}"
    return next((said for kind, said in _SAID.items() if isinstance(exc, kind)), type(exc).__name__)


def _end_all(callbacks: Sequence[Callback], result: DecodeResult) -> None:
    """Every callback's on_end runs, even when an earlier one raises; the first error is re-raised."""
    first_error: BaseException | None = None
    for cb in callbacks:
        try:
            cb.on_end(result)
        except BaseException as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
