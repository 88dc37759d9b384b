"""Tiny Hugging Face checkpoints built locally for the adapter tests (no downloads).

Each builder writes a folder that `from_pretrained` loads exactly as it would a hub snapshot:
a `config.json`, `model.safetensors` with random weights, and a tokenizer built here with
`tokenizers`. The remote-code families (LLaDA, Dream, MDLM) also get the small modeling files of
`tests/hf_models/<family>/` and an `auto_map` pointing at them.

transformers names the module of a local folder's code after the folder's basename, so every
folder gets a unique name (a fresh module, never one patched by an earlier test).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import torch

HF_MODELS = Path(__file__).resolve().parent / "hf_models"
WORDS = (
    "once upon a time there was a girl named emma . she gave her apple to the brave cat , "
    "and the dog ran home . he was happy user assistant system"
).split()
_ids = itertools.count()
CREATED: list[str] = []  # folder names, hence names of modules transformers copies the code into


def unique(parent: Path, stem: str) -> Path:
    path = parent / f"{stem}_{os.getpid()}_{next(_ids)}"
    path.mkdir(parents=True)
    CREATED.append(path.name)
    return path


def remove_dynamic_modules() -> None:
    """Delete the copies of the test folders' code that transformers keeps in HF_MODULES_CACHE."""
    from transformers.dynamic_module_utils import TRANSFORMERS_DYNAMIC_MODULE_NAME
    from transformers.utils import HF_MODULES_CACHE

    root = Path(HF_MODULES_CACHE) / TRANSFORMERS_DYNAMIC_MODULE_NAME
    while CREATED:
        shutil.rmtree(root / CREATED.pop(), ignore_errors=True)


