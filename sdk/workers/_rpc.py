"""Values across a binding or an RPC: Cloudflare converts Python <-> JavaScript; edgepop's
values stay Python (JSON on the wire), so only the shape of what comes back differs."""

from __future__ import annotations

from typing import Any

from edgepop.worker_api import JsDict


def python_from_rpc(value: Any) -> Any:
    """A value received over RPC: dicts (at any depth) become `JsDict`s."""
    if isinstance(value, dict):
        return JsDict({key: python_from_rpc(item) for key, item in value.items()})
    if isinstance(value, list):
        return [python_from_rpc(item) for item in value]
    return value


def python_to_rpc(value: Any) -> Any:
    """A value to send over RPC: refused as Cloudflare refuses them (tuples, awaitables)."""
    if isinstance(value, tuple | bytearray):
        raise TypeError(f"{type(value).__name__} cannot cross RPC (use a list or bytes)")
    if isinstance(value, dict):
        return {key: python_to_rpc(item) for key, item in value.items()}
    if isinstance(value, list):
        return [python_to_rpc(item) for item in value]
    return value
