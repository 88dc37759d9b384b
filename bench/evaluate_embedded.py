"""Measure the embedded models' sample quality with the exact checker and write the model card.

    python bench/evaluate_embedded.py [--samples 200]

The diffusion model decodes through the project's own engine (strategy low_confidence, one
token per step, temperature 1 so that each seed gives a different sample); the AR model samples
ancestrally at temperature 1. Every sample is the prompt plus 64 generated tokens, checked as a
whole. Writes models/embedded/evaluation.json and MODEL_CARD.md (unless --no-card).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.adapters.embedded import load_embedded
from explorer.decoding.config import DecodeConfig
from explorer.decoding.engine import iter_steps
from models import EMBEDDED_DIR
from models.card import write_card
from models.evaluate import PROMPT, ar_samples, summarise
from models.tokenizer import WordTokenizer
from models.transformer import load_model


def diffusion_samples(directory: Path, n: int, gen_length: int, steps: int) -> list[str]:
    denoiser = load_embedded(directory)
    prompt = denoiser.encode(PROMPT)
    texts = []
    for seed in range(n):
        config = DecodeConfig(gen_length=gen_length, steps=steps, strategy="low_confidence", temperature=1.0, seed=seed)
        generated = [denoiser.mask_id] * gen_length
        for record in iter_steps(denoiser, prompt, config):
            for position, token in zip(record.committed.tolist(), record.tokens.tolist()):
                generated[position] = token
        texts.append(denoiser.decode(prompt + generated))
    return texts


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
            diffusion_samples(args.dir, args.samples, args.gen_length, args.gen_length)
        ),
        "ar_ancestral": summarise(ar_samples(load_model(args.dir, "ar"), tokenizer, args.samples, args.gen_length)),
        "prompt": PROMPT,
        "gen_length": args.gen_length,
        "temperature": 1.0,
        "seconds": round(time.perf_counter() - began, 1),
        **({"notes": args.note} if args.note else {}),
    }
    print(json.dumps(report, indent=1))
    if not args.no_card:
        (args.dir / "evaluation.json").write_text(json.dumps(report, indent=1) + "\n")
        write_card(args.dir)


if __name__ == "__main__":
    main()
