"""The ingress reads a body within a bound (found by the fuzz: a client that stopped
sending its body held the connection and the handler forever; aiohttp has no body
timeout, and its header timeout defaulted to an hour).

No sockets: `read_body` is driven with a fake request whose body stream is scripted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from pop_node.workers import ingress
from pop_node.workers.ingress import BodyTimeoutError, handler_args, read_body


@dataclass
class ScriptedStream:
    """Yields each (delay_s, chunk) in turn; then b"" (the end), or stalls forever."""

    script: Sequence[tuple[float, bytes]]
    stall_at_end: bool = False

    def __post_init__(self) -> None:
        self._next = 0

    async def readany(self) -> bytes:
        if self._next >= len(self.script):
            if self.stall_at_end:
                await asyncio.Event().wait()
            return b""
        delay_s, chunk = self.script[self._next]
        self._next += 1
        await asyncio.sleep(delay_s)
        return chunk


@dataclass
class FakeRequest:
    content: ScriptedStream
    # aiohttp: False when the request has no Content-Length and is not chunked.
    body_exists: bool = True


def read(stream: ScriptedStream) -> bytes:
    request: Any = FakeRequest(stream)
    return asyncio.run(read_body(request))


@pytest.fixture
def short_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Milliseconds instead of seconds: the rule is the same.
    monkeypatch.setattr(ingress, "BODY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(ingress, "BODY_RATE_BYTES_S_MIN", 1000)


def test_a_request_without_a_body_is_not_read_at_all(short_bounds: None) -> None:
    """A GET has nothing to wait for: the stream is never asked (it would stall here)."""
    request: Any = FakeRequest(ScriptedStream([(0.0, b"never")], stall_at_end=True), False)
    assert asyncio.run(asyncio.wait_for(read_body(request), 1.0)) == b""


def test_a_body_that_arrives_is_read_whole(short_bounds: None) -> None:
    assert read(ScriptedStream([(0.0, b"abc"), (0.01, b"def")])) == b"abcdef"


def test_a_body_that_stops_coming_times_out(short_bounds: None) -> None:
    with pytest.raises(BodyTimeoutError, match="3 bytes"):
        read(ScriptedStream([(0.0, b"abc")], stall_at_end=True))


def test_a_trickled_body_times_out_even_though_bytes_keep_coming(short_bounds: None) -> None:
    # One byte every 50 ms buys 1 ms each: the 0.2 s grace runs out after about 4 bytes.
    with pytest.raises(BodyTimeoutError):
        read(ScriptedStream([(0.05, b"b")] * 100))


def test_a_steady_large_body_earns_more_time(short_bounds: None) -> None:
    # 300 bytes every 0.1 s: 3,000 bytes in 1 s, past the 0.2 s grace but above the rate.
    assert read(ScriptedStream([(0.1, b"b" * 300)] * 10)) == b"b" * 3000


def test_a_body_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingress, "BODY_BYTES_MAX", 5)
    with pytest.raises(web.HTTPRequestEntityTooLarge):
        read(ScriptedStream([(0.0, b"abc"), (0.0, b"def")]))


def test_headers_must_arrive_within_the_bound() -> None:
    # aiohttp closes a connection without a complete request after `keepalive_timeout`.
    assert handler_args()["keepalive_timeout"] == ingress.REQUEST_HEADERS_TIMEOUT_S
    assert ingress.REQUEST_HEADERS_TIMEOUT_S <= 30
