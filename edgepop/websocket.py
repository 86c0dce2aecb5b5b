"""WebSockets as Cloudflare's runtime exposes them: a `WebSocketPair` of two linked ends.

What one end sends arrives at the other. A worker keeps the `server` end and returns the
`client` end in a 101 response; the PoP's ingress then carries the client end's traffic
to the real connection. An end is driven in one of three ways:

- its code calls `accept()` and listens (`addEventListener("message", fn)`, `onmessage`):
  a task hands each arriving event to the listeners, in order;
- the runtime attaches a sink (`attach(sink)`): each arriving event is handed over at
  once. This is how an object's client end feeds its session stream (released through
  the output gate) and how a hibernatable socket reaches `webSocketMessage`;
- the runtime reads it (`events()`): how the ingress pumps a client end.

Messages are `str` (text frames) or `bytes` (binary frames); a `CloseEvent` ends an end's
events. Receiving a close marks the end closed (Cloudflare replies to a close itself).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("worker.websocket")

CONNECTING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3
# Cloudflare's bounds: a message is at most 1 MiB, a close reason at most 123 bytes (the
# frame's payload limit), a serialized attachment at most 16 KiB.
MESSAGE_BYTES_MAX = 1024 * 1024
CLOSE_REASON_BYTES_MAX = 123
ATTACHMENT_BYTES_MAX = 16 * 1024
# Events an end holds before its reader catches up; past this the socket is closed
# (1011): a reader that never reads must not grow memory without bound.
QUEUED_EVENTS_MAX = 10_000
# Codes a program may close with (RFC 6455 §7.4: 1000, or 3000-4999 for applications).
CLOSE_NORMAL = 1000
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012


@dataclass(frozen=True)
class MessageEvent:
    data: str | bytes
    type: str = "message"


@dataclass(frozen=True)
class CloseEvent:
    code: int = CLOSE_NORMAL
    reason: str = ""
    wasClean: bool = True
    type: str = "close"


Event = MessageEvent | CloseEvent
Sink = Callable[[Event], None]


def check_close(code: int, reason: str) -> None:
    """A close a program may send: code 1000 or 3000-4999, reason at most 123 bytes."""
    if not isinstance(code, int) or not (code == CLOSE_NORMAL or 3000 <= code <= 4999):
        raise ValueError(f"close code must be 1000 or in 3000-4999, not {code!r}")
    if len(reason.encode()) > CLOSE_REASON_BYTES_MAX:
        raise ValueError(f"close reason is over {CLOSE_REASON_BYTES_MAX} bytes")


def message_payload(message: Any) -> str | bytes:
    """A message as a frame's payload: text stays text, any buffer becomes bytes."""
    if isinstance(message, str):
        payload: str | bytes = message
        size = len(message.encode())
    elif isinstance(message, bytes | bytearray | memoryview):
        payload = bytes(message)
        size = len(payload)
    else:
        raise TypeError(f"a WebSocket sends str or bytes, not {type(message).__name__}")
    if size > MESSAGE_BYTES_MAX:
        raise ValueError(f"WebSocket message is {size} bytes (limit {MESSAGE_BYTES_MAX})")
    return payload


