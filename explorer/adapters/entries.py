"""What an operator lists: one entry per model (or AR scorer) the server offers.

Entries are built by `registry.parse_registry` from the operator's file (or are the built-in
`embedded` ones); `trust_remote_code` is only ever read from that file.
"""

from __future__ import annotations

from dataclasses import dataclass

EMBEDDED = "embedded"
EMBEDDED_XDLM = "embedded-xdlm"

# Families whose checkpoints ship their modeling code (`trust_remote_code`): only the operator
# configuration can allow them.
REMOTE_CODE_FAMILIES = frozenset({"llada", "dream", "mdlm"})


@dataclass(frozen=True)
class ModelEntry:
    """One model the server offers. Built from the file (or the built-in `embedded`)."""

    name: str
    family: str
    path: str | None = None  # hub id or folder; None only for the embedded family (its own folder)
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    mask_id: int | None = None
    chat: bool = False
    context_length: int | None = None
    revision: str | None = None
    description: str = ""


@dataclass(frozen=True)
class ArScorerEntry:
    """An autoregressive scorer for the AR energy (loaded by `ar_scorers`)."""

    name: str
    family: str  # causal_lm | embedded_ar
    path: str | None = None  # required for causal_lm
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    description: str = ""


EMBEDDED_ENTRY = ModelEntry(name=EMBEDDED, family="embedded", dtype="float32", device="cpu")
EMBEDDED_XDLM_ENTRY = ModelEntry(name=EMBEDDED_XDLM, family="embedded_xdlm", dtype="float32", device="cpu")
BUILTIN_MODELS = (EMBEDDED_ENTRY, EMBEDDED_XDLM_ENTRY)  # always offered; their names are reserved
EMBEDDED_AR_ENTRY = ArScorerEntry(
    name=EMBEDDED,
    family="embedded_ar",
    dtype="float32",
    device="cpu",
    description="story-grammar AR model shipped with the app",
)
