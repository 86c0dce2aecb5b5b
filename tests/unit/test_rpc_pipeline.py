"""edgepop.rpc: unary and streaming calls go through one pipeline, in one order.

The same request, sent to a unary method and to a streaming one of the same servicer,
gets the same answer: the cluster token is checked only once the request has crossed the
inbound leg (a partition holds it first, so a partitioned caller without a token hears
its deadline, not UNAUTHENTICATED); the inbound delay passes before the handler runs;
domain errors map to their codes and anything else to INTERNAL "internal error". No
sockets: the decorated methods run with a fake context.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from edge.v1 import pop_pb2
from edgepop.errors import REASON_KEY, FailedPreconditionError, NotFoundError
from edgepop.faults import LinkFault
from edgepop.metrics import NodeMetrics
from edgepop.netem import REGION_HEADER, NetworkEmulator
from edgepop.rpc import AUTHORIZATION_HEADER, RpcEnv, rpc
from edgepop.topology import default_topology

TOKEN = "the-token"


class Aborted(Exception):
    pass


@dataclass
class FakeContext:
    metadata: tuple[tuple[str, str], ...] = ()
    deadline_s: float | None = None
    aborted: tuple[grpc.StatusCode, str] | None = None
    trailing: tuple[tuple[str, str], ...] = ()
    started: float = field(default_factory=time.monotonic)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        if self.deadline_s is None:
            return None
        return self.deadline_s - (time.monotonic() - self.started)

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details)
        self.trailing = tuple(trailing_metadata)
        raise Aborted(details)


@dataclass
class Servicer:
    rpc_env: RpcEnv
    behaviour: Callable[[], Any] = lambda: None
    ran_at: list[float] = field(default_factory=list)

    @rpc(internal=True)
    async def Unary(self, request: Any, context: Any) -> pop_pb2.PopStatusResponse:
        self.ran_at.append(time.monotonic())
        self.behaviour()
        return pop_pb2.PopStatusResponse(node="unary")

    @rpc(internal=True)
    async def Streaming(
        self, request: Any, context: Any
    ) -> AsyncIterator[pop_pb2.PopStatusResponse]:
        self.ran_at.append(time.monotonic())
        self.behaviour()
        yield pop_pb2.PopStatusResponse(node="stream")


def servicer(region: str = "sydney") -> Servicer:
    metrics = NodeMetrics(f"{region}-1", region)
    netem = NetworkEmulator(default_topology(), region, metrics, seed=1)
    return Servicer(RpcEnv("Pop", metrics, netem, TOKEN))


async def _unary(target: Servicer, context: FakeContext) -> str:
    return (await target.Unary(pop_pb2.PopStatusRequest(), context)).node  # type: ignore[no-any-return]


async def _streaming(target: Servicer, context: FakeContext) -> str:
    nodes = [m.node async for m in target.Streaming(pop_pb2.PopStatusRequest(), context)]
    return ",".join(nodes)


KINDS = {"unary": _unary, "streaming": _streaming}


def answer(kind: str, target: Servicer, context: FakeContext) -> tuple[str, Any]:
    try:
        return "OK", asyncio.run(KINDS[kind](target, context))
    except Aborted:
        assert context.aborted is not None
        return context.aborted[0].name, context.aborted[1]


def metadata(
    *, token: str | None = TOKEN, region: str | None = None
) -> tuple[tuple[str, str], ...]:
    pairs = []
    if token is not None:
        pairs.append((AUTHORIZATION_HEADER, f"Bearer {token}"))
    if region is not None:
        pairs.append((REGION_HEADER, region))
    return tuple(pairs)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_token_is_checked(kind: str) -> None:
    target = servicer()
    assert answer(kind, target, FakeContext(metadata(token="wrong")))[0] == "UNAUTHENTICATED"
    assert answer(kind, target, FakeContext(metadata(token=None)))[0] == "UNAUTHENTICATED"
    assert target.ran_at == []
    assert answer(kind, target, FakeContext(metadata()))[0] == "OK"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_partition_holds_the_request_before_its_token_is_looked_at(kind: str) -> None:
    target = servicer()
    target.rpc_env.netem.set_faults([LinkFault("tokyo", "sydney", partitioned=True)])
    context = FakeContext(metadata(token="wrong", region="tokyo"), deadline_s=0.05)
    code, message = answer(kind, target, context)
    assert (code, message) == ("DEADLINE_EXCEEDED", "deadline exceeded (network partitioned)")
    assert target.ran_at == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_inbound_delay_passes_before_the_handler_runs(kind: str) -> None:
    target = servicer("us-east-1")
    context = FakeContext(metadata(region="tokyo"))
    assert answer(kind, target, context)[0] == "OK"
    # tokyo -> us-east-1 is 170 ms round trip in the seed's table: 85 ms each way.
    assert target.ran_at[0] - context.started >= 0.085 - 0.002


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(
    ("raise_", "expected"),
    [
        (NotFoundError("no such thing"), ("NOT_FOUND", "no such thing")),
        (ValueError("a bug"), ("INTERNAL", "internal error")),
    ],
)
def test_errors_map_to_the_same_status(
    kind: str, raise_: Exception, expected: tuple[str, str]
) -> None:
    def fail() -> None:
        raise raise_

    target = servicer()
    target.behaviour = fail
    assert answer(kind, target, FakeContext(metadata())) == expected


class NotHere(FailedPreconditionError):
    reason = "not-here"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_errors_reason_travels_as_trailing_metadata(kind: str) -> None:
    """Another node tells errors of one code apart by reason, never by message text."""

    def fail() -> None:
        raise NotHere("somewhere else")

    target = servicer()
    target.behaviour = fail
    context = FakeContext(metadata())
    assert answer(kind, target, context) == ("FAILED_PRECONDITION", "somewhere else")
    assert context.trailing == ((REASON_KEY, "not-here"),)
    plain = FakeContext(metadata())
    target.behaviour = lambda: (_ for _ in ()).throw(FailedPreconditionError("no reason"))
    assert answer(kind, target, plain)[0] == "FAILED_PRECONDITION"
    assert plain.trailing == ()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_node_serving_its_most_calls_refuses_the_next_and_takes_calls_again_after(
    kind: str,
) -> None:
    target = servicer()
    env = target.rpc_env
    env.calls_in_flight_max = 3
    env.calls_in_flight = 3  # three calls still inside their handlers
    code, message = answer(kind, target, FakeContext(metadata()))
    assert code == "RESOURCE_EXHAUSTED"
    assert "at most 3 calls at once" in message
    assert target.ran_at == []
    assert env.calls_in_flight == 3  # the refused call is not counted on
    env.calls_in_flight = 2
    assert answer(kind, target, FakeContext(metadata()))[0] == "OK"
    assert env.calls_in_flight == 2


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_call_is_counted_in_flight_while_its_handler_runs_whatever_it_ends_with(
    kind: str,
) -> None:
    seen: list[int] = []
    target = servicer()

    def fail() -> None:
        seen.append(target.rpc_env.calls_in_flight)
        raise NotFoundError("no such key")

    target.behaviour = fail
    assert answer(kind, target, FakeContext(metadata()))[0] == "NOT_FOUND"
    assert seen == [1]
    assert target.rpc_env.calls_in_flight == 0
