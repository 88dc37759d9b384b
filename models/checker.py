"""Exact checker for text in the story grammar (`models.corpus`).

`check(text_or_words)` parses the text sentence by sentence and returns a `CheckResult`
listing every violation with its kind and the word positions involved (0-based indices into
the whitespace-separated words). A sentence cut off by the end of the text is checked as far
as it goes: generation stops at a fixed length, so a valid prefix is not an error.

Kinds:
- `a_an`: "a" before a vowel sound or "an" before a consonant sound (article, next word);
- `number`: a numeral or "a/an/one" that disagrees with its noun (determiner, noun);
- `subject_verb`: verb number differs from its subject's, also "there was/were" (noun, verb);
- `name_gender`: "a girl named tom" (child noun, name);
- `pronoun_gender`: a pronoun of the other gender than the story's child (pronoun, name);
- `character_name`: the child is called by another name than in the introduction;
- `syntax`: a word the grammar does not allow there (the rest of that sentence is skipped);
- `unknown_word`: a word outside the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models import grammar as g

KINDS = ("a_an", "number", "subject_verb", "name_gender", "pronoun_gender", "character_name", "syntax", "unknown_word")

_NOUN_NUMBER = g.noun_number()
_VERB_NUMBER = g.verb_number()
_ANIMAL_FORMS = set(g.ANIMALS) | set(g.ANIMALS.values())
_THING_FORMS = set(g.THINGS) | set(g.THINGS.values())
_VOCAB = set(g.all_words())


@dataclass(frozen=True)
class Violation:
    kind: str
    positions: tuple[int, ...]  # every word position the violation involves, first is the culprit
    message: str

    @property
    def position(self) -> int:
        return self.positions[0]


@dataclass(frozen=True)
class CheckResult:
    words: tuple[str, ...]
    violations: tuple[Violation, ...]
    n_sentences: int  # complete sentences (ending in ".")
    n_valid_sentences: int

    @property
    def valid(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        if self.valid:
            return "valid"
        return "; ".join(f"{v.kind}@{v.position}: {v.message}" for v in self.violations)


class _EndOfText(Exception):
    """The text stopped inside a sentence: what was read so far was fine."""


class _SyntaxError(Exception):
    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position = position


@dataclass
class _Character:
    name: str | None = None
    name_position: int | None = None
    gender: str | None = None
    gender_position: int | None = None  # the pronoun that set the gender, in text without an intro


@dataclass
class _Parser:
    words: list[str]
    pos: int = 0
    character: _Character = field(default_factory=_Character)
    found: list[Violation] = field(default_factory=list)

    # ---- reading -------------------------------------------------------------------------
    def peek(self, offset: int = 0) -> str:
        if self.pos + offset >= len(self.words):
            raise _EndOfText
        return self.words[self.pos + offset]

    def take(self, allowed: set[str] | tuple[str, ...] | dict, what: str) -> tuple[int, str]:
        word = self.peek()
        if word not in allowed:
            raise _SyntaxError(self.pos, f"expected {what}, found {word!r}")
        self.pos += 1
        return self.pos - 1, word

    def flag(self, kind: str, positions: tuple[int, ...], message: str) -> None:
        self.found.append(Violation(kind, positions, message))

    # ---- agreement checks ----------------------------------------------------------------
    def check_gender(self, position: int, word: str, gender: str) -> None:
        c = self.character
        if c.gender is None:  # text without an introduction: the first pronoun decides
            c.gender, c.gender_position = gender, position
            return
        if gender != c.gender:
            anchor = (c.name_position,) if c.name_position is not None else ()
            self.flag("pronoun_gender", (position, *anchor), f"{word!r} does not match {c.name or 'the character'}")

    def check_name(self, position: int, name: str) -> None:
        c = self.character
        if c.name is None:
            if c.gender is not None and c.gender != g.NAMES[name]:
                self.flag(
                    "pronoun_gender",
                    (c.gender_position, position),
                    f"{self.words[c.gender_position]!r} does not match {name}",
                )
            c.name, c.name_position, c.gender = name, position, g.NAMES[name]
        elif name != c.name:
            self.flag("character_name", (position, c.name_position), f"the child is {c.name!r}, not {name!r}")

    def check_article(self, article_pos: int, article: str) -> None:
        following = self.words[article_pos + 1] if article_pos + 1 < len(self.words) else None
        if following is None or article not in ("a", "an"):
            return
        wanted = g.article_for(following)
        if article != wanted:
            self.flag(
                "a_an", (article_pos, article_pos + 1), f"{article!r} before {following!r} (should be {wanted!r})"
            )

    # ---- phrases -------------------------------------------------------------------------
    def noun_phrase(self, nouns: set[str], determiners: set[str]) -> tuple[int, str]:
        """[determiner] [adjective] noun; returns the noun's position and number."""
        det_pos, det = self.take(determiners, "a determiner")
        self.check_article(det_pos, det)
        if self.peek() in g.ADJECTIVES:
            self.pos += 1
        noun_pos, noun = self.take(nouns, "a noun")
        number = _NOUN_NUMBER[noun]
        det_number = {"a": g.SINGULAR, "an": g.SINGULAR, "one": g.SINGULAR}.get(
            det, g.PLURAL if det in g.NUMERALS_PLURAL else number
        )
        if det_number != number:
            self.flag("number", (det_pos, noun_pos), f"{det!r} with {noun!r}")
        return noun_pos, number

    def indefinite(self, nouns: set[str]) -> tuple[int, str]:
        return self.noun_phrase(nouns, {"a", "an", "one", *g.NUMERALS_PLURAL})

    def place(self) -> None:
        self.take(g.PREPOSITIONS, "a preposition")
        self.take({"the"}, "'the'")
        self.take(g.PLACES, "a place")

    def verb(self, allowed: dict[str, str], subject: tuple[int, str]) -> str:
        forms = set(allowed) | set(allowed.values())
        verb_pos, verb = self.take(forms, "a verb")
        noun_pos, number = subject
        if _VERB_NUMBER[verb] != number:
            self.flag("subject_verb", (verb_pos, noun_pos), f"{verb!r} does not agree with {self.words[noun_pos]!r}")
        return verb

    # ---- sentences -----------------------------------------------------------------------
    def intro(self) -> None:
        for word in ("once", "upon", "a", "time", "there", "was"):
            self.take({word}, repr(word))
        self.character = _Character()
        article_pos, article = self.take({"a", "an"}, "'a' or 'an'")
        self.check_article(article_pos, article)
        if self.peek() in g.ADJECTIVES:
            self.pos += 1
        child_pos, child = self.take(g.CHILDREN, "'girl' or 'boy'")
        self.take({"named"}, "'named'")
        name_pos, name = self.take(g.NAMES, "a name")
        self.character = _Character(name, name_pos, g.NAMES[name])
        if g.CHILDREN[child] != g.NAMES[name]:
            self.flag("name_gender", (child_pos, name_pos), f"a {child} named {name}")

    def pronoun_sentence(self) -> None:
        pos, pronoun = self.take(g.SUBJECT_PRONOUNS, "a pronoun")
        self.check_gender(pos, pronoun, g.SUBJECT_PRONOUNS[pronoun])
        verb = self.take({"had", "gave", "was"}, "'had', 'gave' or 'was'")[1]
        if verb == "had":
            self.indefinite(_THING_FORMS)
        elif verb == "was":
            self.take(g.MOODS, "a mood")
        else:
            poss_pos, poss = self.take(g.POSSESSIVE_PRONOUNS, "'his' or 'her'")
            self.check_gender(poss_pos, poss, g.POSSESSIVE_PRONOUNS[poss])
            self.take(g.THINGS, "a thing")
            self.take({"to"}, "'to'")
            self.noun_phrase(_ANIMAL_FORMS, {"the"})

    def name_sentence(self) -> None:
        pos, name = self.take(g.NAMES, "a name")
        self.check_name(pos, name)
        self.take({"saw"}, "'saw'")
        self.indefinite(_ANIMAL_FORMS | _THING_FORMS)
        self.place()

    def the_sentence(self) -> None:
        if self.peek(1) == "end":
            self.pos += 2
            return
        subject = self.noun_phrase(_ANIMAL_FORMS, {"the"})
        word = self.peek()
        if word in ("is", "are"):
            self.verb(g.COPULA, subject)
            self.take(g.MOODS, "a mood")
        elif word in _VERB_NUMBER and (word in g.TRANSITIVE or word in g.TRANSITIVE.values()):
            self.verb(g.TRANSITIVE, subject)
            pos, pronoun = self.take(g.OBJECT_PRONOUNS, "'him' or 'her'")
            self.check_gender(pos, pronoun, g.OBJECT_PRONOUNS[pronoun])
        else:
            self.verb(g.INTRANSITIVE, subject)
            if self.peek() != ".":
                self.place()

    def there_sentence(self) -> None:
        self.take({"there"}, "'there'")
        verb_pos, verb = self.take({"was", "were"}, "'was' or 'were'")
        noun_pos, number = self.indefinite(_ANIMAL_FORMS)
        if (verb == "was") != (number == g.SINGULAR):
            self.flag("subject_verb", (verb_pos, noun_pos), f"{verb!r} does not agree with {self.words[noun_pos]!r}")
        self.place()

    def sentence(self) -> None:
        first = self.peek()
        if first == "once":
            self.intro()
        elif first in g.SUBJECT_PRONOUNS:
            self.pronoun_sentence()
        elif first in g.NAMES:
            self.name_sentence()
        elif first == "the":
            self.the_sentence()
        elif first == "there":
            self.there_sentence()
        else:
            raise _SyntaxError(self.pos, f"no sentence starts with {first!r}")
        self.take({"."}, "'.'")


