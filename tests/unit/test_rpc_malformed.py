"""Requests whose bytes do not parse are refused with INVALID_ARGUMENT (found by the fuzz).

gRPC's own handling answered UNKNOWN "Unexpected <class 'DecodeError'>" (and logged a
traceback per call); a malformed message inside an ObjectConnect stream answered
INTERNAL, or left a session open until the client's deadline. No sockets here: the
interceptor, the lenient parser and the `rpc` decorator are driven with a fake context.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError

from edge.v1 import kv_pb2, objects_pb2
from edgepop.metrics import NodeMetrics
from edgepop.netem import NetworkEmulator
from edgepop.rpc import LenientRegistration, MalformedRequest, RpcEnv, lenient, rpc
from edgepop.topology import default_topology

CORRUPT = b"\x80" * 11  # a varint that never ends
BAD_UTF8 = b"\x0a\x02\xc3\x28"  # field 1 (a string) holding invalid UTF-8


class Aborted(Exception):
    pass


@dataclass
class FakeContext:
    metadata: tuple[tuple[str, str], ...] = ()
    aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


@dataclass
class Servicer:
    rpc_env: RpcEnv
    seen: list[Any] = field(default_factory=list)

    @rpc()
    async def KvGet(self, request: kv_pb2.KvGetRequest, context: Any) -> kv_pb2.KvGetResponse:
        self.seen.append(request)
        return kv_pb2.KvGetResponse()

    @rpc(bidi=True)
    async def ObjectConnect(
        self, requests: AsyncIterator[objects_pb2.ObjectClientMessage], context: Any
    ) -> AsyncIterator[objects_pb2.ObjectServerMessage]:
        async for message in requests:
            self.seen.append(message)
            yield objects_pb2.ObjectServerMessage(data=message.data)
        yield objects_pb2.ObjectServerMessage(closed=objects_pb2.ObjectClosed(reason="done"))


def servicer() -> Servicer:
    metrics = NodeMetrics("tokyo-1", "tokyo")
    return Servicer(
        RpcEnv("Pop", metrics, NetworkEmulator(default_topology(), "tokyo", metrics), "")
    )


def recorded_codes(servicer: Servicer) -> set[str]:
    samples = servicer.rpc_env.metrics.registry.collect()
    return {
        sample.labels["code"]
        for family in samples
        for sample in family.samples
        if family.name == "edge_request_duration_seconds" and "code" in sample.labels
    }


@pytest.mark.parametrize("raw", [CORRUPT, BAD_UTF8, b"\xff"])
def test_bytes_that_do_not_parse_become_a_malformed_request(raw: bytes) -> None:
    parsed = lenient(kv_pb2.KvGetRequest.FromString)(raw)
    assert isinstance(parsed, MalformedRequest)
    assert parsed.message.startswith("malformed request: ")
    assert "edge.v1.KvGetRequest" in parsed.message


def test_bytes_that_parse_are_the_message() -> None:
    raw = kv_pb2.KvGetRequest(namespace="ns", key="k").SerializeToString()
    assert lenient(kv_pb2.KvGetRequest.FromString)(raw) == kv_pb2.KvGetRequest(
        namespace="ns", key="k"
    )


class RecordingServer:
    """What a grpc.aio server receives at registration."""

    def __init__(self) -> None:
        self.registered: dict[str, dict[str, Any]] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered[service] = handlers


def test_registered_edge_services_parse_requests_leniently() -> None:
    server = RecordingServer()
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: None, request_deserializer=kv_pb2.KvGetRequest.FromString
    )
    LenientRegistration(server).add_registered_method_handlers("edge.v1.Pop", {"KvGet": handler})
    wrapped = server.registered["edge.v1.Pop"]["KvGet"]
    assert isinstance(wrapped.request_deserializer(CORRUPT), MalformedRequest)
    assert wrapped.request_deserializer(b"") == kv_pb2.KvGetRequest()
    # Unwrapped, the same bytes make gRPC's deserializer raise (the call would be UNKNOWN).
    with pytest.raises(DecodeError):
        handler.request_deserializer(CORRUPT)


def test_a_malformed_unary_request_is_refused_before_the_handler_runs() -> None:
    target = servicer()
    context = FakeContext()
    with pytest.raises(Aborted):
        asyncio.run(target.KvGet(MalformedRequest("malformed request: x"), context))
    assert context.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "malformed request: x")
    assert target.seen == []
    assert recorded_codes(target) == {"INVALID_ARGUMENT"}


async def _stream(*messages: Any) -> AsyncIterator[Any]:
    for message in messages:
        yield message


async def _drain(stream: AsyncIterator[Any]) -> list[Any]:
    return [message async for message in stream]


def test_a_malformed_first_stream_message_is_refused_at_once() -> None:
    target = servicer()
    context = FakeContext()
    requests = _stream(MalformedRequest("malformed request: first"))
    with pytest.raises(Aborted):
        asyncio.run(_drain(target.ObjectConnect(requests, context)))
    assert context.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "malformed request: first")


def test_a_malformed_later_stream_message_ends_the_stream_then_the_call() -> None:
    """The handler sees the client's stream end (a session closes as on a disconnect),
    its last messages still go out, and the call ends INVALID_ARGUMENT naming the cause."""
    target = servicer()
    context = FakeContext()
    ok = objects_pb2.ObjectClientMessage(data="hello")
    never = objects_pb2.ObjectClientMessage(data="after the bad one")
    requests = _stream(ok, MalformedRequest("malformed request: second"), never)
    sent: list[Any] = []

    async def run() -> None:
        async for message in target.ObjectConnect(requests, context):
            sent.append(message)

    with pytest.raises(Aborted):
        asyncio.run(run())
    assert target.seen == [ok]
    assert [message.WhichOneof("kind") for message in sent] == ["data", "closed"]
    assert context.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "malformed request: second")
