"""The one way a PoP's KV and SQL APIs call the origin (pop_node.upstream), without sockets."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from edgepop.errors import UnavailableError, UpstreamError
from pop_node.upstream import BOOKMARK_WAIT_S_MAX, bookmark_wait_s, call_origin


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class Origin:
    """Fails with each of `failures` in turn, then answers "ok"; records the timeouts."""

    def __init__(self, *failures: grpc.StatusCode) -> None:
        self.failures = list(failures)
        self.timeouts: list[float] = []

    async def call(self, timeout_s: float) -> str:
        self.timeouts.append(timeout_s)
        if self.failures:
            raise rpc_error(self.failures.pop(0), "origin says no")
        return "ok"


def test_unavailable_is_retried_within_the_budget() -> None:
    origin = Origin(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    assert asyncio.run(call_origin(origin.call, 5.0)) == "ok"
    assert len(origin.timeouts) == 3
    # Each attempt gets what is left of the budget, never more.
    assert all(0 < timeout <= 5.0 for timeout in origin.timeouts)
    assert origin.timeouts == sorted(origin.timeouts, reverse=True)


def test_a_client_error_passes_through_at_once() -> None:
    origin = Origin(grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(call_origin(origin.call, 5.0))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(origin.timeouts) == 1


def test_an_origin_still_down_when_the_budget_ends_is_named() -> None:
    origin = Origin(*[grpc.StatusCode.UNAVAILABLE] * 100)
    with pytest.raises(UnavailableError, match="origin unreachable: UNAVAILABLE"):
        asyncio.run(call_origin(origin.call, 0.2))
    assert 1 < len(origin.timeouts) < 100


def test_a_bookmark_wait_takes_half_the_budget_at_most() -> None:
    assert bookmark_wait_s(1.0) == 0.5
    assert bookmark_wait_s(60.0) == BOOKMARK_WAIT_S_MAX
    assert bookmark_wait_s(0.0) == 0.0
