"""Quality against cost on the embedded model: the frontier sweep.

    python bench/sweep.py --part frontier --seeds 300 --workers 2   # runs (resumable)
    python bench/sweep.py --part auc --seeds 300 --workers 2        # violation-score runs
    python bench/sweep_report.py                                    # figure, tables, AUC

Generation length 64, one block, at temperature 1 (prompt "once upon a time"; the seed varies
the samples) and at temperature 0 (greedy: the seed picks the prompt, the first 20 words of
story `seed` of the training grammar, so the 300 runs of a cell are 300 different prompts). Cells
(`--part frontier`): low_confidence at 1, 2, 4, 8, 16 tokens per step; Fast-dLLM's threshold at
tau 0.9 / 0.7 / 0.5; the gated strategies (lookahead, lookahead_exact, energy_gate,
pairwise_gate, K = 8) at a few settings; low_confidence with Uni-E (k = 4, candidates from the
strategy's rule) at 1, 2, 4, 8 tokens per step, with the AR energy (k = 4) at 2 and 4, and with
Uni-E on candidates drawn from the marginals (EDLM's proposal) at 1 and 4, energies in the
default window. No violation pass runs in these cells, so their cost is the decode's own.

`--part auc`: low_confidence, margin and entropy at 2, 4, 8, 16 tokens per step, T = 1, with the
violation pass on (and its cross-step variant over the last `--recent` steps), for the ROC AUC of
the violation score per level.

Per run: the checker's verdict (fully valid, and grammatical sentences / sentences), the AR
model's NLL of the generation, cost three ways (sequential model calls, sequence forwards, and
the decode's wall-clock, each per generated token; the violation pass is counted apart), and
for the AUC cells every co-committed token's scores and whether the checker names it. Raw runs
go to bench/results/<part>_raw/ (one JSON line per run, not committed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
PROMPT = "once upon a time"
PROMPT_WORDS = 20  # greedy runs: this many words of story `seed` of the grammar (999 distinct in 1000)
GEN = 64
TEMPERATURES = (0.0, 1.0)
UNI = (("uni", 1.0),)
AR = (("ar", 1.0),)


def _cell(group: str, strategy: str, setting: object, energy: str = "none", **config) -> dict:
    return {"group": group, "strategy": strategy, "setting": setting, "energy": energy, "config": config}


def frontier_cells() -> list[dict]:
    """Every configuration of the frontier, for one temperature (labels + DecodeConfig kwargs)."""
    cells = [_cell("plain", "low_confidence", tps, steps=GEN // tps) for tps in (1, 2, 4, 8, 16)]
    cells += [_cell("plain", "threshold", tau, steps=GEN, threshold=tau) for tau in (0.9, 0.7, 0.5)]
    cells += [_cell("gated", "lookahead", g, steps=GEN, lookahead_k=8, gate_gamma=g) for g in (0.5, 1.0, 2.0)]
    cells += [_cell("gated", "lookahead_exact", 8, steps=GEN, lookahead_k=8)]
    cells += [_cell("gated", "energy_gate", b, steps=GEN, lookahead_k=8, energy_bound=b) for b in (1.0, 3.0)]
    cells += [_cell("gated", "pairwise_gate", t, steps=GEN, lookahead_k=8, gate_tau=t) for t in (1.0, 3.0)]
    energy = dict(energy_candidates=4)
    cells += [_cell("energy", "low_confidence", tps, "uni", steps=GEN // tps, **energy) for tps in (1, 2, 4, 8)]
    cells += [_cell("energy", "low_confidence", tps, "ar", steps=GEN // tps, **energy) for tps in (2, 4)]
    cells += [
        _cell("energy", "low_confidence", tps, "uni-marginals", steps=GEN // tps, energy_marginal_candidates=True,
              **energy)
        for tps in (1, 4)
    ]  # fmt: skip
    return cells


def auc_cells() -> list[dict]:
    return [
        _cell("auc", strategy, tps, steps=GEN // tps)
        for strategy in ("low_confidence", "margin", "entropy")
        for tps in (2, 4, 8, 16)
    ]


ENERGIES = {"none": (), "uni": UNI, "ar": AR, "uni-marginals": UNI}


def grid(part: str) -> list[dict]:
    """Every (cell, temperature) of a part."""
    if part == "auc":
        return [{**c, "temperature": 1.0} for c in auc_cells()]
    return [{**c, "temperature": t} for t in TEMPERATURES for c in frontier_cells()]


def cell_key(cell: dict) -> str:
    return f"T{cell['temperature']:g}-{cell['strategy']}-{cell['setting']}-{cell['energy']}"


def prompt_for(temperature: float, seed: int) -> str:
    """The prompt of a run: the fixed one when sampling; story `seed`'s opening when greedy."""
    if temperature > 0:
        return PROMPT
    from models.corpus import generate_story

    return " ".join(generate_story(random.Random(100_000 + seed))[:PROMPT_WORDS])


