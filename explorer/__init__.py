"""Diffusion-LM Trajectory Explorer: step-by-step masked-diffusion decoding, recorded."""

from explorer.api import Decoded, alternatives, branch, decode, repairs
from explorer.branching.edits import Force, Remask
from explorer.decoding.config import ConfigError, DecodeConfig
from explorer.decoding.records import DecodeResult, StepRecord
from explorer.decoding.strategies import STRATEGIES
from explorer.store.database import TrajectoryStore

__all__ = [
    "STRATEGIES",
    "ConfigError",
    "DecodeConfig",
    "DecodeResult",
    "Decoded",
    "Force",
    "Remask",
    "StepRecord",
    "TrajectoryStore",
    "alternatives",
    "branch",
    "decode",
    "repairs",
]
