"""A tiny stand-in for MDLM's modeling_mdlm.py: `model(input_ids, timesteps)` -> logits (B, L, V).

The DiT backbone is conditioned on the timestep/sigma through an embedding (`sigma_map`).
Written as the published code is: `__init__` never calls `post_init()`. For the tests, the
last `timesteps` seen is kept in `self.last_timesteps`.
"""
import math
import typing

import torch
import transformers
from torch import nn
from transformers import modeling_outputs

from .configuration_mdlm import MDLMConfig


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t):
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class DITBackbone(nn.Module):
    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.config = config
        self.vocab_embed = nn.Embedding(config.vocab_size, config.hidden_dim)
        self.pos_embed = nn.Embedding(config.model_length, config.hidden_dim)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.adaLN = nn.Linear(config.cond_dim, config.hidden_dim)
        self.block = nn.TransformerEncoderLayer(config.hidden_dim, config.n_heads, 2 * config.hidden_dim,
                                                dropout=config.dropout, batch_first=True)
        self.output_layer = nn.Linear(config.hidden_dim, config.vocab_size)

    def forward(self, indices, sigma, output_hidden_states=False):
        if not self.config.time_conditioning:
            sigma = torch.zeros_like(sigma)
        positions = torch.arange(indices.shape[1], device=indices.device)
        c = nn.functional.silu(self.sigma_map(sigma))
        x = self.vocab_embed(indices) + self.pos_embed(positions)[None] + self.adaLN(c)[:, None]
        x = self.block(x)
        return self.output_layer(x), [x] if output_hidden_states else []


class MDLM(transformers.PreTrainedModel):
    config_class = MDLMConfig
    base_model_prefix = "mdlm"

    def __init__(self, config: MDLMConfig):
        super().__init__(config)
        self.backbone = DITBackbone(config)  # no post_init(): as published
        self.last_timesteps = None

    def forward(self, input_ids: torch.LongTensor = None, timesteps: torch.FloatTensor = None,
                output_hidden_states: typing.Optional[bool] = None, return_dict: typing.Optional[bool] = None):
        self.last_timesteps = None if timesteps is None else timesteps.detach().clone()
        logits, all_hidden_states = self.backbone(indices=input_ids, sigma=timesteps,
                                                  output_hidden_states=bool(output_hidden_states))
        if return_dict:
            return modeling_outputs.MaskedLMOutput(logits=logits, hidden_states=all_hidden_states or None, loss=None)
        return logits
