"""TorchServe handler for the image captioner.

The whole TorchServe batch is encoded in one forward pass and decoded step by
step together (one greedy run, one sampling run, a beam search per set of beam
settings; `model/batch_captioning.py`). A bad request is answered on
its own with a 4xx and a JSON error; the rest of its batch is captioned as
usual, and the worker keeps running. A KServe v2 request (`/v2/models/<name>/infer`)
gets its answer in v2 form, also one per request of the batch. Every caption
reply carries `domain_score` and `in_domain` (`model/domain.py`): how much its
image looks like the training images, from the same encoder pass; both null
when the export has no domain statistics.

Request and response formats are in README.md ("Calling the service").
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.inputs import model_input
from handler.open_inference import v2_error, v2_response
from handler.request_parsing import BadRequest, CaptionRequest, Failed, RequestLimits, parse_request
from handler.settings import SETTINGS_KEY, calibration_files, calibration_folder, settings_problems
from handler.streaming import WordStreamer, to_json
from model.batch_captioning import decode_mixed
from model.decoding import Caption
from model.detokenize import detokenize
from model.domain import DomainVerdict, domain_scorer
from model.export_format import load_exported_captioner, read_domain_statistics
from model.precision import PrecisionError, choose_precision, prepare_inference, projection_dtype, read_cpu_flags
from model.transforms import to_rgb
from model.word_attention import word_maps

logger = logging.getLogger(__name__)


class CaptionHandler(BaseHandler):
    """Captions images with the exported captioner packed in the archive (its config names backbone and decoder)."""

    def initialize(self, context) -> None:
        properties = context.system_properties
        self.device = worker_device(properties)
        model_yaml = context.model_yaml_config or {}
        settings = model_yaml.get(SETTINGS_KEY, {}) or {}
        for problem in settings_problems(model_yaml):  # ops.archive refuses these; an archive packed by hand may not
            logger.warning("model-config.yaml: %s", problem)
        threads = settings.get("torch_threads")
        if threads and self.device.type == "cpu":
            torch.set_num_threads(int(threads))
        self.model, self.vocab = load_exported_captioner(properties["model_dir"], self.device)
        config = self.model.config
        # An export without domain.safetensors loads too: its replies say domain_score null.
        self.domain = domain_scorer(read_domain_statistics(properties["model_dir"], self.model.encoder.domain_layout))
        # The request reader and transform of the model's modality: an image, or a clip of frames.
        self.media, self.transform = model_input(config, settings)
        self._set_up_precision(settings, properties)  # and the CPU kernels
        self.attention_grid = config.attention_grid  # G, or None when the decoder has no attention
        self.limits = RequestLimits.from_settings(
            settings, int(settings.get("max_length", config.max_length)), config.languages,
            attention_grid=self.attention_grid or 0, decoder=config.decoder,
        )
        manifest_model = (context.manifest or {}).get("model", {})
        self.model_name = context.model_name or manifest_model.get("modelName", "captioner")
        self.model_version = manifest_model.get("modelVersion", "")
        self.context = context
        self.initialized = True
        logger.info(
            "captioner %s %s loaded on %s (%s, %s + %s, vocab %d, image %d px, languages %s), %s",
            self.model_name, self.model_version, self.device, config.modality, config.backbone, config.decoder,
            len(self.vocab), config.image_size, ", ".join(config.languages), self.domain.describe(),
        )

    def _set_up_precision(self, settings: dict[str, Any], properties: dict[str, Any]) -> None:
        """`precision` and `compile` (model/precision.py); a value that cannot be used stops the worker.

        Compiled encoders are compiled here, for every batch size bucket, so that no
        request waits for it; the time it took is logged.
        """
        cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        try:
            self.precision = choose_precision(settings.get("precision"), device_type=self.device.type,
                                              cpu_flags=read_cpu_flags(), cuda_bf16=cuda_bf16)
            self.projection_dtype = projection_dtype(settings.get("vocabulary_projection"))
            self._set_up_cpu_kernels(settings)
            calibration = _calibration_batches(properties["model_dir"], settings, self.transform) \
                if self.precision.quantized_encoder else []
            self.encode = prepare_inference(
                self.model, self.precision, self.device, compile=bool(settings.get("compile", False)),
                max_batch=int(properties.get("batch_size") or 1), calibration=calibration,
                projection=self.projection_dtype)
        except PrecisionError as error:
            logger.error("captioner worker not started: %s", error)
            raise
        compiled = f"compiled for batches {self.encode.buckets}" if self.encode.buckets else "eager"
        if self.encode.buckets:
            layout = torch.channels_last if self.channels_last else torch.contiguous_format
            compiled += f", warm-up {self.encode.warm_up(self.model.config.image_size, layout):.1f} s"
        logger.info("captioner precision %s (setting %r: %s), encoder %s, vocabulary projection %s",
                    self.precision.name, settings.get("precision", "auto"), self.precision.description, compiled,
                    str(self.projection_dtype).removeprefix("torch."))

    def _set_up_cpu_kernels(self, settings: dict[str, Any]) -> None:
        """On CPU, the layouts and kernels that BENCHMARKS.md ("Optimisations measured") found faster."""
        on_cpu = self.device.type == "cpu"
        # channels_last speeds up the ResNet's convolutions.
        self.channels_last = on_cpu and bool(settings.get("channels_last", True))
        if self.channels_last:
            self.model.encoder.to(memory_format=torch.channels_last)
        # The projection onto the vocabulary (hidden -> 10,000 words on COCO) runs at every decoding
        # step; oneDNN's matrix product beat the default BLAS on it with more than one thread.
        # A bf16 projection (`vocabulary_projection`) is left to its own bf16 matmul, faster still.
        linear_fp32 = self.projection_dtype == torch.float32
        if on_cpu and linear_fp32 and bool(settings.get("onednn_linear", True)) and torch.backends.mkldnn.is_available():
            with warnings.catch_warnings():
                # torch.utils.mkldnn's modules are TorchScript classes, whose decorators warn of
                # TorchScript's deprecation on import; the module works with the pinned torch.
                warnings.filterwarnings("ignore", message=".*torch.jit.script_method", category=FutureWarning)
                from torch.utils.mkldnn import to_mkldnn

                self.model.decoder.linear = to_mkldnn(self.model.decoder.linear)

    # --- the three stages -------------------------------------------------------------------

    def preprocess(self, data: list[dict[str, Any]]) -> list[CaptionRequest | Failed]:
        """Parse every request and make its model input; a bad one becomes `Failed` instead of raising.

        Each image is turned into its small model input at once, so a batch of
        large photos never holds all of its decoded pixels at the same time.
        """
        parsed: list[CaptionRequest | Failed] = []
        for idx, row in enumerate(data):
            try:
                request = parse_request(row, self.limits, self.media)
                request.pixels = self.transform(request.image)  # (3, S, S), or (N, 3, S, S) for a clip
                # A clip's reply says which of its frames were captioned (model.video_frames.SampledFrames).
                request.in_reply = getattr(request.image, "in_reply", dict)()
                request.image = None
                parsed.append(request)
            except BadRequest as error:
                parsed.append(Failed(error))
            except MemoryError:
                parsed.append(Failed(BadRequest("request too large to process", status=413)))
            except Exception as error:  # noqa: BLE001 - one odd request must not fail its whole batch
                logger.exception("request %d of the batch could not be read", idx)
                parsed.append(Failed(BadRequest(f"request could not be read: {type(error).__name__}: {error}")))
        return parsed

    @torch.inference_mode()
    def inference(self, requests: list[CaptionRequest | Failed], *args, **kwargs) -> list[Caption | Failed]:
        """Encode all good images in one pass, then decode them together."""
        rows = [i for i, r in enumerate(requests) if isinstance(r, CaptionRequest)]
        results: list[Caption | Failed] = list(requests)  # Failed entries pass through
        if not rows:
            return results
        images = torch.stack([requests[i].pixels for i in rows]).to(self.device)  # (B, 3, S, S) or (B, N, 3, S, S)
        if self.channels_last and images.dim() == 4:  # a clip's frames meet the channels-last weights as they are
            images = images.contiguous(memory_format=torch.channels_last)
        started = time.perf_counter()
        # (B, E), or (B, G*G, E) for an attending decoder, and (B, D) domain features; fp32, under the precision
        embeddings, domain = self.encode(images)
        for row, verdict in zip(rows, self.domain(domain)):  # each row scored on its own
            requests[row].domain = verdict
        specs = [requests[i].options.decoding for i in rows]
        # Each caption starts from its request's language token (`<start>` for a one-language model).
        start_ids = torch.tensor([self.vocab.start_id_for(requests[i].options.language) for i in rows])
        streamer = WordStreamer(self.context, self.vocab, self.describe, rows, requests)
        captions, steps = decode_mixed(
            self.model.decoder,
            embeddings,
            specs,
            start_id=start_ids,
            end_id=self.vocab.end_id,
            unwritten_ids=self.vocab.unwritten_ids,
            on_step=streamer.on_step if streamer.active else None,
        )
        for row, caption in zip(rows, captions):
            results[row] = caption
        streamer.finish(dict(zip(rows, captions)))
        self._metric_time("CaptionInferenceTime", (time.perf_counter() - started) * 1000)
        self._metric_counter("CaptionDecodeSteps", steps)
        self._metric_counter("CaptionImages", len(rows))
        return results

    def postprocess(self, results: list[Caption | Failed]) -> list[Caption | Failed]:
        return results  # responses are built in `handle`, which knows each request's options

    # --- TorchServe entry point ------------------------------------------------------------

    def handle(self, data: list[dict[str, Any]], context) -> list[str]:
        """Answer every request of the batch: a caption, a stream, or a JSON error."""
        self.context = context
        started = time.perf_counter()
        requests = self.preprocess(data)
        self._metric_time("CaptionPreprocessTime", (time.perf_counter() - started) * 1000)
        results = self.postprocess(self.inference(requests))
        responses: list[str] = []
        errors = 0
        for idx, (request, result) in enumerate(zip(requests, results)):
            context.set_response_content_type(idx, "application/json")
            if isinstance(result, Failed):
                errors += 1
                context.set_response_status(result.error.status, _reason(result.error.message), idx)
                error = {"error": result.error.message, "status": result.error.status}
                if result.error.v2 is not None:
                    error = v2_error(error, result.error.v2, context.get_request_id(idx), self.model_name,
                                     self.model_version)
                responses.append(to_json(error))
                continue
            body = self.describe(result, request)
            if request.v2 is not None:
                body = v2_response(body, request.v2, context.get_request_id(idx))
            # Streamed requests already got their result as the last intermediate chunk;
            # the closing chunk is empty.
            responses.append("" if request.options.stream else to_json(body))
        if errors:
            self._metric_counter("CaptionRequestErrors", errors)
        return responses

    def describe(self, caption: Caption, request: CaptionRequest) -> dict[str, Any]:
        """The JSON object a client gets for one caption."""
        options = request.options
        words = self.vocab.decode(caption.tokens)
        body = {
            "caption": detokenize(words),
            "tokens": words,
            "scores": [round(s, 5) for s in caption.scores],
            "score": round(caption.score, 5),
            "ended": caption.ended,
            "method": options.method,
            "beam_size": options.beam_size,
            "max_length": options.max_length,
            **options.in_reply(),
            "language": options.language,
            **request.in_reply,
            **domain_fields(request.domain),
            "model": self.model_name,
            "version": self.model_version,
        }
        if options.attention:
            body.update(self._attention_entry(caption))
        if options.num_captions > 1:
            every = [self._caption_entry(c, options.attention) for c in [caption, *caption.alternatives]]
            body["captions"] = every
            # The runner-ups as the reply gave them before `captions` (also the v2 `alternatives` output).
            body["alternatives"] = [{"caption": c["caption"], "score": c["score"]} for c in every[1:]]
        return body

    def _caption_entry(self, caption: Caption, attention: bool) -> dict[str, Any]:
        words = self.vocab.decode(caption.tokens)
        entry = {"caption": detokenize(words), "tokens": words, "score": round(caption.score, 5)}
        if attention:
            entry.update(self._attention_entry(caption))
        return entry

    def _attention_entry(self, caption: Caption) -> dict[str, Any]:
        """`attention`: per word a G x G map (rows top to bottom, 3 decimals), and `grid_size` G.

        Only asked of a model that attends (`parse_options` refuses it otherwise).
        """
        _, maps = word_maps(caption, self.vocab, self.attention_grid)
        rounded = [[[round(weight, 3) for weight in row] for row in grid] for grid in maps]
        return {"attention": rounded, "grid_size": self.attention_grid}

    # --- helpers ----------------------------------------------------------------------------

    def _metric_time(self, name: str, milliseconds: float) -> None:
        metrics = getattr(self.context, "metrics", None)
        if metrics is not None:
            metrics.add_time(name, round(milliseconds, 3), None, "ms", [])

    def _metric_counter(self, name: str, value: int) -> None:
        metrics = getattr(self.context, "metrics", None)
        if metrics is not None:
            metrics.add_counter(name, value, None, [])


def domain_fields(verdict: DomainVerdict) -> dict[str, Any]:
    """The reply's `domain_score` (0..1, 4 decimals; 0.5 at the threshold) and `in_domain`; null without statistics."""
    score = verdict.score
    return {"domain_score": None if score is None else round(score, 4), "in_domain": verdict.in_domain}


