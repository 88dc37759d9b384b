"""Line-by-line ports of the published reference decoders, used only to test fidelity.

- `llada_generate`: ML-GSAI/LLaDA `generate.py` (`generate`, `get_num_transfer_tokens`,
  `add_gumbel_noise`), without CFG.
- `fast_dllm_generate`: NVlabs/Fast-dLLM `llada/generate.py` (`generate` with
  `get_transfer_index` and a confidence threshold), without KV cache.
- `xdlm_generate`: MzeroMiko/LLaDA-XDLM `generate.py` (`generate_xdm`: low-confidence unmasking
  plus a budget of revisions), without CFG, with the prompt frozen (see its docstring).

They keep the originals' structure (whole-sequence top-k with -inf outside the block, the
softmax of un-noised logits, float64 Gumbel noise) so that the engine can be compared token
for token. `model` is any callable ids (1, L) -> logits (1, L, V).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def add_gumbel_noise(logits, temperature):
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, : remainder[i]] += 1
    return num_transfer_tokens


@torch.no_grad()
def llada_generate(
    model, prompt, steps, gen_length, block_length, temperature=0.0, remasking="low_confidence", mask_id=1
):
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        block_mask_index = (
            x[:, prompt.shape[1] + num_block * block_length : prompt.shape[1] + (num_block + 1) * block_length]
            == mask_id
        )
        num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            logits = model(x)
            logits_with_noise = add_gumbel_noise(logits, temperature=temperature)
            x0 = torch.argmax(logits_with_noise, dim=-1)
            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            else:
                raise NotImplementedError(remasking)
            x0_p[:, prompt.shape[1] + (num_block + 1) * block_length :] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


def get_transfer_index(logits, temperature, mask_index, x, num_transfer_tokens, threshold=None):
    logits_with_noise = add_gumbel_noise(logits, temperature=temperature)
    x0 = torch.argmax(logits_with_noise, dim=-1)
    p = F.softmax(logits.to(torch.float64), dim=-1)
    x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -np.inf)
    transfer_index = torch.zeros_like(x0, dtype=torch.bool)
    if threshold is not None:
        num_transfer_tokens = mask_index.sum(dim=1, keepdim=True)
    for j in range(confidence.shape[0]):
        _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j]))
        transfer_index[j, select_index] = True
        if threshold is not None:
            for k in range(1, int(num_transfer_tokens[j])):
                if confidence[j, select_index[k]] < threshold:
                    transfer_index[j, select_index[k]] = False
    return x0, transfer_index


@torch.no_grad()
def fast_dllm_generate(model, prompt, steps, gen_length, block_length, temperature=0.0, mask_id=1, threshold=None):
    """Returns (x, number of forward passes)."""
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    nfe = 0
    for num_block in range(num_blocks):
        block_mask_index = (
            x[:, prompt.shape[1] + num_block * block_length : prompt.shape[1] + (num_block + 1) * block_length]
            == mask_id
        )
        num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
        i = 0
        while True:
            nfe += 1
            mask_index = x == mask_id
            logits = model(x)
            mask_index[:, prompt.shape[1] + (num_block + 1) * block_length :] = 0
            x0, transfer_index = get_transfer_index(
                logits, temperature, mask_index, x, num_transfer_tokens[:, i] if threshold is None else None, threshold
            )
            x[transfer_index] = x0[transfer_index]
            i += 1
            if (
                x[:, prompt.shape[1] + num_block * block_length : prompt.shape[1] + (num_block + 1) * block_length]
                == mask_id
            ).sum() == 0:
                break
    return x, nfe


def llada_select(x0_p, mask_index, prompt_length, block_end, k):
    """LLaDA `generate()`'s choice of the positions to commit, line by line: the confidence row of
    the whole prompt + generation, -inf right of the block and at every unmasked position, and
    `torch.topk` over that row. x0_p, mask_index (1, L). Returns the chosen indices into the row."""
    x0_p = x0_p.clone()
    x0_p[:, prompt_length + block_end :] = -np.inf
    confidence = torch.where(mask_index, x0_p, -np.inf)
    _, select_index = torch.topk(confidence[0], k=k)
    return select_index


def dream_sample_tokens(logits, margin_confidence=False, neg_entropy=False):
    """Dream's `sample_tokens` at temperature 0 (no top-p / top-k): (confidence, x0)."""
    probs = torch.softmax(logits, dim=-1)
    confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        epsilon = 1e-10
        log_probs = torch.log(probs + epsilon)
        confidence = torch.sum(probs * log_probs, dim=-1)
    return confidence, x0


