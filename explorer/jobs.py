"""What crosses the pipes between the UI process and a model worker: one dataclass per message.

UI -> worker: a `Job`, a `Cancel`, or `Shutdown`. Worker -> UI: `WorkerReady`, `DeviceReport`,
`RunStarted`, `StepDone`, `JobDone`, `JobError`. A job's client reads `JobEvent`s from its
handle: `Queued`, `RunStarted`, `StepDone`, then exactly one terminal event (`JobDone`,
`JobError`, or `JobFailed` when the worker died or went silent). Receivers dispatch on the
type (`match`), never on a string tag.
"""

from __future__ import annotations

from dataclasses import dataclass

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


JobEvent = Queued | RunStarted | StepDone | JobDone | JobError | JobFailed
TERMINAL = (JobDone, JobError, JobFailed)
