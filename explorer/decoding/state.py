"""The state of one decode: the sequence on the device and its mirror on the host.

`DecodeState.commit` applies a step's choice on the device and copies the step's per-position
results to the host in one transfer (`HostStep`); which positions are still masked is then
updated on the host from that copy, so the loop and the schedule never read a device tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from explorer.decoding.resume import Resume
from explorer.decoding.sampling import StepMetrics


@dataclass(frozen=True)
class Block:
    """A semi-autoregressive block: generated positions [start, end)."""

    index: int
    start: int
    end: int
    n_masked: int  # masked positions in the block when it started
    in_block: torch.Tensor  # (G,) bool, on the device
    up_to_end: torch.Tensor  # (G,) bool: this block and the earlier ones (what a revision may touch)


class HostStep:
    """One step's per-position results on the host: two device-to-host copies in all."""

    __slots__ = (
        "before",
        "commit",
        "conf_before",
        "entropy",
        "margin",
        "masked_before",
        "proposal_prob",
        "remask",
        "tokens",
        "top_ids",
        "top_probs",
    )

    def __init__(self, ints: np.ndarray, floats: np.ndarray, k: int, masked_before: int) -> None:
        self.top_ids = ints[:k].T  # (G, K)
        self.tokens = ints[k]  # the token a commit writes at each position (x̂ or the energy's pick)
        self.commit = ints[k + 1].astype(bool)
        self.remask = ints[k + 2].astype(bool)
        self.before = ints[k + 3]  # the generated part before this step
        self.conf_before = floats[k + 3].astype(np.float32)  # p(token) at each position's last commit
        floats = floats.astype(np.float32)
        self.top_probs = floats[:k].T  # (G, K)
        self.proposal_prob, self.entropy, self.margin = floats[k], floats[k + 1], floats[k + 2]
        self.masked_before = masked_before  # masked positions in the generated part before this step


class DecodeState:
    """The sequence being decoded (prompt followed by the generated part) and its host mirror."""

    def __init__(self, prompt_ids: Sequence[int], gen_length: int, mask_id: int, device: torch.device) -> None:
        self.prompt_length = len(prompt_ids)
        self.mask_id = mask_id
        self.x = torch.full((1, self.prompt_length + gen_length), mask_id, dtype=torch.long, device=device)
        self.x[0, : self.prompt_length] = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)
        self.masked_host = np.ones(gen_length, dtype=bool)  # (G,) kept in step with the device
        self.commit_conf = torch.zeros(gen_length, dtype=torch.float32, device=device)  # p(token) at last commit, fp16
        self.step = 0  # over the whole run
        self.step_in_block = 0  # j
        self.revisions_in_block = 0  # visible tokens changed into others in the current block

    @property
    def generated(self) -> torch.Tensor:
        return self.x[0, self.prompt_length :]  # (G,) a view

    def masked(self) -> torch.Tensor:
        return self.generated == self.mask_id  # (G,) on the device

    def masked_in(self, block: Block) -> int:
        return int(self.masked_host[block.start : block.end].sum())

    def masked_fraction(self) -> float:
        return float(self.masked_host.mean())

    def restore(self, resume: Resume) -> None:
        """Start from a stored state (a branch) instead of the prompt."""
        if resume.tokens.shape != self.masked_host.shape:
            n, G = resume.tokens.shape[0], self.masked_host.size
            raise ValueError(f"the resumed state has {n} positions, the run {G}")
        device = self.x.device
        self.generated.copy_(torch.as_tensor(resume.tokens, dtype=torch.long, device=device))
        self.commit_conf = torch.as_tensor(resume.commit_conf, dtype=torch.float32, device=device).clone()
        self.masked_host = resume.tokens == self.mask_id
        self.step = resume.step

    def enter_block(
        self, index: int, start: int, end: int, step_in_block: int = 0, n_masked: int | None = None, revisions: int = 0
    ) -> Block:
        """Start block `index` (or, for a branch, continue it at step j with its starting count
        and the revisions it made)."""
        in_block = torch.zeros(self.masked_host.shape[0], dtype=torch.bool, device=self.x.device)
        in_block[start:end] = True
        up_to_end = torch.zeros_like(in_block)
        up_to_end[:end] = True
        self.step_in_block = step_in_block
        self.revisions_in_block = revisions
        n_masked = int(self.masked_host[start:end].sum()) if n_masked is None else n_masked
        return Block(index, start, end, n_masked, in_block, up_to_end)

    def advance(self) -> None:
        self.step += 1
        self.step_in_block += 1

    def commit(
        self, commit: torch.Tensor, tokens: torch.Tensor, remask: torch.Tensor | None, metrics: StepMetrics
    ) -> HostStep:
        """Write the step's tokens (and masks) on the device, copy its results to the host once,
        and update the host mirror from that copy."""
        before, conf_before = self.generated.clone(), self.commit_conf  # what a re-mask takes away
        # torch.where, not boolean indexing: indexing by a mask needs its size on the host.
        self.generated.copy_(torch.where(commit, tokens, self.generated))
        token_prob = metrics.log_p.gather(-1, tokens[:, None]).squeeze(-1).exp()  # (G,)
        # Kept at float16, the precision the store keeps: a branch reads it back bit for bit, so
        # the re-masking strategies that rank it (rcr, remdm_conf) replay exactly.
        self.commit_conf = torch.where(commit, token_prob.half().float(), self.commit_conf)
        if remask is not None:
            self.generated.copy_(torch.where(remask, torch.full_like(tokens, self.mask_id), self.generated))
        host = _to_host(commit, remask, tokens, token_prob, metrics, before, conf_before, int(self.masked_host.sum()))
        self.revisions_in_block += int((host.commit & ~self.masked_host).sum())
        self.masked_host &= ~host.commit
        self.masked_host |= host.remask
        return host


def _to_host(
    commit: torch.Tensor,
    remask: torch.Tensor | None,
    tokens: torch.Tensor,
    token_prob: torch.Tensor,
    metrics: StepMetrics,
    before: torch.Tensor,
    conf_before: torch.Tensor,
    masked_before: int,
) -> HostStep:
    """Stack the step's per-position arrays on the device and copy them to the host at once.

    Floats travel as float16: (K + 4, G) = top-K probabilities, p(token), entropy, margin, the
    confidence of each position's last commit (for re-mask events). That is the precision the
    store keeps (DESIGN section 4) and halves the transfer; the strategies already ranked on the
    device in full precision, so no decision depends on the rounding. float16 keeps 11
    significant bits: every value to within 2^-11 (0.05%) relative error. Ints (token ids, the
    commit and re-mask masks, the previous tokens) travel as one (K + 4, G) int64 array.
    """
    k = metrics.top_ids.shape[-1]
    floats = torch.cat(
        [metrics.top_probs.T, token_prob[None], metrics.entropy[None], metrics.margin[None], conf_before[None]]
    ).to(torch.float16)
    remask = torch.zeros_like(commit) if remask is None else remask
    as_int = metrics.top_ids.dtype
    ints = torch.cat(
        [metrics.top_ids.T, tokens[None], commit[None].to(as_int), remask[None].to(as_int), before[None].to(as_int)]
    )
    floats_host = floats.cpu()  # the step's one synchronisation with the device
    return HostStep(ints.cpu().numpy(), floats_host.numpy(), k, masked_before)
