"""Caption held-out images and score them: BLEU-1..4, CIDEr-D and, on the shapes set, attribute accuracy.

    python -m training.evaluate --export-dir build/export \
        --annotations data/shapes/annotations/captions_val.json --images data/shapes/images
    python -m training.evaluate ... --do-sample --top-p 0.9 --num-captions 5     # diversity too
    python -m training.evaluate ... --beam-size 6 --beam-groups 3 --diversity 0.5 --num-captions 6
    python -m training.evaluate ... --held-out second_renderer \
        data/second/annotations/captions_val.json data/second/images    # a second held-out set too

Prints one JSON line of metrics. BLEU and CIDEr-D are pycocoevalcap's
corpus-level scorers (pure Python); captions are tokenised with the model's own
tokenizer instead of the Java PTB tokenizer. Attribute accuracy is the share of
images whose caption names exactly the scene's (colour, shape) pairs; it is
reported only when the annotation file carries scenes (the generated sets do),
with `by_objects`, the same share among the images of 1, 2 and 3 objects.

With `--num-captions` N > 1 those figures score each image's best caption, and
`diversity_metrics` scores all N: distinct-1/2, mBLEU-4, oracle BLEU-4 and
oracle and all-captions attribute accuracy (see its docstring).

A multilingual model is scored in each of its languages that the file has
references in: the top-level figures are its default language's (the first),
and `languages` holds every language's own, each caption read back by that
language's parser (`training/caption_languages/`). Each batch of images is
encoded once and decoded in every language from the same embeddings.

Each `--held-out NAME ANNOTATIONS IMAGES` adds a block under NAME with the same
figures for that set (the top-level ones stay the first set's), decoded the same
way: the generated set's own held-out split at the top and the second renderer's
images (`training/second_renderer.py`) under `second_renderer`, as `make eval` runs it:

    {"bleu1": ..., "bleu4": 0.99, "cider": 3.1, "attribute_accuracy": 0.96,
     "by_objects": {"1": {"attribute_accuracy": 0.99, "images": 98}, "2": {...}, "3": {...}},
     "images": 300, "language": "en", "languages": {"en": {...}, "fr": {...}, ...},
     "decoding": "greedy", "num_captions": 1, "seconds": 30.1,
     "second_renderer": {"bleu1": ..., "bleu4": ..., "cider": ..., "attribute_accuracy": ...,
                         "by_objects": {...}, "images": 300, "language": "en", "languages": {...},
                         "seconds": 41.0}}
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from tqdm import tqdm

from model.batch_captioning import DecodeSpec, decode_mixed
from model.captioner import Captioner
from model.export_format import load_exported_captioner
from model.transforms import eval_transform
from model.vocabulary import Vocabulary, tokenize
from training.cli import non_negative_int, positive_float, positive_int, torch_device, user_errors
from training.coco_data import (
    DEFAULT_LANGUAGE,
    CocoCaptions,
    NoCaptionsInLanguage,
    caption_set,
    is_video_set,
    load_captions,
)
from training.shapes_dataset import names_every_object
from training.video_data import names_clip

SEED_RANGE = 2**32


def _for_image(spec: DecodeSpec, image_id: int) -> DecodeSpec:
    """A sampled spec's seed moved by the image id: images draw different numbers, and a run repeats."""
    if not spec.sample or spec.seed is None:
        return spec
    return replace(spec, seed=(spec.seed + image_id) % SEED_RANGE)


@torch.inference_mode()
def caption_every_language(
    model: Captioner,
    vocab: Vocabulary,
    dataset: CocoCaptions,
    *,
    device: torch.device,
    spec: DecodeSpec,
    languages: Sequence[str | None],
    batch_size: int = 64,
    quiet: bool = False,
) -> dict[str | None, dict[int, list[list[str]]]]:
    """Per language, every caption `spec` asks for (best first, as words) of every image of `dataset`.

    Each batch is read and encoded once and decoded from the same embeddings in every
    language (None: the model's default), each language as its own batch of the same
    rows, so the captions are those of one language at a time, for the encoder's cost
    of one.
    """
    model.eval()
    predictions: dict[str | None, dict[int, list[list[str]]]] = {language: {} for language in languages}
    ids = dataset.image_ids
    for start in tqdm(range(0, len(ids), batch_size), desc="captioning", unit="batch", disable=quiet):
        chunk = ids[start : start + batch_size]
        images = torch.stack([dataset.transform(dataset.load_image(i)) for i in chunk]).to(device)
        embeddings = model.encode(images)
        specs = [_for_image(spec, image_id) for image_id in chunk]
        for language, captioned in predictions.items():
            captions, _ = decode_mixed(
                model.decoder, embeddings, specs, start_id=vocab.start_id_for(language), end_id=vocab.end_id,
                unwritten_ids=vocab.unwritten_ids,
            )  # the same dispatch (greedy, beam, sampling) the handler uses
            for image_id, caption in zip(chunk, captions):
                captioned[image_id] = [vocab.decode(c.tokens) for c in [caption, *caption.alternatives]]
    return predictions


