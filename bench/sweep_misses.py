"""What the violation score misses: checker violations by kind and by how they were committed.

    python bench/sweep_misses.py --seeds 100

Re-decodes seeds of the sweep's low_confidence cells (runs are deterministic per seed, so
these are the sweep's own runs) and, for every violation the checker names, asks: were the
positions it names committed in the same step (the only case a within-step pairwise score can
see), and did the named tokens get a violation score below -1 nat (flagged)?
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLAG = -1.0  # nats: a co-committed pair whose PMI is below this is "flagged"


def analyse(seeds: int, tps_values: tuple[int, ...]) -> dict:
    import torch

    from explorer.adapters.embedded import load_embedded
    from explorer.decoding.config import DecodeConfig
    from explorer.decoding.engine import iter_steps
    from models.checker import check

    torch.set_num_threads(1)
    denoiser = load_embedded()
    prompt = denoiser.encode("once upon a time")
    P = len(prompt)
    out = {}
    for tps in tps_values:
        stats: dict[str, dict] = defaultdict(
            lambda: {"n": 0, "multi_position": 0, "same_step": 0, "flagged": 0, "flagged_same_step": 0}
        )
        example = None
        for seed in range(seeds):
            config = DecodeConfig(gen_length=64, steps=64 // tps, temperature=1.0, seed=seed, violations=True)
            generated, step_of, score = [0] * 64, {}, {}
            for r in iter_steps(denoiser, prompt, config):
                for pos, tok in zip(r.committed.tolist(), r.tokens.tolist()):
                    generated[pos], step_of[pos] = tok, r.step
                v = r.extras.violations
                if v is not None:
                    score.update(zip(v.positions.tolist(), v.token_scores.tolist()))
            for violation in check(denoiser.decode(prompt + generated)).violations:
                positions = [p - P for p in violation.positions if p >= P]
                if not positions:
                    continue
                s = stats[violation.kind]
                same = len(positions) > 1 and len({step_of[p] for p in positions}) == 1
                flagged = min(score.get(p, 0.0) for p in positions) < FLAG
                s["n"] += 1
                s["multi_position"] += len(positions) > 1
                s["same_step"] += same
                s["flagged"] += flagged
                s["flagged_same_step"] += flagged and same
                if example is None and same and not flagged:
                    words = denoiser.decode(generated).split()
                    example = {
                        "seed": seed,
                        "kind": violation.kind,
                        "message": violation.message,
                        "scores": {words[p]: score.get(p) for p in positions},
                    }
        out[f"{tps} tokens/step"] = {"by_kind": dict(stats), "missed_example": example}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--tps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "sweep_misses.json")
    args = parser.parse_args(argv)
    result = analyse(args.seeds, tuple(args.tps))
    args.json.write_text(json.dumps(result, indent=1))
    for group, data in result.items():
        print(f"\n{group}: checker violations, how many were co-committed, how many flagged (score < {FLAG} nat)")
        print(
            f"{'kind':16s} {'n':>5s} {'2+ positions':>13s} {'same step':>10s} {'flagged':>8s} "
            f"{'flagged | same step':>20s}"
        )
        for kind, s in sorted(data["by_kind"].items(), key=lambda kv: -kv[1]["n"]):
            print(
                f"{kind:16s} {s['n']:5d} {s['multi_position']:13d} {s['same_step']:10d} {s['flagged']:8d} "
                f"{s['flagged_same_step']:13d} / {s['same_step']}"
            )
        print("a co-committed miss:", data["missed_example"])


if __name__ == "__main__":
    main()
