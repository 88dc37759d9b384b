"""A small Python API over the engine.

    from explorer import decode
    out = decode("once upon a time", gen_length=32, steps=8)
    print(out.text)                      # prompt + generated text
    for step in out.steps:               # StepRecords: committed positions, tokens, metrics
        print(step.step, step.committed, step.tokens)

    from explorer import Force, TrajectoryStore, branch
    store = TrajectoryStore("sqlite:///runs.db")
    out = decode("once upon a time", gen_length=32, steps=8, store=store)
    child = branch(out.run_id, step=3, store=store, edits=[Force(7, "girl")])  # a stored child run

Pass `store=TrajectoryStore(url)` to record the run (its id is `out.run_id`), `model=` a
model name or an already loaded Denoiser, `registry=` the operator's `ModelRegistry` to look a
name up in (default: `registry_from_env()`, see explorer/adapters/registry.py), and any `DecodeConfig`
field as a keyword.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from numbers import Integral

from explorer.adapters.loading import ScorerCache, load_denoiser, scorer_for
from explorer.adapters.registry import ModelRegistry
from explorer.branching import alternatives as branching
from explorer.branching.alternatives import AlternativesReport, RepairReport
from explorer.branching.edits import EditSpec
from explorer.branching.plan import BranchPlan, BranchRequest, plan_branch, stored_run
from explorer.decoding.callbacks import Callback, CollectSteps
from explorer.decoding.canvas_engine import check_canvas_config
from explorer.decoding.config import ConfigError, DecodeConfig
from explorer.decoding.engine import run_decode
from explorer.decoding.protocols import ARScorer, Denoiser
from explorer.decoding.records import DecodeResult, StepRecord
from explorer.store.database import StoreWriter, TrajectoryStore


@dataclass(frozen=True)
class Decoded:
    result: DecodeResult
    prompt_ids: list[int]
    steps: list[StepRecord]
    mask_id: int
    prompt_text: str

    @property
    def run_id(self) -> int | None:
        return self.result.run_id

    @property
    def token_ids(self) -> list[int]:
        return self.result.token_ids

    @property
    def text(self) -> str:
        """The prompt followed by the generated text."""
        return f"{self.prompt_text} {self.result.text}".strip()


def prepare(prompt: str, denoiser: Denoiser, config: DecodeConfig) -> list[int]:
    """Tokenise the prompt and validate the config against the model; raise ValueError subclasses."""
    prompt_ids = denoiser.encode(prompt)
    config.validate(denoiser.context_length, len(prompt_ids))
    if getattr(denoiser, "loop", "masked") == "canvas":
        check_canvas_config(config, denoiser.canvas_length)
    else:
        _check_mask(denoiser, config)
    return prompt_ids


def _check_mask(denoiser: Denoiser, config: DecodeConfig) -> None:
    """Every strategy decodes from the mask (the XDLM ones also noise toward it): a model must have
    one, a class of its own output (a loaded model's adapter checks this; a Denoiser object given
    to `decode` may not say)."""
    mask_id = getattr(denoiser, "mask_id", None)
    name = getattr(denoiser, "name", type(denoiser).__name__)
    if isinstance(mask_id, bool) or not isinstance(mask_id, Integral) or mask_id < 0:
        raise ConfigError(
            f"model {name!r} has no mask token (mask_id {mask_id!r}); strategy {config.strategy} decodes "
            "masked positions and needs one: set mask_id (an id >= 0 of the model's vocabulary)"
        )
    vocab = getattr(denoiser, "vocab_size", None)
    if isinstance(vocab, int) and vocab > 0 and mask_id >= vocab:
        raise ConfigError(
            f"model {name!r}: mask id {mask_id} is outside its vocabulary (0..{vocab - 1}); "
            f"strategy {config.strategy} needs the mask among the model's classes"
        )


def decode(
    prompt: str,
    model: str | Denoiser = "embedded",
    config: DecodeConfig | None = None,
    store: TrajectoryStore | None = None,
    callbacks: Sequence[Callback] = (),
    registry: ModelRegistry | None = None,
    **settings,
) -> Decoded:
    denoiser = load_denoiser(model, registry=registry) if isinstance(model, str) else model
    config = replace(config or DecodeConfig(), **settings)
    prompt_ids = prepare(prompt, denoiser, config)
    return _run(denoiser, prompt, prompt_ids, config, store, callbacks, registry)


def branch(
    run_id: int,
    step: int,
    store: TrajectoryStore,
    edits: Sequence[EditSpec] = (),
    model: str | Denoiser | None = None,
    callbacks: Sequence[Callback] = (),
    registry: ModelRegistry | None = None,
    **settings,
) -> Decoded:
    """Branch stored run `run_id` after step `step` (-1: from the prompt) with `edits`
    (`Force(position, "word" or id)`, `Remask(position)`) and any DecodeConfig field changed;
    the branch is stored as a child of the run. `steps` holds only the branch's own steps."""
    denoiser = run_model(run_id, model, store, registry)
    plan = plan_branch(store, denoiser, BranchRequest(run_id, step, tuple(edits), settings))
    return _run(denoiser, plan.prompt, plan.prompt_ids, plan.config, store, callbacks, registry, plan)


