"""A sweep's specification (TOML, validated by pydantic) and its expansion into cells.

    name = "frontier-small"
    models = ["embedded"]
    gen_length = 64
    seeds = 20                      # seeds 0..19; or a list, e.g. [3, 7, 11]
    temperatures = [0.0, 1.0]
    prompt = "once upon a time"
    greedy_prompts = "stories"      # T = 0: seed s decodes the opening of story s (embedded grammar)
    metrics = ["checker", "ar_nll"] # cost is always recorded
    device = "auto"                 # cpu | cuda | auto (a Ray task asks for a GPU when cuda)
    seeds_per_task = 10

    [defaults]                      # every group's settings unless it sets them
    violations = false

    [[cells]]                       # a group: every list is an axis, the group is their product
    strategy = "low_confidence"
    tokens_per_step = [1, 2, 4]     # steps = gen_length / tokens_per_step

    [[cells]]
    strategy = "pairwise_gate"
    steps = 64
    lookahead_k = 8
    gate_tau = [1.0, 3.0]
    energy = "none"                 # or "uni", "ar", "uni=0.5+ar=1" (DecodeConfig.energies)

A group's keys are `DecodeConfig` fields and knobs (the same names as `decode`'s flags, with
underscores), plus `tokens_per_step`, `energy`, `label`, `temperature` and `prompt`. A cell is one
(model, temperature, group, axis values): a `DecodeConfig` without its seed. Every cell's config
is checked when the spec is read, so a bad spec stores nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from explorer.decoding.config import DecodeConfig, Settings
from explorer.decoding.energies import ENERGY_TERMS
from explorer.decoding.knobs import ConfigError
from explorer.sweeps.metrics import METRICS, NEEDS

MAX_CELLS = 10_000
MAX_SEEDS = 100_000
GROUP_ONLY = {"tokens_per_step", "energy", "label", "temperature", "prompt"}  # group keys beyond DecodeConfig's
NOT_IN_GROUPS = {"seed", "gen_length", "energies"}  # set at the top (gen_length), per run (seed), or as `energy`
GROUP_HINTS = {
    "seed": "seeds are set at the top",
    "gen_length": "gen_length is set at the top",
    "energies": 'write energy = "uni" (or "uni=0.5+ar=1")',
}
CONFIG_FIELDS = {f.name for f in fields(DecodeConfig)}
TUPLE_FIELDS = {f.name for f in fields(Settings) if isinstance(f.default, tuple)}  # energy_window: a list is one value


class SpecError(ValueError):
    """The spec cannot be run; the message says which key and why (one line)."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    models: list[str] = Field(default_factory=lambda: ["embedded"], min_length=1)
    gen_length: int = Field(default=64, ge=1, le=4096)
    seeds: int | list[int] = 20
    temperatures: list[float] = Field(default_factory=lambda: [0.0])
    prompt: str = "once upon a time"
    greedy_prompts: Literal["prompt", "stories"] = "prompt"
    prompt_words: int = Field(default=20, ge=1, le=200)
    metrics: list[str] = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seeds_per_task: int = Field(default=10, ge=1, le=10_000)
    defaults: dict[str, Any] = Field(default_factory=dict)  # keys every group has unless it sets them
    cells: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int) and not 1 <= value <= MAX_SEEDS:
            raise ValueError(f"must be 1..{MAX_SEEDS}")
        if isinstance(value, list):
            if not value or len(value) > MAX_SEEDS or len(set(value)) != len(value):
                raise ValueError(f"must be a list of 1..{MAX_SEEDS} distinct seeds")
            if any(not 0 <= s < 2**63 for s in value):
                raise ValueError("seeds must be 0..2^63-1")
        return value

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, value: list[float]) -> list[float]:
        if not value or any(t < 0 for t in value):
            raise ValueError("must be a non-empty list of temperatures >= 0")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
        for name, needed in NEEDS.items():
            if name in value and needed not in value:
                raise ValueError(f"metric {name!r} labels tokens with the {needed!r} metric: add {needed!r} to metrics")
        return value

    @model_validator(mode="after")
    def _greedy_prompts(self) -> _Spec:
        if self.greedy_prompts == "stories" and any(m != "embedded" for m in self.models):
            raise ValueError("greedy_prompts = 'stories' opens the embedded grammar's stories: models must be embedded")
        return self


@dataclass(frozen=True)
class Cell:
    """One configuration of a sweep: its model, the DecodeConfig fields but the seed, the prompt rule."""

    model: str
    config: dict  # DecodeConfig kwargs without `seed`
    prompt: str  # the prompt of every seed, unless `story_prompts`
    story_prompts: bool  # seed s decodes the first `prompt_words` words of story s (greedy cells)
    prompt_words: int
    group: str  # the series it belongs to in tables and figures
    setting_name: str  # the axis that varies along the series ("tokens_per_step", "gate_tau", ...)
    setting: float | int | str | None
    label: str

    @property
    def key(self) -> str:
        """Stable id of the configuration (not of its labels): a hash of what decides the tokens."""
        what = {k: getattr(self, k) for k in ("model", "config", "prompt", "story_prompts", "prompt_words")}
        return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def temperature(self) -> float:
        return float(self.config.get("temperature", 0.0))

    def decode_config(self, seed: int) -> DecodeConfig:
        return DecodeConfig.from_dict({**self.config, "seed": seed})

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Cell:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class SweepSpec:
    """A validated spec: its settings (as JSON, stored with the sweep) and its cells in order."""

    name: str
    settings: dict
    cells: tuple[Cell, ...]
    seed_list: tuple[int, ...]

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.settings["metrics"])

    def to_json(self) -> dict:
        return {**self.settings, "seed_list": list(self.seed_list)}


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a TOML spec; SpecError (one line) when it cannot be run."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"no sweep spec at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}") from None
    return parse_spec(data)


