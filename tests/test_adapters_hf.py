"""The Hugging Face family adapters on tiny checkpoints built locally (tests/fixtures_hf.py).

Everything goes through the real `from_pretrained` path from a local folder; nothing is
downloaded. The remote-code families load the small modeling files of tests/hf_models, which are
written as the published code is, so the transformers-5 bridges are exercised.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fixtures_hf as F

from explorer.adapters.devices import resolve_device, resolve_dtype
from explorer.adapters.errors import (
    ModelLoadError,
    RemoteCodeNotAllowedError,
)
from explorer.adapters.hf import DEFAULT_MASK_IDS, LLADA_EOS_ID, LLADA_EOT_ID
from explorer.adapters.loading import describe_model, load_denoiser
from explorer.adapters.registry import parse_registry
from explorer.api import decode

TF5 = int(transformers.__version__.split(".")[0]) >= 5
# The mimics call rope_config_validation / set rope_scaling as Dream's published code does.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    parent = tmp_path_factory.mktemp("hf")
    yield {
        "bert": F.build_bert(parent),
        "llada": F.build_llada(parent),
        "dream": F.build_dream(parent),
        "mdlm": F.build_mdlm(parent),
        "parent": parent,
    }
    F.remove_dynamic_modules()


def registry(*entries: dict):
    return parse_registry({"models": list(entries)}, source="test-models.json")


def fresh_copy(folder, parent, stem):
    """The same checkpoint under a new folder name: its code becomes a new, unpatched module."""
    copy = F.unique(parent, stem)
    for file in folder.iterdir():
        shutil.copy(file, copy / file.name)
    return copy


def masked_positions_decode(denoiser, prompt="once upon a time", gen_length=8, steps=4, **settings):
    out = decode(prompt, model=denoiser, gen_length=gen_length, steps=steps, **settings)
    assert out.result.status == "completed"
    assert len(out.steps) == steps
    assert [len(s.committed) for s in out.steps] == [gen_length // steps] * steps
    assert denoiser.mask_id not in out.token_ids
    return out


# ---- masked_lm (BERT) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert(folders):
    reg = registry({"name": "tiny-bert", "family": "masked_lm", "path": str(folders["bert"]), "device": "cpu"})
    return load_denoiser("tiny-bert", registry=reg), reg


def test_bert_loads_with_the_tokenizers_mask_and_special_token_handling(bert):
    d, _ = bert
    tok = d.tokenizer
    assert d.mask_id == tok.mask_token_id
    assert d.device == torch.device("cpu") and d.dtype == torch.float32
    assert d.context_length == 40 - 1  # one position kept for the [SEP] every pass appends
    ids = d.encode("once upon a time")
    assert ids[0] == tok.cls_token_id and tok.sep_token_id not in ids  # [CLS] prompt, nothing after
    assert d.decode(ids) == "once upon a time"


def test_bert_logits_append_sep_and_never_propose_special_tokens(bert):
    d, _ = bert
    tok = d.tokenizer
    x = torch.tensor([d.encode("once upon a time") + [d.mask_id] * 6])
    logits = d.logits(x)
    assert logits.shape == (1, x.shape[1], len(tok)) and logits.dtype == torch.float32
    with torch.no_grad():
        with_sep = torch.cat([x, torch.tensor([[tok.sep_token_id]])], dim=1)
        raw = d.model(input_ids=with_sep).logits[:, :-1]
    specials = sorted(set(tok.all_special_ids))
    # The fixture biases the special tokens: the raw model would propose them ...
    assert set(raw[0].argmax(-1).tolist()) & set(specials)
    # ... the adapter never does; every other logit is the model's, computed with [SEP] appended.
    assert torch.isneginf(logits[0][:, specials]).all()
    keep = [i for i in range(len(tok)) if i not in specials]
    torch.testing.assert_close(logits[0][:, keep], raw[0][:, keep].float())


def test_bert_decodes_end_to_end_through_the_api(bert):
    d, reg = bert
    out = masked_positions_decode(d)
    specials = set(d.tokenizer.all_special_ids)
    assert not specials & set(out.token_ids)
    for step in out.steps:
        assert not specials & set(step.tokens.tolist())
    # By name through the operator registry, the same run.
    again = decode("once upon a time", model="tiny-bert", registry=reg, gen_length=8, steps=4)
    assert again.token_ids == out.token_ids
    assert out.text.startswith("once upon a time")


def test_bert_describe_matches_the_loaded_model(bert):
    d, reg = bert
    spec = describe_model("tiny-bert", registry=reg)
    assert (spec.family, spec.mask_id, spec.context_length) == ("masked_lm", d.mask_id, d.context_length)
    assert spec.encode("the brave cat") == d.encode("the brave cat")
    assert spec.token_text(d.encode("apple")[-1]) == "apple"


def test_dtype_and_device_come_from_the_configuration(folders):
    reg = registry(
        {"name": "b", "family": "masked_lm", "path": str(folders["bert"]), "device": "cpu", "dtype": "bfloat16"}
    )
    d = load_denoiser("b", registry=reg)
    assert d.dtype == torch.bfloat16
    out = d.logits(torch.tensor([d.encode("once upon") + [d.mask_id] * 2]))
    assert out.dtype == torch.float32  # logits are always float32
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_a_caller_cannot_turn_on_remote_code(folders):
    reg = registry({"name": "l", "family": "llada", "path": str(folders["llada"])})
    with pytest.raises(ValueError, match="only taken from the operator"):
        load_denoiser("l", registry=reg, trust_remote_code=True)


# ---- llada -----------------------------------------------------------------------------------
def test_llada_is_refused_without_trust_remote_code_and_runs_no_code(folders):
    folder = fresh_copy(folders["llada"], folders["parent"], "llada_refused")
    reg = registry({"name": "llada-tiny", "family": "llada", "path": str(folder)})
    message = "model 'llada-tiny' needs trust_remote_code; the operator configuration does not allow it"
    with pytest.raises(RemoteCodeNotAllowedError, match=message):
        load_denoiser("llada-tiny", registry=reg)
    with pytest.raises(RemoteCodeNotAllowedError, match=message):
        describe_model("llada-tiny", registry=reg)
    assert not [name for name in sys.modules if folder.name in name]  # its code was never imported


@pytest.fixture(scope="module")
def llada(folders):
    reg = registry(
        {
            "name": "llada-tiny",
            "family": "llada",
            "path": str(folders["llada"]),
            "device": "cpu",
            "trust_remote_code": True,
        }
    )
    return load_denoiser("llada-tiny", registry=reg), reg


def test_llada_loads_when_allowed_with_its_ids_and_bridges(llada):
    d, reg = llada
    assert d.mask_id == DEFAULT_MASK_IDS["llada"] == 126336  # not configured: LLaDA's own
    assert d.eos_ids == (LLADA_EOS_ID, LLADA_EOT_ID) == (126081, 126348)
    assert d.context_length == 48
    if TF5:
        assert {"all_tied_weights_keys", "tie_weights(**kwargs)", "config.use_cache"} <= set(d.bridges)
    ids = d.encode("once upon a time")
    assert ids[0] == F.LLADA_IDS["<|startoftext|>"]
    assert describe_model("llada-tiny", registry=reg).mask_id == 126336


def test_llada_logits_are_the_models_except_undecodable_ids(llada):
    d, _ = llada
    x = torch.tensor([d.encode("she gave her apple") + [d.mask_id] * 5])
    logits = d.logits(x)
    assert logits.shape == (1, x.shape[1], F.LLADA_VOCAB) and logits.dtype == torch.float32
    with torch.no_grad():  # (the same kernels as the adapter's pass)
        raw = d.model(x).logits.float()  # the remote forward with no use_cache: reads config.use_cache
    known = sorted(d.codec.vocab_ids)
    torch.testing.assert_close(logits[0][:, known], raw[0][:, known])
    assert torch.isfinite(logits[0][:, [LLADA_EOS_ID, LLADA_EOT_ID]]).all()  # EOS / EoT stay proposable
    assert torch.isneginf(logits[0][:, 126400]).all()  # a padded row past the tokenizer: never proposed


def test_llada_decodes_end_to_end(llada):
    d, _ = llada
    out = masked_positions_decode(d)
    assert all(t in d.codec.vocab_ids for t in out.token_ids)
    assert "<|endoftext|>" not in d.decode(out.token_ids + [LLADA_EOS_ID])  # EOS is hidden in text


def test_llada_chat_template_when_configured(folders):
    reg = registry(
        {
            "name": "llada-chat",
            "family": "llada",
            "path": str(folders["llada"]),
            "device": "cpu",
            "trust_remote_code": True,
            "chat": True,
        }
    )
    d = load_denoiser("llada-chat", registry=reg)
    if TF5:  # the class was adapted by an earlier load; its bridges are still reported
        assert {"all_tied_weights_keys", "tie_weights(**kwargs)", "config.use_cache"} <= set(d.bridges)
    ids = d.encode("once upon a time")
    tok = d.tokenizer
    expected = tok(
        tok.apply_chat_template(
            [{"role": "user", "content": "once upon a time"}], add_generation_prompt=True, tokenize=False
        ),
        add_special_tokens=False,
    )["input_ids"]
    assert ids == expected
    assert ids[0] == F.LLADA_IDS["<|startoftext|>"] and ids[-1] == F.LLADA_IDS["<|end_header_id|>"]
    assert LLADA_EOT_ID in ids  # the user turn ends with <|eot_id|>
    assert describe_model("llada-chat", registry=reg).encode("once upon a time") == ids
    masked_positions_decode(d)


@pytest.mark.skipif(not TF5, reason="the bridges are for transformers 5")
def test_each_llada_bridge_is_needed_on_transformers_5(folders):
    """LLaDA's code on transformers 5, one bridge at a time: each fixes the failure DESIGN.md
    section 2 measured, and uncovers the next."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from explorer.adapters.hf_bridges import (
        bridge_all_tied_weights_keys,
        bridge_tie_weights_signature,
        bridge_use_cache,
    )

    folder = fresh_copy(folders["llada"], folders["parent"], "llada_unbridged")
    with pytest.raises(AttributeError, match="all_tied_weights_keys"):
        transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    cls = get_class_from_dynamic_module(config.auto_map["AutoModel"], folder)
    assert bridge_all_tied_weights_keys(cls)
    with pytest.raises(TypeError, match="tie_weights"):
        cls.from_pretrained(folder, config=config)
    assert bridge_tie_weights_signature(cls)
    model = cls.from_pretrained(folder, config=config)
    x = torch.tensor([[10, 11, 126336]])
    with pytest.raises(AttributeError, match="use_cache"):
        model(x)
    assert bridge_use_cache(model.config) and not bridge_use_cache(model.config)
    assert model(x).logits.shape == (1, 3, F.LLADA_VOCAB)


