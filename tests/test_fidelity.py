"""At temperature 0 the engine reproduces the published decoders token for token."""

import pytest
import torch
from reference_decoders import fast_dllm_generate, llada_generate

from explorer.api import decode

PROMPTS = ["once upon a time", "once upon a time there was a boy named leo . he", "the dogs", "mia saw an"]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize(
    "gen_length,steps,block_length", [(32, 32, 32), (32, 16, 8), (48, 12, 16), (64, 64, 16), (40, 20, 40)]
)
def test_low_confidence_matches_llada_generate(denoiser, prompt, gen_length, steps, block_length):
    ours = decode(
        prompt, denoiser, gen_length=gen_length, steps=steps, block_length=block_length, strategy="low_confidence"
    )
    ids = torch.tensor([ours.prompt_ids])
    reference = llada_generate(denoiser.logits, ids, steps, gen_length, block_length, mask_id=denoiser.mask_id)
    assert ours.token_ids == reference[0, ids.shape[1] :].tolist()
    assert len(ours.steps) == steps


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize(
    "gen_length,block_length,tau", [(32, 32, 0.9), (32, 8, 0.9), (48, 16, 0.5), (64, 64, 0.7), (32, 32, 1.0)]
)
def test_threshold_matches_fast_dllm(denoiser, prompt, gen_length, block_length, tau):
    steps = gen_length  # ignored by the threshold rule, as in Fast-dLLM
    ours = decode(
        prompt,
        denoiser,
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        strategy="threshold",
        threshold=tau,
    )
    ids = torch.tensor([ours.prompt_ids])
    reference, nfe = fast_dllm_generate(
        denoiser.logits, ids, steps, gen_length, block_length, mask_id=denoiser.mask_id, threshold=tau
    )
    assert ours.token_ids == reference[0, ids.shape[1] :].tolist()
    assert len(ours.steps) == nfe  # the same number of forward passes, step for step


def test_fidelity_check_can_fail(denoiser):
    """The comparison is sensitive: a different schedule gives different tokens."""
    prompt = PROMPTS[0]
    ours = decode(prompt, denoiser, gen_length=32, steps=4, strategy="low_confidence")
    ids = torch.tensor([ours.prompt_ids])
    reference = llada_generate(denoiser.logits, ids, 32, 32, 32, mask_id=denoiser.mask_id)
    assert ours.token_ids != reference[0, ids.shape[1] :].tolist()


# ---- exact ties, as LLaDA breaks them -------------------------------------------------------
def test_ties_break_as_in_llada_generate():
    """Hand-built confidences with many exact ties: the engine's selection is LLaDA's, position for
    position, because it ranks on a row laid out as LLaDA's (prompt and unmasked at -inf)."""
    from reference_decoders import llada_select

    from explorer.decoding.strategies import top_k_commit

    gen = torch.Generator().manual_seed(0)
    old_layout_differs = 0
    for _ in range(500):
        P, G = int(torch.randint(1, 40, (), generator=gen)), int(torch.randint(2, 200, (), generator=gen))
        block_end = G if torch.rand((), generator=gen) < 0.5 else int(torch.randint(1, G + 1, (), generator=gen))
        conf = torch.tensor([0.5, 0.25, 0.125])[torch.randint(0, 3, (G,), generator=gen)]  # ties everywhere
        masked = torch.rand(G, generator=gen) < 0.7
        masked[0] = True
        candidates = masked & (torch.arange(G) < block_end)
        k = int(torch.randint(1, max(int(candidates.sum()), 1) + 1, (), generator=gen))
        x0_p = torch.cat([torch.rand(P, generator=gen), conf])[None]  # (1, L): the prompt's values do not matter
        mask_index = torch.cat([torch.zeros(P, dtype=torch.bool), masked])[None]
        reference = sorted((llada_select(x0_p, mask_index, P, block_end, k) - P).tolist())
        ours = top_k_commit(conf, candidates, k, prompt_length=P).nonzero().flatten().tolist()
        assert ours == [i for i in reference if i >= 0 and candidates[i]], (P, G, k)
        old = top_k_commit(conf.double(), candidates, k).nonzero().flatten().tolist()  # ranked over G alone
        old_layout_differs += old != ours
    assert old_layout_differs > 50  # the layout matters: without it ties go elsewhere


