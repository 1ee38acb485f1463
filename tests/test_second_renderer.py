"""The second renderer's held-out set: true captions, its ranges, determinism, files pycocotools and PIL read."""

from __future__ import annotations

import colorsys
import contextlib
import io
import itertools
import json
import math
import random

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from model.vocabulary import tokenize
from training import second_renderer
from training.caption_languages import get_language
from training.coco_data import load_coco
from training.second_drawing import BACKGROUNDS, PALETTE, jitter_colour
from training.shapes_dataset import COLORS, COLUMNS, names_every_object

ALL = ("en", "fr", "de", "es")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """100 images: enough that every style and every range's far end turns up."""
    out = second_renderer.generate(tmp_path_factory.mktemp("second") / "set", count=100, seed=11, languages=ALL,
                                   quiet=True)
    return out, load_coco(out / "annotations" / "captions_val.json")


def test_every_caption_names_exactly_the_records_objects_left_to_right(rendered):
    _, coco = rendered
    for image_id, record in coco.imgs.items():
        objects = record["objects"]
        annotations = coco.imgToAnns[image_id]
        assert len(annotations) == 5 * len(ALL)
        for code in ALL:
            captions = [a["caption"] for a in annotations if a["language"] == code]
            assert len(set(captions)) == 5, captions
            for caption in captions:
                tokens = tokenize(caption, code)
                assert names_every_object(tokens, objects, code), caption
                assert get_language(code).named_sequence(tokens) == [(o["color"], o["shape"]) for o in objects], caption
        english = [a["caption"] for a in annotations if a["language"] == "en"]
        for caption in english:
            assert [w for w in tokenize(caption) if w in ("small", "large")] == [o["size"] for o in objects], caption
        if len(objects) == 1:
            where = {"left": "on the left", "middle": "in the middle", "right": "on the right"}[objects[0]["column"]]
            assert any(where in caption for caption in english), english


def _centre_x(obj: dict) -> float:
    return (obj["box"][0] + obj["box"][2]) / 2


def test_canvas_sizes_radii_separation_and_columns_keep_to_their_ranges(rendered):
    _, coco = rendered
    counts = set()
    for record in coco.imgs.values():
        width, height, objects = record["width"], record["height"], record["objects"]
        short = min(width, height)
        assert 48 <= width <= 640 and 48 <= height <= 640 and max(width, height) / short <= 2.5 + 0.02, record
        assert record["renderer"] == "second_renderer" and 1 <= len(objects) <= 3
        counts.add(len(objects))
        for obj in objects:
            share = obj["radius"] / short
            if obj["size"] == "small":
                assert 0.05 - 1e-3 <= share <= 0.12 + 1e-3 and obj["radius"] >= 4 - 1e-2, (record, obj)
            else:
                assert 0.16 - 1e-3 <= share <= 0.30 + 1e-3, (record, obj)
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (record, obj)
            assert obj["column"] == COLUMNS[min(2, int(3 * _centre_x(obj) / width))]
            assert obj["shape"] == "circle" or abs(obj["rotation"]) <= 15
        xs = [_centre_x(o) for o in objects]
        assert xs == sorted(xs), "objects are listed left to right"
        assert all(b - a >= 0.10 * width - 1e-2 for a, b in itertools.pairwise(xs)), record
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                centres = math.dist(((a["box"][0] + a["box"][2]) / 2, (a["box"][1] + a["box"][3]) / 2),
                                    ((b["box"][0] + b["box"][2]) / 2, (b["box"][1] + b["box"][3]) / 2))
                assert centres >= 0.9 * (a["radius"] + b["radius"]) - 1e-2, ("overlap", record)
        if len(objects) == 1:
            third = COLUMNS.index(objects[0]["column"])
            offset = xs[0] / width - third / 3
            assert 0.06 - 1e-3 <= offset <= 1 / 3 - 0.06 + 1e-3, ("a lone object near a third's edge", record)
    assert counts == {1, 2, 3}


