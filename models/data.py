"""Training windows of concatenated stories, as token-id tensors."""

from __future__ import annotations

import random

import torch

from models.corpus import iter_stories
from models.tokenizer import WordTokenizer


class StoryStream:
    """An endless, seeded stream of (B, L) windows over concatenated stories.

    Half the windows start at a story's first word (so prompts that begin a story, as
    "once upon a time" does, sit where training put them), half at a random word.
    """

    def __init__(self, tokenizer: WordTokenizer, length: int, seed: int) -> None:
        self.tokenizer = tokenizer
        self.length = length
        self.rng = random.Random(seed)
        self.stories = iter_stories(seed)

    def window(self) -> list[int]:
        skip = 0 if self.rng.random() < 0.5 else self.rng.randrange(60)
        ids: list[int] = []
        while len(ids) < self.length + skip:
            ids += [self.tokenizer.ids[w] for w in next(self.stories)]
        return ids[skip : skip + self.length]

    def batch(self, batch_size: int) -> torch.Tensor:
        return torch.tensor([self.window() for _ in range(batch_size)])  # (B, L)
