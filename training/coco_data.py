"""COCO captions through pycocotools: any COCO-format caption file plus its image folder.

Used alike for real COCO (`captions_train2017.json` + `train2017/`) and for the
generated shapes set. Splits are made by image, so no image's captions leak
from training into evaluation.

Captions may be in several languages: an annotation's `language` field (ISO
639-1) says which, as the generated set writes it; a file without them is read
as one language named on the command line, `LANG=PATH` (`ja=stair_captions.json`
for STAIR Captions, `zh=coco-cn_train.json` for COCO-CN); several files over the
same images are merged (`load_captions`).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from model.transforms import to_rgb
from model.video import ClipTransform
from model.video_frames import VideoLimits, VideoReadError, read_clip
from model.vocabulary import Vocabulary

_SHOWN_MISSING = 3  # file names a missing-images message lists
_SHOWN_VALUE = 40  # characters of a wrong value a message quotes


class MissingImages(FileNotFoundError):
    """Images the caption file names are not in the image folder (a partial download, the wrong folder)."""


class UnreadableImage(OSError):
    """An image (or clip) file of the set that cannot be decoded, named with its id so it can be fixed or dropped."""


class NotACaptionFile(ValueError):
    """A file given as captions that holds none: not JSON, another COCO task's file, or an empty set.

    Caught at once, by name, rather than as pycocotools' KeyError or an empty
    vocabulary's complaint about languages several steps later.
    """


class NothingToTrainOn(ValueError):
    """A split that leaves no images to train on (`--val-fraction` holding out every image)."""


class NoCaptionsInLanguage(ValueError):
    """Captions asked for in a language that the set (or the model reading it) does not have them in."""


class SharedImages(ValueError):
    """Two image sets that must be apart share images (held-out images that are also fitting images)."""


def missing_image_ids(coco: COCO, image_dir: Path, image_ids: Sequence[int]) -> list[int]:
    """The ids among `image_ids` whose file is not under `image_dir` (a stat per file: seconds for all of COCO)."""
    return [i for i in image_ids if not (image_dir / coco.imgs[i]["file_name"]).exists()]


def _missing_message(coco: COCO, image_dir: Path, missing: Sequence[int], total: int) -> str:
    names = ", ".join(coco.imgs[i]["file_name"] for i in missing[:_SHOWN_MISSING])
    more = ", ..." if len(missing) > _SHOWN_MISSING else ""
    return f"{len(missing)} of {total} images the captions name are not in {image_dir} ({names}{more})"


def load_coco(annotation_file: Path | str, *, warn_unlisted: bool = True) -> COCO:
    """Open a COCO caption file, with a clear error when it is missing.

    `warn_unlisted`: say how many captions name images the file does not list
    (off when files are merged: another file may list them).
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"no COCO annotation file at {path}; run `make data` for the generated set, "
            "or point --annotations at captions_train2017.json from cocodataset.org"
        )
    coco = _indexed(read_caption_document(path))
    if not any(image_id in coco.imgToAnns for image_id in coco.imgs):
        unmatched = ", none of a listed image" if coco.imgs and coco.anns else ""
        raise NotACaptionFile(f"{path} holds no captioned images ({len(coco.imgs)} images, {len(coco.anns)} "
                              f"captions{unmatched}); give a caption file whose captions name its images")
    if warn_unlisted:
        warn_of_unlisted_images(coco, str(path))
    return coco


