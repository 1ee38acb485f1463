"""A model trained here, in a few minutes, served by TorchServe, names what it sees.

The session trains a captioner from scratch on generated single-object scenes
(`tests.trained_recipe`: the recipe, its held-out images and its bar, shared with
the seed sweep that measures the recipe's margin), packs it like `make mar`,
registers it on the test server, and captions the held-out images over REST.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from ops.archive import build_archive
from tests.trained_recipe import (
    BAR, HELD_OUT, SECOND_BAR, held_out_images, named_right, second_renderer_images, train_export,
)


@pytest.fixture(scope="module")
def trained_client(tmp_path_factory, torchserve, client):
    root = tmp_path_factory.mktemp("trained")
    export = train_export(root)
    build_archive(export, torchserve.model_store, model_name="shapes", version="1.0", stage_root=root / "stage")
    client.register("shapes.mar", initial_workers=1)
    shapes = type(client)(client.inference_url, client.management_url, client.tokens, model="shapes")
    yield shapes
    shapes.unregister()


def _caption_all(client, images):
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda image: client.caption(image)["caption"], images))


def test_served_model_names_colour_and_shape_of_held_out_images(trained_client):
    scenes, images = held_out_images()
    captions = _caption_all(trained_client, images)
    correct = named_right(captions, scenes)
    print(f"{correct}/{HELD_OUT} held-out images named right; e.g. {captions[:3]}")
    assert correct >= BAR * HELD_OUT, list(zip(captions, scenes))[:10]


def test_served_model_names_objects_drawn_by_the_second_renderer(trained_client):
    """Other drawing code, backgrounds and sizes than training's: the model learnt the objects, not one renderer."""
    scenes, images = second_renderer_images()
    captions = _caption_all(trained_client, images)
    correct = named_right(captions, scenes)
    print(f"{correct}/{HELD_OUT} second-renderer images named right; e.g. {captions[:3]}")
    assert correct >= SECOND_BAR * HELD_OUT, list(zip(captions, scenes))[:10]
