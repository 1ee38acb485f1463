"""The randomised generated world: captions true to the geometry, ranges honoured, pixels where the records say."""

import colorsys
import json
import random

import numpy as np
from PIL import Image

from model.vocabulary import tokenize
from training.caption_languages import LANGUAGES
from training.coco_data import load_coco
from training.shapes_dataset import describe, generate
from training.shapes_render import DEFAULT_RENDER, HUES, background
from training.shapes_world import COLUMNS, DEFAULT_RANGES, REACH, column_of, random_scene


def scenes(count=300, seed=5):
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(count)]


def test_every_caption_names_exactly_its_objects_in_left_to_right_order():
    for scene in scenes():
        xs = [o.center[0] for o in scene.objects]
        assert xs == sorted(xs), "objects are listed left to right"
        truth = [(o.color, o.shape) for o in scene.objects]
        for code, language in LANGUAGES.items():
            for caption in describe(scene.objects, code):
                assert language.named_sequence(tokenize(caption, code)) == truth, (code, caption)


def test_positions_in_captions_come_from_the_geometry():
    for scene in scenes():
        for obj in scene.objects:
            assert obj.column == column_of(obj.center[0], scene.width)
        if len(scene.objects) == 1:
            (obj,) = scene.objects
            third = scene.width / 3
            distance = min(abs(obj.center[0] - third * k) for k in (1, 2))
            assert distance >= DEFAULT_RANGES.third_margin * scene.width - 1e-6, "a lone object is clearly in a third"
            placed = describe(scene.objects, "en")[-1]
            assert ("middle" if obj.column == "middle" else obj.column) in placed.split()


def test_the_world_honours_its_ranges():
    seen_orientations, seen_counts, seen_sizes = set(), set(), set()
    for scene in scenes(400):
        long_side, short_side = max(scene.width, scene.height), scene.short_side
        assert DEFAULT_RANGES.long_side[0] - 1 <= long_side <= DEFAULT_RANGES.long_side[1] + 1
        assert long_side / short_side <= DEFAULT_RANGES.aspect[1] + 0.05
        seen_orientations.add(scene.width >= scene.height)
        seen_counts.add(len(scene.objects))
        for obj in scene.objects:
            low, high = DEFAULT_RANGES.radius[obj.size]
            assert low - 1e-9 <= obj.radius / short_side <= high + 1e-9
            seen_sizes.add(obj.size)
            x, y = obj.center
            reach = REACH * obj.radius
            assert reach <= x <= scene.width - reach and reach <= y <= scene.height - reach, "inside the canvas"
            assert abs(obj.angle) <= DEFAULT_RANGES.rotation
        for left, right in zip(scene.objects, scene.objects[1:]):
            assert right.center[0] - left.center[0] >= DEFAULT_RANGES.order_gap * scene.width - 1e-6
            gap = np.hypot(right.center[0] - left.center[0], right.center[1] - left.center[1])
            assert gap >= left.radius + right.radius - DEFAULT_RANGES.overlap * min(left.radius, right.radius) - 1e-6
    assert seen_orientations == {True, False} and seen_counts == {1, 2, 3} and seen_sizes == {"small", "large"}


def test_backgrounds_are_light_and_unsaturated_so_named_colours_stand_out():
    rng = random.Random(2)
    for _ in range(40):
        ground = np.clip(background(rng, 96, 64), 0, 255)
        mean = ground.reshape(-1, 3).mean(axis=0) / 255
        _, saturation, value = colorsys.rgb_to_hsv(*mean)
        assert saturation <= DEFAULT_RENDER.tint_saturation[1] + 0.05 and value >= 0.45


def _hue_distance(a, b):
    return min(abs(a - b), 360 - abs(a - b))


def test_each_object_is_drawn_in_its_named_hue_where_its_record_says(tmp_path):
    out = generate(tmp_path, train=30, val=0, seed=4)
    coco = load_coco(out / "annotations" / "captions_train.json")
    extensions = set()
    for info in coco.imgs.values():
        extensions.add(info["file_name"].rsplit(".", 1)[1])
        image = np.asarray(Image.open(out / "images" / info["file_name"]).convert("RGB"), dtype=np.float32) / 255
        assert image.shape[:2] == (info["height"], info["width"])
        for obj in info["objects"]:
            x0, y0, x1, y1 = obj["box"]
            cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
            patch = image[int(cy - r / 3):int(cy + r / 3) + 1, int(cx - r / 3):int(cx + r / 3) + 1].reshape(-1, 3)
            h, s, v = colorsys.rgb_to_hsv(*np.median(patch, axis=0))
            assert s > 0.4, (info["file_name"], obj)
            nearest = min(HUES, key=lambda name: _hue_distance(h * 360, HUES[name][0]))
            assert nearest == obj["color"], (info["file_name"], obj, h * 360)
    assert extensions == {"jpg", "png"}, "both encodings appear"


def test_records_carry_renderer_and_geometry(tmp_path):
    out = generate(tmp_path, train=3, val=2, seed=1)
    doc = json.loads((out / "annotations" / "captions_val.json").read_text())
    for info in doc["images"]:
        assert info["renderer"] == "shapes-world"
        for obj in info["objects"]:
            assert set(obj) >= {"shape", "color", "size", "column", "box"} and obj["column"] in COLUMNS


def test_object_map_labels_mark_each_object_cells_with_its_colour_and_shape():
    from training.auxiliary_losses import object_map_labels
    from training.shapes_world import COLORS, SHAPES

    record = {"width": 200, "height": 100, "objects": [
        {"shape": "square", "color": "blue", "box": [10, 10, 70, 70]},  # centre (40, 40), radius 30
        {"shape": "circle", "color": "red", "box": [150, 40, 160, 50]},  # radius 5: smaller than a cell
    ]}
    labels = object_map_labels(record, grid=8)
    blue_square = 1 + COLORS.index("blue") * len(SHAPES) + SHAPES.index("square")
    red_circle = 1 + COLORS.index("red") * len(SHAPES) + SHAPES.index("circle")
    # Cell (row, col) centres: x = (col + 0.5) * 25, y = (row + 0.5) * 12.5.
    assert labels[3, 1] == blue_square, "the cell at (37.5, 43.75) lies inside the square"
    assert labels[3, 6] == red_circle, "a small object claims the cell under its centre"
    assert labels[7, 7] == 0, "far from every object: background"
    assert (labels == -100).any(), "edges are ignored"
    assert set(labels.unique().tolist()) <= {-100, 0, blue_square, red_circle}
