"""The speed panel of a run: how long it took and how much model work it cost.

Pure: the run's row and its stored steps in, numbers and an HTML fragment out. Wall time is the
run's own (from its start to its end as the store recorded them); the steps' time is the sum of
what each step measured (forward pass, metrics, selection, energies, the violation pass).
Forward passes count every sequence forward of any model, as the engine recorded them per step:
the step's own pass, energy candidates and chain copies, the violation pass (a batch of n
sequences counts n).

The decode's cost, three ways per generated token, from each step's `cost` extras
(explorer/decoding/records.py StepCost): sequential model calls (a batched pass of n copies is
one call), sequence forwards of the decode, and wall-clock ms of the decode (the steps' time less
the violation pass's); the violation pass only measures, so its calls, sequences and time are
shown apart. Runs stored before costs were counted have no `cost` extras: their calls and
sequences are "not recorded" (never estimated), and their ms per token is the steps' whole time,
said to include the measuring where a violation pass ran.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from explorer.decoding.records import StepExtras

NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class Cost:
    """A run's cost summed over its steps. The counts are None where some step has no `cost`
    extras (a run stored before they were counted)."""

    calls: int | None  # sequential model calls of the decode
    sequences: int | None  # sequence forwards of the decode
    measure_calls: int | None  # the violation pass's (measuring only)
    measure_sequences: int | None
    measure_seconds: float | None
    step_seconds: float  # the steps' own time, measuring included
    measured: bool  # some step ran the violation pass (its time is in step_seconds)

    @property
    def recorded(self) -> bool:
        return self.calls is not None

    @property
    def decode_seconds(self) -> float | None:
        """The steps' time less the violation pass's; None where that split is unknown (an old
        run that measured violations)."""
        if self.measure_seconds is not None:
            return max(self.step_seconds - self.measure_seconds, 0.0)
        return None if self.measured else self.step_seconds


def cost_of(extras: Sequence[StepExtras], seconds: Sequence[float]) -> Cost:
    """The run's cost from its steps' extras and times (aligned, in step order)."""
    costs = [e.cost for e in extras]
    recorded = bool(costs) and all(c is not None for c in costs)
    measured = any(e.violations is not None for e in extras)

    def total(name: str):
        return sum(getattr(c, name) for c in costs) if recorded else None

    return Cost(
        calls=total("calls"),
        sequences=total("sequences"),
        measure_calls=total("measure_calls"),
        measure_sequences=total("measure_sequences"),
        measure_seconds=float(total("measure_seconds")) if recorded else None,
        step_seconds=float(sum(float(s or 0.0) for s in seconds)),
        measured=measured,
    )


@dataclass(frozen=True)
class Speed:
    wall_seconds: float  # NaN while the run has no end time
    step_seconds: float  # the sum of the steps' own times
    n_steps: int
    tokens: int  # generated positions holding a token at the end
    forward_passes: int
    device: str
    cost: Cost | None = None  # None: the steps' extras were not read (counted as not recorded)

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

    def _per_token(self, value: float | None) -> float:
        return value / self.tokens if value is not None and self.tokens else math.nan

    @property
    def calls_per_token(self) -> float:
        """Sequential model calls of the decode per token (NaN: not recorded)."""
        return self._per_token(self.cost.calls if self.cost else None)

    @property
    def sequences_per_token(self) -> float:
        """Sequence forwards of the decode per token (NaN: not recorded)."""
        return self._per_token(self.cost.sequences if self.cost else None)

    @property
    def ms_per_token(self) -> float:
        """Wall-clock ms of the decode per token on the run's device, the measuring left out
        where it was recorded apart (else the steps' whole time: see `ms_includes_measuring`)."""
        if self.cost is None:
            return self._per_token(1000 * self.step_seconds)
        seconds = self.cost.decode_seconds
        return self._per_token(1000 * (self.cost.step_seconds if seconds is None else seconds))

    @property
    def ms_includes_measuring(self) -> bool:
        """The ms per token holds a violation pass's time that was not recorded apart."""
        return self.cost is None or self.cost.decode_seconds is None

    def cost_texts(self) -> tuple[str, str, str, str]:
        """(calls per token, sequences per token, ms per token, measuring) as the panel and the CLI say them."""
        recorded = self.cost is not None and self.cost.recorded
        calls = _num(self.calls_per_token, "{:.2f}") if recorded else NOT_RECORDED
        sequences = _num(self.sequences_per_token, "{:.2f}") if recorded else NOT_RECORDED
        ms = _num(self.ms_per_token, "{:.1f}")
        if ms != "n/a" and self.cost is None:
            ms += " (incl. any measuring)"
        elif ms != "n/a" and self.ms_includes_measuring and self.cost.measured:
            ms += " (incl. measuring)"
        return calls, sequences, ms, self.measuring_text()

    def measuring_text(self) -> str:
        """The violation pass's own cost, apart from the decode's."""
        c = self.cost
        if c is None or not c.recorded:
            return NOT_RECORDED
        if not c.measure_calls and not c.measure_sequences:
            return "none"
        return f"{c.measure_calls} calls, {c.measure_sequences} sequences, {1000 * (c.measure_seconds or 0.0):.0f} ms"

    def cost_line(self) -> str:
        """The three costs and the measuring in one line of plain text (the CLI's)."""
        calls, sequences, ms, measuring = self.cost_texts()
        device = self.device or "n/a"
        return (
            f"cost: model calls/token {calls} · sequences/token (decoding) {sequences} · ms/token {ms} on {device}"
            f" · violation pass (measuring): {measuring} · forward passes {self.forward_passes}"
            f" ({_num(self.passes_per_token, '{:.2f}')}/token)"
        )

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, in the panel's order."""
        calls, sequences, ms, measuring = self.cost_texts()
        return [
            ("wall time", _num(self.wall_seconds, "{:.2f} s")),
            ("model calls per token", calls),
            ("sequences per token (decoding)", sequences),
            ("ms per token (decoding)", ms),
            ("violation pass (measuring)", measuring),
            ("ms per step", _num(self.ms_per_step, "{:.1f}")),
            ("tokens per second", _num(self.tokens_per_second, "{:.1f}")),
            ("forward passes per token", _num(self.passes_per_token, "{:.2f}")),
            ("forward passes", str(self.forward_passes)),
            ("device", self.device or "n/a"),
        ]


def speed_of(
    run: dict, steps: Sequence[dict], forward_passes: int, extras: Sequence[StepExtras] | None = None
) -> Speed:
    """From the store: `run` as `TrajectoryStore.get_run` returns it, `steps` as `step_summaries`
    (their `seconds`), `forward_passes` as `TrajectoryStore.forward_passes`, `extras` the steps'
    extras in the same order (`RunArrays.extras`; None: not read, the costs not recorded)."""
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
        cost=None if extras is None else cost_of(extras, [s.get("seconds") or 0.0 for s in steps]),
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
    return f'<div class="speed-panel" title="{html.escape(TITLE, quote=True)}">{cells}</div>'


TITLE = (
    "Per generated token: model calls = sequential calls of the decode (a batched pass of n copies is one); "
    "sequences = sequence forwards of the decode; ms = the steps' wall-clock less the violation pass's. "
    "The violation pass only measures: its cost is shown apart. Forward passes: every sequence forward, "
    "measuring included. Runs stored before costs were counted: not recorded."
)


def _num(value: float, fmt: str) -> str:
    return fmt.format(value) if math.isfinite(value) else "n/a"
