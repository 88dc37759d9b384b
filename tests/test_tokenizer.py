"""The word-level tokenizer of the embedded models."""

import json

import pytest

from models import EMBEDDED_DIR, corpus
from models.grammar import all_words
from models.tokenizer import MASK, PAD, SPECIALS, UNK, UnknownWordsError, WordTokenizer


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.from_grammar()


def test_specials_come_first(tok):
    assert SPECIALS == (PAD, MASK, UNK) == ("<pad>", "<mask>", "<unk>")
    assert (tok.pad_id, tok.mask_id, tok.unk_id) == (0, 1, 2)
    assert tok.token(tok.mask_id) == "<mask>"
    assert tok.vocab[3:] == all_words()
    assert len(tok) == 3 + len(all_words())
    assert len(set(tok.vocab)) == len(tok.vocab)


def test_embedded_vocab_is_the_grammar_vocab(tok):
    embedded = WordTokenizer.load(EMBEDDED_DIR / "vocab.json")
    assert embedded.vocab == tok.vocab
    assert embedded.mask_id == 1


def test_vocab_must_start_with_specials():
    with pytest.raises(ValueError):
        WordTokenizer(["a", "<pad>", "<mask>", "<unk>"])
    with pytest.raises(ValueError):
        WordTokenizer(["<pad>", "<unk>", "<mask>", "a"])


def test_round_trip(tok):
    text = corpus.generate_text(11, 5)
    ids = tok.encode(text)
    assert len(ids) == len(text.split())
    assert all(3 <= i < len(tok) for i in ids)
    assert tok.decode(ids) == text
    assert [tok.token(i) for i in ids] == text.split()


def test_split_lowercases_and_separates_full_stops(tok):
    assert tok.split("Mia saw a Cat.The end.") == ["mia", "saw", "a", "cat", ".", "the", "end", "."]
    assert tok.encode("Mia saw a Cat.") == tok.encode("mia saw a cat .")
    assert tok.decode(tok.encode("Mia saw a Cat.")) == "mia saw a cat ."


def test_decode_skip_special(tok):
    ids = tok.encode("the dog runs .")
    mixed = [tok.pad_id, *ids[:2], tok.mask_id, ids[2], tok.unk_id, ids[3]]
    assert tok.decode(mixed) == "<pad> the dog <mask> runs <unk> ."
    assert tok.decode(mixed, skip_special=True) == "the dog runs ."


def test_unknown_words_refused_with_every_word_and_suggestions(tok):
    with pytest.raises(UnknownWordsError) as info:
        tok.encode("the dgo saw a zebraa and the dgo .")
    error = info.value
    assert isinstance(error, ValueError)
    assert error.words == ["dgo", "zebraa", "and"]  # each once, in order of appearance
    message = str(error)
    for word in ("'dgo'", "'zebraa'", "'and'"):
        assert word in message
    assert "'dgo' (did you mean dog" in message
    assert "'and' (did you mean an" in message
    assert "'zebraa' (did you mean" not in message  # nothing close
    assert message.count("'dgo'") == 1


def test_unknown_words_listed(tok):
    assert tok.unknown_words("The dog. ZEBRA, cat") == ["zebra", ","]
    assert tok.unknown_words("the dog runs .") == []


def test_unknown_map(tok):
    ids = tok.encode("the zebra runs .", unknown="map")
    assert ids == [tok.ids["the"], tok.unk_id, tok.ids["runs"], tok.ids["."]]
    assert tok.decode(ids) == "the <unk> runs ."


def test_bad_unknown_mode(tok):
    with pytest.raises(ValueError):
        tok.encode("the dog", unknown="ignore")


def test_save_load_round_trip(tmp_path, tok):
    path = tmp_path / "vocab.json"
    tok.save(path)
    assert json.loads(path.read_text())["vocab"] == tok.vocab
    loaded = WordTokenizer.load(path)
    assert loaded.vocab == tok.vocab
    assert loaded.ids == tok.ids
    assert (loaded.pad_id, loaded.mask_id, loaded.unk_id) == (tok.pad_id, tok.mask_id, tok.unk_id)
    text = "once upon a time there was an honest girl named mia ."
    assert loaded.encode(text) == tok.encode(text)


def test_save_load_custom_vocab(tmp_path):
    custom = WordTokenizer([*SPECIALS, "zebra", "cat"])
    custom.save(tmp_path / "v.json")
    loaded = WordTokenizer.load(tmp_path / "v.json")
    assert loaded.encode("cat zebra") == [4, 3]
    with pytest.raises(UnknownWordsError):
        loaded.encode("dog")
