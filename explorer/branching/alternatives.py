""" "Which decision mattered?": re-decode a run once per alternative token at one position.

`alternatives(...)` takes step k and position p of a stored run, asks the model for the top-n
tokens at p in the state step k decided from (with p masked), and branches the run after step k
once per token: p forced to that token, every other token as the parent had it. The token the
parent holds at p after step k is run as a branch with no edit at all, which reproduces the
parent exactly. Each branch is a stored child run; its `Outcome` says what became of the text:
the story grammar's checker verdict (embedded model), the summed violation score of the steps
after k, the AR model's NLL per generated token (when an AR scorer is given) and the positions
whose final token differs from the parent's.

`repairs(...)` is the sweep over positions: for each token the checker (or, for other models,
the violation pass) flags in a run, the alternatives at the step that committed it, and which
single change gives a valid story (no token scoring below `FLAG_NATS`, for other models).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from explorer.branching.edits import Force, special_ids
from explorer.branching.plan import BranchError, BranchPlan, BranchRequest, plan_branch, state_after, stored_run
from explorer.decoding.callbacks import CollectSteps
from explorer.decoding.engine import run_decode
from explorer.decoding.model_pass import ModelPass
from explorer.decoding.protocols import ARScorer, Denoiser
from explorer.store.arrays import RunArrays
from explorer.store.database import StoreWriter, TrajectoryStore
from models.checker import check

MAX_TOP = 10
FLAG_NATS = -1.0  # a token whose violation score is below this is flagged (models without a checker)
CHECKED_MODELS = ("embedded", "embedded-xdlm")  # the story grammar's checker applies to these models' text


@dataclass(frozen=True)
class Outcome:
    """What became of the run when position p held `token_id` after step k."""

    token_id: int
    token_text: str
    prob: float  # p(token) at p in the state step k decided from
    as_decoded: bool  # the parent's own token (a branch with no edit: the parent reproduced)
    run_id: int
    text: str  # the generated text
    verdict: str | None  # the checker's summary (embedded model), else None
    valid: bool | None
    n_violations: int | None  # the checker's violations
    violation_score: float  # sum of the pairwise totals of the steps after k (nats, <= 0)
    worst_token: float | None  # the lowest token violation score after k (None: no pair measured)
    ar_nll: float | None  # mean -log p(token | tokens before) over the generated part, AR model
    changed: tuple[tuple[int, str, str], ...]  # (position, parent's token, this run's token)

    @property
    def repaired(self) -> bool:
        """A valid story (checked models), else no token after k below FLAG_NATS."""
        if self.valid is not None:
            return self.valid
        return self.worst_token is None or self.worst_token >= FLAG_NATS


@dataclass(frozen=True)
class AlternativesReport:
    run_id: int  # the parent
    step: int
    position: int
    parent_token: str  # what the parent holds at p after step k (the mask if still masked)
    outcomes: tuple[Outcome, ...]  # most probable first


@dataclass(frozen=True)
class Flagged:
    position: int
    step: int  # the step that committed it
    token_text: str
    reason: str


@dataclass(frozen=True)
class RepairReport:
    run_id: int
    flagged: tuple[Flagged, ...]
    reports: tuple[AlternativesReport, ...]  # one per flagged token, in the same order

    @property
    def repairs(self) -> list[tuple[Flagged, Outcome]]:
        """Every single change that repairs the run (the parent's own token never does)."""
        return [
            (flag, outcome)
            for flag, report in zip(self.flagged, self.reports)
            for outcome in report.outcomes
            if not outcome.as_decoded and outcome.repaired
        ]


def position_probs(
    denoiser: Denoiser, run: dict, arrays: RunArrays, step: int, position: int, top: int
) -> torch.Tensor:
    """(V,) p(token) at `position` in the state step `step` decided from, `position` masked, with
    the run's classifier-free guidance; 0 for the ids an edit may not write. BranchError for a
    step, position or `top` out of range."""
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_TOP:
        raise BranchError(f"top {top} is out of range; valid: 1..{MAX_TOP}")
    if not 0 <= step < arrays.n_steps:
        raise BranchError(f"step {step} is out of range for run {run['id']}; valid: 0..{arrays.n_steps - 1}")
    if not 0 <= position < arrays.gen_length:
        raise BranchError(f"position {position} is out of range; valid: 0..{arrays.gen_length - 1} (generated part)")
    before, _ = state_after(arrays, step - 1)
    before[position] = denoiser.mask_id
    ids = torch.tensor([list(run["prompt_ids"]) + before.tolist()], dtype=torch.long, device=denoiser.device)
    model = ModelPass(denoiser, len(run["prompt_ids"]), float(run["config"].get("cfg_scale", 0.0)))
    with torch.no_grad():
        probs = torch.softmax(model.logits(ids)[0, position].float(), -1)  # (V,)
    probs[[i for i in special_ids(denoiser) if 0 <= i < probs.shape[0]]] = 0.0
    return probs


def _top(probs: torch.Tensor, top: int) -> list[tuple[int, float]]:
    """(token id, p) of the `top` most probable tokens, most probable first."""
    values, ids = probs.topk(top)
    return [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist()) if v > 0]


