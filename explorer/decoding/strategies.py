"""Unmasking strategies: which masked positions to commit this step.

Each strategy is a pure function `StepInput -> Selection`, registered with its knobs in
`STRATEGIES` (name -> `StrategySpec`). Positions are indices into the generated part;
`candidates` are the masked positions a step may commit (those of the current block: positions
right of it are never committed). Remasking strategies (`rcr`, `remdm_conf`) also return
positions to re-mask: committed positions of the current block (`committed`), ranked by the
confidence they had when they were committed (`commit_confidence`). The XDLM strategies
(`xdlm_ancestral`, `xdlm_revise`) may also *revise* a visible token: their `commit` may hold
positions that are not masked, and `tokens` says what each changed position gets.

Adding a strategy: write its function and one `StrategySpec` entry below (with its `Knob`s);
the config, its validation, the CLI flags and the UI form are generated from the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from explorer.decoding.gates import ENERGY_BOUND, GATE_GAMMA, GATE_TAU, LOOKAHEAD_K, Gate
from explorer.decoding.knobs import Knob, Value, unique_knobs
from explorer.decoding.xdlm import alpha as xdlm_alpha
from explorer.decoding.xdlm import posterior, revision_allowance, sample_rows, step_times, x0_probs


@dataclass(frozen=True)
class StepInput:
    candidates: torch.Tensor  # (G,) bool: masked positions inside the current block
    confidence: torch.Tensor  # (G,) p(x̂) from the un-noised softmax
    entropy: torch.Tensor  # (G,)
    margin: torch.Tensor  # (G,)
    n_scheduled: int  # tokens the schedule gives this step (k_j)
    step_in_block: int  # j, from 0
    steps_per_block: int  # S
    knobs: Mapping[str, Value]  # the strategy's knob values, by knob name
    generator: torch.Generator | None
    committed: torch.Tensor | None = None  # (G,) bool: committed positions of the current block
    commit_confidence: torch.Tensor | None = None  # (G,) p(token) when each was last committed
    n_later: int = 0  # tokens the schedule leaves masked after this step: k_{j+1} + ... (RCR)
    n_block: int = 0  # masked positions of the current block when it started
    prompt_length: int = 0  # P: ranking runs over a (P + G) row laid out as LLaDA's (ties)
    # What the token-changing (XDLM) strategies read besides the above:
    log_p: torch.Tensor | None = None  # (G, V) log-probabilities, mask at -inf
    tokens: torch.Tensor | None = None  # (G,) the generated part now (mask id where masked)
    proposal: torch.Tensor | None = None  # (G,) x̂, the token a commit would write
    revisable: torch.Tensor | None = None  # (G,) bool: visible positions of this and earlier blocks
    revisions_in_block: int = 0  # revisions the current block has made so far
    mask_id: int = -1
    temperature: float = 0.0


@dataclass(frozen=True)
class Selection:
    commit: torch.Tensor  # (G,) bool: positions that get a token (unmasked, or revised)
    remask: torch.Tensor | None = None  # (G,) bool: committed positions to mask again
    tokens: torch.Tensor | None = None  # (G,) the token written at each commit (None: x̂)


Strategy = Callable[[StepInput], Selection]


@dataclass(frozen=True)
class StrategySpec:
    """A registry entry: the rule, what it does in one line, where it comes from, its knobs."""

    name: str
    select: Strategy
    summary: str  # one line for the UI and the CLI
    paper: str
    knobs: tuple[Knob, ...] = ()
    scheduled: bool = True  # follows the tokens-per-step schedule (else adaptive: steps vary)
    remasks: bool = False  # may take committed tokens back
    revises: bool = False  # may change a visible token into another (XDLM)
    fixed_steps: bool = False  # runs exactly steps_per_block + 1 steps per block, masks or not
    check: Callable[[Mapping[str, Value]], None] | None = None  # raises ValueError on a bad knob mix
    gate: Gate | None = None  # a gated strategy: `select` proposes, the gate's probe decides (gates.py)


def top_k_commit(scores: torch.Tensor, candidates: torch.Tensor, k: int, prompt_length: int = 0) -> torch.Tensor:
    """The k highest-scoring candidates, ties broken exactly as LLaDA's `generate()` breaks them.

    LLaDA runs `torch.topk` over the whole prompt + generation row, -inf outside the candidates,
    in the scores' own dtype; which of several equal scores topk returns depends on that layout
    (length and position), so the ranking here runs on the same (P + G) row."""
    ranked = llada_row(scores, candidates, prompt_length)  # (P + G,)
    row = torch.zeros(ranked.shape, dtype=torch.bool, device=ranked.device)  # (P + G,)
    # No int(candidates.sum()) here (a host synchronisation on a GPU): when k exceeds the
    # number of candidates the top-k also picks -inf positions, which `& candidates` drops.
    k = min(k, candidates.numel())
    if k > 0:
        row[torch.topk(ranked, k).indices] = True
    return row[prompt_length:] & candidates


def llada_row(scores: torch.Tensor, candidates: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """(P + G,) the scores laid out as LLaDA ranks them: -inf at the prompt and outside the
    candidates, so that torch.topk breaks exact ties where LLaDA's `generate()` does."""
    # masked_fill takes -inf as a kernel argument: a torch.tensor(-inf) made here would be a
    # blocking host-to-device copy on every step of a GPU run.
    ranked = scores.masked_fill(~candidates, float("-inf"))
    if prompt_length:
        ranked = torch.cat([ranked.new_full((prompt_length,), float("-inf")), ranked])
    return ranked


