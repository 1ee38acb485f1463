"""Train the captioner on COCO-format captions.

    python -m training.train --annotations data/shapes/annotations/captions_train.json \
        --val-annotations data/shapes/annotations/captions_val.json --images data/shapes/images \
        --output-dir build/train --encoder-weights none --train-backbone --image-size 96

Writes `checkpoint.pt` every epoch (model, optimizer, epoch, arguments,
config, vocabulary, loss history, random states; resume with `--resume`, which
also restores the learning-rate schedule's position and the random states, so a
run resumed with `--workers 0` trains as the uninterrupted run would), `history.json` and
`loss_curve.png`. With a frozen backbone and no augmentation, backbone features
are computed once and reused every epoch: the pooled vector of each image, or
for the soft-attention decoder its G x G grid of the last feature map (G x G
times the memory; at 96 px and G = 3, 3,000 images take 55 MB with ResNet-34).

`--backbone`, `--decoder` and `--grid-size` choose the network of a new run; a
run started `--init-from` a checkpoint keeps that checkpoint's.

`--init-from` starts a new run from another run's weights: the default recipe
(Makefile, README "Training") fine-tunes the backbone in a first run, then
freezes it and trains the decoder on its cached features in a second, where an
epoch costs a few seconds instead of minutes.

Under `torchrun` it trains data-parallel on several processes (see
`training/distributed.py` and README "Scaling").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
import warnings
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.backbones import BACKBONES
from model.captioner import Captioner
from model.modalities import build_captioner
from model.precision import autocast_context, choose_precision, read_cpu_flags
from model.config import IMAGENET_MEAN, IMAGENET_STD, CaptionerConfig
from model.decoders import DECODERS
from model.encoder import image_summary
from model.transforms import eval_transform, train_transform
from model.vocabulary import PAD, SPECIAL_TOKENS, Vocabulary
from training import distributed
from training.checkpoints import load_checkpoint, random_states, restore_random_states, save_checkpoint
from training.auxiliary_losses import (
    ConceptHead, ObjectMapHead, SceneHead, WordPositionHead, clip_object_map_labels, doubly_stochastic_penalty,
    object_map_labels,
)
from training.cli import (
    fraction_below_one, non_negative_float, non_negative_int, positive_float, positive_int, torch_device, user_errors,
)
from training.coco_data import (
    CaptionBatch, CocoCaptions, caption_language, caption_languages, caption_set, collate_captions,
    NothingToTrainOn, is_video_set, load_captions, split_image_ids,
)
from training.encoder_weights import load_encoder_weights
from training.shapes_dataset import COLORS, SCENE_ATTRIBUTE_CLASSES, SCENE_SLOTS, SHAPES, scene_labels
from training.video_data import MOTION_ATTRIBUTE_CLASSES, motion_labels


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the ResNet + LSTM captioner.")
    data = parser.add_argument_group("data")
    data.add_argument("--annotations", required=True, nargs="+",
                      help="COCO caption file(s) for training: PATH, or LANG=PATH for a file in one language "
                           "without `language` fields (e.g. ja=stair_captions_v1.2_train.json); several merge")
    data.add_argument("--images", required=True, help="folder with the images the annotations name")
    data.add_argument("--val-annotations", default=None, nargs="+",
                      help="held-out caption file(s), as --annotations (else split by image)")
    data.add_argument("--val-images", default=None, help="image folder for --val-annotations (default --images)")
    data.add_argument("--val-fraction", type=fraction_below_one, default=0.05,
                      help="share of the images held out when no val file (0 to below 1)")
    data.add_argument("--skip-missing-images", action="store_true",
                      help="train on the images that are there when some the captions name are missing "
                           "(by default the run stops at once and names them)")
    data.add_argument("--min-word-count", type=int, default=4, help="vocabulary frequency threshold")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="resnet34", choices=sorted(BACKBONES), help="torchvision ResNet")
    model.add_argument(
        "--decoder", default=None, choices=sorted(DECODERS),
        help="show_tell (default): the pooled image is the LSTM's first input; soft_attention: attends over a "
        "feature grid. With --init-from, another decoder than the checkpoint's starts afresh on its encoder",
    )
    model.add_argument(
        "--grid-size", type=positive_int, default=None,
        help="soft_attention: side G of the feature grid (default: the backbone's own map, image size / 32)",
    )
    model.add_argument("--embed-size", type=positive_int, default=256)
    model.add_argument("--hidden-size", type=positive_int, default=512)
    model.add_argument("--num-layers", type=positive_int, default=1)
    model.add_argument("--max-length", type=positive_int, default=20, help="most tokens per decoded caption")
    model.add_argument("--image-size", type=positive_int, default=224)
    model.add_argument("--encoder-weights", default="imagenet", help="imagenet | none | PATH to a state_dict")
    model.add_argument("--train-backbone", action="store_true", help="fine-tune the backbone (frozen by default)")
    model.add_argument("--num-frames", type=positive_int, default=8, help="video sets: frames sampled from each clip")
    model.add_argument("--temporal", default="concat", help="video sets: how frames become a clip embedding "
                       "(model.video.TEMPORAL_MODULES: concat, lstm, mean)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, default=5)
    optim.add_argument("--batch-size", type=positive_int, default=64)
    optim.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate of the head and decoder")
    optim.add_argument("--backbone-lr", type=positive_float, default=None, help="peak rate of a fine-tuned backbone (default --lr)")
    optim.add_argument("--weight-decay", type=non_negative_float, default=1e-4)
    optim.add_argument(
        "--concept-weight", type=non_negative_float, default=0.0,
        help="weight of the auxiliary caption-word prediction loss on the image embedding (helps from scratch)",
    )
    optim.add_argument(
        "--word-position-weight", type=non_negative_float, default=0.0,
        help="weight of the auxiliary loss that predicts each word of an image's first caption, position by "
        "position, from the image embedding (for short, regular captions such as the generated set's)",
    )
    optim.add_argument(
        "--scene-weight", type=non_negative_float, default=0.0,
        help="weight of the auxiliary loss that predicts each column's colour, shape and size from the image "
        "embedding (the generated set only: its image records carry their scenes)",
    )
    optim.add_argument(
        "--object-map-weight", type=non_negative_float, default=0.0,
        help="weight of the auxiliary loss that predicts, for every cell of layer3's feature map, the colour and "
        "shape of the object there (the generated set only; needs --train-backbone)",
    )
    optim.add_argument(
        "--attention-reg", type=non_negative_float, default=1.0,
        help="soft_attention: weight of the doubly stochastic attention regularisation (Xu et al., 2015)",
    )
    optim.add_argument(
        "--captions-per-image", type=positive_int, default=None,
        help="captions of each image per step, drawn at random (default: all)",
    )
    optim.add_argument(
        "--train-languages", nargs="+", default=None,
        help="train on the captions in these languages only; the vocabulary still holds every language's "
             "words (e.g. fine-tune the encoder on one language, then train the decoder on all)",
    )
    optim.add_argument("--mixed-precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="autocast of the training step: auto is bf16 on CUDA and on CPUs with AMX or "
                            "AVX512-BF16, fp32 elsewhere")
    optim.add_argument("--augment", action="store_true", help="random shifts/scales (disables feature cache)")
    optim.add_argument("--max-steps", type=positive_int, default=None, help="stop each epoch after this many steps")
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", default="build/train")
    run.add_argument("--resume", default=None, help="checkpoint to continue from")
    run.add_argument(
        "--init-from", default=None,
        help="start a new run (fresh optimizer and schedule) from a checkpoint's weights, vocabulary and "
        "image size; e.g. train the decoder on a backbone fine-tuned by an earlier run, now frozen",
    )
    run.add_argument("--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--workers", type=non_negative_int, default=1, help="data loader processes")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--eval-captions", action="store_true", help="decode the val set and score it every epoch")
    return parser


class CachedFeatures(Dataset):
    """`CocoCaptions` items with backbone features (computed once) in place of images."""

    def __init__(self, captions: CocoCaptions, features: dict[int, torch.Tensor]) -> None:
        self.captions = captions
        self.features = features

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        image_id = self.captions.image_ids[index]
        return self.features[image_id], self.captions.caption_ids(image_id), image_id


@torch.inference_mode()
def compute_backbone_features(
    model: Captioner, dataset: CocoCaptions, device: torch.device, batch_size: int, quiet: bool
) -> dict[int, torch.Tensor]:
    """Run the frozen backbone once over each image of `dataset`."""
    model.encoder.backbone.eval()
    features: dict[int, torch.Tensor] = {}
    image_ids = dataset.image_ids
    for start in tqdm(range(0, len(image_ids), batch_size), desc="caching backbone features", disable=quiet):
        chunk = image_ids[start : start + batch_size]
        images = torch.stack([dataset.transform(dataset.load_image(i)) for i in chunk])
        out = model.encoder.backbone_features(images.to(device)).float().cpu()
        features.update(zip(chunk, out))
    return features


def training_autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `--mixed-precision` means on `device` (None: fp32).

    auto is bf16 on CUDA and on CPUs with bf16 matrix instructions (AMX, AVX512-BF16),
    where a ResNet-34 training step at 96 px ran 1.5 times faster than in fp32
    (README "Training"), and fp32 on other CPUs, which would emulate bf16 slowly.
    """
    precision = choose_precision(
        setting, device_type=device.type, cpu_flags=read_cpu_flags() if device.type == "cpu" else (),
        cuda_bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
    )
    return precision.encoder_dtype


