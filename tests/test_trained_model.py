"""A model trained here, in a few minutes, served by TorchServe, names what it sees.

The session trains a captioner from scratch on generated single-object scenes
(`tests.trained_recipe`: the recipe, its held-out images and its bar, shared with
the seed sweep that measures the recipe's margin), packs it like `make mar`,
registers it on the test server, and captions the held-out images over REST.

Its export has domain statistics (fitted on its training images, calibrated on
its validation images), so the same model checks that the service, the CLI and
the demo page flag photos as out of domain: a random model's features cannot
tell a photo from a scene reliably.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from ops.archive import build_archive
from tests.test_client_cli import _cli
from tests.test_demo_app import open_page, shown_caption, upload
from tests.trained_recipe import (
    BAR, HELD_OUT, SECOND_BAR, held_out_images, named_right, photo_jpegs, second_renderer_images, train_export,
)

# Held-out scenes the statistics never saw must be in domain, but for a few: the threshold leaves
# at least 99% of the 50 calibration images in domain, and these are new draws of the same generator.
IN_DOMAIN_BAR = 0.95

PHOTOS = photo_jpegs()  # china.jpg, flower.jpg, grace_hopper.jpg


@pytest.fixture(scope="module")
def trained_client(tmp_path_factory, torchserve, client):
    root = tmp_path_factory.mktemp("trained")
    export = train_export(root)
    build_archive(export, torchserve.model_store, model_name="shapes", version="1.0", stage_root=root / "stage")
    client.register("shapes.mar", initial_workers=1)
    shapes = type(client)(client.inference_url, client.management_url, client.tokens, model="shapes")
    yield shapes
    shapes.unregister()


@pytest.fixture(scope="module")
def held_out_replies(trained_client):
    scenes, images = held_out_images()
    with ThreadPoolExecutor(max_workers=8) as pool:
        return scenes, list(pool.map(trained_client.caption, images))


def test_served_model_names_colour_and_shape_of_held_out_images(held_out_replies):
    scenes, replies = held_out_replies
    captions = [reply["caption"] for reply in replies]
    correct = named_right(captions, scenes)
    print(f"{correct}/{HELD_OUT} held-out images named right; e.g. {captions[:3]}")
    assert correct >= BAR * HELD_OUT, list(zip(captions, scenes))[:10]


def test_served_model_names_objects_drawn_by_the_second_renderer(trained_client):
    """Other drawing code, backgrounds and sizes than training's: the model learnt the objects, not one renderer."""
    scenes, images = second_renderer_images()
    with ThreadPoolExecutor(max_workers=8) as pool:
        captions = [reply["caption"] for reply in pool.map(trained_client.caption, images)]
    correct = named_right(captions, scenes)
    print(f"{correct}/{HELD_OUT} second-renderer images named right; e.g. {captions[:3]}")
    assert correct >= SECOND_BAR * HELD_OUT, list(zip(captions, scenes))[:10]


def test_package_photos_are_out_of_domain_and_held_out_scenes_in(trained_client, held_out_replies):
    photos = {name: trained_client.caption(image) for name, image in PHOTOS.items()}
    print({name: reply["domain_score"] for name, reply in photos.items()})
    assert all(reply["in_domain"] is False and reply["domain_score"] < 0.5 for reply in photos.values()), photos
    _, replies = held_out_replies
    scores = [reply["domain_score"] for reply in replies]
    inside = sum(reply["in_domain"] for reply in replies)
    print(f"{inside}/{HELD_OUT} held-out scenes in domain; lowest scores {sorted(scores)[:3]}")
    assert inside >= IN_DOMAIN_BAR * HELD_OUT, sorted(scores)[:5]
    assert max(photo["domain_score"] for photo in photos.values()) < min(scores), "every photo below every scene"


def test_cli_warns_under_the_caption_of_an_out_of_domain_photo(torchserve, trained_client, tmp_path, capsys):
    photo, scene = tmp_path / "grace_hopper.jpg", tmp_path / "scene.jpg"
    photo.write_bytes(PHOTOS["grace_hopper.jpg"])
    scene.write_bytes(held_out_images()[1][0])
    assert _cli(torchserve, "--model", "shapes", "caption", str(photo), str(scene)) == 0
    printed = capsys.readouterr()
    assert [line.split(":")[0] for line in printed.out.splitlines()] == [str(photo), str(scene)]
    warnings = printed.err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {photo}: Out of domain (domain score 0."), warnings
    assert _cli(torchserve, "--model", "shapes", "caption", str(photo), "--grpc", "--stream") == 0
    assert "Out of domain" in capsys.readouterr().err, "the stream's last line carries the flag too"


def test_demo_page_warns_above_the_caption_of_an_out_of_domain_photo(torchserve, trained_client, monkeypatch):
    page = open_page(torchserve, monkeypatch, CAPTION_MODEL="shapes")
    upload(page, "china.jpg", PHOTOS["china.jpg"])
    warnings = [w.value for w in page.warning]
    assert len(warnings) == 1 and warnings[0].startswith("Out of domain (domain score 0."), warnings
    caption = shown_caption(page)
    assert caption == trained_client.caption(PHOTOS["china.jpg"])["caption"]
    in_order = [element.value for element in page.main if element.type in ("warning", "subheader")]
    assert in_order.index(warnings[0]) == in_order.index(caption) - 1, "the warning comes right above the caption"
    upload(page, "scene.jpg", held_out_images()[1][0])
    assert not page.warning, [w.value for w in page.warning]
