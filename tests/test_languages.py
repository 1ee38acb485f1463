"""Captions in several languages: the generated captions, the vocabulary's language tokens, training,
evaluation per language, the `language` option, and a real TorchServe answering in each language."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from client.grpc_client import GrpcCaptionClient
from client.rest import CaptionClient, ServiceError
from model.export_format import ExportError, load_exported_captioner
from handler.request_parsing import BadRequest, RequestLimits, parse_options
from model.batch_captioning import DecodeSpec, decode_mixed
from model.config import CaptionerConfig
from model.detokenize import detokenize
from model.vocabulary import Vocabulary, tokenize
from ops.archive import build_archive
from tests.helpers import shape_image_bytes
from training import train
from training.caption_languages import get_language
from training.coco_data import caption_languages, load_captions
from training.evaluate import evaluate_model
from training.export import export_checkpoint
from training.shapes_dataset import COLORS, SHAPES, ShapeObject, generate, random_scene

ALL = ("en", "fr", "de", "es")


def scene(*specs: str) -> list[ShapeObject]:
    """`scene("small red circle left", ...)` -> the objects."""
    return [ShapeObject(shape, color, size, column) for size, color, shape, column in (s.split() for s in specs)]


# --- the generated captions -----------------------------------------------------------------

@pytest.mark.parametrize("code", ALL)
def test_every_caption_names_the_scene_objects_left_to_right(code):
    language = get_language(code)
    rng = random.Random(7)
    for _ in range(300):
        objects = random_scene(rng, 3).objects
        captions = language.describe(objects)
        assert len(set(captions)) == 5, captions
        for caption in captions:
            named = language.named_sequence(tokenize(caption, code))
            assert named == [(o.color, o.shape) for o in objects], caption


@pytest.mark.parametrize("code", ALL)
def test_each_language_names_every_colour_and_shape(code):
    language = get_language(code)
    assert set(language.colour_words.values()) == set(COLORS)
    assert set(language.shape_words.values()) == set(SHAPES)
    for color in COLORS:
        for shape in SHAPES:
            caption = language.describe(scene(f"small {color} {shape} left"))[0]
            assert language.named_sequence(tokenize(caption, code)) == [(color, shape)], caption


def test_german_declines_by_gender_and_case_and_capitalises_nouns():
    captions = get_language("de").describe(scene("small red circle left", "large blue square right"))
    assert captions[0] == "ein kleiner roter Kreis und ein großes blaues Quadrat"
    assert captions[1] == "es gibt einen kleinen roten Kreis und ein großes blaues Quadrat"  # accusative
    assert captions[2] == "ein Bild von einem kleinen roten Kreis und einem großen blauen Quadrat"  # dative
    assert captions[3].endswith(", insgesamt zwei Formen")
    assert get_language("de").describe(scene("large green triangle middle"))[4] == (
        "ein großes grünes Dreieck in der Mitte des Bildes"
    )


def test_french_places_adjectives_elides_and_agrees_numbers():
    two = get_language("fr").describe(scene("small red circle left", "large yellow square middle"))
    assert two[0] == "un petit cercle rouge et un grand carré jaune"
    assert two[2] == "une image d'un petit cercle rouge et d'un grand carré jaune"
    assert two[3].endswith(", soit deux formes") and two[4].endswith("de gauche à droite")
    assert get_language("fr").describe(scene("small purple triangle right"))[3].endswith(", soit une seule forme")


def test_spanish_shortens_grande_and_counts_in_the_feminine():
    three = get_language("es").describe(
        scene("large red circle left", "small green square middle", "large purple triangle right")
    )
    assert three[0] == "un gran círculo rojo , un pequeño cuadrado verde y un gran triángulo morado"
    assert three[3].endswith(", en total tres figuras")
    assert get_language("es").describe(scene("small blue square left"))[3].endswith(", una sola figura")


def test_an_unknown_language_is_a_clear_error():
    with pytest.raises(ValueError, match="known: en, fr, de, es"):
        get_language("ja")


def test_the_caption_string_is_written_text_and_tokens_stay_tokens():
    assert detokenize(["a", "red", "circle", ",", "a", "blue", "square"]) == "a red circle, a blue square"
    assert detokenize(["une", "image", "d'un", "cercle"]) == "une image d'un cercle"


# --- vocabulary and config ------------------------------------------------------------------

def test_a_multilingual_vocabulary_starts_captions_with_their_language_and_keeps_german_case():
    captions = [("ein roter Kreis", "de"), ("a red circle", "en"), ("un cercle rouge", "fr")]
    vocab = Vocabulary.build(captions, min_count=1, languages=["en", "fr", "de"])
    assert vocab.languages == ["en", "fr", "de"]
    ids = vocab.encode("ein roter Kreis", "de")
    assert ids[0] == vocab.stoi["<de>"] and vocab.decode(ids) == ["ein", "roter", "Kreis"]
    assert vocab.encode("A Red circle", "en")[1:-1] == [vocab.stoi[w] for w in ("a", "red", "circle")]
    with pytest.raises(ValueError, match="languages: en, fr, de"):
        vocab.start_id_for("es")
    again = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again.languages == vocab.languages and again.itos == vocab.itos
    one = Vocabulary.build(["a red circle"], min_count=1)
    assert one.languages == [] and one.start_id_for("en") == one.start_id


def test_config_languages_default_to_english_and_are_checked():
    assert CaptionerConfig(vocab_size=10).languages == ("en",)
    assert CaptionerConfig.from_dict({"vocab_size": 10}).languages == ("en",)  # an export from before languages
    with pytest.raises(ValueError, match="each once"):
        CaptionerConfig(vocab_size=10, languages=("en", "en"))


def test_an_export_whose_vocabulary_lacks_its_languages_tokens_is_refused(multilingual, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(multilingual["export"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["languages"] = ["en", "fr"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="languages"):
        load_exported_captioner(broken)


# --- request option -------------------------------------------------------------------------

def test_the_language_option_defaults_to_the_first_and_refuses_others_naming_the_choices():
    limits = RequestLimits(languages=ALL)
    assert parse_options({}, limits).language == "en"
    assert parse_options({"language": b"de"}, limits).language == "de"
    with pytest.raises(BadRequest, match=r"one of this model's languages \(en, fr, de, es\), got 'ja'"):
        parse_options({"language": "ja"}, limits)
    with pytest.raises(BadRequest, match=r"\(en\), got 'fr'"):
        parse_options({"language": "fr"}, RequestLimits())


# --- a trained multilingual model -----------------------------------------------------------

@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    """A tiny model trained on the generated set captioned in four languages (a minute or two on CPU).

    Its captions need not match the images; what it learns fast, and what the tests check,
    is to write in the language it is started with (5 epochs were enough in every run tried;
    it trains 10).
    """
    root = tmp_path_factory.mktemp("multilingual")
    data = generate(root / "data", train=40, val=8, seed=5, canvas=64, languages=ALL)
    args = train.get_args_parser().parse_args([
        "--annotations", str(data / "annotations" / "captions_train.json"),
        "--val-annotations", str(data / "annotations" / "captions_val.json"),
        "--images", str(data / "images"), "--output-dir", str(root / "train"), "--encoder-weights", "none",
        "--embed-size", "32", "--hidden-size", "64", "--image-size", "32", "--batch-size", "8",
        "--min-word-count", "1", "--epochs", "10", "--lr", "2e-2", "--quiet",
    ])
    export = export_checkpoint(train.main(args), root / "export")
    coco = load_captions(data / "annotations" / "captions_train.json")
    words: dict[str, set[str]] = {}
    for annotation in coco.dataset["annotations"]:
        words.setdefault(annotation["language"], set()).update(tokenize(annotation["caption"], annotation["language"]))
    own = {code: words[code] - set().union(*(words[c] for c in ALL if c != code)) for code in ALL}
    return {"export": export, "data": data, "words": words, "own": own, "root": root}


def assert_written_in(language: str, tokens: list[str], multilingual) -> None:
    """Every word is one the language's captions use, and one at least is no other language's."""
    assert tokens and set(tokens) <= multilingual["words"][language], (language, tokens)
    assert set(tokens) & multilingual["own"][language], (language, tokens)


def test_the_trained_model_lists_its_languages_and_writes_in_each(multilingual):
    model, vocab = load_exported_captioner(multilingual["export"])
    assert model.config.languages == ALL and vocab.languages == list(ALL)
    embeddings = model.encode(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    spec = DecodeSpec(max_length=20)
    for code in ALL:
        captions, _ = decode_mixed(model.decoder, embeddings, [spec] * 4, start_id=vocab.start_id_for(code),
                                   end_id=vocab.end_id)
        for caption in captions:
            assert_written_in(code, vocab.decode(caption.tokens), multilingual)


def test_rows_of_one_batch_in_different_languages_decode_as_each_alone(multilingual):
    model, vocab = load_exported_captioner(multilingual["export"])
    embeddings = model.encode(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    specs = [DecodeSpec(20), DecodeSpec(20, beam_size=3), DecodeSpec(20, sample=True, seed=4), DecodeSpec(12)]
    starts = torch.tensor([vocab.start_id_for(code) for code in ALL])
    together, _ = decode_mixed(model.decoder, embeddings, specs, start_id=starts, end_id=vocab.end_id)
    for row in range(4):
        alone, _ = decode_mixed(model.decoder, embeddings[row : row + 1], specs[row : row + 1],
                                start_id=int(starts[row]), end_id=vocab.end_id)
        assert together[row].tokens == alone[0].tokens


def test_evaluation_scores_every_language_with_its_own_parser(multilingual):
    model, vocab = load_exported_captioner(multilingual["export"])
    data = multilingual["data"]
    metrics, _ = evaluate_model(model, vocab, data / "annotations" / "captions_val.json", data / "images",
                                device=torch.device("cpu"), quiet=True)
    assert metrics["language"] == "en" and set(metrics["languages"]) == set(ALL)
    for code, figures in metrics["languages"].items():
        assert {"bleu4", "cider", "attribute_accuracy"} <= set(figures), code
    assert metrics["bleu4"] == metrics["languages"]["en"]["bleu4"]


def test_files_in_one_language_each_merge_into_one_multilingual_set(multilingual, tmp_path):
    source = json.loads((multilingual["data"] / "annotations" / "captions_val.json").read_text())
    for code in ("en", "fr"):
        part = {**source, "annotations": [
            {k: v for k, v in a.items() if k != "language"} for a in source["annotations"] if a["language"] == code
        ]}
        (tmp_path / f"{code}.json").write_text(json.dumps(part))
    merged = load_captions([tmp_path / "en.json", f"fr={tmp_path / 'fr.json'}"])
    assert caption_languages(merged) == ["en", "fr"]
    assert len(merged.dataset["annotations"]) == 2 * 5 * len(source["images"])
    assert len({a["id"] for a in merged.dataset["annotations"]}) == len(merged.dataset["annotations"])


# --- from a real TorchServe -----------------------------------------------------------------

@pytest.fixture(scope="module")
def served_multilingual(multilingual, registered, model_store):
    archive = build_archive(multilingual["export"], multilingual["root"] / "store", model_name="captioner-ml",
                            version="1.0", stage_root=multilingual["root"] / "stage")
    shutil.copy2(archive, model_store / "captioner-ml.mar")
    assert "registered" in str(registered.register("captioner-ml.mar", initial_workers=1))
    client = CaptionClient(registered.inference_url, registered.management_url, registered.tokens,
                           model="captioner-ml")
    try:
        yield client
    finally:
        client.unregister()


@pytest.mark.parametrize("code", ALL)
def test_a_request_in_each_language_gets_a_caption_in_it_over_rest(served_multilingual, multilingual, code):
    image, _ = shape_image_bytes(seed=3)
    reply = served_multilingual.caption(image, language=code)
    assert reply["language"] == code
    assert_written_in(code, reply["tokens"], multilingual)
    assert reply["caption"] == detokenize(reply["tokens"])


@pytest.mark.parametrize("code", ALL)
def test_a_request_in_each_language_gets_a_caption_in_it_over_grpc(served_multilingual, multilingual, torchserve,
                                                                    code):
    image, _ = shape_image_bytes(seed=4)
    with GrpcCaptionClient(torchserve.grpc_target("grpc_inference"), torchserve.grpc_target("grpc_management"),
                           torchserve.tokens(), model="captioner-ml") as client:
        reply = client.caption(image, language=code)
    assert reply["language"] == code
    assert_written_in(code, reply["tokens"], multilingual)


def test_the_default_language_is_english_and_an_unknown_one_is_a_400_listing_the_models(served_multilingual):
    image, _ = shape_image_bytes(seed=5)
    assert served_multilingual.caption(image)["language"] == "en"
    with pytest.raises(ServiceError) as refused:
        served_multilingual.caption(image, language="ja")
    assert refused.value.status == 400 and "en, fr, de, es" in str(refused.value)


def test_training_can_learn_from_some_languages_with_a_vocabulary_of_all(multilingual):
    from model.transforms import eval_transform
    from training.coco_data import CocoCaptions

    coco = load_captions(multilingual["data"] / "annotations" / "captions_train.json")
    _, vocab = load_exported_captioner(multilingual["export"])
    english = CocoCaptions(coco, multilingual["data"] / "images", vocab, eval_transform(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3),
                           languages=["en"])
    starts = {int(ids[0]) for image_id in english.image_ids for ids in english.caption_ids(image_id)}
    assert starts == {vocab.start_id_for("en")}
    with pytest.raises(ValueError, match="no captions in ja"):
        CocoCaptions(coco, multilingual["data"] / "images", vocab, eval_transform(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3), languages=["ja"])
