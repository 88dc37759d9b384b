"""A tiny stand-in for LLaDA's modeling_llada.py: `model(input_ids).logits`, (B, L, V).

Written as the published code is: `__init__` never calls `post_init()`, `tie_weights(self)` has
the transformers-4 signature, and `forward` reads `self.config.use_cache`.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from .configuration_llada import LLaDAConfig


@dataclass
class LLaDAOutput(ModelOutput):
    logits: torch.FloatTensor = None
    attn_key_values: Optional[list] = None


class LLaDAModel(nn.Module):
    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.embedding_size, config.d_model),
            wpe=nn.Embedding(config.max_sequence_length, config.d_model),
            block=nn.TransformerEncoderLayer(config.d_model, config.n_heads, config.mlp_hidden_size,
                                             dropout=0.0, batch_first=True),
            ln_f=nn.LayerNorm(config.d_model),
        ))
        if not config.weight_tying:
            self.transformer["ff_out"] = nn.Linear(config.d_model, config.embedding_size, bias=False)

    def forward(self, input_ids, use_cache=False):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.transformer.wte(input_ids) + self.transformer.wpe(positions)[None]
        x = self.transformer.ln_f(self.transformer.block(x))  # bidirectional: no attention mask
        if self.config.weight_tying:
            logits = nn.functional.linear(x, self.transformer.wte.weight)
        else:
            logits = self.transformer.ff_out(x)
        return LLaDAOutput(logits=logits, attn_key_values=[] if use_cache else None)


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]

    def __init__(self, config: LLaDAConfig, model: Optional[LLaDAModel] = None, init_params: bool = False):
        super().__init__(config)
        self.model = model or LLaDAModel(config)  # no post_init(): as published

    def forward(self, input_ids=None, attention_mask=None, use_cache=None, return_dict=None, **kwargs):
        if use_cache is None:
            use_cache = self.config.use_cache
        outputs = self.model.forward(input_ids=input_ids, use_cache=use_cache)
        return LLaDAOutput(logits=outputs.logits, attn_key_values=outputs.attn_key_values)

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def tie_weights(self):  # the transformers-4 signature
        if self.config.weight_tying:
            self.model.transformer.ff_out = self.model.transformer.wte


AutoModel.register(LLaDAConfig, LLaDAModelLM)