def parse_spec(data: dict) -> SweepSpec:
    try:
        spec = _Spec.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "spec"
        raise SpecError(f"sweep spec: {where}: {error['msg']}") from None
    cells = tuple(_expand(spec))
    if len(cells) > MAX_CELLS:
        raise SpecError(f"sweep spec: {len(cells)} cells, more than the {MAX_CELLS} allowed")
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        duplicate = next(c for c in cells if keys.count(c.key) > 1)
        raise SpecError(f"sweep spec: the cell {duplicate.label!r} appears twice (two groups give the same config)")
    if "violation_auc" in spec.metrics:
        off = next((c for c in cells if c.config.get("violations") is False), None)
        if off is not None:
            raise SpecError(
                f"sweep spec: the cell {off.label!r} ({off.model}, T = {off.temperature:g}) sets violations = false: "
                "metric 'violation_auc' reads the violation pass's scores"
            )
    seeds = tuple(range(spec.seeds)) if isinstance(spec.seeds, int) else tuple(spec.seeds)
    return SweepSpec(spec.name, spec.model_dump(), cells, seeds)


def _expand(spec: _Spec) -> list[Cell]:
    cells = []
    for model, temperature in itertools.product(spec.models, spec.temperatures):
        for i, own in enumerate(spec.cells):
            group = {**spec.defaults, **own}
            for values in _axes(group, i):
                cells.append(_cell(spec, model, temperature, values, group, i))
    return cells


def _axes(group: dict, index: int) -> list[dict]:
    """The group's settings, one dict per point of the product of its list-valued keys."""
    for key in group:
        if key in NOT_IN_GROUPS or (key not in CONFIG_FIELDS and key not in GROUP_ONLY):
            hint = GROUP_HINTS.get(key, "not a decode setting or knob")
            raise SpecError(f"sweep spec: cells[{index}].{key}: {hint}")
    names = list(group)
    choices = [_values(key, group[key]) for key in names]
    if any(len(c) == 0 for c in choices):
        raise SpecError(f"sweep spec: cells[{index}]: an empty list gives no cell")
    return [dict(zip(names, point)) for point in itertools.product(*choices)]


def _values(key: str, value: Any) -> list:
    if key in TUPLE_FIELDS:
        return [tuple(v) for v in value] if value and isinstance(value[0], list) else [tuple(value)]
    return list(value) if isinstance(value, list) else [value]


def _cell(spec: _Spec, model: str, temperature: float, values: dict, group: dict, index: int) -> Cell:
    where = f"cells[{index}]"
    values = dict(values)
    label = values.pop("label", None)
    prompt = values.pop("prompt", spec.prompt)
    temperature = float(values.pop("temperature", temperature))
    energy = values.pop("energy", "none")
    config = {k: v for k, v in values.items() if k != "tokens_per_step"}
    config |= {"gen_length": spec.gen_length, "temperature": temperature, "energies": _energies(energy, where)}
    if "tokens_per_step" in values:
        tps = values["tokens_per_step"]
        if not isinstance(tps, int) or tps < 1 or spec.gen_length % tps:
            raise SpecError(f"sweep spec: {where}.tokens_per_step: {tps!r} must divide gen_length {spec.gen_length}")
        config["steps"] = spec.gen_length // tps
    config.setdefault("steps", spec.gen_length)
    try:
        checked = DecodeConfig.from_dict({**config, "seed": 0})
        checked.validate(context_length=1 << 30, prompt_length=1)
    except (ConfigError, TypeError, ValueError) as exc:
        raise SpecError(f"sweep spec: {where} ({model}, T = {temperature:g}): {exc}") from None
    config = {k: v for k, v in json.loads(checked.to_json()).items() if k != "seed"}
    varying = [k for k in group if isinstance(group[k], list) and k not in TUPLE_FIELDS]
    setting_name = varying[0] if varying else ""
    setting = energy if setting_name == "energy" else values.get(setting_name)
    series = label if isinstance(label, str) else _series(values, energy)
    point = ", ".join(f"{k} = {_fmt(energy if k == 'energy' else values.get(k))}" for k in varying)
    return Cell(
        model=model,
        config=config,
        prompt=prompt,
        story_prompts=spec.greedy_prompts == "stories" and temperature == 0,
        prompt_words=spec.prompt_words,
        group=series,
        setting_name=setting_name,
        setting=setting,
        label=f"{series} ({point})" if point else series,
    )


def _series(values: dict, energy: str) -> str:
    strategy = values.get("strategy", Settings.strategy)
    return strategy if energy == "none" else f"{strategy} + {energy}"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _energies(text: Any, where: str) -> list[list]:
    """`energy = "uni"`, "ar=0.5", "uni+ar", or "none" -> DecodeConfig.energies."""
    if not isinstance(text, str):
        raise SpecError(f'sweep spec: {where}.energy must be a string like "uni" or "uni=0.5+ar=1"')
    if text.strip() in ("", "none"):
        return []
    terms = []
    for item in text.split("+"):
        name, _, weight = item.partition("=")
        name = name.strip()
        if name not in ENERGY_TERMS:
            raise SpecError(f"sweep spec: {where}.energy: unknown term {name!r}; choose from {', '.join(ENERGY_TERMS)}")
        try:
            terms.append([name, float(weight) if weight.strip() else 1.0])
        except ValueError:
            raise SpecError(f"sweep spec: {where}.energy: the weight of {name} must be a number") from None
    return terms
