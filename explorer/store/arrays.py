"""A run as (position x step) arrays: the one shape every plot and token view reads.

`RunArrays` is built either from the store (`TrajectoryStore.read_arrays`, float16 metrics)
or from StepRecords still in memory (`RunArrays.from_records`, float32 metrics), for the live
view of a run that is still streaming and not yet (fully) in the store. Both go through
`assemble`, so the two paths cannot drift apart.

G = generation length (positions), S = steps recorded so far, K = TOP_ALTERNATIVES.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from explorer.decoding.records import StepExtras, StepRecord

TOP_ALTERNATIVES = 3  # alternatives kept per committed position, for the token hover


@dataclass(frozen=True)
class Commits:
    """The commit events of a run, one entry per commit (any order). A *revision* (a
    token-changing strategy such as XDLM's replacing a visible token by another) is a commit at
    a position that held a token: it has `revised` set, and the token it replaced is the
    position's previous event."""

    step: np.ndarray  # (n,) int
    position: np.ndarray  # (n,) int
    token: np.ndarray  # (n,) int
    prob: np.ndarray  # (n,) float32 p(token) at commit
    top_ids: np.ndarray  # (n, K) int32, -1 where fewer than K were recorded
    top_probs: np.ndarray  # (n, K) float32, NaN where fewer than K were recorded
    revised: np.ndarray | None = None  # (n,) bool: a revision of a visible token (None: none)

    def __post_init__(self) -> None:
        if self.revised is None:
            object.__setattr__(self, "revised", np.zeros(self.step.shape[0], dtype=bool))

    @staticmethod
    def empty() -> Commits:
        return Commits(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.full((0, TOP_ALTERNATIVES), -1, np.int32),
            np.full((0, TOP_ALTERNATIVES), np.nan, np.float32),
        )

    @property
    def n_revised(self) -> int:
        return int(self.revised.sum())


@dataclass(frozen=True)
class Remasks:
    """The re-mask events of a run (remasking strategies): the token taken away, where, when."""

    step: np.ndarray  # (r,) int
    position: np.ndarray  # (r,) int
    token: np.ndarray  # (r,) int

    @staticmethod
    def of(rows: Sequence[tuple[int, int, int]]) -> Remasks:
        a = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        return Remasks(a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy())


@dataclass(frozen=True)
class Edits:
    """A branch's edits, applied after its branch step k (k = -1: before step 0): forced tokens
    and re-masked positions, from its `force` / `remask_edit` events."""

    step: np.ndarray  # (e,) int
    position: np.ndarray  # (e,) int
    token: np.ndarray  # (e,) int: force: the token written; re-mask: the token taken away
    forced: np.ndarray  # (e,) bool: a force (else a re-mask)

    @staticmethod
    def of(rows: Sequence[tuple[int, int, int, bool]]) -> Edits:
        a = np.asarray([r[:3] for r in rows], dtype=np.int64).reshape(-1, 3)
        return Edits(a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy(), np.array([bool(r[3]) for r in rows], bool))

    @property
    def size(self) -> int:
        return int(self.step.size)

    def rows(self) -> list[tuple[int, int, int, bool]]:
        """(step, position, token, forced) of each edit."""
        return list(zip(self.step.tolist(), self.position.tolist(), self.token.tolist(), self.forced.tolist()))


@dataclass(frozen=True)
class RunArrays:
    """A run as (position x step) arrays, for plotting. NaN/-1 where undefined."""

    run: dict  # the run row (at least gen_length and mask_id)
    steps: np.ndarray  # (S,) step indices
    blocks: np.ndarray  # (S,)
    n_committed: np.ndarray  # (S,)
    argmax: np.ndarray  # (G, S) int32
    confidence: np.ndarray  # (G, S) float32
    entropy: np.ndarray  # (G, S) float32
    margin: np.ndarray  # (G, S) float32
    commit_step: np.ndarray  # (G,) int32: the step that last changed each position (commit or revision), -1 if none
    tokens: np.ndarray  # (G, S) int32: the sequence after each step (mask id where masked)
    commit_prob: np.ndarray  # (G,) float32: p(token) at commit, NaN if not committed
    commit_top_ids: np.ndarray  # (G, K) int32: the K most probable tokens at commit, -1 if none
    commit_top_probs: np.ndarray  # (G, K) float32: and their probabilities, NaN if none
    commits: Commits  # every commit event (a position re-masked and committed again has several)
    remasks: Remasks  # re-mask events (empty unless a remasking strategy ran)
    remask_count: np.ndarray  # (G,) int32: how often each position was masked again
    edits: Edits  # a branch's edits at its branch step (empty for other runs)
    forced: np.ndarray  # (G,) bool: the position's token was put there by an edit, not the model
    violation: np.ndarray  # (G, S) float32: violation score (most negative S_ij) at commit, NaN elsewhere
    energy: np.ndarray  # (G, S) float32: the kept candidate's energy at the positions it committed
    extras: list[StepExtras]  # (S,) what each step measured: violation matrices, energy candidates

    @property
    def gen_length(self) -> int:
        return int(self.commit_step.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.steps.shape[0])

    @classmethod
    def from_records(cls, run: dict, records: Sequence[StepRecord]) -> RunArrays:
        """The same arrays as `TrajectoryStore.read_arrays`, from in-memory StepRecords.

        `run` needs at least `gen_length` and `mask_id`; it is kept as `arrays.run`. Metrics
        stay float32 (the store rounds them to float16), otherwise the arrays are identical.
        """
        G = int(run["gen_length"])

        def stack(name: str, dtype) -> np.ndarray:  # (G, S)
            if not records:
                return np.zeros((G, 0), dtype=dtype)
            return np.ascontiguousarray(np.stack([getattr(r, name) for r in records], axis=1), dtype=dtype)

        return assemble(
            run,
            steps=np.array([r.step for r in records], dtype=np.int64),
            blocks=np.array([r.block for r in records], dtype=np.int64),
            n_committed=np.array([r.n_committed for r in records], dtype=np.int64),
            argmax=stack("argmax", np.int32),
            confidence=stack("confidence", np.float32),
            entropy=stack("entropy", np.float32),
            margin=stack("margin", np.float32),
            commits=commits_from_records(records),
            extras=[r.extras for r in records],
            remasks=Remasks.of(
                [(r.step, p, t) for r in records for p, t in zip(r.remasked.tolist(), r.remasked_tokens.tolist())]
            ),
        )


def commits_from_records(records: Sequence[StepRecord]) -> Commits:
    """Every record's commits, flattened into one Commits."""
    if not records or not any(r.n_committed for r in records):
        return Commits.empty()
    return Commits(
        step=np.concatenate([np.full(r.n_committed, r.step, dtype=np.int64) for r in records]),
        position=np.concatenate([r.committed for r in records]).astype(np.int64),
        token=np.concatenate([r.tokens for r in records]).astype(np.int64),
        prob=np.concatenate([r.probs for r in records]).astype(np.float32),
        top_ids=np.concatenate([fit_top(r.top_ids, -1, np.int32, r.n_committed) for r in records]),
        top_probs=np.concatenate([fit_top(r.top_probs, np.nan, np.float32, r.n_committed) for r in records]),
        revised=np.concatenate([revised_flags(r) for r in records]),
    )


def revised_flags(record: StepRecord) -> np.ndarray:
    """(n,) bool: which of the record's commits revised a visible token (none in older records).
    The store's writer reads the same flags, so stored and in-memory arrays cannot disagree."""
    if record.revised.size != record.n_committed:
        return np.zeros(record.n_committed, bool)
    return record.revised.astype(bool)


def fit_top(values, fill, dtype, n: int) -> np.ndarray:
    """(n, k) alternatives cut or padded with `fill` to (n, K): models may record more or fewer."""
    out = np.full((n, TOP_ALTERNATIVES), fill, dtype=dtype)
    values = np.asarray(values, dtype=dtype).reshape(n, -1) if n else np.zeros((0, 0), dtype)
    k = min(TOP_ALTERNATIVES, values.shape[1])
    out[:, :k] = values[:, :k]
    return out


def assemble(
    run: dict,
    *,
    steps: np.ndarray,
    blocks: np.ndarray,
    n_committed: np.ndarray,
    argmax: np.ndarray,
    confidence: np.ndarray,
    entropy: np.ndarray,
    margin: np.ndarray,
    commits: Commits,
    extras: Sequence[StepExtras] | None = None,
    remasks: Remasks | None = None,
    edits: Edits | None = None,
) -> RunArrays:
    """RunArrays from per-step arrays (G, S) and the run's events; derives the per-position ones."""
    G, S, mask_id = int(run["gen_length"]), int(steps.shape[0]), int(run["mask_id"])
    commit_step = np.full(G, -1, dtype=np.int32)
    final = np.full(G, mask_id, dtype=np.int32)
    commit_prob = np.full(G, np.nan, dtype=np.float32)
    top_ids = np.full((G, TOP_ALTERNATIVES), -1, dtype=np.int32)
    top_probs = np.full((G, TOP_ALTERNATIVES), np.nan, dtype=np.float32)
    # Sorted by step so that, when a position is committed twice (re-masked and committed
    # again, or revised), the latest commit wins, whatever order the events came in: commit_step
    # is the step of the last change and commit_prob p of the token written then.
    order = np.argsort(commits.step, kind="stable")
    positions = commits.position[order]
    commit_step[positions] = commits.step[order]
    final[positions] = commits.token[order]
    commit_prob[positions] = commits.prob[order]
    top_ids[positions] = commits.top_ids[order]
    top_probs[positions] = commits.top_probs[order]
    remasks = remasks if remasks is not None else Remasks.of([])
    edits = edits if edits is not None else Edits.of([])
    extras = list(extras) if extras is not None else [StepExtras() for _ in range(S)]
    forced = np.zeros(G, dtype=bool)
    if not _needs_replay(commits, remasks, edits):
        # The sequence after each step; columns are steps 0..S-1 in order.
        step_index = np.arange(S)[None, :]  # (1, S)
        committed_by = (commit_step[:, None] >= 0) & (commit_step[:, None] <= step_index)  # (G, S)
        tokens = np.where(committed_by, final[:, None], mask_id).astype(np.int32)  # (G, S)
    else:
        tokens = _replay(G, S, mask_id, steps, commits, remasks, edits)
        forced = _apply_edits(edits, commit_step, final, commit_prob, top_ids, top_probs)
        if S:  # a position masked at the end (a re-mask not undone) holds no commit
            gone = tokens[:, -1] == mask_id
            commit_step[gone], final[gone], commit_prob[gone], forced[gone] = -1, mask_id, np.nan, False
    violation, energy = _step_maps(G, steps, extras)
    return RunArrays(
        run=run,
        steps=steps,
        blocks=blocks,
        n_committed=n_committed,
        argmax=argmax,
        confidence=confidence,
        entropy=entropy,
        margin=margin,
        commit_step=commit_step,
        tokens=tokens,
        commit_prob=commit_prob,
        commit_top_ids=top_ids,
        commit_top_probs=top_probs,
        commits=commits,
        remasks=remasks,
        remask_count=np.bincount(remasks.position, minlength=G)[:G].astype(np.int32),
        edits=edits,
        forced=forced,
        violation=violation,
        energy=energy,
        extras=extras,
    )


def _needs_replay(commits: Commits, remasks: Remasks, edits: Edits) -> bool:
    """Does the sequence after each step need the event-by-event replay? Yes when a position
    changes more than once: a re-mask, an edit, or a second commit at one position (a revision).
    A repeated position is looked for as well as the `revised` flags, so that Commits built
    without them (joined by hand, older callers) still replay their revisions exactly."""
    if remasks.step.size or edits.size or commits.revised.any():
        return True
    return np.unique(commits.position).size != commits.position.size


def _replay(
    G: int, S: int, mask_id: int, steps: np.ndarray, commits: Commits, remasks: Remasks, edits: Edits
) -> np.ndarray:
    """(G, S) the sequence after each step, replaying each step's commits (revisions included:
    a revision overwrites the visible token), then its re-masks (the engine's order: a step
    never re-masks what it commits), then a branch's edits."""
    column = {int(step): i for i, step in enumerate(steps.tolist())}
    tokens = np.full((G, S), mask_id, dtype=np.int32)
    current = np.full(G, mask_id, dtype=np.int32)
    by_step: dict[int, list] = {}
    for step, pos, tok in zip(commits.step.tolist(), commits.position.tolist(), commits.token.tolist()):
        by_step.setdefault(step, []).append((pos, tok))
    for step, pos in zip(remasks.step.tolist(), remasks.position.tolist()):
        by_step.setdefault(step, []).append((pos, mask_id))
    for step, pos, tok, is_force in edits.rows():
        by_step.setdefault(step, []).append((pos, tok if is_force else mask_id))
    for step in sorted(set(column) | {s for s in by_step if s < min(column, default=0)}):
        for pos, tok in by_step.get(step, []):
            current[pos] = tok
        if step in column:
            tokens[:, column[step]] = current
    return tokens


def _apply_edits(
    edits: Edits,
    commit_step: np.ndarray,
    final: np.ndarray,
    commit_prob: np.ndarray,
    top_ids: np.ndarray,
    top_probs: np.ndarray,
) -> np.ndarray:
    """Forced tokens count as commits at the branch step (step 0 for a branch from the prompt),
    unless the model committed the position again later; returns (G,) bool: forced now."""
    forced = np.zeros(commit_step.shape[0], dtype=bool)
    for step, pos, tok, is_force in edits.rows():
        if is_force and commit_step[pos] <= step:
            commit_step[pos], final[pos], forced[pos] = max(step, 0), tok, True
            commit_prob[pos], top_ids[pos], top_probs[pos] = np.nan, -1, np.nan
    return forced


def _step_maps(G: int, steps: np.ndarray, extras: Sequence[StepExtras]) -> tuple[np.ndarray, np.ndarray]:
    """(G, S) violation scores and kept-candidate energies at the positions each step committed."""
    S = len(steps)
    violation = np.full((G, S), np.nan, dtype=np.float32)
    energy = np.full((G, S), np.nan, dtype=np.float32)
    for i, extra in enumerate(extras):
        if extra.violations is not None:
            _place(violation, i, extra.violations.positions, extra.violations.token_scores)
        if extra.energy_ran is not None:
            _place(energy, i, extra.energy_ran.positions, extra.energy_ran.per_position)
    return violation, energy


def _place(out: np.ndarray, column: int, positions, values) -> None:
    """out[positions, column] = values, when they fit the run (an imported bundle may hold
    anything: a record whose positions lie outside the run is left out, not an error)."""
    positions = np.asarray(positions, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32)
    G = out.shape[0]
    if positions.shape == values.shape and positions.ndim == 1 and ((positions >= 0) & (positions < G)).all():
        out[positions, column] = values
