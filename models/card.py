"""Write models/embedded/MODEL_CARD.md from the training logs and the evaluation."""

from __future__ import annotations

import json
from pathlib import Path


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _rate(entry: dict) -> str:
    low, high = entry["ci95"]
    return (
        f"{entry['valid']}/{entry['samples']} = **{entry['valid_rate']:.1%}** valid samples "
        f"(95% CI {low:.1%}-{high:.1%}); {entry['valid_sentence_rate']:.2%} of complete sentences valid"
    )


def write_card(directory: Path) -> Path:
    mdlm, ar = _load(directory / "mdlm_train_log.json"), _load(directory / "ar_train_log.json")
    evaluation, cpu = _load(directory / "evaluation.json"), _load(directory / "cpu_timing.json")
    m = mdlm["model"]
    lines = [
        "# Embedded models: story-grammar MDLM, AR transformer and XDLM",
        "",
        "Small transformers of one size on one word-level vocabulary of "
        f"{m['vocab_size']} tokens (`vocab.json`), trained from scratch on stories from the seeded "
        "grammar in `models/corpus.py` (a/an by sound, numeral and subject-verb number, "
        "there was/were, the child's name and pronoun gender). `models/checker.py` checks any text exactly.",
        "",
        "| | `mdlm.safetensors` (denoiser) | `ar.safetensors` (causal) |",
        "|---|---|---|",
        f"| parameters | {mdlm['parameters']:,} | {ar['parameters']:,} |",
        f"| layers / heads / width | {m['n_layer']} / {m['n_head']} / {m['d_model']} | "
        f"{ar['model']['n_layer']} / {ar['model']['n_head']} / {ar['model']['d_model']} |",
        f"| context | {m['context_length']} tokens (rotary positions) | {ar['model']['context_length']} tokens |",
        "| objective | MDLM: t ~ U(0,1), mask w.p. t, masked CE / t | next-token CE |",
        f"| steps x batch | {mdlm['train']['steps']} x {mdlm['train']['batch_size']} windows "
        f"| {ar['train']['steps']} x {ar['train']['batch_size']} windows |",
        f"| held-out | NELBO **{mdlm['held_out_nats_per_token']:.4f}** nats/token | "
        f"NLL **{ar['held_out_nats_per_token']:.4f}** nats/token |",
        f"| trained on | {mdlm.get('device_name', mdlm['device'])}, {mdlm['train_seconds']:.0f} s "
        f"| {ar.get('device_name', ar['device'])}, {ar['train_seconds']:.0f} s |",
        "",
        "Training windows: 320 consecutive tokens of concatenated stories (half start at a story, half "
        "at a random word), fresh stories every step (seed 1), AdamW lr 3e-3 with warm-up and cosine "
        "decay, N(0, 0.02) init. Held-out: 8 batches from a disjoint seed (999999); the MDLM NELBO "
        "is an upper bound on its NLL, both in nats per token.",
        "",
        "Reproduce: `python -m models.train` (CUDA when present, else CPU; `--device cpu` forces the "
        "CPU), then `python bench/evaluate_embedded.py` to re-measure quality and rewrite this card.",
    ]
    if cpu:
        total = cpu["mdlm"]["estimated_minutes"] + cpu["ar"]["estimated_minutes"]
        lines += [
            "",
            f"On {cpu['threads']} CPU threads ({cpu['cpu_count']} cores) one training step took "
            f"{cpu['mdlm']['seconds_per_step']} s (MDLM) and {cpu['ar']['seconds_per_step']} s (AR), "
            f"measured over {cpu['steps_timed']} steps with `python -m models.train --device cpu "
            f"--measure-cpu {cpu['steps_timed']}`: the default run takes about **{total:.0f} minutes** "
            "on 2 CPU cores (an estimate from that measured rate; the committed weights were trained "
            "on the GPU named above with the same command and seeds).",
        ]
    if evaluation:
        e = evaluation
        lines += [
            "",
            "## Sample quality (exact checker)",
            "",
            f"{e['mdlm_low_confidence_1_per_step']['samples']} seeded samples each of prompt "
            f'"{e["prompt"]}" + {e["gen_length"]} generated tokens at temperature {e["temperature"]} '
            "(`python bench/evaluate_embedded.py`):",
            "",
            f"- diffusion model, `low_confidence`, one token per step: {_rate(e['mdlm_low_confidence_1_per_step'])}. "
            f"Violations: {e['mdlm_low_confidence_1_per_step']['violations_by_kind'] or 'none'}. Target >= 90%.",
            f"- AR model, ancestral sampling: {_rate(e['ar_ancestral'])}. "
            f"Violations: {e['ar_ancestral']['violations_by_kind'] or 'none'}. Target >= 95%.",
        ]
        notes = e.get("notes")
        if notes:
            lines += ["", notes]
    path = directory / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n")
    return path
