"""The operator configuration's schema: pydantic v2 models for the file `registry.py` reads.

One model per kind of entry (`ModelSchema` for `[[models]]`, `ArScorerSchema` for `[[ar_scorers]]`)
and one for the file (`OperatorConfigSchema`). Every model forbids unknown keys and is strict (no
coercion: `"yes"` is not a boolean, `true` is not a number, `103.0` is not a token id). The fields,
their defaults and their rules are those of the hand-written validation they replace:

- `name`: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; the built-in
  models' names are reserved; unique within its list (checked by `registry.parse_registry`).
- `family`: one of the loaders' families (`MODEL_FAMILIES`, `AR_SCORER_LOADERS`).
- `path`: not blank; required except for the embedded families (models) and `embedded_ar`.
- `dtype`: auto | float32 | bfloat16 | float16; `device`: auto | cpu | mps | cuda | cuda:N.
- `trust_remote_code`: true or false, default false (the loaders refuse a remote-code family
  without it, naming the model; nothing else can turn it on).
- `chat`: only for the families whose tokenizers ship a chat template (llada, dream).
- `mask_id` >= 0, `context_length` >= 2 (whole numbers), `revision`, `description`: strings.

Bounds added with the schema (the old validation had none): `mask_id` < 2^31, `context_length`
<= 2^24, `path` <= 4096 characters, `revision` <= 256, `description` <= 2000.

`validate_operator_config` turns pydantic's `ValidationError` into one plain-text line naming the
file, the entry and the field: `models.toml: models[0] ('llada'): field 'dtype': must be one of
auto, float32, bfloat16, float16 (got 'fp8')`. User-supplied values appear only as bounded
`repr`s (quoted, escapes for control characters, never more than one line).
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from explorer.adapters.ar_scorers import AR_SCORER_LOADERS
from explorer.adapters.devices import DTYPES as TORCH_DTYPES
from explorer.adapters.entries import BUILTIN_MODELS, EMBEDDED
from explorer.adapters.errors import ModelConfigError
from explorer.adapters.families import MODEL_FAMILIES

DTYPES = ("auto", *TORCH_DTYPES)
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CHAT_FAMILIES = ("llada", "dream")  # families whose tokenizers ship a chat template
PATHLESS_MODEL_FAMILIES = ("embedded", "embedded_xdlm")  # their weights ship with the app
RESERVED_NAMES = frozenset({EMBEDDED, *(m.name for m in BUILTIN_MODELS)})
MODEL_FAMILY_NAMES = tuple(MODEL_FAMILIES)
AR_SCORER_FAMILY_NAMES = tuple(sorted(AR_SCORER_LOADERS))

MAX_MASK_ID = 2**31 - 1
MAX_CONTEXT_LENGTH = 2**24
MAX_PATH_CHARS = 4096
MAX_REVISION_CHARS = 256
MAX_DESCRIPTION_CHARS = 2000

# What a pattern means, in the message when a value does not match it.
PATTERN_RULES = {
    "name": "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
    "device": "must be one of auto, cpu, mps, cuda, cuda:N",
}

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Device = Annotated[str, Field(pattern=DEVICE_PATTERN)]
PathText = Annotated[str, Field(max_length=MAX_PATH_CHARS)]
Revision = Annotated[str, Field(max_length=MAX_REVISION_CHARS)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)]


class _EntrySchema(BaseModel):
    """The fields both kinds of entry share (same names, defaults and rules)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Name
    family: str
    # `None` defaults are never validated; an explicit null in JSON is refused (must be a string).
    path: PathText = None  # type: ignore[assignment]
    dtype: Literal[DTYPES] = "auto"  # type: ignore[valid-type]
    device: Device = "auto"
    trust_remote_code: bool = False
    revision: Revision = None  # type: ignore[assignment]
    description: Description = ""

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise PydanticCustomError(
                "reserved_name", f"{value!r} is reserved for a built-in model (always offered); choose another name"
            )
        return value

    @field_validator("path")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("blank", "must not be empty")
        return value


class ModelSchema(_EntrySchema):
    """One `[[models]]` entry (becomes an `entries.ModelEntry`)."""

    family: Literal[MODEL_FAMILY_NAMES]  # type: ignore[valid-type]
    mask_id: Annotated[int, Field(ge=0, le=MAX_MASK_ID)] = None  # type: ignore[assignment]
    chat: bool = False
    context_length: Annotated[int, Field(ge=2, le=MAX_CONTEXT_LENGTH)] = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _family_rules(self) -> ModelSchema:
        if self.path is None and self.family not in PATHLESS_MODEL_FAMILIES:
            raise PydanticCustomError(
                "path_required", f"field 'path': required for family {self.family!r} (a hub id or a local folder)"
            )
        if self.chat and self.family not in CHAT_FAMILIES:
            raise PydanticCustomError(
                "chat_family",
                f"field 'chat': only for the families with a chat template ({', '.join(CHAT_FAMILIES)}), "
                f"not {self.family!r}",
            )
        return self


