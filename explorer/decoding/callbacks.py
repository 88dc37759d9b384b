"""Side effects of a decode, as callbacks on its step records.

A callback may implement any of `on_start`, `on_step`, `on_end` and `should_stop`; the base
class gives no-op defaults. The engine runs the same with none at all.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

from explorer.decoding.config import DecodeConfig
from explorer.decoding.records import DecodeResult, StepRecord
from explorer.decoding.resume import Origin


@dataclass(frozen=True)
class RunStart:
    model: str
    prompt: str
    prompt_ids: list[int]
    config: DecodeConfig
    mask_id: int
    device: str
    origin: Origin | None = None  # a branch: its parent, branch step and edits


class Callback:
    def on_start(self, start: RunStart) -> None:
        pass

    def on_step(self, record: StepRecord) -> None:
        pass

    def on_end(self, result: DecodeResult) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class StopFlag(Callback):
    """Cancels the run at the next step once `stop()` was called (from any thread)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def stop(self) -> None:
        self._event.set()

    def should_stop(self) -> bool:
        return self._event.is_set()


@dataclass
class CollectSteps(Callback):
    """Keeps every step record in memory (tests, the Python API, the CLI's JSON)."""

    steps: list[StepRecord] = field(default_factory=list)

    def on_step(self, record: StepRecord) -> None:
        self.steps.append(record)


class ProgressBar(Callback):
    """A tqdm bar on stderr over the generated positions (only when stderr is a terminal)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.bar = None

    def on_start(self, start: RunStart) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=start.config.gen_length,
            unit="tok",
            file=self.stream,
            desc=f"{start.model}/{start.config.strategy}",
            leave=False,
        )

    def on_step(self, record: StepRecord) -> None:
        self.bar.update(record.n_committed)
        self.bar.set_postfix(step=record.step)

    def on_end(self, result: DecodeResult) -> None:
        if self.bar is not None:
            self.bar.close()
