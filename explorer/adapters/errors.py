"""The adapters' errors: each message names the model (or file) and what to do about it."""

from __future__ import annotations

from explorer.adapters.entries import ModelEntry


class ModelConfigError(ValueError):
    """The operator configuration file is malformed; the message names the file and the field."""


class UnknownModelError(ValueError):
    """A model name that this server does not offer."""


class ModelLoadError(ValueError):
    """A listed model could not be loaded or described; the message names it and why."""


class RemoteCodeNotAllowedError(ValueError):
    """A model whose family runs code from its checkpoint, not allowed by the operator."""


def remote_code_refusal(entry: ModelEntry, source: str | None = None) -> RemoteCodeNotAllowedError:
    where = f"set trust_remote_code = true for it in {source}" if source else "list it with trust_remote_code = true"
    return RemoteCodeNotAllowedError(
        f"model {entry.name!r} needs trust_remote_code; the operator configuration does not allow it "
        f"(family {entry.family!r} runs code shipped with the checkpoint; {where} to allow it)"
    )