class ArScorerSchema(_EntrySchema):
    """One `[[ar_scorers]]` entry (becomes an `entries.ArScorerEntry`)."""

    family: Literal[AR_SCORER_FAMILY_NAMES]  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _family_rules(self) -> ArScorerSchema:
        if self.family == "causal_lm" and self.path is None:
            raise PydanticCustomError("path_required", "field 'path': required for a causal_lm scorer")
        return self


class OperatorConfigSchema(BaseModel):
    """The whole file: `{"models": [...], "ar_scorers": [...]}`, both optional."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    models: list[ModelSchema] = []
    ar_scorers: list[ArScorerSchema] = []


SECTIONS: dict[str, type[_EntrySchema]] = {"models": ModelSchema, "ar_scorers": ArScorerSchema}


def validate_operator_config(data: object, source: str) -> OperatorConfigSchema:
    """`data` (a parsed JSON/TOML document) as the schema, or `ModelConfigError` in one line."""
    try:
        return OperatorConfigSchema.model_validate(data)
    except ValidationError as exc:
        raise ModelConfigError(f"{source}: {first_problem(exc, data)}") from None


# ---- pydantic's errors as one line --------------------------------------------------------
KIND_RANK = {"model_type": 0, "list_type": 0, "extra_forbidden": 1, "missing": 2}
TYPE_WORDS = {"string_type": "a string", "bool_type": "true or false", "int_type": "a whole number"}


def first_problem(exc: ValidationError, data: object) -> str:
    """The first problem in file order (top level, then each entry: unknown keys, missing fields,
    wrong types, then values), as 'where: what' without the file name."""
    errors = exc.errors(include_url=False)

    def order(error: dict) -> tuple:
        loc = error["loc"]
        section = 0 if len(loc) < 2 else 1 + list(SECTIONS).index(loc[0])
        index = loc[1] if len(loc) >= 2 else -1
        rank = KIND_RANK.get(error["type"], 3 if error["type"].endswith("_type") else 4)
        return section, index, rank

    first = min(errors, key=order)  # min() keeps pydantic's order among equals
    loc = first["loc"]
    if len(loc) < 2:
        return _top_level(first, data, errors)
    section, index, field = loc[0], loc[1], (loc[2] if len(loc) > 2 else None)
    item = data[section][index]  # type: ignore[index]  # validated as far as the list
    where = f"{section}[{index}]"
    if first["type"] == "model_type":
        return f"{where}: each entry must be a table/object, got {type(item).__name__}"
    name = item.get("name")
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN[1:-1], name):  # hostile names only in 'got'
        where = f"{where} ({name!r})"
    if first["type"] == "extra_forbidden":
        extra = [e["loc"][2] for e in errors if e["type"] == "extra_forbidden" and e["loc"][:2] == (section, index)]
        return f"{where}: {_unknown_keys(sorted(extra), tuple(SECTIONS[section].model_fields))}"
    if field is None:  # a rule across fields: its message names the field
        return f"{where}: {first['msg']}"
    return f"{where}: field {field!r}: {_what(first, SECTIONS[section], field)}"


def _top_level(error: dict, data: object, errors: list[dict]) -> str:
    if error["type"] == "model_type":
        return (
            "the top level must be a table/object with 'models' "
            f"(and optionally 'ar_scorers'), got {type(data).__name__}"
        )
    if error["type"] == "extra_forbidden":
        extra = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1)
        return f"unknown top-level key(s) {_names(extra)}; valid: 'models', 'ar_scorers'"
    section = error["loc"][0]
    value = data[section]  # type: ignore[index]
    return f"{section!r} must be a list (TOML: [[{section}]] tables), got {type(value).__name__}"


def _what(error: dict, schema: type[_EntrySchema], field: str) -> str:
    """What is wrong with one field's value, in words."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    got = f" (got {shown(value)})"
    if kind == "missing":
        return "required but missing"
    if kind in TYPE_WORDS:
        return f"must be {TYPE_WORDS[kind]}{got}"
    if kind == "literal_error":
        choices = typing.get_args(schema.model_fields[field].annotation)
        return f"must be one of {', '.join(map(str, choices))}{got}"
    if kind == "string_pattern_mismatch":
        return PATTERN_RULES.get(field, "has the wrong form") + got
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}{got}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}{got}"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters (got {len(value)})"
    if kind == "blank":
        return f"{error['msg']}{got}"
    return error["msg"]  # the schema's own rules (reserved names) word their message


def _unknown_keys(keys: list[str], valid: tuple[str, ...]) -> str:
    hints = [f"{shown(k)} -> {close[0]!r}" for k in keys[:5] if (close := difflib.get_close_matches(k, valid, n=1))]
    hint = f" (did you mean: {', '.join(hints)}?)" if hints else ""
    return f"unknown key(s) {_names(keys)}{hint}; valid: {', '.join(valid)}"


def _names(keys: list[str], limit: int = 5) -> str:
    listed = ", ".join(shown(k) for k in keys[:limit])
    return listed + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def shown(value: object, limit: int = 60) -> str:
    """A user-supplied value for a message: its repr (quoted, escaped, one line), bounded."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"
