"""The operator's model configuration: which models (and AR scorers) this server offers.

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

    [[ar_scorers]]                      # the AR energy's models (explorer/ar_scorers.py)
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

ENV_VAR = "EXPLORER_MODELS_CONFIG"
EMBEDDED = "embedded"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CHAT_FAMILIES = ("llada", "dream")  # families whose tokenizers ship a chat template
AR_SCORER_FAMILIES = ("causal_lm", "embedded_ar")


class ModelConfigError(ValueError):
    """The operator configuration file is malformed; the message names the file and the field."""


class UnknownModelError(ValueError):
    """A model name that this server does not offer."""


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
    """An autoregressive scorer for the AR energy (loaded by explorer/ar_scorers.py)."""

    name: str
    family: str  # causal_lm | embedded_ar
    path: str | None = None  # required for causal_lm
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    description: str = ""


EMBEDDED_ENTRY = ModelEntry(name=EMBEDDED, family="embedded", dtype="float32", device="cpu")
EMBEDDED_AR_ENTRY = ArScorerEntry(name=EMBEDDED, family="embedded_ar", dtype="float32", device="cpu",
                                  description="story-grammar AR model shipped with the app")


@dataclass(frozen=True)
class ModelRegistry:
    """The models (and AR scorers) on offer: the built-in `embedded` plus the operator's list."""

    models: tuple[ModelEntry, ...] = ()
    ar_scorers: tuple[ArScorerEntry, ...] = ()
    source: str | None = None  # the configuration file, None for the built-in default

    def names(self) -> tuple[str, ...]:
        return (EMBEDDED, *(m.name for m in self.models))

    def get(self, name: str) -> ModelEntry:
        return self._find(name, EMBEDDED_ENTRY, self.models, "model", self.names())

    def ar_scorer_names(self) -> tuple[str, ...]:
        return (EMBEDDED, *(s.name for s in self.ar_scorers))

    def get_ar_scorer(self, name: str) -> ArScorerEntry:
        return self._find(name, EMBEDDED_AR_ENTRY, self.ar_scorers, "AR scorer", self.ar_scorer_names())

    def _find(self, name: str, builtin, entries: tuple, what: str, valid: tuple[str, ...]):
        """The entry called `name` (the built-in one for 'embedded'), or an error listing the valid names."""
        if name == EMBEDDED:
            return builtin
        for entry in entries:
            if entry.name == name:
                return entry
        raise UnknownModelError(f"unknown {what} {name!r}; valid: {', '.join(valid)} ({self._where()})")

    def _where(self) -> str:
        if self.source is None:
            return (f"no operator model configuration: pass --models-config FILE or set {ENV_VAR} "
                    "to offer more")
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
    """Validate an already parsed configuration object; `source` names it in errors."""
    from explorer.adapters import MODEL_FAMILIES  # the family registry (imported late: no cycle)

    if not isinstance(data, dict):
        raise ModelConfigError(f"{source}: the top level must be a table/object with 'models' "
                               f"(and optionally 'ar_scorers'), got {type(data).__name__}")
    unknown = sorted(set(data) - {"models", "ar_scorers"})
    if unknown:
        raise ModelConfigError(f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                               "valid: 'models', 'ar_scorers'")
    models = tuple(_parse_model(item, f"{source}: models[{i}]", base_dir, tuple(MODEL_FAMILIES))
                   for i, item in enumerate(_list(data.get("models", []), f"{source}: 'models'")))
    scorers = tuple(_parse_ar_scorer(item, f"{source}: ar_scorers[{i}]", base_dir)
                    for i, item in enumerate(_list(data.get("ar_scorers", []), f"{source}: 'ar_scorers'")))
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
        raise ModelConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                               f"valid: {', '.join(known)}")
    for required in ("name", "family"):
        if required not in item:
            raise ModelConfigError(f"{where}: field {required!r} is required")
    expected = {"name": str, "family": str, "path": str, "dtype": str, "device": str, "revision": str,
                "description": str, "trust_remote_code": bool, "chat": bool, "mask_id": int,
                "context_length": int}
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
        raise ModelConfigError(f"{where}: field 'name' {item['name']!r} must be 1-64 characters of "
                               "letters, digits, '.', '_' or '-', starting with a letter or digit")
    if item["name"] == EMBEDDED:
        raise ModelConfigError(f"{where}: field 'name': 'embedded' is reserved for the built-in model "
                               "(always offered); choose another name")
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
    if family != "embedded" and "path" not in item:
        raise ModelConfigError(f"{where}: field 'path' is required (a hub id or a local folder)")
    if item.get("chat") and family not in CHAT_FAMILIES:
        raise ModelConfigError(f"{where}: field 'chat' applies to the families with a chat template "
                               f"({', '.join(CHAT_FAMILIES)}), not {family!r}")
    if item.get("mask_id") is not None and item["mask_id"] < 0:
        raise ModelConfigError(f"{where}: field 'mask_id' must be >= 0, got {item['mask_id']}")
    if item.get("context_length") is not None and item["context_length"] < 2:
        raise ModelConfigError(f"{where}: field 'context_length' must be >= 2, got {item['context_length']}")
    item["path"] = _resolve_path(item.get("path"), base_dir)
    return ModelEntry(**item)


def _parse_ar_scorer(item: object, where: str, base_dir: Path | None) -> ArScorerEntry:
    item, where = _typed(ArScorerEntry, item, where)
    _common(item, where)
    if item["family"] not in AR_SCORER_FAMILIES:
        raise ModelConfigError(f"{where}: field 'family' {item['family']!r} is unknown; valid: "
                               f"{', '.join(AR_SCORER_FAMILIES)}")
    if item["family"] == "causal_lm" and "path" not in item:
        raise ModelConfigError(f"{where}: field 'path' is required for a causal_lm scorer")
    item["path"] = _resolve_path(item.get("path"), base_dir)
    return ArScorerEntry(**item)


# ---- which registry is in force ------------------------------------------------------------
_active: ModelRegistry | None = None
_env_cache: dict[tuple[str, int], ModelRegistry] = {}


def resolve_registry(flag: str | None = None) -> ModelRegistry:
    """The registry for a command-line flag value: the flag's file, else `active_registry()`."""
    return _cached(flag) if flag else active_registry()


def _cached(path: str) -> ModelRegistry:
    try:
        stamp = Path(path).expanduser().stat().st_mtime_ns
    except OSError:
        stamp = -1
    key = (str(Path(path).expanduser().resolve()), stamp)
    if key not in _env_cache:
        _env_cache[key] = load_registry(path)
    return _env_cache[key]


def active_registry() -> ModelRegistry:
    """What `load_denoiser(name)` uses when no registry is passed.

    The registry installed by `use_models_config`, else the file named by
    $EXPLORER_MODELS_CONFIG (read once per modification), else the built-in default.
    """
    if _active is not None:
        return _active
    path = os.environ.get(ENV_VAR)
    return _cached(path) if path else DEFAULT_REGISTRY


def use_models_config(path: str | os.PathLike | None) -> ModelRegistry:
    """Install a configuration for this process and the worker processes it starts later.

    Validates the file now (raising ModelConfigError), makes it the active registry, and exports
    its absolute path as $EXPLORER_MODELS_CONFIG so spawned model workers read the same file.
    `None` keeps whatever the environment says.
    """
    global _active
    if path is None:
        _active = None
        return active_registry()
    registry = load_registry(path)
    os.environ[ENV_VAR] = str(Path(path).expanduser().resolve())
    _active = registry
    return registry


def reset_active_registry() -> None:
    """Forget an installed registry (tests)."""
    global _active
    _active = None
    _env_cache.clear()