def check(text: str | list[str] | tuple[str, ...]) -> CheckResult:
    """Every violation in `text` (a string of space-separated words, or a list of words)."""
    words = text.split() if isinstance(text, str) else list(text)
    parser = _Parser(words)
    unknown = [i for i, w in enumerate(words) if w not in _VOCAB]
    for i in unknown:
        parser.flag("unknown_word", (i,), f"{words[i]!r} is not in the vocabulary")
    n_sentences = n_valid = 0
    while parser.pos < len(words):
        start, before = parser.pos, len(parser.found)
        try:
            parser.sentence()
        except _EndOfText:
            break
        except _SyntaxError as error:
            if error.position not in unknown:
                parser.flag("syntax", (error.position,), str(error))
            parser.pos = _after_next_period(words, error.position)
        if parser.pos > start and words[parser.pos - 1] == ".":
            n_sentences += 1
            n_valid += len(parser.found) == before and not any(start <= i < parser.pos for i in unknown)
    violations = sorted(parser.found, key=lambda v: (v.position, v.kind))
    return CheckResult(tuple(words), tuple(violations), n_sentences, n_valid)


def _after_next_period(words: list[str], position: int) -> int:
    for i in range(position, len(words)):
        if words[i] == ".":
            return i + 1
    return len(words)