def _indexed(document: dict) -> COCO:
    """pycocotools' index over a caption document already checked by `read_caption_document`."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco = COCO()
        coco.dataset = document
        coco.createIndex()
    return coco


def warn_of_unlisted_images(coco: COCO, source: str) -> None:
    """One line on stderr counting the captions of images the `images` list lacks.

    No dataset reads them (they have no file name), so they are left out; the
    line says so, because a file cut from a larger one loses them without a sign.
    """
    unlisted = sum(1 for annotation in coco.anns.values() if annotation["image_id"] not in coco.imgs)
    if unlisted:
        print(f"warning: {source}: left out {unlisted} captions of images not listed in \"images\"",
              file=sys.stderr, flush=True)


def read_caption_document(path: Path) -> dict:
    """The JSON of a COCO caption file (or a video set's, as COCO), checked to have the lists it needs.

    pycocotools indexes whatever it is given: a file of another kind would fail
    later, far from its name (a KeyError, "max() arg is an empty sequence").
    """
    what = "a COCO caption file"
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = f"{error.msg} at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else "not text"
        raise NotACaptionFile(f"{path} is not {what} (not JSON: {reason})") from None
    if not isinstance(document, dict):
        raise NotACaptionFile(f"{path} is not {what} (a JSON {type(document).__name__}, not an object with "
                              "\"images\" and \"annotations\" lists)")
    if "videos" in document:  # MSR-VTT style
        for key in ("videos", "sentences"):
            if not isinstance(document.get(key), list):
                raise NotACaptionFile(f"{path} is not a video caption file (no \"{key}\" list)")
        document = video_set_as_coco(document)
    for key in ("annotations", "images"):
        if not isinstance(document.get(key), list):
            raise NotACaptionFile(f"{path} is not {what} (no \"{key}\" list)")
    if any(not isinstance(i, dict) or "id" not in i for i in document["images"]):
        raise NotACaptionFile(f"{path} is not {what}: an image record has no \"id\"")
    if any(not isinstance(a, dict) or "caption" not in a for a in document["annotations"]):
        raise NotACaptionFile(f"{path} is not {what}: its annotations have no \"caption\" (an instances or "
                              "keypoints file? COCO's captions are captions_train2017.json and captions_val2017.json)")
    check_caption_records(path, document)
    return document


def check_caption_records(path: Path, document: dict) -> None:
    """Every field the datasets read, present and of its kind, so a bad record is named by its id.

    Unchecked, a caption of null fails as an AttributeError in the tokenizer and a
    record without `image_id` or `file_name` as a KeyError, neither saying where.
    """
    for image in document["images"]:
        if not isinstance(image.get("file_name"), str):
            raise NotACaptionFile(f"{path}: image {image['id']} has no \"file_name\"; every image record needs "
                                  "the name of its file in the image folder")
    for annotation in document["annotations"]:
        name = f"annotation {annotation.get('id', '(without an id)')}"
        if "image_id" not in annotation:
            raise NotACaptionFile(f"{path}: {name} has no \"image_id\"; every caption names the image it describes")
        if not isinstance(annotation["caption"], str):
            shown = json.dumps(annotation["caption"])
            shown = shown if len(shown) <= _SHOWN_VALUE else shown[:_SHOWN_VALUE] + "..."
            raise NotACaptionFile(f"{path}: {name} has a caption of {shown}, not text; fix or drop it")
    if document["annotations"] and not any(a["caption"].strip() for a in document["annotations"]):
        raise NothingToTrainOn(f"{path}: every one of its {len(document['annotations'])} captions is blank; "
                               "give a caption file with the captions written in")


def video_set_as_coco(document: dict) -> dict:
    """An MSR-VTT-style video set ("videos" + "sentences", `training/video_data.py`) as a COCO caption set.

    Each video becomes an "image" record (its `id`, `file_name` and the rest of
    its record), each sentence an annotation of it, so the datasets below, the
    splits and the scorers treat clips like images.
    """
    ids = {video["video_id"]: video["id"] for video in document["videos"]}
    annotations = [
        {"id": sentence["sen_id"], "image_id": ids[sentence["video_id"]], "caption": sentence["caption"]}
        for sentence in document["sentences"]
    ]
    return {"info": document.get("info", {}), "modality": "video", "images": document["videos"],
            "annotations": annotations}


def is_video_set(coco: COCO) -> bool:
    """True for a caption set read from a video set's annotations."""
    return coco.dataset.get("modality") == "video"


DEFAULT_LANGUAGE = "en"


def caption_language(annotation: dict) -> str:
    """The language an annotation is written in: its `language` field, English without one."""
    return annotation.get("language", DEFAULT_LANGUAGE)


def load_captions(sources: Path | str | Sequence[Path | str]) -> COCO:
    """One COCO caption index from one or more files over the same images.

    Each source is `PATH` (every annotation's own `language`, English where it
    has none) or `LANG=PATH` (all of the file's captions in LANG). Images are
    taken from the first file that names them; annotation ids are renumbered
    when files are merged, so two files' ids cannot collide.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if len(sources) == 1 and "=" not in str(sources[0]):
        return load_coco(sources[0])  # the common case, as pycocotools reads it
    images: dict[int, dict] = {}
    annotations: list[dict] = []
    for source in sources:
        language, _, path = str(source).partition("=") if "=" in str(source) else ("", "", str(source))
        coco = load_coco(path, warn_unlisted=False)
        for image in coco.dataset["images"]:
            images.setdefault(image["id"], image)
        for annotation in coco.dataset["annotations"]:
            tagged = {**annotation, "id": len(annotations) + 1}
            if language:
                tagged["language"] = language
            annotations.append(tagged)
    merged = _indexed({"images": list(images.values()), "annotations": annotations, "info": {}, "licenses": []})
    warn_of_unlisted_images(merged, " + ".join(str(source) for source in sources))
    return merged


def caption_languages(coco: COCO, image_ids: Sequence[int] | None = None) -> list[str]:
    """The languages of the captions of `image_ids` (all images when None), in order of first appearance."""
    ids = coco.imgs if image_ids is None else image_ids
    seen: dict[str, None] = {}
    for image_id in ids:
        for annotation in coco.imgToAnns[image_id]:
            seen.setdefault(caption_language(annotation), None)
    return list(seen)


def split_image_ids(image_ids: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Shuffle image ids and cut them into (train, val); an image lands in exactly one split."""
    ids = sorted(image_ids)
    random.Random(seed).shuffle(ids)
    n_val = int(round(len(ids) * val_fraction))
    return sorted(ids[n_val:]), sorted(ids[:n_val])


class CocoCaptions(Dataset):
    """One item per image: (image tensor, list of caption id tensors, image id).

    All of an image's captions travel together, so training runs the encoder
    once per image and the decoder over each of its (typically five) captions.

    Args:
        coco: an opened caption file.
        image_dir: folder holding the files named by `images[].file_name`.
        vocab: turns captions into ids.
        transform: PIL RGB image -> tensor (from `model.transforms`).
        image_ids: restrict to these images (a split); all when None.
        languages: train on the captions in these languages only (all when None).
        captions_per_image: each time an image is read, this many of its captions,
            drawn at random (all when None). The decoder is a fifth of a training
            step's cost with five captions; fewer per step trade caption variety
            within a step for more steps per minute.
        skip_missing: leave out images whose file is not in `image_dir`, saying how
            many; by default such a set is refused at once, naming a few of them,
            rather than failing mid-epoch on the first one read.
    """

    def __init__(
        self,
        coco: COCO,
        image_dir: Path | str,
        vocab: Vocabulary,
        transform: Callable[[Image.Image], torch.Tensor],
        image_ids: Sequence[int] | None = None,
        captions_per_image: int | None = None,
        languages: Sequence[str] | None = None,
        skip_missing: bool = False,
    ) -> None:
        self.coco = coco
        self.image_dir = Path(image_dir)
        self.vocab = vocab
        self.transform = transform
        self.image_ids = sorted(coco.imgs) if image_ids is None else sorted(image_ids)
        if not self.image_dir.is_dir():
            raise MissingImages(f"image folder {self.image_dir} does not exist")
        absent = missing_image_ids(coco, self.image_dir, self.image_ids)
        if absent and (not skip_missing or len(absent) == len(self.image_ids)):
            hint = "" if skip_missing else "; point at the folder that holds them, or skip them with --skip-missing-images"
            raise MissingImages(_missing_message(coco, self.image_dir, absent, len(self.image_ids)) + hint)
        if absent:
            print(f"skipping {_missing_message(coco, self.image_dir, absent, len(self.image_ids))}", flush=True)
            gone = set(absent)
            self.image_ids = [i for i in self.image_ids if i not in gone]
        if captions_per_image is not None and captions_per_image < 1:
            raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")
        self.captions_per_image = captions_per_image
        self.languages = None if languages is None else frozenset(languages)
        self._check_every_image_has_captions()

    def _check_every_image_has_captions(self) -> None:
        """Refuse images without a caption (in the languages asked for) before any is read.

        An image without one would give a training step no target and an
        evaluation no reference.
        """
        uncaptioned = [i for i in self.image_ids if not self.coco.imgToAnns[i]]
        if uncaptioned:
            raise NotACaptionFile(f"{len(uncaptioned)} images have no captions, e.g. image id {uncaptioned[0]}; "
                                  "caption them, or drop them from the caption file's \"images\"")
        if self.languages is None:
            return
        missing = [i for i in self.image_ids
                   if not any(caption_language(a) in self.languages for a in self.coco.imgToAnns[i])]
        if missing:
            wanted = ", ".join(sorted(self.languages))
            have = ", ".join(caption_languages(self.coco, self.image_ids))
            raise NoCaptionsInLanguage(f"{len(missing)} images have no captions in {wanted}, e.g. image id "
                                       f"{missing[0]} (the set's captions are in {have})")

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, image_id: int) -> Image.Image:
        path = self.image_dir / self.coco.imgs[image_id]["file_name"]
        try:
            with Image.open(path) as image:
                return to_rgb(image)
        except (OSError, SyntaxError, ValueError) as error:  # Pillow's errors for corrupt and truncated files
            raise UnreadableImage(
                f"image {path} (id {image_id}) cannot be read: {error}; replace the file, or drop the image "
                "from the caption file"
            ) from error

    def caption_ids(self, image_id: int) -> list[torch.Tensor]:
        """The image's captions as id tensors: all, or a random `captions_per_image` of them in file order."""
        annotations = self.coco.imgToAnns[image_id]
        if self.languages is not None:
            annotations = [a for a in annotations if caption_language(a) in self.languages]
        if self.captions_per_image is not None and self.captions_per_image < len(annotations):
            keep = sorted(random.sample(range(len(annotations)), self.captions_per_image))
            annotations = [annotations[k] for k in keep]
        return [torch.tensor(self.vocab.encode(ann["caption"], caption_language(ann))) for ann in annotations]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        image_id = self.image_ids[index]
        return self.transform(self.load_image(image_id)), self.caption_ids(image_id), image_id

    def references(self, language: str | None = None) -> dict[int, list[str]]:
        """Reference captions per image, for BLEU/CIDEr: those in `language`, or all when None."""
        return {
            i: [ann["caption"] for ann in self.coco.imgToAnns[i] if language in (None, caption_language(ann))]
            for i in self.image_ids
        }