def caption_every_image(
    model: Captioner,
    vocab: Vocabulary,
    dataset: CocoCaptions,
    *,
    device: torch.device,
    spec: DecodeSpec,
    batch_size: int = 64,
    quiet: bool = False,
    language: str | None = None,
) -> dict[int, list[list[str]]]:
    """Every caption `spec` asks for (best first, as words) of every image of `dataset`, in batches.

    `language`: the captions' language, for a multilingual model (None: its default).
    """
    return caption_every_language(
        model, vocab, dataset, device=device, spec=spec, languages=[language], batch_size=batch_size, quiet=quiet
    )[language]


def caption_dataset(
    model: Captioner,
    vocab: Vocabulary,
    dataset: CocoCaptions,
    *,
    device: torch.device,
    batch_size: int = 64,
    beam_size: int = 1,
    spec: DecodeSpec | None = None,
    quiet: bool = False,
    language: str | None = None,
) -> dict[int, list[str]]:
    """The best caption's words for every image of `dataset` (greedy, or beam search, or as `spec` says)."""
    spec = spec or DecodeSpec(model.config.max_length, beam_size)
    every = caption_every_image(
        model, vocab, dataset, device=device, spec=spec, batch_size=batch_size, quiet=quiet, language=language
    )
    return {image_id: captions[0] for image_id, captions in every.items()}


def scenes_of(dataset: CocoCaptions) -> dict[int, list[dict]] | None:
    """The generated set's scene per image, or None unless every image has one (real COCO has none)."""
    scenes = {i: dataset.coco.imgs[i].get("objects") for i in dataset.image_ids}
    return scenes if all(scenes.values()) else None


def clips_of(dataset: CocoCaptions) -> dict[int, dict] | None:
    """The generated video set's clip records (object and motion), or None for an image set."""
    return {i: dataset.coco.imgs[i] for i in dataset.image_ids} if is_video_set(dataset.coco) else None


def score_captions(
    predictions: dict[int, list[str]],
    references: dict[int, list[str]],
    scenes: dict[int, list[dict]] | None = None,
    language: str = DEFAULT_LANGUAGE,
    clips: dict[int, dict] | None = None,
) -> dict[str, Any]:
    """Corpus-level BLEU-1..4 and CIDEr-D (and attribute accuracy when scenes are known), in `language`.

    With `clips` (the video set's records), `motion_accuracy`: the share of clips
    whose caption names the right colour, shape and motion (`training.video_data.names_clip`).
    """
    gts = {i: [" ".join(tokenize(r, language)) for r in references[i]] for i in predictions}
    res = {i: [" ".join(words) or "<empty>"] for i, words in predictions.items()}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their internals
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    metrics: dict[str, Any] = {f"bleu{n + 1}": round(float(b), 4) for n, b in enumerate(bleu)}
    metrics["cider"] = round(float(cider), 4)
    if scenes:
        correct = sum(names_every_object(predictions[i], scenes[i], language) for i in predictions)
        metrics["attribute_accuracy"] = round(correct / len(predictions), 4)
        metrics["by_objects"] = accuracy_by_object_count(predictions, scenes, language)
    if clips:
        correct = sum(names_clip(predictions[i], clips[i]) for i in predictions)
        metrics["motion_accuracy"] = round(correct / len(predictions), 4)
    metrics["images"] = len(predictions)
    return metrics


