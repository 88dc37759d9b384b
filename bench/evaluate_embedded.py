"""Measure the embedded models' sample quality with the exact checker and write the model card.

    python bench/evaluate_embedded.py [--samples 200] [--xdlm-only]

The diffusion model decodes through the project's own engine (strategy low_confidence, one
token per step, temperature 1 so that each seed gives a different sample); the AR model samples
ancestrally at temperature 1. The XDLM (xdlm.safetensors, when present) decodes with its two
samplers at S = 64 steps and its own k: xdlm_ancestral (64 steps + the final noise removal) and
xdlm_revise (one token per step plus the revision budget). Every sample is the prompt plus 64
generated tokens, checked as a whole. Writes models/embedded/evaluation.json and MODEL_CARD.md
(unless --no-card); --xdlm-only re-measures only the XDLM and keeps the other entries of
evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.adapters.embedded import load_embedded, xdlm_k
from explorer.decoding.config import DecodeConfig
from explorer.decoding.engine import iter_steps
from models import EMBEDDED_DIR
from models.card import write_card
from models.evaluate import PROMPT, ar_samples, summarise
from models.tokenizer import WordTokenizer
from models.transformer import load_model


def diffusion_samples(
    directory: Path,
    n: int,
    gen_length: int,
    steps: int,
    strategy: str = "low_confidence",
    weights: str = "mdlm",
    **knobs,
) -> list[str]:
    denoiser = load_embedded(directory, weights=weights)
    prompt = denoiser.encode(PROMPT)
    texts = []
    for seed in range(n):
        config = DecodeConfig(
            gen_length=gen_length, steps=steps, strategy=strategy, temperature=1.0, seed=seed, **knobs
        )
        generated = [denoiser.mask_id] * gen_length
        for record in iter_steps(denoiser, prompt, config):
            for position, token in zip(record.committed.tolist(), record.tokens.tolist()):
                generated[position] = token
            for position in record.remasked.tolist():  # XDLM's ancestral steps may re-mask
                generated[position] = denoiser.mask_id
        texts.append(denoiser.decode(prompt + generated))
    return texts


def xdlm_report(directory: Path, n: int, gen_length: int) -> dict:
    """The XDLM's two samplers at S = gen_length steps with the k it was trained with."""
    k = xdlm_k(directory)
    return {
        "k": k,
        "steps": gen_length,
        "ancestral": summarise(
            diffusion_samples(
                directory, n, gen_length, gen_length, "xdlm_ancestral", "xdlm", xdlm_k=k, violations=False
            )
        ),
        "revise": summarise(
            diffusion_samples(directory, n, gen_length, gen_length, "xdlm_revise", "xdlm", xdlm_k=k, violations=False)
        ),
    }


def _rate(entry: dict) -> str:
    low, high = entry["ci95"]
    return (
        f"{entry['valid']}/{entry['samples']} = **{entry['valid_rate']:.1%}** valid samples "
        f"(95% Wilson CI {low:.1%}-{high:.1%}); {entry['valid_sentence_rate']:.2%} of complete sentences valid"
    )


def _step_rates(log: dict) -> str:
    """The fastest and slowest logged stretch of training, in seconds per step (a CPU shared with
    other jobs shows as a wide range)."""
    history = log.get("history", [])
    rates = [(b["seconds"] - a["seconds"]) / (b["step"] - a["step"]) for a, b in pairwise(history)]
    if log["device"] != "cpu" or len(rates) < 2:
        return ""
    return (
        f"; a step took {min(rates):.2f}-{max(rates):.2f} s over the logged stretches of the run "
        "(the cores were shared with other jobs for part of it, so this wall time is an upper bound)"
    )