def _scored(score: Callable[[StepInput], torch.Tensor]) -> Strategy:
    def strategy(s: StepInput) -> Selection:
        return Selection(top_k_commit(score(s), s.candidates, s.n_scheduled, s.prompt_length))

    strategy.__doc__ = score.__doc__
    return strategy


@_scored
def low_confidence(s: StepInput) -> torch.Tensor:
    """Commit the scheduled number of most confident positions: score p(x̂) (LLaDA)."""
    return s.confidence


@_scored
def margin(s: StepInput) -> torch.Tensor:
    """Score p_top1 - p_top2 (Dream's topk_margin), with the schedule chosen in the config
    (LLaDA's by default; Dream's own with schedule = dream)."""
    return s.margin


@_scored
def entropy(s: StepInput) -> torch.Tensor:
    """Score -H(p_i): lowest entropy first (Dream's entropy), with the schedule chosen in the
    config (LLaDA's by default; Dream's own with schedule = dream)."""
    return -s.entropy


def random(s: StepInput) -> Selection:
    """Score U(0, 1): a random order with the schedule (LLaDA's `random` remasking)."""
    scores = torch.rand(s.candidates.shape, generator=s.generator, device=s.candidates.device)
    return Selection(top_k_commit(scores, s.candidates, s.n_scheduled, s.prompt_length))


TIME_EPS = Knob(
    "origin_eps",
    float,
    1e-3,
    "the last time t = eps of the grid t = linspace(1, eps, S + 1)",
    label="time-grid ε",
    paper="MDLM (Sahoo et al. 2024)",
    low=0.0,
    high=1.0,
    low_open=True,
    high_open=True,
)


def _time_grid(s: StepInput) -> tuple[float, float]:
    """(t, s) of this step on MDLM's grid t = linspace(1, eps, S + 1)."""
    grid = torch.linspace(1.0, s.knobs["origin_eps"], s.steps_per_block + 1, dtype=torch.float64)
    return float(grid[s.step_in_block]), float(grid[s.step_in_block + 1])


def origin(s: StepInput) -> Selection:
    """MDLM ancestral step from t to s on t = linspace(1, eps, S + 1): each masked position is
    committed independently with probability (t - s) / t; everything left on the last step."""
    if s.step_in_block >= s.steps_per_block - 1:
        return Selection(s.candidates.clone())
    t, t_next = _time_grid(s)
    draw = torch.rand(s.candidates.shape, dtype=torch.float64, generator=s.generator, device=s.candidates.device)
    return Selection(s.candidates & (draw < (t - t_next) / t))


def threshold(s: StepInput) -> Selection:
    """Fast-dLLM: every candidate with confidence >= tau, and always the most confident one.
    The schedule is ignored: the number of steps becomes adaptive (the engine keeps stepping
    until the block is full)."""
    commit = top_k_commit(s.confidence, s.candidates, 1, s.prompt_length)
    return Selection(commit | (s.candidates & (s.confidence >= s.knobs["threshold"])))


