"""Diffusion-LM Trajectory Explorer: step-by-step masked-diffusion decoding, recorded."""
from explorer.api import Decoded, decode
from explorer.config import ConfigError, DecodeConfig
from explorer.records import DecodeResult, StepRecord
from explorer.store import TrajectoryStore
from explorer.strategies import STRATEGIES

__all__ = ["ConfigError", "DecodeConfig", "DecodeResult", "Decoded", "STRATEGIES", "StepRecord",
           "TrajectoryStore", "decode"]
