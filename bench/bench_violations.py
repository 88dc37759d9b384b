"""Cost of the dependency-violation pass and of the energies, as multiples of a plain step.

    python bench/bench_violations.py [--repeats 20] [--model embedded|big] [--device cpu|cuda]
                                     [--threads N] [--ns 2 4 8 16] [--lengths 64 256] [--json PATH]

Every number is measured on a random masked state: a prompt of 4 random tokens, the
generated part masked except for 10% random tokens (--revealed). A step commits the n most
confident masked positions (as `low_confidence` would), with the argmax tokens.

Violations (DESIGN 3.3), for each n and sequence length L (prompt + generation):
(a) plain step:  ModelPass.logits on the (1, L) state: one denoiser forward, the baseline.
(b) batch:       ModelPass.logits on the (n, L) batch of revealed states: the plain forward
                 of the same n sequences the violation pass runs.
(c) violations:  explorer.violations.measure(...) for that step: builds the n states, runs the
                 batched pass (ModelPass.log_probs), computes D / S / A / flips on the host.
Reported: (c)/(b) (target <= 1.10: the stage adds nothing beyond the batch) and (c)/(a), the
cost of the stage as a multiple of a plain step.

Energies (DESIGN 3.2), k candidates (--k, 4), for the same n and L: the energy stage of one
step exactly as the engine runs it (explorer.engine._energy_stage: draw the k candidates, build
`Candidates`, energies.choose), with the AR energy (("ar", 1)) and with the deterministic Uni-E
(("uni", 1), one order: k * (n - 1) chain sequences), each as a multiple of (a). Also the AR
scorer's batched pass of the k candidates against k single passes.

Variants of one cell run interleaved (a, b, c, a, b, c, ...) after --warmup untimed rounds;
medians of --repeats are reported. With --device cuda the device is synchronised around every
timed call. `--model big` is a random-weight transformer of the same code (d_model 512, 8
layers, 8 heads, vocabulary 119, context 320) as denoiser and, causal, as AR scorer.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import argparse
import json
import os
import platform
import shlex
import statistics
import time
from functools import partial

import numpy as np

TARGET_RATIO = 1.10
PROMPT_LENGTH = 4
BIG = {"vocab_size": 119, "context_length": 320, "n_layer": 8, "n_head": 8, "d_model": 512}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        choices=("embedded", "big"),
        default="embedded",
        help="embedded: the shipped MDLM and AR model; big: random weights, d512 x 8 layers",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per cell (default 10; median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds per cell first (default 3)")
    parser.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8, 16], help="tokens committed per step")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256], help="prompt + generation lengths")
    parser.add_argument("--k", type=int, default=4, help="energy candidates (default 4)")
    parser.add_argument("--revealed", type=float, default=0.1, help="fraction of the generated part not masked")
    parser.add_argument("--no-energies", dest="energies", action="store_false", help="only the violation stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if min(args.ns) < 2:
        parser.error("--ns: a violation pass needs n >= 2")
    if min(args.lengths) <= PROMPT_LENGTH + max(args.ns):
        parser.error(f"--lengths: each must exceed the prompt ({PROMPT_LENGTH}) plus the largest n")
    return args


class Timer:
    """perf_counter timings, the device synchronised before and after each call on a GPU."""

    def __init__(self, device) -> None:
        import torch

        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def __call__(self, fn) -> float:
        self.sync()
        began = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - began


def interleaved(timer: Timer, variants: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Run the variants round-robin: `warmup` untimed rounds, then `repeats` timed ones (ms)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(1000 * timer(fn))
    return times


def map_list(fn, items: list) -> list:
    return [fn(item) for item in items]


def paired(num: list[float], den: list[float]) -> float:
    """The median over rounds of num/den within a round: robust to load that drifts between rounds."""
    return statistics.median(x / y for x, y in zip(num, den))


def load_models(args, device):
    """(denoiser, AR scorer, description) for --model."""
    import torch

    from explorer.adapters.ar_scorers import EmbeddedARScorer
    from explorer.adapters.embedded import EmbeddedDenoiser, load_embedded
    from explorer.adapters.loading import load_ar_scorer
    from models import EMBEDDED_DIR
    from models.tokenizer import WordTokenizer
    from models.transformer import Transformer, TransformerConfig

    if args.model == "embedded":
        denoiser = load_embedded(device=str(device))
        ar = load_ar_scorer("embedded", len(denoiser.tokenizer))
        ar.model.to(device)  # the registry's "auto" device may differ from --device
        ar.device = device
    else:
        torch.manual_seed(args.seed)
        tokenizer = WordTokenizer.load(EMBEDDED_DIR / "vocab.json")
        config = TransformerConfig(**BIG)
        denoiser = EmbeddedDenoiser(Transformer(config).to(device).eval(), tokenizer, "big-random")
        ar = EmbeddedARScorer(
            Transformer(TransformerConfig(**{**BIG, "causal": True})).to(device).eval(), "big-random-ar"
        )
    cfg = denoiser.model.config
    desc = {
        "name": args.model,
        "denoiser_parameters": denoiser.model.num_parameters(),
        "ar_parameters": ar.model.num_parameters(),
        "d_model": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.context_length,
    }
    return denoiser, ar, desc


class StepFixture:
    """A random masked state of length L and the step that commits its n most confident masks."""

    def __init__(self, denoiser, model_pass, length: int, revealed: float, rng: np.random.Generator) -> None:
        import torch

        with torch.inference_mode():
            self._build(denoiser, model_pass, length, revealed, rng)

    def _build(self, denoiser, model_pass, length: int, revealed: float, rng: np.random.Generator) -> None:
        import torch

        from explorer.decoding.sampling import step_metrics
        from explorer.decoding.state import DecodeState

        V, mask_id, G = denoiser.model.config.vocab_size, denoiser.mask_id, length - PROMPT_LENGTH
        vocab = np.array([t for t in range(V) if t != mask_id])
        self.state = DecodeState(rng.choice(vocab, PROMPT_LENGTH).tolist(), G, mask_id, denoiser.device)
        shown = rng.choice(G, round(revealed * G), replace=False)
        self.state.generated[torch.as_tensor(shown, device=denoiser.device)] = torch.as_tensor(
            rng.choice(vocab, len(shown)), device=denoiser.device
        )
        self.masked = self.state.masked()
        self.state.masked_host = self.masked.cpu().numpy()  # the host mirror, as the engine keeps it
        logits = model_pass.logits(self.state.x)[0]  # (G, V)
        self.logits = logits
        self.metrics = step_metrics(logits, 0.0, None)  # greedy: proposal = argmax
        self.block = self.state.enter_block(0, 0, G)  # one block over the generation, as the sweep decodes
        # As the engine's host copy: committed tokens and their probabilities on the host.
        self.tokens_of = self.metrics.proposal.cpu().numpy()
        self.confidence = self.metrics.proposal_prob.float().cpu().numpy()
        self.masked_host = self.masked.cpu().numpy()

    def committed(self, n: int) -> np.ndarray:
        """(n,) ascending: the n most confident masked positions (a low_confidence step of n)."""
        conf = np.where(self.masked_host, self.confidence, -np.inf)
        return np.sort(np.argsort(-conf, kind="stable")[:n])


def bench_violations(args, denoiser, model_pass, timer, rng) -> list[dict]:
    import torch

    from explorer.decoding.violations import measure, reveal_each

    rows = []
    for length in args.lengths:
        fx = StepFixture(denoiser, model_pass, length, args.revealed, rng)
        x, P = fx.state.x, fx.state.prompt_length
        for n in args.ns:
            committed = fx.committed(n)
            pos_t = torch.as_tensor(committed, device=x.device)
            batch = reveal_each(x, P, pos_t, torch.as_tensor(fx.tokens_of[committed], device=x.device))  # (n, L)
            cap = max(args.ns)  # never caps: the stage runs all n
            result = {}

            def run_c(x=x, P=P, committed=committed, fx=fx, cap=cap, result=result):
                result["v"] = measure(
                    model_pass.log_probs, x, P, committed, fx.tokens_of, fx.metrics.log_p, fx.confidence, cap
                )

            times = interleaved(
                timer,
                {"a": partial(model_pass.logits, x), "b": partial(model_pass.logits, batch), "c": run_c},
                args.repeats,
                args.warmup,
            )
            assert result["v"].S.shape == (n, n)
            med = {name: statistics.median(ts) for name, ts in times.items()}
            rows.append(
                {
                    "length": length,
                    "n": n,
                    "a_ms": med["a"],
                    "b_ms": med["b"],
                    "c_ms": med["c"],
                    "c_over_b": med["c"] / med["b"],
                    "c_over_b_paired": paired(times["c"], times["b"]),
                    "c_over_a": med["c"] / med["a"],
                    "b_over_a": med["b"] / med["a"],
                    "runs_ms": times,
                }
            )
    return rows


def bench_energies(args, denoiser, ar, model_pass, timer, rng) -> tuple[list[dict], list[dict]]:
    import torch

    from explorer.decoding.config import DecodeConfig
    from explorer.decoding.engine import DecodeRun, StepChoice, _energy_stage
    from explorer.decoding.strategies import STRATEGIES

    stage_rows, ar_rows = [], []
    for length in args.lengths:
        fx = StepFixture(denoiser, model_pass, length, args.revealed, rng)
        x, G = fx.state.x, length - PROMPT_LENGTH
        device = x.device
        configs = {
            name: DecodeConfig(
                gen_length=G,
                steps=G,
                temperature=0.0,
                energies=((name, 1.0),),
                energy_candidates=args.k,
                energy_orders=1,
            )
            for name in ("ar", "uni")
        }
        for n in args.ns:
            commit = torch.zeros(G, dtype=torch.bool, device=device)
            commit[torch.as_tensor(fx.committed(n), device=device)] = True
            records: dict = {}

            def stage(name, fx=fx, commit=commit, records=records, device=device, configs=configs):
                def run():
                    # Fresh generators per call, as a run's would be: the same draws every time.
                    decode_run = DecodeRun(
                        configs[name],
                        STRATEGIES["low_confidence"],
                        model_pass,
                        torch.Generator(device=device).manual_seed(args.seed),
                        torch.Generator().manual_seed(args.seed),
                        ar,
                    )
                    choice = _energy_stage(
                        decode_run, fx.state, fx.block, fx.metrics, fx.logits, StepChoice(commit, fx.metrics.proposal)
                    )
                    records[name] = choice.energy

                return run

            times = interleaved(
                timer,
                {"a": partial(model_pass.logits, x), "ar": stage("ar"), "uni": stage("uni")},
                args.repeats,
                args.warmup,
            )
            med = {name: statistics.median(ts) for name, ts in times.items()}
            stage_rows.append(
                {
                    "length": length,
                    "n": n,
                    "k": args.k,
                    "a_ms": med["a"],
                    "ar_ms": med["ar"],
                    "ar_over_a": med["ar"] / med["a"],
                    "ar_sequences": records["ar"].passes.ar,
                    "uni_ms": med["uni"],
                    "uni_over_a": med["uni"] / med["a"],
                    "uni_sequences": records["uni"].passes.denoiser,
                    "runs_ms": times,
                }
            )
        # The AR scorer: the k candidates in one batch vs one at a time.
        ids = torch.as_tensor(rng.integers(0, ar.vocab_size, (args.k, length)), device=device)
        singles = [ids[i : i + 1] for i in range(args.k)]
        times = interleaved(
            timer,
            {
                "a": partial(model_pass.logits, x),
                "batched": partial(ar.log_probs, ids),
                "singles": partial(map_list, ar.log_probs, singles),
            },
            args.repeats,
            args.warmup,
        )
        med = {name: statistics.median(ts) for name, ts in times.items()}
        ar_rows.append(
            {
                "length": length,
                "k": args.k,
                "a_ms": med["a"],
                "batched_ms": med["batched"],
                "singles_ms": med["singles"],
                "batched_over_singles": med["batched"] / med["singles"],
                "batched_over_a": med["batched"] / med["a"],
                "runs_ms": times,
            }
        )
    return stage_rows, ar_rows


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what platform says)."""
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or ""


