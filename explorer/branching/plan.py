"""From a stored run, a step k, edits and changed settings to the exact state a branch starts from.

`plan_branch` checks everything before anything is stored (a `BranchError` names the valid
range), then returns a `BranchPlan`: the branch's config, the `Resume` state for the engine and
the `Origin` the store records (parent, k, edits). The state after step k is read from the
store: the tokens (commits, revisions, re-masks and earlier edits replayed), each committed
position's confidence at its last commit or revision (stored at the engine's float16 precision)
and the schedule mark of step k (with the block's revisions so far, xdlm_revise's budget). With
the same settings and no edits the branch therefore reproduces the parent's steps k+1.., its
revisions included, token for token (each step's random draws depend on (seed, step) only).

Settings: the parent's, with `settings` replacing some (any DecodeConfig field but gen_length).
Changing `steps` or `block_length` re-plans what is left: each block that still holds masks
(the one in progress included) gets steps / num_blocks steps for the masks it has now. So a
one-block run's remaining steps are `steps`. The same happens when an edit re-masks a
position of a block before the one in progress. Otherwise the block in progress continues its
schedule where the parent was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np

from explorer.branching.edits import EditError, EditSpec, Force, Remask, resolve_token
from explorer.decoding.canvas_engine import check_canvas_config
from explorer.decoding.config import DecodeConfig
from explorer.decoding.protocols import Denoiser
from explorer.decoding.resume import Edit, Origin, Resume, ScheduleMark
from explorer.store.arrays import RunArrays
from explorer.store.database import TrajectoryStore

FORCED_CONFIDENCE = 1.0  # the commit confidence an edit gives a forced token (re-masking rules rank it)
_FIELDS = frozenset(f.name for f in fields(DecodeConfig))


class BranchError(ValueError):
    """A branch that cannot be made as asked; the message names the valid choices."""


@dataclass(frozen=True)
class BranchRequest:
    parent_id: int
    step: int  # k: start from the state after step k; -1 = from the prompt
    edits: tuple[EditSpec, ...] = ()
    settings: Mapping[str, object] = field(default_factory=dict)  # DecodeConfig fields to change


@dataclass(frozen=True)
class BranchPlan:
    prompt: str
    prompt_ids: list[int]
    config: DecodeConfig
    resume: Resume
    origin: Origin


def plan_branch(store: TrajectoryStore, denoiser: Denoiser, request: BranchRequest) -> BranchPlan:
    """Check the request against the stored parent and the model; the plan, or BranchError."""
    run = stored_run(store, request.parent_id)
    if run["status"] == "running":
        raise BranchError(f"run {run['id']} is still running: branch it once it has finished")
    _check_model(store, run, denoiser)
    arrays = store.read_arrays(run["id"])
    k = request.step
    if isinstance(k, bool) or not isinstance(k, int) or not -1 <= k < arrays.n_steps:
        raise BranchError(
            f"step {k} is out of range for run {run['id']}; valid: -1..{arrays.n_steps - 1} (-1 = from the prompt)"
        )
    parent_config = DecodeConfig.from_dict(run["config"])
    config = _settings(parent_config, request.settings, denoiser, len(run["prompt_ids"]))
    tokens, conf = state_after(arrays, k)
    edits = apply_edits(denoiser, tokens, conf, request.edits, k)
    if getattr(denoiser, "loop", "masked") == "canvas":  # replayed to step k, then edited (canvas_engine.py)
        _check_canvas_edits(arrays, k, parent_config.block_size, edits)
        resume = Resume(tokens, conf, k + 1, parent=parent_config)
        return BranchPlan(run["prompt"], list(run["prompt_ids"]), config, resume, Origin(run["id"], k, tuple(edits)))
    replan = (config.steps, config.block_size) != (parent_config.steps, parent_config.block_size)
    resume = _resume(arrays, k, tokens, conf, parent_config, edits, replan)
    return BranchPlan(run["prompt"], list(run["prompt_ids"]), config, resume, Origin(run["id"], k, tuple(edits)))


def stored_run(store: TrajectoryStore, run_id: int) -> dict:
    """The run's row; BranchError when there is none."""
    run = store.get_run(run_id)
    if run is None:
        raise BranchError(f"no run with id {run_id} (see `python -m explorer runs`)")
    return run


def _check_model(store: TrajectoryStore, run: dict, denoiser: Denoiser) -> None:
    """The branch decodes with `denoiser`: the parent's model, or one with the same vocabulary."""
    if run["model"] == denoiser.name:
        return
    if run["mask_id"] != denoiser.mask_id:
        raise BranchError(
            f"run {run['id']} was decoded by model {run['model']!r} (mask id {run['mask_id']}); model "
            f"{denoiser.name!r} has mask id {denoiser.mask_id}: its vocabulary differs, branch with {run['model']!r}"
        )
    for token_id, text in store.token_texts(run["id"]).items():
        if denoiser.token_text(token_id) != text:
            raise BranchError(
                f"run {run['id']} was decoded by model {run['model']!r}, whose token {token_id} is {text!r}; in "
                f"model {denoiser.name!r} it is {denoiser.token_text(token_id)!r}: the vocabularies differ, "
                f"branch with {run['model']!r}"
            )


