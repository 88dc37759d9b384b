"""The speed panel of a run: how long it took and how much model work it cost.

Pure: the run's row and its stored steps in, numbers and an HTML fragment out. Wall time is the
run's own (from its start to its end as the store recorded them); the steps' time is the sum of
what each step measured (forward pass, metrics, selection, energies, the violation pass).
Forward passes count every sequence forward of any model, as the engine recorded them per step:
the step's own pass, energy candidates and chain copies, the violation pass (a batch of n
sequences counts n).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Speed:
    wall_seconds: float  # NaN while the run has no end time
    step_seconds: float  # the sum of the steps' own times
    n_steps: int
    tokens: int  # generated positions holding a token at the end
    forward_passes: int
    device: str

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.step_seconds / self.n_steps if self.n_steps else math.nan

    @property
    def tokens_per_second(self) -> float:
        seconds = self.wall_seconds if math.isfinite(self.wall_seconds) else self.step_seconds
        return self.tokens / seconds if seconds > 0 else math.nan

    @property
    def passes_per_token(self) -> float:
        return self.forward_passes / self.tokens if self.tokens else math.nan

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, in the panel's order."""
        return [
            ("wall time", _num(self.wall_seconds, "{:.2f} s")),
            ("ms per step", _num(self.ms_per_step, "{:.1f}")),
            ("tokens per second", _num(self.tokens_per_second, "{:.1f}")),
            ("forward passes per token", _num(self.passes_per_token, "{:.2f}")),
            ("forward passes", str(self.forward_passes)),
            ("device", self.device or "n/a"),
        ]


def speed_of(run: dict, steps: Sequence[dict], forward_passes: int) -> Speed:
    """From the store: `run` as `TrajectoryStore.get_run` returns it, `steps` as `step_summaries`
    (their `seconds`), `forward_passes` as `TrajectoryStore.forward_passes`."""
    start, end = run.get("created_at"), run.get("finished_at")
    wall = (end - start).total_seconds() if start is not None and end is not None else math.nan
    final = run.get("final_token_ids") or []
    mask_id = run.get("mask_id")
    return Speed(
        wall_seconds=wall,
        step_seconds=float(sum(float(s.get("seconds") or 0.0) for s in steps)),
        n_steps=len(steps),
        tokens=sum(1 for t in final if t != mask_id),
        forward_passes=int(forward_passes),
        device=str(run.get("device") or ""),
    )


def speed_html(speed: Speed | None) -> str:
    """A one-row table of the numbers (values are numbers or the stored device name, escaped)."""
    if speed is None:
        return '<div class="speed-panel speed-empty">Speed: shown when a run has ended.</div>'
    cells = "".join(
        f'<div class="speed-cell"><div class="speed-value">{html.escape(value)}</div>'
        f'<div class="speed-label">{html.escape(label)}</div></div>'
        for label, value in speed.rows()
    )
    return (
        f'<div class="speed-panel" title="Steps measured by the worker; passes: every sequence forward">{cells}</div>'
    )


def _num(value: float, fmt: str) -> str:
    return fmt.format(value) if math.isfinite(value) else "n/a"
