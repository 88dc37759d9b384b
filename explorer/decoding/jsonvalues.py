"""Strict readers for the JSON that step records are stored as: each returns the typed value or
raises ValueError saying what was expected (a store or a bundle may hold anything)."""

from __future__ import annotations

import math

import numpy as np


def as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r:.40}")
    return value


def as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r:.40}")
    return value


def as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r:.40}")
    return float(value)


def as_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r:.40}")
    return value


def as_array(value: object, dtype, ndim: int) -> np.ndarray:
    """A JSON list (of lists) of numbers as an `ndim`-d array; a bool array reads 0/1 or true/false."""
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r:.40}")
    if dtype is bool:
        reader = _as_flag
    elif np.issubdtype(np.dtype(dtype), np.integer):
        reader = as_int
    else:
        reader = as_float
    for item in _flatten(value, ndim):
        reader(item)
    try:
        array = np.array(value, dtype=dtype)
    except ValueError:
        raise ValueError(f"expected a rectangular {ndim}-d list, got ragged rows") from None
    if array.ndim != ndim and array.size:
        raise ValueError(f"expected a {ndim}-d list, got {array.ndim}-d")
    return array.reshape((0,) * ndim) if array.size == 0 else array


def _as_flag(value: object) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"expected 0, 1, true or false, got {value!r:.40}")


def _flatten(value: list, ndim: int) -> list:
    if ndim == 1:
        return value
    out = []
    for row in value:
        if not isinstance(row, list):
            raise ValueError(f"expected a list of lists, got an entry {row!r:.40}")
        out.extend(_flatten(row, ndim - 1))
    return out


def square(array: np.ndarray, n: int, name: str) -> np.ndarray:
    if array.shape != (n, n):
        raise ValueError(f"{name} must be {n} x {n}, got shape {array.shape}")
    return array


def same_length(n: int, **arrays) -> None:
    for name, array in arrays.items():
        if len(array) != n:
            raise ValueError(f"{name} has {len(array)} entries, expected {n}")


def rounded(values, digits: int = 4) -> list:
    """A JSON-ready rounded copy (+ 0.0 turns -0.0 into 0.0)."""
    return (np.round(np.asarray(values, dtype=np.float64), digits) + 0.0).tolist()