@torch.no_grad()
def dream_sample(model, prompt, steps, gen_length, alg="maskgit_plus", mask_id=1, eps=1e-3):
    """Dream's `_sample` (Dream-org/Dream-v0-Base-7B generation_utils.py) at temperature 0 with
    alg_temp 0, line by line. `model` gives logits already aligned to positions (the Dream adapter
    shifts them right by one, as `_sample` does). Returns (x, the number of steps run)."""
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits = model(x)
        mask_logits = logits[mask_index]
        t = timesteps[i]
        s = timesteps[i + 1]
        if alg == "maskgit_plus":
            confidence, x0 = dream_sample_tokens(mask_logits)
        elif alg == "topk_margin":
            confidence, x0 = dream_sample_tokens(mask_logits, margin_confidence=True)
        elif alg == "entropy":
            confidence, x0 = dream_sample_tokens(mask_logits, neg_entropy=True)
        else:
            raise NotImplementedError(alg)
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full_confidence[mask_index] = confidence
        if number_transfer_tokens > 0:
            _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
            x_ = torch.zeros_like(x, dtype=torch.long) + mask_id
            x_[mask_index] = x0.clone()
            row_indices = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
            x[row_indices, transfer_index] = x_[row_indices, transfer_index]
    return x, steps


def xdlm_gumbel(logits, temperature, noise):
    """`add_gumbel_noise` with the uniform draws given (`noise`, float64, like `logits`)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


@torch.no_grad()
def xdlm_generate(
    model,
    prompt,
    steps,
    gen_length,
    block_length,
    temperature=0.0,
    mask_id=1,
    k1=0.0,
    noise=None,
    freeze_prompt=True,
):
    """MzeroMiko/LLaDA-XDLM `generate.py:generate_xdm` (low_confidence, no CFG, no EOS tweaks), line
    by line, with two changes:

    - `freeze_prompt`: the prompt positions are left out of the revision candidates
      (`clean_change_cond`); the published code may revise the prompt, the explorer never does.
    - `noise(step, logits)` gives the uniform draws of the Gumbel noise of global step `step`
      (float64, shaped like `logits`) instead of `torch.rand_like`, so a test can feed the
      engine's own draws. Returns x (1, P + G).
    """
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        block_mask_index = (
            x[:, prompt.shape[1] + num_block * block_length : prompt.shape[1] + (num_block + 1) * block_length]
            == mask_id
        )
        num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
        accumulate_num_transfer_tokens = num_transfer_tokens.cumsum(dim=-1)
        accumulate_num_transfer_tokens_mask = accumulate_num_transfer_tokens
        num_transfer_tokens_mask = torch.cat(
            [
                accumulate_num_transfer_tokens_mask[:, 0:1],
                accumulate_num_transfer_tokens_mask[:, 1:] - accumulate_num_transfer_tokens_mask[:, :-1],
            ],
            dim=-1,
        )
        if k1 > 0.0:
            accumulate_num_transfer_tokens_rnew = (accumulate_num_transfer_tokens_mask * k1 / (1 - k1)).int()
            accumulate_num_transfer_tokens_rnew[:, 0] = 0
            num_transfer_tokens_rnew = torch.cat(
                [
                    accumulate_num_transfer_tokens_rnew[:, 0:1],
                    accumulate_num_transfer_tokens_rnew[:, 1:] - accumulate_num_transfer_tokens_rnew[:, :-1],
                ],
                dim=-1,
            )
        for i in range(steps):
            mask_index = x == mask_id
            logits = model(x)
            if temperature == 0:
                logits_with_noise = logits
            else:
                draws = (
                    torch.rand_like(logits, dtype=torch.float64)
                    if noise is None
                    else noise(num_block * steps + i, logits)
                )
                logits_with_noise = xdlm_gumbel(logits, temperature, draws)
            x0 = torch.argmax(logits_with_noise, dim=-1)
            p = F.softmax(logits, dim=-1)
            x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            x_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x, -1)), -1)
            x0_p[:, prompt.shape[1] + (num_block + 1) * block_length :] = -np.inf
            confidence = torch.where(mask_index, x0_p, -np.inf)
            clean_change_cond = (~mask_index) & (x0 != x) & (x0_p >= x_p)
            if freeze_prompt:
                clean_change_cond &= ~prompt_index
            confidence_clean = torch.where(clean_change_cond, x0_p, -np.inf)
            num_max_uniform_transfers = (confidence_clean != -np.inf).sum(-1)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens_mask[j, i]))
                transfer_index[j, select_index] = True
                if k1 > 0.0:
                    topk = int(min(num_max_uniform_transfers[j], num_transfer_tokens_rnew[j, i]))
                    addition = num_transfer_tokens_rnew[j, i] - topk
                    if i < steps - 1:
                        num_transfer_tokens_rnew[j, i + 1] += addition
                    _, select_index_clean = torch.topk(confidence_clean[j], k=topk)
                    transfer_index[j, select_index_clean] = True
            x[transfer_index] = x0[transfer_index]
    return x
