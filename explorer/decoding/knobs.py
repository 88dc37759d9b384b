"""A knob: one tunable number or switch of a decoding rule, described once.

A strategy's (or option's, or the energy stage's) registry entry lists its knobs. Everything
else is generated from these descriptions: the `DecodeConfig` field and its validation, the
CLI flag, the UI field with its label, range and help, and the notes that cite the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Value = float | int | bool


class ConfigError(ValueError):
    """A setting is out of range or inconsistent; the message names it and the valid range."""


@dataclass(frozen=True)
class Knob:
    name: str  # the DecodeConfig field and the key in a stored run's config, e.g. "eb_gamma"
    kind: type  # float, int or bool
    default: Value
    help: str  # one line: what it does (CLI help, UI info)
    label: str = ""  # the UI label (default: the name)
    paper: str = ""  # where the rule comes from
    low: float | None = None  # None: unbounded
    high: float | None = None
    low_open: bool = False  # (low, ...] rather than [low, ...]
    high_open: bool = False  # [..., high) rather than [..., high]
    step: float | None = None  # the UI shows a slider of this step when both bounds are set
    cli: str | None = None  # the CLI flag, when it is not --<name with dashes>
    in_form: bool = True  # offered in the UI's form (False: an operator's setting, CLI and API only)

    def __post_init__(self) -> None:
        if self.kind not in (float, int, bool):
            raise TypeError(f"knob {self.name}: kind must be float, int or bool, not {self.kind!r}")

    @property
    def display(self) -> str:
        """How messages name it: the CLI spelling without the dashes, e.g. 'eb-gamma'."""
        return self.name.replace("_", "-")

    @property
    def flag(self) -> str:
        return self.cli or f"--{self.display}"

    def valid_range(self) -> str:
        """The valid values in words: '0..100', '> 0', '>= 0', '(0, 1]', 'true or false'."""
        if self.kind is bool:
            return "true or false"
        low, high = _fmt(self.low), _fmt(self.high)
        if self.low is not None and self.high is not None:
            if self.low_open or self.high_open:
                return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
            return f"{low}..{high}"
        if self.low is not None:
            return f"> {low}" if self.low_open else f">= {low}"
        if self.high is not None:
            return f"< {high}" if self.high_open else f"<= {high}"
        return "any finite number"

    def check(self, value: object) -> None:
        """Raise ConfigError naming the knob and its valid range unless `value` is valid."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{self.display} must be true or false, got {value!r}")
            return
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{self.display} must be a whole number, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{self.display} must be a finite number, got {value!r}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            raise ConfigError(f"{self.display} {value} is out of range; valid: {self.valid_range()}")


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def unique_knobs(*groups: tuple[Knob, ...]) -> tuple[Knob, ...]:
    """Every knob once, in first-seen order; one name must mean one knob everywhere (two
    strategies may share a knob, e.g. the time grid's eps, but not two knobs one name)."""
    seen: dict[str, Knob] = {}
    for group in groups:
        for knob in group:
            if seen.setdefault(knob.name, knob) != knob:
                raise ValueError(f"two different knobs are named {knob.name!r}")
    return tuple(seen.values())