def accuracy_by_object_count(
    predictions: dict[int, list[str]], scenes: dict[int, list[dict]], language: str = DEFAULT_LANGUAGE
) -> dict[str, dict[str, Any]]:
    """Attribute accuracy of the images with 1, 2, 3... objects: {"2": {"attribute_accuracy": 0.8, "images": 97}}.

    One figure over all images hides where a model fails; scenes with more objects
    are harder (every pair must be named), and a model can name lone objects well
    and miss the third of three.
    """
    groups: dict[int, list[bool]] = {}
    for i, words in predictions.items():
        groups.setdefault(len(scenes[i]), []).append(names_every_object(words, scenes[i], language))
    return {
        str(count): {"attribute_accuracy": round(sum(named) / len(named), 4), "images": len(named)}
        for count, named in sorted(groups.items())
    }


def distinct_n(captions: Sequence[Sequence[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of one image's captions (Li et al., 2016): 1.0 when none repeats."""
    grams = [tuple(words[i : i + n]) for words in captions for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sentence_bleu4(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]) -> list[float]:
    """BLEU-4 of each hypothesis against its own references, pycocoevalcap's sentence-level figure."""
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(words) or "<empty>"] for i, words in enumerate(hypotheses)}
    with contextlib.redirect_stdout(io.StringIO()):
        _, scores = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(score) for score in scores[3]]


def mbleu4(captions: Sequence[Sequence[str]]) -> float | None:
    """Mean BLEU-4 of each caption against the image's other captions (Shetty et al., 2017).

    High when the captions repeat each other; lower is more diverse. None for fewer than two captions.
    """
    if len(captions) < 2:
        return None
    others = [[c for j, c in enumerate(captions) if j != i] for i in range(len(captions))]
    scores = sentence_bleu4(captions, others)
    return sum(scores) / len(scores)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def diversity_metrics(
    predictions: dict[int, list[list[str]]],
    references: dict[int, list[str]],
    scenes: dict[int, list[dict]] | None = None,
    language: str = DEFAULT_LANGUAGE,
) -> dict[str, Any]:
    """How different and how good an image's several captions are, averaged over images.

    - distinct1, distinct2: `distinct_n` of each image's captions.
    - mbleu4: `mbleu4` per image (images with one caption are left out); lower = more diverse.
    - oracle_bleu4: corpus BLEU-4 of each image's caption with the best sentence BLEU-4: how good
      the best of n is, the figure a reranker could reach.
    - oracle_attribute_accuracy: share of images with at least one caption naming every object;
      attribute_accuracy_all: share of all captions that do (when scenes are known).
    """
    ids = sorted(predictions)
    tokenised = {i: [tokenize(r, language) for r in references[i]] for i in ids}
    per_image = {i: sentence_bleu4(predictions[i], [tokenised[i]] * len(predictions[i])) for i in ids}
    oracle = {i: predictions[i][max(range(len(per_image[i])), key=per_image[i].__getitem__)] for i in ids}
    metrics: dict[str, Any] = {
        "distinct1": _mean([distinct_n(predictions[i], 1) for i in ids]),
        "distinct2": _mean([distinct_n(predictions[i], 2) for i in ids]),
        "mbleu4": _mean([m for m in (mbleu4(predictions[i]) for i in ids) if m is not None]),
        "oracle_bleu4": score_captions(oracle, references, language=language)["bleu4"],
        "captions_per_image": _mean([len(predictions[i]) for i in ids]),
    }
    if scenes:
        named = {i: [names_every_object(words, scenes[i], language) for words in predictions[i]] for i in ids}
        metrics["oracle_attribute_accuracy"] = _mean([float(any(named[i])) for i in ids])
        metrics["attribute_accuracy_all"] = _mean([float(ok) for i in ids for ok in named[i]])
    return metrics


def describe_decoding(spec: DecodeSpec) -> str:
    """A short name for a decoding setting, e.g. `greedy`, `beam3`, `diverse_beam6x3(0.5)`, `sample(t=1.0,k=0,p=0.9)`."""
    if spec.method == "sample":
        return f"sample(t={spec.temperature},k={spec.top_k},p={spec.top_p})"
    if spec.method == "diverse_beam":
        return f"diverse_beam{spec.beam_size}x{spec.beam_groups}({spec.diversity})"
    return "greedy" if spec.method == "greedy" else f"beam{spec.beam_size}"


