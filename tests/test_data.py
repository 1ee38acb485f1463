"""Generated shapes set and the pycocotools COCO loader."""

import json
import random

from PIL import Image

from model.transforms import eval_transform
from model.vocabulary import Vocabulary, tokenize
from training.coco_data import CocoCaptions, collate_captions, load_coco, split_image_ids
from training.shapes_dataset import COLORS, SHAPES, describe, generate, names_every_object, random_scene


def test_generated_set_is_real_coco_format_and_deterministic(tmp_path):
    first = generate(tmp_path / "a", train=6, val=3, seed=7)
    second = generate(tmp_path / "b", train=6, val=3, seed=7)
    for name in ("captions_train.json", "captions_val.json"):
        assert (first / "annotations" / name).read_bytes() == (second / "annotations" / name).read_bytes()
    for name in sorted(p.name for p in (first / "images").iterdir()):
        assert (first / "images" / name).read_bytes() == (second / "images" / name).read_bytes()
    coco = load_coco(first / "annotations" / "captions_train.json")
    assert len(coco.imgs) == 6
    for image_id in coco.imgs:
        captions = [a["caption"] for a in coco.imgToAnns[image_id]]
        assert len(captions) == 5 and len(set(captions)) == 5, "five different wordings per image"
    val_ids = set(load_coco(first / "annotations" / "captions_val.json").imgs)
    assert not val_ids & set(coco.imgs), "no image in two splits"


def test_every_caption_is_true_to_its_scene():
    rng = random.Random(3)
    for _ in range(200):
        objects = random_scene(rng).objects
        for caption in describe(objects):
            assert names_every_object(tokenize(caption), objects), caption
            words = tokenize(caption)
            for obj in objects:
                assert obj.size in words


def test_attribute_check_needs_every_object_and_no_extra():
    objects = [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}]
    assert names_every_object("a small red circle and a large blue square".split(), objects)
    assert not names_every_object("a small red circle".split(), objects)
    assert not names_every_object("a red circle and a blue square and a green triangle".split(), objects)
    assert not names_every_object("a red square and a blue circle".split(), objects)
    assert set(SHAPES) == {"circle", "square", "triangle"}


def _write_coco_file(tmp_path, images=5, captions_per_image=3):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    doc = {"info": {}, "licenses": [], "images": [], "annotations": []}
    for i in range(1, images + 1):
        name = f"img{i}.png"
        Image.new("RGB", (20 + i, 16), (i * 40, 0, 0)).save(image_dir / name)
        doc["images"].append({"id": i * 11, "file_name": name, "width": 20 + i, "height": 16})
        for k in range(captions_per_image):
            doc["annotations"].append({"id": i * 100 + k, "image_id": i * 11, "caption": f"A red thing number {k}."})
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(doc))
    return path, image_dir