class VideoCaptions(CocoCaptions):
    """`CocoCaptions` over clips: an item's picture is its `num_frames` sampled frames, (N, 3, S, S).

    Frames are read with the handler's own reader (`model/video_frames.py`) and
    prepared by `ClipTransform` around the per-frame `transform`.
    """

    def __init__(self, coco: COCO, image_dir: Path | str, vocab: Vocabulary,
                 transform: Callable[[Image.Image], torch.Tensor], image_ids: Sequence[int] | None = None,
                 captions_per_image: int | None = None, *, num_frames: int,
                 languages: Sequence[str] | None = None, skip_missing: bool = False) -> None:
        super().__init__(coco, image_dir, vocab, ClipTransform(transform, num_frames), image_ids, captions_per_image,
                         languages, skip_missing)
        self.num_frames = num_frames

    def load_image(self, image_id: int) -> list[Image.Image]:
        """The clip's sampled frames."""
        path = self.image_dir / self.coco.imgs[image_id]["file_name"]
        limits = VideoLimits(max_video_bytes=1 << 40, max_video_seconds=float("inf"), max_video_frames=1 << 30,
                             max_frame_pixels=1 << 40)  # the set's own files: no request limits
        try:
            return read_clip(path.read_bytes(), self.num_frames, limits).frames
        except (OSError, VideoReadError) as error:  # the reader's message names neither the file nor its id
            raise UnreadableImage(
                f"clip {path} (id {image_id}) cannot be read: {error}; replace the file, or drop the clip "
                "from the caption file"
            ) from error


