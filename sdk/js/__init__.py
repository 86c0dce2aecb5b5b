"""The `js` globals Python Workers commonly use, for CPython on edgepop.

Only those that mean something without a JavaScript engine: `Response.new(...)` (the
older handler form's response), `WebSocketPair` (and `WebSocketRequestResponsePair` for
automatic replies), `Object.fromEntries`, `JSON`, `console`, `Date.now()` and `fetch`.
Anything else is an AttributeError naming it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from edgepop.websocket import WebSocket, WebSocketPair, WebSocketRequestResponsePair
from edgepop.worker_api import Response as _Response
from edgepop.worker_api import fetch

log = logging.getLogger("worker.console")


class Response:
    @staticmethod
    def new(body: Any = None, **init: Any) -> _Response:
        return _Response(
            body,
            status=init.get("status", 200),
            status_text=init.get("statusText", ""),
            headers=init.get("headers"),
            web_socket=init.get("webSocket"),
        )


class Object:
    @staticmethod
    def fromEntries(entries: Iterable[tuple[str, Any]] | dict[str, Any]) -> dict[str, Any]:
        return dict(entries.items() if isinstance(entries, dict) else entries)

    @staticmethod
    def new() -> dict[str, Any]:
        return {}


class JSON:
    @staticmethod
    def stringify(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    @staticmethod
    def parse(text: str) -> Any:
        return json.loads(text)


class console:
    @staticmethod
    def log(*values: Any) -> None:
        log.info(" ".join(str(value) for value in values))

    info = log

    @staticmethod
    def warn(*values: Any) -> None:
        log.warning(" ".join(str(value) for value in values))

    @staticmethod
    def error(*values: Any) -> None:
        log.error(" ".join(str(value) for value in values))


class Date:
    @staticmethod
    def now() -> int:
        return int(time.time() * 1000)


__all__ = [
    "JSON",
    "Date",
    "Object",
    "Response",
    "WebSocket",
    "WebSocketPair",
    "WebSocketRequestResponsePair",
    "console",
    "fetch",
]
