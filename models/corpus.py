"""Seeded generator of short stories from the grammar in `models.grammar`.

A story introduces one named child, then says a few things about the child, some animals
and some things, then ends with "the end .". Each sentence frame carries a dependency a
reader can see and `models.checker` verifies exactly:

- a/an agrees with the sound of the next word ("an old dog", "a unicorn", "an honest fox");
- numerals agree with the noun ("one cat", "two cats") and "there was/were" with its noun;
- subject-verb number ("the dog runs", "the dogs run", "the owls are happy");
- the child's noun agrees with the name ("a girl named mia"), every later pronoun with the
  child's gender ("she had ...", "he gave his ball ...", "the dog likes him"), and the child
  is called by the same name throughout ("mia saw ...").

Stories are lists of words; `generate_text` joins them with spaces.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from models import grammar as g

Sentence = list[str]


class _Story:
    """One story in progress: the child and the random source."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.name = rng.choice(sorted(g.NAMES))
        self.gender = g.NAMES[self.name]

    def pronoun(self, table: dict[str, str]) -> str:
        return next(word for word, gender in table.items() if gender == self.gender)

    def maybe_adjective(self) -> list[str]:
        return [self.rng.choice(g.ADJECTIVES)] if self.rng.random() < 0.5 else []

    def noun_phrase(self, nouns: dict[str, str], determiner: str) -> list[str]:
        """determiner: 'indefinite' (a/an/one or a numeral) or 'the'."""
        singular = self.rng.choice(sorted(nouns))
        plural = self.rng.random() < 0.4
        noun = nouns[singular] if plural else singular
        words = self.maybe_adjective() + [noun]
        if determiner == "the":
            return ["the"] + words
        if plural:
            return [self.rng.choice(g.NUMERALS_PLURAL)] + words
        if self.rng.random() < 0.2:
            return ["one"] + words
        return [g.article_for(words[0])] + words

    def place(self) -> list[str]:
        return [self.rng.choice(g.PREPOSITIONS), "the", self.rng.choice(g.PLACES)]


def _intro(s: _Story) -> Sentence:
    child = next(noun for noun, gender in g.CHILDREN.items() if gender == s.gender)
    words = s.maybe_adjective() + [child]
    return ["once", "upon", "a", "time", "there", "was", g.article_for(words[0]), *words, "named", s.name, "."]


def _had(s: _Story) -> Sentence:
    return [s.pronoun(g.SUBJECT_PRONOUNS), "had", *s.noun_phrase(g.THINGS, "indefinite"), "."]


def _saw(s: _Story) -> Sentence:
    nouns = {**g.ANIMALS, **g.THINGS}
    return [s.name, "saw", *s.noun_phrase(nouns, "indefinite"), *s.place(), "."]


def _animal_acts(s: _Story) -> Sentence:
    subject = s.noun_phrase(g.ANIMALS, "the")
    plural = g.noun_number()[subject[-1]] == g.PLURAL
    if s.rng.random() < 0.3:
        verb = "are" if plural else "is"
        return [*subject, verb, s.rng.choice(g.MOODS), "."]
    singular_verb = s.rng.choice(sorted(g.INTRANSITIVE))
    verb = g.INTRANSITIVE[singular_verb] if plural else singular_verb
    tail = s.place() if s.rng.random() < 0.5 else []
    return [*subject, verb, *tail, "."]


def _gave(s: _Story) -> Sentence:
    thing = s.rng.choice(sorted(g.THINGS))
    receiver = s.noun_phrase(g.ANIMALS, "the")
    return [s.pronoun(g.SUBJECT_PRONOUNS), "gave", s.pronoun(g.POSSESSIVE_PRONOUNS), thing, "to", *receiver, "."]


def _there_was(s: _Story) -> Sentence:
    phrase = s.noun_phrase(g.ANIMALS, "indefinite")
    verb = "were" if g.noun_number()[phrase[-1]] == g.PLURAL else "was"
    return ["there", verb, *phrase, *s.place(), "."]


def _animal_likes(s: _Story) -> Sentence:
    subject = s.noun_phrase(g.ANIMALS, "the")
    singular_verb = s.rng.choice(sorted(g.TRANSITIVE))
    plural = g.noun_number()[subject[-1]] == g.PLURAL
    verb = g.TRANSITIVE[singular_verb] if plural else singular_verb
    return [*subject, verb, s.pronoun(g.OBJECT_PRONOUNS), "."]


def _feeling(s: _Story) -> Sentence:
    return [s.pronoun(g.SUBJECT_PRONOUNS), "was", s.rng.choice(g.MOODS), "."]


BODY_SENTENCES: tuple[Callable[[_Story], Sentence], ...] = (
    _had,
    _saw,
    _animal_acts,
    _gave,
    _there_was,
    _animal_likes,
    _feeling,
)


def generate_story(rng: random.Random) -> list[str]:
    story = _Story(rng)
    words = _intro(story)
    for _ in range(rng.randint(3, 6)):
        words += rng.choice(BODY_SENTENCES)(story)
    return words + ["the", "end", "."]


def iter_stories(seed: int) -> Iterator[list[str]]:
    rng = random.Random(seed)
    while True:
        yield generate_story(rng)


def generate_text(seed: int, n_stories: int) -> str:
    stories = iter_stories(seed)
    return " ".join(" ".join(next(stories)) for _ in range(n_stories))
