"""Diffusion-LM Trajectory Explorer: step-by-step masked-diffusion decoding, recorded."""

__version__ = "0.1.0"  # the one version string (`python -m explorer --version`)

from explorer.api import Decoded, alternatives, branch, decode, repairs
from explorer.branching.edits import Force, Remask
from explorer.decoding.config import ConfigError, DecodeConfig
from explorer.decoding.records import DecodeResult, StepRecord
from explorer.decoding.strategies import STRATEGIES
from explorer.recording import RecordingStreamer, record_dream_history
from explorer.store.database import TrajectoryStore

__all__ = [
    "STRATEGIES",
    "ConfigError",
    "DecodeConfig",
    "DecodeResult",
    "Decoded",
    "Force",
    "RecordingStreamer",
    "Remask",
    "StepRecord",
    "TrajectoryStore",
    "__version__",
    "alternatives",
    "branch",
    "decode",
    "record_dream_history",
    "repairs",
]
