"""Word-level tokenizer for the embedded models: one id per word of the story grammar.

Text is lower-cased and split into words and full stops. A word outside the vocabulary is
refused by default (`UnknownWordsError` names every such word and suggests close ones),
because the embedded models never saw the unknown token in training and would condition on
noise; `encode(..., unknown="map")` maps such words to `<unk>` instead.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

from models.grammar import all_words

PAD, MASK, UNK = "<pad>", "<mask>", "<unk>"
SPECIALS = (PAD, MASK, UNK)
_WORD = re.compile(r"[a-z]+|[^\sa-z]")


SHOWN_UNKNOWN = 5  # unknown words named (and given close matches) in the error; the rest counted
SHOWN_WORD_CHARS = 40  # a longer unknown word is cut in the error


class UnknownWordsError(ValueError):
    """The words of a text that are not in the vocabulary: the first few named, with close matches."""

    def __init__(self, words: list[str], suggestions: dict[str, list[str]]) -> None:
        hints = []
        for word in words[:SHOWN_UNKNOWN]:
            close = suggestions.get(word)
            shown = word if len(word) <= SHOWN_WORD_CHARS else word[: SHOWN_WORD_CHARS - 1] + "…"
            hints.append(f"{shown!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        more = f" and {len(words) - SHOWN_UNKNOWN:,} more" if len(words) > SHOWN_UNKNOWN else ""
        super().__init__("words not in the embedded vocabulary: " + ", ".join(hints) + more)
        self.words = words


class WordTokenizer:
    def __init__(self, vocab: list[str]) -> None:
        if list(vocab[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        self.vocab = list(vocab)
        self.ids = {word: i for i, word in enumerate(self.vocab)}
        self.pad_id, self.mask_id, self.unk_id = (self.ids[s] for s in SPECIALS)

    @classmethod
    def from_grammar(cls) -> WordTokenizer:
        return cls([*SPECIALS, *all_words()])

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        return cls(json.loads(Path(path).read_text())["vocab"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"vocab": self.vocab}, indent=0) + "\n")

    def __len__(self) -> int:
        return len(self.vocab)

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def unknown_words(self, text: str) -> list[str]:
        seen: dict[str, None] = {}
        for word in self.split(text):
            if word not in self.ids:
                seen[word] = None
        return list(seen)

    def encode(self, text: str, unknown: str = "refuse") -> list[int]:
        """unknown: 'refuse' (raise UnknownWordsError) or 'map' (to the <unk> id)."""
        if unknown not in ("refuse", "map"):
            raise ValueError("unknown must be 'refuse' or 'map'")
        missing = self.unknown_words(text)
        if missing and unknown == "refuse":
            words = self.vocab[len(SPECIALS) :]
            shown = missing[:SHOWN_UNKNOWN]  # a close-match search per word is slow: only for those named
            raise UnknownWordsError(missing, {w: difflib.get_close_matches(w[:40], words, n=3) for w in shown})
        return [self.ids.get(word, self.unk_id) for word in self.split(text)]

    def token(self, token_id: int) -> str:
        return self.vocab[token_id]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        words = [self.vocab[i] for i in ids]
        if skip_special:
            words = [w for w in words if w not in SPECIALS]
        return " ".join(words)
