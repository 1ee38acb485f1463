"""Vocabulary: tokenizer, frequency threshold, JSON round trip, unknown words."""

import json

import pytest

from model.vocabulary import SPECIAL_TOKENS, Vocabulary, tokenize


def test_tokenizer_needs_no_downloads_and_keeps_commas():
    assert tokenize("A Red circle, a blue square.") == ["a", "red", "circle", ",", "a", "blue", "square"]
    assert tokenize("  Don't  stop-sign!  ") == ["don't", "stop-sign"]


def test_build_applies_the_frequency_threshold():
    vocab = Vocabulary.build(["a red circle"] * 4 + ["a blue circle"] * 3, min_count=4)
    assert list(vocab.itos[:4]) == list(SPECIAL_TOKENS)
    assert "red" in vocab and "circle" in vocab and "a" in vocab
    assert "blue" not in vocab, "seen 3 times, below the threshold of 4"


def test_unknown_words_map_to_unk_and_encoding_brackets_with_start_end():
    vocab = Vocabulary(["red", "circle"])
    ids = vocab.encode("red unicorn circle")
    assert ids == [vocab.start_id, vocab.stoi["red"], vocab.unk_id, vocab.stoi["circle"], vocab.end_id]
    assert vocab.decode(ids) == ["red", "<unk>", "circle"]


def test_decode_stops_at_end_and_skips_padding():
    vocab = Vocabulary(["red", "circle"])
    ids = [vocab.start_id, vocab.stoi["red"], vocab.pad_id, vocab.end_id, vocab.stoi["circle"]]
    assert vocab.decode(ids) == ["red"]


def test_json_round_trip_keeps_every_id():
    vocab = Vocabulary.build(["the cat sat on the mat"] * 5, min_count=1)
    restored = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored.itos == vocab.itos and restored.stoi == vocab.stoi


def test_from_dict_refuses_a_vocabulary_without_the_special_tokens():
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary.from_dict({"itos": ["cat", "<pad>", "<start>", "<end>", "<unk>"]})
