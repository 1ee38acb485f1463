"""The words for a reply whose image the service calls out of domain, shared by the CLI and the demo page.

Every caption reply carries `domain_score` (0..1, 0.5 at the threshold) and
`in_domain`: whether the image looks like the images the model was trained on
(README "Domain score"). Both are null when the model was exported without
domain statistics; then nothing is said.
"""

from __future__ import annotations

from typing import Any, Mapping


def out_of_domain_message(reply: Mapping[str, Any]) -> str | None:
    """A sentence for a person when `reply` says out of domain; None when in domain or unknown."""
    if reply.get("in_domain") is not False:
        return None
    return (f"Out of domain (domain score {reply['domain_score']:.2f}, below 0.5): this image looks unlike the "
            "images the model was trained on, so its caption is likely wrong.")
