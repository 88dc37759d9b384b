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
    origin_eps: float = 1e-3  # the `origin` strategy's final time t = eps

    @property
    def block_size(self) -> int:
        return self.gen_length if self.block_length is None else self.block_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_size

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def validate(self, context_length: int, prompt_length: int, strategies: tuple[str, ...]) -> "DecodeConfig":
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
        return self

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


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in [d for d in range(1, n + 1) if n % d == 0][:8])
