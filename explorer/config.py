"""The decoding configuration: one frozen dataclass, validated once, stored as JSON with the run."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields


class ConfigError(ValueError):
    """A setting is out of range or inconsistent; the message names it and the valid range."""


@dataclass(frozen=True)
class DecodeConfig:
    gen_length: int = 64
    steps: int = 64
    block_length: int | None = None  # None: one block of gen_length (no semi-AR blocks)
    strategy: str = "low_confidence"
    threshold: float = 0.9  # the `threshold` strategy's confidence bar tau
    temperature: float = 0.0  # 0: argmax; > 0: Gumbel-max sampling in float64
    seed: int = 0
    origin_eps: float = 1e-3  # final time t = eps of the `origin` / `remdm_conf` time grid
    factor: float = 1.0  # the `factor` strategy's f: commit the prefix with (n+1)(1 - c(n)) <= f
    eb_gamma: float = 0.1  # the `eb` strategy's bound on sum(H) - max(H), nats
    prophet: bool = False  # Prophet early commit: fill every mask once the logit gap is large
    cfg_scale: float = 0.0  # classifier-free guidance w (0: off; > 0: a second, prompt-masked pass)
    # Energies (DESIGN 3.2): weighted terms, e.g. (("ar", 1.0),) or (("uni", 1.0),); () = none.
    energies: tuple[tuple[str, float], ...] = ()
    energy_candidates: int = 4  # k candidates drawn from the product of marginals
    energy_window: tuple[float, float] = (0.4, 1.0)  # apply while the masked fraction t is inside
    energy_tau: float = 1.0  # keep candidate j with probability softmax(-E / tau)
    energy_orders: int = 1  # orders S of Inv-E / Uni-E: 1 = the deterministic left-to-right chain
    ar_scorer: str | None = None  # the AR energy's model; None: the denoiser's own (embedded)
    # A step whose chain terms (ind / inv / uni) would need more sequences than this, k S (n - 1),
    # keeps its own proposal and records why (a Prophet fill or a low threshold commits many).
    energy_max_sequences: int = 4096
    # Dependency violations (DESIGN 3.3): None = the model's default (on for the embedded one).
    violations: bool | None = None
    violation_cap: int = 16  # at most this many (the most confident) committed tokens per step

    def __post_init__(self) -> None:
        # JSON (the store, the worker pipe) turns tuples into lists: normalise them back, so a
        # config read from a run compares equal to the one that made it.
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

    def validate(self, context_length: int, prompt_length: int, strategies: tuple[str, ...],
                 energy_terms: tuple[str, ...] = ()) -> "DecodeConfig":
        """Raise ConfigError for the first bad setting; return self when all are fine."""
        room = context_length - prompt_length
        if prompt_length <= 0:
            raise ConfigError("the prompt is empty: give at least one word")
        if room <= 0:
            raise ConfigError(f"the prompt has {prompt_length} tokens; the model's context is "
                              f"{context_length}, so no room is left to generate")
        _check_int("gen-length", self.gen_length, 1, room,
                   f"1..{room} (context {context_length} minus prompt {prompt_length})")
        _check_int("steps", self.steps, 1, self.gen_length, f"1..{self.gen_length} (the generation length)")
        block = self.block_size
        _check_int("block-length", block, 1, self.gen_length, f"1..{self.gen_length}")
        if self.gen_length % block:
            raise ConfigError(f"block-length {block} does not divide gen-length {self.gen_length}; "
                              f"valid block lengths divide it (e.g. {_divisors(self.gen_length)})")
        if self.steps % self.num_blocks:
            raise ConfigError(f"steps {self.steps} is not divisible by the number of blocks "
                              f"{self.num_blocks} (gen-length / block-length); use a multiple of "
                              f"{self.num_blocks}")
        if self.strategy not in strategies:
            raise ConfigError(f"unknown strategy {self.strategy!r}; valid: {', '.join(strategies)}")
        if not (isinstance(self.threshold, (int, float)) and 0.0 < self.threshold <= 1.0):
            raise ConfigError(f"threshold {self.threshold} is outside (0, 1]")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0.0):
            raise ConfigError(f"temperature {self.temperature} must be a finite number >= 0")
        if not (0.0 < self.origin_eps < 1.0):
            raise ConfigError(f"origin-eps {self.origin_eps} is outside (0, 1)")
        _check_int("seed", self.seed, 0, 2**63 - 1, "0..2^63-1")
        _check_number("factor", self.factor, 0.0, None, "> 0", open_low=True)
        _check_number("eb-gamma", self.eb_gamma, 0.0, None, ">= 0")
        _check_number("cfg-scale", self.cfg_scale, 0.0, 100.0, "0..100")
        self._validate_energies(energy_terms)
        _check_int("violation-cap", self.violation_cap, 2, 256, "2..256")
        return self

    def _validate_energies(self, energy_terms: tuple[str, ...]) -> None:
        names = [name for name, _ in self.energies]
        for name, weight in self.energies:
            if name not in energy_terms:
                raise ConfigError(f"unknown energy {name!r}; valid: {', '.join(energy_terms)}")
            _check_number(f"weight of energy {name!r}", weight, None, None, "a finite number")
        if len(set(names)) != len(names):
            raise ConfigError(f"energy terms repeat: {', '.join(names)}; give each at most once")
        _check_int("energy-candidates", self.energy_candidates, 1, 64, "1..64")
        _check_int("energy-orders", self.energy_orders, 1, 64, "1..64")
        _check_int("energy-max-sequences", self.energy_max_sequences, 1, 2**20, "1..1048576")
        _check_number("energy-tau", self.energy_tau, 0.0, None, "> 0", open_low=True)
        low, high = self.energy_window
        _check_number("energy-window start", low, 0.0, 1.0, "0..1")
        _check_number("energy-window end", high, 0.0, 1.0, "0..1")
        if low > high:
            raise ConfigError(f"energy-window ({low}, {high}) is empty: the start must be <= the end")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DecodeConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def _check_int(name: str, value: object, low: int, high: int, valid: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} {value} is out of range; valid: {valid}")


def _check_number(name: str, value: object, low: float | None, high: float | None, valid: str,
                  open_low: bool = False) -> None:
    """A finite real number in [low, high] ((low, high] with open_low); None = unbounded."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if open_low else value < low)
    if too_low or (high is not None and value > high):
        raise ConfigError(f"{name} {value} is out of range; valid: {valid}")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in [d for d in range(1, n + 1) if n % d == 0][:8])
