"""TorchServe's token keys, read from the `key_file.json` the server writes.

Keys expire (`token_expiration_min`). `TokenStore` re-reads the file when it
changes and, shortly before a key expires, asks the server for a new one with
the API key (`GET /token?type=...` on the management port), as TorchServe's
token authorization expects.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

DEFAULT_KEY_FILE = Path("build/serve/key_file.json")
REFRESH_MARGIN = timedelta(minutes=2)


class TokenStore:
    """Bearer tokens for the `inference` and `management` APIs.

    Args:
        key_file: the server's `key_file.json`; None means token authorization is off.
        management_url: where to refresh keys (`http://127.0.0.1:8081`).
    """

    def __init__(self, key_file: Path | str | None = DEFAULT_KEY_FILE, management_url: str | None = None) -> None:
        self.key_file = Path(key_file) if key_file else None
        self.management_url = management_url
        self._keys: dict = {}
        self._mtime = None

    def _load(self) -> dict:
        if self.key_file is None:
            return {}
        try:
            mtime = self.key_file.stat().st_mtime
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no TorchServe key file at {self.key_file}; start the server with `make serve`, "
                "or pass --key-file (the file is written in the server's working directory)"
            ) from None
        if mtime != self._mtime:
            try:
                keys = json.loads(self.key_file.read_text())
            except (OSError, ValueError) as error:  # a folder, unreadable, not JSON
                raise KeyFileError(f"{self.key_file} is not a TorchServe key file ({error}); pass the "
                                   "key_file.json the server wrote in its working directory") from None
            if not isinstance(keys, dict):
                raise KeyFileError(f"{self.key_file} is not a TorchServe key file (no API keys in it)")
            self._keys, self._mtime = keys, mtime
        return self._keys

    def _expires(self, api: str) -> datetime | None:
        stamp = self._load().get(api, {}).get("expiration time")
        if not stamp:
            return None
        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return None

    def refresh(self, api: str) -> None:
        """Ask the server for a new `api` key; the server rewrites the key file."""
        if not self.management_url:
            raise RuntimeError("cannot refresh tokens without the management URL")
        api_key = self._load()["API"]["key"]
        response = requests.get(
            f"{self.management_url}/token", params={"type": api}, headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        )
        response.raise_for_status()
        self._mtime = None  # re-read the rewritten file
        self._load()

    def header(self, api: str) -> dict[str, str]:
        """`{"Authorization": "Bearer ..."}` for `api` (inference or management), refreshed if about to expire."""
        keys = self._load()
        if not keys:
            return {}
        expires = self._expires(api)
        if expires is not None and self.management_url and expires - datetime.now(timezone.utc) < REFRESH_MARGIN:
            self.refresh(api)
            keys = self._load()
        return {"Authorization": f"Bearer {keys[api]['key']}"}


class KeyFileError(ValueError):
    """The key file is there but is not TorchServe's `key_file.json` (or not yet: it is being written)."""


def key_file_from_env() -> Path | None:
    """`CAPTION_KEY_FILE` if set ("" turns tokens off), else `build/serve/key_file.json`."""
    value = os.environ.get("CAPTION_KEY_FILE")
    if value is None:
        return DEFAULT_KEY_FILE
    return Path(value) if value else None
