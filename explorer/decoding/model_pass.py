"""Every denoiser forward of a run: classifier-free guidance, the mask logit, counting.

The engine, the energies and the violation pass all call the denoiser through one `ModelPass`,
so that CFG applies to every pass and every sequence forward is counted once.
"""

from __future__ import annotations

import torch

from explorer.decoding.knobs import Knob
from explorer.decoding.protocols import Denoiser

CFG_SCALE = Knob(
    "cfg_scale",
    float,
    0.0,
    "classifier-free guidance w (0: off; > 0 runs a second, prompt-masked pass)",
    label="CFG scale w",
    paper="LLaDA (Nie et al. 2025), after Ho & Salimans",
    low=0.0,
    high=100.0,
)


class ModelPass:
    """Every denoiser forward of a run goes through here: CFG, the mask logit, counting.

    With classifier-free guidance (w > 0) each sequence runs twice, as the prompt-masked copy
    gives the unconditional logits: l = l_u + (w + 1)(l_c - l_u) (LLaDA)."""

    # Bytes of temporaries one extra-pass chunk may hold: ~10 bytes per logit (the model's
    # (B, L, V) output, its float copy, the guided combination), so a few rows of an 8B
    # model's 126k vocabulary at a time and every row of the embedded model's.
    CHUNK_BYTES = 2**32

    def __init__(self, denoiser: Denoiser, prompt_length: int, cfg_scale: float) -> None:
        self.denoiser, self.P, self.w = denoiser, prompt_length, cfg_scale
        self.sequences = 0  # sequence forwards run so far (a batch of n counts n)
        self.calls = 0  # sequential model calls so far (a batch of n copies is one; with CFG too)
        self.vocab: int | None = None  # known after the first pass (the step's own)

    def _guided(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, G, V) logits of the generated positions (with CFG when w > 0)."""
        B = ids.shape[0]
        self.sequences += B * (2 if self.w > 0 else 1)
        self.calls += 1
        if self.w <= 0:
            out = self.denoiser.logits(ids)[:, self.P :]
        else:
            uncond = ids.clone()
            uncond[:, : self.P] = self.denoiser.mask_id
            both = self.denoiser.logits(torch.cat([ids, uncond]))[:, self.P :]  # (2B, G, V)
            out = both[B:] + (self.w + 1) * (both[:B] - both[B:])
        self.vocab = out.shape[-1]
        return out

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, G, V) logits of the generated positions, the mask never a proposal."""
        out = self._guided(ids).clone()
        out[..., self.denoiser.mask_id] = float("-inf")
        return out

    def log_probs(self, ids: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(B, L), (B, m) -> (B, m, V) log-probabilities at generated positions `cols`, from
        batched forward calls of as many rows as `CHUNK_BYTES` allows."""
        L, copies = ids.shape[1], 2 if self.w > 0 else 1
        per_row = 10 * L * (self.vocab or 1) * copies
        chunk = max(1, min(256, self.CHUNK_BYTES // per_row)) if self.vocab else 1
        out = []
        for lo in range(0, ids.shape[0], chunk):
            logits = self._guided(ids[lo : lo + chunk])  # (b, G, V)
            # gather makes a new (b, m, V) tensor: the mask column is set on it, not on the model's.
            picked = logits.gather(1, cols[lo : lo + chunk, :, None].expand(-1, -1, logits.shape[-1])).float()
            picked[..., self.denoiser.mask_id] = float("-inf")
            out.append(torch.log_softmax(picked, dim=-1))
        return torch.cat(out)
