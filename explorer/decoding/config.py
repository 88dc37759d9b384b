"""The decoding configuration: one frozen dataclass, validated once, stored as JSON with the run.

`DecodeConfig` has two kinds of fields:
- the settings every run has (`Settings` below: lengths, strategy, schedule, temperature, seed,
  energies, violations), checked by `validate`;
- one field per knob (`KNOBS`), generated from the registry entries that own the knobs: the
  strategies' (`STRATEGIES`), the any-strategy options (Prophet, CFG), the energy stage's and
  the violation pass's. A knob's range check, CLI flag and UI field come from the same entry.

A stored run's config is this dataclass as flat JSON (`to_json` / `from_json`), e.g.
{"strategy": "eb", "eb_gamma": 0.1, "threshold": 0.9, ...}.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, make_dataclass

from explorer.decoding.canvas_rules import CANVAS_KNOBS
from explorer.decoding.energies import ENERGY_KNOBS, ENERGY_TERMS
from explorer.decoding.knobs import ConfigError, Knob, Value, unique_knobs
from explorer.decoding.model_pass import CFG_SCALE
from explorer.decoding.prophet import PROPHET
from explorer.decoding.schedule import SCHEDULES
from explorer.decoding.strategies import STRATEGIES, STRATEGY_KNOBS
from explorer.decoding.violations import VIOLATION_RECENT_STEPS, VIOLATIONS_CAP

__all__ = ["KNOBS", "KNOBS_BY_NAME", "OPTION_KNOBS", "ConfigError", "DecodeConfig", "Settings"]

OPTION_KNOBS: tuple[Knob, ...] = (PROPHET, CFG_SCALE)  # switches that apply to any strategy
KNOBS: tuple[Knob, ...] = unique_knobs(
    STRATEGY_KNOBS, OPTION_KNOBS, ENERGY_KNOBS, (VIOLATIONS_CAP, VIOLATION_RECENT_STEPS), CANVAS_KNOBS
)
KNOBS_BY_NAME: dict[str, Knob] = {knob.name: knob for knob in KNOBS}


@dataclass(frozen=True)
class Settings:
    """The settings every run has; `DecodeConfig` adds one field per knob."""

    gen_length: int = 64
    steps: int = 64
    block_length: int | None = None  # None: one block of gen_length (no semi-AR blocks)
    strategy: str = "low_confidence"
    schedule: str = "llada"  # tokens per step of the scheduled strategies (SCHEDULES)
    temperature: float = 0.0  # 0: argmax; > 0: Gumbel-max sampling in float64
    seed: int = 0
    # Energies (DESIGN 3.2): weighted terms, e.g. (("ar", 1.0),) or (("uni", 1.0),); () = none.
    energies: tuple[tuple[str, float], ...] = ()
    energy_window: tuple[float, float] = (0.4, 1.0)  # apply while the masked fraction t is inside
    ar_scorer: str | None = None  # the AR energy's model; None: the denoiser's own (embedded)
    # Dependency violations (DESIGN 3.3): None = the model's default (on for the embedded one).
    violations: bool | None = None

    def __post_init__(self) -> None:
        # JSON (the store, a bundle) turns tuples into lists: normalise them back, so a config
        # read from a run compares equal to the one that made it.
        energies = tuple((str(name), weight) for name, weight in (self.energies or ()))
        object.__setattr__(self, "energies", energies)
        object.__setattr__(self, "energy_window", tuple(self.energy_window))

    @property
    def block_size(self) -> int:
        return self.gen_length if self.block_length is None else self.block_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_size

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def knob_values(self, knobs: tuple[Knob, ...]) -> dict[str, Value]:
        return {knob.name: getattr(self, knob.name) for knob in knobs}

    def validate(self, context_length: int, prompt_length: int) -> DecodeConfig:
        """Raise ConfigError for the first bad setting; return self when all are fine."""
        self._validate_lengths(context_length, prompt_length)
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if not (
            isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0.0
        ):
            raise ConfigError(f"temperature {self.temperature} must be a finite number >= 0")
        _check_int("seed", self.seed, 0, 2**63 - 1, "0..2^63-1")
        for knob in KNOBS:
            knob.check(getattr(self, knob.name))
        spec = STRATEGIES[self.strategy]
        if spec.check is not None:
            try:
                spec.check(self.knob_values(spec.knobs))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self._validate_energies()
        if spec.gate is not None and self.energies:
            raise ConfigError(
                f"{self.strategy} checks its proposed tokens against each other itself; energies re-draw them, "
                "so the two do not combine: turn the energies off or choose another strategy"
            )
        return self

    def _validate_lengths(self, context_length: int, prompt_length: int) -> None:
        room = context_length - prompt_length
        if prompt_length <= 0:
            raise ConfigError("the prompt is empty: give at least one word")
        if room <= 0:
            raise ConfigError(
                f"the prompt has {prompt_length} tokens; the model's context is "
                f"{context_length}, so no room is left to generate"
            )
        _check_int(
            "gen-length", self.gen_length, 1, room, f"1..{room} (context {context_length} minus prompt {prompt_length})"
        )
        _check_int("steps", self.steps, 1, self.gen_length, f"1..{self.gen_length} (the generation length)")
        block = self.block_size
        _check_int("block-length", block, 1, self.gen_length, f"1..{self.gen_length}")
        if self.gen_length % block:
            raise ConfigError(
                f"block-length {block} does not divide gen-length {self.gen_length}; "
                f"valid block lengths divide it (e.g. {_divisors(self.gen_length)})"
            )
        if self.steps % self.num_blocks:
            raise ConfigError(
                f"steps {self.steps} is not divisible by the number of blocks "
                f"{self.num_blocks} (gen-length / block-length); use a multiple of "
                f"{self.num_blocks}"
            )

    def _validate_energies(self) -> None:
        names = [name for name, _ in self.energies]
        for name, weight in self.energies:
            if name not in ENERGY_TERMS:
                raise ConfigError(f"unknown energy {name!r}; valid: {', '.join(ENERGY_TERMS)}")
            _check_number(f"weight of energy {name!r}", weight, None, None, "a finite number")
        if len(set(names)) != len(names):
            raise ConfigError(f"energy terms repeat: {', '.join(names)}; give each at most once")
        low, high = self.energy_window
        _check_number("energy-window start", low, 0.0, 1.0, "0..1")
        _check_number("energy-window end", high, 0.0, 1.0, "0..1")
        if low > high:
            raise ConfigError(f"energy-window ({low}, {high}) is empty: the start must be <= the end")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DecodeConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict) -> DecodeConfig:
        """The config of a stored run (its `config` column); keys it does not know (a newer
        release's) are ignored, and knobs an older release did not have take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# The dataclass the rest of the code uses: Settings plus one field per knob, generated from the
# registry entries so that a new knob is declared once, in its strategy's (or option's) entry.
DecodeConfig = make_dataclass(
    "DecodeConfig",
    [(knob.name, knob.kind, field(default=knob.default, metadata={"knob": knob})) for knob in KNOBS],
    bases=(Settings,),
    frozen=True,
    namespace={"__doc__": "Settings plus one field per registered knob (see the module docstring)."},
)
DecodeConfig.__module__ = __name__  # pickled by name across the worker pipe


def _check_int(name: str, value: object, low: int, high: int, valid: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} {value} is out of range; valid: {valid}")


def _check_number(name: str, value: object, low: float | None, high: float | None, valid: str) -> None:
    """A finite real number in [low, high]; None = unbounded."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{name} {value} is out of range; valid: {valid}")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in [d for d in range(1, n + 1) if n % d == 0][:8])
