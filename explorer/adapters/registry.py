"""The operator's model registry: which models (and AR scorers) this server offers.

A JSON or TOML file (TOML when the name ends in `.toml`, read with `tomllib`) whose path comes
from the `--models-config` flag or the `EXPLORER_MODELS_CONFIG` environment variable:

    # models.toml
    [[models]]
    name = "llada-8b-instruct"          # what --model / the UI use
    family = "llada"                    # embedded | masked_lm | llada | dream | mdlm
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
- The file is validated once, when read: unknown keys, unknown families, bad dtypes or devices,
  duplicate names and wrong types raise `ModelConfigError` naming the file and the field.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from explorer.adapters.ar_scorers import AR_SCORER_LOADERS
from explorer.adapters.devices import DTYPES as TORCH_DTYPES
from explorer.adapters.entries import BUILTIN_MODELS, EMBEDDED, EMBEDDED_AR_ENTRY, ArScorerEntry, ModelEntry
from explorer.adapters.errors import ModelConfigError, UnknownModelError
from explorer.adapters.families import MODEL_FAMILIES

ENV_VAR = "EXPLORER_MODELS_CONFIG"
DTYPES = ("auto", *TORCH_DTYPES)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CHAT_FAMILIES = ("llada", "dream")  # families whose tokenizers ship a chat template


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
RESERVED_NAMES = frozenset({EMBEDDED, *(m.name for m in BUILTIN_MODELS)})


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
    """Validate an already parsed configuration object; `source` names it in errors."""
    if not isinstance(data, dict):
        raise ModelConfigError(
            f"{source}: the top level must be a table/object with 'models' "
            f"(and optionally 'ar_scorers'), got {type(data).__name__}"
        )
    unknown = sorted(set(data) - {"models", "ar_scorers"})
    if unknown:
        raise ModelConfigError(
            f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; valid: 'models', 'ar_scorers'"
        )
    models = tuple(
        _parse_model(item, f"{source}: models[{i}]", base_dir, tuple(MODEL_FAMILIES))
        for i, item in enumerate(_list(data.get("models", []), f"{source}: 'models'"))
    )
    scorers = tuple(
        _parse_ar_scorer(item, f"{source}: ar_scorers[{i}]", base_dir)
        for i, item in enumerate(_list(data.get("ar_scorers", []), f"{source}: 'ar_scorers'"))
    )
    _check_unique([m.name for m in models], f"{source}: models")
    _check_unique([s.name for s in scorers], f"{source}: ar_scorers")
    return ModelRegistry(models, scorers, source)


def _list(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise ModelConfigError(f"{where} must be a list (TOML: [[models]] tables), got {type(value).__name__}")
    return value


def _check_unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ModelConfigError(f"{where}: the name {name!r} is listed twice")
        seen.add(name)


def _typed(cls, item: object, where: str) -> tuple[dict, str]:
    """Check keys and value types against the dataclass `cls`; return the fields and a location."""
    if not isinstance(item, dict):
        raise ModelConfigError(f"{where}: each entry must be a table/object, got {type(item).__name__}")
    name = item.get("name")
    if isinstance(name, str):
        where = f"{where} ({name!r})"
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(item) - set(known))
    if unknown:
        raise ModelConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(known)}")
    for required in ("name", "family"):
        if required not in item:
            raise ModelConfigError(f"{where}: field {required!r} is required")
    expected = {
        "name": str,
        "family": str,
        "path": str,
        "dtype": str,
        "device": str,
        "revision": str,
        "description": str,
        "trust_remote_code": bool,
        "chat": bool,
        "mask_id": int,
        "context_length": int,
    }
    for key, value in item.items():
        kind = expected[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise ModelConfigError(f"{where}: field {key!r} must be {_kind_name(kind)}, got {value!r}")
    return dict(item), where


def _kind_name(kind: type) -> str:
    return {str: "a string", bool: "true or false", int: "a whole number"}[kind]


def _common(item: dict, where: str) -> None:
    if not NAME_PATTERN.match(item["name"]):
        raise ModelConfigError(
            f"{where}: field 'name' {item['name']!r} must be 1-64 characters of "
            "letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if item["name"] in RESERVED_NAMES:
        raise ModelConfigError(
            f"{where}: field 'name': {item['name']!r} is reserved for a built-in model "
            "(always offered); choose another name"
        )
    dtype = item.get("dtype", "auto")
    if dtype not in DTYPES:
        raise ModelConfigError(f"{where}: field 'dtype' {dtype!r} is not one of {', '.join(DTYPES)}")
    device = item.get("device", "auto")
    if not DEVICE_PATTERN.match(device):
        raise ModelConfigError(f"{where}: field 'device' {device!r} is not one of auto, cpu, mps, cuda, cuda:N")
    if "path" in item and not item["path"].strip():
        raise ModelConfigError(f"{where}: field 'path' is empty")


def _resolve_path(path: str | None, base_dir: Path | None) -> str | None:
    if path is None:
        return None
    if path.startswith("~"):
        return str(Path(path).expanduser())
    if path.startswith(("./", "../")) and base_dir is not None:
        return str((base_dir / path).resolve())
    return path


def _parse_model(item: object, where: str, base_dir: Path | None, families: tuple[str, ...]) -> ModelEntry:
    item, where = _typed(ModelEntry, item, where)
    _common(item, where)
    family = item["family"]
    if family not in families:
        raise ModelConfigError(f"{where}: field 'family' {family!r} is unknown; valid: {', '.join(families)}")
    if family not in ("embedded", "embedded_xdlm") and "path" not in item:
        raise ModelConfigError(f"{where}: field 'path' is required (a hub id or a local folder)")
    if item.get("chat") and family not in CHAT_FAMILIES:
        raise ModelConfigError(
            f"{where}: field 'chat' applies to the families with a chat template "
            f"({', '.join(CHAT_FAMILIES)}), not {family!r}"
        )
    if item.get("mask_id") is not None and item["mask_id"] < 0:
        raise ModelConfigError(f"{where}: field 'mask_id' must be >= 0, got {item['mask_id']}")
    if item.get("context_length") is not None and item["context_length"] < 2:
        raise ModelConfigError(f"{where}: field 'context_length' must be >= 2, got {item['context_length']}")
    item["path"] = _resolve_path(item.get("path"), base_dir)
    return ModelEntry(**item)


def _parse_ar_scorer(item: object, where: str, base_dir: Path | None) -> ArScorerEntry:
    item, where = _typed(ArScorerEntry, item, where)
    _common(item, where)
    if item["family"] not in AR_SCORER_LOADERS:
        raise ModelConfigError(
            f"{where}: field 'family' {item['family']!r} is unknown; valid: {', '.join(sorted(AR_SCORER_LOADERS))}"
        )
    if item["family"] == "causal_lm" and "path" not in item:
        raise ModelConfigError(f"{where}: field 'path' is required for a causal_lm scorer")
    item["path"] = _resolve_path(item.get("path"), base_dir)
    return ArScorerEntry(**item)


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
