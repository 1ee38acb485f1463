"""A small client for the captioning service: REST and gRPC inference, management calls, CLI."""

from client.auth import TokenStore
from client.rest import CaptionClient, ServiceError

__all__ = ["CaptionClient", "ServiceError", "TokenStore"]
