"""The lexicon of the story grammar, shared by the corpus generator and the checker.

Every dependency the checker verifies is a feature here: the sound a word starts with
(for a/an), grammatical number (for subject-verb and numeral agreement) and gender
(for pronouns and the named character).
"""

from __future__ import annotations

FEMALE, MALE = "f", "m"
SINGULAR, PLURAL = "sg", "pl"

NAMES: dict[str, str] = {
    "mia": FEMALE,
    "lily": FEMALE,
    "emma": FEMALE,
    "anna": FEMALE,
    "ella": FEMALE,
    "tom": MALE,
    "ben": MALE,
    "max": MALE,
    "leo": MALE,
    "sam": MALE,
}
CHILDREN: dict[str, str] = {"girl": FEMALE, "boy": MALE}
SUBJECT_PRONOUNS: dict[str, str] = {"she": FEMALE, "he": MALE}
POSSESSIVE_PRONOUNS: dict[str, str] = {"her": FEMALE, "his": MALE}
OBJECT_PRONOUNS: dict[str, str] = {"her": FEMALE, "him": MALE}

ADJECTIVES: tuple[str, ...] = (
    "big",
    "small",
    "little",
    "happy",
    "sad",
    "red",
    "tiny",
    "brave",
    "old",
    "angry",
    "ugly",
    "orange",
    "honest",
)
MOODS: tuple[str, ...] = ("happy", "sad", "angry", "tired", "hungry", "excited")

# Nouns that can act (subjects of verbs), then things that can only be had or seen.
ANIMALS: dict[str, str] = {  # singular -> plural
    "dog": "dogs",
    "cat": "cats",
    "bird": "birds",
    "fox": "foxes",
    "frog": "frogs",
    "owl": "owls",
    "elephant": "elephants",
    "unicorn": "unicorns",
}
THINGS: dict[str, str] = {
    "ball": "balls",
    "box": "boxes",
    "cake": "cakes",
    "hat": "hats",
    "kite": "kites",
    "apple": "apples",
    "egg": "eggs",
    "umbrella": "umbrellas",
}

# a/an follows the sound, not the letter: "an honest", "a unicorn".
VOWEL_SOUND: frozenset[str] = frozenset(
    {
        "old",
        "angry",
        "ugly",
        "orange",
        "honest",
        "owl",
        "owls",
        "elephant",
        "elephants",
        "apple",
        "apples",
        "egg",
        "eggs",
        "umbrella",
        "umbrellas",
    }
)

INTRANSITIVE: dict[str, str] = {  # singular -> plural
    "runs": "run",
    "sleeps": "sleep",
    "jumps": "jump",
    "sings": "sing",
    "plays": "play",
    "hides": "hide",
}
TRANSITIVE: dict[str, str] = {"likes": "like", "helps": "help", "follows": "follow", "sees": "see"}
COPULA: dict[str, str] = {"is": "are"}
NUMERALS_PLURAL: tuple[str, ...] = ("two", "three", "four", "many")
PREPOSITIONS: tuple[str, ...] = ("in", "near", "behind")
PLACES: tuple[str, ...] = ("park", "garden", "forest", "house", "river")

# Fixed words of the sentence frames.
FRAME_WORDS: tuple[str, ...] = (
    "once",
    "upon",
    "a",
    "an",
    "time",
    "there",
    "was",
    "were",
    "named",
    "had",
    "saw",
    "gave",
    "to",
    "the",
    "end",
    "one",
    ".",
)


def nouns_singular_to_plural() -> dict[str, str]:
    return {**ANIMALS, **THINGS}


def noun_number() -> dict[str, str]:
    """Every noun form -> SINGULAR or PLURAL."""
    table: dict[str, str] = {}
    for singular, plural in nouns_singular_to_plural().items():
        table[singular] = SINGULAR
        table[plural] = PLURAL
    return table


def verb_number() -> dict[str, str]:
    table: dict[str, str] = {}
    for singular, plural in {**INTRANSITIVE, **TRANSITIVE, **COPULA}.items():
        table[singular] = SINGULAR
        table[plural] = PLURAL
    return table


def all_words() -> list[str]:
    """The whole vocabulary of the grammar, sorted (specials are the tokenizer's business)."""
    words: set[str] = set(FRAME_WORDS) | set(NAMES) | set(CHILDREN) | set(ADJECTIVES) | set(MOODS)
    words |= set(SUBJECT_PRONOUNS) | set(POSSESSIVE_PRONOUNS) | set(OBJECT_PRONOUNS)
    words |= set(noun_number()) | set(verb_number()) | set(NUMERALS_PLURAL)
    words |= set(PREPOSITIONS) | set(PLACES)
    return sorted(words)


def starts_with_vowel_sound(word: str) -> bool:
    return word in VOWEL_SOUND


def article_for(word: str) -> str:
    return "an" if starts_with_vowel_sound(word) else "a"
