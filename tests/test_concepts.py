"""The auxiliary concept targets: words and phrases, which bind attributes that words alone do not."""

import torch

from model.vocabulary import Vocabulary
from training import train
from training.checkpoints import load_checkpoint
from training.coco_data import collate_captions
from training.concepts import ConceptHead, ConceptVocabulary, ngrams
from tests.test_training import dataset, train_args  # noqa: F401  (module fixture and argument builder)

CAPTIONS = ["a red circle and a blue square", "a red square and a blue circle", "a green triangle"]


def _vocab_and_concepts(max_n: int) -> tuple[Vocabulary, ConceptVocabulary]:
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    ids = [[t for t in vocab.encode(c) if t >= 4] for c in CAPTIONS]
    return vocab, ConceptVocabulary.build(ids, max_n=max_n, min_count=1)


def _targets(vocab: Vocabulary, concepts: ConceptVocabulary) -> torch.Tensor:
    items = [(torch.zeros(3, 4, 4), [torch.tensor(vocab.encode(c))], i) for i, c in enumerate(CAPTIONS)]
    return concepts.targets(collate_captions(items, pad_id=vocab.pad_id), 3, first_word_id=4)


def test_ngrams_are_every_run_up_to_n():
    assert ngrams([1, 2, 3], 2) == {(1,), (2,), (3,), (1, 2), (2, 3)}


def test_phrases_tell_apart_scenes_that_words_cannot():
    vocab, words_only = _vocab_and_concepts(max_n=1)
    words = _targets(vocab, words_only)
    assert torch.equal(words[0], words[1]), "same words: red, blue, circle, square"
    vocab, phrases = _vocab_and_concepts(max_n=3)
    targets = _targets(vocab, phrases)
    assert not torch.equal(targets[0], targets[1])
    red_circle = phrases.index[tuple(vocab.encode("red circle")[1:-1])]
    assert targets[:, red_circle].tolist() == [1.0, 0.0, 0.0]
    assert targets[2].sum() == 6, "a green triangle: 3 words, 2 bigrams, 1 trigram"


def test_concept_vocabulary_keeps_frequent_phrases_and_round_trips():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    ids = [[t for t in vocab.encode(c) if t >= 4] for c in CAPTIONS]
    concepts = ConceptVocabulary.build(ids, max_n=2, min_count=2)
    assert all(len(p) <= 2 for p in concepts.phrases)
    assert tuple(vocab.encode("a red")[1:-1]) in concepts.index
    assert tuple(vocab.encode("green triangle")[1:-1]) not in concepts.index, "used by one caption only"
    again = ConceptVocabulary.from_dict(concepts.to_dict())
    assert again.phrases == concepts.phrases and again.max_n == 2


def test_concept_loss_reaches_the_image_embedding():
    vocab, concepts = _vocab_and_concepts(max_n=3)
    items = [(torch.zeros(3, 4, 4), [torch.tensor(vocab.encode(c))], i) for i, c in enumerate(CAPTIONS)]
    batch = collate_captions(items, pad_id=vocab.pad_id)
    embeddings = torch.randn(3, 8, requires_grad=True)
    loss = ConceptHead(8, concepts).loss(embeddings, batch, first_word_id=4)
    loss.backward()
    assert loss.item() > 0 and embeddings.grad.abs().sum() > 0


def test_training_with_concepts_saves_them_and_resumes(dataset, tmp_path):  # noqa: F811
    first = tmp_path / "first"
    train.main(train_args(dataset, first, "--epochs", "1", "--concept-weight", "0.2"))
    saved = load_checkpoint(first / "checkpoint.pt")
    assert saved["concepts"]["phrases"] and "linear.weight" in saved["concept_head"]
    assert not any(k.startswith("concept") for k in saved["model"]), "the head is not part of the model"
    resumed = tmp_path / "resumed"
    train.main(
        train_args(dataset, resumed, "--epochs", "2", "--concept-weight", "0.2", "--resume", str(first / "checkpoint.pt"))
    )
    again = load_checkpoint(resumed / "checkpoint.pt")
    assert again["epoch"] == 1 and again["concepts"] == saved["concepts"]
