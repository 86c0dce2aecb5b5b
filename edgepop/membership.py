"""Cluster membership of a data-plane node: register, heartbeat, follow the topology.

Origin and PoPs run this in the background. The control plane being away never stops
the data plane: the node keeps its last known topology and retries with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from edge.v1 import control_plane_pb2 as pb
from edge.v1 import control_plane_pb2_grpc as pb_grpc
from edgepop import retry, ticks
from edgepop.config import HEARTBEAT_INTERVAL_S_DEFAULT
from edgepop.lease import Lease
from edgepop.ordered_stream import OrderedStream, Unanswered
from edgepop.rpc import channel, node_metadata

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 2.0
HEARTBEATS_IN_FLIGHT_MAX = 4
# Pause before a heartbeat refused by a stopping control plane is sent again.
HEARTBEAT_RESEND_S = 0.05


class Membership:
    def __init__(
        self,
        *,
        control_plane_address: str,
        info: pb.NodeInfo,
        token: str,
        on_topology: Callable[[pb.Topology], None] | None = None,
        on_heartbeat: Callable[[pb.HeartbeatResponse], None] | None = None,
    ) -> None:
        self.address = control_plane_address
        self.info = info
        self.info.pid = os.getpid()
        self.metadata = node_metadata(info.name, info.region, token)
        self.on_topology = on_topology
        self.on_heartbeat = on_heartbeat
        self.incarnation = 0
        # The control plane's, from registering.
        self.heartbeat_interval_s = HEARTBEAT_INTERVAL_S_DEFAULT
        # Renewed by every acknowledged registration or heartbeat (see edgepop.lease).
        self.lease = Lease()
        self.topology: pb.Topology | None = None
        self.registered = asyncio.Event()
        self._reregister = asyncio.Event()
        self._channel = channel(control_plane_address)
        self._stub = pb_grpc.ControlPlaneStub(self._channel)
        # Heartbeats go on one stream, answered in order (edgepop.ordered_stream): a unary
        # call each cost the control plane several times the CPU of a stream message, 33
        # times a second on an idle 32-PoP cluster. Opened with wait_for_ready: a stream
        # opened while the control plane restarts waits for it (see _heartbeat).
        self._heartbeats: OrderedStream[pb.HeartbeatRequest, pb.HeartbeatResponse] = OrderedStream(
            control_plane_address,
            lambda: self._stub.HeartbeatStream(metadata=self.metadata, wait_for_ready=True),
            waits_for_ready=True,
        )

    async def register(self) -> None:
        async for attempt in retry.forever(max_s=1.0):
            with attempt:
                sent_at = time.monotonic()
                response = await self._stub.RegisterNode(
                    pb.RegisterNodeRequest(node=self.info),
                    metadata=self.metadata,
                    timeout=CALL_TIMEOUT_S,
                )
        self.incarnation = response.incarnation
        self.heartbeat_interval_s = response.heartbeat_interval_s
        self.lease.renewed(sent_at, response.lease_s)
        self.registered.set()
        log.info("registered with the control plane (incarnation %d)", self.incarnation)

    async def run_heartbeats(self) -> None:
        """Heartbeat every interval without waiting for the previous one.

        A slow answer still renews the lease from its send time, so one slow round trip
        (a busy machine, a long emulated link) does not cost the lease; heartbeats in
        flight are bounded.
        """
        await self.register()
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                # On the grid (edgepop.ticks): every node's heartbeat leaves at one instant,
                # so the control plane takes a region's in one wake-up.
                await ticks.sleep_to_next_tick(self.heartbeat_interval_s)
                if self._reregister.is_set():
                    self._reregister.clear()
                    await self.register()
                    continue
                if len(in_flight) >= HEARTBEATS_IN_FLIGHT_MAX:
                    continue
                task = asyncio.create_task(self._heartbeat(self.incarnation))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        finally:
            # Stopped (the node closes): the heartbeats in flight go too, before the
            # channel they use is closed under them ("Channel is closed", never read).
            for task in in_flight:
                task.cancel()

    async def _heartbeat(self, incarnation: int) -> None:
        sent_at = time.monotonic()
        deadline = sent_at + max(self.lease.lease_s, self.heartbeat_interval_s)
        request = pb.HeartbeatRequest(name=self.info.name, incarnation=incarnation)
        try:
            # Sent again on a new stream while the old one failed (a control plane that
            # stops ends it), until the deadline. Sent while the control plane restarts,
            # it waits for the channel instead of failing at once: delivered when the
            # control plane is back, it renews the lease from its first send time (safe:
            # the control plane counts from receipt), so a short restart leaves no gap.
            async for attempt in retry.resend_until(
                deadline, HEARTBEAT_RESEND_S, resendable=_resendable
            ):
                with attempt:
                    response = await self._heartbeats.send(
                        request, timeout_s=max(0.001, deadline - time.monotonic())
                    )
        except Unanswered as error:
            log.debug("heartbeat failed: %s", error.reason)
            return
        if not response.known:
            if incarnation == self.incarnation:
                log.info("control plane does not know this incarnation; registering again")
                self._reregister.set()
            return
        if incarnation == self.incarnation:
            self.lease.renewed(sent_at, self.lease.lease_s)
            if self.on_heartbeat is not None:
                self.on_heartbeat(response)

    async def run_topology_watch(self) -> None:
        """Keep `self.topology` current; on loss, keep the last one and reconnect."""
        async for attempt in retry.forever(max_s=1.0):
            with attempt:
                call = self._stub.WatchTopology(pb.GetTopologyRequest(), metadata=self.metadata)
                async for topology in call:
                    self.topology = topology
                    if self.on_topology is not None:
                        self.on_topology(topology)
                raise ConnectionError("topology watch ended")

    async def close(self) -> None:
        self._heartbeats.close()
        await self._channel.close(grace=None)


def _resendable(error: BaseException) -> bool:
    return isinstance(error, Unanswered)
