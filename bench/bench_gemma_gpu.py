"""DiffusionGemma on the GPU: transformers' `generate()` against explorer's engine, same model,
prompt, seed and settings, timed in the same run.

    python bench/bench_gemma_gpu.py [--shape 26b-a4b] [--repeats 3] [--steps 16] [--json PATH]   # CUDA, bf16
    python bench/bench_gemma_gpu.py --shape tiny --repeats 1                                       # CPU, any machine
    bash bench/gpu_check.sh                                   # the prepared device check (docs/benchmarks.md)

(a) `model.generate(input_ids)` after `torch.manual_seed(seed)`;
(b) explorer's engine, `explorer.decoding.canvas_engine.iter_canvas_steps` on a `GemmaDenoiser` with the same
    settings (`canvas_config`), consumed fully (every StepRecord built, its arrays copied to the host, as the
    explorer records them).
Both run on the model's generation config, set here: `max_new_tokens` = 2 canvases, a fixed `max_denoising_steps`,
entropy bound 0.1, temperature 0.4..0.8, and no early stop (no stability / confidence threshold, no EOS), so each
canvas takes every step and both make the same decoder passes. Each variant gets one warm-up run, then
`--repeats` timed runs, interleaved (a, b, a, b, ...), the device synchronised around each; the medians are
reported per denoising step (a run's time / its decoder passes) with the ratio (b) / (a). The decoder passes are
counted by a forward pre-hook on the decoder (generate returns no count) and, for (b), also as the engine's
step count; they must be equal, and every final sequence of (a) and (b) must be identical, else the
exit status is 1. torch.cuda.max_memory_allocated is recorded per variant (reset before each run).

Shapes (random weights, nothing downloaded, built in place on the device in the target dtype):

26b-a4b  (default; CUDA, bf16) the text shape of the released DiffusionGemma 26B-A4B checkpoint,
         google/diffusiongemma-26B-A4B-it (the checkpoint transformers' configuration_diffusion_gemma.py names in
         its docstrings; that file's class defaults are NOT this shape: 30 layers, hidden 2304, 8 heads, dense).
         The numbers are the checkpoint's config.json text_config, not in the installed transformers and taken
         from public copies of it (a DiffusionGemma config.json reproduced in an MLX port's configuration test;
         the same text shape in Gemma 4 26B-A4B config.json copies in MLX / Rust ports; apxml.com and vast.ai
         model pages agree on layers, heads, experts): 30 layers (5 sliding : 1 full, sliding window 1024),
         hidden 2816, 16 heads, 8 KV heads (2 on the full-attention layers), head dim 256 (512 on the
         full-attention layers), dense MLP 2112 plus 128 experts of 704 with 8 active per token, vocabulary
         262144, canvas_length 256, tied embeddings, final logit softcap 30. About 26B parameters, ~52 GB in bf16.
         The vision tower cannot be left out (DiffusionGemma's encoder always builds one); it is the smallest
         (one layer, hidden 16) and the text path never calls it.
tiny     (CPU, fp32) the model of tests/test_diffusion_gemma.py: 2 layers, hidden 32, vocabulary 256, 2 experts,
         canvas 8; a smoke test for CI (tests/test_gpu_bench.py), its times measure Python, not a GPU.

Output: human-readable lines, then one JSON line (also written to --json PATH). Without CUDA, `--shape 26b-a4b`
prints 'skipped: no CUDA device' and exits 0.
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

GEMMA_26B_A4B = {
    "text": dict(
        vocab_size=262_144,
        hidden_size=2816,
        intermediate_size=2112,
        num_hidden_layers=30,
        num_attention_heads=16,
        num_key_value_heads=8,
        num_global_key_value_heads=2,
        head_dim=256,
        global_head_dim=512,
        max_position_embeddings=262_144,
        sliding_window=1024,
        num_experts=128,
        top_k_experts=8,
        moe_intermediate_size=704,
        final_logit_softcapping=30.0,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    ),
    "canvas_length": 256,
    "tie_word_embeddings": True,
    "image_token_id": 258_880,
    "boi_token_id": 255_999,
    "eoi_token_id": 258_882,
    "prompt_length": 64,
    "steps": 16,
    "repeats": 3,
}
TINY = {  # tests/test_diffusion_gemma.py's tiny_config
    "text": dict(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=16,
        max_position_embeddings=128,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        num_experts=2,
        top_k_experts=1,
        moe_intermediate_size=32,
        tie_word_embeddings=False,
    ),
    "canvas_length": 8,
    "tie_word_embeddings": False,
    "image_token_id": 255,
    "boi_token_id": 253,
    "eoi_token_id": 254,
    "prompt_length": 16,
    "steps": 4,
    "repeats": 1,
}
SHAPES = {"26b-a4b": GEMMA_26B_A4B, "tiny": TINY}
SMALLEST_VISION = dict(
    model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=2, head_dim=8,
)  # fmt: skip
CANVASES = 2
ENTROPY_BOUND, T_MIN, T_MAX = 0.1, 0.4, 0.8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="26b-a4b", help="26b-a4b (default, CUDA) or tiny")
    parser.add_argument("--device", default=None, help="default: cuda for 26b-a4b, cpu for tiny")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on CUDA, else fp32")
    parser.add_argument("--prompt-length", type=int, default=None, help="prompt tokens (default 64; 16 tiny)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per canvas (default 16; 4 tiny)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of each variant (default 3; 1 tiny)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each variant first (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON line here")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    args.device = args.device or ("cpu" if args.shape == "tiny" else "cuda")
    for name in ("prompt_length", "steps", "repeats"):
        if getattr(args, name) is None:
            setattr(args, name, shape[name])
    if args.repeats < 1 or args.steps < 1 or args.prompt_length < 1 or args.warmup < 0:
        parser.error("--repeats, --steps and --prompt-length must be >= 1, --warmup >= 0")
    return args


def build_model(args, torch, device, dtype):
    """The random-weight model, built on `device` in `dtype`, with the benchmark's generation config."""
    import transformers
    from transformers.models.diffusion_gemma import generation_diffusion_gemma as tf_gen

    shape = SHAPES[args.shape]
    config = transformers.DiffusionGemmaConfig(
        text_config=dict(shape["text"]),
        vision_config=dict(SMALLEST_VISION),
        canvas_length=shape["canvas_length"],
        image_token_id=shape["image_token_id"],
        boi_token_id=shape["boi_token_id"],
        eoi_token_id=shape["eoi_token_id"],
        tie_word_embeddings=shape["tie_word_embeddings"],
    )
    torch.manual_seed(0)
    with torch.device(device):  # in place, in the target dtype: no fp32 copy of 26B weights on the host
        model = transformers.DiffusionGemmaForBlockDiffusion._from_config(config, dtype=dtype)
    model.eval()
    model.generation_config = tf_gen.DiffusionGemmaGenerationConfig(
        max_new_tokens=CANVASES * shape["canvas_length"],
        max_denoising_steps=args.steps,
        sampler_config=tf_gen.EntropyBoundSamplerConfig(entropy_bound=ENTROPY_BOUND),
        t_min=T_MIN,
        t_max=T_MAX,
        stability_threshold=None,  # no early stop: every canvas takes every step
        confidence_threshold=None,
        eos_token_id=None,  # no EOS stop either: both variants run every canvas
        pad_token_id=shape["text"]["pad_token_id"],
    )
    return model