def test_the_set_reaches_outside_trainings_ranges_and_uses_every_style(rendered):
    _, coco = rendered
    records = list(coco.imgs.values())
    shorts = [min(r["width"], r["height"]) for r in records]
    assert min(shorts) < 64 and max(max(r["width"], r["height"]) for r in records) > 512
    assert any(max(r["width"], r["height"]) / min(r["width"], r["height"]) > 2.0 for r in records)
    shares = {size: [o["radius"] / min(r["width"], r["height"]) for r in records for o in r["objects"]
                     if o["size"] == size] for size in ("small", "large")}
    assert min(shares["small"]) < 0.055 and max(shares["large"]) > 0.25
    assert {r["background"] for r in records} == set(BACKGROUNDS)
    encodings = {r["encoding"] for r in records}
    assert "png" in encodings and any(e.startswith("jpeg-") and int(e[5:]) < 50 for e in encodings)
    assert {o["outline"] for r in records for o in r["objects"]} == {"none", "dark", "light"}


def test_files_open_with_pil_and_pycocotools(rendered):
    out, _ = rendered
    path = out / "annotations" / "captions_val.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))  # pycocotools' own reader, as for real COCO
    assert len(coco.imgs) == 100 and len(coco.anns) == 100 * 5 * len(ALL)
    assert len({a["id"] for a in json.loads(path.read_text())["annotations"]}) == len(coco.anns)
    for record in coco.imgs.values():
        with Image.open(out / "images" / record["file_name"]) as image:
            assert image.size == (record["width"], record["height"])
            assert image.format == ("PNG" if record["encoding"] == "png" else "JPEG")
            image.convert("RGB").load()


def test_each_objects_colour_is_the_one_named_where_the_record_puts_it(rendered):
    out, coco = rendered
    checked = 0
    for record in coco.imgs.values():
        pixels = np.asarray(Image.open(out / "images" / record["file_name"]).convert("RGB"), dtype=np.float32)
        for obj in record["objects"]:
            if obj["radius"] < 8:
                continue  # a few pixels across: JPEG's colour subsampling smears the middle too
            x, y = round(_centre_x(obj)), round((obj["box"][1] + obj["box"][3]) / 2)
            seen = pixels[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(axis=0)
            nearest = min(PALETTE, key=lambda name: np.linalg.norm(seen - np.asarray(PALETTE[name])))
            assert nearest == obj["color"], (record, obj, seen)
            checked += 1
    assert checked > 60


def test_jittered_colours_stay_inside_their_named_hue():
    assert set(PALETTE) == set(COLORS)
    rng = random.Random(0)
    for name, reference in PALETTE.items():
        hue = colorsys.rgb_to_hsv(*(c / 255 for c in reference))[0]
        for _ in range(200):
            moved = colorsys.rgb_to_hsv(*(c / 255 for c in jitter_colour(name, rng)))[0]
            assert min(abs(moved - hue), 1 - abs(moved - hue)) * 360 <= 5.5, name


def test_the_same_seed_writes_the_same_files_and_an_image_does_not_depend_on_the_count(tmp_path):
    first = second_renderer.generate(tmp_path / "a", count=8, seed=5, quiet=True)
    again = second_renderer.generate(tmp_path / "b", count=8, seed=5, quiet=True)
    fewer = second_renderer.generate(tmp_path / "c", count=3, seed=5, quiet=True)
    other = second_renderer.generate(tmp_path / "d", count=8, seed=6, quiet=True)
    name = "annotations/captions_val.json"
    assert (first / name).read_bytes() == (again / name).read_bytes()
    files = sorted(p.name for p in (first / "images").iterdir())
    assert files == sorted(p.name for p in (again / "images").iterdir()) and len(files) == 8
    assert all((first / "images" / f).read_bytes() == (again / "images" / f).read_bytes() for f in files)
    assert json.loads((fewer / name).read_text())["images"] == json.loads((first / name).read_text())["images"][:3]
    assert json.loads((other / name).read_text())["images"] != json.loads((first / name).read_text())["images"]


def test_the_cli_writes_the_set_it_names(tmp_path, capsys):
    args = second_renderer.get_args_parser().parse_args(
        ["--out", str(tmp_path / "second"), "--count", "4", "--seed", "7", "--languages", "en", "de", "--quiet"])
    out = second_renderer.main(args)
    coco = load_coco(out / "annotations" / "captions_val.json")
    assert sorted(coco.imgs) == [1, 2, 3, 4]
    assert {a["language"] for a in coco.anns.values()} == {"en", "de"}
    assert "wrote 4 second-renderer images" in capsys.readouterr().out