def worker_device(system_properties: dict[str, Any]) -> torch.device:
    """The device TorchServe gave this worker: `cuda:<gpu_id>` when it assigned a GPU, else the CPU.

    TorchServe hands each worker a `gpu_id`, going round the GPUs in turn (all it sees,
    at most `number_of_gpu`, or the model's `deviceIds`), and none on a CPU-only host or
    with `deviceType: cpu`. README "Scaling" says how workers spread over GPUs.
    """
    gpu_id = system_properties.get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device("cuda", int(gpu_id))
    return torch.device("cpu")


def _calibration_batches(model_dir: str, settings: dict[str, Any], transform, batch_size: int = 8) -> list[torch.Tensor]:
    """int8's calibration images: the JPEGs and PNGs in `calibration_images` (a folder in the archive)."""
    from PIL import Image

    files = calibration_files(model_dir, settings)
    if not files:
        folder = Path(model_dir) / calibration_folder(settings)
        raise PrecisionError(f"precision int8 needs calibration images, and {folder} has none; pack some "
                             "held-out images in a `calibration/` folder of the export before packing it (ops.archive "
                             "copies that folder into the archive), or use precision bf16 or fp32")
    pixels = [transform(to_rgb(Image.open(path))) for path in files]  # (3, S, S) each
    return [torch.stack(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]


def _reason(message: str) -> str:
    """An HTTP reason phrase: one short line of printable ASCII."""
    first_line = message.splitlines()[0] if message else ""
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in first_line)
    return text[:120] or "Bad Request"