# ---- dream -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dream(folders):
    reg = registry(
        {
            "name": "dream-tiny",
            "family": "dream",
            "path": str(folders["dream"]),
            "device": "cpu",
            "trust_remote_code": True,
        }
    )
    return load_denoiser("dream-tiny", registry=reg), reg


def test_dream_mask_id_comes_from_the_tokenizer(dream):
    d, reg = dream
    assert d.mask_id == d.tokenizer.convert_tokens_to_ids("<|mask|>") == d.tokenizer.mask_token_id
    assert describe_model("dream-tiny", registry=reg).mask_id == d.mask_id
    if TF5:
        assert {"ROPE_INIT_FUNCTIONS['default']", "GenerationConfig.validate(**kwargs)"} <= set(d.bridges)
    assert type(d.model.generation_config).__name__ == "DreamGenerationConfig"  # Dream's from_pretrained ran
    rotary = d.model.model.rotary_emb  # head_dim 8, theta 1e4: what transformers 4 computed (not
    # whatever memory transformers 5 left in this non-persistent buffer: see the test below)
    torch.testing.assert_close(rotary.inv_freq, torch.tensor([1.0, 0.1, 0.01, 0.001]))
    assert rotary.original_inv_freq is rotary.inv_freq


def test_dream_logits_are_shifted_right_by_one(dream):
    d, _ = dream
    x = torch.tensor([d.encode("the dog ran home") + [d.mask_id] * 5])
    with torch.no_grad():  # (the same kernels as the adapter's pass)
        raw = d.model(input_ids=x).logits.float()  # position i predicts token i + 1
    logits = d.logits(x)
    known = sorted(d.codec.vocab_ids)
    assert not torch.allclose(raw[0, 1, known], raw[0, 0, known])  # the shift is visible
    torch.testing.assert_close(logits[0, 0, known], raw[0, 0, known])  # position 0 keeps its own
    torch.testing.assert_close(logits[0, 1:][:, known], raw[0, :-1][:, known])  # i gets i - 1's
    padded = list(range(len(d.tokenizer), d.model.config.vocab_size))
    assert padded and torch.isneginf(logits[0][:, padded]).all()


