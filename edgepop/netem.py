"""Network emulation: how long a call from a caller's region waits at this server.

Callers say where they are with metadata `x-edge-region` (nodes add `x-edge-node`). The
receiving server holds a call for half the round trip before the handler and half
after; stream messages are each held until their own due time (latency, never
bandwidth). Calls without a region are not delayed. This module only decides delays;
`edgepop.rpc` applies them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from edgepop.metrics import NodeMetrics
from edgepop.topology import Topology

REGION_HEADER = "x-edge-region"
NODE_HEADER = "x-edge-node"
# Messages a delayed stream may hold in flight before its producer waits.
DELAY_LINE_MESSAGES_MAX = 10_000

T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    """Where a call comes from: a region, and the calling node's name ("" for clients)."""

    region: str
    node: str = ""

    @property
    def is_node(self) -> bool:
        return bool(self.node)


def caller_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller | None:
    region = node = ""
    for key, value in metadata or ():
        if key == REGION_HEADER:
            region = value if isinstance(value, str) else value.decode()
        elif key == NODE_HEADER:
            node = value if isinstance(value, str) else value.decode()
    if not region:
        return None
    return Caller(region, node)


class NetworkEmulator:
    """The delay this server (in `region`) injects for each caller."""

    def __init__(self, topology: Topology, region: str, metrics: NodeMetrics) -> None:
        self.topology = topology
        self.region = region
        self.metrics = metrics

    def set_topology(self, topology: Topology) -> None:
        self.topology = topology

    def one_way_s(self, caller: Caller) -> float:
        """Half the round trip between the caller and this server."""
        if not self.topology.emulate_delay:
            return 0.0
        rtt_ms = self.topology.rtt_ms(caller.region, self.region, caller_is_node=caller.is_node)
        return rtt_ms / 2000.0

    async def hold(self, caller: Caller, one_way_s: float) -> None:
        """Wait one leg of a call, and record it."""
        if one_way_s <= 0:
            return
        self.metrics.delay(caller.region, self.region).observe(one_way_s)
        await asyncio.sleep(one_way_s)

    async def delay_stream(
        self, caller: Caller, one_way_s: float, messages: AsyncIterator[T]
    ) -> AsyncIterator[T]:
        """Deliver each message `one_way_s` after it was produced, without serialising waits.

        A producer task stamps each message with its due time; this generator yields
        it when due. A slow link therefore adds latency but keeps the producer's rate.
        """
        if one_way_s <= 0:
            async for message in messages:
                yield message
            return
        line: asyncio.Queue[tuple[float, T] | None] = asyncio.Queue(DELAY_LINE_MESSAGES_MAX)
        histogram = self.metrics.delay(caller.region, self.region)
        failure: list[BaseException] = []

        async def produce() -> None:
            try:
                async for message in messages:
                    await line.put((time.monotonic() + one_way_s, message))
            except Exception as error:  # re-raised on the consumer side, in order
                failure.append(error)
            finally:
                await line.put(None)

        producer = asyncio.create_task(produce())
        try:
            while True:
                item = await line.get()
                if item is None:
                    break
                due, message = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                histogram.observe(one_way_s)
                yield message
            if failure:
                raise failure[0]
        finally:
            producer.cancel()