def evaluate_model(
    model: Captioner,
    vocab: Vocabulary,
    annotations: Path | str,
    images: Path | str,
    *,
    device: torch.device,
    limit: int | None = None,
    batch_size: int = 64,
    beam_size: int = 1,
    spec: DecodeSpec | None = None,
    quiet: bool = False,
    languages: Sequence[str] | None = None,
) -> tuple[dict[str, Any], dict[int, list[str]]]:
    """Metrics on a COCO-format caption file, and the best predictions behind them.

    `spec` sets the decoding (default: greedy, or beam search of `beam_size`); with
    `spec.n_best` > 1 the metrics include `diversity_metrics` over all its captions.
    `languages`: score only these of the model's languages (default: all it has).
    """
    coco = load_captions([annotations])
    image_ids = sorted(coco.imgs)[:limit]
    config = model.config
    spec = spec or DecodeSpec(config.max_length, beam_size)
    transform = eval_transform(image_size=config.image_size, mean=config.mean, std=config.std)
    dataset = caption_set(coco, images, vocab, transform, image_ids, num_frames=config.num_frames)
    scenes = scenes_of(dataset)
    clips = clips_of(dataset)
    started = time.perf_counter()
    references = {language: dataset.references(language) for language in
                  (config.languages if languages is None else languages)}
    # Only the languages the file has captions in can be scored.
    references = {language: refs for language, refs in references.items() if all(refs.values())}
    if not references:
        asked = list(config.languages if languages is None else languages)
        raise NoCaptionsInLanguage(f"{annotations} has no captions in {', '.join(asked)} for every image "
                                   f"(the languages scored: the model's {', '.join(config.languages)}"
                                   f"{'' if languages is None else ', as asked'})")
    captioned = caption_every_language(
        model, vocab, dataset, device=device, spec=spec, languages=list(references), batch_size=batch_size,
        quiet=quiet,
    )
    per_language: dict[str, dict[str, Any]] = {}
    for language, every in captioned.items():
        predictions = {image_id: captions[0] for image_id, captions in every.items()}
        metrics = score_captions(predictions, references[language], scenes, language, clips)
        if spec.n_best > 1:
            metrics.update(diversity_metrics(every, references[language], scenes, language))
        per_language[language] = metrics
    default_predictions = {image_id: captions[0] for image_id, captions in next(iter(captioned.values())).items()}
    first = next(iter(per_language))
    metrics = {**per_language[first], "language": first}
    if len(per_language) > 1:
        metrics["languages"] = per_language
    metrics["decoding"] = describe_decoding(spec)
    metrics["num_captions"] = spec.n_best
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return metrics, default_predictions


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate an exported captioner on a COCO-format caption file.")
    parser.add_argument("--export-dir", default="build/export")
    parser.add_argument("--annotations", required=True,
                        help="held-out COCO caption file: PATH, or LANG=PATH for a file in one language without "
                             "`language` fields")
    parser.add_argument("--images", required=True, help="image folder")
    parser.add_argument("--held-out", nargs=3, action="append", default=[], metavar=("NAME", "ANNOTATIONS", "IMAGES"),
                        help="another held-out set (a COCO caption file and its image folder), scored like the first "
                             "and reported under NAME, e.g. `--held-out second_renderer "
                             "data/second/annotations/captions_val.json data/second/images`; may be repeated")
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    decoding = parser.add_argument_group("decoding (as the service's request options)")
    decoding.add_argument("--beam-size", type=positive_int, default=1, help="1 = greedy")
    decoding.add_argument("--num-captions", type=positive_int, default=1,
                          help="captions per image; > 1 adds the diversity metrics")
    decoding.add_argument("--beam-groups", type=positive_int, default=1, help="> 1: diverse beam search")
    decoding.add_argument("--diversity", type=float, default=0.5, help="diverse beam search penalty")
    decoding.add_argument("--do-sample", action="store_true", help="sample instead of searching")
    decoding.add_argument("--temperature", type=positive_float, default=1.0)
    decoding.add_argument("--top-k", type=non_negative_int, default=0, help="0 = no limit")
    decoding.add_argument("--top-p", type=float, default=1.0)
    decoding.add_argument("--seed", type=int, default=0, help="sampling seed (image i uses seed + its id)")
    parser.add_argument("--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--predictions-out", default=None,
                        help="also write the first set's predictions as JSON here")
    parser.add_argument("--quiet", action="store_true")
    return parser