def test_tied_logits_decode_as_llada_generate():
    """Through the whole engine: a denoiser whose logits tie at many positions (the same row
    repeated) commits exactly what LLaDA's generate() commits."""
    from reference_decoders import llada_generate

    from explorer.api import decode as engine_decode

    class Tied:
        name, mask_id, context_length, device = "tied", 0, 128, torch.device("cpu")

        def logits(self, ids):
            g = torch.Generator().manual_seed(7)
            rows = torch.randn(4, 9, generator=g)  # four distinct rows, repeated along the sequence
            out = rows[torch.arange(ids.shape[1]) % 4][None].expand(ids.shape[0], -1, -1).clone()
            out[..., self.mask_id] = float("-inf")
            return out

        def encode(self, text):
            return [int(w) for w in text.split()]

        def decode(self, ids):
            return " ".join(map(str, ids))

        def token_text(self, token_id):
            return str(token_id)

    tied = Tied()
    for prompt, (gen_length, steps, block) in [("1 2 3", (32, 8, 32)), ("4 5", (24, 12, 8)), ("6", (40, 10, 20))]:
        ours = engine_decode(prompt, tied, gen_length=gen_length, steps=steps, block_length=block)
        ids = torch.tensor([ours.prompt_ids])
        reference = llada_generate(tied.logits, ids, steps, gen_length, block, mask_id=tied.mask_id)
        commits = [r.committed.tolist() for r in ours.steps]
        assert ours.token_ids == reference[0, ids.shape[1] :].tolist()
        assert commits == _llada_commit_order(tied, ids, steps, gen_length, block)


def _llada_commit_order(model, prompt, steps, gen_length, block_length):
    """The positions LLaDA's generate() commits at each step (the port, recording its choices)."""
    from reference_decoders import get_num_transfer_tokens, llada_select

    x = torch.full((1, prompt.shape[1] + gen_length), model.mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    P, order = prompt.shape[1], []
    for b in range(gen_length // block_length):
        block_mask = x[:, P + b * block_length : P + (b + 1) * block_length] == model.mask_id
        counts = get_num_transfer_tokens(block_mask, steps // (gen_length // block_length))
        for i in range(counts.shape[1]):
            mask_index = x == model.mask_id
            logits = model.logits(x)
            x0 = logits.argmax(-1)
            x0_p = torch.gather(torch.softmax(logits, -1), -1, x0[..., None])[..., 0]
            picked = llada_select(x0_p, mask_index, P, (b + 1) * block_length, int(counts[0, i]))
            x[0, picked] = x0[0, picked]
            order.append(sorted((picked - P).tolist()))
    return order


# ---- Dream's own schedule -------------------------------------------------------------------
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize(
    "strategy,alg", [("low_confidence", "maskgit_plus"), ("margin", "topk_margin"), ("entropy", "entropy")]
)
@pytest.mark.parametrize("gen_length,steps", [(32, 32), (32, 8), (48, 12), (40, 5)])
def test_dream_schedule_matches_dream_sample(denoiser, prompt, strategy, alg, gen_length, steps):
    from reference_decoders import dream_sample

    ours = decode(prompt, denoiser, gen_length=gen_length, steps=steps, strategy=strategy, schedule="dream")
    ids = torch.tensor([ours.prompt_ids])
    reference, n_steps = dream_sample(denoiser.logits, ids, steps, gen_length, alg, mask_id=denoiser.mask_id)
    assert ours.token_ids == reference[0, ids.shape[1] :].tolist()
    assert len(ours.steps) == n_steps == steps  # steps that commit nothing are steps too


def test_dream_schedule_differs_from_llada_schedule(denoiser):
    """The two schedules commit different counts per step (the test above can fail)."""
    steps = [r.n_committed for r in decode(PROMPTS[0], denoiser, gen_length=32, steps=8, schedule="dream").steps]
    llada = [r.n_committed for r in decode(PROMPTS[0], denoiser, gen_length=32, steps=8).steps]
    assert sum(steps) == sum(llada) == 32 and steps != llada == [4] * 8