def xdlm_card_section(directory: Path, evaluation: dict) -> list[str]:
    """The model card's XDLM section, from xdlm_train_log.json, xdlm_kernel.json and evaluation.json."""
    log_path = directory / "xdlm_train_log.json"
    if not (directory / "xdlm.safetensors").exists() or not log_path.exists():
        return []
    log = json.loads(log_path.read_text())
    mdlm = json.loads((directory / "mdlm_train_log.json").read_text())
    k = xdlm_k(directory)
    minutes = log["train_seconds"] / 60
    lines = [
        "",
        f"## `xdlm.safetensors`: story-grammar XDLM (k = {k:g})",
        "",
        f"The same transformer ({log['parameters']:,} parameters, {log['model']['n_layer']} layers / "
        f"{log['model']['n_head']} heads / width {log['model']['d_model']}, same vocabulary) trained with "
        f"XDLM's mask + uniform noise (arXiv 2602.01362): a token is kept with probability alpha_t, "
        f"otherwise it becomes a uniform draw over all {log['model']['vocab_size']} ids with probability k "
        f"or the mask with 1 - k (`xdlm_kernel.json`), and the loss is XDLM's continuous-time ELBO "
        f"(`models/xdlm.py`). Same budget and seeds as the MDLM: {log['train']['steps']} steps x "
        f"{log['train']['batch_size']} windows, `python -m models.train --kind xdlm --k {k:g} --device "
        f"{log['device']}`.",
        "",
        f"- held-out NELBO **{log['held_out_nats_per_token']:.4f}** nats/token on the MDLM's held-out "
        f"windows (MDLM: {mdlm['held_out_nats_per_token']:.4f}); an upper bound on its NLL.",
        f"- trained on {log.get('device_name', log['device'])} with {log['threads']} threads, "
        f"{log['train_seconds']:.0f} s ({minutes:.0f} minutes){_step_rates(log)}.",
    ]
    x = evaluation.get("xdlm")
    if x:
        budget = int(x["steps"] * x["k"] / (1 - x["k"]) + 1e-9)
        lines += [
            "",
            f"Sample quality: {x['ancestral']['samples']} seeded samples each of prompt "
            f'"{evaluation["prompt"]}" + {evaluation["gen_length"]} generated tokens at temperature '
            f"{evaluation['temperature']}, xdlm_k = {x['k']:g} (`python bench/evaluate_embedded.py`):",
            "",
            f"- `xdlm_ancestral`, S = {x['steps']} steps + the final noise removal: {_rate(x['ancestral'])}. "
            f"Violations: {x['ancestral']['violations_by_kind'] or 'none'}.",
            f"- `xdlm_revise`, S = {x['steps']} steps (one token per step plus up to {budget} revisions): "
            f"{_rate(x['revise'])}. Violations: {x['revise']['violations_by_kind'] or 'none'}.",
            "",
            "MDLM against XDLM as the number of steps shrinks: `docs/xdlm_comparison.md`.",
        ]
    return lines


def write_cards(directory: Path, evaluation: dict) -> None:
    """models/card.py's card, then the XDLM section."""
    path = write_card(directory)
    extra = xdlm_card_section(directory, evaluation)
    if extra:
        path.write_text(path.read_text() + "\n".join(extra) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=EMBEDDED_DIR)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--no-card", action="store_true", help="print only, do not write the card")
    parser.add_argument("--note", default="", help="a sentence for the model card (e.g. run-to-run spread)")
    parser.add_argument(
        "--xdlm-only", action="store_true", help="measure only the XDLM; keep the other entries of evaluation.json"
    )
    args = parser.parse_args(argv)
    has_xdlm = (args.dir / "xdlm.safetensors").exists()
    if args.xdlm_only:
        report = json.loads((args.dir / "evaluation.json").read_text())
        began = time.perf_counter()
        report["xdlm"] = xdlm_report(args.dir, args.samples, args.gen_length)
        report["xdlm"]["seconds"] = round(time.perf_counter() - began, 1)
        print(json.dumps(report["xdlm"], indent=1))
        if not args.no_card:
            (args.dir / "evaluation.json").write_text(json.dumps(report, indent=1) + "\n")
            write_cards(args.dir, report)
        return
    tokenizer = WordTokenizer.load(args.dir / "vocab.json")
    began = time.perf_counter()
    report = {
        "mdlm_low_confidence_1_per_step": summarise(
            diffusion_samples(args.dir, args.samples, args.gen_length, args.gen_length)
        ),
        "ar_ancestral": summarise(ar_samples(load_model(args.dir, "ar"), tokenizer, args.samples, args.gen_length)),
        **({"xdlm": xdlm_report(args.dir, args.samples, args.gen_length)} if has_xdlm else {}),
        "prompt": PROMPT,
        "gen_length": args.gen_length,
        "temperature": 1.0,
        "seconds": round(time.perf_counter() - began, 1),
        **({"notes": args.note} if args.note else {}),
    }
    print(json.dumps(report, indent=1))
    if not args.no_card:
        (args.dir / "evaluation.json").write_text(json.dumps(report, indent=1) + "\n")
        write_cards(args.dir, report)


if __name__ == "__main__":
    main()