def alternatives(
    run_id: int,
    step: int,
    position: int,
    store: TrajectoryStore,
    top: int = 5,
    model: str | Denoiser | None = None,
    registry: ModelRegistry | None = None,
) -> AlternativesReport:
    """ "Which decision mattered?": branch run `run_id` after `step` once per token among the
    model's `top` at `position` (and once as decoded); each branch is a stored child run."""
    denoiser = run_model(run_id, model, store, registry)
    scorer = _analysis_scorer(run_id, store, denoiser, registry)
    return branching.alternatives(store, denoiser, run_id, step, position, top, scorer)


def repairs(
    run_id: int,
    store: TrajectoryStore,
    top: int = 3,
    model: str | Denoiser | None = None,
    registry: ModelRegistry | None = None,
) -> RepairReport:
    """The alternatives at every token the checker (or the violation pass) flags in run `run_id`,
    at the step that committed it; `.repairs` lists the single changes that repair the run."""
    denoiser = run_model(run_id, model, store, registry)
    scorer = _analysis_scorer(run_id, store, denoiser, registry)
    return branching.repairs(store, denoiser, run_id, top, scorer)


def _analysis_scorer(
    run_id: int, store: TrajectoryStore, denoiser: Denoiser, registry: ModelRegistry | None
) -> ARScorer | None:
    """The AR model that measures each outcome's NLL: the run's AR scorer or the model's own."""
    config = DecodeConfig.from_dict(stored_run(store, run_id)["config"])
    return ScorerCache(registry).configured(config, denoiser)


def run_model(
    run_id: int, model: str | Denoiser | None, store: TrajectoryStore, registry: ModelRegistry | None = None
) -> Denoiser:
    """The given model (loaded if a name), or the stored run's (BranchError if there is no such run)."""
    if model is not None and not isinstance(model, str):
        return model
    return load_denoiser(model or stored_run(store, run_id)["model"], registry=registry)


def _run(
    denoiser: Denoiser,
    prompt: str,
    prompt_ids: list[int],
    config: DecodeConfig,
    store: TrajectoryStore | None,
    callbacks: Sequence[Callback],
    registry: ModelRegistry | None,
    plan: BranchPlan | None = None,
) -> Decoded:
    collector = CollectSteps()
    writer = StoreWriter(store, denoiser.token_text) if store is not None else None
    all_callbacks = [collector, *([writer] if writer else []), *callbacks]
    scorer = scorer_for(config, denoiser, registry)
    result = run_decode(
        denoiser,
        prompt_ids,
        config,
        all_callbacks,
        prompt_text=prompt,
        ar_scorer=scorer,
        resume=plan.resume if plan else None,
        origin=plan.origin if plan else None,
    )
    if writer is not None:
        result = replace(result, run_id=writer.run_id)
    return Decoded(result, prompt_ids, collector.steps, denoiser.mask_id, denoiser.decode(prompt_ids))
