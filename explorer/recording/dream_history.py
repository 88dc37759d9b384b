"""Record a Dream `diffusion_generate(..., output_history=True, return_dict_in_generate=True)` call.

Dream's remote code returns `.sequences` (B, L) and `.history`: one (B, L) tensor per step, the
whole sequence (prompt included) after that step, masked positions holding the mask id. Each
entry becomes one stored step: a position that went from mask to a token is committed, token to
mask is re-masked, token to another token is a revision. The history holds no probabilities, so
the argmax is -1 and confidence, entropy and margin are NaN throughout, and every commit's
probability is unknown (`UNKNOWN_PROB`, NaN: stored as NULL, shown as "p unknown").
"""

from __future__ import annotations

import numpy as np

from explorer.decoding.callbacks import RunStart
from explorer.decoding.records import DecodeResult
from explorer.decoding.strategies import STRATEGIES
from explorer.recording.common import (
    UNKNOWN_PROB,
    checked_config,
    decoded_text,
    one_row,
    step_record,
    token_texter,
    write_run,
)
from explorer.store.database import TrajectoryStore


def record_dream_history(
    store: TrajectoryStore,
    output,
    prompt_ids,
    *,
    mask_id: int,
    tokenizer=None,
    name: str = "dream (recorded)",
    prompt: str = "",
    strategy: str = "low_confidence",
    temperature: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
) -> int:
    """Store `output` (anything with `.sequences` and `.history`) as a completed run; its id.

    `prompt_ids`: the (1, P) input ids given to diffusion_generate. `strategy` (a registered name,
    stored as the run's strategy; Dream's `alg` maps loosely: entropy, origin, ...), `temperature`
    and `seed` are stored as given. The config's `steps` is the history's length (at most the
    generated length, as every run's config must). ValueError (nothing stored) for a batch of more
    than one, an output without history, shapes that disagree, a prompt that is not the history's
    prefix."""
    history = getattr(output, "history", None)
    if getattr(output, "sequences", None) is None or not history:
        raise ValueError(
            "the output holds no history: call diffusion_generate(..., output_history=True, "
            "return_dict_in_generate=True) and pass what it returns"
        )
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    final = one_row(output.sequences, "output.sequences")
    prompt_row = one_row(prompt_ids, "prompt_ids")
    states = [one_row(entry, f"history[{i}]") for i, entry in enumerate(history)]
    P, L = prompt_row.size, final.size
    for i, state in enumerate(states):
        if state.size != L:
            raise ValueError(f"history[{i}] has {state.size} tokens but output.sequences has {L}; shapes must agree")
        if not np.array_equal(state[:P], prompt_row):
            raise ValueError(f"history[{i}] does not start with the prompt_ids: pass the input ids given to generate")
    if P == 0 or L <= P:
        raise ValueError(f"nothing was generated: the sequences have {L} tokens and the prompt {P}")
    if not np.array_equal(states[-1], final):
        raise ValueError("the history's last entry differs from output.sequences: pass diffusion_generate's output")
    G, S = L - P, len(states)
    config = checked_config(
        P, gen_length=G, steps=min(S, G), strategy=strategy, temperature=temperature, seed=seed, violations=False
    )
    records, before = [], np.full(G, mask_id, np.int64)
    for step, state in enumerate(states):
        after = state[P:]
        changed = before != after
        was_mask, is_mask = before == mask_id, after == mask_id
        committed = np.flatnonzero(changed & ~is_mask)
        remasked = np.flatnonzero(changed & is_mask)
        revised = ~was_mask[committed]
        records.append(
            step_record(
                step,
                0,
                G,
                int(was_mask.sum()),
                0.0,
                committed=committed,
                tokens=after[committed],
                remasked=remasked,
                remasked_tokens=before[remasked],
                remasked_probs=np.full(remasked.size, UNKNOWN_PROB, np.float32),
                previous=before[committed],
                revised=revised,
                previous_probs=np.full(committed.size, UNKNOWN_PROB, np.float32),
            )
        )
        before = after
    tokens = before.tolist()
    start = RunStart(
        name,
        prompt or decoded_text(tokenizer, prompt_row.tolist(), mask_id),
        prompt_row.tolist(),
        config,
        mask_id,
        device,
    )
    result = DecodeResult("completed", tokens, decoded_text(tokenizer, tokens, mask_id), S)
    return write_run(store, start, token_texter(tokenizer, mask_id), records, result)
