"""The origin process: authoritative KV store, write log, replication stream, sweeper."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import grpc

from edge.v1 import control_plane_pb2, kv_pb2, origin_pb2
from edge.v1 import origin_pb2_grpc as pb_grpc
from edgepop import ticks
from edgepop.config import NodeConfig
from edgepop.http import start_site
from edgepop.kvstore import KvStore
from edgepop.lifecycle import Node
from edgepop.metrics import OriginMetrics
from edgepop.rpc import PreEncodedStreams
from edgepop.storage import Storage
from origin_node.app import SigningKeys, build_app
from origin_node.committer import Committer
from origin_node.service import OriginService
from origin_node.sql import SqlPrimaries
from origin_node.stream import STREAM_HEARTBEAT_INTERVAL_S_DEFAULT, HeadWatch, ReplicationStream
from origin_node.writelog import LOG_RETAIN_ENTRIES_DEFAULT, Change, WriteLog, WriteRequest

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S_DEFAULT = 1.0
SWEEP_KEYS_PER_ROUND_MAX = 1000


@dataclass
class OriginConfig(NodeConfig):
    log_retain_entries: int = LOG_RETAIN_ENTRIES_DEFAULT
    stream_heartbeat_interval_s: float = STREAM_HEARTBEAT_INTERVAL_S_DEFAULT
    sweep_interval_s: float = SWEEP_INTERVAL_S_DEFAULT


class OriginNode(Node):
    role = "origin"
    registry_role = control_plane_pb2.ROLE_ORIGIN
    metrics_class = OriginMetrics
    config: OriginConfig
    metrics: OriginMetrics

    def __init__(self, config: OriginConfig) -> None:
        super().__init__(config)
        self.subscribers = 0

    def open_storage(self) -> None:
        self.storage = Storage(self.storage_dir, self.config.map_size_bytes)
        self.store = KvStore(self.storage, track_expiry=True)
        self.log = WriteLog(self.store, self.config.log_retain_entries)
        with self.storage.read() as txn:
            head, first = self.log.positions(txn)
        self.head = HeadWatch(head)
        self._export_positions(head, first)
        self.committer = Committer(self.storage, self.log, self.metrics, self._on_commit)
        self.sql = SqlPrimaries(
            self.config.data_dir / "sql",
            self.storage,
            self.log,
            self.committer,
            self.name,
            self.region,
            self.config.topology.sql_database_bytes_max,
        )
        self.sql.recover()
        self.stream = ReplicationStream(
            self.store,
            self.log,
            self.head,
            self.config.stream_heartbeat_interval_s,
            sql_images=self.sql.images,
        )

    async def start_extra_servers(self) -> None:
        """The origin application (HTTP): what workers call, with the same emulated delay."""
        app = build_app(
            netem=self.netem,
            metrics=self.metrics,
            keys=SigningKeys(self.config.data_dir / "jwt-keys"),
            cluster_token=self.token,
        )
        self._http_runner, port = await start_site(app, self.config.host, self.config.http_port)
        self.http_address = f"{self.advertised_host}:{port}"

    async def stop_extra_servers(self) -> None:
        if getattr(self, "_http_runner", None) is not None:
            await self._http_runner.cleanup()

    def add_services(self, server: grpc.aio.Server) -> list[str]:
        pb_grpc.add_OriginServicer_to_server(
            OriginService(self),
            PreEncodedStreams(server, frozenset({"Subscribe"})),
        )
        return [origin_pb2.DESCRIPTOR.services_by_name["Origin"].full_name]

    async def on_serving(self) -> None:
        self.spawn(self.committer.run(), "committer")
        self.spawn(self._sweep_expired(), "sweeper")

    async def on_drain(self) -> None:
        self.head.close()  # replication streams end now, not after the grace period

    def close_storage(self) -> None:
        self.sql.close()
        self.storage.close()

    def _on_commit(self, head: int, first: int) -> None:
        self.head.advance(head)
        self._export_positions(head, first)

    def _export_positions(self, head: int, first: int) -> None:
        self.metrics.kv_origin_head_seq.set(head)
        self.metrics.kv_applied_seq.set(head)
        self.metrics.kv_log_first_seq.set(first)

    async def _sweep_expired(self) -> None:
        """Delete expired keys through the log, so every replica deletes them too."""
        while True:
            await ticks.sleep_to_next_tick(self.config.sweep_interval_s)
            with self.storage.read() as txn:
                expired = self.store.expired_keys(txn, time.time(), SWEEP_KEYS_PER_ROUND_MAX)
            by_namespace: dict[str, list[Change]] = {}
            for namespace, key in expired:
                by_namespace.setdefault(namespace, []).append(
                    Change(kv_pb2.LOG_OP_DELETE, key, only_if_expired=True)
                )
            for namespace, changes in by_namespace.items():
                done = await self.committer.submit(WriteRequest(namespace, changes))
                self.metrics.kv_expired_deletes.inc(len(done.entries))
