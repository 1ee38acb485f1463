"""Word-by-word streaming of captions through TorchServe's intermediate responses.

Used for requests with `"stream": true` (HTTP chunked responses) and for gRPC
`StreamPredictions`. Each chunk is one JSON line.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import torch
from ts.handler_utils.utils import send_intermediate_predict_response

from handler.request_parsing import CaptionRequest, Failed
from model.decoding import Caption
from model.vocabulary import Vocabulary


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class WordStreamer:
    """Sends each streamed request its words as they are decoded, one JSON line per chunk.

    Chunks are `{"index": i, "token": "word"}`; the last one is the full result
    object, so every stream has at least one chunk (TorchServe's gRPC stream
    needs one) and the client can check the words against the final caption.
    """

    def __init__(
        self,
        context,
        vocab: Vocabulary,
        describe: Callable[[Caption, CaptionRequest], dict[str, Any]],
        rows: list[int],
        requests: list[CaptionRequest | Failed],
    ) -> None:
        self.context = context
        self.vocab = vocab
        self.describe = describe
        self.requests = requests
        self.stream_rows = {i for i in rows if requests[i].options.stream}
        self.sent: dict[int, int] = {i: 0 for i in self.stream_rows}
        self.done: set[int] = set()
        self.active = bool(self.stream_rows)

    def _send(self, idx: int, payload: dict[str, Any]) -> None:
        context = self.context
        send_intermediate_predict_response(
            {idx: to_json(payload) + "\n"},
            {idx: context.request_ids[idx]},
            "Intermediate Prediction success",
            200,
            context,
        )

    def on_step(self, step: int, rows: list[int], tokens: torch.Tensor) -> None:
        """Send the words just chosen for streamed rows (greedy, or sampling one caption)."""
        vocab = self.vocab
        for position, token in zip(rows, tokens.tolist()):
            if position not in self.stream_rows or position in self.done:
                continue
            if token == vocab.end_id or step >= self.requests[position].options.max_length:
                self.done.add(position)
                continue
            for word in vocab.decode([token]):  # nothing for <pad>/<start>, as in the final caption
                self._send(position, {"index": self.sent[position], "token": word})
                self.sent[position] += 1

    def finish(self, captions_by_row: dict[int, Caption]) -> None:
        """Send the words not streamed yet (beam search and several samples know their best caption only
        at the end), then every final result."""
        for idx in sorted(self.stream_rows):
            caption, request = captions_by_row[idx], self.requests[idx]
            words = self.vocab.decode(caption.tokens)
            for index in range(self.sent[idx], len(words)):
                self._send(idx, {"index": index, "token": words[index]})
            self._send(idx, self.describe(caption, request))
