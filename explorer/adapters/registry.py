"""The operator's model registry: which models (and AR scorers) this server offers.

A JSON or TOML file (TOML when the name ends in `.toml`, read with `tomllib`) whose path comes
from the `--models-config` flag or the `EXPLORER_MODELS_CONFIG` environment variable:

    # models.toml
    [[models]]
    name = "llada-8b-instruct"          # what --model / the UI use
    family = "llada"                    # embedded | masked_lm | llada | dream | mdlm | diffusion_gemma
    path = "GSAI-ML/LLaDA-8B-Instruct"  # hub id, or a folder (see below)
    dtype = "auto"                      # auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA, else fp32)
    device = "auto"                     # auto | cpu | cuda | cuda:N (auto: CUDA when available)
    trust_remote_code = true            # default false; ONLY this file can turn it on
    chat = true                         # apply the tokenizer's chat template (llada, dream)
    # mask_id = 126336                  # override the family's mask id
    # context_length = 4096             # override the length read from the model config
    # revision = "<commit sha>"         # pin the hub revision (advisable with remote code)
    # description = "..."               # shown in the UI

    [[models]]
    name = "bert-base"
    family = "masked_lm"
    path = "./checkpoints/bert-base-uncased"

    [[ar_scorers]]                      # the AR energy's models (explorer/adapters/ar_scorers.py)
    name = "gpt2"
    family = "causal_lm"                # causal_lm | embedded_ar
    path = "gpt2"

The JSON form is the same object: `{"models": [{...}, ...], "ar_scorers": [{...}, ...]}`.

Rules:
- `embedded` is always offered (and its name is reserved); a model not listed cannot be loaded.
- `trust_remote_code` is only ever read from this file; a family that needs remote code
  (llada, dream, mdlm) listed without it is refused when loaded or described, with a message
  naming the model. Nothing typed in the UI or on the command line can enable it.
- `path`: one starting with `/`, `~`, `./` or `../` is a local folder (relative ones are taken
  from the configuration file's folder); anything else goes to `from_pretrained` unchanged (a
  hub id, or a folder relative to the working directory).
- The file is validated once, when read, against the pydantic schema in
  `explorer/adapters/operator_schema.py` (unknown keys, unknown families, bad dtypes or devices,
  wrong types, numbers out of bounds) and for duplicate names: `ModelConfigError` with one
  plain-text line naming the file, the entry, the field and what is wrong, e.g.
  `models.toml: models[0] ('x'): field 'dtype': must be one of auto, float32, bfloat16, float16 (got 'fp8')`.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from explorer.adapters.entries import BUILTIN_MODELS, EMBEDDED, EMBEDDED_AR_ENTRY, ArScorerEntry, ModelEntry
from explorer.adapters.errors import ModelConfigError, UnknownModelError
from explorer.adapters.operator_schema import validate_operator_config

ENV_VAR = "EXPLORER_MODELS_CONFIG"


@dataclass(frozen=True)
class ModelRegistry:
    """The models (and AR scorers) on offer: the built-in `embedded` plus the operator's list."""

    models: tuple[ModelEntry, ...] = ()
    ar_scorers: tuple[ArScorerEntry, ...] = ()
    source: str | None = None  # the configuration file, None for the built-in default

    def names(self) -> tuple[str, ...]:
        return (*(m.name for m in BUILTIN_MODELS), *(m.name for m in self.models))

    def get(self, name: str) -> ModelEntry:
        return self._find(name, BUILTIN_MODELS, self.models, "model", self.names())

    def ar_scorer_names(self) -> tuple[str, ...]:
        return (EMBEDDED, *(s.name for s in self.ar_scorers))

    def get_ar_scorer(self, name: str) -> ArScorerEntry:
        return self._find(name, (EMBEDDED_AR_ENTRY,), self.ar_scorers, "AR scorer", self.ar_scorer_names())

    def _find(self, name: str, builtins: tuple, entries: tuple, what: str, valid: tuple[str, ...]):
        """The entry called `name` (a built-in one first), or an error listing the valid names."""
        for entry in (*builtins, *entries):
            if entry.name == name:
                return entry
        raise UnknownModelError(f"unknown {what} {name!r}; valid: {', '.join(valid)} ({self._where()})")

    def _where(self) -> str:
        if self.source is None:
            return f"no operator model configuration: pass --models-config FILE or set {ENV_VAR} to offer more"
        return f"models listed in {self.source}"


DEFAULT_REGISTRY = ModelRegistry()


# ---- reading and validating a file ---------------------------------------------------------
def load_registry(path: str | os.PathLike) -> ModelRegistry:
    """Read and validate an operator configuration file (JSON, or TOML by extension)."""
    path = Path(path).expanduser()
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelConfigError(f"{where}: cannot read the model configuration ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ModelConfigError(f"{where}: not valid {kind}: {exc}") from None
    return parse_registry(data, source=where, base_dir=path.resolve().parent)


def parse_registry(data: object, source: str = "<models config>", base_dir: Path | None = None) -> ModelRegistry:
    """Validate an already parsed configuration object; `source` names it in errors.

    The schema (explorer/adapters/operator_schema.py, pydantic) checks keys, types, bounds and
    each entry's rules; this adds what spans entries (unique names) and resolves relative paths."""
    config = validate_operator_config(data, source)
    models = tuple(ModelEntry(**_fields(m, base_dir)) for m in config.models)
    scorers = tuple(ArScorerEntry(**_fields(s, base_dir)) for s in config.ar_scorers)
    _check_unique([m.name for m in models], f"{source}: models")
    _check_unique([s.name for s in scorers], f"{source}: ar_scorers")
    return ModelRegistry(models, scorers, source)


def _fields(entry: BaseModel, base_dir: Path | None) -> dict:
    """A validated entry's fields (defaults included) for its dataclass, the path resolved."""
    values = entry.model_dump()
    values["path"] = _resolve_path(values["path"], base_dir)
    return values


def _check_unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ModelConfigError(f"{where}: the name {name!r} is listed twice")
        seen.add(name)


def _resolve_path(path: str | None, base_dir: Path | None) -> str | None:
    if path is None:
        return None
    if path.startswith("~"):
        return str(Path(path).expanduser())
    if path.startswith(("./", "../")) and base_dir is not None:
        return str((base_dir / path).resolve())
    return path


# ---- which registry is in force ------------------------------------------------------------
def registry_from_env() -> ModelRegistry:
    """The file named by $EXPLORER_MODELS_CONFIG, else the built-in default (only `embedded`).

    Read on every call: no process-wide state. A long-lived process (the app, a worker) reads it
    once and passes the registry on."""
    path = os.environ.get(ENV_VAR)
    return load_registry(path) if path else DEFAULT_REGISTRY


def resolve_registry(flag: str | None = None) -> ModelRegistry:
    """The registry for a command-line flag value: the flag's file, else `registry_from_env()`."""
    return load_registry(flag) if flag else registry_from_env()
