"""What crosses the pipes between the UI process and a model worker: one dataclass per message.

UI -> worker: a `Job` (a decode), a `BranchJob` (a branch of a stored run), an
`AlternativesJob` (the "which decision mattered?" analysis), a `Cancel`, or `Shutdown`.
Worker -> UI: `WorkerReady`, `DeviceReport`, `RunStarted`, `StepDone`, `OutcomeDone`,
`JobDone`, `AlternativesDone`, `JobError`. A job's client reads `JobEvent`s from its handle:
`Queued`, `RunStarted`, `StepDone` (a decode or branch) or `OutcomeDone` (each re-decode of
an analysis), then exactly one terminal event (`JobDone`, `AlternativesDone`, `JobError`, or
`JobFailed` when the worker died or went silent). Receivers dispatch on the type (`match`),
never on a string tag.
"""

from __future__ import annotations

from dataclasses import dataclass

from explorer.branching.alternatives import AlternativesReport, Outcome
from explorer.branching.plan import BranchRequest
from explorer.decoding.config import DecodeConfig
from explorer.decoding.records import DecodeResult, StepRecord


@dataclass(frozen=True)
class DeviceInfo:
    """Where a worker decodes; on CUDA also the GPU's name and memory (bytes)."""

    device: str
    name: str | None = None
    allocated: int | None = None  # held by tensors
    reserved: int | None = None  # held by the caching allocator
    total: int | None = None  # the card's memory


# ---- UI -> worker ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    job_id: int
    prompt: str
    model: str
    config: DecodeConfig
    pace_ms: int = 0  # slow motion for teaching: pause after each step (does not change the result)
    max_seconds: float = 0.0  # the run's wall-clock budget in the worker (0: none)


@dataclass(frozen=True)
class BranchJob:
    """Branch a stored run (decoded with `model`): the state after a step, edits, settings."""

    job_id: int
    model: str
    request: BranchRequest
    pace_ms: int = 0
    max_seconds: float = 0.0  # as Job.max_seconds


@dataclass(frozen=True)
class AlternativesJob:
    """Re-decode run `run_id` once per top token at `position` after `step` (its own runs)."""

    job_id: int
    model: str
    run_id: int
    step: int
    position: int
    top: int = 5


@dataclass(frozen=True)
class Cancel:
    job_id: int


@dataclass(frozen=True)
class Shutdown:
    pass


# ---- worker -> UI (and, but for the first two, on to the job's client) ----------------------
@dataclass(frozen=True)
class WorkerReady:
    device: DeviceInfo


@dataclass(frozen=True)
class DeviceReport:
    job_id: int
    device: DeviceInfo


@dataclass(frozen=True)
class RunStarted:
    job_id: int
    run_id: int


@dataclass(frozen=True)
class StepDone:
    job_id: int
    record: StepRecord


@dataclass(frozen=True)
class JobDone:
    job_id: int
    result: DecodeResult


@dataclass(frozen=True)
class OutcomeDone:
    """One re-decode of an alternatives analysis finished (its run is stored)."""

    job_id: int
    outcome: Outcome


@dataclass(frozen=True)
class AlternativesDone:
    job_id: int
    report: AlternativesReport


@dataclass(frozen=True)
class JobError:
    """The job ended with an error the worker caught (bad input, out of memory, a cancel before
    it started); the message is for the user."""

    job_id: int
    message: str


# ---- only on a job's handle ----------------------------------------------------------------------
@dataclass(frozen=True)
class Queued:
    ahead: int  # jobs running or waiting before this one


@dataclass(frozen=True)
class JobFailed:
    """The worker died during the job, or sent nothing for too long."""

    job_id: int
    message: str


WorkerJob = Job | BranchJob | AlternativesJob
JobEvent = Queued | RunStarted | StepDone | OutcomeDone | JobDone | AlternativesDone | JobError | JobFailed
TERMINAL = (JobDone, AlternativesDone, JobError, JobFailed)
