"""Every teaching preset shows its phenomenon on the embedded model (each is a fixed seed).

A preset's settings are decoded in-process (explorer.api.decode), as the worker would; the
phenomenon its explanation promises is then checked on the result.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from explorer.adapters.loading import load_denoiser
from explorer.api import decode
from explorer.decoding.config import DecodeConfig
from explorer.presets import PRESETS
from explorer.store.arrays import RunArrays
from explorer.views.metrics import arness
from models.checker import check

CONFIG_FIELDS = {f.name for f in fields(DecodeConfig)}


def config_of(preset) -> DecodeConfig:
    return DecodeConfig(**{k: v for k, v in preset.settings.items() if k in CONFIG_FIELDS})


def run(denoiser, preset, config: DecodeConfig | None = None):
    """(checker result, RunArrays, decoded) of a preset (or of `config` on its prompt)."""
    prompt = preset.settings["prompt"]
    decoded = decode(prompt, denoiser, config or config_of(preset))
    arrays = RunArrays.from_records(
        {"gen_length": decoded.result.token_ids.__len__(), "mask_id": decoded.mask_id}, decoded.steps
    )
    return check(f"{prompt} {decoded.result.text}"), arrays, decoded


def kinds(result) -> set[str]:
    return {v.kind for v in result.violations}


def a_an(denoiser, preset):
    result, _, _ = run(denoiser, preset)
    assert "a_an" in kinds(result), result.summary()


def valid(denoiser, preset):
    result, _, _ = run(denoiser, preset)
    assert result.valid, result.summary()


def broken(denoiser, preset):
    result, _, _ = run(denoiser, preset)
    assert len(result.violations) >= 2, result.summary()


def left_to_right(denoiser, preset):
    _, arrays, _ = run(denoiser, preset)
    assert arness(arrays.commit_step) > 0.6


def adaptive(denoiser, preset):
    _, arrays, _ = run(denoiser, preset)
    assert arrays.n_steps < arrays.gen_length and arrays.n_committed.max() > 1


def two_full_stops(denoiser, preset):
    result, arrays, decoded = run(denoiser, preset)
    assert not result.valid, "the run should break"
    totals = {
        r.step: r.extras.to_json()["violations"]["total"] for r in decoded.steps if "violations" in r.extras.to_json()
    }
    worst = min(totals, key=totals.get)
    assert worst == 6 and totals[6] < -5, totals  # the step the explanation names, about -9 nats
    words = decoded.result.text.split()
    assert [words[p] for p in decoded.steps[6].committed] == [".", "."]
    assert np.nanmin(arrays.violation) < -5


def energy_repairs(denoiser, preset):
    config = config_of(preset)
    assert config.energies, "this preset must run an energy"
    plain, _, _ = run(denoiser, preset, replace(config, energies=()))
    assert not plain.valid, "without the energy the same run must have a violation"
    repaired, arrays, decoded = run(denoiser, preset, config)
    assert repaired.valid, repaired.summary()
    assert any("energy" in r.extras.to_json() for r in decoded.steps)
    assert np.isfinite(arrays.energy).any()


def remasks(denoiser, preset):
    _, arrays, _ = run(denoiser, preset)
    assert arrays.remasks.step.size > 0 and arrays.remask_count.max() >= 1


def revision_repairs(denoiser, preset):
    """The story checks valid, a revision made it so (putting the replaced word back breaks it),
    and the same settings without revisions (low_confidence) break."""
    result, arrays, decoded = run(denoiser, preset)
    assert result.valid, result.summary()
    assert arrays.commits.revised.any(), "the run must revise a token"
    prompt, final = preset.settings["prompt"], list(decoded.result.token_ids)
    repairs = []
    for r in decoded.steps:
        for pos, old, new in zip(r.committed[r.revised], r.previous[r.revised], r.tokens[r.revised]):
            undone = [int(old) if i == pos else t for i, t in enumerate(final)]
            if final[pos] == new and not check(f"{prompt} {denoiser.decode(undone)}").valid:
                repairs.append((r.step, denoiser.token_text(int(old)), denoiser.token_text(int(new))))
    assert (2, "girl", "boy") in repairs, repairs  # the revision the explanation names ...
    words = {denoiser.token_text(int(t)) for t in decoded.steps[1].tokens}
    assert {"girl", "he"} <= words  # ... of a word committed in step 1 with the pronoun
    plain, _, _ = run(denoiser, preset, replace(config_of(preset), strategy="low_confidence"))
    assert not plain.valid, "without revisions the same run should break"


def lookahead_parallel(denoiser, preset):
    """Valid where the a/an preset (same prompt and seed, 8 tokens per step) breaks, at about 4
    tokens per step, one model call per step, with rejected proposals recorded."""
    result, arrays, decoded = run(denoiser, preset)
    assert result.valid, result.summary()
    assert arrays.gen_length / arrays.n_steps >= 3.5, arrays.n_steps
    calls = sum(r.extras.cost.calls for r in decoded.steps)
    assert calls <= arrays.n_steps + 1, calls
    assert any(not all(r.extras.gate.accepted) for r in decoded.steps)
    plain = replace(config_of(preset), strategy="low_confidence", steps=4)
    broken_run, _, _ = run(denoiser, preset, plain)
    assert "a_an" in kinds(broken_run), broken_run.summary()


# Preset name -> the check of what its explanation promises.
PHENOMENA = {
    "a/an violation at 8 tokens per step": a_an,
    "One token per step stays grammatical": valid,
    "16 tokens per step breaks the story": broken,
    "Entropy order drifts to left-to-right": left_to_right,
    "Fast-dLLM threshold: adaptive steps": adaptive,
    "Two full stops in one step: a dependency violation": two_full_stops,
    "Energy repairs the violation (Uni-E)": energy_repairs,
    "Lookahead: parallel and still grammatical": lookahead_parallel,
    "Re-masking (RCR): tokens taken back": remasks,
    "XDLM: a revision repairs the story": revision_repairs,
}


def test_every_preset_has_a_check():
    assert {p.name for p in PRESETS} == set(PHENOMENA)


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_shows_its_phenomenon(denoiser, preset):
    model = preset.settings.get("model", "embedded")
    PHENOMENA[preset.name](denoiser if model == "embedded" else load_denoiser(model), preset)
