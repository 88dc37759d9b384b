"""The operator's model configuration (explorer/adapters/registry.py): parsing, validation, lookup."""

from __future__ import annotations

import dataclasses
import json

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
    families = {"embedded", "embedded_xdlm", "masked_lm", "llada", "dream", "mdlm"}
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
    ({"models": [{"family": "llada", "path": "p"}]}, "models[0]: field 'name' is required"),
    (
        {"models": [{"name": "x", "family": "gpt", "path": "p"}]},
        "models[0] ('x'): field 'family' 'gpt' is unknown; "
        "valid: embedded, embedded_xdlm, masked_lm, llada, dream, mdlm",
    ),
    (
        {"models": [{"name": "x", "family": "llada", "path": "p", "dtype": "fp8"}]},
        "field 'dtype' 'fp8' is not one of auto, float32, bfloat16, float16",
    ),
    ({"models": [{"name": "x", "family": "llada", "path": "p", "device": "gpu"}]}, "field 'device' 'gpu'"),
    (
        {"models": [{"name": "x", "family": "llada", "path": "p", "trust_remote_code": "yes"}]},
        "field 'trust_remote_code' must be true or false, got 'yes'",
    ),
    (
        {"models": [{"name": "x", "family": "llada", "path": "p", "mask_id": True}]},
        "field 'mask_id' must be a whole number",
    ),
    ({"models": [{"name": "x", "family": "llada", "path": "p", "mask_id": -1}]}, "field 'mask_id' must be >= 0"),
    ({"models": [{"name": "x", "family": "llada"}]}, "field 'path' is required"),
    (
        {"models": [{"name": "x", "family": "masked_lm", "path": "p", "chat": True}]},
        "field 'chat' applies to the families with a chat template",
    ),
    ({"models": [{"name": "embedded", "family": "masked_lm", "path": "p"}]}, "'embedded' is reserved"),
    ({"models": [{"name": "a b", "family": "masked_lm", "path": "p"}]}, "field 'name' 'a b'"),
    (
        {"models": [{"name": "x", "family": "masked_lm", "path": "p"}, {"name": "x", "family": "llada", "path": "q"}]},
        "models: the name 'x' is listed twice",
    ),
    (
        {"models": [], "ar_scorers": [{"name": "g", "family": "masked_lm", "path": "p"}]},
        "ar_scorers[0] ('g'): field 'family' 'masked_lm' is unknown; valid: causal_lm, embedded_ar",
    ),
    (
        {"models": [], "ar_scorers": [{"name": "g", "family": "causal_lm"}]},
        "ar_scorers[0] ('g'): field 'path' is required for a causal_lm scorer",
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
