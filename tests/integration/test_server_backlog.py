"""A node whose event loop falls behind answers every call that reached it.

Calls that arrived but that the event loop has not taken yet wait in gRPC's own queue;
past 1,000 of them gRPC drops new ones at random and their client hears only CANCELLED,
with no reason (`edgepop.rpc.SERVER_OPTIONS` lifts that bound). Here the loop is held
inside one call until 2,500 more have arrived, as under a load the node cannot keep up
with; every one of them must then be answered. A real gRPC server (`build_server`) on
loopback and a real client in a thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

import grpc
from grpc._cython import cygrpc

from edgectl.launcher import free_port
from edgepop.rpc import build_server
from tests.conftest import poll_until

QUEUED_CALLS = 2_500
SERVICE = "test.Backlog"


def _calls_started(port: int) -> int:
    """Calls the server listening on `port` has received, taken by the loop or not
    (gRPC's channelz counts a call when it arrives)."""
    servers = json.loads(cygrpc.channelz_get_servers(0))["server"]
    for server in servers:
        if any(s["name"].endswith(f":{port}") for s in server.get("listenSocket", [])):
            return int(server["data"].get("callsStarted", 0))
    raise AssertionError(f"no server listens on port {port}")


def _send_all(port: int, holding: threading.Event) -> Counter[str]:
    """One call that holds the server's loop, then `QUEUED_CALLS` behind it; the status
    code of each."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        hold = channel.unary_unary(f"/{SERVICE}/Hold").future(b"", timeout=120)
        assert holding.wait(30), "the server never took the first call"
        echo = channel.unary_unary(f"/{SERVICE}/Echo")
        queued = [echo.future(b"x", timeout=120) for _ in range(QUEUED_CALLS)]
        codes = Counter[str]()
        for call in (hold, *queued):
            codes[call.code().name] += 1
        return codes


async def _serve_and_send() -> Counter[str]:
    port = free_port()
    holding = threading.Event()

    async def hold_the_loop(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # Blocks the event loop on purpose: no call is taken from gRPC's queue until
        # all the others have arrived there.
        holding.set()
        poll_until(
            lambda: _calls_started(port) >= QUEUED_CALLS + 1,
            timeout=60,
            interval=0.01,
            what=f"{QUEUED_CALLS} calls queued behind the held loop",
        )
        return b""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = build_server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Hold": grpc.unary_unary_rpc_method_handler(hold_the_loop),
                    "Echo": grpc.unary_unary_rpc_method_handler(echo),
                },
            )
        ]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        return await asyncio.to_thread(_send_all, port, holding)
    finally:
        await server.stop(None)


def test_every_call_queued_behind_a_busy_event_loop_is_answered() -> None:
    assert asyncio.run(_serve_and_send()) == Counter({"OK": QUEUED_CALLS + 1})