@dataclass
class CaptionBatch:
    """A padded batch: B images (or their features) and N >= B captions.

    `owners[n]` is the row in `images` that caption n describes.
    """

    images: torch.Tensor  # (B, ...)
    captions: torch.Tensor  # (N, T)
    lengths: torch.Tensor  # (N,)
    owners: torch.Tensor  # (N,)
    image_ids: torch.Tensor  # (B,)

    def to(self, device: torch.device) -> "CaptionBatch":
        return CaptionBatch(
            self.images.to(device, non_blocking=True),
            self.captions.to(device, non_blocking=True),
            self.lengths,
            self.owners.to(device, non_blocking=True),
            self.image_ids,
        )


def collate_captions(batch: list[tuple[torch.Tensor, list[torch.Tensor], int]], pad_id: int = 0) -> CaptionBatch:
    """Stack images and pad every caption of every image into one (N, T) tensor."""
    images, caption_lists, image_ids = zip(*batch)
    captions = [c for caps in caption_lists for c in caps]
    owners = torch.tensor([row for row, caps in enumerate(caption_lists) for _ in caps])
    lengths = torch.tensor([len(c) for c in captions])
    padded = torch.full((len(captions), int(lengths.max())), pad_id, dtype=torch.long)
    for row, caption in enumerate(captions):
        padded[row, : len(caption)] = caption
    return CaptionBatch(torch.stack(images), padded, lengths, owners, torch.tensor(image_ids))


def caption_set(coco: COCO, image_dir: Path | str, vocab: Vocabulary, transform: Callable[[Image.Image], torch.Tensor],
                image_ids: Sequence[int] | None = None, captions_per_image: int | None = None, *,
                num_frames: int = 1, languages: Sequence[str] | None = None,
                skip_missing: bool = False) -> CocoCaptions:
    """`VideoCaptions` for a video set, `CocoCaptions` for images: what training and evaluation read."""
    if is_video_set(coco):
        return VideoCaptions(coco, image_dir, vocab, transform, image_ids, captions_per_image, num_frames=num_frames,
                             languages=languages, skip_missing=skip_missing)
    return CocoCaptions(coco, image_dir, vocab, transform, image_ids, captions_per_image, languages=languages,
                        skip_missing=skip_missing)
