"""The property every answer must have, and the oracle for damaged images.

Every request gets either 200 with a caption or a 4xx whose JSON body is
{"error": <message>, "status": <the same code>}; never a 5xx and never an
exception out of `handle()`. A KServe v2 request's caption is its `caption`
output, and every v2 answer's tensors hold as many elements as their shapes say
(a refusal's too: its `error` and `status` outputs). A damaged image gets a caption exactly when
Pillow (restricted to the formats served, within the pixel limit) can decode
all of it: damage that leaves a decodable picture is not the service's
business, but a caption for an image that does not decode would be made up
from an incomplete picture.
"""

from __future__ import annotations

import io
import json
import math
import warnings

from PIL import Image

from handler.request_parsing import IMAGE_FORMATS


def answer_problem(status: int, text: str) -> str | None:
    """None when (status, body) is a caption or a well-formed 4xx error, else what is wrong."""
    if status == 200 and text == "":
        return None  # a streamed answer; its words went out as chunks (counted by the caller)
    try:
        body = json.loads(text)
    except ValueError:
        return f"HTTP {status} with a body that is not JSON: {text[:200]!r}"
    if not isinstance(body, dict):
        return f"HTTP {status} with JSON that is not an object: {text[:200]!r}"
    if "outputs" in body:
        problem = _v2_problem(body, status)
        if problem:
            return f"HTTP {status}, v2 answer: {problem}: {text[:200]!r}"
    if status == 200:
        if "outputs" in body or (isinstance(body.get("caption"), str) and isinstance(body.get("tokens"), list)):
            return None
        return f"HTTP 200 without a caption: {text[:200]!r}"
    if not 400 <= status < 500:
        return f"HTTP {status} (not 200 or 4xx): {text[:200]!r}"
    if not isinstance(body.get("error"), str) or not body["error"] or body.get("status") != status:
        return f'HTTP {status} whose body is not {{"error": ..., "status": {status}}}: {text[:200]!r}'
    return None


def _v2_problem(body: dict, status: int) -> str | None:
    """What is wrong with a v2 answer's tensors: a shape that its data does not fill, a caption or error missing."""
    tensors = body["outputs"]
    if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
        return "outputs is not a list of tensors"
    for tensor in tensors:
        shape, data = tensor.get("shape"), tensor.get("data")
        if not isinstance(shape, list) or not isinstance(data, list) or math.prod(shape) != len(data):
            return f"tensor {tensor.get('name')!r} has shape {shape!r} for {len(data or [])} elements"
    names = {tensor.get("name"): tensor["data"] for tensor in tensors}
    if status == 200:
        caption = names.get("caption")
        return None if caption is None or (len(caption) == 1 and isinstance(caption[0], str)) else "bad caption"
    return None if names.get("status") == [status] and names.get("error") == [body.get("error")] else \
        "error and status outputs disagree with the answer"


def pillow_decodes(data: bytes, max_image_pixels: int) -> bool:
    """Whether Pillow reads the whole first frame of `data` as one of the served formats, within the limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = image.size
            if not (1 <= width and 1 <= height and width * height <= max_image_pixels):
                return False
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any failure to decode is the answer
        return False


def image_problem(data: bytes, status: int, max_image_pixels: int) -> str | None:
    """None when a damaged image was captioned exactly if it decodes, else what is wrong."""
    decodes = pillow_decodes(data, max_image_pixels)
    if decodes and status != 200:
        return f"an image Pillow decodes got HTTP {status}"
    if not decodes and status == 200:
        return "an image Pillow cannot decode got a caption"
    return None