def test_dream_decodes_end_to_end(dream):
    masked_positions_decode(dream[0], temperature=0.7, seed=3)


@pytest.mark.skipif(not TF5, reason="the bridges are for transformers 5")
def test_each_dream_bridge_is_needed_on_transformers_5(folders):
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from explorer.adapters.hf_bridges import (
        bridge_generation_config_validate,
        bridge_non_persistent_buffers,
        bridge_rope_default,
    )

    folder = fresh_copy(folders["dream"], folders["parent"], "dream_unbridged")
    with pytest.raises(KeyError, match="default"):
        transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    cls = get_class_from_dynamic_module(config.auto_map["AutoModel"], folder)
    module = sys.modules[cls.__module__]
    assert bridge_rope_default(module) and not bridge_rope_default(module)
    assert "default" not in transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS  # transformers' own table untouched
    with pytest.raises(TypeError, match=r"user_set_attributes|strict"):
        cls.from_pretrained(folder, config=config)
    assert bridge_generation_config_validate(module)
    model = cls.from_pretrained(folder, config=config)
    assert type(model.generation_config).__name__ == "DreamGenerationConfig"
    expected = torch.tensor([1.0, 0.1, 0.01, 0.001])
    rotary = model.model.rotary_emb
    assert rotary.original_inv_freq.is_meta  # the buffer was built on the meta device and refilled
    with torch.no_grad():  # with torch.empty_like: it holds whatever memory held,
        rotary.inv_freq.fill_(float("nan"))  # e.g. this
    assert bridge_non_persistent_buffers(model, cls) == ["model.rotary_emb.inv_freq"]
    assert torch.equal(rotary.inv_freq, expected) and rotary.original_inv_freq is rotary.inv_freq
    assert bridge_non_persistent_buffers(model, cls) == []  # nothing left to repair


