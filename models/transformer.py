"""The embedded models: one small transformer, read top to bottom.

`Transformer(config)` maps token ids (B, L) to logits (B, L, V). With `causal=False` it is
the masked diffusion denoiser (every position sees every other; masked positions hold the
mask id); with `causal=True` it is the autoregressive model on the same vocabulary, whose
logits at position i predict token i + 1. The denoiser takes no time input: like LLaDA, the
number of masks in the input tells it how noisy the sequence is.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    context_length: int = 320
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    causal: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TransformerConfig:
        return cls(**json.loads(text))


def rotary_tables(length: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (L, head_dim/2) of rotary position embeddings (RoPE)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)  # (L, hd/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of x (B, H, L, hd) by position-dependent angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, L, hd/2) each
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2)


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, L, D)
        q, k, v = (t.view(B, L, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (B, H, L, D/H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, L, D/H)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, 4 * config.d_model, bias=False)
        self.down = nn.Linear(4 * config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init)
        # Residual projections scaled down with depth (GPT-2), so early training is stable.
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        # N(0, 0.02) everywhere: PyTorch's default N(0, 1) embedding init stalls training at
        # the unigram entropy.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, L = ids.shape  # (B, L)
        if L > self.config.context_length:
            raise ValueError(f"sequence of {L} tokens exceeds the context of {self.config.context_length}")
        # Rotary positions: attention sees relative offsets from the first step, which a
        # bidirectional denoiser otherwise has to learn slowly from absolute embeddings.
        cos, sin = rotary_tables(L, self.config.d_model // self.config.n_head, ids.device)
        x = self.tok_emb(ids)  # (B, L, D)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))  # (B, L, V)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def save_model(model: Transformer, directory: str | Path, name: str) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, directory / f"{name}.safetensors")
    (directory / f"{name}.json").write_text(model.config.to_json() + "\n")


def load_model(directory: str | Path, name: str, device: str | torch.device = "cpu") -> Transformer:
    from safetensors.torch import load_file

    directory = Path(directory)
    config = TransformerConfig.from_json((directory / f"{name}.json").read_text())
    model = Transformer(config)
    model.load_state_dict(load_file(directory / f"{name}.safetensors"))
    return model.to(device).eval()
