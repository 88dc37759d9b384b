"""The operator's model configuration (explorer/adapters/registry.py): parsing, validation, lookup."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from explorer.adapters import registry as mc
from explorer.adapters.entries import REMOTE_CODE_FAMILIES, ArScorerEntry, ModelEntry
from explorer.adapters.errors import ModelConfigError, RemoteCodeNotAllowedError, UnknownModelError
from explorer.adapters.families import MODEL_DESCRIBERS, MODEL_FAMILIES
from explorer.adapters.loading import describe_model, load_denoiser
from explorer.adapters.registry import load_registry, parse_registry
from explorer.cli import main as cli_main

TOML = """
[[models]]
name = "llada-8b-instruct"
family = "llada"
path = "GSAI-ML/LLaDA-8B-Instruct"
trust_remote_code = true
chat = true
dtype = "bfloat16"
device = "cuda:0"

[[models]]
name = "bert"
family = "masked_lm"
path = "./checkpoints/bert"
mask_id = 103
context_length = 128
description = "a local BERT"

[[ar_scorers]]
name = "gpt2"
family = "causal_lm"
path = "gpt2"
"""


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(mc.ENV_VAR, raising=False)
    yield


def write(tmp_path, data, name="models.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_without_a_configuration_only_embedded_is_offered():
    registry = mc.registry_from_env()
    assert registry is mc.DEFAULT_REGISTRY and registry.names() == ("embedded", "embedded-xdlm")
    assert load_denoiser("embedded").name == "embedded"
    assert describe_model("embedded").mask_id == load_denoiser("embedded").mask_id
    with pytest.raises(UnknownModelError, match=r"unknown model 'llada'; valid: embedded.*--models-config"):
        load_denoiser("llada")


def test_toml_and_json_forms_parse_to_the_same_frozen_entries(tmp_path):
    toml_registry = load_registry(write(tmp_path, TOML, "models.toml"))
    data = {
        "models": [
            {
                "name": "llada-8b-instruct",
                "family": "llada",
                "path": "GSAI-ML/LLaDA-8B-Instruct",
                "trust_remote_code": True,
                "chat": True,
                "dtype": "bfloat16",
                "device": "cuda:0",
            },
            {
                "name": "bert",
                "family": "masked_lm",
                "path": "./checkpoints/bert",
                "mask_id": 103,
                "context_length": 128,
                "description": "a local BERT",
            },
        ],
        "ar_scorers": [{"name": "gpt2", "family": "causal_lm", "path": "gpt2"}],
    }
    json_registry = load_registry(write(tmp_path, data))
    assert toml_registry.models == json_registry.models
    assert toml_registry.ar_scorers == json_registry.ar_scorers
    assert toml_registry.names() == ("embedded", "embedded-xdlm", "llada-8b-instruct", "bert")
    llada, bert = toml_registry.models
    assert llada == ModelEntry(
        "llada-8b-instruct",
        "llada",
        "GSAI-ML/LLaDA-8B-Instruct",
        "bfloat16",
        "cuda:0",
        trust_remote_code=True,
        chat=True,
    )
    assert bert.path == str((tmp_path / "checkpoints" / "bert").resolve())  # relative to the file
    assert (bert.trust_remote_code, bert.dtype, bert.device, bert.mask_id) == (False, "auto", "auto", 103)
    assert toml_registry.ar_scorer_names() == ("embedded", "gpt2")
    assert toml_registry.get_ar_scorer("gpt2") == ArScorerEntry("gpt2", "causal_lm", "gpt2")
    assert toml_registry.get_ar_scorer("embedded").family == "embedded_ar"
    with pytest.raises(dataclasses.FrozenInstanceError):
        llada.trust_remote_code = False


def test_an_unlisted_model_is_refused_naming_the_listed_ones(tmp_path):
    path = write(tmp_path, TOML, "models.toml")
    registry = load_registry(path)
    with pytest.raises(UnknownModelError) as err:
        load_denoiser("gpt-4", registry=registry)
    message = str(err.value)
    assert "unknown model 'gpt-4'" in message
    assert "embedded, embedded-xdlm, llada-8b-instruct, bert" in message and str(path) in message


def test_remote_code_is_refused_unless_the_file_allows_it(tmp_path):
    registry = parse_registry(
        {
            "models": [
                {"name": "dream", "family": "dream", "path": "Dream-org/Dream-v0-Base-7B"},
                {"name": "mdlm", "family": "mdlm", "path": "kuleshov-group/mdlm-owt", "trust_remote_code": False},
            ]
        },
        source="ops.json",
    )
    for name in ("dream", "mdlm"):
        with pytest.raises(
            RemoteCodeNotAllowedError,
            match=f"model '{name}' needs trust_remote_code; the operator configuration does not allow it .*ops.json",
        ):
            load_denoiser(name, registry=registry)
        with pytest.raises(RemoteCodeNotAllowedError):
            describe_model(name, registry=registry)


def test_families_and_which_need_remote_code():
    families = {"embedded", "embedded_xdlm", "masked_lm", "llada", "dream", "mdlm", "diffusion_gemma"}
    assert set(MODEL_FAMILIES) == set(MODEL_DESCRIBERS) == families
    assert REMOTE_CODE_FAMILIES == {"llada", "dream", "mdlm"}


BAD = [
    ([], "the top level must be"),
    ({"modles": []}, "unknown top-level key(s) 'modles'"),
    ({"models": {"name": "x"}}, "'models' must be a list"),
    ({"models": ["x"]}, "models[0]: each entry must be a table"),
    (
        {"models": [{"name": "x", "family": "llada", "path": "p", "trust": True}]},
        "models[0] ('x'): unknown key(s) 'trust'",
    ),
    ({"models": [{"family": "llada", "path": "p"}]}, "models[0]: field 'name': required but missing"),
    (
        {"models": [{"name": "x", "family": "gpt", "path": "p"}]},
        "models[0] ('x'): field 'family': must be one of "
        "embedded, embedded_xdlm, masked_lm, llada, dream, mdlm, diffusion_gemma (got 'gpt')",
    ),
    (
        {"models": [{"name": "x", "family": "llada", "path": "p", "dtype": "fp8"}]},
        "models[0] ('x'): field 'dtype': must be one of auto, float32, bfloat16, float16 (got 'fp8')",
    ),
    (
        {"models": [{"name": "x", "family": "llada", "path": "p", "device": "gpu"}]},
        "field 'device': must be one of auto, cpu, mps, cuda, cuda:N (got 'gpu')",
    ),
    (
        {"models": [{"name": "x", "family": "llada", "path": "p", "trust_remote_code": "yes"}]},
        "field 'trust_remote_code': must be true or false (got 'yes')",
    ),
    (
        {"models": [{"name": "x", "family": "llada", "path": "p", "mask_id": True}]},
        "field 'mask_id': must be a whole number (got True)",
    ),
    (
        {"models": [{"name": "x", "family": "llada", "path": "p", "mask_id": -1}]},
        "field 'mask_id': must be >= 0 (got -1)",
    ),
    ({"models": [{"name": "x", "family": "llada"}]}, "field 'path': required for family 'llada'"),
    (
        {"models": [{"name": "x", "family": "masked_lm", "path": "p", "chat": True}]},
        "field 'chat': only for the families with a chat template (llada, dream), not 'masked_lm'",
    ),
    ({"models": [{"name": "embedded", "family": "masked_lm", "path": "p"}]}, "'embedded' is reserved"),
    (
        {"models": [{"name": "a b", "family": "masked_lm", "path": "p"}]},
        "models[0]: field 'name': must be 1-64 characters of letters, digits, '.', '_' or '-', "
        "starting with a letter or digit (got 'a b')",
    ),
    (
        {"models": [{"name": "x", "family": "masked_lm", "path": "p"}, {"name": "x", "family": "llada", "path": "q"}]},
        "models: the name 'x' is listed twice",
    ),
    (
        {"models": [], "ar_scorers": [{"name": "g", "family": "masked_lm", "path": "p"}]},
        "ar_scorers[0] ('g'): field 'family': must be one of causal_lm, embedded_ar (got 'masked_lm')",
    ),
    (
        {"models": [], "ar_scorers": [{"name": "g", "family": "causal_lm"}]},
        "ar_scorers[0] ('g'): field 'path': required for a causal_lm scorer",
    ),
    (
        {"models": [], "ar_scorers": [{"name": "g", "family": "causal_lm", "path": "p", "chat": True}]},
        "unknown key(s) 'chat'",
    ),
]


@pytest.mark.parametrize("data, message", BAD, ids=[m[:40] for _, m in BAD])
def test_malformed_files_are_refused_naming_the_file_and_the_field(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ModelConfigError) as err:
        load_registry(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
    assert "\n" not in str(err.value)  # one line


def test_unreadable_and_unparsable_files(tmp_path):
    with pytest.raises(ModelConfigError, match="cannot read the model configuration"):
        load_registry(tmp_path / "missing.json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        load_registry(write(tmp_path, "{models: ", "bad.json"))
    with pytest.raises(ModelConfigError, match="not valid TOML"):
        load_registry(write(tmp_path, "[[models]\nname=", "bad.toml"))


def test_the_environment_variable_and_the_flag(tmp_path, monkeypatch):
    """No process-wide registry: the environment is read when asked, the flag wins over it, and a
    long-lived process passes the registry it read on (Services -> WorkerPool -> worker)."""
    path = write(tmp_path, TOML, "models.toml")
    monkeypatch.setenv(mc.ENV_VAR, str(path))
    assert mc.registry_from_env().names() == ("embedded", "embedded-xdlm", "llada-8b-instruct", "bert")
    assert mc.resolve_registry(None) == mc.registry_from_env()
    other = write(tmp_path, {"models": [{"name": "only", "family": "masked_lm", "path": "p"}]})
    assert mc.resolve_registry(str(other)).names() == ("embedded", "embedded-xdlm", "only")  # the flag wins
    monkeypatch.delenv(mc.ENV_VAR)
    assert mc.registry_from_env() is mc.DEFAULT_REGISTRY
    assert not hasattr(mc, "use_models_config") and not hasattr(mc, "active_registry")


def test_cli_takes_the_flag_and_refuses_unlisted_models(tmp_path, capsys):
    path = write(tmp_path, TOML, "models.toml")
    code = cli_main(
        ["decode", "--models-config", str(path), "--model", "gpt-4", "--prompt", "once upon a time", "--no-store"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'gpt-4'") and "llada-8b-instruct" in err
    refused = write(tmp_path, {"models": [{"name": "dream", "family": "dream", "path": "Dream-org/Dream-v0-Base-7B"}]})
    code = cli_main(["decode", "--models-config", str(refused), "--model", "dream", "--prompt", "x", "--no-store"])
    assert code == 2
    assert (
        "error: model 'dream' needs trust_remote_code; the operator configuration does not allow it"
        in capsys.readouterr().err
    )
    code = cli_main(["decode", "--models-config", str(tmp_path / "nope.toml"), "--prompt", "x", "--no-store"])
    assert code == 2 and "cannot read the model configuration" in capsys.readouterr().err


# ---- the pydantic schema (explorer/adapters/operator_schema.py) ----------------------------
VALID = {
    "models": [
        {
            "name": "llada-8b-instruct",
            "family": "llada",
            "path": "GSAI-ML/LLaDA-8B-Instruct",
            "trust_remote_code": True,
            "chat": True,
            "dtype": "bfloat16",
            "device": "cuda:0",
            "revision": "0123abcd",
        },
        {
            "name": "bert",
            "family": "masked_lm",
            "path": "./checkpoints/bert",
            "mask_id": 103,
            "context_length": 128,
            "description": "a local <b>BERT</b> & co",
        },
        {"name": "dream.v0", "family": "dream", "path": "~/dream", "chat": False, "device": "mps"},
        {"name": "tiny_x", "family": "embedded_xdlm", "dtype": "float16", "device": "cpu"},
        {"name": "mdlm", "family": "mdlm", "path": "../mdlm", "mask_id": 0, "context_length": 2},
    ],
    "ar_scorers": [
        {"name": "gpt2", "family": "causal_lm", "path": "gpt2", "dtype": "float32"},
        {"name": "story", "family": "embedded_ar", "description": "", "trust_remote_code": False},
    ],
}
# The last commit with the hand-written validation; the tests below run it on the same input.
OLD_COMMIT = "fd32fe0252cd2014902538b19b01201840693c92"


@pytest.fixture(scope="module")
def old_parse():
    """`parse_registry` as committed before the schema (loaded from git; skipped without it)."""
    import subprocess
    import sys
    import types

    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:explorer/adapters/registry.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"git or commit {OLD_COMMIT[:8]} not available")
    module = types.ModuleType("old_registry")
    sys.modules[module.__name__] = module  # @dataclass looks its module up while the class is made
    try:
        exec(compile(source, "old_registry.py", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module.parse_registry


def refusal(parse, data) -> str | None:
    try:
        parse(data, source="ops.json", base_dir=None)
    except ModelConfigError as exc:
        return str(exc)
    return None


def test_a_valid_file_gives_the_registry_the_old_validation_gave(tmp_path, old_parse):
    for data, name in ((VALID, "models.json"), (TOML, "models.toml")):
        path = write(tmp_path, data, name)
        new = load_registry(path)
        parsed = tomllib.loads(TOML) if name.endswith(".toml") else VALID
        old = old_parse(parsed, source=str(path), base_dir=tmp_path.resolve())
        assert (new.models, new.ar_scorers, new.source) == (old.models, old.ar_scorers, old.source)


def test_a_valid_file_gives_the_expected_entries(tmp_path):
    """What both the old validation and the schema build from VALID, spelled out (defaults included)."""
    new = load_registry(write(tmp_path, VALID))
    assert new.names() == ("embedded", "embedded-xdlm", "llada-8b-instruct", "bert", "dream.v0", "tiny_x", "mdlm")
    assert new.models[0] == ModelEntry(
        "llada-8b-instruct",
        "llada",
        "GSAI-ML/LLaDA-8B-Instruct",
        "bfloat16",
        "cuda:0",
        trust_remote_code=True,
        chat=True,
        revision="0123abcd",
    )
    assert new.models[1] == ModelEntry(
        "bert",
        "masked_lm",
        str((tmp_path / "checkpoints" / "bert").resolve()),
        mask_id=103,
        context_length=128,
        description="a local <b>BERT</b> & co",  # kept as text, unescaped: escaping is the renderer's job
    )
    assert new.models[2] == ModelEntry("dream.v0", "dream", str(Path("~/dream").expanduser()), device="mps")
    assert new.models[3] == ModelEntry("tiny_x", "embedded_xdlm", None, "float16", "cpu")
    assert new.models[4] == ModelEntry(
        "mdlm", "mdlm", str((tmp_path.parent / "mdlm").resolve()), mask_id=0, context_length=2
    )
    assert new.ar_scorers == (
        ArScorerEntry("gpt2", "causal_lm", "gpt2", "float32"),
        ArScorerEntry("story", "embedded_ar"),
    )


def test_the_schema_has_the_entries_fields_and_defaults():
    from explorer.adapters.operator_schema import ArScorerSchema, ModelSchema

    for schema, entry in ((ModelSchema, ModelEntry), (ArScorerSchema, ArScorerEntry)):
        fields = {f.name: f.default for f in dataclasses.fields(entry)}
        assert set(schema.model_fields) == set(fields)
        required = {n for n, f in schema.model_fields.items() if f.is_required()}
        assert required == {"name", "family"} == {n for n, d in fields.items() if d is dataclasses.MISSING}
        assert {n: f.default for n, f in schema.model_fields.items() if n not in required} == {
            n: d for n, d in fields.items() if n not in required
        }
        assert schema.model_config["extra"] == "forbid" and schema.model_config["strict"]


def entry(**fields):
    return {"models": [{"name": "x", "family": "llada", "path": "p", **fields}]}


def test_a_misspelt_key_is_refused_with_the_likely_one_named(tmp_path):
    path = write(tmp_path, entry(trust_remote_cod=True))
    with pytest.raises(ModelConfigError) as err:
        load_registry(path)
    assert str(err.value) == (
        f"{path}: models[0] ('x'): unknown key(s) 'trust_remote_cod' (did you mean: 'trust_remote_cod' -> "
        "'trust_remote_code'?); valid: name, family, path, dtype, device, trust_remote_code, revision, "
        "description, mask_id, chat, context_length"
    )
    toml = write(tmp_path, '[[models]]\nname = "x"\nfamly = "llada"\nfamily = "llada"\npath = "p"\n', "m.toml")
    with pytest.raises(ModelConfigError, match=r"m\.toml: models\[0\] \('x'\): unknown key\(s\) 'famly'"):
        load_registry(toml)
    many = entry(**{f"k{i}": 1 for i in range(40)})  # bounded: five named, then a count
    message = refusal(parse_registry, many)
    assert "and 35 more" in message and len(message) < 600
    assert refusal(parse_registry, {"models": [], "ar_scorer": []}).endswith(
        "unknown top-level key(s) 'ar_scorer'; valid: 'models', 'ar_scorers'"
    )


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"context_length": "128"}, "field 'context_length': must be a whole number (got '128')"),
        ({"mask_id": 103.0}, "field 'mask_id': must be a whole number (got 103.0)"),
        ({"path": 5}, "field 'path': must be a string (got 5)"),
        ({"description": None}, "field 'description': must be a string (got None)"),
        ({"revision": None}, "field 'revision': must be a string (got None)"),
        ({"chat": 1}, "field 'chat': must be true or false (got 1)"),
        ({"dtype": ["float32"]}, "field 'dtype': must be one of auto, float32, bfloat16, float16 (got ['float32'])"),
        ({"device": 0}, "field 'device': must be a string (got 0)"),
        ({"family": None}, "field 'family': must be one of embedded, embedded_xdlm, masked_lm, llada, dream, mdlm"),
        ({"path": "  "}, "field 'path': must not be empty (got '  ')"),
        ({"mask_id": 2**31}, "field 'mask_id': must be <= 2147483647 (got 2147483648)"),
        ({"context_length": 1}, "field 'context_length': must be >= 2 (got 1)"),
        ({"context_length": 2**24 + 1}, "field 'context_length': must be <= 16777216 (got 16777217)"),
        ({"description": "d" * 2001}, "field 'description': must be at most 2000 characters (got 2001)"),
        ({"revision": "r" * 257}, "field 'revision': must be at most 256 characters (got 257)"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_a_wrong_type_or_value_is_refused_naming_the_field(fields, message):
    got = refusal(parse_registry, entry(**fields))
    assert got is not None and got.startswith("ops.json: models[0] ('x'): ") and message in got, got
    assert "\n" not in got and "Input should" not in got  # ours, not pydantic's wording


@pytest.mark.parametrize("name", ["<b>x</b>", "<script>alert(1)</script>", "x\ny", "x\n", "a" * 5000, "é"])
def test_a_hostile_name_is_refused_and_shown_only_as_quoted_plain_text(name):
    got = refusal(parse_registry, {"models": [{"name": name, "family": "masked_lm", "path": "p"}]})
    assert got is not None and got.startswith("ops.json: models[0]: field 'name': must be 1-64 characters")
    assert "\n" not in got and len(got) < 300  # one bounded line
    assert "&lt;" not in got and "&amp;" not in got  # plain text (the UI escapes what it shows)
    if len(name) < 40:
        assert got.endswith(f"(got {name!r})")  # quoted and escaped by repr, once
    # nor does the hostile text reach the entry's location (only the 'got' part)
    assert got.split(": field", 1)[0] == "ops.json: models[0]"


def test_names_with_a_trailing_newline_are_now_refused(old_parse):
    """The one acceptance the schema changes: the old patterns used `$`, which matched before a
    trailing newline, so 'x\\n' was accepted as a name (and 'cpu\\n' as a device)."""
    for fields in ({"name": "x\n"}, {"device": "cpu\n"}):
        data = {"models": [{"name": "x", "family": "masked_lm", "path": "p", **fields}]}
        assert refusal(old_parse, data) is None and refusal(parse_registry, data) is not None


POOL = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    103,
    1.5,
    "",
    " ",
    "x",
    "y",
    "p",
    "./rel",
    "auto",
    "cpu",
    "cuda",
    "cuda:1",
    "gpu",
    "float32",
    "fp8",
    "llada",
    "dream",
    "masked_lm",
    "embedded",
    "embedded_xdlm",
    "causal_lm",
    "embedded_ar",
    "a b",
    "<b>x</b>",
    [],
    {},
    ["x"],
]
KEYS = [
    "name",
    "family",
    "path",
    "dtype",
    "device",
    "trust_remote_code",
    "mask_id",
    "chat",
    "context_length",
    "revision",
    "description",
    "trust",
]


def mutate(rng, data: dict) -> dict:
    data = json.loads(json.dumps(data))
    for _ in range(rng.randint(1, 3)):
        section = rng.choice(["models", "ar_scorers"])
        entries = data[section]
        if not isinstance(entries, list):
            continue  # already replaced by something else
        tables = [e for e in entries if isinstance(e, dict)]
        action = rng.randrange(8)
        if action == 0 and tables:
            rng.choice(tables).pop(rng.choice(KEYS), None)
        elif action in (1, 2, 3) and tables:
            rng.choice(tables)[rng.choice(KEYS)] = rng.choice(POOL)
        elif action == 4 and tables:
            entries.append(dict(rng.choice(tables)))  # a duplicate name, unless renamed later
        elif action == 5 and entries:
            entries[rng.randrange(len(entries))] = rng.choice(POOL)
        elif action == 6:
            data[section] = rng.choice([*POOL, entries])
        else:
            data.setdefault(rng.choice(["models", "ar_scorers"] * 3 + ["modles"]), [])
    return data


def test_mutated_files_are_refused_and_accepted_as_the_old_validation_did(old_parse):
    """A seeded mutator over the valid file: the schema refuses exactly what the hand-written
    validation refused and builds the same registry from the rest."""
    import random

    rng = random.Random(13)
    accepted = refused = 0
    for _ in range(1500):
        data = mutate(rng, VALID)
        new, old = refusal(parse_registry, data), refusal(old_parse, data)
        assert (new is None) == (old is None), (data, new, old)
        if new is None:
            accepted += 1
            a, b = parse_registry(data, source="ops.json"), old_parse(data, source="ops.json")
            assert (a.models, a.ar_scorers) == (b.models, b.ar_scorers)
        else:
            refused += 1
            assert new.startswith("ops.json: ") and "\n" not in new and len(new) < 400, new
    assert accepted > 100 and refused > 500  # both sides exercised
