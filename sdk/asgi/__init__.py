"""Cloudflare's top-level `asgi` module (`import asgi`, as its FastAPI examples do): the
same functions as `workers.asgi`."""

from __future__ import annotations

from typing import Any

from workers import asgi as _asgi
from workers.asgi import entrypoint, fetch, request_to_scope, websocket

__all__ = ["entrypoint", "fetch", "request_to_scope", "websocket"]


def __getattr__(name: str) -> Any:
    return getattr(_asgi, name)  # `asgi.env`, made on demand
