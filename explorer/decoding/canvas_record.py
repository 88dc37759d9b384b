"""What one step of a uniform-noise canvas model did to each position of its canvas (DiffusionGemma).

A canvas model (transformers' DiffusionGemma) refines a canvas of C tokens that starts as uniform
noise: every step it samples a token everywhere, accepts some, and re-noises the rest with fresh
random tokens. The store keeps a run as commit / re-mask events over one state per position; for a
canvas model that state is *kept token* or *noise* (stored as the run's mask id, the noise marker:
one id past the vocabulary), so the token views, exports and Compare read it like any run. What
only a canvas model has (the noise tokens themselves, the sampled tokens, what was accepted and
re-noised, which argmax changed, the stop quantities) is this record, one per step in
`StepExtras.canvas`. Arrays are over the canvas: entry i is generated position `start + i`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explorer.decoding.jsonvalues import as_array, as_bool, as_float, as_int, rounded, same_length


@dataclass(frozen=True)
class CanvasRecord:
    canvas: int  # which canvas (block) of the run, from 0
    start: int  # its first generated position
    step: int  # the step within the canvas, from 0
    tokens_in: np.ndarray  # (C,) int64: the decoder's input canvas (noise included)
    noise_in: np.ndarray  # (C,) bool: that position held noise (initial or re-noised), not a kept token
    sampled: np.ndarray  # (C,) int64: the token drawn at each position this step
    sampled_prob: np.ndarray  # (C,) float32: its probability under the step's (temperature-scaled) law
    accepted: np.ndarray  # (C,) bool: kept by the acceptance rule
    renoised: np.ndarray  # (C,) bool: given a fresh random token for the next step
    flipped: np.ndarray  # (C,) bool: the argmax differs from the previous step's (all at step 0)
    mean_entropy: float  # nats, over the canvas: the stop rule's confidence quantity
    confidence_threshold: float | None  # the stop rule's bound on it (None: no early stop)
    steps_stable: int  # consecutive previous steps with this same argmax canvas
    stable: bool
    confident: bool
    stop: bool  # the canvas stops after this step (stable and confident)
    temperature: float | None  # the linear schedule's temperature this step (None: unscaled)
    final: bool  # the canvas ended here: its tokens became the argmax draft (EOS and padding applied)

    @property
    def size(self) -> int:
        return int(self.tokens_in.size)

    def to_json(self) -> dict:
        return {
            "canvas": self.canvas,
            "start": self.start,
            "step": self.step,
            "tokens_in": self.tokens_in.tolist(),
            "noise_in": self.noise_in.astype(int).tolist(),
            "sampled": self.sampled.tolist(),
            "sampled_prob": rounded(self.sampled_prob),
            "accepted": self.accepted.astype(int).tolist(),
            "renoised": self.renoised.astype(int).tolist(),
            "flipped": self.flipped.astype(int).tolist(),
            "mean_entropy": round(float(self.mean_entropy), 6),
            "confidence_threshold": self.confidence_threshold,
            "steps_stable": self.steps_stable,
            "stable": self.stable,
            "confident": self.confident,
            "stop": self.stop,
            "temperature": None if self.temperature is None else round(float(self.temperature), 6),
            "final": self.final,
        }

    @classmethod
    def from_json(cls, data: object) -> CanvasRecord:
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {data!r:.40}")
        try:
            tokens_in = as_array(data["tokens_in"], np.int64, 1)
            arrays = {
                "noise_in": as_array(data["noise_in"], bool, 1),
                "sampled": as_array(data["sampled"], np.int64, 1),
                "sampled_prob": as_array(data["sampled_prob"], np.float32, 1),
                "accepted": as_array(data["accepted"], bool, 1),
                "renoised": as_array(data["renoised"], bool, 1),
                "flipped": as_array(data["flipped"], bool, 1),
            }
            same_length(tokens_in.size, **arrays)
            threshold, temperature = data["confidence_threshold"], data["temperature"]
            record = cls(
                canvas=as_int(data["canvas"]),
                start=as_int(data["start"]),
                step=as_int(data["step"]),
                tokens_in=tokens_in,
                mean_entropy=as_float(data["mean_entropy"]),
                confidence_threshold=None if threshold is None else as_float(threshold),
                steps_stable=as_int(data["steps_stable"]),
                stable=as_bool(data["stable"]),
                confident=as_bool(data["confident"]),
                stop=as_bool(data["stop"]),
                temperature=None if temperature is None else as_float(temperature),
                final=as_bool(data["final"]),
                **arrays,
            )
        except KeyError as exc:
            raise ValueError(f"the field {exc.args[0]!r} is missing") from None
        if min(record.canvas, record.start, record.step, record.steps_stable) < 0:
            raise ValueError("canvas, start, step and steps_stable must be >= 0")
        return record
