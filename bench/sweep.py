"""Quality against parallelism on the embedded model: the sweep of issue 4.

    python bench/sweep.py --seeds 200 --workers 2          # runs (resumable), then the report
    python bench/sweep.py --report-only                      # the report from stored runs

Grid: generation length 64, prompt "once upon a time", temperature 1 (seeds differ), one block.
Strategies low_confidence / margin / entropy at 1, 2, 4, 8, 16 tokens per step (steps = 64 / tps);
the adaptive ones at five settings of their knob (threshold tau, eb gamma), placed on the x axis
at the tokens per step they actually reached. Energies: none, AR (k = 4), Uni-E (deterministic,
k = 4), both in the default window t in [0.4, 1]. Every run with no energy also measures the
dependency violations (for the ROC AUC); energy runs do not, so their cost is the decode's own.

Per run it records: checker validity, the AR model's NLL of the generation (nats/token), the
sequence forwards of every kind (step passes, energy chain copies, AR candidates, violation
pass), and for the AUC each co-committed token's violation score, confidence and entropy at
commit and whether the checker names its position. Raw runs go to bench/results/sweep_raw/
(one JSON line per run, not committed); `bench/sweep_report.py` turns them into the figure,
the table and the AUC.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RAW = ROOT / "bench" / "results" / "sweep_raw"
PROMPT = "once upon a time"
GEN = 64
TPS = (1, 2, 4, 8, 16)
FIXED = ("low_confidence", "margin", "entropy")
# Knob settings of the adaptive strategies, chosen (pilot runs) to span about 1..16 tokens/step.
ADAPTIVE = {"threshold": ("threshold", (0.9, 0.5, 0.3, 0.1, 0.04)), "eb": ("eb_gamma", (0.5, 2.0, 5.0, 12.0, 40.0))}
ENERGIES = {"none": (), "ar": (("ar", 1.0),), "uni": (("uni", 1.0),)}


def grid() -> list[dict]:
    """Every configuration of the sweep, as DecodeConfig keyword arguments plus labels."""
    cells = []
    for energy in ENERGIES:
        for strategy in FIXED:
            for tps in TPS:
                cells.append({"strategy": strategy, "setting": tps, "energy": energy, "config": {"steps": GEN // tps}})
        for strategy, (knob, values) in ADAPTIVE.items():
            for value in values:
                cells.append(
                    {"strategy": strategy, "setting": value, "energy": energy, "config": {"steps": GEN, knob: value}}
                )
    return cells


def cell_key(cell: dict) -> str:
    return f"{cell['strategy']}-{cell['setting']}-{cell['energy']}"


def run_cell(args: tuple[dict, list[int]]) -> list[dict]:
    """Decode one configuration for the given seeds (in a worker process)."""
    import torch

    torch.set_num_threads(1)
    from explorer.adapters.embedded import load_embedded
    from explorer.adapters.loading import load_ar_scorer
    from explorer.decoding.config import DecodeConfig
    from explorer.decoding.engine import iter_steps
    from models.checker import check

    cell, seeds = args
    denoiser = load_embedded()
    scorer = load_ar_scorer("embedded", len(denoiser.tokenizer))
    prompt = denoiser.encode(PROMPT)
    P = len(prompt)
    out = []
    for seed in seeds:
        config = DecodeConfig(
            gen_length=GEN,
            strategy=cell["strategy"],
            temperature=1.0,
            seed=seed,
            energies=ENERGIES[cell["energy"]],
            energy_candidates=4,
            violations=cell["energy"] == "none",
            **cell["config"],
        )
        generated = [denoiser.mask_id] * GEN
        passes = {"step": 0, "energy_denoiser": 0, "ar": 0, "violations": 0}
        tokens = []  # (n_in_step, score, confidence, entropy, position)
        n_steps = 0
        for r in iter_steps(denoiser, prompt, config, scorer):
            n_steps += 1
            for pos, tok in zip(r.committed.tolist(), r.tokens.tolist()):
                generated[pos] = tok
            energy = r.extras.energy_ran
            denoiser_rows, ar_rows = (energy.passes.denoiser, energy.passes.ar) if energy else (0, 0)
            violations = r.extras.violations
            n_viol = len(violations.positions) if violations else 0
            passes["energy_denoiser"] += denoiser_rows
            passes["ar"] += ar_rows
            passes["violations"] += n_viol
            passes["step"] += r.forward_passes - denoiser_rows - ar_rows - n_viol
            if violations:
                prob = dict(zip(r.committed.tolist(), r.probs.tolist()))
                for pos, score in zip(violations.positions.tolist(), violations.token_scores.tolist()):
                    tokens.append((r.n_committed, score, prob[pos], float(r.entropy[pos]), pos))
        ids = torch.tensor([prompt + generated])
        nll = -float(scorer.log_probs(ids)[0, P:].mean())
        result = check(denoiser.decode(prompt + generated))
        named = sorted({p - P for v in result.violations for p in v.positions if p >= P})
        out.append(
            {
                "key": cell_key(cell),
                "strategy": cell["strategy"],
                "setting": cell["setting"],
                "energy": cell["energy"],
                "seed": seed,
                "valid": result.valid,
                "n_steps": n_steps,
                "kinds": [v.kind for v in result.violations],
                "named": named,
                "ar_nll": nll,
                "passes": passes,
                "tokens": tokens,
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=25, help="seeds per task")
    parser.add_argument("--only", default=None, help="comma-separated energies to run (default: all)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    RAW.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        energies = args.only.split(",") if args.only else list(ENERGIES)
        tasks = []
        for cell in grid():
            if cell["energy"] not in energies:
                continue
            done = _done_seeds(cell_key(cell))
            todo = [s for s in range(args.seeds) if s not in done]
            tasks += [(cell, todo[i : i + args.chunk]) for i in range(0, len(todo), args.chunk)]
        # Seed-chunk-major order: every configuration gains seeds at the same pace, so a sweep
        # stopped early still covers the whole grid (the report gives each cell's seed count).
        tasks.sort(key=lambda task: task[1][0])
        print(f"{len(tasks)} tasks on {args.workers} worker processes", flush=True)
        began = time.perf_counter()
        with mp.get_context("fork").Pool(args.workers) as pool:
            for i, runs in enumerate(pool.imap_unordered(run_cell, tasks), 1):
                with open(RAW / f"{runs[0]['key']}.jsonl", "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in runs)
                print(
                    f"[{i}/{len(tasks)}] {runs[0]['key']} +{len(runs)} ({time.perf_counter() - began:.0f} s)",
                    flush=True,
                )
    from bench.sweep_report import report

    report(RAW, ROOT / "docs", ROOT / "docs")


def _done_seeds(key: str) -> set[int]:
    path = RAW / f"{key}.jsonl"
    if not path.exists():
        return set()
    return {json.loads(line)["seed"] for line in path.read_text().splitlines() if line.strip()}


if __name__ == "__main__":
    main()