class TrainingLoss(torch.nn.Module):
    """The captioner and its auxiliary heads as one module: `forward(batch)` is the training loss.

    Caption cross-entropy plus each auxiliary head's loss times its weight
    (`training.auxiliary_losses`), and for an attending decoder the doubly
    stochastic attention penalty times `attention_weight`. The heads read the
    mean over the grid's cells when the encoder keeps a grid. DistributedDataParallel averages the
    gradients of the parameters used in its wrapped module's forward, so with
    several processes the loss goes through this module (`training/distributed.py`).
    """

    def __init__(
        self,
        model: Captioner,
        *,
        uses_features: bool,
        concept_head: ConceptHead | None = None,
        concept_weight: float = 0.0,
        position_head: WordPositionHead | None = None,
        position_weight: float = 0.0,
        scene_head: SceneHead | None = None,
        scene_weight: float = 0.0,
        object_map_head: ObjectMapHead | None = None,
        object_map_weight: float = 0.0,
        attention_weight: float = 0.0,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.autocast_dtype = autocast_dtype
        self.model = model
        self.concept_head = concept_head
        self.position_head = position_head
        self.scene_head = scene_head
        self.uses_features = uses_features
        self.concept_weight = concept_weight
        self.position_weight = position_weight
        self.scene_weight = scene_weight
        self.object_map_head = object_map_head
        self.object_map_weight = object_map_weight
        self.attention_weight = attention_weight

    def forward(self, batch: CaptionBatch) -> torch.Tensor:
        images = None if self.uses_features else batch.images
        features = batch.images if self.uses_features else None
        with autocast_context(batch.captions.device, self.autocast_dtype):
            embeddings = self.model.embed_images(images, features)  # (B, E), or a (B, P, E) grid
            forced = self.model.teacher_forced(embeddings, batch.captions, batch.lengths, batch.owners)
            loss = torch.nn.functional.cross_entropy(forced.logits, forced.targets)
            if forced.attention is not None and self.attention_weight > 0:
                loss = loss + self.attention_weight * doubly_stochastic_penalty(forced.attention.float())
            embeddings = image_summary(embeddings).float()  # the heads read one (B, E) vector per image
            if self.concept_head is not None and self.concept_weight > 0:
                loss = loss + self.concept_weight * self.concept_head.loss(embeddings, batch, len(SPECIAL_TOKENS))
            if self.position_head is not None and self.position_weight > 0:
                loss = loss + self.position_weight * self.position_head.loss(
                    embeddings, batch, SPECIAL_TOKENS.index(PAD)
                )
            if self.scene_head is not None and self.scene_weight > 0:
                loss = loss + self.scene_weight * self.scene_head.loss(embeddings, batch)
            if self.object_map_head is not None and self.object_map_weight > 0:
                loss = loss + self.object_map_weight * self.object_map_head.loss(batch)
        return loss


def train_one_epoch(
    training_loss: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    *,
    epoch: int,
    max_steps: int | None = None,
    quiet: bool = False,
    channels_last: bool = False,
) -> list[float]:
    """One pass over `loader`; returns the loss of every step.

    `training_loss` is a `TrainingLoss`, or one wrapped in DistributedDataParallel.
    """
    training_loss.train()
    parameters = [p for p in training_loss.parameters() if p.requires_grad]
    losses = []
    # Only the steps that will run: the bar's total and ETA are those of a --max-steps epoch, and no batch
    # past the last is loaded.
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    progress = tqdm(islice(loader, steps), total=steps, desc=f"epoch {epoch}", disable=quiet, unit="batch")
    for batch in progress:
        batch = batch.to(device)
        if channels_last and batch.images.dim() == 4:  # clips (5-D) go channels-last frame by frame
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        loss = training_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, max_norm=5.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


@torch.inference_mode()
def evaluate_loss(model: Captioner, loader: DataLoader, device: torch.device, *, uses_features: bool) -> float | None:
    """Mean teacher-forced loss over `loader`; None when it holds nothing (`--val-fraction 0`)."""
    model.eval()
    held_out = TrainingLoss(model, uses_features=uses_features)  # no auxiliary heads: the caption loss alone
    total, count = 0.0, 0
    for batch in loader:
        loss = held_out(batch.to(device))
        total += loss.item() * len(batch.lengths)
        count += len(batch.lengths)
    return total / count if count else None


def caption_metrics(
    model: Captioner, vocab: Vocabulary, val_set: CocoCaptions, device: torch.device, batch_size: int
) -> dict[str, Any]:
    """Greedy captions of the val images, scored as `training.evaluate` does.

    In the model's first language that every val image has captions in (a multilingual
    model starts each caption with that language's token); {} when there is none.
    """
    from training.evaluate import caption_dataset, clips_of, scenes_of, score_captions

    if not val_set.image_ids:
        return {}
    for language in model.config.languages:
        references = val_set.references(language)
        if references and all(references.values()):
            break
    else:
        return {}
    predictions = caption_dataset(model, vocab, val_set, device=device, batch_size=batch_size, quiet=True,
                                  language=language)
    return score_captions(predictions, references, scenes_of(val_set), language, clips_of(val_set))


def plot_losses(history: dict[str, Any], path: Path, train_label: str = "train (smoothed)") -> None:
    """Training loss per step (smoothed) and held-out caption loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = history["train_loss"]
    window = max(1, len(steps) // 50)
    smoothed = [sum(steps[max(0, i - window + 1) : i + 1]) / len(steps[max(0, i - window + 1) : i + 1]) for i in range(len(steps))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(steps) + 1), smoothed, label=train_label)
    measured = [(i, loss) for i, loss in enumerate(history["val_loss"]) if loss is not None]
    if measured:
        per_epoch = len(steps) / len(history["val_loss"])
        ax.plot([per_epoch * (i + 1) for i, _ in measured], [loss for _, loss in measured], "o-",
                label="held-out caption loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("captioner training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def scene_layout(dataset: CocoCaptions) -> tuple[int, tuple[int, ...]]:
    """`SceneHead`'s slots and classes per attribute: one slot per object of a picture, or a clip as one."""
    return (1, MOTION_ATTRIBUTE_CLASSES) if is_video_set(dataset.coco) else (SCENE_SLOTS, SCENE_ATTRIBUTE_CLASSES)


def scene_targets(dataset: CocoCaptions) -> dict[int, torch.Tensor]:
    """Image id -> (columns, attributes) class ids for `SceneHead`, from the generated set's image records."""
    if is_video_set(dataset.coco):  # a clip's colour, shape, motion and new colour
        return {i: torch.tensor(motion_labels(dataset.coco.imgs[i])) for i in dataset.image_ids}
    targets = {}
    for image_id in dataset.image_ids:
        objects = dataset.coco.imgs[image_id].get("objects")
        if objects is None:
            raise SystemExit(
                f"--scene-weight needs the scene of every training image, and image {image_id} has no `objects` "
                "record; it works with the generated set (`make data`), not with COCO"
            )
        targets[image_id] = torch.tensor(scene_labels(objects))
    return targets


# The trunk's child that `ObjectMapHead` reads (model/backbones.py: 6 = layer3, stride 16).
OBJECT_MAP_LAYER = 6
OBJECT_MAP_STRIDE = 16


def object_map_head_for(model: Captioner, dataset: CocoCaptions, image_size: int) -> ObjectMapHead:
    """An `ObjectMapHead` on the backbone's layer3, with every training image's (or clip frame's) cell labels."""
    grid = -(-image_size // OBJECT_MAP_STRIDE)  # ceil: the convolutions' padding keeps a partial cell
    maps, video = {}, is_video_set(dataset.coco)
    for image_id in dataset.image_ids:
        record = dataset.coco.imgs[image_id]
        if video:  # every sampled frame's cells
            maps[image_id] = clip_object_map_labels(record, dataset.num_frames, grid)
            continue
        if "box" not in (record.get("objects") or [{}])[0]:
            raise SystemExit(f"--object-map-weight needs each object's box, and image {image_id} has none; it "
                             "works with the generated set (`make data`)")
        maps[image_id] = object_map_labels(record, grid)
    layer = model.encoder.backbone[OBJECT_MAP_LAYER]
    channels = [m for m in layer.modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels
    head = ObjectMapHead(channels, 1 + len(COLORS) * len(SHAPES), maps)
    head.watch(layer)
    return head


def build_datasets(args: argparse.Namespace, vocab: Vocabulary | None, config_image_size: int, mean, std,
                   num_frames: int = 1):
    """Training and validation datasets (images, or clips of `num_frames`), and the vocabulary."""
    coco = load_captions(args.annotations)
    if args.val_annotations:
        train_ids = sorted(coco.imgs)
        val_coco, val_ids = load_captions(args.val_annotations), None
    else:
        train_ids, val_ids = split_image_ids(list(coco.imgs), args.val_fraction, args.seed)
        val_coco = coco
        if not train_ids:  # a fraction that rounds every image of a small set into the held-out split
            raise NothingToTrainOn(
                f"--val-fraction {args.val_fraction} holds out all {len(val_ids)} images, leaving none to train on; "
                "give a smaller fraction, or held-out captions with --val-annotations")
    if vocab is None:
        languages = caption_languages(coco, train_ids)
        vocab = Vocabulary.build(
            ((ann["caption"], caption_language(ann)) for i in train_ids for ann in coco.imgToAnns[i]),
            min_count=args.min_word_count,
            languages=languages if len(languages) > 1 else (),  # one language needs no language tokens
        )
    train_tf = train_transform(image_size=config_image_size, mean=mean, std=std, augment=args.augment)
    val_tf = eval_transform(image_size=config_image_size, mean=mean, std=std)
    train_set = caption_set(coco, args.images, vocab, train_tf, train_ids, args.captions_per_image,
                            num_frames=num_frames, languages=args.train_languages,
                            skip_missing=args.skip_missing_images)
    # Held out in the languages trained on, so the held-out loss measures what this run learns.
    val_set = caption_set(val_coco, args.val_images or args.images, vocab, val_tf, val_ids, num_frames=num_frames,
                          languages=args.train_languages, skip_missing=args.skip_missing_images)
    return train_set, val_set, vocab


def one_cycle_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """One cycle over the whole run, up to each group's `lr` in the first 5% of the steps, then down.

    OneCycleLR's warm-up ends at step `pct_start * total_steps - 1` and divides by that:
    a warm-up of exactly one step (20 steps in all) would divide by zero, so it gets two.
    """
    pct_start = 0.05
    if pct_start * total_steps == 1:
        pct_start = 2 / total_steps
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps, pct_start=pct_start,
    )


def main(args: argparse.Namespace) -> Path:
    """Train and return the checkpoint path."""
    if args.word_position_weight > 0 and args.captions_per_image is not None:
        raise SystemExit("--word-position-weight reads each image's first caption; it needs every caption per step "
                         "(drop --captions-per-image)")
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    # Under torchrun: join the process group; only rank 0 prints and writes files.
    place, device = distributed.setup(args.device)
    if not place.is_main:
        args.quiet = True
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    earlier = output_dir / "checkpoint.pt"
    resumed_here = args.resume and earlier.resolve() in (Path(args.resume).resolve(),
                                                         Path(args.resume, "checkpoint.pt").resolve())
    if earlier.is_file() and place.is_main and not resumed_here:
        print(f"{earlier} holds an earlier run's checkpoint; this run's first epoch replaces it", flush=True)

    if args.resume and args.init_from:
        raise SystemExit("--resume continues a run and --init-from starts a new one from a checkpoint: give one")
    checkpoint = load_checkpoint(args.resume) if args.resume else None  # a run to continue
    source = checkpoint or (load_checkpoint(args.init_from) if args.init_from else None)  # weights to start from
    # Before any data is read, so a missing weights file fails at once.
    weights = load_encoder_weights(args.encoder_weights, args.backbone) if source is None else None
    if source is not None:
        config = CaptionerConfig.from_dict(source["config"])
        if checkpoint is None:  # --init-from: this run says whether the backbone trains, and which decoder
            config = dataclasses.replace(config, train_backbone=args.train_backbone)
            if args.decoder and args.decoder != config.decoder:
                config = dataclasses.replace(config, decoder=args.decoder,
                                             grid_size=args.grid_size or max(1, config.image_size // 32))
                source = {**source, "model": {k: v for k, v in source["model"].items() if k.startswith("encoder.")}}
        vocab = Vocabulary.from_dict(source["vocab"])
        train_set, val_set, _ = build_datasets(args, vocab, config.image_size, config.mean, config.std,
                                               config.num_frames)
    else:
        video = is_video_set(load_captions(args.annotations))
        num_frames = args.num_frames if video else 1
        train_set, val_set, vocab = build_datasets(args, None, args.image_size, IMAGENET_MEAN, IMAGENET_STD,
                                                   num_frames)
        config = CaptionerConfig(
            vocab_size=len(vocab),
            embed_size=args.embed_size,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            max_length=args.max_length,
            image_size=args.image_size,
            train_backbone=args.train_backbone,
            # A multilingual vocabulary lists its languages; one language is the captions' own.
            languages=tuple(vocab.languages or caption_languages(train_set.coco, train_set.image_ids)[:1]),
            backbone=args.backbone,
            decoder=args.decoder or "show_tell",
            grid_size=args.grid_size or max(1, args.image_size // 32),
            **({"modality": "video", "num_frames": num_frames, "temporal": args.temporal} if video else {}),
        )
    model = build_captioner(config)
    if weights is not None:
        model.encoder.load_backbone_state_dict(weights)
    if source is not None:
        missing, unexpected = model.load_state_dict(source["model"], strict=False)
        fresh_decoder = all(k.startswith("decoder.") for k in missing) and checkpoint is None
        if unexpected or (missing and not fresh_decoder):
            raise SystemExit(f"checkpoint does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        if missing and place.is_main:
            print(f"a new {config.decoder} decoder on the checkpoint's encoder")
    model.to(device)
    # oneDNN's CPU convolutions run faster on NHWC tensors when the backbone trains (~15% a step here).
    channels_last = config.train_backbone and device.type == "cpu"
    if channels_last:
        model.encoder.backbone.to(memory_format=torch.channels_last)
    autocast_dtype = training_autocast_dtype(args.mixed_precision, device)
    if place.is_main:
        print(f"training step in {'fp32' if autocast_dtype is None else 'bf16 autocast'} on {device.type}")

    uses_features = not config.train_backbone and not args.augment
    # What the run's options need of the data, checked before the feature pass (on COCO, minutes) and not after.
    if args.object_map_weight > 0 and uses_features:
        raise SystemExit("--object-map-weight trains the backbone's layer3: add --train-backbone")
    scenes = scene_targets(train_set) if args.scene_weight > 0 else None
    if uses_features:
        # The backbone is frozen and inputs never change: compute its features once.
        train_features = compute_backbone_features(model, train_set, device, args.batch_size, args.quiet)
        val_features = compute_backbone_features(model, val_set, device, args.batch_size, args.quiet)
        train_data, val_data = CachedFeatures(train_set, train_features), CachedFeatures(val_set, val_features)
        workers = 0
    else:
        train_data, val_data, workers = train_set, val_set, args.workers
    collate = partial(collate_captions, pad_id=vocab.pad_id)
    generator = torch.Generator().manual_seed(args.seed)
    sampler = distributed.train_sampler(train_data, place, args.seed)  # None for a single process
    train_loader = DataLoader(
        train_data, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler, collate_fn=collate,
        num_workers=workers, generator=generator, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    val_loader = DataLoader(val_data, batch_size=args.batch_size, collate_fn=collate, num_workers=0)

    concept_head = ConceptHead(config.embed_size, config.vocab_size).to(device) if args.concept_weight > 0 else None
    position_head = (
        WordPositionHead(config.embed_size, config.vocab_size, config.max_length).to(device)
        if args.word_position_weight > 0 else None
    )
    scene_head = (
        SceneHead(config.embed_size, *scene_layout(train_set), scenes).to(device) if scenes is not None else None
    )
    object_map_head = None
    if args.object_map_weight > 0:
        object_map_head = object_map_head_for(model, train_set, config.image_size).to(device)
    backbone = [p for p in model.encoder.backbone.parameters() if p.requires_grad]
    others = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.backbone.")]
    for head in (concept_head, position_head, scene_head, object_map_head):
        if head is not None:
            others += list(head.parameters())
    groups = [{"params": others, "lr": args.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": args.backbone_lr or args.lr})
    # Not `fused=True`: in torch 2.14 on CPU the fused update scrambles a channels-last weight
    # whose gradient arrives contiguous (one step differs from the default by 2 x lr), and a
    # run trained with it learnt far more slowly.
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_loader) if args.max_steps is None else min(len(train_loader), args.max_steps)
    scheduler = one_cycle_schedule(optimizer, max(1, args.epochs * steps_per_epoch))
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "epoch_seconds": [], "val_metrics": []}
    start_epoch = 0
    heads = (("concept_head", concept_head), ("position_head", position_head), ("scene_head", scene_head),
             ("object_map_head", object_map_head))
    for name, head in heads:  # a checkpoint written before a head was saved starts that head afresh
        if head is not None and source is not None and name in source:
            head.load_state_dict(source[name])
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        history = checkpoint["history"]
        start_epoch = checkpoint["epoch"] + 1
        # The schedule follows this run's --epochs (which may extend the first run's),
        # fast-forwarded to the steps already taken.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(min(len(history["train_loss"]), scheduler.total_steps - 1)):
                scheduler.step()
        if start_epoch >= args.epochs and place.is_main:
            print(f"checkpoint already finished epoch {checkpoint['epoch'] + 1} of {args.epochs}; nothing to do")
        elif place.is_main:
            print(f"resuming from {args.resume} at epoch {start_epoch + 1} of {args.epochs}", flush=True)

    training_loss: torch.nn.Module = TrainingLoss(
        model, uses_features=uses_features, concept_head=concept_head, concept_weight=args.concept_weight,
        position_head=position_head, position_weight=args.word_position_weight,
        scene_head=scene_head, scene_weight=args.scene_weight, object_map_head=object_map_head,
        object_map_weight=args.object_map_weight, attention_weight=args.attention_reg,
        autocast_dtype=autocast_dtype,
    )
    if place.enabled:  # wrapped once every weight is loaded: DDP starts all ranks from rank 0's
        training_loss = distributed.wrap(training_loss, place, device)
    checkpoint_path = output_dir / "checkpoint.pt"
    if checkpoint is not None and not restore_random_states(checkpoint.get("random_states"), generator) \
            and place.is_main and start_epoch < args.epochs:
        print("this checkpoint predates saved random states: the resumed epochs draw their batches in a new order")
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        losses = train_one_epoch(
            training_loss, train_loader, optimizer, scheduler, device,
            epoch=epoch + 1, max_steps=args.max_steps, quiet=args.quiet, channels_last=channels_last,
        )
        if not place.is_main:
            continue  # rank 0 evaluates and writes; the others go on to the next epoch
        val_loss = evaluate_loss(model, val_loader, device, uses_features=uses_features)
        history["train_loss"].extend(losses)
        history["val_loss"].append(val_loss)
        history["epoch_seconds"].append(time.perf_counter() - started)
        metrics = caption_metrics(model, vocab, val_set, device, args.batch_size) if args.eval_captions else {}
        history["val_metrics"].append(metrics)
        print(
            f"epoch {epoch + 1}/{args.epochs}: train loss {sum(losses) / max(len(losses), 1):.4f}, "
            + ("no held-out images" if val_loss is None else f"val loss {val_loss:.4f}")
            + f", {history['epoch_seconds'][-1]:.0f}s"
            + "".join(f", {k} {v}" for k, v in metrics.items() if k in ("bleu4", "cider", "attribute_accuracy", "motion_accuracy")),
            flush=True,
        )
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                **{name: head.state_dict() for name, head in heads if head is not None},
                "epoch": epoch,
                "args": {k: v for k, v in vars(args).items()},
                "config": config.to_dict(),
                "vocab": vocab.to_dict(),
                "history": history,
                "random_states": random_states(generator),
            },
            checkpoint_path,
        )
        (output_dir / "history.json").write_text(json.dumps(history))
        auxiliary = (args.concept_weight > 0 or args.word_position_weight > 0 or args.scene_weight > 0
                     or args.object_map_weight > 0)
        plot_losses(
            history, output_dir / "loss_curve.png",
            "train: caption + auxiliary losses (smoothed)" if auxiliary else "train: caption loss (smoothed)",
        )
    distributed.wait_for_all(place)  # every process returns once rank 0 has written the checkpoint
    return checkpoint_path


def interrupted_message(args: argparse.Namespace, started: float) -> str:
    """What Ctrl-C leaves behind, in one line: the checkpoint a rerun goes on from, and how.

    A checkpoint is written at the end of every epoch. One in --output-dir newer
    than this run's start is this run's latest; else the run's --resume is still
    the latest; else (a new run stopped in its first epoch) there is none, and an
    older run's file left in --output-dir is not offered as this one's.
    """
    written = Path(args.output_dir) / "checkpoint.pt"
    if written.is_file() and written.stat().st_mtime >= started:
        last = written
    elif args.resume:
        last = Path(args.resume)
    else:
        return "interrupted before the first epoch ended, so no checkpoint was written; run the command again to start over"
    return (f"interrupted; the last checkpoint is {last} (saved at the end of an epoch): to go on from it, run the "
            f"same command with --resume {last}")


if __name__ == "__main__":
    started = time.time()
    args = get_args_parser().parse_args()
    try:
        with user_errors():
            main(args)
    except KeyboardInterrupt:  # Ctrl-C: where to go on from, not a traceback of wherever the step was
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one process says it
            print(interrupted_message(args, started), file=sys.stderr, flush=True)
        raise SystemExit(130) from None  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped
    finally:
        distributed.cleanup()
