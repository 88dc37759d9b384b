"""One-click teaching scenarios on the embedded model, each reproducible (fixed seed) and each
verified by tests/test_presets.py to show what its explanation promises."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    explanation: str  # two sentences: what to look at
    settings: dict = field(default_factory=dict)  # DecodeConfig fields, "prompt", "model", "pace_ms"
    # (a field not named here gets the Decode form's default when the preset is loaded)


PRESETS: tuple[Preset, ...] = (
    Preset(
        "a/an violation at 8 tokens per step",
        "Eight tokens are committed per step from independent marginals, so the article and the "
        "noun after it can be chosen in the same step without seeing each other: look for 'an girl'. "
        "Scrub to the step that committed them and compare their colours: same colour, same step.",
        {
            "prompt": "once upon a time there was",
            "gen_length": 32,
            "steps": 4,
            "strategy": "low_confidence",
            "temperature": 0.7,
            "seed": 2,
            "pace_ms": 400,
        },
    ),
    Preset(
        "One token per step stays grammatical",
        "With one token per step every commit sees all earlier ones, and the story checks valid. "
        "Note the order: full stops and fixed words first, names and adjectives (the real choices) last.",
        {
            "prompt": "once upon a time",
            "gen_length": 64,
            "steps": 64,
            "strategy": "low_confidence",
            "temperature": 0.0,
            "seed": 0,
        },
    ),
    Preset(
        "16 tokens per step breaks the story",
        "The same prompt with 4 steps for 64 tokens: whole phrases are guessed at once and repeat or "
        "collide (double full stops, missing nouns). Compare with the one-token-per-step preset in the Compare tab.",
        {
            "prompt": "once upon a time",
            "gen_length": 64,
            "steps": 4,
            "strategy": "low_confidence",
            "temperature": 0.0,
            "seed": 0,
        },
    ),
    Preset(
        "Entropy order drifts to left-to-right",
        "Committing the lowest-entropy position first makes decoding nearly autoregressive: the "
        "commit-order map is close to a diagonal and the AR-ness tau is high (about 0.7). "
        "Try strategy random on the same prompt for a tau near 0.",
        {
            "prompt": "once upon a time",
            "gen_length": 64,
            "steps": 64,
            "strategy": "entropy",
            "temperature": 0.0,
            "seed": 0,
            "pace_ms": 60,
        },
    ),
    Preset(
        "Fast-dLLM threshold: adaptive steps",
        "The threshold rule commits every position whose confidence is at least 0.9 (and always one), "
        "so easy stretches go in parallel and hard words one at a time. The tokens-per-step bars show "
        "where the model was sure.",
        {
            "prompt": "once upon a time",
            "gen_length": 64,
            "steps": 64,
            "strategy": "threshold",
            "threshold": 0.9,
            "temperature": 0.0,
            "seed": 0,
        },
    ),
    Preset(
        "Two full stops in one step: a dependency violation",
        "Two tokens per step at temperature 0.7: step 6 commits '.' and '.' side by side, neither seeing the "
        "other, and the story breaks ('foxes . .'). The violation map shows them in deep red, and the pairwise "
        "S matrix of step 6 reads about −9 nats: each token makes the other very unlikely.",
        {
            "prompt": "once upon a time",
            "gen_length": 32,
            "steps": 16,
            "strategy": "low_confidence",
            "temperature": 0.7,
            "seed": 5,
            "violations": True,
        },
    ),
    Preset(
        "Energy repairs the violation (Uni-E)",
        "The same run with the Uni-E energy: each step draws 8 candidates and keeps one with probability "
        "softmax(−E), which favours those the model's own left-to-right chain agrees with. The two full stops "
        "are gone and the story checks valid. The candidates figure shows the energies each step chose "
        "between; compare this run with the previous preset's in the Compare tab.",
        {
            "prompt": "once upon a time",
            "gen_length": 32,
            "steps": 16,
            "strategy": "low_confidence",
            "temperature": 0.7,
            "seed": 5,
            "violations": True,
            "energies": (("uni", 1.0),),
            "energy_candidates": 8,
            "energy_window": (0.0, 1.0),
        },
    ),
    Preset(
        "Lookahead: parallel and still grammatical",
        "The a/an preset's prompt and seed, decoded by the lookahead gate: each step proposes the 8 most "
        "confident tokens, reveals them one by one in a single batched model call, and keeps them only while "
        "none loses more than 1 nat or changes its top choice. About 4 tokens per step, one model call per "
        "step, and no 'an girl': the step line says which proposals each step rejected and why.",
        {
            "prompt": "once upon a time there was",
            "gen_length": 32,
            "steps": 32,
            "strategy": "lookahead",
            "temperature": 0.7,
            "seed": 2,
            "violations": True,
        },
    ),
    Preset(
        "Re-masking (RCR): tokens taken back",
        "Running-confidence remasking fills every mask each step, then takes back the least confident tokens "
        "so that only the scheduled number stays. Tokens that were taken back carry an orange ↺ badge (hover: "
        "at which step, and which word was removed); scrub the step slider to watch masks come back.",
        {"prompt": "once upon a time", "gen_length": 32, "steps": 8, "strategy": "rcr", "temperature": 0.0, "seed": 0},
    ),
    Preset(
        "XDLM: a revision repairs the story",
        "The XDLM model with LLaDA-XDLM's sampler: 4 tokens per step, plus a budget of revisions of visible tokens. "
        "Step 1 commits 'girl' and 'he' together, neither seeing the other; at step 2 the sampler revises 'girl' "
        "into 'boy' (purple ⇄ badge; hover for its history, the changes map shows it) and the story checks valid. "
        "Run the same seed with low_confidence (no revisions) to see the story break.",
        {
            "prompt": "once upon a time",
            "model": "embedded-xdlm",
            "gen_length": 32,
            "steps": 8,
            "strategy": "xdlm_revise",
            "xdlm_k": 0.1,
            "temperature": 0.7,
            "seed": 1,
        },
    ),
)
