"""GPU overhead: explorer's engine vs a bare decode loop on an LLaDA-8B-shaped model.

    python bench/bench_gpu.py [--repeats 3] [--steps 256] [--no-compile]
    python bench/bench_gpu.py --tiny --device cpu        # smoke test of this script, any machine

The model is a transformers `LlamaForCausalLM` with random weights, in bf16, shaped like
LLaDA-8B (hidden 4096, 32 layers, 32 heads, MLP 12288, vocabulary 126464, mask id 126336),
with bidirectional attention (`config.is_causal = False`) as in a masked diffusion LM. A
prompt of 64 random tokens plus 256 generated positions makes the sequence 320 long.

(a) bare:         forward on the full sequence, softmax of the generated part, commit the
                  most confident masked position(s); plain torch, nothing recorded, no host
                  synchronisation until the end.
(b) engine+store: explorer.engine.run_decode with a StoreWriter into a fresh SQLite file
                  (every per-position metric: confidence, entropy, margin, top-3; one
                  host transfer per step; batched step writes and commit events).
(b') engine:      run_decode with no callbacks (metrics and StepRecords, no store).
(c) compiled:     torch.compile of the forward computing logits only for the generated
                  positions (`logits_to_keep`); its time per forward against the compute
                  limit of that forward (its FLOPs at --peak-tflops, 790 by default: about
                  what one H200 / H100 SXM sustains in bf16 matrix multiplies). CUDA only.

(a), (b) and (b') run interleaved, `--repeats` times each after a warm-up; medians are
reported as ms per step, with the ratio (b) / (a) against the target (<= 1.10x). Without a
CUDA device the script prints 'skipped: no CUDA device' and exits 0, unless `--device cpu`.
The whole default run takes about 2 minutes on one H100 or H200 (most of it compiling (c)).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import argparse
import statistics
import tempfile
import time

TARGET_RATIO = 1.10
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
        "--repeats", type=int, default=None, help="timed runs of (a), (b), (b') (default 3; 1 with --tiny)"
    )
    parser.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="time (c), the torch.compile'd forward (default: on with CUDA)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for (c)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=790.0,
        help="sustained bf16 matmul rate for the compute limit of (c) (default 790)",
    )
    args = parser.parse_args(argv)
    preset = TINY if args.tiny else LLADA_8B
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 3
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

    from explorer.decoding.config import DecodeConfig
    from explorer.decoding.engine import run_decode
    from explorer.store.database import StoreWriter, TrajectoryStore

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype_name = args.dtype or ("fp32" if args.tiny and not cuda else "bf16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    P, G, steps = args.prompt_length, args.gen_length, args.steps

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    began = time.perf_counter()
    model = build_model(args, device, dtype)
    sync()
    n_params = sum(p.numel() for p in model.parameters())
    built_s = time.perf_counter() - began
    mask_id = LLADA_MASK_ID if LLADA_MASK_ID < args.vocab else args.vocab - 1
    denoiser = RandomLlamaDenoiser(model, mask_id, P + G)
    generator = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(0, mask_id, (P,), generator=generator).tolist()
    config = DecodeConfig(gen_length=G, steps=steps, strategy="low_confidence", temperature=0.0)
    config.validate(P + G, P)

    @torch.no_grad()
    def bare_loop() -> torch.Tensor:
        x = torch.full((1, P + G), mask_id, dtype=torch.long, device=device)
        x[0, :P] = torch.tensor(prompt_ids, device=device)
        per_step = G // steps
        for _ in range(steps):
            logits = denoiser.logits(x)[0, P:]  # (G, V)
            logits[:, mask_id] = float("-inf")
            confidence, token = torch.softmax(logits.float(), dim=-1).max(dim=-1)
            masked = x[0, P:] == mask_id
            pick = confidence.masked_fill(~masked, float("-inf")).topk(per_step).indices
            x[0, P + pick] = token[pick]
        return x[0, P:]

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        counter = iter(range(10**6))

        def run_a():
            sync()
            t0 = time.perf_counter()
            tokens = bare_loop()
            sync()
            return time.perf_counter() - t0, tokens.tolist()

        def run_engine(with_store: bool):
            callbacks, store = [], None
            if with_store:  # opening the file and creating its tables is not timed
                store = TrajectoryStore(f"sqlite:///{Path(tmp) / f'run{next(counter)}.db'}")
                callbacks = [StoreWriter(store, denoiser.token_text)]
            sync()
            t0 = time.perf_counter()
            result = run_decode(denoiser, prompt_ids, config, callbacks, prompt_text="bench")
            sync()
            seconds = time.perf_counter() - t0
            if store is not None:
                assert store.get_run(callbacks[0].run_id)["n_steps"] == result.n_steps == steps
                store.engine.dispose()
            return seconds, result.token_ids

        variants = {"a": run_a, "b": lambda: run_engine(True), "b'": lambda: run_engine(False)}
        outputs = {name: fn()[1] for name, fn in variants.items()}  # warm-up (and the outputs)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():  # interleaved a, b, b', a, b, b', ...
                times[name].append(fn()[0])

    compiled_ms = None
    run_compile = args.compile if args.compile is not None else cuda
    if run_compile:
        compiled_ms = time_compiled_forward(model, args, device, mask_id, prompt_ids, sync)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    ms = {name: 1000 * med[name] / steps for name in med}
    gpu = torch.cuda.get_device_name(device) if cuda else "none (CPU run)"
    print(f"GPU: {gpu}; torch {torch.__version__}, transformers {transformers.__version__}, device {device}")
    print(
        f"model: random-weight Llama, {args.layers} layers, hidden {args.hidden}, {args.heads} heads "
        f"({args.kv_heads} kv), MLP {args.intermediate}, vocab {args.vocab}, {n_params / 1e9:.2f} B parameters, "
        f"{dtype_name}, bidirectional attention (built in {built_s:.1f} s)"
    )
    print(
        f"sequence: prompt {P} + generation {G} = {P + G} tokens, {steps} steps "
        f"({G // steps} token(s)/step), low_confidence, T=0; {args.repeats} repeats (median)"
    )
    if cuda:
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    labels = {"a": "(a) bare loop", "b": "(b) engine + store", "b'": "(b') engine, no store"}
    print(f"{'variant':24} {'ms/step':>8} {'vs bare':>8}   all runs (s)")
    for name in variants:
        print(
            f"{labels[name]:24} {ms[name]:8.2f} {med[name] / med['a']:7.2f}x   "
            f"{' '.join(f'{t:.3f}' for t in times[name])}"
        )
    no_store = ms["b'"]
    print(
        f"engine metrics/records/transfer (b' - a): {no_store - ms['a']:+.2f} ms/step; "
        f"store (b - b'): {ms['b'] - no_store:+.2f} ms/step"
    )
    same = outputs["a"] == outputs["b"] == outputs["b'"]
    print(
        f"same tokens from a, b and b': {'yes' if same else 'no'} "
        f"(random weights give near-uniform distributions: a near-tie may break differently)"
    )
    limit_ms = 1000 * forward_flops(args) / (args.peak_tflops * 1e12)
    if compiled_ms is not None:
        print(
            f"(c) torch.compile forward, logits for the {G} generated positions only: {compiled_ms:.2f} ms/step; "
            f"compute limit {limit_ms:.2f} ms ({forward_flops(args) / 1e12:.2f} TFLOP at {args.peak_tflops:.0f} "
            f"TFLOP/s): {compiled_ms / limit_ms:.2f}x the limit"
        )
    else:
        print(
            f"(c) torch.compile forward: not run (--compile to run it); its compute limit would be "
            f"{limit_ms:.2f} ms at {args.peak_tflops:.0f} TFLOP/s"
        )
    ratio = med["b"] / med["a"]
    if args.tiny:
        verdict = "  (tiny model: the forward costs next to nothing, so this measures Python, not the target)"
    else:
        verdict = "" if ratio <= TARGET_RATIO else "  MISSED"
    print(f"ratio engine+store / bare = {ratio:.2f}x (target <= {TARGET_RATIO:.2f}x){verdict}")
    return 0


def time_compiled_forward(
    model, args, device, mask_id: int, prompt_ids: list[int], sync, calls: int | None = None
) -> float:
    """ms per call of the compiled forward (logits for the generated positions only), after compiling."""
    import torch

    P, G = args.prompt_length, args.gen_length

    def forward(ids):
        return model(input_ids=ids, use_cache=False, logits_to_keep=G).logits

    compiled = torch.compile(forward, mode=args.compile_mode, dynamic=False)
    x = torch.full((1, P + G), mask_id, dtype=torch.long, device=device)
    x[0, :P] = torch.tensor(prompt_ids, device=device)
    with torch.no_grad():
        for _ in range(3):  # compile, then settle
            compiled(x)
        sync()
        calls = calls or max(args.steps, 32)
        t0 = time.perf_counter()
        for _ in range(calls):
            compiled(x)
        sync()
    return 1000 * (time.perf_counter() - t0) / calls


if __name__ == "__main__":
    raise SystemExit(main())
