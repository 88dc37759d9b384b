"""At temperature 0 the engine reproduces the published decoders token for token."""
import pytest
import torch

from explorer.api import decode
from reference_decoders import fast_dllm_generate, llada_generate

PROMPTS = ["once upon a time", "once upon a time there was a boy named leo . he",
           "the dogs", "mia saw an"]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("gen_length,steps,block_length", [
    (32, 32, 32), (32, 16, 8), (48, 12, 16), (64, 64, 16), (40, 20, 40)])
def test_low_confidence_matches_llada_generate(denoiser, prompt, gen_length, steps, block_length):
    ours = decode(prompt, denoiser, gen_length=gen_length, steps=steps,
                  block_length=block_length, strategy="low_confidence")
    ids = torch.tensor([ours.prompt_ids])
    reference = llada_generate(denoiser.logits, ids, steps, gen_length, block_length,
                               mask_id=denoiser.mask_id)
    assert ours.token_ids == reference[0, ids.shape[1]:].tolist()
    assert len(ours.steps) == steps


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("gen_length,block_length,tau", [
    (32, 32, 0.9), (32, 8, 0.9), (48, 16, 0.5), (64, 64, 0.7), (32, 32, 1.0)])
def test_threshold_matches_fast_dllm(denoiser, prompt, gen_length, block_length, tau):
    steps = gen_length  # ignored by the threshold rule, as in Fast-dLLM
    ours = decode(prompt, denoiser, gen_length=gen_length, steps=steps,
                  block_length=block_length, strategy="threshold", threshold=tau)
    ids = torch.tensor([ours.prompt_ids])
    reference, nfe = fast_dllm_generate(denoiser.logits, ids, steps, gen_length, block_length,
                                        mask_id=denoiser.mask_id, threshold=tau)
    assert ours.token_ids == reference[0, ids.shape[1]:].tolist()
    assert len(ours.steps) == nfe  # the same number of forward passes, step for step


def test_fidelity_check_can_fail(denoiser):
    """The comparison is sensitive: a different schedule gives different tokens."""
    prompt = PROMPTS[0]
    ours = decode(prompt, denoiser, gen_length=32, steps=4, strategy="low_confidence")
    ids = torch.tensor([ours.prompt_ids])
    reference = llada_generate(denoiser.logits, ids, 32, 32, 32, mask_id=denoiser.mask_id)
    assert ours.token_ids != reference[0, ids.shape[1]:].tolist()