def machine_info(args, device) -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/bench_violations.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    began = time.perf_counter()

    from explorer.decoding.model_pass import ModelPass

    denoiser, ar, model_desc = load_models(args, device)
    model_pass = ModelPass(denoiser, PROMPT_LENGTH, 0.0)
    timer = Timer(device)
    rng = np.random.default_rng(args.seed)
    with torch.inference_mode():
        violations = bench_violations(args, denoiser, model_pass, timer, rng)
        stages, ar_passes = bench_energies(args, denoiser, ar, model_pass, timer, rng) if args.energies else ([], [])
    load_after = os.getloadavg()
    machine = machine_info(args, device)

    print(f"command: {command}")
    print(
        f"machine: {machine['cpus']} CPUs ({machine['cpus_usable']} usable, {machine['cpu_model']}), "
        f"torch {machine['torch']} with {machine['torch_threads']} threads, device {machine['device']}"
        f"{'' if machine['gpu'] is None else ' (' + machine['gpu'] + ')'}"
    )
    print(
        f"load average before {' '.join(f'{v:.2f}' for v in load_before)}, "
        f"after {' '.join(f'{v:.2f}' for v in load_after)}"
    )
    if device.type == "cpu" and load_after[0] > (os.cpu_count() or 1) - machine["torch_threads"] + 0.5:
        print(
            "warning: other processes kept the CPUs busy during the run: timings are noisy, ratios "
            "within a cell (interleaved) are more reliable than absolute ms"
        )
    print(
        f"model: {model_desc['name']} (denoiser {model_desc['denoiser_parameters']:,} parameters, "
        f"d_model {model_desc['d_model']}, {model_desc['n_layer']} layers, vocabulary {model_desc['vocab_size']}), "
        f"prompt {PROMPT_LENGTH} tokens, {100 * args.revealed:.0f}% of the generation revealed, "
        f"median of {args.repeats} after {args.warmup} warm-up rounds"
    )
    print()
    print(
        "violation stage: (a) plain step = ModelPass.logits (1, L); (b) ModelPass.logits (n, L); (c) violations.measure"
    )
    print("ratios are of the medians; 'paired' is the median of (c)/(b) within each round")
    print(
        f"{'L':>4} {'n':>3} {'(a) ms':>9} {'(b) ms':>9} {'(c) ms':>9} {'(c)/(b)':>8} {'paired':>7} "
        f"{'(c)/(a)':>8} {'(b)/(a)':>8}"
    )
    for r in violations:
        miss = "" if r["c_over_b"] <= TARGET_RATIO else "  > target"
        print(
            f"{r['length']:4d} {r['n']:3d} {r['a_ms']:9.2f} {r['b_ms']:9.2f} {r['c_ms']:9.2f} "
            f"{r['c_over_b']:7.2f}x {r['c_over_b_paired']:6.2f}x {r['c_over_a']:7.2f}x {r['b_over_a']:7.2f}x{miss}"
        )
    worst = max(violations, key=lambda r: r["c_over_b"])
    print(
        f"worst (c)/(b) = {worst['c_over_b']:.2f}x at L={worst['length']}, n={worst['n']} "
        f"(target <= {TARGET_RATIO:.2f}x){'' if worst['c_over_b'] <= TARGET_RATIO else '  MISSED'}"
    )
    if args.energies:
        print()
        print(
            f"energy stage (engine._energy_stage: draw k={args.k}, Candidates, energies.choose), "
            f"as a multiple of (a); seqs = extra sequences run"
        )
        print(
            f"{'L':>4} {'n':>3} {'(a) ms':>9} {'AR ms':>9} {'AR/(a)':>8} {'seqs':>5} "
            f"{'Uni-E ms':>9} {'Uni-E/(a)':>9} {'seqs':>5}"
        )
        for r in stages:
            print(
                f"{r['length']:4d} {r['n']:3d} {r['a_ms']:9.2f} {r['ar_ms']:9.2f} {r['ar_over_a']:7.2f}x "
                f"{r['ar_sequences']:5d} {r['uni_ms']:9.2f} {r['uni_over_a']:8.2f}x {r['uni_sequences']:5d}"
            )
        print()
        print(f"AR scorer pass: the k={args.k} candidates batched (k, L) vs k single (1, L) passes")
        print(
            f"{'L':>4} {'(a) ms':>9} {'batched ms':>11} {'k singles ms':>13} {'batched/singles':>16} "
            f"{'batched/(a)':>12}"
        )
        for r in ar_passes:
            print(
                f"{r['length']:4d} {r['a_ms']:9.2f} {r['batched_ms']:11.2f} {r['singles_ms']:13.2f} "
                f"{r['batched_over_singles']:15.2f}x {r['batched_over_a']:11.2f}x"
            )
    print(f"\ntotal {time.perf_counter() - began:.1f} s")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "command": command,
            "machine": machine,
            "model": model_desc,
            "settings": {
                "prompt_length": PROMPT_LENGTH,
                "revealed": args.revealed,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "k": args.k,
                "seed": args.seed,
            },
            "load_average": {"before": list(load_before), "after": list(load_after)},
            "target_c_over_b": TARGET_RATIO,
            "violations": violations,
            "energy_stage": stages,
            "ar_pass": ar_passes,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
