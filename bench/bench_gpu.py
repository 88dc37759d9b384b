"""GPU overhead: explorer's engine and its extra passes on an LLaDA-8B-shaped model, each as a
ratio against a baseline measured in the same run.

    python bench/bench_gpu.py [--repeats 3] [--steps 256] [--no-compile] [--json PATH]
    python bench/bench_gpu.py --tiny --device cpu --compile --compile-backend eager   # smoke test, any machine
    bash bench/gpu_check.sh                                   # the prepared device check (docs/benchmarks.md)

The model is a transformers `LlamaForCausalLM` with random weights, in bf16, shaped like
LLaDA-8B (hidden 4096, 32 layers, 32 heads, MLP 12288, vocabulary 126464, mask id 126336),
with bidirectional attention (`config.is_causal = False`) as in a masked diffusion LM. A
prompt of 64 random tokens plus 256 generated positions makes the sequence 320 long. No
weights are downloaded.

Every ratio printed (and written with --json) names its numerator and its denominator; both
are timed in this run, interleaved, after a warm-up, and the medians are divided. Sections
(--sections, all by default, in this order):

engine      (a) bare:          forward on the full sequence, softmax of the generated part,
                               commit the most confident masked position(s); plain torch,
                               nothing recorded, no host synchronisation until the end.
            (b) engine+store:  explorer's run_decode with a StoreWriter into a fresh SQLite file
                               (every per-position metric, one host transfer per step, batched
                               step writes and commit events).
            (b') engine:       run_decode with no callbacks (metrics and StepRecords, no store).
            ratio (b) / (a), ms per step, target <= 1.10.
violations  the dependency-violation pass over the n most confident tokens of a step
            (explorer.decoding.violations.measure through ModelPass.log_probs: the batch, the
            pass, D / S / A / flips on the host) against ONE batched forward of the same n copies
            called directly on the model (`model(input_ids=(n, L))`), n = 2, 4, 8, 16 (2, 4 with
            --tiny); target <= 1.10.
uni         Uni-E's chain at T = 0 (k = 4 candidates, the next-best assignments of the same n
            positions, one order: k (n - 1) chain sequences; energies.Candidates + energies.choose)
            against one batched forward of k (n - 1) copies called directly on the model;
            n = 2, 4, 8 (2, 3 with --tiny); target <= 1.10.
lookahead   the gated strategy `lookahead` (K = 8, prefix probe, the probe's row reused as the
            next step's logits) through run_decode with the store, each decode cancelled after
            --lookahead-steps (16) steps: ms per step (a decode's time / its steps; the first step
            also runs its own forward) against one batched forward of K copies (its probe) called
            directly on the model; target about 1.10 (a gated step costs about one batched call).
compiled    torch.compile of the forward computing logits only for the generated positions
            (`logits_to_keep`), CUDA by default:
            (c0) the compiled forward alone, against the compute limit: its matrix-multiply FLOPs
                 at --peak-tflops (790 by default: the bf16 dense matmul rate measured on the H200
                 lent to this project, 788 TFLOP/s for 8192^3; the H200's datasheet dense bf16 peak is 989);
            (c)  the bare loop of (a) on the compiled forward;
            (d)  run_decode + store on the compiled forward ((c) and (d) read it through the same
                 zero-pad of the prompt's rows, outside the graph: the engine slices (B, L, V));
            ratio (d) / (c) (target <= 1.10: the engine's own overhead against the compiled loop)
            and (d) / (c0) (everything a step costs on top of the compiled forward; no target).

On CUDA, torch.cuda.max_memory_allocated is recorded per section and overall, with the GPU's name
(torch.cuda.get_device_name). Without a CUDA device the script prints 'skipped: no CUDA device'
and exits 0, unless `--device cpu`. With --json the results file is rewritten after every
section, so a run stopped by a timeout keeps what it measured. The exit status is 1 when a
section failed (its error is in the output and the JSON), else 0.
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
import tempfile
import time
import traceback

TARGET_RATIO = 1.10  # engine+store / bare loop, eager and compiled
TARGET_BATCH = 1.10  # the violation pass, Uni-E's chain, a lookahead step: vs one batched forward
PEAK_SOURCE = (
    "bf16 dense matmul rate measured on the H200 lent to this project (788 TFLOP/s for an 8192^3 product); "
    "the H200 / H100 SXM datasheet dense bf16 peak is 989 TFLOP/s"
)
SECTIONS = ("engine", "violations", "uni", "lookahead", "compiled")
LLADA_MASK_ID = 126336
LLADA_8B = {
    "layers": 32,
    "hidden": 4096,
    "heads": 32,
    "kv_heads": 32,
    "intermediate": 12288,
    "vocab": 126464,
    "prompt_length": 64,
    "gen_length": 256,
    "steps": 256,
}
TINY = {
    "layers": 2,
    "hidden": 64,
    "heads": 4,
    "kv_heads": 4,
    "intermediate": 128,
    "vocab": 512,
    "prompt_length": 16,
    "gen_length": 32,
    "steps": 32,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model (2 layers, hidden 64): a smoke test")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32"),
        default=None,
        help="weights and activations (default bf16; fp32 with --tiny on the CPU)",
    )
    for name in (
        "layers",
        "hidden",
        "heads",
        "kv_heads",
        "intermediate",
        "vocab",
        "prompt_length",
        "gen_length",
        "steps",
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None,
            help=f"default {LLADA_8B[name]} ({TINY[name]} with --tiny)",
        )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, run in this order: {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed decodes of each engine variant (default 3; 1 with --tiny)"
    )
    parser.add_argument(
        "--micro-repeats",
        type=int,
        default=None,
        help="timed rounds of the violation / Uni-E / lookahead cells (default 5; 1 with --tiny)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before each cell (default 1)")
    parser.add_argument(
        "--violation-ns", type=int, nargs="+", default=None, help="tokens of the violation pass (default 2 4 8 16)"
    )
    parser.add_argument(
        "--uni-ns", type=int, nargs="+", default=None, help="committed tokens of the Uni-E step (default 2 4 8)"
    )
    parser.add_argument("--uni-k", type=int, default=4, help="Uni-E candidates k (default 4)")
    parser.add_argument("--lookahead-k", type=int, default=8, help="lookahead's proposal size K (default 8)")
    parser.add_argument(
        "--lookahead-steps",
        type=int,
        default=16,
        help="steps of each timed lookahead decode, which is then cancelled (default 16; 0: the whole decode)",
    )
    parser.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="run the compiled section (default: on with CUDA)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (inductor backend only)")
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (eager: dynamo only, for the smoke test)"
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=790.0,
        help="the device's bf16 matmul rate for the compute limit of the compiled forward (default 790)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here (after every section)")
    args = parser.parse_args(argv)
    preset = TINY if args.tiny else LLADA_8B
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 3
    if args.micro_repeats is None:
        args.micro_repeats = 1 if args.tiny else 5
    if args.violation_ns is None:
        args.violation_ns = [2, 4] if args.tiny else [2, 4, 8, 16]
    if args.uni_ns is None:
        args.uni_ns = [2, 3] if args.tiny else [2, 4, 8]
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    biggest = max(max(args.violation_ns), max(args.uni_ns), args.lookahead_k)
    if min(min(args.violation_ns), min(args.uni_ns)) < 2 or biggest > args.gen_length:
        parser.error(f"--violation-ns / --uni-ns / --lookahead-k: each in 2..{args.gen_length} (the generation)")
    if args.steps < 1 or args.gen_length % args.steps:
        parser.error(f"--steps {args.steps} must divide --gen-length {args.gen_length}")
    return args


class RandomLlamaDenoiser:
    """An explorer Denoiser over a random-weight Llama with bidirectional attention."""

    def __init__(self, model, mask_id: int, context_length: int) -> None:
        self.model = model.eval()
        self.name = f"random-llama-{model.config.num_hidden_layers}L-{model.config.hidden_size}"
        self.mask_id = mask_id
        self.context_length = context_length
        self.device = next(model.parameters()).device

    def logits(self, ids):
        return self.model(input_ids=ids, use_cache=False).logits  # (B, L, V)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError("random weights: the benchmark passes token ids")

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"t{int(i)}" for i in ids)

    def token_text(self, token_id: int) -> str:
        return f"t{int(token_id)}"


class CompiledDenoiser(RandomLlamaDenoiser):
    """The same model through a compiled forward that computes logits for the generated
    positions only; the prompt's rows are zero-padded back (one copy of (B, L, V), outside the
    compiled graph) because the engine reads (B, L, V) and slices the generated part."""

    def __init__(self, base: RandomLlamaDenoiser, compiled, prompt_length: int) -> None:
        super().__init__(base.model, base.mask_id, base.context_length)
        self.name = base.name + "-compiled"
        self.compiled, self.prompt_length = compiled, prompt_length

    def logits(self, ids):
        import torch.nn.functional as F

        return F.pad(self.compiled(ids), (0, 0, self.prompt_length, 0))


def build_model(args, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(4096, args.prompt_length + args.gen_length),
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        use_cache=False,
    )
    config.is_causal = False  # a masked diffusion LM attends both ways (transformers' bidirectional mask)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):  # built in place, in the target dtype: no fp32 copy of 8B weights
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    return model.eval()


def forward_flops(args) -> float:
    """Matrix-multiply FLOPs of one forward on prompt + generation, logits for the generated part only."""
    L, H, head_dim = args.prompt_length + args.gen_length, args.hidden, args.hidden // args.heads
    per_layer = H * H * 2 + 2 * H * args.kv_heads * head_dim + 3 * H * args.intermediate  # q, o, k, v, MLP
    return (
        2 * L * per_layer * args.layers
        + 4 * L * L * H * args.layers  # QK^T and AV
        + 2 * args.gen_length * H * args.vocab
    )  # the LM head on the generated positions


def ratio(
    numerator: str, num_ms: float, denominator: str, den_ms: float, target: float | None, paired: float | None = None
) -> dict:
    """A ratio as reported: its value and what it divides by, both in ms, and its target (None: none)."""
    out = {
        "value": num_ms / den_ms,
        "numerator": numerator,
        "numerator_ms": num_ms,
        "denominator": denominator,
        "denominator_ms": den_ms,
        "target": target,
    }
    if paired is not None:
        out["paired"] = paired  # the median over rounds of the within-round ratio
    return out


def ratio_line(label: str, r: dict, note: str = "") -> str:
    target = "no target" if r["target"] is None else f"target <= {r['target']:.2f}x"
    paired = f", paired {r['paired']:.2f}x" if "paired" in r else ""
    return (
        f"{label}: {r['value']:.2f}x = {r['numerator_ms']:.2f} ms [{r['numerator']}] / "
        f"{r['denominator_ms']:.2f} ms [{r['denominator']}] ({target}{paired}){note}"
    )


class Bench:
    """The model, the prompt and the timing helpers every section shares; the results as JSON."""

    def __init__(self, args, torch, transformers) -> None:
        self.args, self.torch = args, torch
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype_name = args.dtype or ("fp32" if args.tiny and not self.cuda else "bf16")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype_name]
        self.P, self.G, self.steps = args.prompt_length, args.gen_length, args.steps
        began = time.perf_counter()
        self.model = build_model(args, self.device, dtype)
        self.sync()
        self.built_s = time.perf_counter() - began
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.mask_id = LLADA_MASK_ID if LLADA_MASK_ID < args.vocab else args.vocab - 1
        self.denoiser = RandomLlamaDenoiser(self.model, self.mask_id, self.P + self.G)
        generator = torch.Generator().manual_seed(1)
        self.prompt_ids = torch.randint(0, self.mask_id, (self.P,), generator=generator).tolist()
        self.x0 = torch.full((1, self.P + self.G), self.mask_id, dtype=torch.long, device=self.device)
        self.x0[0, : self.P] = torch.tensor(self.prompt_ids, device=self.device)
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-gpu-")
        self.counter = iter(range(10**6))
        self.gpu = torch.cuda.get_device_name(self.device) if self.cuda else None
        self.results = {
            "command": "python bench/bench_gpu.py " + shlex.join(sys.argv[1:]),
            "device": str(self.device),
            "gpu": self.gpu,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "dtype": self.dtype_name,
            "tiny": args.tiny,
            "model": {
                "kind": "random-weight transformers Llama, bidirectional attention",
                "layers": args.layers,
                "hidden": args.hidden,
                "heads": args.heads,
                "kv_heads": args.kv_heads,
                "intermediate": args.intermediate,
                "vocab": args.vocab,
                "parameters": self.n_params,
                "built_s": self.built_s,
            },
            "sequence": {"prompt": self.P, "generation": self.G, "length": self.P + self.G, "steps": self.steps},
            "peak_tflops": args.peak_tflops,
            "peak_source": PEAK_SOURCE,
            "targets": {"engine": TARGET_RATIO, "batched": TARGET_BATCH},
            "memory": {
                "weights_bytes": sum(p.numel() * p.element_size() for p in self.model.parameters()),
                "max_allocated_bytes": self.max_memory(),
                "per_section_max_allocated_bytes": {},
            },
            "sections": {},
            "errors": {},
            "complete": False,
        }

    # ---- timing ------------------------------------------------------------------------------
    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def timed(self, fn) -> tuple[float, object]:
        """(seconds, result) of fn(), the device synchronised before and after."""
        self.sync()
        began = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - began, out

    def interleaved(self, variants: dict, repeats: int) -> dict[str, list[float]]:
        """Round-robin: --warmup untimed rounds, then `repeats` timed ones; ms per call."""
        with self.torch.no_grad():
            for _ in range(self.args.warmup):
                for fn in variants.values():
                    fn()
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(repeats):
                for name, fn in variants.items():
                    times[name].append(1000 * self.timed(fn)[0])
        return times

    def direct_forward(self, n: int):
        """One batched forward of n copies of the first step's state, called directly on the model."""
        batch = self.x0.expand(n, -1).contiguous()
        return lambda: self.model(input_ids=batch, use_cache=False).logits

    # ---- memory and results ------------------------------------------------------------------
    def max_memory(self) -> int | None:
        return int(self.torch.cuda.max_memory_allocated(self.device)) if self.cuda else None

    def reset_memory(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def record_memory(self, section: str) -> None:
        if not self.cuda:
            return
        memory = self.results["memory"]
        peak = self.max_memory()
        memory["per_section_max_allocated_bytes"][section] = peak
        memory["max_allocated_bytes"] = max(memory["max_allocated_bytes"] or 0, peak)

    def write(self) -> None:
        if self.args.json is None:
            return
        self.args.json.parent.mkdir(parents=True, exist_ok=True)
        partial = self.args.json.with_name(self.args.json.name + ".part")
        partial.write_text(json.dumps(self.results, indent=1, default=float) + "\n")
        partial.replace(self.args.json)

    # ---- decodes -----------------------------------------------------------------------------
    def bare_loop(self, denoiser):
        """Plain torch: forward, softmax of the generated part, commit the most confident masks."""
        torch, P, G, steps, mask_id = self.torch, self.P, self.G, self.steps, self.mask_id

        @torch.no_grad()
        def run():
            x = self.x0.clone()
            per_step = G // steps
            for _ in range(steps):
                logits = denoiser.logits(x)[0, P:]  # (G, V)
                logits[:, mask_id] = float("-inf")
                confidence, token = torch.softmax(logits.float(), dim=-1).max(dim=-1)
                masked = x[0, P:] == mask_id
                pick = confidence.masked_fill(~masked, float("-inf")).topk(per_step).indices
                x[0, P + pick] = token[pick]
            return x[0, P:].tolist()  # the one host synchronisation

        return run

    def engine_run(self, denoiser, config, with_store: bool, callbacks=()):
        """run_decode, with a StoreWriter into a fresh SQLite file (opening it is not timed)."""
        from explorer.decoding.engine import run_decode
        from explorer.store.database import StoreWriter, TrajectoryStore

        def run():
            extra, store = list(callbacks), None
            if with_store:
                store = TrajectoryStore(f"sqlite:///{Path(self.tmp.name) / f'run{next(self.counter)}.db'}")
                extra.append(StoreWriter(store, denoiser.token_text))
            seconds, result = self.timed(
                lambda: run_decode(denoiser, self.prompt_ids, config, extra, prompt_text="bench")
            )
            if store is not None:
                assert store.get_run(extra[-1].run_id)["n_steps"] == result.n_steps
                store.engine.dispose()
            return seconds, result

        return run

    def decode_config(self, **settings):
        from explorer.decoding.config import DecodeConfig

        config = DecodeConfig(gen_length=self.G, temperature=0.0, **settings)
        return config.validate(self.P + self.G, self.P)

    def compare_decodes(self, denoiser, repeats: int) -> tuple[dict, dict, bool]:
        """(a) bare, (b) engine+store, (b') engine alone on `denoiser`: seconds per run, interleaved."""
        config = self.decode_config(steps=self.steps, strategy="low_confidence")
        bare = self.bare_loop(denoiser)
        variants = {
            "a": lambda: self.timed(bare),
            "b": self.engine_run(denoiser, config, True),
            "b'": self.engine_run(denoiser, config, False),
        }
        outputs = {}
        with self.torch.no_grad():
            for name, fn in variants.items():  # warm-up (and the tokens)
                out = fn()[1]
                outputs[name] = out if name == "a" else out.token_ids
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(repeats):
                for name, fn in variants.items():  # a, b, b', a, b, b', ...
                    times[name].append(fn()[0])
        same = outputs["a"] == outputs["b"] == outputs["b'"]
        return times, {name: 1000 * statistics.median(ts) / self.steps for name, ts in times.items()}, same

    # ---- the step state of the micro-benchmarks ----------------------------------------------
    def first_step(self):
        """(ModelPass, step metrics, tokens, confidences) of the first step (every position masked)."""
        from explorer.decoding.model_pass import ModelPass
        from explorer.decoding.sampling import step_metrics

        model_pass = ModelPass(self.denoiser, self.P, 0.0)
        with self.torch.no_grad():
            metrics = step_metrics(model_pass.logits(self.x0)[0], 0.0, None)  # also tells ModelPass the vocabulary
        tokens_of = metrics.proposal.cpu().numpy()
        confidence = metrics.proposal_prob.float().cpu().numpy()
        return model_pass, metrics, tokens_of, confidence

    @staticmethod
    def most_confident(confidence, n: int):
        import numpy as np

        return np.sort(np.argsort(-confidence, kind="stable")[:n])  # every position is masked


# ---- sections ------------------------------------------------------------------------------
def section_engine(b: Bench) -> dict:
    times, ms, same = b.compare_decodes(b.denoiser, b.args.repeats)
    labels = {"a": "(a) bare loop", "b": "(b) engine + store", "b'": "(b') engine, no store"}
    print(f"{'variant':24} {'ms/step':>8} {'vs bare':>8}   all runs (s)")
    for name, label in labels.items():
        print(f"{label:24} {ms[name]:8.2f} {ms[name] / ms['a']:7.2f}x   {' '.join(f'{t:.3f}' for t in times[name])}")
    no_store = ms["b'"]
    print(
        f"engine metrics/records/transfer (b' - a): {no_store - ms['a']:+.2f} ms/step; "
        f"store (b - b'): {ms['b'] - no_store:+.2f} ms/step"
    )
    print(
        f"same tokens from a, b and b': {'yes' if same else 'no'} "
        f"(random weights give near-uniform distributions: a near-tie may break differently)"
    )
    r = ratio("(b) engine+store, ms/step", ms["b"], "(a) bare eager loop, ms/step", ms["a"], TARGET_RATIO)
    if b.args.tiny:
        verdict = "  (tiny model: the forward costs next to nothing, so this measures Python, not the target)"
    else:
        verdict = "" if r["value"] <= TARGET_RATIO else "  MISSED"
    print(f"ratio engine+store / bare = {r['value']:.2f}x (target <= {TARGET_RATIO:.2f}x){verdict}")
    print(ratio_line("  i.e.", r))
    return {
        "ms_per_step": ms,
        "runs_s": times,
        "same_tokens": same,
        "ratio": r,
        "ratio_no_store": ratio(
            "(b') engine, no store, ms/step", ms["b'"], "(a) bare eager loop, ms/step", ms["a"], None
        ),
    }


def section_violations(b: Bench) -> dict:
    from explorer.decoding.violations import measure

    model_pass, metrics, tokens_of, confidence = b.first_step()
    rows = []
    for n in b.args.violation_ns:
        committed = b.most_confident(confidence, n)
        out = {}

        def run_pass(committed=committed, out=out, n=n):
            out["v"] = measure(model_pass.log_probs, b.x0, b.P, committed, tokens_of, metrics.log_p, confidence, n)

        calls_before = model_pass.calls
        times = b.interleaved({"pass": run_pass, "batch": b.direct_forward(n)}, b.args.micro_repeats)
        calls = (model_pass.calls - calls_before) // (b.args.micro_repeats + b.args.warmup)
        assert out["v"].S.shape == (n, n)
        r = ratio(
            f"violation pass over {n} tokens (measure, {calls} model call(s))",
            statistics.median(times["pass"]),
            f"one batched forward of {n} copies, model(input_ids ({n}, {b.P + b.G}))",
            statistics.median(times["batch"]),
            TARGET_BATCH,
            statistics.median(x / y for x, y in zip(times["pass"], times["batch"])),
        )
        print(ratio_line(f"n = {n:3d}", r, flag(b, r)))
        rows.append({"n": n, "model_calls": calls, "ratio": r, "runs_ms": times})
    return {"rows": rows, "worst": max(row["ratio"]["value"] for row in rows)}


def section_uni(b: Bench) -> dict:
    from explorer.decoding.energies import Candidates, choose, next_best, random_orders

    model_pass, metrics, _, confidence = b.first_step()
    k, rows = b.args.uni_k, []
    masked = b.x0[0, b.P :] == b.mask_id  # (G,) every position
    for n in b.args.uni_ns:
        positions = b.torch.as_tensor(b.most_confident(confidence, n), device=b.device)
        assignments = next_best(metrics.log_p[positions], k)  # (k, n) row 0 = the argmax
        tokens = metrics.proposal.expand(assignments.shape[0], -1).clone()  # (k, G)
        tokens[:, positions] = assignments
        orders = random_orders(n, 1, None, b.device)  # (1, n) left to right
        out = {}

        def run_chain(positions=positions, tokens=tokens, orders=orders, out=out):
            candidates = Candidates(  # fresh: the chain is a cached property
                x=b.x0,
                prompt_length=b.P,
                masked=masked,
                positions=positions,
                tokens=tokens,
                log_q=metrics.log_p,
                log_p=metrics.log_p,
                log_probs=model_pass.log_probs,
                orders=orders,
            )
            out["record"] = choose(candidates, {"uni": 1.0}, 1.0, None, greedy=True)

        chain_rows = assignments.shape[0] * (n - 1)
        calls_before = model_pass.calls
        times = b.interleaved({"chain": run_chain, "batch": b.direct_forward(chain_rows)}, b.args.micro_repeats)
        calls = (model_pass.calls - calls_before) // (b.args.micro_repeats + b.args.warmup)
        assert out["record"].passes.denoiser == chain_rows
        r = ratio(
            f"Uni-E chain, k={assignments.shape[0]}, n={n}, 1 order: {chain_rows} sequences in {calls} call(s)",
            statistics.median(times["chain"]),
            f"one batched forward of {chain_rows} copies, model(input_ids ({chain_rows}, {b.P + b.G}))",
            statistics.median(times["batch"]),
            TARGET_BATCH,
            statistics.median(x / y for x, y in zip(times["chain"], times["batch"])),
        )
        print(ratio_line(f"n = {n:3d}", r, flag(b, r)))
        rows.append(
            {
                "n": n,
                "k": assignments.shape[0],
                "sequences": chain_rows,
                "model_calls": calls,
                "ratio": r,
                "runs_ms": times,
            }
        )
    return {"rows": rows, "worst": max(row["ratio"]["value"] for row in rows)}


def section_lookahead(b: Bench) -> dict:
    from explorer.decoding.callbacks import Callback

    K = b.args.lookahead_k

    class Steps(Callback):
        """Counts what each step did; cancels the decode after --lookahead-steps steps."""

        def __init__(self) -> None:
            self.steps = []

        def should_stop(self) -> bool:
            return 0 < b.args.lookahead_steps <= len(self.steps)

        def on_step(self, record) -> None:
            gate, cost = record.extras.gate, record.extras.cost
            self.steps.append(
                (
                    len(record.committed),
                    bool(gate is not None and gate.reused),
                    cost.calls if cost is not None else None,
                    cost.sequences if cost is not None else None,
                )
            )

    config = b.decode_config(steps=b.G, strategy="lookahead", lookahead_k=K)
    counted = Steps()
    decode = b.engine_run(b.denoiser, config, True, [counted])
    per_step: list[float] = []

    def run_decode_once():
        counted.steps.clear()
        seconds, result = decode()
        per_step.append(1000 * seconds / result.n_steps)

    times = b.interleaved(
        {"decode": run_decode_once, "probe": b.direct_forward(K), "single": b.direct_forward(1)},
        max(1, b.args.repeats),
    )
    timed_steps = per_step[b.args.warmup :]
    steps = counted.steps  # the last decode's
    n_steps = len(steps)
    r = ratio(
        f"lookahead (K={K}) step: a run_decode + store decode's time / its {n_steps} steps",
        statistics.median(timed_steps),
        f"one batched forward of {K} copies (its probe), model(input_ids ({K}, {b.P + b.G}))",
        statistics.median(times["probe"]),
        TARGET_BATCH,
    )
    tokens = sum(s[0] for s in steps)
    reused = sum(s[1] for s in steps)
    calls = [s[2] for s in steps if s[2] is not None]
    print(ratio_line("lookahead", r, flag(b, r)))
    print(
        f"  {tokens / n_steps:.2f} tokens per step; {reused} of {n_steps} steps took their logits from the last "
        f"probe; {statistics.mean(calls) if calls else float('nan'):.2f} model calls per step; "
        f"one forward of 1 copy: {statistics.median(times['single']):.2f} ms"
    )
    return {
        "k": K,
        "steps_per_decode": n_steps,
        "tokens_per_step": tokens / n_steps,
        "reused_steps": reused,
        "calls_per_step": statistics.mean(calls) if calls else None,
        "single_forward_ms": statistics.median(times["single"]),
        "ratio": r,
        "step_ms": timed_steps,
        "runs_ms": {"probe": times["probe"], "single": times["single"]},
    }


def section_compiled(b: Bench) -> dict:
    torch, args, G = b.torch, b.args, b.G

    def forward(ids):
        return b.model(input_ids=ids, use_cache=False, logits_to_keep=G).logits  # (B, G, V)

    options = {"mode": args.compile_mode} if args.compile_backend == "inductor" else {}
    compiled = torch.compile(forward, backend=args.compile_backend, dynamic=False, **options)
    with torch.no_grad():
        compile_s, _ = b.timed(lambda: [compiled(b.x0) for _ in range(3)])  # compile, then settle
        calls = max(b.steps, 32)
        seconds, _ = b.timed(lambda: [compiled(b.x0) for _ in range(calls)])
    forward_ms = 1000 * seconds / calls
    flops = forward_flops(args)
    limit_ms = 1000 * flops / (args.peak_tflops * 1e12)
    print(f"compiled ({args.compile_backend}, mode {options.get('mode', '-')}) in {compile_s:.1f} s (3 calls)")
    limit = ratio(
        f"(c0) compiled forward, logits for the {G} generated positions, ms/call (mean of {calls})",
        forward_ms,
        f"compute limit: {flops / 1e12:.3f} TFLOP at {args.peak_tflops:.0f} TFLOP/s",
        limit_ms,
        None,
    )
    print(ratio_line("(c0) vs the compute limit", limit))
    cden = CompiledDenoiser(b.denoiser, compiled, b.P)
    times, ms, same = b.compare_decodes(cden, args.repeats)
    labels = {"a": "(c) bare loop, compiled", "b": "(d) engine + store, compiled", "b'": "(d') engine, compiled"}
    for name, label in labels.items():
        runs = " ".join(f"{t:.3f}" for t in times[name])
        print(f"{label:30} {ms[name]:8.2f} ms/step   all runs (s) {runs}")
    engine = ratio(
        "(d) engine+store on the compiled forward, ms/step",
        ms["b"],
        "(c) bare loop on the compiled forward, ms/step",
        ms["a"],
        TARGET_RATIO,
    )
    overhead = ratio(
        "(d) engine+store on the compiled forward, ms/step",
        ms["b"],
        "(c0) the compiled forward alone, ms/call",
        forward_ms,
        None,
    )
    print(ratio_line("engine vs compiled loop", engine, flag(b, engine)))
    print(ratio_line("engine vs compiled forward", overhead))
    print(f"same tokens from c, d and d': {'yes' if same else 'no'}")
    return {
        "backend": args.compile_backend,
        "mode": options.get("mode"),
        "compile_s": compile_s,
        "forward_ms": forward_ms,
        "forward_flops": flops,
        "limit_ms": limit_ms,
        "vs_limit": limit,
        "ms_per_step": ms,
        "runs_s": times,
        "same_tokens": same,
        "ratio": engine,
        "vs_forward": overhead,
    }


def flag(b: Bench, r: dict) -> str:
    if b.args.tiny or r["target"] is None:
        return ""
    return "" if r["value"] <= r["target"] else "  MISSED"


SECTION_FUNCTIONS = {
    "engine": section_engine,
    "violations": section_violations,
    "uni": section_uni,
    "lookahead": section_lookahead,
    "compiled": section_compiled,
}
TITLES = {
    "engine": "engine + store vs the bare eager loop",
    "violations": "violation pass vs one batched forward of the same n copies",
    "uni": "Uni-E chain vs one batched forward of the same number of copies",
    "lookahead": "gated strategy lookahead: a step vs one batched forward of its probe",
    "compiled": "torch.compile: the compiled forward vs the compute limit, the engine vs the compiled loop",
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"skipped: no CUDA device (torch {torch.__version__}); "
            f"`python bench/bench_gpu.py --tiny --device cpu` runs a smoke test of the script"
        )
        return 0
    try:
        import transformers
    except ImportError:
        print("error: this benchmark builds its model with transformers: pip install 'transformers>=5'")
        return 2

    b = Bench(args, torch, transformers)
    cuda = b.cuda
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"GPU: {b.gpu or 'none (CPU run)'}; {versions}, device {b.device}")
    print(
        f"model: random-weight Llama, {args.layers} layers, hidden {args.hidden}, {args.heads} heads "
        f"({args.kv_heads} kv), MLP {args.intermediate}, vocab {args.vocab}, {b.n_params / 1e9:.2f} B parameters, "
        f"{b.dtype_name}, bidirectional attention (built in {b.built_s:.1f} s)"
    )
    print(
        f"sequence: prompt {b.P} + generation {b.G} = {b.P + b.G} tokens, {b.steps} steps "
        f"({b.G // b.steps} token(s)/step), low_confidence, T=0; {args.repeats} repeats (median)"
    )
    print(
        "every ratio = numerator / denominator, both timed in this run (interleaved, after a warm-up; medians), "
        "each named in brackets"
    )
    run_compile = args.compile if args.compile is not None else cuda
    sections = [s for s in args.sections if s != "compiled" or run_compile]
    b.write()
    for name in sections:
        print(f"\n== {name}: {TITLES[name]}")
        b.reset_memory()
        began = time.perf_counter()
        try:
            result = SECTION_FUNCTIONS[name](b)
        except Exception as exc:  # a failed section is reported; the others still run
            traceback.print_exc()
            b.results["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: FAILED ({type(exc).__name__}: {exc})")
        else:
            result["seconds"] = time.perf_counter() - began
            b.results["sections"][name] = result
        b.record_memory(name)
        if cuda:
            print(f"peak GPU memory allocated in this section: {b.max_memory() / 2**30:.1f} GiB")
        b.write()
    print()
    if "compiled" not in sections:
        limit_ms = 1000 * forward_flops(args) / (args.peak_tflops * 1e12)
        print(
            f"(c) torch.compile forward: not run (--compile to run it); its compute limit would be "
            f"{limit_ms:.2f} ms at {args.peak_tflops:.0f} TFLOP/s"
        )
    if cuda:
        print(f"peak GPU memory allocated: {b.results['memory']['max_allocated_bytes'] / 2**30:.1f} GiB ({b.gpu})")
    b.results["complete"] = not b.results["errors"]
    b.write()
    b.tmp.cleanup()
    if b.results["errors"]:
        print(f"failed sections: {', '.join(b.results['errors'])}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
