"""The control plane's durable state in LMDB: registrations, faults, placements, workers.

Heartbeats are not persisted (they are frequent and a restart grants a lease of grace).
"""

from __future__ import annotations

import json
from typing import Any

from control_plane.placement import Placement
from control_plane.registry import NodeEntry
from edge.v1 import control_plane_pb2 as pb
from edge.v1 import objects_pb2, workers_pb2
from edgepop.faults import LinkFault, fault_from_pb, fault_to_pb
from edgepop.storage import Storage

ROLE_TO_PB = {
    "control_plane": pb.ROLE_CONTROL_PLANE,
    "origin": pb.ROLE_ORIGIN,
    "pop": pb.ROLE_POP,
}
ROLE_FROM_PB = {value: key for key, value in ROLE_TO_PB.items()}


def entry_to_pb(entry: NodeEntry, healthy: bool = False, age_s: float = 0.0) -> pb.NodeInfo:
    return pb.NodeInfo(
        name=entry.name,
        region=entry.region,
        role=ROLE_TO_PB[entry.role],
        grpc_address=entry.grpc_address,
        http_address=entry.http_address,
        metrics_address=entry.metrics_address,
        healthy=healthy,
        pid=entry.pid,
        incarnation=entry.incarnation,
        last_heartbeat_age_s=age_s,
    )


def entry_from_pb(info: pb.NodeInfo) -> NodeEntry:
    return NodeEntry(
        name=info.name,
        region=info.region,
        role=ROLE_FROM_PB.get(info.role, ""),
        grpc_address=info.grpc_address,
        http_address=info.http_address,
        metrics_address=info.metrics_address,
        pid=info.pid,
        incarnation=info.incarnation,
    )


class ControlPlaneState:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.nodes_db = storage.db("cp_nodes")
        self.faults_db = storage.db("cp_faults")
        self.placements_db = storage.db("cp_placements")
        self.worker_bundles_db = storage.db("cp_worker_bundles")
        self.worker_versions_db = storage.db("cp_worker_versions")
        self.worker_history_db = storage.db("cp_worker_history")

    def load_nodes(self) -> list[NodeEntry]:
        with self.storage.read() as txn:
            return [
                entry_from_pb(pb.NodeInfo.FromString(raw))
                for _, raw in txn.cursor(db=self.nodes_db)
            ]

    async def save_node(self, entry: NodeEntry) -> None:
        raw = entry_to_pb(entry).SerializeToString()

        def work(txn: Any) -> None:
            txn.put(entry.name.encode(), raw, db=self.nodes_db)

        await self.storage.write(work)

    def load_faults(self) -> list[LinkFault]:
        with self.storage.read() as txn:
            return [
                fault_from_pb(pb.LinkFault.FromString(raw))
                for _, raw in txn.cursor(db=self.faults_db)
            ]

    async def save_faults(self, faults: list[LinkFault]) -> None:
        """Replace the stored faults with `faults` (one transaction)."""
        rows = [
            (f"{f.from_region}>{f.to_region}".encode(), fault_to_pb(f).SerializeToString())
            for f in faults
        ]

        def work(txn: Any) -> None:
            txn.drop(self.faults_db, delete=False)
            for key, raw in rows:
                txn.put(key, raw, db=self.faults_db)

        await self.storage.write(work)

    def load_placements(self) -> list[Placement]:
        with self.storage.read() as txn:
            found = []
            for _, raw in txn.cursor(db=self.placements_db):
                message = objects_pb2.Placement.FromString(raw)
                found.append(placement_from_pb(message))
            return found

    async def save_placements(self, placements: list[Placement]) -> None:
        rows = [
            (
                f"{p.namespace}/{p.object_id}".encode(),
                placement_to_pb(p).SerializeToString(),
            )
            for p in placements
        ]

        def work(txn: Any) -> None:
            for key, raw in rows:
                txn.put(key, raw, db=self.placements_db)

        await self.storage.write(work)

    # -- workers ---------------------------------------------------------------------------

    def load_worker_versions(self) -> list[workers_pb2.WorkerVersion]:
        with self.storage.read() as txn:
            return [
                workers_pb2.WorkerVersion.FromString(raw)
                for _, raw in txn.cursor(db=self.worker_versions_db)
            ]

    def load_worker_history(self) -> dict[str, list[str]]:
        with self.storage.read() as txn:
            return {
                key.decode(): json.loads(raw) for key, raw in txn.cursor(db=self.worker_history_db)
            }

    def load_worker_bundle(self, name: str, version: str) -> workers_pb2.WorkerBundle | None:
        with self.storage.read() as txn:
            raw = txn.get(f"{name}/{version}".encode(), db=self.worker_bundles_db)
        return None if raw is None else workers_pb2.WorkerBundle.FromString(raw)

    async def save_worker(
        self,
        version: workers_pb2.WorkerVersion,
        bundle: workers_pb2.WorkerBundle | None,
        history: list[str],
    ) -> None:
        """Store a version (its bundle once) and the worker's activation history."""
        key = f"{version.name}/{version.version}".encode()
        version_raw = version.SerializeToString()
        bundle_raw = bundle.SerializeToString() if bundle is not None else None
        history_raw = json.dumps(history).encode()

        def work(txn: Any) -> None:
            if bundle_raw is not None:
                txn.put(key, bundle_raw, db=self.worker_bundles_db, overwrite=False)
            txn.put(key, version_raw, db=self.worker_versions_db)
            txn.put(version.name.encode(), history_raw, db=self.worker_history_db)

        await self.storage.write(work)


def placement_to_pb(placement: Placement) -> objects_pb2.Placement:
    return objects_pb2.Placement(
        namespace=placement.namespace,
        id=placement.object_id,
        owner=placement.owner,
        standby=placement.standby,
        epoch=placement.epoch,
        next_standby=placement.next_standby,
        synced_seq=placement.synced_seq,
    )


def placement_from_pb(message: objects_pb2.Placement) -> Placement:
    return Placement(
        namespace=message.namespace,
        object_id=message.id,
        owner=message.owner,
        standby=message.standby,
        epoch=message.epoch,
        next_standby=message.next_standby,
        synced_seq=message.synced_seq,
    )
