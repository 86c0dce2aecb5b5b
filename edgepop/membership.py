"""Cluster membership of a data-plane node: register, heartbeat, follow the topology.

Origin and PoPs run this in the background. The control plane being away never stops
the data plane: the node keeps its last known topology and retries with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import grpc

from edge.v1 import control_plane_pb2 as pb
from edge.v1 import control_plane_pb2_grpc as pb_grpc
from edgepop import retry
from edgepop.rpc import channel, node_metadata

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 2.0


class Membership:
    def __init__(
        self,
        *,
        control_plane_address: str,
        info: pb.NodeInfo,
        token: str,
        on_topology: Callable[[pb.Topology], None] | None = None,
    ) -> None:
        self.address = control_plane_address
        self.info = info
        self.info.pid = os.getpid()
        self.metadata = node_metadata(info.name, info.region, token)
        self.on_topology = on_topology
        self.incarnation = 0
        self.heartbeat_interval_s = 0.5
        self.topology: pb.Topology | None = None
        self.registered = asyncio.Event()
        self._channel = channel(control_plane_address)
        self._stub = pb_grpc.ControlPlaneStub(self._channel)

    async def register(self) -> None:
        async for attempt in retry.forever(max_s=1.0):
            with attempt:
                response = await self._stub.RegisterNode(
                    pb.RegisterNodeRequest(node=self.info),
                    metadata=self.metadata,
                    timeout=CALL_TIMEOUT_S,
                )
        self.incarnation = response.incarnation
        self.heartbeat_interval_s = response.heartbeat_interval_s
        self.registered.set()
        log.info("registered with the control plane (incarnation %d)", self.incarnation)

    async def run_heartbeats(self) -> None:
        await self.register()
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                response = await self._stub.Heartbeat(
                    pb.HeartbeatRequest(name=self.info.name, incarnation=self.incarnation),
                    metadata=self.metadata,
                    timeout=max(self.heartbeat_interval_s, 0.5),
                )
            except grpc.aio.AioRpcError as error:
                log.debug("heartbeat failed: %s", error.code().name)
                continue
            if not response.known:
                log.info("control plane does not know this incarnation; registering again")
                await self.register()

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
        await self._channel.close(grace=None)