def alternatives(
    store: TrajectoryStore,
    denoiser: Denoiser,
    run_id: int,
    step: int,
    position: int,
    top: int = 5,
    ar_scorer: ARScorer | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> AlternativesReport:
    """Branch run `run_id` after `step` once per top token at `position` (and once with no edit)."""
    run = stored_run(store, run_id)
    parent_arrays = store.read_arrays(run_id)
    probs = position_probs(denoiser, run, parent_arrays, step, position, top)
    candidates = _top(probs, top)
    tokens_k, _ = state_after(parent_arrays, step)
    parent_token = int(tokens_k[position])
    if parent_token != denoiser.mask_id and parent_token not in {t for t, _ in candidates}:
        candidates.append((parent_token, float(probs[parent_token])))
    outcomes = []
    for token_id, prob in candidates:
        as_decoded = token_id == parent_token
        edits = () if as_decoded else (Force(position, token_id),)
        plan = plan_branch(store, denoiser, BranchRequest(run_id, step, edits, {"violations": True}))
        outcome = _outcome(store, denoiser, plan, parent_arrays, token_id, prob, as_decoded, ar_scorer)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return AlternativesReport(run_id, step, position, denoiser.token_text(parent_token), tuple(outcomes))


def repairs(
    store: TrajectoryStore,
    denoiser: Denoiser,
    run_id: int,
    top: int = 3,
    ar_scorer: ARScorer | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> RepairReport:
    """The alternatives at each flagged token of a run (at the step that committed it)."""
    run = stored_run(store, run_id)
    arrays = store.read_arrays(run_id)
    flagged = flag_tokens(run, arrays, denoiser)
    reports = tuple(
        alternatives(store, denoiser, run_id, flag.step, flag.position, top, ar_scorer, on_outcome) for flag in flagged
    )
    return RepairReport(run_id, tuple(flagged), reports)


def flag_tokens(run: dict, arrays: RunArrays, denoiser: Denoiser) -> list[Flagged]:
    """The generated tokens the checker blames (embedded model), else those whose violation
    score is below FLAG_NATS; each with the step that committed it."""
    G, P = arrays.gen_length, len(run["prompt_ids"])
    final = arrays.tokens[:, -1] if arrays.n_steps else np.full(G, int(run["mask_id"]))
    reasons: dict[int, str] = {}
    if run["model"] in CHECKED_MODELS:
        for violation in check(f"{run['prompt']} {run['final_text'] or ''}").violations:
            for word in violation.positions:
                if 0 <= word - P < G:
                    reasons.setdefault(word - P, f"{violation.kind}: {violation.message}")
    else:
        scores = np.nanmin(np.where(np.isnan(arrays.violation), np.inf, arrays.violation), axis=1)  # (G,)
        for p in np.flatnonzero(scores < FLAG_NATS).tolist():
            reasons[p] = f"violation score {scores[p]:.2f} nats"
    return [
        Flagged(p, int(arrays.commit_step[p]), denoiser.token_text(int(final[p])), reasons[p])
        for p in sorted(reasons)
        if arrays.commit_step[p] >= 0
    ]


def _outcome(
    store: TrajectoryStore,
    denoiser: Denoiser,
    plan: BranchPlan,
    parent: RunArrays,
    token_id: int,
    prob: float,
    as_decoded: bool,
    ar_scorer: ARScorer | None,
) -> Outcome:
    """Decode one branch (stored) and measure its outcome."""
    writer, steps = StoreWriter(store, denoiser.token_text), CollectSteps()
    result = run_decode(
        denoiser,
        plan.prompt_ids,
        plan.config,
        [writer, steps],
        prompt_text=plan.prompt,
        resume=plan.resume,
        origin=plan.origin,
    )
    verdict = valid = n_violations = None
    if parent.run["model"] in CHECKED_MODELS:
        checked = check(f"{plan.prompt} {result.text}")
        verdict, valid, n_violations = checked.summary(), checked.valid, len(checked.violations)
    measured = [r.extras.violations for r in steps.steps if r.extras.violations is not None]
    scores = [float(np.min(v.token_scores)) for v in measured if len(v.token_scores)]
    parent_final = parent.tokens[:, -1] if parent.n_steps else np.full(parent.gen_length, denoiser.mask_id)
    changed = tuple(
        (p, denoiser.token_text(int(parent_final[p])), denoiser.token_text(int(result.token_ids[p])))
        for p in np.flatnonzero(np.asarray(result.token_ids) != parent_final).tolist()
    )
    return Outcome(
        token_id=token_id,
        token_text=denoiser.token_text(token_id),
        prob=prob,
        as_decoded=as_decoded,
        run_id=writer.run_id,
        text=result.text,
        verdict=verdict,
        valid=valid,
        n_violations=n_violations,
        violation_score=float(sum(v.total for v in measured)),
        worst_token=min(scores, default=None),
        ar_nll=_ar_nll(ar_scorer, plan.prompt_ids, result.token_ids, denoiser.device),
        changed=changed,
    )


def _ar_nll(scorer: ARScorer | None, prompt_ids: Sequence[int], generated: Sequence[int], device) -> float | None:
    if scorer is None:
        return None
    ids = torch.tensor([list(prompt_ids) + list(generated)], dtype=torch.long, device=device)
    with torch.no_grad():
        log_p = scorer.log_probs(ids)[0, len(prompt_ids) :]  # (G,)
    return float(-log_p.float().mean())
