"""Requests answered in order on one stream (`OrderedStream`, as an owner sends its
standby copies) against a real grpc.aio server on loopback: answers go to their requests
in order; a late answer, a failed stream or a standby that is down fail every request in
flight, and the next request opens a new stream. And the standby's end
(`ObjectHost.serve_replica_stream`) ends its streams when it stops.

The server plays a standby whose behaviour each request picks by its `owner` field:
"answer" (results = [number of updates]), "hold" (never answers), "abort" (ends the
stream UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from edge.v1 import objects_pb2, pop_pb2_grpc
from edgepop.errors import UnavailableError
from edgepop.ordered_stream import OrderedStream, Unanswered
from edgepop.rpc import CHANNEL_OPTIONS
from edgepop.storage import Storage
from tests.unit.conftest import object_host

METHOD = "/edge.v1.Pop/ObjectReplicate"
TIMEOUT_S = 5.0


class Standby:
    def __init__(self) -> None:
        self.streams_opened = 0
        self.received: list[str] = []
        self.got_one = asyncio.Event()

    async def replicate(
        self, requests: AsyncIterator[objects_pb2.ObjectReplicateRequest], context: Any
    ) -> AsyncIterator[objects_pb2.ObjectReplicateResponse]:
        self.streams_opened += 1
        async for request in requests:
            self.received.append(request.owner)
            self.got_one.set()
            if request.owner == "hold":
                await asyncio.Event().wait()
            if request.owner == "abort":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "standby going away")
            yield objects_pb2.ObjectReplicateResponse(
                results=[objects_pb2.REPLICA_RESULT_APPLIED] * len(request.updates)
            )


def request(behaviour: str, updates: int = 1) -> objects_pb2.ObjectReplicateRequest:
    return objects_pb2.ObjectReplicateRequest(
        owner=behaviour, updates=[objects_pb2.ObjectReplicaUpdate()] * updates
    )


async def _standby_server(standby: Standby, address: str) -> tuple[grpc.aio.Server, str]:
    """A started server with `standby` as its ObjectReplicate; and its address (port 0
    picks one)."""
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        standby.replicate,
        request_deserializer=objects_pb2.ObjectReplicateRequest.FromString,
        response_serializer=objects_pb2.ObjectReplicateResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("edge.v1.Pop", {"ObjectReplicate": handler}),)
    )
    port = server.add_insecure_port(address)
    await server.start()
    return server, f"{address.rsplit(':', 1)[0]}:{port}"


def with_standby(scenario: Callable[[OrderedStream[Any, Any], Standby], Awaitable[None]]) -> None:
    async def run() -> None:
        standby = Standby()
        server, address = await _standby_server(standby, "127.0.0.1:0")
        channel = grpc.aio.insecure_channel(address)
        stub = pop_pb2_grpc.PopStub(channel)
        link = OrderedStream[Any, Any](address, lambda: stub.ObjectReplicate())
        try:
            await asyncio.wait_for(scenario(link, standby), 30)
        finally:
            link.close()
            await channel.close(grace=None)
            await server.stop(grace=None)

    asyncio.run(run())


def test_answers_go_to_their_requests_in_order_on_one_stream() -> None:
    async def scenario(link: OrderedStream[Any, Any], standby: Standby) -> None:
        answers = await asyncio.gather(
            *(link.send(request("answer", updates=count), TIMEOUT_S) for count in (1, 2, 3, 4))
        )
        assert [len(answer.results) for answer in answers] == [1, 2, 3, 4]
        assert standby.streams_opened == 1

    with_standby(scenario)


def test_a_late_answer_fails_every_request_in_flight_and_the_next_opens_a_new_stream() -> None:
    async def scenario(link: OrderedStream[Any, Any], standby: Standby) -> None:
        held = asyncio.ensure_future(link.send(request("hold"), 0.2))
        behind = asyncio.ensure_future(link.send(request("answer"), TIMEOUT_S))
        with pytest.raises(Unanswered, match=r"no answer within 0\.2 s"):
            await held
        # Queued behind the held one on the same stream: its fate is unknown too.
        with pytest.raises(Unanswered, match=r"no answer within 0\.2 s"):
            await behind
        answer = await link.send(request("answer", updates=2), TIMEOUT_S)
        assert len(answer.results) == 2
        assert standby.streams_opened == 2

    with_standby(scenario)


def test_a_stream_the_standby_ends_fails_its_request_and_the_next_opens_a_new_stream() -> None:
    async def scenario(link: OrderedStream[Any, Any], standby: Standby) -> None:
        assert len((await link.send(request("answer"), TIMEOUT_S)).results) == 1
        with pytest.raises(Unanswered) as failed:
            await link.send(request("abort"), TIMEOUT_S)
        assert failed.value.reason == "UNAVAILABLE"
        assert len((await link.send(request("answer"), TIMEOUT_S)).results) == 1
        assert standby.streams_opened == 2
        assert standby.received == ["answer", "abort", "answer"]

    with_standby(scenario)


def test_closing_the_link_fails_what_waits() -> None:
    async def scenario(link: OrderedStream[Any, Any], standby: Standby) -> None:
        held = asyncio.ensure_future(link.send(request("hold"), TIMEOUT_S))
        await standby.got_one.wait()
        link.close()
        with pytest.raises(Unanswered, match="node shutting down"):
            await held

    with_standby(scenario)


def test_a_standby_that_is_down_is_unreachable_at_once() -> None:
    async def run() -> None:
        channel = grpc.aio.insecure_channel("127.0.0.1:1")  # nothing listens on port 1
        stub = pop_pb2_grpc.PopStub(channel)
        link = OrderedStream[Any, Any]("127.0.0.1:1", lambda: stub.ObjectReplicate())
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unanswered) as failed:
            await link.send(request("answer"), TIMEOUT_S)
        assert failed.value.reason == "UNAVAILABLE"
        assert asyncio.get_running_loop().time() - started < TIMEOUT_S
        link.close()
        await channel.close(grace=None)

    asyncio.run(run())


def test_waiting_for_a_server_that_is_down_ends_at_the_timeout_and_it_answers_once_up() -> None:
    # A stream opened with wait_for_ready (the heartbeats') waits for the channel; grpc.aio's
    # write there ignores the call's cancel, so a write not bounded by the timeout held the
    # write lock for good and every later request waited behind it.
    async def run() -> None:
        address = _unused_address()
        channel, link = _link_waiting_for_ready(address)
        for _ in range(2):  # the second is not stuck behind the first
            with pytest.raises(Unanswered, match=r"no answer within 0\.3 s"):
                await asyncio.wait_for(link.send(request("answer"), 0.3), TIMEOUT_S)
        server, _ = await _standby_server(Standby(), address)
        try:
            answer = await link.send(request("answer"), TIMEOUT_S)
            assert list(answer.results) == [objects_pb2.REPLICA_RESULT_APPLIED]
        finally:
            link.close()
            await channel.close(grace=None)
            await server.stop(grace=None)

    asyncio.run(run())


def test_a_request_queued_behind_a_write_gets_no_more_than_its_own_timeout() -> None:
    # Its deadline covers the wait for the stream: queued behind a write that waits for a
    # server that is down, it fails at its own timeout, unsent, while that write still waits.
    async def run() -> None:
        address = _unused_address()
        channel, link = _link_waiting_for_ready(address)
        writing = asyncio.ensure_future(link.send(request("answer"), 2.0))
        queued = asyncio.ensure_future(link.send(request("answer"), 0.2))
        with pytest.raises(Unanswered, match=r"not sent within 0\.2 s"):
            await asyncio.wait_for(queued, TIMEOUT_S)
        assert not writing.done()
        with pytest.raises(Unanswered, match=r"no answer within 2 s"):
            await asyncio.wait_for(writing, TIMEOUT_S)
        link.close()
        await channel.close(grace=None)

    asyncio.run(run())


def _link_waiting_for_ready(address: str) -> tuple[grpc.aio.Channel, OrderedStream[Any, Any]]:
    """A link whose streams wait for the channel (as the heartbeats' do), and its channel."""
    channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    stub = pop_pb2_grpc.PopStub(channel)
    link = OrderedStream[Any, Any](
        address, lambda: stub.ObjectReplicate(wait_for_ready=True), waits_for_ready=True
    )
    return channel, link


def _unused_address() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"127.0.0.1:{port}"


def test_a_standby_that_stops_ends_the_owners_streams_unavailable(tmp_path: Path) -> None:
    """Not cancelled: grpc sends no status for a cancelled handler, so the call would stay
    open, and the node's stop wait for it, until the server's drain ran out."""
    storage = Storage(tmp_path / "objects", 64 * 1024**2)
    host = object_host(storage, {}, node_name="london-2", region="london")

    async def scenario() -> None:
        owner_sends = asyncio.Event()

        async def requests() -> AsyncIterator[objects_pb2.ObjectReplicateRequest]:
            yield request("answer", updates=0)
            await owner_sends.wait()  # the owner has nothing more to copy, for now
            yield request("answer", updates=0)

        answered = asyncio.Event()

        async def serve() -> None:
            async for _answer in host.serve_replica_stream(requests()):
                answered.set()

        serving = asyncio.ensure_future(serve())
        await asyncio.wait_for(answered.wait(), 5)
        await host.close()
        with pytest.raises(UnavailableError, match="shutting down"):
            await asyncio.wait_for(serving, 5)

    try:
        asyncio.run(scenario())
    finally:
        storage.close()