# ---- mdlm ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mdlm(folders):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders["mdlm"], trust_remote_code=False)
    reg = registry(
        {
            "name": "mdlm-tiny",
            "family": "mdlm",
            "path": str(folders["mdlm"]),
            "device": "cpu",
            "trust_remote_code": True,
            "mask_id": len(tokenizer),
        }
    )
    return load_denoiser("mdlm-tiny", registry=reg), reg


def test_mdlm_forward_gets_the_masked_fraction_as_its_timestep(mdlm):
    d, _ = mdlm
    assert d.mask_id == len(d.tokenizer)  # configured (mdlm-owt: 50257, GPT-2's vocabulary size)
    prompt = d.encode("once upon a time")
    assert prompt[0] == d.tokenizer.bos_token_id
    x = torch.tensor([prompt + [d.mask_id] * 6, prompt + [d.mask_id] * 2 + prompt[1:5]])
    d.logits(x)
    t = d.model.last_timesteps
    expected = (x == d.mask_id).float().mean(-1)
    assert t.shape == (2,) and ((t >= 0) & (t <= 1)).all()
    torch.testing.assert_close(t, expected)
    assert expected[0] > expected[1] > 0


def test_mdlm_timestep_follows_the_decode(mdlm):
    d, _ = mdlm
    seen = []
    hook = d.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(
            (kwargs["timesteps"].item(), (kwargs["input_ids"] == d.mask_id).float().mean().item())
        ),
        with_kwargs=True,
    )
    try:
        masked_positions_decode(d)
    finally:
        hook.remove()
    assert len(seen) == 4
    assert [round(t, 6) for t, _ in seen] == [round(f, 6) for _, f in seen]
    assert all(0 <= t <= 1 for t, _ in seen) and [t for t, _ in seen] == sorted((t for t, _ in seen), reverse=True)
    if TF5:
        assert "all_tied_weights_keys" in d.bridges