def decode_spec_from_args(args: argparse.Namespace, max_length: int) -> DecodeSpec:
    """The decoding the command line asks for; `DecodeSpec`'s searches check what does not fit together."""
    return DecodeSpec(
        max_length=max_length, beam_size=args.beam_size, n_best=args.num_captions, beam_groups=args.beam_groups,
        diversity=args.diversity if args.beam_groups > 1 else 0.0, sample=args.do_sample,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )


# Fields of the whole run, given once at the top level and left out of each held-out set's block.
RUN_FIELDS = ("decoding", "num_captions")


# The report's own keys (score_captions, diversity_metrics, evaluate_model), which a held-out set's NAME
# would overwrite; checked before any image is captioned. The report is checked again once it is made.
REPORT_FIELDS = frozenset((
    *RUN_FIELDS, "cider", "attribute_accuracy", "by_objects", "motion_accuracy", "images", "language", "languages",
    "seconds", "captions_per_image", "distinct1", "distinct2", "mbleu4", "oracle_bleu4", "oracle_attribute_accuracy",
    "attribute_accuracy_all",
))


class BadOption(ValueError):
    """A command-line value that cannot be used; the command says so in one line before any work."""


def check_held_out_names(names: Sequence[str]) -> None:
    """Each `--held-out` NAME becomes a JSON key: a plain word, each used once, none of the report's own."""
    for name in names:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
            raise BadOption(f"--held-out NAME must be a word of letters, digits, _ or -, got {name!r}")
        if name in REPORT_FIELDS or re.fullmatch(r"bleu\d", name):
            raise BadOption(f"--held-out name {name!r} is one of the report's own fields; choose another")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BadOption(f"--held-out names must differ; {', '.join(repeated)} given more than once")


def check_decoding(spec: DecodeSpec) -> None:
    """The service's rules for a request's options (handler/request_parsing.py), before any image is captioned."""
    if spec.sample:
        if not 0.0 < spec.top_p <= 1.0:
            raise BadOption(f"--top-p must be above 0 and at most 1, got {spec.top_p:g}")
        return
    if spec.n_best > spec.beam_size:
        raise BadOption(f"--num-captions {spec.n_best} needs --beam-size of at least {spec.n_best} "
                        f"(beam search returns at most beam_size captions), or --do-sample")
    if spec.beam_size % spec.beam_groups:
        raise BadOption(f"--beam-groups must divide --beam-size ({spec.beam_size}), got {spec.beam_groups}")
    if spec.diversity < 0:
        raise BadOption(f"--diversity must be 0 or more, got {spec.diversity:g}")


def main(args: argparse.Namespace) -> dict[str, Any]:
    names = [name for name, _, _ in args.held_out]
    check_held_out_names(names)
    check_decoding(decode_spec_from_args(args, max_length=1))
    device = torch.device(args.device)
    model, vocab = load_exported_captioner(args.export_dir, device)
    spec = decode_spec_from_args(args, model.config.max_length)
    metrics, predictions = evaluate_model(
        model, vocab, args.annotations, args.images, device=device, limit=args.limit, batch_size=args.batch_size,
        spec=spec, quiet=args.quiet,
    )
    clashing = [name for name in names if name in metrics]
    if clashing:
        raise ValueError(f"--held-out name {clashing[0]!r} is one of the report's own fields; choose another")
    for name, held_out_annotations, held_out_images in args.held_out:
        block, _ = evaluate_model(
            model, vocab, held_out_annotations, held_out_images, device=device, limit=args.limit,
            batch_size=args.batch_size, spec=spec, quiet=args.quiet,
        )
        metrics[name] = {key: value for key, value in block.items() if key not in RUN_FIELDS}
    if args.predictions_out:
        Path(args.predictions_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.predictions_out).write_text(json.dumps({str(k): " ".join(v) for k, v in predictions.items()}))
    print(json.dumps(metrics), flush=True)
    return metrics


if __name__ == "__main__":
    with user_errors():
        try:
            main(get_args_parser().parse_args())
        except BadOption as error:
            raise SystemExit(f"error: {error}") from None
