"""A model trained here, in a few minutes, served by TorchServe, names what it sees.

The session trains a captioner from scratch on generated single-object scenes,
packs it like `make mar`, registers it on the test server, and captions freshly
generated held-out images (seeds never used in training) over REST.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from model.vocabulary import tokenize
from ops.archive import build_archive
from training import train
from training.export import export_checkpoint
from training.shapes_dataset import generate, names_every_object, random_scene, render_scene

HELD_OUT = 60
# The default recipe's two stages (see the Makefile) on a smaller single-object set: 5
# fine-tuning epochs of 75 steps, then 3 decoder epochs on the frozen backbone's features
# (about six minutes on 2 cores, packing and registering included). One change: the first
# stage adds the word-position loss and so reads all five captions. With so few steps it
# made the difference here (README "Tests"); on the default three-object set it did not help.
AUX_LOSSES = ["--concept-weight", "4.0", "--scene-weight", "1.0", "--quiet"]
FINETUNE_ARGS = [
    "--encoder-weights", "none", "--train-backbone", "--image-size", "96",
    "--epochs", "5", "--batch-size", "16", "--lr", "5e-3", "--backbone-lr", "1.5e-3", "--word-position-weight", "1.0",
    *AUX_LOSSES,
]
DECODER_ARGS = ["--epochs", "3", "--batch-size", "32", "--lr", "3e-3", *AUX_LOSSES]


@pytest.fixture(scope="module")
def trained_client(tmp_path_factory, torchserve, client):
    root = tmp_path_factory.mktemp("trained")
    data = generate(root / "data", train=1200, val=50, seed=11, max_objects=1)
    data_args = [
        "--annotations", str(data / "annotations" / "captions_train.json"),
        "--val-annotations", str(data / "annotations" / "captions_val.json"),
        "--images", str(data / "images"),
    ]
    parse = train.get_args_parser().parse_args
    finetuned = train.main(parse([*data_args, "--output-dir", str(root / "finetune"), *FINETUNE_ARGS]))
    checkpoint = train.main(parse([*data_args, "--output-dir", str(root / "run"), "--init-from", str(finetuned), *DECODER_ARGS]))
    export = export_checkpoint(checkpoint, root / "export")
    build_archive(export, torchserve.model_store, model_name="shapes", version="1.0", stage_root=root / "stage")
    client.register("shapes.mar", initial_workers=1)
    shapes = type(client)(client.inference_url, client.management_url, client.tokens, model="shapes")
    yield shapes
    shapes.unregister()


def test_served_model_names_colour_and_shape_of_held_out_images(trained_client):
    import io

    rng = random.Random(2024)  # a stream no training image came from
    scenes = [random_scene(rng, max_objects=1) for _ in range(HELD_OUT)]
    images = []
    for objects in scenes:
        buffer = io.BytesIO()
        render_scene(objects, rng).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    with ThreadPoolExecutor(max_workers=8) as pool:
        captions = list(pool.map(lambda image: trained_client.caption(image)["caption"], images))
    correct = sum(names_every_object(tokenize(c), objects) for c, objects in zip(captions, scenes))
    print(f"{correct}/{HELD_OUT} held-out images named right; e.g. {captions[:3]}")
    assert correct / HELD_OUT >= 0.8, list(zip(captions, scenes))[:10]