def test_mdlm_default_mask_id_outside_a_small_vocabulary_is_a_clear_error(folders):
    assert DEFAULT_MASK_IDS["mdlm"] == 50257
    reg = registry({"name": "mdlm-default", "family": "mdlm", "path": str(folders["mdlm"]), "trust_remote_code": True})
    with pytest.raises(ModelLoadError, match=r"mask id 50257 is outside the model's vocabulary.*set mask_id"):
        describe_model("mdlm-default", registry=reg)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    reg = registry({"name": "gone", "family": "masked_lm", "path": str(tmp_path / "nothing-here")})
    with pytest.raises(ModelLoadError, match="model 'gone': could not load the tokenizer"):
        load_denoiser("gone", registry=reg)


# ---- wiring: the CLI flag and a worker process -------------------------------------------------
def test_cli_decodes_a_model_listed_in_the_flags_file(folders, tmp_path, capsys):
    from explorer.cli import main as cli_main

    config = F.write_config(
        tmp_path / "models.json",
        [{"name": "tiny-bert", "family": "masked_lm", "path": str(folders["bert"]), "device": "cpu"}],
    )
    code = cli_main(
        [
            "decode",
            "--models-config",
            str(config),
            "--model",
            "tiny-bert",
            "--prompt",
            "once upon a time",
            "--gen-length",
            "8",
            "--steps",
            "4",
            "--no-store",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["steps"]) == 4 and len(out["token_ids"]) == 8 and out["mask_id"] not in out["token_ids"]


def test_a_worker_process_serves_a_model_from_the_registry_it_is_given(folders, tmp_path, monkeypatch):
    """The pool hands its registry to the worker processes it spawns, so they offer the same models
    (nothing is read from the environment in the worker)."""
    from explorer.adapters import registry as mc
    from explorer.decoding.config import DecodeConfig
    from explorer.jobs import JobDone, StepDone
    from explorer.worker import WorkerPool

    config = F.write_config(
        tmp_path / "models.json",
        [{"name": "tiny-bert", "family": "masked_lm", "path": str(folders["bert"]), "device": "cpu"}],
    )
    monkeypatch.delenv(mc.ENV_VAR, raising=False)
    pool = WorkerPool(f"sqlite:///{tmp_path}/w.db", mc.load_registry(config), n_workers=1, threads=1, preload=())
    try:
        handle = pool.submit("once upon a time", "tiny-bert", DecodeConfig(gen_length=8, steps=4))
        events = list(handle.iter_events(timeout=120))
    finally:
        pool.shutdown()
    assert [type(e) for e in events].count(StepDone) == 4
    done = events[-1]
    assert isinstance(done, JobDone) and done.result.status == "completed" and done.result.n_steps == 4


def test_chat_without_a_chat_template_is_a_clear_error(folders, tmp_path):
    folder = fresh_copy(folders["llada"], folders["parent"], "llada_no_template")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in ("chat_template.jinja", "chat_template.json"):
        (folder / extra).unlink(missing_ok=True)
    reg = registry(
        {"name": "llada-chat", "family": "llada", "path": str(folder), "trust_remote_code": True, "chat": True}
    )
    with pytest.raises(ModelLoadError, match=r"'llada-chat': chat is set .* no chat template"):
        describe_model("llada-chat", registry=reg)
