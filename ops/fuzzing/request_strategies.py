"""Hypothesis strategies for whole requests: JSON bodies, form fields, multipart forms, content types.

Values are drawn to be almost right as often as plainly wrong: option values
of every JSON type (in and out of range, NaN, huge, numeric text, lists),
field names that are close to the real ones, content types that disagree with
the body (JSON sent as an image, an image sent as JSON or text), and every
image strategy of `ops.fuzzing.images` in each place an image can go.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache

from hypothesis import strategies as st

from handler.request_parsing import IMAGE_FIELDS, OPTION_FIELDS
from ops.fuzzing.cases import Case, Part, Request
from ops.fuzzing.images import any_mutated_image, base_images

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "application/octet-stream", "")
CONTENT_TYPES = IMAGE_TYPES + (
    "application/json", "application/json; charset=utf-8", "text/plain", "text/html", "text/csv",
    "multipart/form-data", "application/x-www-form-urlencoded", "image/svg+xml", "application/pdf", "video/mp4",
)
FIELD_NAMES = IMAGE_FIELDS + OPTION_FIELDS + ("Data", "img", "images", "beam", "n-best", "temperature", "")

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children,
                                                                                 max_size=3)),
    max_leaves=6,
)
option_values = st.one_of(
    st.integers(-2, 25),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.from_regex(r"\A\s*[+-]?[0-9_]{1,4}(\.[0-9]+)?\s*\Z"),
    st.sampled_from(["true", "false", "yes", "no", "", "1e1", "0x3", "٣", "inf", "NaN"]),
    json_values,
)


@lru_cache(maxsize=None)
def _base64_images() -> tuple[str, ...]:
    return tuple(base64.b64encode(data).decode("ascii") for data in base_images().values())


image_base64 = st.one_of(
    st.sampled_from(_base64_images()),
    st.sampled_from(_base64_images()).map(lambda b64: "data:image/jpeg;base64," + b64),
    st.sampled_from(_base64_images()).map(lambda b64: b64[:-3]),  # padding cut
    any_mutated_image().map(lambda data: base64.b64encode(data).decode("ascii")),
    st.text(max_size=20),
    json_values,
)
valid_image = st.sampled_from(sorted(base_images().values()))


def _json_bytes(document) -> bytes:
    return json.dumps(document).encode()  # NaN and Infinity as Python writes them (TorchServe reads them back)


@st.composite
def json_bodies(draw) -> Case:
    """A JSON object with a real, broken or mistyped image and options of any type, under a JSON-ish type."""
    document = {}
    if draw(st.integers(0, 9)):
        document["image"] = draw(image_base64)
    for name in draw(st.lists(st.sampled_from(OPTION_FIELDS), unique=True, max_size=4)):
        document[name] = draw(option_values)
    if not draw(st.integers(0, 7)):
        document[draw(st.text(max_size=8))] = draw(json_values)
    content_type = draw(st.sampled_from(["application/json", "application/json", "application/json; charset=utf-8",
                                         "", "application/octet-stream", "text/plain"]))
    return Case("json-bodies", Request.raw(_json_bytes(document), content_type))


@st.composite
def json_documents(draw) -> Case:
    """Any JSON value as the whole body: a number, a string, null, a list, an object nested deeper.

    Under application/json TorchServe's worker hands the handler the decoded value, so a
    scalar must be refused as JSON (400) and a string as text (415), not read as image bytes.
    """
    if draw(st.booleans()):
        document = draw(json_values)
        body = _json_bytes(document)
    else:
        body = draw(st.sampled_from(
            [b"1", b"-1", b"0", b"10000000000", b"1e400", b"-0.0", b"null", b"true", b'"abc"', b"[]", b"{}", b"[{}]",
             b"NaN", b"Infinity", b'{"image": "', b"{" * 3, b"\xef\xbb\xbf{}", b'{"image": "a"}\x00', b' {"a": 1}']))
        try:
            document = json.loads(body)
        except ValueError:
            document = ...  # not JSON: the worker passes the bytes on
    content_type = draw(st.sampled_from(["application/json", "", "text/plain"]))
    expect = None
    if content_type == "application/json" and document is not ...:
        expect = 415 if isinstance(document, str) else 400
    return Case("json-documents", Request.raw(body, content_type), expect=expect)


@st.composite
def option_fields(draw) -> Case:
    """A valid image file field with options as form fields, their text or bytes drawn freely."""
    parts = [Part("data", draw(st.sampled_from(IMAGE_TYPES[:-1])), draw(valid_image))]
    for name in draw(st.lists(st.sampled_from(OPTION_FIELDS), unique=True, min_size=1, max_size=4)):
        value = draw(st.one_of(option_values.map(lambda v: str(v).encode()), st.binary(max_size=8)))
        parts.append(Part(name, draw(st.sampled_from(["", "", "text/plain", "application/json"])), value))
    return Case("option-fields", Request.form(*draw(st.permutations(parts))))


@st.composite
def multipart_fields(draw) -> Case:
    """Forms with any mix of field names (repeated, misspelt, empty), values and part content types."""
    value = st.one_of(valid_image, any_mutated_image(), st.binary(max_size=32), option_values.map(
        lambda v: json.dumps(v).encode()))
    parts = [
        Part(draw(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6))),
             draw(st.sampled_from(CONTENT_TYPES)), draw(value))
        for _ in range(draw(st.integers(1, 4)))
    ]
    return Case("multipart-fields", Request.form(*parts))


@st.composite
def content_types(draw) -> Case:
    """A valid image, a JSON body or text under a content type that may not match it."""
    body = draw(st.one_of(
        valid_image,
        st.sampled_from(_base64_images()).map(lambda b64: _json_bytes({"image": b64})),
        st.sampled_from(_base64_images()).map(str.encode),
        st.text(max_size=40).map(str.encode),
        st.binary(max_size=40),
    ))
    return Case("content-types", Request.raw(body, draw(st.one_of(st.sampled_from(CONTENT_TYPES),
                                                                   st.text(max_size=20)))))


@st.composite
def mutated_images(draw) -> Case:
    """A damaged image file, sent as a raw body, as a multipart file, or base64 in JSON."""
    data = draw(any_mutated_image())
    how = draw(st.sampled_from(["raw", "multipart", "json"]))
    if how == "raw":
        request = Request.raw(data, draw(st.sampled_from(IMAGE_TYPES)))
    elif how == "multipart":
        request = Request.form(Part("data", draw(st.sampled_from(IMAGE_TYPES[:-1])), data))
    else:
        request = Request.raw(_json_bytes({"image": base64.b64encode(data).decode("ascii")}), "application/json")
    return Case("mutated-images", request, image=data)


V2_DATATYPES = ("BYTES", "BOOL", "INT32", "INT64", "UINT8", "FP32", "FP64", "FP16", "STRING", "")
v2_shapes = st.one_of(st.just([1]), st.just([1, 1]), st.sampled_from([[], [0], [2], [-1], [1.0], "1"]),
                      json_values)


@st.composite
def v2_bodies(draw) -> Case:
    """KServe v2 requests: input tensors named right or nearly so, of any datatype, shape and data;
    `parameters` and `outputs` drawn the same way."""
    inputs = []
    if draw(st.integers(0, 9)):
        inputs.append({"name": "image", "datatype": draw(st.sampled_from(["BYTES"] * 4 + list(V2_DATATYPES))),
                       "shape": draw(v2_shapes), "data": [draw(image_base64)]})
    for name in draw(st.lists(st.sampled_from(OPTION_FIELDS + ("images", "", "logits")), unique=True, max_size=3)):
        data = draw(st.one_of(option_values.map(lambda v: [v]), json_values))
        inputs.append({"name": name, "datatype": draw(st.sampled_from(V2_DATATYPES)), "shape": draw(v2_shapes),
                       "data": data})
    document = {"inputs": draw(st.one_of(st.permutations(inputs), json_values)) if inputs else draw(json_values)}
    if draw(st.booleans()):
        document["parameters"] = draw(st.one_of(st.dictionaries(st.sampled_from(OPTION_FIELDS), option_values,
                                                                max_size=3), json_values))
    if not draw(st.integers(0, 3)):
        document["outputs"] = draw(st.one_of(
            st.lists(st.fixed_dictionaries({"name": st.sampled_from(["caption", "attention", "seed", "x"])}),
                     max_size=3), json_values))
    if draw(st.booleans()):
        document["id"] = draw(json_scalars)
    content_type = draw(st.sampled_from(["application/json", "application/json", ""]))
    return Case("v2-bodies", Request.raw(_json_bytes(document), content_type))


STRATEGIES = {
    "json-bodies": json_bodies(),
    "json-documents": json_documents(),
    "option-fields": option_fields(),
    "multipart-fields": multipart_fields(),
    "content-types": content_types(),
    "mutated-images": mutated_images(),
    "v2-bodies": v2_bodies(),
}


def any_case() -> st.SearchStrategy[Case]:
    return st.one_of(*STRATEGIES.values())