def longest_prefix(order: torch.Tensor, passes: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Commit order[:n] for the largest n whose first n entries all pass (at least n = 1).

    order (C,) positions in ranking order; passes (C,) bool per rank. Computed on the device
    (cumprod + scatter): no host read of n, so a GPU step still synchronises once."""
    prefix = torch.cumprod(passes.to(torch.int64), 0).bool()  # (C,)
    prefix[:1] = True  # always the first
    commit = torch.zeros_like(candidates).scatter(0, order, prefix)
    return commit & candidates


def _ranked(keys: torch.Tensor, candidates: torch.Tensor, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position sorted by key (stable), non-candidates last (key -inf / +inf), and the keys."""
    fill = float("-inf") if descending else float("inf")
    ranked = keys.double().masked_fill(~candidates, fill)
    sorted_keys, order = torch.sort(ranked, descending=descending, stable=True)
    return order, sorted_keys


def factor(s: StepInput) -> Selection:
    """Fast-dLLM's factor rule: sort confidences c(1) >= c(2) >= ...; commit the longest prefix
    with (n + 1)(1 - c(n)) <= f for every n in it, and always the first. (Fast-dLLM's code
    also commits the whole block when only its last entry fails; we keep the stated rule.)"""
    order, conf = _ranked(s.confidence, s.candidates, descending=True)
    n = torch.arange(1, order.numel() + 1, dtype=torch.float64, device=conf.device)
    return Selection(longest_prefix(order, (n + 1) * (1 - conf) <= s.knobs["factor"], s.candidates))


def eb(s: StepInput) -> Selection:
    """EB-sampler: sort by entropy ascending; commit the longest prefix whose
    sum(H) - max(H) <= gamma (an upper bound on KL(joint || product of marginals)), at least one."""
    order, h = _ranked(s.entropy, s.candidates, descending=False)
    # Ascending order: the prefix's max is its last entry (non-candidates: inf - inf = NaN, fails).
    return Selection(longest_prefix(order, torch.cumsum(h, 0) - h <= s.knobs["eb_gamma"], s.candidates))


def rcr(s: StepInput) -> Selection:
    """Running-confidence remasking (MDPO): fill every masked candidate, then re-mask the
    lowest running confidences of the block (new and earlier commits alike) so that exactly
    the scheduled total so far stays committed: k_0 + ... + k_j."""
    commit = s.candidates.clone()
    running = torch.where(s.candidates, s.confidence.double(), s.commit_confidence.double())
    pool = s.candidates | s.committed
    remask = torch.zeros_like(commit)
    if s.n_later > 0:
        remask = top_k_commit(-running, pool, s.n_later)
    return Selection(commit & ~remask, remask & s.committed)


def remdm_conf(s: StepInput) -> Selection:
    """ReMDM-conf on MDLM's time grid t = linspace(1, eps, S + 1), alpha = 1 - t: masked
    positions unmask with probability (t - s) / t as in `origin`; each committed position is
    re-masked with probability sigma_i = softmax_i(-c_i) * min(1, (1 - alpha_s) / alpha_t),
    c_i its confidence at commit, softmax over the committed positions. Nothing is re-masked
    and everything is committed on the last step."""
    if s.step_in_block >= s.steps_per_block - 1:
        return Selection(s.candidates.clone(), torch.zeros_like(s.candidates))
    t, t_next = _time_grid(s)
    alpha_t, alpha_s = 1.0 - t, 1.0 - t_next
    sigma_max = min(1.0, (1.0 - alpha_s) / alpha_t) if alpha_t > 0 else 1.0
    draws = torch.rand((2, *s.candidates.shape), dtype=torch.float64, generator=s.generator, device=s.candidates.device)
    commit = s.candidates & (draws[0] < (t - t_next) / t)
    weights = torch.softmax((-s.commit_confidence.double()).masked_fill(~s.committed, float("-inf")), 0)
    remask = s.committed & (draws[1] < torch.nan_to_num(weights) * sigma_max)
    return Selection(commit, remask)


def propose_most_confident(s: StepInput) -> Selection:
    """The gated strategies' proposal: the K most confident masked positions of the block
    (K = lookahead_k); the gate's probe then decides how many of them to commit."""
    return Selection(top_k_commit(s.confidence, s.candidates, int(s.knobs["lookahead_k"]), s.prompt_length))


def xdlm_ancestral(s: StepInput) -> Selection:
    """XDLM's ancestral step on every position of the block, from t to s on
    t_i = linspace(1, 1e-5, S + 1), then one final noise-removal step to alpha = 1: each
    position draws z_s from the posterior q(z_s | z_t, x0 ~ p), so it may unmask, stay, be
    revised or be masked again. No mask is left after the final step."""
    k = s.knobs["xdlm_k"]
    t, t_next = step_times(s.steps_per_block, s.step_in_block)
    p = x0_probs(s.log_p, s.temperature, s.knobs["xdlm_top_p"], s.mask_id)  # (G, N)
    rows = posterior(p, s.tokens, s.mask_id, k, xdlm_alpha(t), xdlm_alpha(t_next))
    new = sample_rows(rows, s.generator)  # (G,)
    changed = (s.candidates | s.committed) & (new != s.tokens)
    to_mask = changed & (new == s.mask_id)
    return Selection(changed & ~to_mask, to_mask, new)


def xdlm_revise(s: StepInput) -> Selection:
    """LLaDA-XDLM's sampler: commit the scheduled number of most confident masked positions
    (as low_confidence), and revise up to the block's budget floor(unmasked x k / (1 - k))
    minus the revisions made so far (unspent budget carries over; none on a block's first
    step): the visible positions whose x̂ differs from their token with p(x̂) >= p(token),
    most confident first."""
    commit = top_k_commit(s.confidence, s.candidates, s.n_scheduled, s.prompt_length)
    if s.step_in_block == 0:
        return Selection(commit)
    unmasked_after = s.n_block - s.n_later  # the schedule's cumulative count through this step
    budget = revision_allowance(unmasked_after, s.knobs["xdlm_k"]) - s.revisions_in_block
    p_now = s.log_p.gather(-1, s.tokens[:, None]).squeeze(-1).exp()  # (G,) p(current token)
    wants = s.revisable & (s.proposal != s.tokens) & (s.confidence >= p_now)
    revise = top_k_commit(s.confidence, wants, max(0, budget), s.prompt_length)
    return Selection(commit | revise)


def _revise_check(knobs: Mapping[str, Value]) -> None:
    if knobs["xdlm_k"] >= 1.0:
        raise ValueError(
            f"xdlm-k {knobs['xdlm_k']} with xdlm_revise: the revision budget k / (1 - k) divides by zero; "
            "valid: [0, 1) (xdlm_ancestral takes k = 1)"
        )


_XDLM = "XDLM (Balancing Understanding and Generation in Discrete Diffusion Models, 2026)"
XDLM_K = Knob("xdlm_k", float, 0.1, "the uniform-noise share k of the kernel: 0 = MDLM (mask only), 1 = uniform "
              "(UDLM); use the k the model was trained with (0 for a masked model)", label="XDLM k", paper=_XDLM,
              low=0.0, high=1.0, step=0.01)  # fmt: skip
XDLM_TOP_P = Knob("xdlm_top_p", float, 1.0, "nucleus: sample x0 from the smallest set holding this much "
                  "probability (1 = off)", label="nucleus top-p", paper=_XDLM, low=0.0, high=1.0, low_open=True,
                  step=0.01)  # fmt: skip

_FAST_DLLM = "Fast-dLLM (Wu et al. 2025)"
_EB = "EB-sampler (Ben-Hamu et al. 2025)"
THRESHOLD = Knob("threshold", float, 0.9, "commit every position at least this confident", label="Threshold τ",
                 paper=_FAST_DLLM, low=0.0, high=1.0, low_open=True, step=0.01)  # fmt: skip
FACTOR = Knob("factor", float, 1.0, "the factor rule's f: larger = more tokens per step", label="Factor f",
              paper=_FAST_DLLM, low=0.0, low_open=True)  # fmt: skip
EB_GAMMA = Knob("eb_gamma", float, 0.1, "the error budget per step, sum(H) - max(H) <= gamma (nats)",
                label="EB γ, nats", paper=_EB, low=0.0)  # fmt: skip

_GATED = "this project: dependency-aware parallel decoding"

# The registry: one entry per strategy, with everything the config, the CLI and the UI need.
_ENTRIES = (
    StrategySpec(name="low_confidence", select=low_confidence, paper="LLaDA (Nie et al. 2025)",
                 summary="commits the scheduled number of most confident positions each step."),
    StrategySpec(name="margin", select=margin, paper="Dream (Ye et al. 2025), topk_margin",
                 summary="commits the positions with the largest gap between the top two tokens."),
    StrategySpec(name="entropy", select=entropy, paper="Dream (Ye et al. 2025)",
                 summary="commits the lowest-entropy positions first."),
    StrategySpec(name="random", select=random, paper="LLaDA (Nie et al. 2025), random remasking",
                 summary="commits random positions (the scheduled number per step)."),
    StrategySpec(name="origin", select=origin, paper="MDLM (Sahoo et al. 2024)", knobs=(TIME_EPS,), scheduled=False,
                 summary="MDLM ancestral sampling: each masked position unmasks with probability (t − s)/t."),
    StrategySpec(name="threshold", select=threshold, paper=_FAST_DLLM, knobs=(THRESHOLD,), scheduled=False,
                 summary="Fast-dLLM: commits every position with confidence ≥ τ (at least one); adaptive steps."),
    StrategySpec(name="factor", select=factor, paper=_FAST_DLLM, knobs=(FACTOR,), scheduled=False,
                 summary="Fast-dLLM's factor rule: commits the longest prefix of confidences with "
                         "(n+1)(1 − c(n)) ≤ f."),
    StrategySpec(name="eb", select=eb, paper=_EB, knobs=(EB_GAMMA,), scheduled=False,
                 summary="EB-sampler: commits low-entropy positions while Σ H − max H ≤ γ (bounds the dependency "
                         "error)."),
    StrategySpec(name="rcr", select=rcr, paper="MDPO (He et al. 2025)", remasks=True,
                 summary="running-confidence remasking: fills every mask, then re-masks the least confident "
                         "tokens (↺ in the text)."),
    StrategySpec(name="remdm_conf", select=remdm_conf, paper="ReMDM (Wang et al. 2025)", knobs=(TIME_EPS,),
                 scheduled=False, remasks=True,
                 summary="ReMDM-conf: MDLM steps that may re-mask low-confidence committed tokens (↺ in the text)."),
    StrategySpec(name="xdlm_ancestral", select=xdlm_ancestral, paper=_XDLM, knobs=(XDLM_K, XDLM_TOP_P),
                 scheduled=False, remasks=True, revises=True, fixed_steps=True,
                 summary="XDLM ancestral sampling: every position may unmask, be revised (⇄) or re-mask each step; "
                         "S steps and a final one."),
    StrategySpec(name="xdlm_revise", select=xdlm_revise, paper=_XDLM + ", LLaDA-XDLM's generate_xdm",
                 knobs=(XDLM_K,), revises=True, check=_revise_check,
                 summary="low-confidence unmasking plus up to k/(1−k) revisions per unmasked token of the most "
                         "confident visible tokens the model would change (⇄)."),
    StrategySpec(name="lookahead", select=propose_most_confident, paper=_GATED, knobs=(LOOKAHEAD_K, GATE_GAMMA),
                 scheduled=False, gate=Gate("prefix", "drop", GATE_GAMMA),
                 summary="proposes the K most confident tokens, reveals them one by one in one batched call and "
                         "commits them while none loses more than γ nats or flips; ~1 model call per step."),
    StrategySpec(name="lookahead_exact", select=propose_most_confident, paper=_GATED, knobs=(LOOKAHEAD_K,),
                 scheduled=False, gate=Gate("prefix", "exact", virtual_steps=True),
                 summary="lossless lookahead: commits the guesses that one-token-per-step low_confidence would "
                         "commit next, token for token the same text in fewer model calls."),
    StrategySpec(name="energy_gate", select=propose_most_confident, paper=_GATED, knobs=(LOOKAHEAD_K, ENERGY_BOUND),
                 scheduled=False, gate=Gate("prefix", "energy", ENERGY_BOUND),
                 summary="commits the longest prefix of the K most confident tokens whose Ind-E (log Q − log "
                         "P_chain) stays under the bound."),
    StrategySpec(name="pairwise_gate", select=propose_most_confident, paper=_GATED, knobs=(LOOKAHEAD_K, GATE_TAU),
                 scheduled=False, gate=Gate("pairwise", "pairwise", GATE_TAU),
                 summary="runs the pairwise violation pass over the K most confident tokens and commits those "
                         "with no S_ij < −τ and no flip against a kept one."),
)  # fmt: skip
STRATEGIES: dict[str, StrategySpec] = {entry.name: entry for entry in _ENTRIES}
STRATEGY_KNOBS: tuple[Knob, ...] = unique_knobs(*(entry.knobs for entry in _ENTRIES))


def strategies_using(knob: Knob) -> list[str]:
    """The strategies a knob belongs to (empty for the any-strategy options and the energy stage's)."""
    return [entry.name for entry in _ENTRIES if knob in entry.knobs]


def default_knobs() -> dict[str, Value]:
    """Every strategy knob at its default (for a StepInput built by hand)."""
    return {knob.name: knob.default for knob in STRATEGY_KNOBS}
