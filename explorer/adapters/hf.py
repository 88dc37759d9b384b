"""Adapters for the Hugging Face model families: masked LMs, LLaDA, Dream and MDLM.

Every adapter is an `HFDenoiser`: ids (B, L) in, float32 logits (B, L, V) out, plus `mask_id`,
`context_length`, `device`, `encode` / `decode` / `token_text`. A family differs only in how it
is loaded, how a prompt becomes ids, and how one forward pass is called:

- `masked_lm` (`AutoModelForMaskedLM`, no remote code): the mask id is the tokenizer's mask
  token. BERT-like models were trained on `[CLS] text [SEP]`, so the adapter owns the special
  tokens: `encode` puts the tokenizer's CLS (RoBERTa: `<s>`) first and adds nothing else, and
  every forward pass appends the SEP (`</s>`) after the sequence and drops that position's
  logits, so the model always sees a well-formed `[CLS] prompt generation [SEP]`. The context
  length is one less than the model's to leave room for it. The tokenizer's special tokens
  (CLS, SEP, PAD, UNK, MASK) are never proposed: their logits are set to -inf.
- `llada` (`AutoModel`, remote code): mask id 126336 unless the operator configuration says
  otherwise; EOS 126081 and EoT 126348 are recorded in `eos_ids` (LLaDA fills the tail of an
  answer with them, so they stay proposable; `decode` hides them). A prompt starts with the
  tokenizer's BOS; with `chat: true` the tokenizer's chat template is applied instead (one user
  turn and the assistant header). `model(input_ids).logits`.
- `dream` (`AutoModel`, remote code): the mask id is the tokenizer's mask token (`<|mask|>`).
  Dream was adapted from an AR model, so its logits at position i predict token i + 1; the
  adapter shifts them right by one, `cat([logits[:, :1], logits[:, :-1]], dim=1)`, exactly as
  Dream's own sampler does, so position i's logits are about position i. `chat` as for LLaDA.
- `mdlm` (`AutoModelForMaskedLM`, remote code, GPT-2 tokenizer): mask id 50257 (= the GPT-2
  vocabulary size) unless configured. A prompt starts with BOS (`<|endoftext|>`, as MDLM's
  OpenWebText training wrapped documents). The forward also takes the diffusion time: the adapter
  passes t = the fraction of masked positions in each row (B,), prompt included. Under MDLM's
  absorbing process a sequence at time t has a fraction t of its tokens masked in expectation,
  so the observed fraction is the natural estimate of where the sequence is on the schedule
  (and exact for a fully masked generation without a prompt). The published mdlm-owt was
  trained without time conditioning (it zeroes the value), so the choice only matters for
  checkpoints trained with it.

All families: ids the tokenizer cannot decode (the padded tail of an embedding matrix, e.g.
LLaDA's 126464 rows for 126349 tokens) get -inf too, so nothing undecodable is ever proposed.
The engine itself sets the mask id's logit to -inf.

Device and dtype come from the operator configuration: `device: auto` is CUDA when available,
else CPU; `dtype: auto` is bfloat16 on CUDA (where supported) and float32 on CPU. Logits are
returned as float32 whatever the model computes in.

transformers 5 bridges: the families' published remote code was written for transformers 4
(LLaDA pins 4.38, Dream 4.46). Small `bridge_*` functions adapt the loaded classes,
each only when its problem is present, each with a comment naming the version that needs it
(they live in `explorer/adapters/hf_bridges.py`).
An adapter lists the bridges that changed something for its model in `bridges`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from explorer.adapters.devices import resolve_device, resolve_dtype
from explorer.adapters.entries import REMOTE_CODE_FAMILIES, ModelEntry
from explorer.adapters.errors import ModelLoadError, remote_code_refusal
from explorer.adapters.hf_bridges import apply_class_bridges, bridge_non_persistent_buffers, bridge_use_cache
from explorer.adapters.spec import ModelSpec

DEFAULT_MASK_IDS = {"llada": 126336, "mdlm": 50257}
LLADA_EOS_ID, LLADA_EOT_ID = 126081, 126348
AUTO_CLASSES = {
    "masked_lm": "AutoModelForMaskedLM",
    "llada": "AutoModel",
    "dream": "AutoModel",
    "mdlm": "AutoModelForMaskedLM",
}
HUGE = 10**9  # tokenizers say model_max_length = 1e30 when they do not know


# ---- text: prompt ids, decoding, token strings ----------------------------------------------
class TextCodec:
    """A tokenizer with a family's rules for prompts, decoding and single-token display."""

    def __init__(
        self,
        tokenizer,
        mask_id: int,
        *,
        prefix_ids: Sequence[int] = (),
        chat: bool = False,
        hidden_ids: Sequence[int] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.mask_id = mask_id
        self.prefix_ids = list(prefix_ids)
        self.chat = chat
        self.vocab_ids = frozenset(tokenizer.get_vocab().values())
        self.hidden_ids = frozenset(hidden_ids) - {mask_id}
        self.mask_text = tokenizer.mask_token if tokenizer.mask_token_id == mask_id else "[MASK]"

    def encode(self, text: str) -> list[int]:
        if self.chat:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.prefix_ids + ids if ids else ids  # an empty prompt stays empty (refused later)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` without special tokens; a still-masked position shows as the mask token."""
        parts, run = [], []
        for i in (int(i) for i in ids):
            if i == self.mask_id:
                parts.append(self._text(run))
                parts.append(self.mask_text)
                run = []
            elif i in self.vocab_ids and i not in self.hidden_ids:
                run.append(i)
        if len(parts) == 0:
            return self._text(run).strip()
        parts.append(self._text(run))
        return " ".join(p.strip() for p in parts if p.strip())

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False) if ids else ""

    def token_text(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id == self.mask_id:
            return self.mask_text
        if token_id not in self.vocab_ids:
            return f"<id {token_id}>"
        text = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return text if text.strip() else str(self.tokenizer.convert_ids_to_tokens(token_id))


# ---- the adapter -----------------------------------------------------------------------------
class HFDenoiser:
    """One loaded Hugging Face model behind the engine's Denoiser interface."""

    family = "hf"

    def __init__(
        self,
        name: str,
        model,
        codec: TextCodec,
        mask_id: int,
        context_length: int,
        device: torch.device,
        suppress_ids: Sequence[int] = (),
        eos_ids: Sequence[int] = (),
        bridges: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.model = model.eval()
        self.codec = codec
        self.tokenizer = codec.tokenizer
        self.mask_id = mask_id
        self.context_length = context_length
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = int(getattr(model.config, "vocab_size", 0) or 0)  # checked against AR scorers
        self.suppress_ids = tuple(sorted(set(suppress_ids)))
        self.eos_ids = tuple(eos_ids)
        self.bridges = tuple(bridges)
        self._suppress: torch.Tensor | None = None
        self._vocabulary: dict[str, int] | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The family's raw logits (B, L, V), in the model's dtype."""
        return self.model(input_ids=ids).logits

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.forward(ids.to(self.device)).float()
        out[..., self._suppress_mask(out.shape[-1])] = float("-inf")
        return out

    def _suppress_mask(self, vocab: int) -> torch.Tensor:
        """(V,) bool: special tokens of the family and ids the tokenizer cannot decode."""
        if self._suppress is None or self._suppress.numel() != vocab:
            mask = torch.ones(vocab, dtype=torch.bool)
            known = torch.tensor(sorted(i for i in self.codec.vocab_ids if 0 <= i < vocab), dtype=torch.long)
            mask[known] = False
            special = [i for i in self.suppress_ids if 0 <= i < vocab]
            if special:
                mask[torch.tensor(special, dtype=torch.long)] = True
            self._suppress = mask.to(self.device)
        return self._suppress

    def encode(self, text: str) -> list[int]:
        return self.codec.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.codec.decode(ids)

    def token_text(self, token_id: int) -> str:
        return self.codec.token_text(token_id)

    def special_ids(self) -> frozenset[int]:
        """The mask, the family's special and suppressed tokens: never written by an edit."""
        return frozenset(self.suppress_ids) | self.codec.hidden_ids | {self.mask_id}

    def vocabulary(self) -> dict[str, int]:
        """Token text -> id of every ordinary token, built once (a pass over the tokenizer).

        A token is found by its text as shown ("Ġgirl" shows as " girl") and by that text
        stripped; where two tokens strip to the same word, the word-initial one (leading space)
        wins, as that is the token a word in running text gets."""
        if self._vocabulary is None:
            special = self.special_ids()
            texts = {i: self.codec.token_text(i) for i in sorted(self.codec.vocab_ids - special)}
            vocabulary = {text: i for i, text in texts.items()}
            for initial_first in (True, False):
                for i, text in texts.items():
                    if text.strip() and (text[:1].isspace() or not initial_first):
                        vocabulary.setdefault(text.strip(), i)
            self._vocabulary = vocabulary
        return self._vocabulary


class MaskedLMDenoiser(HFDenoiser):
    family = "masked_lm"

    def __init__(self, *args, sep_id: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sep_id = sep_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.sep_id is None:
            return self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        x = torch.cat([ids, ids.new_full((ids.shape[0], 1), self.sep_id)], dim=1)  # ... [SEP]
        return self.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[:, :-1]


class LLaDADenoiser(HFDenoiser):
    family = "llada"


class DreamDenoiser(HFDenoiser):
    family = "dream"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=ids).logits
        # Dream predicts token i from position i - 1: shift right by one (position 0 keeps its own).
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


class MDLMDenoiser(HFDenoiser):
    family = "mdlm"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = (ids == self.mask_id).float().mean(dim=-1)  # (B,) the masked fraction, in [0, 1]
        out = self.model(input_ids=ids, timesteps=t, return_dict=True)
        if isinstance(out, torch.Tensor):
            return out
        return out.logits if hasattr(out, "logits") else out[0]


DENOISER_CLASSES = {"masked_lm": MaskedLMDenoiser, "llada": LLaDADenoiser, "dream": DreamDenoiser, "mdlm": MDLMDenoiser}


# ---- loading ---------------------------------------------------------------------------------
def _hub_kwargs(entry: ModelEntry) -> dict:
    kwargs = {"trust_remote_code": entry.trust_remote_code}
    if entry.revision:
        kwargs["revision"] = entry.revision
    return kwargs


def _check_remote_code(family: str, entry: ModelEntry) -> None:
    if family in REMOTE_CODE_FAMILIES and not entry.trust_remote_code:
        raise remote_code_refusal(entry)


def _wrap_errors(entry: ModelEntry, what: str, exc: Exception) -> ModelLoadError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "trust_remote_code" in str(exc) and not entry.trust_remote_code:
        return remote_code_refusal(entry)
    return ModelLoadError(f"model {entry.name!r}: could not {what} {entry.path!r}: {type(exc).__name__}: {text}")


def _load_tokenizer(entry: ModelEntry):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(entry.path, **_hub_kwargs(entry))
    except Exception as exc:
        raise _wrap_errors(entry, "load the tokenizer from", exc) from exc


def _load_config(entry: ModelEntry):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(entry.path, **_hub_kwargs(entry))
    except Exception as exc:
        raise _wrap_errors(entry, "load the model configuration from", exc) from exc


def _mask_id(family: str, entry: ModelEntry, tokenizer, config) -> int:
    if entry.mask_id is not None:
        mask_id = entry.mask_id
    elif family in DEFAULT_MASK_IDS:
        mask_id = DEFAULT_MASK_IDS[family]
    elif tokenizer.mask_token_id is not None:
        mask_id = tokenizer.mask_token_id
    else:
        raise ModelLoadError(
            f"model {entry.name!r}: the tokenizer has no mask token; set mask_id in the operator configuration"
        )
    vocab = getattr(config, "vocab_size", None) or getattr(config, "embedding_size", None)
    if vocab is not None and not 0 <= mask_id < vocab:
        raise ModelLoadError(
            f"model {entry.name!r}: mask id {mask_id} is outside the model's vocabulary "
            f"(0..{vocab - 1}); set mask_id in the operator configuration"
        )
    return mask_id


def _context_length(family: str, entry: ModelEntry, tokenizer, config) -> int:
    if entry.context_length is not None:
        return entry.context_length
    length = None
    for attr in ("max_sequence_length", "model_length", "max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            length = value
            break
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < HUGE:
        length = tokenizer_max if length is None else min(length, tokenizer_max)
    if length is None:
        raise ModelLoadError(
            f"model {entry.name!r}: cannot tell its context length from its configuration; "
            "set context_length in the operator configuration"
        )
    if family == "masked_lm" and tokenizer.sep_token_id is not None:
        length -= 1  # room for the [SEP] every forward pass appends
    return length


def _codec(family: str, entry: ModelEntry, tokenizer, mask_id: int) -> tuple[TextCodec, list[int], list[int]]:
    """The family's text rules; also the ids to suppress and the EOS ids to record."""
    specials = [i for i in tokenizer.all_special_ids if i is not None]
    if family == "masked_lm":
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        prefix = [] if cls_id is None else [cls_id]
        return TextCodec(tokenizer, mask_id, prefix_ids=prefix, hidden_ids=specials), specials, []
    if entry.chat and not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"model {entry.name!r}: chat is set in the operator configuration but its tokenizer has no chat template"
        )
    prefix = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    eos = [i for i in {tokenizer.eos_token_id} if i is not None]
    if family == "llada":
        eos = sorted(set(eos) | ({LLADA_EOS_ID, LLADA_EOT_ID} & set(tokenizer.get_vocab().values())))
    codec = TextCodec(tokenizer, mask_id, prefix_ids=prefix, chat=entry.chat, hidden_ids=set(specials) | set(eos))
    return codec, [], eos


def _model_class(family: str, entry: ModelEntry, config):
    """The class `from_pretrained` is called on: the checkpoint's own (auto_map) or transformers'."""
    import transformers
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_name = AUTO_CLASSES[family]
    auto_map = getattr(config, "auto_map", None) or {}
    reference = auto_map.get(auto_name) or (auto_map.get("AutoModel") if family != "masked_lm" else None)
    if reference is None or not entry.trust_remote_code:
        return getattr(transformers, auto_name), False
    revision = {"revision": entry.revision} if entry.revision else {}
    return get_class_from_dynamic_module(reference, entry.path, **revision), True


def load(family: str, entry: ModelEntry) -> HFDenoiser:
    """Load the model of `entry` (a `family` listed in the operator configuration)."""
    _check_remote_code(family, entry)
    device = resolve_device(entry.device)
    dtype = resolve_dtype(entry.dtype, device)
    tokenizer = _load_tokenizer(entry)
    config = _load_config(entry)
    mask_id = _mask_id(family, entry, tokenizer, config)
    context_length = _context_length(family, entry, tokenizer, config)
    codec, suppress, eos = _codec(family, entry, tokenizer, mask_id)
    bridges = []
    try:
        model_class, remote = _model_class(family, entry, config)
        if remote:
            bridges += apply_class_bridges(model_class)
            if bridge_use_cache(config):
                bridges.append("config.use_cache")
        kwargs = {k: v for k, v in _hub_kwargs(entry).items() if not (remote and k == "trust_remote_code")}
        model = model_class.from_pretrained(entry.path, config=config, dtype=dtype, **kwargs)
    except Exception as exc:
        raise _wrap_errors(entry, "load the weights from", exc) from exc
    if getattr(model, "_explorer_filled_tied_keys", False):
        bridges.append("all_tied_weights_keys")
    if remote and bridge_non_persistent_buffers(model, model_class):
        bridges.append("non-persistent buffers")
    if remote and bridge_use_cache(model.config):
        bridges.append("config.use_cache")
    model = model.to(device).eval()
    extra = {"sep_id": tokenizer.sep_token_id} if family == "masked_lm" else {}
    return DENOISER_CLASSES[family](
        entry.name,
        model,
        codec,
        mask_id,
        context_length,
        device,
        suppress_ids=suppress,
        eos_ids=eos,
        bridges=sorted(set(bridges)),
        **extra,
    )


def describe(family: str, entry: ModelEntry) -> ModelSpec:
    """What the UI needs about `entry` (tokenizer, mask id, context length) without its weights."""
    _check_remote_code(family, entry)
    tokenizer = _load_tokenizer(entry)
    config = _load_config(entry)
    mask_id = _mask_id(family, entry, tokenizer, config)
    codec, _, _ = _codec(family, entry, tokenizer, mask_id)
    description = entry.description or (
        f"{family} model from {entry.path} ({entry.dtype} on {entry.device}"
        + (", chat template" if entry.chat else "")
        + ")"
    )
    return ModelSpec(
        entry.name,
        family,
        _context_length(family, entry, tokenizer, config),
        mask_id,
        codec.encode,
        codec.token_text,
        description,
    )
