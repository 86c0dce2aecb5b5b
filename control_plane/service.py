"""gRPC servicer of the control plane: thin wiring over the registry and routing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from control_plane.placement import Placement
from control_plane.registry import ROLE_POP
from control_plane.routing import nearest_pops, pick
from control_plane.state import entry_from_pb, placement_to_pb
from edge.v1 import control_plane_pb2 as pb
from edge.v1 import control_plane_pb2_grpc as pb_grpc
from edge.v1 import objects_pb2, workers_pb2
from edgepop import objectid, ticks
from edgepop.bundle import BundleError
from edgepop.errors import InvalidArgumentError, NotFoundError, UnavailableError
from edgepop.faults import FAULT_DURATION_S_MAX, FaultError, LinkFault, fault_to_pb, validate
from edgepop.rpc import RpcEnv, rpc

if TYPE_CHECKING:
    from control_plane.node import ControlPlane

# A watcher hears about changes at once, and at least this often regardless.
WATCH_REFRESH_S = 5.0


class ControlPlaneService(pb_grpc.ControlPlaneServicer):
    def __init__(self, node: ControlPlane) -> None:
        self.node = node
        self.rpc_env = RpcEnv("ControlPlane", node.metrics, node.netem, node.token)

    @rpc(internal=True)
    async def RegisterNode(
        self, request: pb.RegisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterNodeResponse:
        entry = entry_from_pb(request.node)
        if not entry.name or not entry.role or not entry.grpc_address:
            raise InvalidArgumentError("node needs a name, a role and a grpc_address")
        if not self.node.config.topology.has_region(entry.region):
            raise InvalidArgumentError(f"unknown region {entry.region!r}")
        registered = await self.node.register(entry)
        return pb.RegisterNodeResponse(
            incarnation=registered.incarnation,
            heartbeat_interval_s=self.node.config.heartbeat_interval_s,
            lease_s=self.node.config.lease_s,
        )

    @rpc(internal=True)
    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        return self._heartbeat(request)

    @rpc(internal=True, bidi=True)
    async def HeartbeatStream(
        self,
        request_iterator: AsyncIterator[pb.HeartbeatRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        # Each message crossed the inbound leg on its own (the decorator), so the lease
        # counts from when this heartbeat would have arrived, as for a unary one.
        async for request in request_iterator:
            yield self._heartbeat(request)

    def _heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        known = self.node.registry.heartbeat(
            request.name, request.incarnation, self.node.lease_clock()
        )
        if not known:
            return pb.HeartbeatResponse(known=False)
        return pb.HeartbeatResponse(
            known=True, objects_to_sync=self.node.objects_to_sync_for(request.name)
        )

    @rpc()
    async def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(nodes=self.node.node_infos())

    @rpc()
    async def Route(
        self, request: pb.RouteRequest, context: grpc.aio.ServicerContext
    ) -> pb.RouteResponse:
        topology = self.node.config.topology
        if not topology.has_region(request.region):
            raise InvalidArgumentError(f"unknown region {request.region!r}")
        registry = self.node.registry
        now = self.node.lease_clock()
        pops = [
            entry
            for entry in registry.entries()
            if entry.role == ROLE_POP and registry.is_healthy(entry, now)
        ]
        nearest, rtt = nearest_pops(topology, pops, request.region)
        if not nearest:
            raise UnavailableError("no healthy PoP")
        self.node.route_counter += 1
        chosen = pick(nearest, request.client_id, self.node.route_counter)
        return pb.RouteResponse(
            name=chosen.name,
            grpc_address=chosen.grpc_address,
            http_address=chosen.http_address,
            region=chosen.region,
            rtt_ms=rtt,
        )

    @rpc()
    async def GetTopology(
        self, request: pb.GetTopologyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Topology:
        return self.node.topology_message()

    @rpc(internal=True)
    async def WatchTopology(
        self, request: pb.GetTopologyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Topology]:
        changed = self.node.topology_changed
        while not self.node.closing:
            sent_version = self.node.topology_version
            yield self.node.topology_message()

            def moved(version: int = sent_version) -> bool:
                return self.node.topology_version != version or self.node.closing

            async with changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        changed.wait_for(moved), ticks.until_next_tick(WATCH_REFRESH_S)
                    )

    # -- faults ----------------------------------------------------------------------------

    @rpc(internal=True)
    async def SetLinkFault(
        self, request: pb.SetLinkFaultRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetLinkFaultResponse:
        changes: dict[str, float | bool] = {
            field: getattr(request, field)
            for field in ("delay_ms", "jitter_ms", "loss", "partitioned")
            if request.HasField(field)
        }
        if not 0 <= request.duration_s <= FAULT_DURATION_S_MAX:
            raise InvalidArgumentError(
                f"duration_s must be within 0..{FAULT_DURATION_S_MAX:g} (got {request.duration_s})"
            )
        regions = [region.name for region in self.node.config.topology.regions]
        try:
            validate(LinkFault(request.from_region, request.to_region, **changes), regions)  # type: ignore[arg-type]
        except FaultError as error:
            raise InvalidArgumentError(str(error)) from error
        self.node.faults.set(
            request.from_region,
            request.to_region,
            now=time.time(),
            one_way=request.one_way,
            duration_s=request.duration_s,
            **changes,
        )
        await self.node.faults_changed()
        return pb.SetLinkFaultResponse(faults=[fault_to_pb(f) for f in self.node.faults.all()])

    @rpc(internal=True)
    async def ClearFaults(
        self, request: pb.ClearFaultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearFaultsResponse:
        if bool(request.from_region) != bool(request.to_region):
            raise InvalidArgumentError("give both regions of the pair, or neither to clear all")
        topology = self.node.config.topology
        for region in (request.from_region, request.to_region):
            if region and not topology.has_region(region):
                raise InvalidArgumentError(f"unknown region {region!r}")
        self.node.faults.clear(request.from_region, request.to_region, request.one_way)
        await self.node.faults_changed()
        return pb.ClearFaultsResponse(faults=[fault_to_pb(f) for f in self.node.faults.all()])

    # -- Durable Object placement ------------------------------------------------------------

    @rpc(internal=True)
    async def LocateObject(
        self, request: objects_pb2.LocateObjectRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.LocateObjectResponse:
        objectid.id_from_string(request.namespace, request.id)
        topology = self.node.config.topology
        region = request.location_hint or request.region
        if not topology.has_region(region):
            raise InvalidArgumentError(f"unknown region {region!r}")
        placed = await self.node.locate(request.namespace, request.id, region)
        if placed is None:
            raise UnavailableError("no healthy PoP to place the object on")
        if request.unreachable_standby and request.requester == placed.owner:
            await self.node.replace_standby(
                request.namespace, request.id, request.unreachable_standby
            )
            placed = self.node.placements[(request.namespace, request.id)]
        located = self._located(placed)
        located.unavailable = self.node.unavailable_reason(placed)
        return located

    @rpc(internal=True)
    async def ConfirmStandby(
        self, request: objects_pb2.ConfirmStandbyRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.LocateObjectResponse:
        objectid.id_from_string(request.namespace, request.id)
        confirmed = await self.node.confirm_standby(
            request.namespace,
            request.id,
            owner=request.owner,
            epoch=request.epoch,
            standby=request.standby,
            seq=request.seq,
        )
        return self._located(confirmed)

    def _located(self, placed: Placement) -> objects_pb2.LocateObjectResponse:
        registry = self.node.registry

        def address(name: str) -> str:
            entry = registry.get(name) if name else None
            return entry.grpc_address if entry is not None else ""

        owner = registry.get(placed.owner)
        return objects_pb2.LocateObjectResponse(
            node=placed.owner,
            grpc_address=address(placed.owner),
            epoch=placed.epoch,
            standby=placed.standby,
            standby_address=address(placed.standby),
            region=owner.region if owner else "",
            next_standby=placed.next_standby,
            next_standby_address=address(placed.next_standby),
            synced_seq=placed.synced_seq,
        )

    @rpc(internal=True)
    async def ListPlacements(
        self, request: objects_pb2.ListPlacementsRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.ListPlacementsResponse:
        return objects_pb2.ListPlacementsResponse(
            placements=[placement_to_pb(p) for p in self.node.placements.values()]
        )

    # -- workers -----------------------------------------------------------------------------

    @rpc(internal=True)
    async def Deploy(
        self, request: workers_pb2.DeployRequest, context: grpc.aio.ServicerContext
    ) -> workers_pb2.DeployResponse:
        if request.rollback:
            if not request.name:
                raise InvalidArgumentError("rollback needs the worker's name")
            version = await self.node.rollback(request.name)
            return workers_pb2.DeployResponse(name=request.name, version=version, changed=True)
        try:
            name, version, changed = await self.node.deploy(request.bundle)
        except BundleError as error:
            raise InvalidArgumentError(str(error)) from error
        return workers_pb2.DeployResponse(name=name, version=version, changed=changed)

    @rpc()
    async def ListWorkers(
        self, request: workers_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> workers_pb2.ListWorkersResponse:
        versions = []
        for (name, version), record in self.node.worker_versions.items():
            listed = workers_pb2.WorkerVersion()
            listed.CopyFrom(record)
            listed.active = self.node.active_worker(name) == version
            versions.append(listed)
        versions.sort(key=lambda v: (v.name, -v.deployed_at))
        return workers_pb2.ListWorkersResponse(versions=versions)

    @rpc(internal=True)
    async def GetWorkerBundle(
        self, request: workers_pb2.GetWorkerBundleRequest, context: grpc.aio.ServicerContext
    ) -> workers_pb2.GetWorkerBundleResponse:
        assert self.node.state is not None
        bundle = self.node.state.load_worker_bundle(request.name, request.version)
        if bundle is None:
            raise NotFoundError(f"no version {request.version[:12]} of worker {request.name!r}")
        return workers_pb2.GetWorkerBundleResponse(bundle=bundle)