def test_coco_loader_reads_a_coco_file_and_splits_by_image(tmp_path):
    path, image_dir = _write_coco_file(tmp_path, images=10)
    coco = load_coco(path)
    train_ids, val_ids = split_image_ids(list(coco.imgs), 0.3, seed=0)
    assert len(val_ids) == 3 and not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == sorted(coco.imgs)
    vocab = Vocabulary.build([a["caption"] for a in coco.anns.values()], min_count=1)
    transform = eval_transform(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    dataset = CocoCaptions(coco, image_dir, vocab, transform, train_ids)
    assert len(dataset) == 7
    image, captions, image_id = dataset[0]
    assert image.shape == (3, 8, 8) and len(captions) == 3 and image_id in train_ids
    batch = collate_captions([dataset[0], dataset[1]], pad_id=vocab.pad_id)
    assert batch.images.shape == (2, 3, 8, 8)
    assert batch.captions.shape[0] == 6 and batch.owners.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.lengths.tolist() == [len(c) for c in captions] * 2
    assert (batch.captions[:, 0] == vocab.start_id).all()


def test_missing_annotation_file_says_what_to_do(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="make data"):
        load_coco(tmp_path / "nope.json")


def test_captions_per_image_draws_that_many_of_the_images_own_captions(tmp_path):
    path, image_dir = _write_coco_file(tmp_path, images=4)
    coco = load_coco(path)
    vocab = Vocabulary.build([a["caption"] for a in coco.anns.values()], min_count=1)
    transform = eval_transform(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    dataset = CocoCaptions(coco, image_dir, vocab, transform, captions_per_image=1)
    image_id = dataset.image_ids[0]
    own = {tuple(vocab.encode(a["caption"])) for a in coco.imgToAnns[image_id]}
    random.seed(0)
    drawn = [tuple(tuple(t.tolist()) for t in dataset[0][1]) for _ in range(30)]
    assert all(len(d) == 1 and d[0] in own for d in drawn)
    assert {d[0] for d in drawn} == own, "over many reads every caption is drawn"
    everything = CocoCaptions(coco, image_dir, vocab, transform)
    assert len(everything[0][1]) == len(own)


def test_scene_labels_give_each_object_a_slot_in_left_to_right_order():
    from training.shapes_dataset import COLUMNS, SCENE_SLOTS, SIZES, ShapeObject, scene_labels

    objects = [ShapeObject("triangle", "blue", "large", "left"), ShapeObject("circle", "red", "small", "left")]
    labels = scene_labels(objects)
    assert len(labels) == SCENE_SLOTS
    assert labels[0] == [COLORS.index("blue") + 1, SHAPES.index("triangle") + 1, SIZES.index("large") + 1,
                         COLUMNS.index("left") + 1]
    assert labels[1] == [COLORS.index("red") + 1, SHAPES.index("circle") + 1, SIZES.index("small") + 1,
                         COLUMNS.index("left") + 1]
    assert labels[2] == [0, 0, 0, 0], "past the last object every attribute is class 0"
    assert scene_labels([objects[1].record()])[0] == labels[1], "image records give the same labels"


def test_missing_image_files_stop_the_set_at_once_naming_them_or_are_skipped_when_asked(tmp_path):
    import pytest

    from training.coco_data import MissingImages

    path, image_dir = _write_coco_file(tmp_path, images=6)
    coco = load_coco(path)
    vocab = Vocabulary.build([a["caption"] for a in coco.anns.values()], min_count=1)
    transform = eval_transform(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    gone = [coco.imgs[i]["file_name"] for i in sorted(coco.imgs)[1:3]]
    for name in gone:
        (image_dir / name).unlink()
    with pytest.raises(MissingImages) as refused:
        CocoCaptions(coco, image_dir, vocab, transform)
    message = str(refused.value)
    assert message.startswith("2 of 6 images") and all(name in message for name in gone)
    assert "--skip-missing-images" in message
    kept = CocoCaptions(coco, image_dir, vocab, transform, skip_missing=True)
    assert len(kept) == 4 and not {coco.imgs[i]["file_name"] for i in kept.image_ids} & set(gone)
    assert all(kept[i][0].shape == (3, 8, 8) for i in range(len(kept)))
    for name in {coco.imgs[i]["file_name"] for i in coco.imgs} - set(gone):
        (image_dir / name).unlink()
    with pytest.raises(MissingImages, match="6 of 6"):
        CocoCaptions(coco, image_dir, vocab, transform, skip_missing=True)  # nothing left to train on
    with pytest.raises(MissingImages, match="does not exist"):
        CocoCaptions(coco, tmp_path / "elsewhere", vocab, transform)


def test_an_unreadable_image_file_is_named_with_its_id(tmp_path):
    import pytest

    from training.coco_data import UnreadableImage

    path, image_dir = _write_coco_file(tmp_path, images=3)
    coco = load_coco(path)
    vocab = Vocabulary.build([a["caption"] for a in coco.anns.values()], min_count=1)
    dataset = CocoCaptions(coco, image_dir, vocab, eval_transform(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3))
    broken = dataset.image_ids[1]
    (image_dir / coco.imgs[broken]["file_name"]).write_bytes(b"not an image")
    assert dataset[0][0].shape == (3, 8, 8)
    with pytest.raises(UnreadableImage, match=rf"{coco.imgs[broken]['file_name']} \(id {broken}\) cannot be read"):
        dataset[1]


def test_the_training_command_names_missing_images_in_one_line_before_any_step(tmp_path):
    import subprocess
    import sys

    path, image_dir = _write_coco_file(tmp_path, images=6)
    coco = load_coco(path)
    gone = coco.imgs[sorted(coco.imgs)[0]]["file_name"]
    (image_dir / gone).unlink()
    command = [sys.executable, "-m", "training.train", "--annotations", str(path), "--images", str(image_dir),
               "--encoder-weights", "none", "--val-fraction", "0", "--output-dir", str(tmp_path / "out")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: 1 of 6 images") and gone in run.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "stopped before training"


def test_the_commands_say_a_missing_input_in_one_line(tmp_path):
    """Export, archive and evaluate, each pointed at something that is not there: `error: ...`, status 1."""
    import subprocess
    import sys

    commands = {
        "no checkpoint at": ["training.export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "e")],
        "lacks config.json": ["ops.archive", "--export-dir", str(tmp_path / "none"), "--out", str(tmp_path / "s")],
        "lacks config.json, vocab.json": ["training.evaluate", "--export-dir", str(tmp_path / "none"),
                                          "--annotations", str(tmp_path / "a.json"), "--images", str(tmp_path)],
    }
    for words, command in commands.items():
        run = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=300)
        assert run.returncode == 1 and "Traceback" not in run.stderr, (command, run.stderr)
        assert run.stderr.strip().splitlines()[-1].startswith("error: ") and words in run.stderr, run.stderr


# --- caption files whose records are wrong ---------------------------------------------------------

def _broken(records: dict, change) -> dict:
    """A copy of a caption document with `change` applied to it."""
    document = json.loads(json.dumps(records))
    change(document)
    return document


BROKEN_RECORDS = {  # how a caption file is wrong -> (the change, what the one line says after the file's name)
    "a null caption": (lambda d: d["annotations"][4].update(caption=None),
                       "annotation 201 has a caption of null, not text; fix or drop it"),
    "a caption that is a number": (lambda d: d["annotations"][4].update(caption=7),
                                   "annotation 201 has a caption of 7, not text; fix or drop it"),
    "a caption without an image": (lambda d: d["annotations"][4].pop("image_id"),
                                   'annotation 201 has no "image_id"; every caption names the image it describes'),
    "an image without a file": (lambda d: d["images"][1].pop("file_name"),
                                'image 22 has no "file_name"; every image record needs the name of its file in the '
                                "image folder"),
    "only blank captions": (lambda d: [a.update(caption=" \t") for a in d["annotations"]],
                            "every one of its 15 captions is blank; give a caption file with the captions written in"),
}


def test_training_evaluation_and_the_domain_fit_name_a_broken_caption_record_in_one_line(tmp_path):
    from functools import partial

    from ops.tiny_model import write_tiny_export
    from tests.test_cli_errors import one_line_error
    from model.export_format import load_exported_captioner
    from training import evaluate, train
    from training.domain_calibration import DomainSources, ImageSet, fit_export_domain

    path, image_dir = _write_coco_file(tmp_path)
    good = json.loads(path.read_text())
    export = write_tiny_export(tmp_path / "export", seed=1, backbone="resnet18")
    model, vocab = load_exported_captioner(export)
    for how, (change, words) in BROKEN_RECORDS.items():
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(_broken(good, change)))
        runs = {
            "train": partial(train.main, train.get_args_parser().parse_args([
                "--annotations", str(bad), "--images", str(image_dir), "--encoder-weights", "none",
                "--output-dir", str(tmp_path / "out")])),
            "evaluate": partial(evaluate.main, evaluate.get_args_parser().parse_args([
                "--export-dir", str(export), "--annotations", str(bad), "--images", str(image_dir), "--quiet"])),
            "domain fit": partial(fit_export_domain, model, vocab, DomainSources(
                ImageSet(bad, image_dir), (ImageSet(path, image_dir),), quiet=True)),
        }
        for tool, run in runs.items():
            assert one_line_error(run) == f"error: {bad}: {words}", (how, tool)


def test_images_without_captions_or_without_the_language_asked_for_are_user_errors(tmp_path):
    import pytest

    from training.coco_data import NoCaptionsInLanguage, NotACaptionFile

    path, image_dir = _write_coco_file(tmp_path, images=3)
    document = json.loads(path.read_text())
    document["images"].append({"id": 99, "file_name": "img1.png"})
    path.write_text(json.dumps(document))
    coco = load_coco(path)
    vocab = Vocabulary.build([a["caption"] for a in coco.anns.values()], min_count=1)
    transform = eval_transform(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(NotACaptionFile, match="^1 images have no captions, e.g. image id 99; caption them"):
        CocoCaptions(coco, image_dir, vocab, transform)
    with pytest.raises(NoCaptionsInLanguage, match=r"^3 images have no captions in de, e.g. image id 11 \(the set's "
                                                   r"captions are in en\)$"):
        CocoCaptions(coco, image_dir, vocab, transform, image_ids=[11, 22, 33], languages=["de"])


def test_captions_of_images_the_file_does_not_list_are_left_out_with_one_warning(tmp_path, capsys):
    from training.coco_data import load_captions

    path, _ = _write_coco_file(tmp_path, images=2)
    load_coco(path)
    assert capsys.readouterr().err == "", "no warning when every caption's image is listed"
    document = json.loads(path.read_text())
    document["annotations"] += [{"id": 900 + k, "image_id": 555, "caption": "a lost caption"} for k in range(3)]
    path.write_text(json.dumps(document))
    coco = load_captions(path)
    assert len(coco.anns) == 9 and sum(len(coco.imgToAnns[i]) for i in coco.imgs) == 6
    assert capsys.readouterr().err.splitlines() == [
        f'warning: {path}: left out 3 captions of images not listed in "images"']