class WebSocket:
    """One end of a pair (Cloudflare's `WebSocket`)."""

    CONNECTING = CONNECTING
    OPEN = OPEN
    CLOSING = CLOSING
    CLOSED = CLOSED

    def __init__(self) -> None:
        self.readyState = OPEN
        self.binaryType = "arraybuffer"
        self.url: str | None = None
        self.protocol = ""
        self.extensions = ""
        self.onmessage: Callable[[Any], Any] | None = None
        self.onclose: Callable[[Any], Any] | None = None
        self.onerror: Callable[[Any], Any] | None = None
        self.onopen: Callable[[Any], Any] | None = None
        self.accepted = False
        self._peer: WebSocket | None = None
        self._sink: Sink | None = None
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._listeners: dict[str, list[Callable[[Any], Any]]] = {}
        self._dispatcher: asyncio.Task[None] | None = None
        self._attachment: str | None = None
        # When the runtime last answered an automatic reply here (ms since the epoch).
        self.auto_response_at_ms: int | None = None

    @property
    def peer(self) -> WebSocket | None:
        return self._peer

    # -- the program's side ----------------------------------------------------------------

    def accept(self) -> None:
        """Start delivering events to this end's listeners."""
        if self._sink is not None:
            raise RuntimeError("this WebSocket is already accepted by the runtime")
        self.accepted = True
        if not self._queue.empty():
            self._ensure_dispatcher()

    def send(self, message: str | bytes) -> None:
        if self.readyState != OPEN:
            raise RuntimeError("WebSocket send() after close")
        payload = message_payload(message)
        if self._peer is not None:
            self._peer.arrive(MessageEvent(payload))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        code = CLOSE_NORMAL if code is None else code
        reason = reason or ""
        check_close(code, reason)
        self.close_unchecked(code, reason)

    def close_unchecked(self, code: int, reason: str, was_clean: bool = True) -> None:
        """Close with any code (the runtime's: 1006, 1011, 1012 ...)."""
        if self.readyState in (CLOSING, CLOSED):
            return
        self.readyState = CLOSED
        if self._peer is not None:
            self._peer.arrive(CloseEvent(code, reason, was_clean))

    def addEventListener(self, kind: str, listener: Callable[[Any], Any]) -> None:
        self._listeners.setdefault(kind, []).append(listener)

    def removeEventListener(self, kind: str, listener: Callable[[Any], Any]) -> None:
        found = self._listeners.get(kind, [])
        if listener in found:
            found.remove(listener)

    def serializeAttachment(self, value: Any) -> None:
        """Keep a value with this socket (Cloudflare's hibernation attachment)."""
        encoded = json.dumps(value, separators=(",", ":"))
        if len(encoded.encode()) > ATTACHMENT_BYTES_MAX:
            raise ValueError(f"attachment is over {ATTACHMENT_BYTES_MAX} bytes serialized")
        self._attachment = encoded

    def deserializeAttachment(self) -> Any:
        return None if self._attachment is None else json.loads(self._attachment)

    # -- the runtime's side ----------------------------------------------------------------

    def attach(self, sink: Sink) -> None:
        """Hand every event arriving here to `sink` (events queued so far first)."""
        if self.accepted:
            raise RuntimeError("this WebSocket was accepted by the program")
        self._sink = sink
        while not self._queue.empty():
            sink(self._queue.get_nowait())

    def arrive(self, event: Event) -> None:
        """An event from the peer (or the network) reaches this end. A close is answered
        with a close (as Cloudflare does), so the peer's events end too."""
        if isinstance(event, CloseEvent):
            was_open = self.readyState == OPEN
            self.readyState = CLOSED
            if was_open and self._peer is not None:
                self._peer.arrive(event)
        if self._sink is not None:
            self._sink(event)
            return
        if self._queue.qsize() >= QUEUED_EVENTS_MAX:
            log.warning("WebSocket reader fell %d events behind: closing", QUEUED_EVENTS_MAX)
            self.close_unchecked(CLOSE_INTERNAL_ERROR, "message queue full")
            return
        self._queue.put_nowait(event)
        if self.accepted:
            self._ensure_dispatcher()

    async def events(self) -> AsyncIterator[Event]:
        """Events arriving at this end, up to and including its close."""
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, CloseEvent):
                return

    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.ensure_future(self._dispatch())

    async def _dispatch(self) -> None:
        while not self._queue.empty():
            await self.deliver(self._queue.get_nowait())

    async def deliver(self, event: Event) -> None:
        """Run this end's listeners for `event` (awaiting those that are coroutines)."""
        handler = self.onmessage if isinstance(event, MessageEvent) else self.onclose
        for listener in [handler, *self._listeners.get(event.type, [])]:
            if listener is None:
                continue
            try:
                outcome = listener(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("WebSocket %s listener raised", event.type)


class WebSocketPair:
    """Two linked ends: `client, server = WebSocketPair.new().object_values()`, or
    `pair[0]`, `pair[1]` (JavaScript's object with keys 0 and 1)."""

    def __init__(self) -> None:
        self.client = WebSocket()
        self.server = WebSocket()
        self.client._peer = self.server
        self.server._peer = self.client

    @classmethod
    def new(cls) -> WebSocketPair:
        return cls()

    def object_values(self) -> tuple[WebSocket, WebSocket]:
        return self.client, self.server

    def __getitem__(self, index: int | str) -> WebSocket:
        return self.object_values()[int(index)]

    def __iter__(self) -> Any:
        return iter(self.object_values())


class WebSocketRequestResponsePair:
    """An automatic reply (`ctx.setWebSocketAutoResponse`): a message equal to `request`
    is answered with `response` without waking the object."""

    def __init__(self, request: str, response: str) -> None:
        self.request = request
        self.response = response

    @classmethod
    def new(cls, request: str, response: str) -> WebSocketRequestResponsePair:
        return cls(request, response)


def is_upgrade(headers: Any) -> bool:
    """Whether request headers ask for a WebSocket (`Upgrade: websocket`)."""
    return str(headers.get("Upgrade") or "").lower() == "websocket"
