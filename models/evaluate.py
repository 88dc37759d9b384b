"""Sample-quality statistics for the embedded models, with no dependency on the explorer.

`summarise(texts)` checks samples with the exact grammar checker and gives the valid rate with
its 95% Wilson interval; `ar_samples` draws ancestral samples from the AR model. The evaluation
that decodes the diffusion model through the explorer's engine and writes the model card is
`bench/evaluate_embedded.py` (models/ never imports explorer/).
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from models.checker import check
from models.tokenizer import WordTokenizer
from models.transformer import Transformer

PROMPT = "once upon a time"


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def ar_samples(model: Transformer, tokenizer: WordTokenizer, n: int, gen_length: int, seed: int = 0) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([tokenizer.encode(PROMPT)] * n)  # (N, P)
    for _ in range(gen_length):
        logits = model(ids)[:, -1]  # (N, V)
        logits[:, [tokenizer.mask_id, tokenizer.pad_id, tokenizer.unk_id]] = float("-inf")
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (N, 1)
        ids = torch.cat([ids, nxt], dim=1)
    return [tokenizer.decode(row) for row in ids.tolist()]


def summarise(texts: list[str]) -> dict:
    results = [check(t) for t in texts]
    valid = sum(r.valid for r in results)
    low, high = wilson_interval(valid, len(results))
    kinds = Counter(v.kind for r in results for v in r.violations)
    sentences = sum(r.n_sentences for r in results)
    return {
        "samples": len(results),
        "valid": valid,
        "valid_rate": round(valid / len(results), 4),
        "ci95": [round(low, 4), round(high, 4)],
        "valid_sentence_rate": round(sum(r.n_valid_sentences for r in results) / max(1, sentences), 4),
        "violations_by_kind": dict(kinds.most_common()),
        "example_invalid": next((r.summary() + " | " + " ".join(r.words) for r in results if not r.valid), None),
    }
