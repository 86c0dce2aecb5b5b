"""A PoP's calls to the origin, as its KV and SQL APIs make them.

`OriginLink` is the part of the PoP those APIs use to reach the origin and to know how far
the local replica has got (`pop_node.node.PopNode` provides it); `call_origin` is the one
way they call: within the client's deadline, retrying what is safe to repeat.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import grpc

from edge.v1 import origin_pb2_grpc
from edgepop import retry
from edgepop.errors import from_upstream

T = TypeVar("T")

# A read that needs a newer replica (a bookmark it has not reached) waits at most this
# long, and at most half its budget, before the origin answers it instead.
BOOKMARK_WAIT_S_MAX = 2.0


class ReplicaProgress(Protocol):
    """How far the local replica has applied the origin's log."""

    @property
    def applied_seq(self) -> int: ...

    async def wait_applied(self, seq: int, timeout: float) -> bool: ...


class OriginLink(Protocol):
    """The origin as a PoP's APIs see it: its stub, the metadata the PoP's calls carry
    (they pay the emulated delay), and the replica's progress."""

    @property
    def origin(self) -> origin_pb2_grpc.OriginStub: ...

    @property
    def node_metadata(self) -> tuple[tuple[str, str], ...]: ...

    @property
    def replication(self) -> ReplicaProgress: ...


def bookmark_wait_s(budget_s: float) -> float:
    """How long a read may wait for the replica to reach its bookmark."""
    return min(BOOKMARK_WAIT_S_MAX, budget_s / 2)


async def call_origin(call: Callable[[float], Awaitable[T]], budget_s: float) -> T:
    """`call(timeout_s)` within `budget_s` seconds.

    Every call a PoP makes upstream is safe to repeat (reads, and writes carrying a
    request id), so UNAVAILABLE is retried until the budget runs out; any other failure
    becomes the domain error that names the origin.
    """
    deadline = time.monotonic() + budget_s
    try:
        return await retry.idempotent(
            lambda: call(max(0.001, deadline - time.monotonic())), deadline
        )
    except grpc.aio.AioRpcError as error:
        raise from_upstream(error, "origin") from error
