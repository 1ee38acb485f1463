"""A fuzzed request, in the two shapes it travels in: HTTP for TorchServe, frames for its worker.

A request is a list of parts, each a (name, content type, bytes) triple: a raw
body is one part named "body" whose content type is the request's Content-Type
header; a multipart form has one part per field, where a part with no content
type is a plain form field and the others are file fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Part:
    name: str
    content_type: str
    value: bytes

    def __repr__(self) -> str:  # failure reports stay readable with images inside
        shown = self.value if len(self.value) <= 64 else self.value[:48] + b"..." + self.value[-8:]
        return f"Part({self.name!r}, {self.content_type!r}, {len(self.value)} bytes: {shown!r})"


@dataclass(frozen=True)
class Request:
    """One request; `multipart` False means a raw body (one part named "body")."""

    parts: tuple[Part, ...]
    multipart: bool = False

    @classmethod
    def raw(cls, body: bytes, content_type: str = "") -> "Request":
        return cls((Part("body", content_type, body),))

    @classmethod
    def form(cls, *parts: Part) -> "Request":
        return cls(tuple(parts), multipart=True)

    def http_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `CaptionClient.post`: a raw body with its Content-Type, or a multipart form."""
        if not self.multipart:
            (part,) = self.parts
            headers = {"Content-Type": part.content_type} if part.content_type else {}
            return {"data": part.value, "extra_headers": headers}
        files = [
            (p.name, (None, p.value) if not p.content_type else (f"{p.name}.bin", p.value, p.content_type))
            for p in self.parts
        ]
        return {"files": files, "extra_headers": {}}


@dataclass(frozen=True)
class Case:
    """A request with what is known about it.

    Args:
        strategy: the name of the strategy that made it (for the figures).
        request: what is sent.
        image: for image mutations, the mutated bytes: the answer must be 200
            exactly when Pillow can fully decode them (see `checks.pillow_decodes`).
        expect: the status the answer must have, where the case alone decides it.
    """

    strategy: str
    request: Request
    image: bytes | None = field(default=None, repr=False)
    expect: int | None = None
