"""Requests as a TorchServe worker receives them, decoded by TorchServe's own frame reader.

The frontend passes each request to its worker as length-prefixed frames: a
request id, headers, then one (name, content type, bytes) frame per body or
form field. The worker's reader (`ts.protocol.otf_message_handler`) turns an
`application/json` parameter into whatever JSON it holds (an object, but also
a number, a string or null) and a `text/*` one into str, falling back to the
raw bytes when that fails. Going through that reader, fuzzed requests reach
`handle()` exactly as they would from a worker, header/body mismatches included.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Sequence

from ops.fuzzing.cases import Request

PREDICT_COMMAND = b"I"
END = struct.pack("!i", -1)


def _field(value: bytes) -> bytes:
    return struct.pack("!i", len(value)) + value


def predict_message(requests: Sequence[Request]) -> bytes:
    """The frontend's "predict" message for a batch of requests."""
    message = bytearray(PREDICT_COMMAND)
    for index, request in enumerate(requests):
        message += _field(f"request-{index}".encode())
        content_type = request.parts[0].content_type if not request.multipart else "multipart/form-data"
        message += _field(b"content-type") + _field(content_type.encode("utf-8", "replace"))
        message += END
        for part in request.parts:
            message += _field(part.name.encode("utf-8", "replace"))
            message += _field(part.content_type.encode("utf-8", "replace"))
            message += _field(part.value)
        message += END
    message += END
    return bytes(message)


def worker_batch(context, requests: Sequence[Request]) -> list[dict]:
    """The rows `handle()` gets for `requests`, with `context` set up for their batch as the worker does."""
    from ts.protocol.otf_message_handler import retrieve_msg
    from ts.service import Service

    message = predict_message(requests)
    sender, receiver = socket.socketpair()
    writer = threading.Thread(target=sender.sendall, args=(message,), daemon=True)
    try:
        writer.start()
        _, batch = retrieve_msg(receiver)
        writer.join()
    finally:
        sender.close()
        receiver.close()
    headers, rows, request_ids = Service.retrieve_data_for_inference(batch)
    # What `Service.predict` does before it calls the handler.
    context.request_ids = request_ids
    context.request_processor = headers
    context.metrics.request_ids = request_ids
    return rows
