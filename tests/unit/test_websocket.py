"""WebSocketPair semantics (edgepop.websocket), without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgepop.websocket import (
    ATTACHMENT_BYTES_MAX,
    MESSAGE_BYTES_MAX,
    CloseEvent,
    Event,
    MessageEvent,
    WebSocket,
    WebSocketPair,
    is_upgrade,
)


async def drain(ws: WebSocket) -> list[Event]:
    return [event async for event in ws.events()]


def test_what_one_end_sends_the_other_reads_in_order_then_the_close() -> None:
    async def run() -> list[Event]:
        client, server = WebSocketPair.new().object_values()
        server.send("one")
        server.send(b"\x00two")
        server.close(4000, "bye")
        return await drain(client)

    assert asyncio.run(run()) == [
        MessageEvent("one"),
        MessageEvent(b"\x00two"),
        CloseEvent(4000, "bye", True),
    ]


def test_pair_unpacks_like_cloudflares_object() -> None:
    pair = WebSocketPair()
    client, server = pair
    assert pair[0] is client and pair["1"] is server
    assert client.peer is server and server.peer is client


def test_accepted_end_runs_listeners_sync_and_async_in_arrival_order() -> None:
    async def run() -> list[Any]:
        client, server = WebSocketPair.new().object_values()
        seen: list[Any] = []

        async def later(event: Any) -> None:
            await asyncio.sleep(0)
            seen.append(("listener", event.data))

        server.onmessage = lambda event: seen.append(("onmessage", event.data))
        server.addEventListener("message", later)
        closed = asyncio.Event()

        def on_close(event: Any) -> None:
            seen.append(("close", event.code))
            closed.set()

        server.addEventListener("close", on_close)
        client.send("queued before accept")
        server.accept()
        client.send("after")
        client.close(1000)
        await asyncio.wait_for(closed.wait(), 1)  # the close comes last, after the rest
        return seen

    assert asyncio.run(run()) == [
        ("onmessage", "queued before accept"),
        ("listener", "queued before accept"),
        ("onmessage", "after"),
        ("listener", "after"),
        ("close", 1000),
    ]


def test_a_close_is_answered_so_both_ends_end() -> None:
    async def run() -> tuple[list[Event], int, int]:
        client, server = WebSocketPair.new().object_values()
        events: list[Event] = []
        server.attach(events.append)
        client.close(1000, "done")
        # The server end answered the close: the client's reader sees it and stops.
        return await drain(client), server.readyState, client.readyState

    answered, server_state, client_state = asyncio.run(run())
    assert answered == [CloseEvent(1000, "done", True)]
    assert server_state == client_state == WebSocket.CLOSED


def test_send_after_close_and_bad_closes_are_refused() -> None:
    async def run() -> None:
        _, server = WebSocketPair.new().object_values()
        with pytest.raises(ValueError, match="close code"):
            server.close(1006)
        with pytest.raises(ValueError, match="123 bytes"):
            server.close(1000, "x" * 124)
        server.close()
        with pytest.raises(RuntimeError, match="after close"):
            server.send("late")

    asyncio.run(run())


def test_message_limits_and_types() -> None:
    async def run() -> None:
        _, server = WebSocketPair.new().object_values()
        with pytest.raises(ValueError, match="limit"):
            server.send(b"x" * (MESSAGE_BYTES_MAX + 1))
        with pytest.raises(TypeError, match="str or bytes"):
            server.send(42)  # type: ignore[arg-type]
        server.send(bytearray(b"ok"))  # any buffer goes as bytes

    asyncio.run(run())


def test_attachment_round_trips_as_data_and_is_bounded() -> None:
    ws = WebSocket()
    assert ws.deserializeAttachment() is None
    value = {"name": "ada", "joined": [1, 2]}
    ws.serializeAttachment(value)
    value["name"] = "changed"  # a copy was kept, as a structured clone would be
    assert ws.deserializeAttachment() == {"name": "ada", "joined": [1, 2]}
    with pytest.raises(ValueError, match="attachment"):
        ws.serializeAttachment("x" * ATTACHMENT_BYTES_MAX)


def test_attach_hands_over_what_was_queued_first() -> None:
    async def run() -> list[Event]:
        client, server = WebSocketPair.new().object_values()
        server.send("early")
        seen: list[Event] = []
        client.attach(seen.append)
        server.send("late")
        return seen

    assert asyncio.run(run()) == [MessageEvent("early"), MessageEvent("late")]


def test_upgrade_header_is_case_insensitive_in_value() -> None:
    assert is_upgrade({"Upgrade": "WebSocket"})
    assert not is_upgrade({"Upgrade": "h2c"})
    assert not is_upgrade({})
