"""What the engine yields: one StepRecord per step, and the DecodeResult at the end.

Positions are indices into the generated part (0 .. gen_length - 1); token ids are the
model's. Per-position arrays are host numpy arrays, moved from the device once per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from explorer.decoding.canvas_record import CanvasRecord
from explorer.decoding.energies import EnergyRecord, EnergySkipped, energy_from_json
from explorer.decoding.gates import GateRecord
from explorer.decoding.jsonvalues import as_float, as_int
from explorer.decoding.prophet import ProphetCheck
from explorer.decoding.resume import ScheduleMark
from explorer.decoding.violations import ViolationRecord


@dataclass(frozen=True)
class StepCost:
    """What a step cost, counted three ways (DESIGN 3.3) and split into decoding and measuring.

    `calls`: sequential model calls of the decode (a batched pass of n copies is one call: the
    latency proxy on a GPU; the AR scorer's batch is one too). `sequences`: sequence forwards
    of the decode (a batch of n counts n: the compute). The wall-clock is the step's `seconds`;
    `measure_seconds` of it went to the violation pass, which only measures (`measure_calls`,
    `measure_sequences`) and is not part of decoding. A gated strategy's pairwise probe is
    decoding, and its matrices are the step's violations at no measuring cost."""

    calls: int
    sequences: int
    measure_calls: int = 0
    measure_sequences: int = 0
    measure_seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "calls": self.calls,
            "sequences": self.sequences,
            "measure_calls": self.measure_calls,
            "measure_sequences": self.measure_sequences,
            "measure_seconds": round(self.measure_seconds, 6),
        }

    @classmethod
    def from_json(cls, data: object) -> StepCost:
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {data!r:.40}")
        try:
            return cls(
                as_int(data["calls"]),
                as_int(data["sequences"]),
                as_int(data.get("measure_calls", 0)),
                as_int(data.get("measure_sequences", 0)),
                as_float(data.get("measure_seconds", 0.0)),
            )
        except KeyError as exc:
            raise ValueError(f"the field {exc.args[0]!r} is missing") from None


@dataclass(frozen=True)
class StepExtras:
    """What a step measured beyond the free metrics, each part present when it ran.

    Stored as JSON (`to_json`: {"violations": ..., "energy": ..., "prophet": ..., "schedule": ...,
    "gate": ..., "cost": ..., "canvas": ...}, {} when none ran); `from_json` reads it back and raises ValueError
    on anything malformed."""

    violations: ViolationRecord | None = None  # the pairwise pass over the committed set
    energy: EnergyRecord | EnergySkipped | None = None  # the candidates and the kept one
    prophet: ProphetCheck | None = None  # the logit gap that may fill every mask at once
    schedule: ScheduleMark | None = None  # where the block's schedule stood (for branches)
    gate: GateRecord | None = None  # a gated strategy's proposal and what it kept
    cost: StepCost | None = None  # calls and sequence forwards (every step the engine ran has it)
    canvas: CanvasRecord | None = None  # a canvas model's step: noise, sampled, accepted, re-noised, flips

    @property
    def energy_ran(self) -> EnergyRecord | None:
        return self.energy if isinstance(self.energy, EnergyRecord) else None

    def to_json(self) -> dict:
        parts = {name: getattr(self, name) for name in _READERS}
        return {name: part.to_json() for name, part in parts.items() if part is not None}

    @classmethod
    def from_json(cls, data: object) -> StepExtras:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"extras must be an object, got {data!r:.40}")
        unknown = sorted(set(data) - set(_READERS))
        if unknown:
            raise ValueError(f"unknown extras {', '.join(map(repr, unknown))}; valid: {', '.join(_READERS)}")
        parts = {}
        for name, value in data.items():
            try:
                parts[name] = _READERS[name](value)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{name}: {exc}") from None
        return cls(**parts)

    @classmethod
    def lenient(cls, data: object) -> StepExtras:
        """Like from_json, but a malformed part is left out (reading rows of an older release)."""
        if not isinstance(data, dict):
            return cls()
        parts = {}
        for name, reader in _READERS.items():
            try:
                parts[name] = reader(data[name]) if name in data else None
            except (ValueError, TypeError):
                parts[name] = None
        return cls(**parts)


_READERS = {
    "violations": ViolationRecord.from_json,
    "energy": energy_from_json,
    "prophet": ProphetCheck.from_json,
    "schedule": ScheduleMark.from_json,
    "gate": GateRecord.from_json,
    "cost": StepCost.from_json,
    "canvas": CanvasRecord.from_json,
}


@dataclass(frozen=True)
class StepRecord:
    step: int  # 0-based over the whole run
    block: int
    committed: np.ndarray  # (n,) int64 positions committed this step
    tokens: np.ndarray  # (n,) int64 their token ids
    probs: np.ndarray  # (n,) float32 p(token) at commit
    top_ids: np.ndarray  # (n, K) int64 the K most probable tokens at each committed position
    top_probs: np.ndarray  # (n, K) float32 and their probabilities
    argmax: np.ndarray  # (G,) int32 top-1 token at every position before this step's commit
    confidence: np.ndarray  # (G,) float32 p_top1
    entropy: np.ndarray  # (G,) float32 nats
    margin: np.ndarray  # (G,) float32 p_top1 - p_top2
    masked_before: int  # masked positions in the generated part before this step
    seconds: float  # wall time of this step (forward, metrics, selection)
    # Sequence forwards this step ran, of any model: the step's pass (2 with CFG), the energies'
    # chain copies and AR candidates, the violation pass (a batch of n counts n).
    forward_passes: int = 1
    remasked: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (r,) positions masked again
    remasked_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (r,) the tokens removed
    remasked_probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (r,) p at their commit
    extras: StepExtras = field(default_factory=StepExtras)  # violations, energies, Prophet's check
    # Token-changing strategies (XDLM): a committed position may have held a visible token,
    # which this step replaced (a revision). Aligned with `committed`.
    previous: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,) token before (mask id)
    revised: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (n,) the position was visible
    previous_probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (n,) p at its commit

    @property
    def n_committed(self) -> int:
        return int(self.committed.size)

    @property
    def n_revised(self) -> int:
        return int(self.revised.sum())


@dataclass(frozen=True)
class DecodeResult:
    status: str  # completed | cancelled | failed
    token_ids: list[int]  # the generated part (mask ids where a cancelled run left masks)
    text: str
    n_steps: int
    run_id: int | None = None
    error: str | None = None
