"""The PoP process: a local KV replica fed by the origin's stream, and the edge API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc

from edge.v1 import control_plane_pb2, control_plane_pb2_grpc, origin_pb2_grpc, pop_pb2
from edge.v1 import pop_pb2_grpc as pb_grpc
from edgepop import ticks
from edgepop.config import NodeConfig
from edgepop.errors import StorageIOError
from edgepop.http import start_site
from edgepop.kvstore import KvStore, Record
from edgepop.lease import Lease
from edgepop.lifecycle import Node
from edgepop.metrics import PopMetrics
from edgepop.rpc import channel, node_metadata
from edgepop.storage import Storage
from edgepop.topology import Topology
from pop_node.kv import KvFrontend
from pop_node.objects.builtin import BUILTIN_CLASSES, BUILTIN_SQLITE_CLASSES
from pop_node.objects.host import ObjectHost
from pop_node.objects.router import ObjectRouter
from pop_node.overlay import Overlay
from pop_node.replication import STREAM_IDLE_TIMEOUT_S_DEFAULT, ReplicationClient
from pop_node.service import PopService
from pop_node.sql import SqlReplicas
from pop_node.workers.ingress import build_server as build_ingress
from pop_node.workers.runtime import FIRST_LOAD_WAIT_S_MAX, WorkerRuntime

log = logging.getLogger(__name__)

REPLICA_FLUSH_INTERVAL_S = 1.0


@dataclass
class PopConfig(NodeConfig):
    # Known at start from the launcher; later taken from the control plane's topology.
    origin_address: str = ""
    stream_idle_timeout_s: float = STREAM_IDLE_TIMEOUT_S_DEFAULT


class PopNode(Node):
    role = "pop"
    registry_role = control_plane_pb2.ROLE_POP
    metrics_class = PopMetrics
    config: PopConfig
    metrics: PopMetrics
    # Built in open_storage; each takes the part of the PoP it uses (a Protocol of its own).
    kv: KvFrontend
    sql: SqlReplicas
    workers: WorkerRuntime

    def __init__(self, config: PopConfig) -> None:
        super().__init__(config)
        self.origin_address = config.origin_address
        self.overlay = Overlay()
        self._origin_channel: grpc.aio.Channel | None = None
        self._origin_channel_address = ""
        self._control_plane_channel: grpc.aio.Channel | None = None

    def open_storage(self) -> None:
        # The replica is the origin's data again: commits skip fsync, a flush every second
        # bounds what an OS crash could take (see edgepop.storage.Storage). One that was
        # open when the machine stopped may be torn: Storage discards it, and it is rebuilt
        # from the origin.
        self.storage = Storage(self.storage_dir, self.config.map_size_bytes, durable=False)
        if self.storage.discarded_because:
            self.metrics.kv_replica_rebuilds.inc()
            log.warning(
                "KV replica may be torn (%s): discarded, rebuilding from the origin",
                self.storage.discarded_because,
            )
        self.store = KvStore(self.storage, track_expiry=False)
        self.node_metadata = node_metadata(self.name, self.region)
        # SQL replicas: rebuilt with the KV replica when that was discarded.
        self.sql = SqlReplicas(self, self.config.data_dir / "sql")
        if self.storage.discarded_because:
            self.sql.reset()
        self.replication = ReplicationClient(
            node=self.name,
            storage=self.storage,
            store=self.store,
            metrics=self.metrics,
            origin_address=lambda: self.origin_address,
            metadata=node_metadata(self.name, self.region, self.token),
            on_applied=self._on_applied,
            idle_timeout_s=self.config.stream_idle_timeout_s,
            rebuild=bool(self.storage.discarded_because),
            on_entries=self.sql.apply_entries,
            snapshot_sink=self.sql.snapshot,
        )

        # Durable Objects live in their own environment, fsynced on every commit.
        self.objects_storage = Storage(self.config.data_dir / "objects", self.config.map_size_bytes)
        internal = node_metadata(self.name, self.region, self.token)
        self.objects = ObjectHost(
            node_name=self.name,
            region=self.region,
            storage=self.objects_storage,
            metrics=self.metrics,
            classes=BUILTIN_CLASSES,
            sqlite_namespaces=BUILTIN_SQLITE_CLASSES,
            env=None,
            lease=self._lease,
            control_plane=self.control_plane_stub,
            internal_metadata=internal,
            hibernate_after_s=self.config.topology.hibernate_after_s,
            evict_idle_after_s=self.config.topology.evict_idle_after_s,
        )
        self.router = ObjectRouter(self.objects, self.name, self.region, self.token)
        self.kv = KvFrontend(self, self.config.topology.kv_cached_namespaces)
        self.internal_metadata = internal
        self.origin_http_address = ""
        self.workers = WorkerRuntime(self)

    def _lease(self) -> Lease | None:
        if not self.config.control_plane_address:
            return None
        if self.membership is None:
            return Lease()
        return self.membership.lease

    def control_plane_stub(self) -> control_plane_pb2_grpc.ControlPlaneStub | None:
        if not self.config.control_plane_address:
            return None
        if self._control_plane_channel is None:
            self._control_plane_channel = channel(self.config.control_plane_address)
            self._cp_stub = control_plane_pb2_grpc.ControlPlaneStub(self._control_plane_channel)
        return self._cp_stub

    async def start_extra_servers(self) -> None:
        """HTTP ingress: requests for the workers, with the same emulated delay as gRPC."""
        self._http_runner, port = await start_site(
            build_ingress(self), self.config.host, self.config.http_port
        )
        self.http_address = f"{self.advertised_host}:{port}"

    async def stop_extra_servers(self) -> None:
        if getattr(self, "_http_runner", None) is not None:
            await self._http_runner.cleanup()

    def add_services(self, server: grpc.aio.Server) -> list[str]:
        pb_grpc.add_PopServicer_to_server(PopService(self), server)
        return [pop_pb2.DESCRIPTOR.services_by_name["Pop"].full_name]

    async def on_serving(self) -> None:
        self.spawn(self.replication.run(), "replication")
        self.spawn(self.objects.run(), "objects")
        self.spawn(self.workers.run(), "workers")
        self.spawn(self._flush_replica(), "replica-flush")

    async def before_serving(self) -> None:
        """SERVING means the workers of the current deployment are loaded too."""
        if self.config.control_plane_address:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.workers.ready.wait(), FIRST_LOAD_WAIT_S_MAX)

    async def on_drain(self) -> None:
        await self.workers.close()
        await self.objects.close()
        await self.replication.close()
        if self._control_plane_channel is not None:
            await self._control_plane_channel.close(grace=None)
        if self._origin_channel is not None:
            await self._origin_channel.close(grace=None)

    async def _flush_replica(self) -> None:
        """Sync the replica within a second of any commit (a flush with nothing new to
        sync returns at once: an idle PoP does not wake its writer thread)."""
        while True:
            await ticks.sleep_to_next_tick(REPLICA_FLUSH_INTERVAL_S)
            try:
                await self.storage.flush()
            except StorageIOError as error:
                # A disk that refuses now may take the next one (what was not synced is
                # synced then); the task must outlive it, not end at the first error.
                log.warning("replica flush failed, trying again next tick: %s", error)

    def close_storage(self) -> None:
        self.sql.close()
        self.objects_storage.close()
        self.storage.close()

    @property
    def topology(self) -> Topology:
        """The topology this PoP started with: its regions and their attributes."""
        return self.config.topology

    @property
    def origin(self) -> origin_pb2_grpc.OriginStub:
        """A stub for the current origin address (the channel follows address changes)."""
        if self._origin_channel is None or self._origin_channel_address != self.origin_address:
            self._origin_channel = channel(self.origin_address)
            self._origin_channel_address = self.origin_address
            self._origin_stub = origin_pb2_grpc.OriginStub(self._origin_channel)
        return self._origin_stub

    def remember_write(self, namespace: str, key: str, seq: int, record: Record | None) -> None:
        self.overlay.add(namespace, key, seq, record, self.replication.applied_seq)
        self.metrics.kv_overlay_entries.set(len(self.overlay))

    def _on_applied(self, applied_seq: int) -> None:
        self.overlay.drop_through(applied_seq)
        self.metrics.kv_overlay_entries.set(len(self.overlay))

    def on_heartbeat(self, response: control_plane_pb2.HeartbeatResponse) -> None:
        if response.objects_to_sync:
            self.objects.on_objects_to_sync(list(response.objects_to_sync))

    def on_topology(self, topology: control_plane_pb2.Topology) -> None:
        for info in topology.nodes:
            is_origin = info.role == control_plane_pb2.ROLE_ORIGIN and info.grpc_address
            if is_origin and info.grpc_address != self.origin_address:
                log.info("origin address is now %s", info.grpc_address)
                self.origin_address = info.grpc_address
            if is_origin and info.http_address:
                self.origin_http_address = info.http_address
        self.workers.on_topology(topology)
