"""Record a DiffusionGemma `generate()` call run in the user's own code, through its streamer.

    streamer = RecordingStreamer(store, model, tokenizer=tokenizer)
    out = model.generate(input_ids, streamer=streamer)
    streamer.run_id  # the stored run

transformers' `DiffusionGemmaForBlockDiffusion.generate(streamer=...)` calls `put(prompt_ids)` once,
then per denoising step `put_draft(value=argmax_canvas)` (or `put_draft(logits=...)`, the step's
temperature-scaled logits, when the streamer has `_takes_logits = True`), `put(final_canvas)` after
each canvas (EOS and padding applied) and `end()` at the end. A streamer never sees the noise canvas,
the sampled tokens or what was accepted, so a recorded run holds one step per decoder pass with its
argmax draft over the current canvas (and, from the logits, each position's confidence, entropy and
margin), and commits a canvas's final tokens at the canvas's last step. Every other position is
*noise* (the run's mask id: one past the vocabulary), as for the explorer's own canvas runs.

Nothing of transformers is imported here: the streamer is duck-typed (`put`, `put_draft`, `end`).
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from explorer.decoding.callbacks import RunStart
from explorer.decoding.records import DecodeResult
from explorer.recording.common import checked_config, decoded_text, end_failed, one_row, step_record, token_texter
from explorer.store.database import StoreWriter, TrajectoryStore

DEFAULT_MAX_NEW_TOKENS = 256  # transformers' DiffusionGemmaGenerationConfig defaults, used when the model sets none
DEFAULT_DENOISING_STEPS = 48
DEFAULT_ENTROPY_BOUND = 0.1


class RecordingStreamer:
    """A streamer for `DiffusionGemmaForBlockDiffusion.generate` that writes the call as a stored run.

    `model` gives the canvas length, the vocabulary size (the noise marker is `vocab_size`) and the
    generation settings stored with the run; `canvas_length=`, `vocab_size=`, `max_new_tokens=`
    override them (and stand in for a missing model). Give `max_new_tokens=` when you pass one to
    `generate` yourself: the run's length is planned from it. `with_logits=False` asks generate for
    the argmax draft only (no confidence, entropy or margin are stored). Batch size 1 only.

    Use it as a context manager (`with RecordingStreamer(...) as streamer:`) or call `fail(error)`
    yourself, so that a generate that raises leaves the run marked failed. After `end()`,
    `run_id` is the stored run's id.
    """

    def __init__(
        self,
        store: TrajectoryStore,
        model=None,
        *,
        prompt: str = "",
        with_logits: bool = True,
        name: str = "diffusion_gemma (recorded)",
        top_k: int = 3,
        tokenizer=None,
        canvas_length: int | None = None,
        vocab_size: int | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        config = getattr(model, "config", None)
        text_config = getattr(config, "text_config", config)
        self.canvas_length = int(canvas_length or getattr(config, "canvas_length", 0) or 0)
        self.vocab_size = int(vocab_size or getattr(text_config, "vocab_size", 0) or 0)
        if self.canvas_length <= 0 or self.vocab_size <= 0:
            raise ValueError(
                "RecordingStreamer needs the canvas length and vocabulary size: pass the DiffusionGemma model "
                "or canvas_length= and vocab_size="
            )
        generation = getattr(model, "generation_config", None)
        sampler = getattr(generation, "sampler_config", None)
        self.max_new_tokens = max_new_tokens or getattr(generation, "max_new_tokens", None)
        self._max_length = None if max_new_tokens else getattr(generation, "max_length", None)
        self.max_denoising_steps = int(getattr(generation, "max_denoising_steps", None) or DEFAULT_DENOISING_STEPS)
        self.entropy_bound = float(getattr(sampler, "entropy_bound", None) or DEFAULT_ENTROPY_BOUND)
        self.store, self.prompt, self.name, self.tokenizer = store, prompt, name, tokenizer
        self.top_k = max(int(top_k), 1)
        self.device = str(getattr(model, "device", "cpu"))
        self._takes_logits = bool(with_logits)  # read by generate: put_draft(logits=...) instead of value=
        self.mask_id = self.vocab_size  # the noise marker
        self.run_id: int | None = None
        self.gen_length = 0
        self._writer: StoreWriter | None = None
        self._tokens: np.ndarray | None = None  # (G,) the generated part so far (noise marker elsewhere)
        self._pending: dict | None = None  # the latest draft, written when the next call says whether it ended a canvas
        self._canvas = 0  # the canvas the next draft belongs to
        self._steps = 0  # steps written
        self._last = time.perf_counter()
        self._state = "new"  # new | recording | ended | failed | dropped

    # ---- the streamer protocol ---------------------------------------------------------------
    def put(self, value) -> None:
        """The prompt (first call), then each canvas's final tokens."""
        if self._state == "new":
            self._start(one_row(value, "the prompt generate streamed"))
            return
        if self._state in ("ended", "failed"):
            raise ValueError("a RecordingStreamer records one generate() call; make a new one for the next call")
        if self._state != "recording":
            return
        final = one_row(value, "the canvas generate streamed")
        if self._pending is None or final.size != self.canvas_length:
            self._drop(f"generate streamed a canvas of {final.size} tokens without a draft before it")
            return
        self._write_pending(final)
        self._canvas += 1

    def put_draft(self, value=None, logits=None) -> None:
        """One denoising step's draft: the argmax canvas, or the logits it is the argmax of."""
        if self._state != "recording":
            return
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        if self._pending is not None:  # the previous draft did not end its canvas
            self._write_pending(None)
        start = self._canvas * self.canvas_length
        if start + self.canvas_length > self.gen_length:
            self._drop(
                f"generate made more than the {self.gen_length // self.canvas_length} canvases planned from "
                f"max_new_tokens={self.max_new_tokens}; pass the max_new_tokens you give generate to RecordingStreamer"
            )
            return
        if logits is not None:
            self._pending = {"seconds": seconds, "start": start, **self._measure(logits)}
        else:
            argmax = one_row(value, "the draft generate streamed")
            self._pending = {"seconds": seconds, "start": start, "argmax": argmax, "log_probs": None}

    def end(self) -> None:
        """generate finished: the run ends completed."""
        if self._state != "recording":
            return
        if self._pending is not None:
            self._write_pending(None)
        tokens = self._tokens.tolist()
        self._writer.on_end(
            DecodeResult("completed", tokens, decoded_text(self.tokenizer, tokens, self.mask_id), self._steps)
        )
        self._state = "ended"

    def fail(self, error: BaseException | str) -> None:
        """Mark the run failed (generate raised): its steps so far are kept."""
        if self._state != "recording":
            return
        if self._pending is not None:
            self._write_pending(None)
        end_failed(self._writer, self._tokens.tolist(), self._steps, error)
        self._state = "failed"

    def __enter__(self) -> RecordingStreamer:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None:
            self.fail(error)
        elif self._state == "recording":
            self.fail("the recording ended before generate called the streamer's end()")
        return False

    # ---- the run ------------------------------------------------------------------------------
    def _start(self, prompt_ids: np.ndarray) -> None:
        C = self.canvas_length
        max_new = self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        if self._max_length and max_new == DEFAULT_MAX_NEW_TOKENS:  # transformers' rule (_prepare_generated_length)
            max_new = self._max_length - prompt_ids.size
        canvases = max(math.ceil(max_new / C), 1)
        self.gen_length = G = canvases * C
        config = checked_config(
            max(prompt_ids.size, 1),
            gen_length=G,
            steps=min(canvases * self.max_denoising_steps, G),
            block_length=C,
            strategy="eb",
            eb_gamma=self.entropy_bound,
            temperature=0.0,
            violations=False,
        )
        prompt = self.prompt or decoded_text(self.tokenizer, prompt_ids.tolist(), self.mask_id)
        start = RunStart(self.name, prompt, prompt_ids.tolist(), config, self.mask_id, self.device)
        self._writer = StoreWriter(self.store, token_texter(self.tokenizer, self.mask_id))
        self._writer.on_start(start)
        self.run_id = self._writer.run_id
        self._tokens = np.full(G, self.mask_id, np.int64)
        self._state, self._last = "recording", time.perf_counter()

    def _measure(self, logits) -> dict:
        """Argmax, confidence, entropy (nats) and margin of each canvas position, from the step's logits."""
        logits = torch.as_tensor(logits).detach()
        if logits.ndim == 3 and logits.shape[0] != 1:
            raise ValueError(f"the logits have a batch of {logits.shape[0]} rows; recording takes batch size 1")
        log_probs = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).float().cpu(), dim=-1)  # (C, V)
        probs = log_probs.exp()
        top = torch.topk(probs, k=min(max(self.top_k, 2), probs.shape[-1]), dim=-1)
        entropy = -(probs * log_probs).nan_to_num().sum(-1)
        second = top.values[:, 1] if top.values.shape[1] > 1 else torch.zeros_like(top.values[:, 0])
        return {
            "argmax": top.indices[:, 0].numpy().astype(np.int64),
            "confidence": top.values[:, 0].numpy(),
            "entropy": entropy.numpy(),
            "margin": (top.values[:, 0] - second).numpy(),
            "log_probs": log_probs,
            "top_ids": top.indices[:, : self.top_k].numpy(),
            "top_probs": top.values[:, : self.top_k].numpy(),
        }

    def _write_pending(self, final: np.ndarray | None) -> None:
        """Write the buffered draft as a step; `final`: the canvas's tokens, committed at this step."""
        draft, self._pending = self._pending, None
        start, C = draft["start"], self.canvas_length
        if draft["argmax"].size != C:
            self._drop(f"generate streamed a draft of {draft['argmax'].size} tokens; the canvas has {C}")
            return
        nan = np.full(C, np.nan, np.float32)
        metrics = (start, draft["argmax"], *(draft.get(k, nan) for k in ("confidence", "entropy", "margin")))
        masked_before = int((self._tokens == self.mask_id).sum())
        commit = {}
        if final is not None:
            commit = {"committed": np.arange(start, start + C), "tokens": final}
            if draft["log_probs"] is not None:
                kept = torch.as_tensor(np.clip(final, 0, draft["log_probs"].shape[-1] - 1))
                probs = draft["log_probs"].gather(1, kept[:, None])[:, 0].exp().numpy()
                commit |= {"probs": probs, "top_ids": draft["top_ids"], "top_probs": draft["top_probs"]}
            self._tokens[start : start + C] = final
        record = step_record(
            self._steps, self._canvas, self.gen_length, masked_before, draft["seconds"], metrics=metrics, **commit
        )
        self._writer.on_step(record)
        self._steps += 1

    def _drop(self, reason: str) -> None:
        """Stop recording (generate goes on): the run is marked failed with `reason`, and a warning says so."""
        self._pending = None
        end_failed(self._writer, self._tokens.tolist(), self._steps, f"not recorded to the end: {reason}")
        self._state = "dropped"
        warnings.warn(f"RecordingStreamer: {reason}; run {self.run_id} is marked failed", stacklevel=3)
