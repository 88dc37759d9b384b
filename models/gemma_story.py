"""A tiny DiffusionGemma trained on the story grammar: the uniform-noise canvas model to try the app on.

    python -m models.gemma_story --out models/embedded/gemma      # trains it (about 10 minutes on 2 CPU cores)

It is transformers' own `DiffusionGemmaForBlockDiffusion` (no code of ours in the model), at a toy
size: 2 layers, hidden 64, canvases of 8 tokens, a 128-token word vocabulary (the embedded models'
words, a word-level tokenizer saved with it). Training is the uniform-noise denoising objective:
a story is cut at a random point; the encoder reads what came before, the decoder reads the next 8
words with each one replaced, with probability t ~ U(0, 1), by a uniformly random word, and learns
to predict the clean words at every position (cross-entropy). No self-conditioning is trained (the
logits of the previous step are passed at sampling time, as `generate()` does, but the model never
saw them: it learns to ignore them). Its generation config sets canvases of 8, up to 8 steps each,
the entropy bound 0.5 and the early stop, so `generate()` and the app run it as they would a real
checkpoint. It writes plausible story sentences, not flawless ones: a picture of the mechanics, not
a model to measure quality on (the embedded MDLM and XDLM are those).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from models import EMBEDDED_DIR
from models.corpus import iter_stories

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3: pad, EOS (never trained: stories go on), BOS
VOCAB_SIZE = 128  # the last three ids: <boi>, <eoi>, <image> (the multimodal ids the config needs)
CANVAS = 8
GEMMA_DIR = EMBEDDED_DIR / "gemma"


def story_vocab() -> dict[str, int]:
    """Token -> id: the specials, the embedded models' words, unused fillers, the image ids."""
    words = json.loads((EMBEDDED_DIR / "vocab.json").read_text())["vocab"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for word in words:
        if not word.startswith("<"):
            vocab[word] = len(vocab)
    while len(vocab) < VOCAB_SIZE - 3:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    for tok in ("<boi>", "<eoi>", "<image>"):
        vocab[tok] = len(vocab)
    return vocab


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer (whitespace split) over `story_vocab()`, as transformers loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = story_vocab()
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    extra = [t for t in vocab if t.startswith("<") and t not in SPECIALS]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        additional_special_tokens=extra,
    )  # fmt: skip
    tokenizer.save_pretrained(folder)


def story_config(hidden: int = 64, layers: int = 2):
    """The DiffusionGemma configuration: the text model at toy size, the smallest vision tower (never called)."""
    import transformers

    text = dict(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=16, max_position_embeddings=128,
        sliding_window=32, layer_types=["sliding_attention", "full_attention"] * (layers // 2),
        pad_token_id=0, eos_token_id=1, bos_token_id=2, num_experts=2, top_k_experts=1, moe_intermediate_size=hidden,
        tie_word_embeddings=False,
    )  # fmt: skip
    vision = dict(
        model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8,
    )  # fmt: skip
    return transformers.DiffusionGemmaConfig(
        text_config=text, vision_config=vision, canvas_length=CANVAS, image_token_id=VOCAB_SIZE - 1,
        boi_token_id=VOCAB_SIZE - 3, eoi_token_id=VOCAB_SIZE - 2, tie_word_embeddings=False,
    )  # fmt: skip


def generation_config(**overrides):
    from transformers.models.diffusion_gemma import generation_diffusion_gemma as tf_gen

    settings = dict(
        max_new_tokens=24, max_denoising_steps=8, t_min=0.4, t_max=0.8, stability_threshold=1,
        confidence_threshold=0.05, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    settings.update(overrides)
    bound = settings.pop("entropy_bound", 0.5)
    return tf_gen.DiffusionGemmaGenerationConfig(
        sampler_config=tf_gen.EntropyBoundSamplerConfig(entropy_bound=bound), **settings
    )


def build(folder: Path, hidden: int = 64, layers: int = 2, seed: int = 0, **generation):
    """A random-weight model with the tokenizer and generation config saved in `folder` (tests use it as is)."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(folder)
    torch.manual_seed(seed)
    model = transformers.DiffusionGemmaForBlockDiffusion(story_config(hidden, layers)).eval()
    model.generation_config = generation_config(**generation)
    return model


def batches(seed: int, batch_size: int, max_context: int = 48):
    """(context (B, m), canvas (B, 8)) word ids: each story cut at a random point, BOS first, the
    contexts of a batch left-trimmed to the shortest (the encoder takes no padding here)."""
    vocab, rng, stories = story_vocab(), random.Random(seed), iter_stories(seed)
    while True:
        contexts, canvases = [], []
        for _ in range(batch_size):
            ids = [vocab["<bos>"]]
            while len(ids) < max_context + CANVAS + 1:
                ids += [vocab[w] for w in next(stories)]
            cut = rng.randint(1, max_context)
            contexts.append(ids[:cut])
            canvases.append(ids[cut : cut + CANVAS])
        m = min(map(len, contexts))
        yield torch.tensor([c[-m:] for c in contexts]), torch.tensor(canvases)


def train(out: Path, steps: int, seed: int = 0, batch_size: int = 64, lr: float = 3e-3) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    model = build(out, seed=seed)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    noise = torch.Generator().manual_seed(seed + 1)
    words = VOCAB_SIZE - 3  # uniform noise over the text vocabulary (never the image ids)
    began, log = time.time(), []
    for step, (context, clean) in zip(range(steps), batches(seed, batch_size)):
        for group in optimiser.param_groups:  # cosine decay to 10%
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        B, m = clean.shape[0], context.shape[1]
        t = torch.rand(B, 1, generator=noise)
        noisy = torch.where(
            torch.rand(B, CANVAS, generator=noise) < t, torch.randint(0, words, (B, CANVAS), generator=noise), clean
        )
        logits = model(
            input_ids=context,
            position_ids=torch.arange(m)[None].expand(B, -1),
            decoder_input_ids=noisy,
            decoder_position_ids=torch.arange(m, m + CANVAS)[None].expand(B, -1),
        ).logits  # (B, 8, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE), clean.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if step % 250 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - began, 1)})
            print(log[-1], flush=True)
    model.eval()
    model.save_pretrained(out)
    summary = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "log": log}
    (out / "train_log.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GEMMA_DIR)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train(args.out, args.steps, args.seed)


if __name__ == "__main__":
    main()
