"""Fuzzed batches through the handler in process, as a TorchServe worker would run them.

`InProcessService` loads the handler on an export with a real TorchServe
`Context`, turns each batch into the rows a worker hands `handle()` (through
TorchServe's own frame reader), and collects every answer's status and body.
`check_batch` runs a `Batch` (fuzzed cases mixed with valid requests whose
captions are known) and lists everything that breaks the property.
"""

from __future__ import annotations

import base64
import json
import socket
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

from bench.worker_context import worker_context
from ops.fuzzing.cases import Case, Part, Request
from ops.fuzzing.checks import answer_problem, image_problem
from ops.fuzzing.frames import worker_batch
from ops.fuzzing.images import base_images

BATCH_SIZE = 8


def valid_requests() -> list[Request]:
    """Requests that must be captioned in any batch: raw JPEG, JSON PNG with beam search, form GIF with options."""
    images = base_images()
    png = base64.b64encode(images["PNG"]).decode("ascii")
    return [
        Request.raw(images["JPEG"], "image/jpeg"),
        Request.raw(json.dumps({"image": png, "beam_size": 2, "n_best": 2}).encode(), "application/json"),
        Request.form(Part("data", "image/gif", images["GIF"]), Part("max_length", "", b"5")),
    ]


@dataclass
class Answer:
    status: int
    text: str


@dataclass(frozen=True)
class Batch:
    """Fuzzed cases and valid requests (indices into `valid_requests()`), in the order they are sent."""

    cases: tuple[Case, ...]
    valid: tuple[int, ...]
    order: tuple[int, ...]  # positions into cases + valid


@st.composite
def batches(draw, cases: st.SearchStrategy[Case], most_fuzzed: int = 5) -> Batch:
    fuzzed = draw(st.lists(cases, min_size=1, max_size=most_fuzzed))
    valid = draw(st.lists(st.integers(0, len(valid_requests()) - 1), max_size=BATCH_SIZE - len(fuzzed)))
    order = draw(st.permutations(range(len(fuzzed) + len(valid))))
    return Batch(tuple(fuzzed), tuple(valid), tuple(order))


class InProcessService:
    """The handler on `export_dir`, answering batches the way a worker does."""

    def __init__(self, export_dir: Path | str, yaml_config: dict | None = None) -> None:
        from handler.caption_handler import CaptionHandler

        # fp32 unless told otherwise: the property compares a valid request's answer in a batch with
        # its answer alone word for word, which holds exactly in fp32; under bf16 the encoder's
        # kernels depend on the batch size, and a near-tie can go the other way (README "Precision").
        yaml_config = yaml_config if yaml_config is not None else {"captioner": {"precision": "fp32"}}
        self.context = worker_context(export_dir, BATCH_SIZE, yaml_config=yaml_config)
        writer, self.stream_reader = socket.socketpair()
        for sock in (writer, self.stream_reader):  # room for every word streamed in a batch
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.stream_reader.setblocking(False)
        self.context.cl_socket = writer
        self.handler = CaptionHandler()
        self.handler.initialize(self.context)
        self.max_image_pixels = self.handler.limits.max_image_pixels
        self.references = [self.answer([request])[0][0] for request in valid_requests()]
        assert all(a.status == 200 for a in self.references), self.references

    def answer(self, requests: list[Request]) -> tuple[list[Answer], int]:
        """The answers to one batch, and how many streamed results went out on the stream socket."""
        rows = worker_batch(self.context, requests)
        texts = self.handler.handle(rows, self.context)
        if len(texts) != len(requests):
            raise AssertionError(f"handle() returned {len(texts)} answers for {len(requests)} requests")
        statuses = [self.context.get_response_status(i)[0] for i in range(len(requests))]
        return [Answer(status, text) for status, text in zip(statuses, texts)], self._streamed_results()

    def _streamed_results(self) -> int:
        data = bytearray()
        while True:
            try:
                piece = self.stream_reader.recv(1 << 20)
            except BlockingIOError:
                break
            if not piece:
                break
            data += piece
        return data.count(b'{"caption"')

    def close(self) -> None:
        self.context.cl_socket.close()
        self.stream_reader.close()


@dataclass
class BatchResult:
    answers: list[tuple[str, Answer]] = field(default_factory=list)  # (strategy or "valid", answer)
    problems: list[str] = field(default_factory=list)


def check_batch(service: InProcessService, batch: Batch) -> BatchResult:
    """Send `batch`; every broken property becomes a line in `problems` (an exception included)."""
    valid = valid_requests()
    entries = [(case.strategy, case.request, case) for case in batch.cases]
    entries += [("valid", valid[index], index) for index in batch.valid]
    entries = [entries[position] for position in batch.order]
    result = BatchResult()
    try:
        answers, streamed = service.answer([request for _, request, _ in entries])
    except Exception:  # noqa: BLE001 - the property is that this never happens
        result.problems.append("handle() raised:\n" + traceback.format_exc())
        return result
    for position, ((name, request, what), answer) in enumerate(zip(entries, answers)):
        result.answers.append((name, answer))
        where = f"request {position} of {len(entries)} ({name}, {request!r:.300})"
        if name == "valid":
            reference = service.references[what]
            if (answer.status, answer.text) != (reference.status, reference.text):
                result.problems.append(f"{where}: a valid request got {answer.status} {answer.text[:200]!r}, "
                                       f"alone it gets {reference.text[:200]!r}")
            continue
        problem = answer_problem(answer.status, answer.text)
        if problem is None and what.expect is not None and answer.status != what.expect:
            problem = f"expected HTTP {what.expect}, got {answer.status}: {answer.text[:200]!r}"
        if problem is None and what.image is not None:
            problem = image_problem(what.image, answer.status, service.max_image_pixels)
        if problem:
            result.problems.append(f"{where}: {problem}")
    empty = sum(1 for _, a in result.answers if a.status == 200 and a.text == "")
    if empty != streamed:
        result.problems.append(f"{empty} streamed answers but {streamed} streamed results were sent")
    return result
