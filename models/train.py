"""Train the embedded models from scratch: `python -m models.train`.

Trains the masked diffusion denoiser (MDLM objective) and the causal AR model on the same
vocabulary, on windows of concatenated stories from the seeded grammar, and writes
`models/embedded/{mdlm,ar}.safetensors` with their configs, the vocabulary and a training
log (held-out NELBO / NLL, steps, wall time). `--kind xdlm --k 0.1` trains the XDLM denoiser
(mask + uniform noise, models/xdlm.py) with the MDLM's budget and writes `xdlm.*`; its
kernel (k) goes into `xdlm_kernel.json`, which the explorer reads. Runs on the CPU; uses CUDA when present
unless `--device cpu`. `python bench/evaluate_embedded.py` then measures sample validity and writes
the model card.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from models import EMBEDDED_DIR
from models.data import StoryStream
from models.tokenizer import WordTokenizer
from models.transformer import Transformer, TransformerConfig, save_model
from models.xdlm import EPS, xdlm_loss

HELD_OUT_SEED = 999_999


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    eval_batches: int = 8
    k: float = 0.0  # XDLM's uniform-noise share (kind "xdlm" only)


def mdlm_loss(
    model: Transformer, ids: torch.Tensor, mask_id: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """MDLM NELBO per token: t ~ U(0, 1), mask each token with prob. t, CE on masks / t."""
    B, L = ids.shape
    # Low-discrepancy t (one stratum per sequence) lowers the variance of the estimate.
    u = torch.rand((), generator=generator, device=ids.device)
    t = ((u + torch.arange(B, device=ids.device) / B) % 1.0).clamp_min(1e-3)  # (B,)
    masked = torch.rand(B, L, generator=generator, device=ids.device) < t[:, None]  # (B, L)
    logits = model(torch.where(masked, mask_id, ids))  # (B, L, V)
    logits[..., mask_id] = float("-inf")  # the clean data never holds the mask token
    ce = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")  # (B, L)
    return ((ce * masked).sum(1) / t).mean() / L


def ar_loss(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """Next-token NLL per predicted token."""
    logits = model(ids[:, :-1])  # (B, L-1, V)
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:])


def kind_loss(
    kind: str, model: Transformer, ids: torch.Tensor, mask_id: int, cfg: TrainConfig, generator=None
) -> torch.Tensor:
    """The training loss of one model kind on a batch (one table, no branching at the call sites)."""
    losses = {
        "mdlm": lambda: mdlm_loss(model, ids, mask_id, generator),
        "xdlm": lambda: xdlm_loss(model, ids, mask_id, cfg.k, generator=generator),
        "ar": lambda: ar_loss(model, ids),
    }
    return losses[kind]()


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def held_out_loss(model: Transformer, kind: str, tokenizer: WordTokenizer, device: str, cfg: TrainConfig) -> float:
    model.eval()
    stream = StoryStream(tokenizer, model.config.context_length, HELD_OUT_SEED)
    generator = torch.Generator(device=device).manual_seed(HELD_OUT_SEED)
    losses = []
    for _ in range(cfg.eval_batches):
        ids = stream.batch(cfg.batch_size).to(device)
        losses.append(kind_loss(kind, model, ids, tokenizer.mask_id, cfg, generator))
    model.train()
    return float(torch.stack(losses).mean())


def train(
    kind: str,
    model_config: TransformerConfig,
    cfg: TrainConfig,
    tokenizer: WordTokenizer,
    device: str,
    log_every: int = 100,
) -> tuple[Transformer, dict]:
    torch.manual_seed(cfg.seed)
    model = Transformer(model_config).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    stream = StoryStream(tokenizer, model_config.context_length, seed=cfg.seed + 1)
    history, start = [], time.perf_counter()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        ids = stream.batch(cfg.batch_size).to(device)
        loss = kind_loss(kind, model, ids, tokenizer.mask_id, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % log_every == 0 or step == cfg.steps - 1:
            elapsed = time.perf_counter() - start
            history.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(elapsed, 1)})
            print(f"[{kind}] step {step:5d}  loss {loss.item():.4f}  {elapsed:7.1f}s", flush=True)
    seconds = time.perf_counter() - start
    held_out = held_out_loss(model, kind, tokenizer, device, cfg)
    print(f"[{kind}] held-out {'NLL' if kind == 'ar' else 'NELBO'} {held_out:.4f} nats/token", flush=True)
    log = {
        "kind": kind,
        "train": asdict(cfg),
        "model": asdict(model_config),
        "parameters": model.num_parameters(),
        "held_out_nats_per_token": round(held_out, 4),
        "train_seconds": round(seconds, 1),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        "history": history,
    }
    return model.cpu().eval(), log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EMBEDDED_DIR)
    parser.add_argument(
        "--kind",
        "--which",
        dest="kind",
        choices=["both", "mdlm", "ar", "xdlm"],
        default="both",
        help="both = mdlm and ar (the default embedded pair); xdlm trains with the MDLM's steps",
    )
    parser.add_argument("--k", type=float, default=0.1, help="XDLM's uniform-noise share k in [0, 1]")
    parser.add_argument("--name", default=None, help="file stem of an xdlm model (default xdlm, or xdlm_k<k>)")
    parser.add_argument("--mdlm-steps", type=int, default=6000)
    parser.add_argument("--ar-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--context", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--measure-cpu",
        type=int,
        metavar="N",
        default=0,
        help="only time N steps of each model on this CPU and write cpu_timing.json "
        "to --out (the weights there are left alone)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.k <= 1.0:
        parser.error(f"--k must be in [0, 1], got {args.k}")
    if args.measure_cpu:
        measure_cpu(args)
        return

    tokenizer = WordTokenizer.from_grammar()
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(args.out / "vocab.json")
    kinds = ["mdlm", "ar"] if args.kind == "both" else [args.kind]
    for kind in kinds:
        model_config = TransformerConfig(
            vocab_size=len(tokenizer),
            context_length=args.context,
            n_layer=args.n_layer,
            d_model=args.d_model,
            causal=(kind == "ar"),
        )
        steps = args.ar_steps if kind == "ar" else args.mdlm_steps
        k = args.k if kind == "xdlm" else 0.0
        cfg = TrainConfig(steps=steps, batch_size=args.batch_size, seed=args.seed, k=k)
        model, log = train(kind, model_config, cfg, tokenizer, args.device)
        name = model_name(kind, args.name, k)
        save_model(model, args.out, name)
        (args.out / f"{name}_train_log.json").write_text(json.dumps(log, indent=1) + "\n")
        if kind == "xdlm":
            kernel = {"kernel": "xdlm", "k": k, "eps": EPS, "mask_logit": "forced to -inf"}
            (args.out / f"{name}_kernel.json").write_text(json.dumps(kernel, indent=1) + "\n")


def model_name(kind: str, name: str | None, k: float) -> str:
    """File stem: the kind, or for XDLM models other than k = 0.1 `xdlm_k<k>` unless --name says."""
    if kind != "xdlm":
        return kind
    return name or ("xdlm" if k == 0.1 else f"xdlm_k{k:g}")


def measure_cpu(args: argparse.Namespace) -> None:
    """Seconds per training step on this CPU, to document the from-scratch time without a GPU."""
    import os

    tokenizer = WordTokenizer.from_grammar()
    timing = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "steps_timed": args.measure_cpu}
    for kind, full_steps in (("mdlm", args.mdlm_steps), ("ar", args.ar_steps)):
        model_config = TransformerConfig(
            vocab_size=len(tokenizer),
            context_length=args.context,
            n_layer=args.n_layer,
            d_model=args.d_model,
            causal=(kind == "ar"),
        )
        cfg = TrainConfig(steps=args.measure_cpu, batch_size=args.batch_size, seed=args.seed, eval_batches=1)
        _, log = train(kind, model_config, cfg, tokenizer, "cpu", log_every=10**9)
        per_step = log["train_seconds"] / args.measure_cpu
        timing[kind] = {
            "seconds_per_step": round(per_step, 3),
            "default_steps": full_steps,
            "estimated_minutes": round(per_step * full_steps / 60, 1),
        }
    (args.out / "cpu_timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    print(json.dumps(timing, indent=1))


if __name__ == "__main__":
    main()
