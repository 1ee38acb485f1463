"""Training-only heads that give a from-scratch encoder a direct signal; none is exported.

With a randomly initialised backbone, the caption loss reaches the encoder only
through the LSTM, and the encoder is slow to start. Each head here reads the
image embedding alone and adds a loss that says something about the picture:

- `ConceptHead`: which words the image's captions use (any caption set);
- `WordPositionHead`: each word of the image's first caption, by position
  (short captions written to one pattern, such as the generated set's);
- `SceneHead`: what stands in each column of the picture (the generated set,
  whose image records carry their scenes).

README "Training" records what each changed.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from training.coco_data import CaptionBatch


class ConceptHead(nn.Module):
    """Predicts, from the image embedding alone, which words the image's captions use.

    "Visual concepts" learned from captions, as in Fang et al., 2015. It says
    which colours and shapes a scene holds, but not which object has which.
    """

    def __init__(self, embed_size: int, vocab_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_size, vocab_size)

    def loss(self, embeddings: torch.Tensor, batch: CaptionBatch, first_word_id: int) -> torch.Tensor:
        captions = batch.captions
        targets = torch.zeros(len(embeddings), self.linear.out_features, device=captions.device)  # (B, V)
        real = torch.arange(captions.shape[1], device=captions.device) < batch.lengths.to(captions.device)[:, None]
        rows = batch.owners[:, None].expand_as(captions)[real]  # image of each real token
        targets[rows, captions[real]] = 1.0
        logits = self.linear(embeddings)[:, first_word_id:]  # special tokens carry no concept
        return F.binary_cross_entropy_with_logits(logits, targets[:, first_word_id:])


class WordPositionHead(nn.Module):
    """Predicts the words of each image's first caption, position by position, from its embedding alone.

    Predicting word t of one reference caption ties each attribute to its place
    in the sentence, which the concept head cannot. It needs every image's
    first caption in the batch (an image's captions travel together).
    """

    def __init__(self, embed_size: int, vocab_size: int, max_length: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.linear = nn.Linear(embed_size, vocab_size * max_length)

    def loss(self, embeddings: torch.Tensor, batch: CaptionBatch, pad_id: int) -> torch.Tensor:
        owners = batch.owners
        first = torch.ones_like(owners, dtype=torch.bool)
        first[1:] = owners[1:] != owners[:-1]  # an image's captions are consecutive in the batch
        targets = batch.captions[first][:, 1 : self.max_length + 1]  # drop <start>; (B, <= max_length)
        targets = F.pad(targets, (0, self.max_length - targets.shape[1]), value=pad_id)
        logits = self.linear(embeddings).view(-1, self.max_length, self.vocab_size)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)


class SceneHead(nn.Module):
    """Predicts, for each object of the picture from left to right, its colour, shape, size and column (or none).

    The encoder pools its last feature map to one vector, so it must learn to keep
    *where* each colour is, or a caption cannot say which shape has which colour;
    captions teach that only through the LSTM. Column labels are local to the
    feature map and reach the encoder directly. With this loss (and a second stage
    that trains the decoder on the frozen backbone), 90 of 93 held-out three-object
    scenes were named right, against 52 before (README "Training").

    Args:
        embed_size: image embedding size.
        columns: slots, one per object from the left (3; a video clip: 1).
        attribute_classes: classes per attribute, none included (colour, shape, size).
        scenes: image id -> (columns, attributes) class ids, from the image records.
    """

    def __init__(
        self, embed_size: int, columns: int, attribute_classes: tuple[int, ...], scenes: Mapping[int, torch.Tensor]
    ) -> None:
        super().__init__()
        self.columns = columns
        self.attribute_classes = attribute_classes
        self.scenes = scenes  # labels, not state: never saved with the head
        self.linear = nn.Linear(embed_size, columns * sum(attribute_classes))

    def loss(self, embeddings: torch.Tensor, batch: CaptionBatch) -> torch.Tensor:
        targets = torch.stack([self.scenes[int(i)] for i in batch.image_ids]).to(embeddings.device)  # (B, C, A)
        logits = self.linear(embeddings).view(len(embeddings), self.columns, -1)
        per_attribute = logits.split(self.attribute_classes, dim=-1)
        losses = [
            F.cross_entropy(part.flatten(0, 1), targets[..., a].flatten()) for a, part in enumerate(per_attribute)
        ]
        return torch.stack(losses).mean()


def doubly_stochastic_penalty(attention: torch.Tensor) -> torch.Tensor:
    """Xu et al.'s doubly stochastic regularisation: over a caption, each cell's weights should sum to 1.

    Every step's weights sum to 1 over the cells already (a softmax); this asks the
    sum over the steps to be about 1 for every cell too, so the decoder looks at
    the whole picture in the course of a caption instead of at one cell throughout.

    Args:
        attention: (N, T, P) per-step weights, zero past each caption's end.
    Returns:
        the mean over captions and cells of (1 - sum over steps)^2.
    """
    return ((1.0 - attention.sum(dim=1)) ** 2).mean()


def object_map_labels(record: dict, grid: int) -> torch.Tensor:
    """(grid, grid) class ids of a generated image's cells: 0 background, 1 + colour*3 + shape inside an object.

    The image is squashed to a square input, so a cell's centre maps back to the
    canvas by the width and the height apart. A cell whose centre lies in the ring
    between 0.85 and 1.25 radii of an object (the edge, where a square's corner or
    a triangle's side may or may not cover it) is ignored (-100); an object too
    small to cover any cell's centre still claims the cell under its centre.
    """
    from training.shapes_world import COLORS, SHAPES

    labels = torch.zeros(grid, grid, dtype=torch.long)
    width, height = record["width"], record["height"]
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(centres * height, centres * width, indexing="ij")
    for obj in record["objects"]:
        x0, y0, x1, y1 = obj["box"]
        x, y, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        distance = torch.hypot(cx - x, cy - y) / r
        label = 1 + COLORS.index(obj["color"]) * len(SHAPES) + SHAPES.index(obj["shape"])
        labels[(distance > 0.85) & (distance < 1.25) & (labels == 0)] = -100
        labels[distance <= 0.85] = label
        labels[min(grid - 1, int(y / height * grid)), min(grid - 1, int(x / width * grid))] = label
    return labels


def clip_object_map_labels(record: dict, num_frames: int, grid: int) -> torch.Tensor:
    """(num_frames, grid, grid) class ids of a generated clip's sampled frames, each read as `object_map_labels`.

    The frames are the ones the model is shown (`model.video.sample_frame_indices`),
    so a frame where the shape has not yet appeared, or has turned another colour,
    is labelled as it looks.
    """
    from model.video import sample_frame_indices
    from training.video_data import frame_objects

    frames = sample_frame_indices(record["frame_count"], num_frames)
    return torch.stack([
        object_map_labels({"width": record["width"], "height": record["height"], "objects": frame_objects(record, i)},
                          grid)
        for i in frames
    ])


class ObjectMapHead(nn.Module):
    """Predicts, for every cell of an intermediate feature map, the colour and shape of the object there (or none).

    The caption, concept and scene losses all reach the encoder through one pooled
    vector per image, so a from-scratch backbone learns slowly what colour is where:
    on the randomised world, two stage-1 epochs with them alone named every object
    right on 3% of held-out images (README "Training"). A 1x1 convolution on
    `layer3`'s map (stride 16) with a per-cell cross-entropy gives each image
    dozens of labelled positions instead of one, the way dense prediction heads
    (segmentation, CenterNet) train a backbone. The targets come from the image
    records' boxes (`object_map_labels`); the head is training-only.

    Args:
        channels: channels of the hooked feature map.
        classes: background + colour x shape classes.
        maps: image id -> (G, G) labels, or (N, G, G) for a clip whose N frames the backbone reads
            one after another; G must match the hooked map's size.
    """

    def __init__(self, channels: int, classes: int, maps: Mapping[int, torch.Tensor]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, classes, kernel_size=1)
        self.maps = maps  # labels, not state: never saved with the head
        self.feature_map: torch.Tensor | None = None

    def watch(self, layer: nn.Module) -> None:
        """Keep `layer`'s output of every forward pass, for `loss`."""
        layer.register_forward_hook(lambda _module, _inputs, output: setattr(self, "feature_map", output))

    def loss(self, batch: CaptionBatch) -> torch.Tensor:
        if self.feature_map is None:
            raise RuntimeError("ObjectMapHead.loss before a forward pass of the watched layer")
        logits = self.conv(self.feature_map.float())  # (B, K, G, G); clips: (B*N, K, G, G)
        targets = torch.stack([self.maps[int(i)] for i in batch.image_ids]).to(logits.device)
        targets = targets.reshape(-1, *targets.shape[-2:])  # a clip's frames in the backbone's order
        if targets.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"object map labels are {tuple(targets.shape[-2:])}, the feature map "
                             f"{tuple(logits.shape[-2:])}: build them for this image size")
        return F.cross_entropy(logits, targets, ignore_index=-100)