def run_cell(args: tuple[dict, list[int], int]) -> list[dict]:
    """Decode one configuration for the given seeds (in a worker process, one thread)."""
    import torch

    torch.set_num_threads(1)
    from explorer.adapters.embedded import load_embedded
    from explorer.adapters.loading import load_ar_scorer
    from explorer.decoding.config import DecodeConfig

    cell, seeds, recent = args
    denoiser = load_embedded()
    scorer = load_ar_scorer("embedded", len(denoiser.tokenizer))
    violations = cell["group"] == "auc"
    extra = {"violation_recent_steps": recent} if violations and recent else {}
    out = []
    for seed in seeds:
        prompt = denoiser.encode(prompt_for(cell["temperature"], seed))
        config = DecodeConfig(
            gen_length=GEN,
            strategy=cell["strategy"],
            temperature=cell["temperature"],
            seed=seed,
            energies=ENERGIES[cell["energy"]],
            violations=violations,
            **cell["config"],
            **extra,
        )
        out.append(decode_one(denoiser, scorer, prompt, config, cell, seed))
    return out


def decode_one(denoiser, scorer, prompt: list[int], config, cell: dict, seed: int) -> dict:
    """One decode and what the report needs of it."""
    import torch

    from explorer.decoding.engine import iter_steps
    from models.checker import check

    P = len(prompt)
    generated = [denoiser.mask_id] * GEN
    cost = {"calls": 0, "sequences": 0, "seconds": 0.0, "measure_sequences": 0}
    tokens, n_steps = [], 0  # tokens: (n_in_step, score, cross, confidence, entropy, position, step)
    for r in iter_steps(denoiser, prompt, config, scorer):
        n_steps += 1
        for pos, tok in zip(r.committed.tolist(), r.tokens.tolist()):
            generated[pos] = tok
        for pos in r.remasked.tolist():
            generated[pos] = denoiser.mask_id
        c = r.extras.cost
        cost["calls"] += c.calls
        cost["sequences"] += c.sequences
        cost["seconds"] += r.seconds - c.measure_seconds
        cost["measure_sequences"] += c.measure_sequences
        v = r.extras.violations
        if v is not None:
            prob = dict(zip(r.committed.tolist(), r.probs.tolist()))
            cross = getattr(v, "cross_scores", None)
            for i, (pos, score) in enumerate(zip(v.positions.tolist(), v.token_scores.tolist())):
                c_score = float(cross[i]) if cross is not None and len(cross) else None
                tokens.append((r.n_committed, score, c_score, prob[pos], float(r.entropy[pos]), pos, r.step))
    ids = torch.tensor([prompt + generated])
    nll = -float(scorer.log_probs(ids)[0, P:].mean())
    result = check(denoiser.decode(prompt + generated))
    named = sorted({p - P for v in result.violations for p in v.positions if p >= P})
    return {
        "key": cell_key(cell),
        "group": cell["group"],
        "strategy": cell["strategy"],
        "setting": cell["setting"],
        "energy": cell["energy"],
        "temperature": cell["temperature"],
        "seed": seed,
        "prompt": denoiser.decode(prompt),
        "valid": result.valid,
        "sentences": result.n_sentences,
        "valid_sentences": result.n_valid_sentences,
        "n_steps": n_steps,
        "kinds": [v.kind for v in result.violations],
        "named_by_kind": [[v.kind, [p - P for p in v.positions if p >= P]] for v in result.violations],
        "named": named,
        "ar_nll": nll,
        "cost": cost,
        "tokens": tokens,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("frontier", "auc"), default="frontier")
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=25, help="seeds per task")
    parser.add_argument("--recent", type=int, default=2, help="auc: the cross-step variant's last m steps")
    parser.add_argument("--only", default=None, help="comma-separated substrings of cell keys to run")
    args = parser.parse_args(argv)
    raw = RESULTS / f"{args.part}_raw"
    raw.mkdir(parents=True, exist_ok=True)
    tasks = []
    for cell in grid(args.part):
        key = cell_key(cell)
        if args.only and not any(part in key for part in args.only.split(",")):
            continue
        done = _done_seeds(raw / f"{key}.jsonl")
        todo = [s for s in range(args.seeds) if s not in done]
        tasks += [(cell, todo[i : i + args.chunk], args.recent) for i in range(0, len(todo), args.chunk)]
    # Seed-chunk-major order: every configuration gains seeds at the same pace, so a sweep
    # stopped early still covers the whole grid (the report gives each cell's seed count).
    tasks.sort(key=lambda task: task[1][0])
    print(f"{len(tasks)} tasks on {args.workers} worker processes", flush=True)
    began = time.perf_counter()
    with mp.get_context("fork").Pool(args.workers) as pool:
        for i, runs in enumerate(pool.imap_unordered(run_cell, tasks), 1):
            with open(raw / f"{runs[0]['key']}.jsonl", "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in runs)
            print(f"[{i}/{len(tasks)}] {runs[0]['key']} +{len(runs)} ({time.perf_counter() - began:.0f} s)", flush=True)


def _done_seeds(path: Path) -> set[int]:
    if not path.exists():
        return set()
    return {json.loads(line)["seed"] for line in path.read_text().splitlines() if line.strip()}


if __name__ == "__main__":
    main()
