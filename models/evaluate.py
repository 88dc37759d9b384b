"""Measure the embedded models' sample quality with the exact checker and write the model card.

`python -m models.evaluate [--samples 200]`: the diffusion model decodes through the project's
own engine (strategy low_confidence, one token per step, temperature 1 so that each seed
gives a different sample); the AR model samples ancestrally at temperature 1. Every sample is
the prompt plus 64 generated tokens, checked as a whole.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import torch

from models.checker import check
from models.tokenizer import WordTokenizer
from models.train import EMBEDDED_DIR
from models.transformer import Transformer, load_model

PROMPT = "once upon a time"


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def diffusion_samples(directory: Path, n: int, gen_length: int, steps: int) -> list[str]:
    from explorer.adapters import load_embedded
    from explorer.config import DecodeConfig
    from explorer.engine import iter_steps

    denoiser = load_embedded(directory)
    prompt = denoiser.encode(PROMPT)
    texts = []
    for seed in range(n):
        config = DecodeConfig(gen_length=gen_length, steps=steps, strategy="low_confidence",
                              temperature=1.0, seed=seed)
        generated = [denoiser.mask_id] * gen_length
        for record in iter_steps(denoiser, prompt, config):
            for position, token in zip(record.committed.tolist(), record.tokens.tolist()):
                generated[position] = token
        texts.append(denoiser.decode(prompt + generated))
    return texts


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
    return {"samples": len(results), "valid": valid, "valid_rate": round(valid / len(results), 4),
            "ci95": [round(low, 4), round(high, 4)],
            "valid_sentence_rate": round(sum(r.n_valid_sentences for r in results) / max(1, sentences), 4),
            "violations_by_kind": dict(kinds.most_common()),
            "example_invalid": next((r.summary() + " | " + " ".join(r.words) for r in results if not r.valid), None)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=EMBEDDED_DIR)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--no-card", action="store_true", help="print only, do not write the card")
    parser.add_argument("--note", default="", help="a sentence for the model card (e.g. run-to-run spread)")
    args = parser.parse_args(argv)
    tokenizer = WordTokenizer.load(args.dir / "vocab.json")
    began = time.perf_counter()
    report = {
        "mdlm_low_confidence_1_per_step": summarise(
            diffusion_samples(args.dir, args.samples, args.gen_length, args.gen_length)),
        "ar_ancestral": summarise(ar_samples(load_model(args.dir, "ar"), tokenizer, args.samples, args.gen_length)),
        "prompt": PROMPT, "gen_length": args.gen_length, "temperature": 1.0,
        "seconds": round(time.perf_counter() - began, 1),
        **({"notes": args.note} if args.note else {}),
    }
    print(json.dumps(report, indent=1))
    if not args.no_card:
        (args.dir / "evaluation.json").write_text(json.dumps(report, indent=1) + "\n")
        from models.card import write_card
        write_card(args.dir)


if __name__ == "__main__":
    main()
