"""Where a decode starts when it does not start from the prompt, and each step's random seeds.

A branch (explorer/branching) starts from the state after step k of a stored run. Two things
make that state recoverable from the store alone, without re-running steps 0..k:

- Every random draw of step s comes from generators seeded with `step_seed(seed, s, stream)`,
  not from one stream that runs through the whole decode; so step k+1 of a branch draws exactly
  what step k+1 of its parent drew.
- The confidence a position had when it was committed (which the re-masking strategies rank)
  is kept at float16, the precision the store keeps, so it reads back bit for bit.

`Resume` is that state: the generated tokens, the commit confidences, the next step's index and
where the semi-autoregressive schedule stood.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The random streams of a step: the device generator (x̂ sampling, random scores, the time
# grid's draws, the energies' candidates and pick) and the host one (Inv-E's orders).
DEVICE_STREAM, HOST_STREAM = 0, 1
# The energies' candidates 1..k-1 draw from streams CANDIDATE_STREAM + j (candidate 0 is the
# step's own draw): the strategy's rule with independent noise.
CANDIDATE_STREAM = 16
CANVAS_EDIT_STREAM = 2  # a canvas model's branch: the fresh noise of its re-noise edits


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 64-bit seed for one stream of one step, mixed from (seed, step, stream) by numpy's
    SeedSequence: nearby seeds and steps give unrelated streams."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0])


@dataclass(frozen=True)
class ScheduleMark:
    """Where the schedule stood at a step: the step's index j in its block and the block's
    masked count when the schedule started it (LLaDA's counts are computed from it). Every step
    records it, so a branch from any step, of any run (a branch of a branch too), continues the
    schedule exactly as the run itself would have."""

    step_in_block: int
    block_n_masked: int
    revisions: int = 0  # revisions the block has made through this step (xdlm_revise's budget)

    def to_json(self) -> dict:
        mark = {"j": self.step_in_block, "n_block": self.block_n_masked}
        return mark | ({"revisions": self.revisions} if self.revisions else {})

    @classmethod
    def from_json(cls, data: object) -> ScheduleMark:
        if not isinstance(data, dict) or not {"j", "n_block"} <= set(data) <= {"j", "n_block", "revisions"}:
            raise ValueError(f"a schedule mark is {{'j': int, 'n_block': int[, 'revisions': int]}}, got {data!r:.60}")
        values = (data["j"], data["n_block"], data.get("revisions", 0))
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise ValueError(f"a schedule mark holds whole numbers >= 0, got {data!r:.60}")
        return cls(*values)


@dataclass(frozen=True)
class Resume:
    """The state a decode starts from instead of the prompt (a branch)."""

    tokens: np.ndarray  # (G,) int64 the generated part, mask id where masked
    commit_conf: np.ndarray  # (G,) float32 p(token) at each committed position's last commit
    step: int  # the index of the first step to run (k + 1)
    # The schedule of the block in progress, kept so that a branch with no edits continues the
    # parent's plan exactly; None: every block that still holds masks starts afresh (j = 0).
    block: int | None = None
    step_in_block: int = 0  # j: steps the block has run
    block_n_masked: int = 0  # masks in the block when it started (LLaDA's schedule reads it)
    block_revisions: int = 0  # revisions the block has made so far (xdlm_revise's budget)
    # A canvas model's branch replays the parent's steps 0..k with the parent's settings (its
    # DecodeConfig), since its self-conditioning logits and random state are not stored.
    parent: object | None = None

    def __post_init__(self) -> None:
        if self.tokens.shape != self.commit_conf.shape or self.tokens.ndim != 1:
            raise ValueError("Resume: tokens and commit_conf must be (G,) arrays of one length")
        if self.step < 0:
            raise ValueError(f"Resume: the first step must be >= 0, got {self.step}")


@dataclass(frozen=True)
class Edit:
    """One edit of a branch, resolved to token ids: force a token at a generated position, or
    re-mask a committed one. Stored as an event of kind `event_kind` at the branch step."""

    kind: str  # "force" | "remask"
    position: int  # in the generated part
    token_id: int  # force: the token written; remask: the token taken away
    prob: float = 1.0  # force: the commit confidence it is given; remask: the taken token's

    @property
    def event_kind(self) -> str:
        return EDIT_EVENTS[self.kind]


EDIT_EVENTS = {"force": "force", "remask": "remask_edit"}  # edit kind -> the store's event kind


@dataclass(frozen=True)
class Origin:
    """Where a branch comes from: its parent run, the step k it starts after, its edits."""

    parent_run_id: int
    branch_step: int  # -1: from the prompt
    edits: tuple[Edit, ...] = ()
