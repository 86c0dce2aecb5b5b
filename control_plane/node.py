"""The control plane process: node registry with leases, topology, routing."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import grpc

from control_plane import placement as placement_rules
from control_plane.crons import CRON_CHECK_S_MAX, CronRun, next_runs, pick_pop
from control_plane.placement import ConfirmRefusedError, Placement
from control_plane.registry import (
    NODE_LEASE_S_DEFAULT,
    ROLE_POP,
    LeaseClock,
    NodeEntry,
    NodeRegistry,
)
from control_plane.service import ControlPlaneService
from control_plane.state import ControlPlaneState, entry_to_pb
from edge.v1 import control_plane_pb2 as pb
from edge.v1 import control_plane_pb2_grpc as pb_grpc
from edge.v1 import objects_pb2, workers_pb2
from edgepop import buggify, ticks
from edgepop.bundle import bundle_version, check_bundle
from edgepop.config import HEARTBEAT_INTERVAL_S_DEFAULT, NodeConfig
from edgepop.errors import FailedPreconditionError
from edgepop.faults import FaultTable, fault_to_pb
from edgepop.http import origin_session
from edgepop.lifecycle import Node
from edgepop.metrics import ControlPlaneMetrics
from edgepop.storage import Storage
from edgepop.tls import process_tls
from edgepop.topology import topology_to_pb

log = logging.getLogger(__name__)

# How often lease expiry is checked (a dead node shows unhealthy within lease + this).
HEALTH_CHECK_INTERVAL_S = 0.2
# Upper bound between looks at fault expiry times (new faults may expire sooner).
FAULT_EXPIRY_CHECK_S = 0.5
# Objects move only this long after their owner's lease lapsed: the owner has stopped by
# then (its own lease clock started earlier, at the heartbeat's send time).
OBJECT_FAILOVER_MARGIN_S = 0.5
# Objects named to an owner per heartbeat for a standby copy (the rest follow next time).
OBJECTS_TO_SYNC_PER_HEARTBEAT_MAX = 64
# A cron run found this late (the loop was busy) still fires; later ones are skipped.
CRON_LATE_S_MAX = 5.0
CRON_CALL_TIMEOUT_S = 60.0


@dataclass
class ControlPlaneConfig(NodeConfig):
    lease_s: float = NODE_LEASE_S_DEFAULT
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S_DEFAULT


class ControlPlane(Node):
    role = "control_plane"
    metrics_class = ControlPlaneMetrics
    config: ControlPlaneConfig
    metrics: ControlPlaneMetrics

    def __init__(
        self, config: ControlPlaneConfig, lease_clock: Callable[[], float] | None = None
    ) -> None:
        """`lease_clock` times leases (by default a `LeaseClock`: monotonic, so a
        wall-clock step must not expire or extend every lease at once, and blind to this
        process's own stalls; a test may pass its own). Faults and deploys carry
        wall-clock times, which users and other nodes read."""
        super().__init__(config)
        self.lease_clock = lease_clock if lease_clock is not None else LeaseClock()
        self.registry = NodeRegistry(config.lease_s)
        self.topology_version = 1
        self.topology_changed = asyncio.Condition()
        self.route_counter = 0
        self.closing = False
        self._healthy: frozenset[str] = frozenset()
        self.storage: Storage | None = None
        self.state: ControlPlaneState | None = None
        self._static_topology: pb.Topology | None = None

    def open_storage(self) -> None:
        self.storage = Storage(self.storage_dir, self.config.map_size_bytes)
        self.state = ControlPlaneState(self.storage)
        self.registry.restore(self.state.load_nodes(), self.lease_clock())
        self.faults = FaultTable(self.state.load_faults())
        self.netem.set_faults(self.faults.all())
        self.placements: dict[tuple[str, str], Placement] = {}
        # owner -> objects it owns that have a next standby to copy to and confirm.
        self.objects_to_sync: dict[str, set[tuple[str, str]]] = {}
        for loaded in self.state.load_placements():
            self._remember_placement(loaded)
        self.placement_lock = asyncio.Lock()
        self.promote_unsynced = buggify.enabled(buggify.PROMOTE_UNSYNCED)
        if self.promote_unsynced:
            log.warning("BUGGIFY %s: objects move to unconfirmed standbys", "promote-unsynced")
        self.worker_versions = {(v.name, v.version): v for v in self.state.load_worker_versions()}
        # name -> versions in the order they were made active; the last one is active.
        self.worker_history = self.state.load_worker_history()
        self.deploy_lock = asyncio.Lock()
        # (worker, version) -> its cron schedules; set when a deploy changes them.
        self._crons: dict[tuple[str, str], tuple[str, ...]] = {}
        self._crons_changed = asyncio.Event()

    def add_services(self, server: grpc.aio.Server) -> list[str]:
        pb_grpc.add_ControlPlaneServicer_to_server(ControlPlaneService(self), server)
        return [pb.DESCRIPTOR.services_by_name["ControlPlane"].full_name]

    async def on_serving(self) -> None:
        self.self_entry = NodeEntry(
            name=self.name,
            region=self.region,
            role=self.role,
            grpc_address=self.grpc_address,
            metrics_address=self.metrics_address,
            pid=os.getpid(),
        )
        for (from_region, to_region), rtt_ms in self.config.topology.rtt_matrix().items():
            self.metrics.net_matrix_delay.labels(
                self.name, self.region, from_region, to_region
            ).set(rtt_ms / 2000)
        self._healthy = self.registry.healthy_names(self.lease_clock())
        self.spawn(self._watch_health(), "watch-health")
        self.spawn(self._expire_faults(), "expire-faults")
        self.spawn(self._run_crons(), "cron-triggers")

    async def on_drain(self) -> None:
        # Topology watches never end on their own: end them now, so that stopping takes
        # milliseconds, not the grace period (a restart must stay shorter than a lease).
        self.closing = True
        async with self.topology_changed:
            self.topology_changed.notify_all()

    def close_storage(self) -> None:
        if self.storage is not None:
            self.storage.close()

    # -- state changes -------------------------------------------------------------------

    async def register(self, entry: NodeEntry) -> NodeEntry:
        assert self.state is not None
        registered = self.registry.register(entry, self.lease_clock())
        await self.state.save_node(registered)
        await self.bump_topology()
        return registered

    async def faults_changed(self) -> None:
        """Persist, apply here, and push the fault table to every node."""
        assert self.state is not None
        await self.state.save_faults(self.faults.all())
        self.netem.set_faults(self.faults.all())
        await self.bump_topology()

    async def _expire_faults(self) -> None:
        """Heal `--for` faults on time (nodes also ignore expired faults on their own)."""
        while True:
            next_expiry = self.faults.next_expiry()
            wait = ticks.until_next_tick(FAULT_EXPIRY_CHECK_S)
            if next_expiry:
                wait = min(wait, max(0.0, next_expiry - time.time()))
            await asyncio.sleep(wait)
            if self.faults.expire(time.time()):
                await self.faults_changed()

    # -- Durable Object placement ----------------------------------------------------------

    def healthy_pops(self, now: float) -> list[NodeEntry]:
        return [
            entry
            for entry in self.registry.entries()
            if entry.role == ROLE_POP and self.registry.is_healthy(entry, now)
        ]

    def _remember_placement(self, placement: Placement) -> None:
        """Record a placement in memory (after it is stored) and in the sync index."""
        key = (placement.namespace, placement.object_id)
        previous = self.placements.get(key)
        if previous is not None:
            # One owner per epoch: the owner changes only with a higher epoch.
            assert placement.epoch >= previous.epoch, (previous, placement)
            assert placement.owner == previous.owner or placement.epoch > previous.epoch
            self.objects_to_sync.get(previous.owner, set()).discard(key)
        self.placements[key] = placement
        if placement.next_standby:
            self.objects_to_sync.setdefault(placement.owner, set()).add(key)

    async def _store_placements(self, placements: list[Placement]) -> None:
        """Durably, then in memory: no answer may rest on a placement a crash forgets."""
        assert self.state is not None
        await self.state.save_placements(placements)
        for placement in placements:
            self._remember_placement(placement)

    def objects_to_sync_for(self, owner: str) -> list[objects_pb2.ObjectRef]:
        """Objects `owner` must give its next standby a copy of (bounded per heartbeat)."""
        keys = self.objects_to_sync.get(owner)
        if not keys:
            return []
        refs = []
        for namespace, object_id in sorted(keys)[:OBJECTS_TO_SYNC_PER_HEARTBEAT_MAX]:
            placement = self.placements[(namespace, object_id)]
            refs.append(
                objects_pb2.ObjectRef(
                    namespace=namespace,
                    id=object_id,
                    epoch=placement.epoch,
                    next_standby=placement.next_standby,
                )
            )
        return refs

    async def locate(self, namespace: str, object_id: str, region: str) -> Placement | None:
        """The object's placement, placing it near `region` on first use (durably)."""
        key = (namespace, object_id)
        existing = self.placements.get(key)
        if existing is not None:
            return existing
        async with self.placement_lock:
            existing = self.placements.get(key)
            if existing is not None:
                return existing
            placed = placement_rules.place(
                self.config.topology,
                self.healthy_pops(self.lease_clock()),
                namespace,
                object_id,
                region,
            )
            if placed is None:
                return None
            await self._store_placements([placed])
            return placed

    def unavailable_reason(self, placement: Placement) -> str:
        """Why the object cannot be served now ("" when its owner is healthy)."""
        owner = self.registry.get(placement.owner)
        now = self.lease_clock()
        if owner is not None and self.registry.is_healthy(owner, now):
            return ""
        standby = self.registry.get(placement.standby) if placement.standby else None
        if standby is not None and self.registry.is_healthy(standby, now):
            return (
                f"the object's owner {placement.owner} is not responding; the object moves"
                f" to its standby {placement.standby} once the owner's lease has lapsed"
            )
        holders = f" and its standby {placement.standby} are" if placement.standby else " is"
        return (
            f"the object is unavailable: its owner {placement.owner}{holders} the only"
            " node(s) known to hold every acknowledged write, and none is responding; it is"
            " served again when one of them returns"
        )

    async def replace_standby(self, namespace: str, object_id: str, unreachable: str) -> None:
        async with self.placement_lock:
            current = self.placements.get((namespace, object_id))
            if current is None:
                return
            repaired = placement_rules.replace_standby(
                self.config.topology, current, self.healthy_pops(self.lease_clock()), unreachable
            )
            if repaired != current:
                await self._store_placements([repaired])
                log.info(
                    "next standby of %s/%s: %s (%s unreachable from the owner)",
                    namespace,
                    object_id[:12],
                    repaired.next_standby or "-",
                    unreachable,
                )

    async def confirm_standby(
        self, namespace: str, object_id: str, *, owner: str, epoch: int, standby: str, seq: int
    ) -> Placement:
        """The owner's next standby holds a full copy: make it the standby (durably)."""
        async with self.placement_lock:
            current = self.placements.get((namespace, object_id))
            if current is None:
                raise FailedPreconditionError("the object has no placement")
            try:
                confirmed = placement_rules.confirm_standby(
                    current, owner=owner, epoch=epoch, standby=standby, seq=seq
                )
            except ConfirmRefusedError as error:
                raise FailedPreconditionError(f"standby not confirmed: {error}") from error
            await self._store_placements([confirmed])
        log.info(
            "standby of %s/%s: %s (confirmed by %s at epoch %d, seq %d)",
            namespace,
            object_id[:12],
            standby,
            owner,
            epoch,
            seq,
        )
        return confirmed

    async def _repair_placements(self, now: float) -> None:
        """Move objects off owners gone for lease + margin (to a node holding every
        acknowledged write, or nowhere); name next standbys for gone standbys."""
        gone = frozenset(
            entry.name
            for entry in self.registry.entries()
            if entry.role == ROLE_POP
            and now - entry.last_heartbeat >= self.config.lease_s + OBJECT_FAILOVER_MARGIN_S
        )
        pop_count = sum(1 for entry in self.registry.entries() if entry.role == ROLE_POP)
        suspects = [
            current
            for current in self.placements.values()
            if placement_rules.needs_repair(current, gone, pop_count)
        ]
        if not suspects:
            return
        healthy = self.healthy_pops(now)
        async with self.placement_lock:
            changed = []
            for current in suspects:
                # Re-read under the lock: a confirmation may have landed meanwhile.
                latest = self.placements[(current.namespace, current.object_id)]
                repaired = placement_rules.repair(
                    self.config.topology,
                    latest,
                    healthy,
                    gone,
                    promote_unsynced=self.promote_unsynced,
                )
                if repaired != latest:
                    changed.append((latest, repaired))
            if not changed:
                return
            await self._store_placements([repaired for _, repaired in changed])
        moved = 0
        for previous, repaired in changed:
            if repaired.owner != previous.owner:
                moved += 1
                self.metrics.do_failovers.inc()
                log.info(
                    "%s/%s moved %s -> %s (epoch %d)",
                    repaired.namespace,
                    repaired.object_id[:12],
                    previous.owner,
                    repaired.owner,
                    repaired.epoch,
                )
        log.info("repaired %d placement(s), %d moved; gone: %s", len(changed), moved, sorted(gone))

    async def bump_topology(self) -> None:
        async with self.topology_changed:
            self.topology_version += 1
            self.topology_changed.notify_all()

    async def _watch_health(self) -> None:
        """Bump the topology version whenever a lease lapses or comes back."""
        while True:
            await ticks.sleep_to_next_tick(HEALTH_CHECK_INTERVAL_S)
            now = self.lease_clock()
            healthy = self.registry.healthy_names(now)
            if healthy != self._healthy:
                self._healthy = healthy
                await self.bump_topology()
            self._export_health_metrics(healthy)
            await self._repair_placements(now)

    def _export_health_metrics(self, healthy: frozenset[str]) -> None:
        total = len(self.registry.entries())
        self.metrics.cp_nodes.labels(self.name, self.region, "true").set(len(healthy))
        self.metrics.cp_nodes.labels(self.name, self.region, "false").set(total - len(healthy))

    # -- views ---------------------------------------------------------------------------

    def node_infos(self) -> list[pb.NodeInfo]:
        now = self.lease_clock()
        infos = [entry_to_pb(self.self_entry, healthy=True)]
        for entry in self.registry.entries():
            if entry.name == self.name:
                continue
            infos.append(
                entry_to_pb(
                    entry,
                    healthy=self.registry.is_healthy(entry, now),
                    age_s=max(0.0, now - entry.last_heartbeat),
                )
            )
        return infos

    def topology_message(self) -> pb.Topology:
        # Regions and the RTT matrix never change while the process runs, and the matrix
        # costs a great-circle per region pair: built once, copied into every push (each
        # watcher gets one at every change and every WATCH_REFRESH_S).
        if self._static_topology is None:
            self._static_topology = topology_to_pb(self.config.topology)
        message = pb.Topology()
        message.CopyFrom(self._static_topology)
        message.version = self.topology_version
        message.nodes.extend(self.node_infos())
        message.faults.extend(fault_to_pb(fault) for fault in self.faults.all())
        message.workers.extend(
            workers_pb2.ActiveWorker(name=name, version=history[-1])
            for name, history in sorted(self.worker_history.items())
            if history
        )
        return message

    # -- workers ---------------------------------------------------------------------------

    def active_worker(self, name: str) -> str:
        history = self.worker_history.get(name)
        return history[-1] if history else ""

    async def deploy(self, bundle: workers_pb2.WorkerBundle) -> tuple[str, str, bool]:
        """Store a bundle's version and make it active; (name, version, changed)."""
        assert self.state is not None
        config = check_bundle(bundle)
        version = bundle_version(bundle)
        async with self.deploy_lock:
            if self.active_worker(config.name) == version:
                return config.name, version, False
            known = self.worker_versions.get((config.name, version))
            record = known or workers_pb2.WorkerVersion(
                name=config.name,
                version=version,
                deployed_at=time.time(),
                routes=list(config.route_patterns),
            )
            history = [*self.worker_history.get(config.name, []), version]
            await self.state.save_worker(record, None if known else bundle, history)
            self.worker_versions[(config.name, version)] = record
            self.worker_history[config.name] = history
        self._crons_changed.set()
        await self.bump_topology()
        log.info("deployed worker %s version %s", config.name, version[:12])
        return config.name, version, True

    async def rollback(self, name: str) -> str:
        """Make the previously active version active again; returns it."""
        assert self.state is not None
        async with self.deploy_lock:
            history = self.worker_history.get(name, [])
            if len(history) < 2:
                raise FailedPreconditionError(f"worker {name!r} has no earlier version")
            history = history[:-1]
            record = self.worker_versions[(name, history[-1])]
            await self.state.save_worker(record, None, history)
            self.worker_history[name] = history
        self._crons_changed.set()
        await self.bump_topology()
        log.info("rolled worker %s back to %s", name, history[-1][:12])
        return history[-1]

    # -- cron triggers (control_plane.crons) ---------------------------------------------

    def _cron_schedules(self) -> dict[str, tuple[str, ...]]:
        """worker -> the cron schedules of its active version."""
        assert self.state is not None
        schedules = {}
        for name in self.worker_history:
            version = self.active_worker(name)
            key = (name, version)
            if key not in self._crons:
                bundle = self.state.load_worker_bundle(name, version)
                self._crons[key] = check_bundle(bundle).crons if bundle is not None else ()
            if self._crons[key]:
                schedules[name] = self._crons[key]
        return schedules

    async def _run_crons(self) -> None:
        """Fire each due cron trigger at one healthy PoP (its `/__scheduled`)."""
        session = origin_session(connections_max=16)
        last_fired = datetime.datetime.now(datetime.UTC)
        try:
            while True:
                self._crons_changed.clear()
                now = datetime.datetime.now(datetime.UTC)
                after = max(last_fired, now - datetime.timedelta(seconds=CRON_LATE_S_MAX))
                at, due = next_runs(self._cron_schedules(), after)
                wait_s = CRON_CHECK_S_MAX if at is None else (at - now).total_seconds()
                if wait_s > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._crons_changed.wait(), min(wait_s, CRON_CHECK_S_MAX)
                        )
                    continue  # look again: the time came, or the schedules changed
                for run in due:
                    self.spawn(self._fire_cron(session, run), f"cron-{run.worker}")
                last_fired = at or now
        finally:
            await session.close()

    async def _fire_cron(self, session: aiohttp.ClientSession, run: CronRun) -> None:
        pops = {entry.name: entry for entry in self.healthy_pops(self.lease_clock())}
        chosen = pick_pop(run, list(pops))
        if chosen is None:
            log.warning("cron %r of %s: no healthy PoP to run it", run.cron, run.worker)
            return
        scheme = "https" if process_tls() is not None else "http"
        url = f"{scheme}://{pops[chosen].http_address}/__scheduled"
        try:
            async with session.post(
                url,
                params={"cron": run.cron, "time": str(int(run.at.timestamp() * 1000))},
                headers={
                    "Host": f"{run.worker}.workers.dev",
                    "Authorization": f"Bearer {self.token}",
                },
                timeout=aiohttp.ClientTimeout(total=CRON_CALL_TIMEOUT_S),
            ) as reply:
                text = (await reply.text()).strip()
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("cron %r of %s at %s failed: %r", run.cron, run.worker, chosen, error)
            return
        log.info("cron %r of %s at %s: %s %s", run.cron, run.worker, chosen, reply.status, text)