class PassCounter:
    """Decoder calls, counted by a forward pre-hook on the decoder (both generate and the driver call it)."""

    def __init__(self, model) -> None:
        self.calls = 0
        self.handle = model.model.decoder.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.calls += 1


def median(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    from explorer.adapters.diffusion_gemma import GemmaDenoiser, IdsCodec
    from explorer.decoding.canvas_engine import iter_canvas_steps
    from explorer.decoding.canvas_settings import canvas_config

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("skipped: no CUDA device (run with --shape tiny for the CPU smoke test)")
        return 0
    dtype_name = args.dtype or ("bf16" if cuda else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    torch.set_grad_enabled(False)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    began = time.perf_counter()
    model = build_model(args, torch, device, dtype)
    sync()
    built_s = time.perf_counter() - began
    n_params = sum(p.numel() for p in model.parameters())
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    shape, text = SHAPES[args.shape], SHAPES[args.shape]["text"]
    canvas = shape["canvas_length"]
    gpu = torch.cuda.get_device_name(device) if cuda else None
    print(f"GPU: {gpu or 'none (CPU run)'}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(
        f"model: random-weight DiffusionGemma, shape {args.shape}: {text['num_hidden_layers']} layers, hidden "
        f"{text['hidden_size']}, {text['num_attention_heads']} heads / {text['num_key_value_heads']} KV heads, "
        f"{text['num_experts']} experts (top {text['top_k_experts']}), vocabulary {text['vocab_size']}, canvas "
        f"{canvas}; {n_params / 1e6:,.1f} M parameters, {weights_bytes / 2**30:.1f} GiB in {dtype_name} on {device}; "
        f"built in {built_s:.1f} s"
    )

    # a prompt of random ordinary tokens (no image / special ids), the same for both variants
    low, high = 3, min(text["vocab_size"], shape["boi_token_id"], shape["image_token_id"])
    prompt = torch.randint(low, high, (1, args.prompt_length), generator=torch.Generator().manual_seed(1))
    input_ids = prompt.to(device)
    counter = PassCounter(model)
    print(
        f"prompt {args.prompt_length} + {CANVASES} canvases of {canvas} = {args.prompt_length + CANVASES * canvas} "
        f"tokens, {args.steps} denoising steps per canvas, no early stop, seed {args.seed}; "
        f"{args.warmup} warm-up + {args.repeats} timed run(s) of each, interleaved"
    )

    def run_generate():
        torch.manual_seed(args.seed)
        out = model.generate(input_ids)
        return out.sequences.cpu(), None

    denoiser = GemmaDenoiser(f"diffusion_gemma-{args.shape}", model, IdsCodec(), device)
    config = canvas_config(denoiser.defaults, seed=args.seed)

    def run_driver():
        tokens, steps = [], 0
        for record in iter_canvas_steps(denoiser, prompt[0].tolist(), config):
            steps += 1
            if record.extras.canvas.final:  # the canvas's final tokens: the state after its last step
                canvas = record.extras.canvas
                final = record.argmax[canvas.start : canvas.start + canvas.size]
                tokens.extend(final.tolist())
        return torch.cat([prompt, torch.tensor([tokens])], dim=-1), steps

    variants = {"a": run_generate, "b": run_driver}
    names = {"a": "(a) model.generate()", "b": "(b) the explorer's engine"}
    times: dict[str, list[float]] = {k: [] for k in variants}
    passes: dict[str, set[int]] = {k: set() for k in variants}  # per run, from the hook
    driver_passes: set[int] = set()  # from GemmaResult
    peak: dict[str, int | None] = {k: None for k in variants}
    sequences: dict[str, list] = {k: [] for k in variants}
    for round_index in range(args.warmup + args.repeats):
        timed = round_index >= args.warmup
        for key, fn in variants.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            counter.calls = 0
            sync()
            t0 = time.perf_counter()
            seq, reported = fn()
            sync()
            elapsed = time.perf_counter() - t0
            passes[key].add(counter.calls)
            if reported is not None:
                driver_passes.add(reported)
            sequences[key].append(seq)
            if cuda:
                peak[key] = max(peak[key] or 0, torch.cuda.max_memory_allocated(device))
            if timed:
                times[key].append(1000 * elapsed)
    counter.handle.remove()

    reference = sequences["a"][0]
    identical = all(torch.equal(seq, reference) for key in variants for seq in sequences[key])
    counted = passes["a"] | passes["b"] | driver_passes
    equal_passes = len(counted) == 1
    n_passes = min(counted)
    expected = CANVASES * args.steps
    ms = {k: median(v) for k, v in times.items()}
    per_step = {k: ms[k] / n_passes for k in variants}
    ratio = per_step["b"] / per_step["a"]

    print()
    print(f"{'variant':24} {'ms / run':>10} {'ms / step':>10} {'passes':>7} {'peak memory':>14}")
    for key in variants:
        memory = "n/a (CPU)" if peak[key] is None else f"{peak[key] / 2**30:.2f} GiB"
        passes_text = ",".join(str(p) for p in sorted(passes[key]))
        print(f"{names[key]:24} {ms[key]:10.2f} {per_step[key]:10.2f} {passes_text:>7} {memory:>14}")
    print(
        f"ratio engine / generate = {ratio:.3f}x "
        f"({per_step['b']:.2f} ms / {per_step['a']:.2f} ms per denoising step, medians of {args.repeats})"
    )
    print(
        f"decoder passes: generate {sorted(passes['a'])}, engine {sorted(passes['b'])} (its step count "
        f"{sorted(driver_passes)}), expected {expected}: {'equal' if equal_passes else 'DIFFERENT'}"
    )
    print(
        f"final sequences of every run of (a) and (b): {'identical' if identical else 'DIFFERENT'} "
        f"({reference.shape[1]} tokens)"
    )

    results = {
        "command": "python bench/bench_gemma_gpu.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "shape": args.shape,
        "device": str(device),
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "dtype": dtype_name,
        "model": {
            "kind": "random-weight transformers DiffusionGemmaForBlockDiffusion",
            "layers": text["num_hidden_layers"],
            "hidden": text["hidden_size"],
            "heads": text["num_attention_heads"],
            "kv_heads": text["num_key_value_heads"],
            "experts": text["num_experts"],
            "top_k_experts": text["top_k_experts"],
            "vocab": text["vocab_size"],
            "canvas_length": canvas,
            "parameters": n_params,
            "weights_bytes": weights_bytes,
            "built_s": built_s,
        },
        "settings": {
            "prompt_length": args.prompt_length,
            "canvases": CANVASES,
            "max_new_tokens": CANVASES * canvas,
            "max_denoising_steps": args.steps,
            "entropy_bound": ENTROPY_BOUND,
            "t_min": T_MIN,
            "t_max": T_MAX,
            "early_stop": False,
            "seed": args.seed,
            "warmup": args.warmup,
            "repeats": args.repeats,
        },
        "ms_per_run": {"generate": times["a"], "engine": times["b"]},
        "ms_per_step": {"generate": per_step["a"], "engine": per_step["b"]},
        "ratio": {
            "value": ratio,
            "numerator": "engine consumed fully, ms per denoising step (median)",
            "denominator": "model.generate() after torch.manual_seed(seed), ms per denoising step (median)",
        },
        "decoder_passes": {
            "generate": sorted(passes["a"]),
            "engine": sorted(passes["b"]),
            "engine_steps": sorted(driver_passes),
            "expected": expected,
            "equal": equal_passes,
        },
        "sequences_identical": identical,
        "memory": {
            "max_allocated_bytes": {"generate": peak["a"], "engine": peak["b"]},
        },
        "ok": identical and equal_passes,
    }
    line = json.dumps(results, default=float)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n")
    print(line)
    if not results["ok"]:
        print("FAILED: the engine did not reproduce generate() (sequences or decoder passes differ)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
