"""Diffusion-LM Trajectory Explorer: step-by-step masked-diffusion decoding, recorded."""

from explorer.api import Decoded, branch, decode
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
    "branch",
    "decode",
]