def _check_canvas_edits(arrays: RunArrays, k: int, canvas_length: int, edits: list[Edit]) -> None:
    """A canvas model's branch continues the canvas in progress after step k (the next one when step
    k ended its canvas): its edits must lie there, since earlier canvases are already in the cache."""
    if k < 0:
        start = 0
    else:
        canvas = arrays.extras[k].canvas
        if canvas is None:
            raise BranchError(f"step {k} has no canvas record (a recorded run): it cannot be branched")
        start = canvas.start + (canvas_length if canvas.final else 0)
    if start >= arrays.gen_length:
        raise BranchError(f"the run's last canvas ended at step {k}: nothing is left to branch")
    outside = [e.position for e in edits if not start <= e.position < start + canvas_length]
    if outside:
        raise BranchError(
            f"position {outside[0]} is outside the canvas in progress after step {k}; a canvas model's branch edits "
            f"positions {start}..{start + canvas_length - 1}"
        )


def _settings(parent: DecodeConfig, settings: Mapping[str, object], denoiser: Denoiser, prompt_length: int):
    unknown = sorted(set(settings) - _FIELDS)
    if unknown:
        raise BranchError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(_FIELDS))}")
    if "gen_length" in settings and settings["gen_length"] != parent.gen_length:
        raise BranchError(f"a branch keeps its parent's generation length ({parent.gen_length})")
    config = replace(parent, **settings)
    config.validate(denoiser.context_length, prompt_length)  # ConfigError is a ValueError
    if getattr(denoiser, "loop", "masked") == "canvas":
        check_canvas_config(config, denoiser.canvas_length)
    return config


def state_after(arrays: RunArrays, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(G,) tokens and (G,) commit confidences after step k (k = -1: the prompt's state, with a
    branch's edits from the prompt). Confidences are those of each position's last commit (a
    revision is one: p of the token it wrote; its forced value for an edit), 0 where masked."""
    mask_id, G = int(arrays.run["mask_id"]), arrays.gen_length
    conf = np.zeros(G, dtype=np.float32)
    commits = zip(arrays.commits.step.tolist(), arrays.commits.position.tolist(), arrays.commits.prob.tolist())
    writes = [(s, 0, p, c) for s, p, c in commits if s <= k]  # (step, after its commits?, position, confidence)
    writes += [(s, 1, p, FORCED_CONFIDENCE) for s, p, _, forced in arrays.edits.rows() if forced and s <= k]
    for _, _, position, confidence in sorted(writes, key=lambda w: (w[0], w[1])):
        conf[position] = confidence
    if k >= 0:
        tokens = arrays.tokens[:, k].astype(np.int64)
    else:
        tokens = np.full(G, mask_id, dtype=np.int64)
        for s, p, t, forced in arrays.edits.rows():
            if s < 0:
                tokens[p] = t if forced else mask_id
    conf[tokens == mask_id] = 0.0
    return tokens, conf


def apply_edits(
    denoiser: Denoiser, tokens: np.ndarray, conf: np.ndarray, specs: tuple[EditSpec, ...], k: int
) -> list[Edit]:
    """Apply the edits to the state in place; the resolved edits. EditError for a bad one."""
    G, mask_id, seen, edits = tokens.shape[0], denoiser.mask_id, set(), []
    for spec in specs:
        p = spec.position
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < G:
            raise EditError(
                f"position {p} is out of range; valid: 0..{G - 1} (the generated part; the prompt cannot be edited)"
            )
        if p in seen:
            raise EditError(f"position {p} is edited twice; give one edit per position")
        seen.add(p)
        match spec:
            case Force(token=token):
                token_id = resolve_token(denoiser, token)
                tokens[p], conf[p] = token_id, FORCED_CONFIDENCE
                edits.append(Edit("force", p, token_id, FORCED_CONFIDENCE))
            case Remask():
                if tokens[p] == mask_id:
                    when = "from the prompt" if k < 0 else f"after step {k}"
                    raise EditError(f"position {p} is already masked {when}: only a committed one can be re-masked")
                edits.append(Edit("remask", p, int(tokens[p]), float(conf[p])))
                tokens[p], conf[p] = mask_id, 0.0
            case _:
                raise EditError(f"unknown edit {spec!r}")
    return edits


def _resume(
    arrays: RunArrays,
    k: int,
    tokens: np.ndarray,
    conf: np.ndarray,
    parent: DecodeConfig,
    edits: list[Edit],
    replan: bool,
) -> Resume:
    """The engine's starting state: the schedule continues in step k's block unless re-planned."""
    if k < 0:
        return Resume(tokens, conf, 0)
    block = int(arrays.blocks[k])
    reopened = any(e.kind == "remask" and e.position < block * parent.block_size for e in edits)
    if replan or reopened:
        return Resume(tokens, conf, k + 1)
    mark = arrays.extras[k].schedule or _derived_mark(arrays, k, parent.block_size)
    return Resume(tokens, conf, k + 1, block, mark.step_in_block + 1, mark.block_n_masked, mark.revisions)


def _derived_mark(arrays: RunArrays, k: int, block_size: int) -> ScheduleMark:
    """Step k's schedule mark for a run whose steps do not store theirs (recorded before they
    did, or stripped): j counts the block's steps, the block started with the masks left before
    its first, and its revisions are the revise events of its steps through k (the engine
    counts every visible token a step changed, in this block or an earlier one)."""
    block = int(arrays.blocks[k])
    in_block = np.flatnonzero(arrays.blocks[: k + 1] == block)
    first = int(in_block[0])
    before, _ = state_after(arrays, first - 1)
    lo = block * block_size
    n = int((before[lo : lo + block_size] == int(arrays.run["mask_id"])).sum())
    return ScheduleMark(len(in_block) - 1, n, _revisions_between(arrays, first, k))


def _revisions_between(arrays: RunArrays, first: int, last: int) -> int:
    """The revise events at steps first..last."""
    commits = arrays.commits
    return int((commits.revised & (commits.step >= first) & (commits.step <= last)).sum())
