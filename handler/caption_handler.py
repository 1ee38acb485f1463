"""TorchServe handler for the image captioner.

The whole TorchServe batch is encoded in one forward pass and decoded step by
step together (one greedy run, one sampling run, a beam search per set of beam
settings; `model/batch_captioning.py`). A bad request is answered on
its own with a 4xx and a JSON error; the rest of its batch is captioned as
usual, and the worker keeps running. A KServe v2 request (`/v2/models/<name>/infer`)
gets its answer in v2 form, also one per request of the batch.

Request and response formats are in README.md ("Calling the service").
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.inputs import model_input
from handler.model_loader import load_exported_captioner
from handler.open_inference import v2_error, v2_response
from handler.request_parsing import BadRequest, CaptionRequest, Failed, RequestLimits, parse_request
from handler.streaming import WordStreamer, to_json
from model.batch_captioning import decode_mixed
from model.decoding import Caption

logger = logging.getLogger(__name__)

SETTINGS_KEY = "captioner"  # section of model-config.yaml read by this handler


class CaptionHandler(BaseHandler):
    """Captions images with the exported ResNet-34 + LSTM model packed in the archive."""

    def initialize(self, context) -> None:
        properties = context.system_properties
        self.device = worker_device(properties)
        settings = (context.model_yaml_config or {}).get(SETTINGS_KEY, {}) or {}
        threads = settings.get("torch_threads")
        if threads and self.device.type == "cpu":
            torch.set_num_threads(int(threads))
        self.model, self.vocab = load_exported_captioner(properties["model_dir"], self.device)
        config = self.model.config
        self._set_up_cpu_kernels(settings)
        # The request reader and transform of the model's modality: an image, or a clip of frames.
        self.media, self.transform = model_input(config, settings)
        self.limits = RequestLimits.from_settings(settings, int(settings.get("max_length", config.max_length)))
        manifest_model = (context.manifest or {}).get("model", {})
        self.model_name = context.model_name or manifest_model.get("modelName", "captioner")
        self.model_version = manifest_model.get("modelVersion", "")
        self.context = context
        self.initialized = True
        logger.info(
            "captioner %s %s loaded on %s (%s, vocab %d, image %d px)",
            self.model_name, self.model_version, self.device, config.modality, len(self.vocab), config.image_size,
        )

    def _set_up_cpu_kernels(self, settings: dict[str, Any]) -> None:
        """On CPU, the layouts and kernels that BENCHMARKS.md ("Optimisations measured") found faster."""
        on_cpu = self.device.type == "cpu"
        # channels_last speeds up the ResNet's convolutions.
        self.channels_last = on_cpu and bool(settings.get("channels_last", True))
        if self.channels_last:
            self.model.encoder.to(memory_format=torch.channels_last)
        # The projection onto the vocabulary (hidden -> 10,000 words on COCO) runs at every decoding
        # step; oneDNN's matrix product beat the default BLAS on it with more than one thread.
        if on_cpu and bool(settings.get("onednn_linear", True)) and torch.backends.mkldnn.is_available():
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
        embeddings = self.model.encode(images)  # (B, E)
        specs = [requests[i].options.decoding for i in rows]
        streamer = WordStreamer(self.context, self.vocab, self.describe, rows, requests)
        captions, steps = decode_mixed(
            self.model.decoder,
            embeddings,
            specs,
            start_id=self.vocab.start_id,
            end_id=self.vocab.end_id,
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
            "caption": " ".join(words),
            "tokens": words,
            "scores": [round(s, 5) for s in caption.scores],
            "score": round(caption.score, 5),
            "ended": caption.ended,
            "method": options.method,
            "beam_size": options.beam_size,
            "max_length": options.max_length,
            **options.in_reply(),
            **request.in_reply,
            "model": self.model_name,
            "version": self.model_version,
        }
        if options.num_captions > 1:
            every = [self._caption_entry(c) for c in [caption, *caption.alternatives]]
            body["captions"] = every
            # The runner-ups as the reply gave them before `captions` (also the v2 `alternatives` output).
            body["alternatives"] = [{"caption": c["caption"], "score": c["score"]} for c in every[1:]]
        return body

    def _caption_entry(self, caption: Caption) -> dict[str, Any]:
        words = self.vocab.decode(caption.tokens)
        return {"caption": " ".join(words), "tokens": words, "score": round(caption.score, 5)}

    # --- helpers ----------------------------------------------------------------------------

    def _metric_time(self, name: str, milliseconds: float) -> None:
        metrics = getattr(self.context, "metrics", None)
        if metrics is not None:
            metrics.add_time(name, round(milliseconds, 3), None, "ms", [])

    def _metric_counter(self, name: str, value: int) -> None:
        metrics = getattr(self.context, "metrics", None)
        if metrics is not None:
            metrics.add_counter(name, value, None, [])


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


def _reason(message: str) -> str:
    """An HTTP reason phrase: one short line of printable ASCII."""
    first_line = message.splitlines()[0] if message else ""
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in first_line)
    return text[:120] or "Bad Request"