def _save_safetensors(model: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


# ---- BERT (no remote code) -------------------------------------------------------------------
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_bert(parent: Path, seed: int = 0, special_bias: float = 8.0, max_positions: int = 40) -> Path:
    """A random 1-layer BERT whose output bias favours [CLS]/[SEP]/[PAD]/[UNK] (so that an adapter
    that did not suppress special tokens would propose them)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    folder = unique(parent, "bert")
    vocab = {tok: i for i, tok in enumerate(BERT_SPECIALS)}
    for word in dict.fromkeys(WORDS):
        vocab[word] = len(vocab)
    tokenizer = BertTokenizer(vocab=vocab)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=max_positions,
        pad_token_id=vocab["[PAD]"],
    )
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        bias = dict(model.named_parameters())["cls.predictions.bias"]
        for tok in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            bias[vocab[tok]] = special_bias
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- remote-code families --------------------------------------------------------------------
def _copy_code(family: str, folder: Path) -> None:
    for file in (HF_MODELS / family).glob("*.py"):
        shutil.copy(file, folder / file.name)


def _write_weights(folder: Path, auto_key: str, seed: int, init=None) -> None:
    """Random weights for the folder's own model class, instantiated from a scratch copy (its
    own module, adapted there), so the folder's code is first imported by the test itself."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from explorer.adapters.hf_bridges import apply_class_bridges, bridge_use_cache

    scratch = unique(folder.parent, "scratch")
    try:
        for file in folder.iterdir():
            if file.is_file():
                shutil.copy(file, scratch / file.name)
        config = AutoConfig.from_pretrained(scratch, trust_remote_code=True)
        bridge_use_cache(config)
        model_class = get_class_from_dynamic_module(config.auto_map[auto_key], scratch)
        apply_class_bridges(model_class)
        torch.manual_seed(seed)
        model = model_class(config).eval()
        if init is not None:
            init(model)
        _save_safetensors(model, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _wordlevel(vocab: dict[str, int], unk: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return tok


def _byte_bpe(specials: list[str], vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    return tok


LLADA_IDS = {
    "<|startoftext|>": 126080,
    "<|endoftext|>": 126081,
    "<|mdm_mask|>": 126336,
    "<|start_header_id|>": 126346,
    "<|end_header_id|>": 126347,
    "<|eot_id|>": 126348,
}
LLADA_VOCAB = 126464  # LLaDA's embedding rows; the tokenizer knows far fewer ids
LLADA_CHAT_TEMPLATE = (
    "<|startoftext|>{% for m in messages %}<|start_header_id|> {{ m['role'] }} <|end_header_id|> "
    "{{ m['content'] }} <|eot_id|> {% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|> assistant <|end_header_id|>{% endif %}"
)


def build_llada(parent: Path, seed: int = 0) -> Path:
    """LLaDA-like: AutoModel via auto_map, LLaDA's real special ids (mask 126336, EOS 126081,
    EoT 126348) in a small word-level tokenizer, embedding of LLaDA's 126464 rows."""
    from transformers import PreTrainedTokenizerFast

    folder = unique(parent, "llada")
    _copy_code("llada", folder)
    config = {
        "model_type": "llada",
        "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"},
        "d_model": 8,
        "n_heads": 2,
        "n_layers": 1,
        "mlp_hidden_size": 16,
        "vocab_size": LLADA_VOCAB,
        "embedding_size": LLADA_VOCAB,
        "max_sequence_length": 48,
        "mask_token_id": 126336,
        "weight_tying": False,
        "eos_token_id": 126081,
        "pad_token_id": 126081,
        "use_cache": False,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    vocab = {"<unk>": 0, **{w: 10 + i for i, w in enumerate(dict.fromkeys(WORDS))}, **LLADA_IDS}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_wordlevel(vocab, "<unk>"),
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        mask_token="<|mdm_mask|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    )
    tokenizer.chat_template = LLADA_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    _write_weights(folder, "AutoModel", seed)
    return folder


DREAM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
DREAM_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DREAM_PADDED_ROWS = 4  # embedding rows past the tokenizer, as Qwen-based checkpoints have


def build_dream(parent: Path, seed: int = 0) -> Path:
    """Dream-like: AutoModel via auto_map, a byte-level BPE tokenizer with `<|mask|>` as its mask
    token, a generation_config.json that Dream's from_pretrained reloads as its own class."""
    from transformers import PreTrainedTokenizerFast

    folder = unique(parent, "dream")
    _copy_code("dream", folder)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(DREAM_SPECIALS),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        mask_token="<|mask|>",
    )
    tokenizer.chat_template = DREAM_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    mask_id, eos_id = tokenizer.mask_token_id, tokenizer.eos_token_id
    config = {
        "model_type": "Dream",
        "architectures": ["DreamModel"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "vocab_size": len(tokenizer) + DREAM_PADDED_ROWS,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 48,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "mask_token_id": mask_id,
        "pad_token_id": eos_id,
        "eos_token_id": eos_id,
        "bos_token_id": eos_id,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / "generation_config.json").write_text(
        json.dumps(
            {
                "mask_token_id": mask_id,
                "pad_token_id": eos_id,
                "eos_token_id": eos_id,
                "bos_token_id": eos_id,
                "alg": "entropy",
                "steps": 16,
                "transformers_version": "4.46.2",
            },
            indent=1,
        )
    )
    _write_weights(folder, "AutoModel", seed)
    return folder


def build_mdlm(parent: Path, seed: int = 0) -> Path:
    """MDLM-like: AutoModelForMaskedLM via auto_map, a GPT-2-style byte-level BPE tokenizer
    (`<|endoftext|>` as BOS/EOS, no mask token); the model's vocabulary has one more row, the
    mask, as mdlm-owt's 50258 rows for GPT-2's 50257 tokens."""
    from transformers import PreTrainedTokenizerFast

    folder = unique(parent, "mdlm")
    _copy_code("mdlm", folder)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(["<|endoftext|>"], 300), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    config = {
        "model_type": "mdlm",
        "architectures": ["MDLM"],
        "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "vocab_size": len(tokenizer) + 1,
        "model_length": 48,
        "hidden_dim": 16,
        "cond_dim": 8,
        "n_blocks": 1,
        "n_heads": 2,
        "dropout": 0.0,
        "time_conditioning": True,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    _write_weights(folder, "AutoModelForMaskedLM", seed)
    return folder


def write_config(path: Path, models: list[dict], ar_scorers: list[dict] | None = None) -> Path:
    data = {"models": models}
    if ar_scorers is not None:
        data["ar_scorers"] = ar_scorers
    path.write_text(json.dumps(data, indent=1))
    return path


# ---- DiffusionGemma (transformers, no remote code) -------------------------------------------------
GEMMA_VOCAB = 128  # models/gemma_story.py's vocabulary: the story words, the last three ids multimodal


def build_gemma(parent: Path, seed: int = 0, **generation) -> Path:
    """A tiny random DiffusionGemma (hidden 32, canvases of 8, 24 new tokens, 6 steps per canvas,
    entropy bound 1.0) with models/gemma_story.py's word-level tokenizer: the story model's shape
    without its training, so its outputs carry no meaning and every test can build one."""
    from models import gemma_story

    folder = unique(parent, "gemma")
    settings = {"max_denoising_steps": 6, "entropy_bound": 1.0, **generation}
    gemma_story.build(folder, hidden=32, seed=seed, **settings).save_pretrained(folder)
    return folder
