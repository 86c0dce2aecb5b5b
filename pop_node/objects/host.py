"""The Durable Objects a node owns: activation, eviction, standby copies, alarms.

Activation asks the control plane who owns the object (never a cache): only if it is
this node, at an epoch no older than storage has seen, does an instance start. The
epoch is recorded in storage first (so a deposed owner's late writes are refused) and
the standby is brought to the same commit (a full copy if it is behind) before the
first call runs: every acknowledged write is then on two nodes.

When this node's lease lapses, every instance stops at once (their sessions close) and
the next call activates again, asking the control plane afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from edge.v1 import control_plane_pb2_grpc, objects_pb2
from edgepop.durable import DurableObject, callable_methods
from edgepop.errors import (
    EdgeError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    UnimplementedError,
    from_upstream,
)
from edgepop.lease import Lease
from edgepop.metrics import NodeMetrics
from edgepop.rpc import channel
from edgepop.storage import Storage
from pop_node.objects.committer import ObjectCommitter
from pop_node.objects.instance import (
    REQUEST_PREFIX,
    InstanceBrokenError,
    ObjectInstance,
)
from pop_node.objects.store import ALARM_KEY, ObjectStore, StaleEpochError, decode_alarm, okey

log = logging.getLogger(__name__)

ARGS_BYTES_MAX = 1024 * 1024
LOCATE_TIMEOUT_S = 3.0
LEASE_CHECK_INTERVAL_S = 0.05
ALARM_SCAN_INTERVAL_S = 0.5
ALARM_RETRIES_MAX = 6
ALARM_RETRY_BASE_S = 0.5
NOT_MINE_RECHECK_S = 30.0


class NotOwnerError(EdgeError):
    """This node does not own the object (anymore); the caller should ask again."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    marker = "not the owner"

    def __init__(self, owner: str, epoch: int) -> None:
        super().__init__(f"{self.marker}: the owner is {owner or '(none)'} at epoch {epoch}")
        self.owner = owner
        self.epoch = epoch


def parse_args(args_json: str) -> tuple[list[Any], dict[str, Any]]:
    if len(args_json.encode()) > ARGS_BYTES_MAX:
        raise InvalidArgumentError(
            f"args_json is larger than {ARGS_BYTES_MAX} bytes (1 MiB, ARGS_BYTES_MAX)"
        )
    if not args_json:
        return [], {}
    try:
        args = json.loads(args_json)
    except ValueError as error:
        raise InvalidArgumentError(f"args_json is not JSON: {error}") from error
    if isinstance(args, list):
        return args, {}
    if isinstance(args, dict):
        return [], args
    return [args], {}


class ObjectHost:
    def __init__(
        self,
        *,
        node_name: str,
        region: str,
        storage: Storage,
        metrics: NodeMetrics,
        classes: dict[str, type[DurableObject]],
        env: Any,
        lease: Callable[[], Lease | None],
        control_plane: Callable[[], control_plane_pb2_grpc.ControlPlaneStub | None],
        internal_metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self.node_name = node_name
        self.region = region
        self.storage = storage
        self.store = ObjectStore(storage)
        self.metrics = metrics
        self.classes = dict(classes)
        self.env = env
        self._lease = lease
        self._control_plane = control_plane
        self.internal_metadata = internal_metadata
        self.instances: dict[bytes, ObjectInstance] = {}
        self._activating: dict[bytes, asyncio.Future[ObjectInstance]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.committer = ObjectCommitter(self)
        self._queue_depth = 0
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        metrics.do_queue_depth.set_function(lambda: self._queue_depth)
        # Objects with a due alarm that this node holds only as a standby copy.
        self._not_mine: dict[bytes, float] = {}

    # -- plumbing ------------------------------------------------------------------------

    def channel(self, address: str) -> grpc.aio.Channel:
        existing = self._channels.get(address)
        if existing is None:
            existing = self._channels[address] = channel(address)
        return existing

    def lease_generation(self) -> int:
        lease = self._lease()
        return lease.generation if lease is not None else 0

    def lease_current(self, generation: int) -> bool:
        lease = self._lease()
        if lease is None:  # no control plane configured: a one-node playground
            return True
        return lease.generation == generation and lease.valid(time.monotonic())

    def metrics_queue_depth(self, change: int) -> None:
        self._queue_depth += change  # read by the gauge at scrape time

    def _call_metrics(self, namespace: str, code: str) -> tuple[Any, Any]:
        """The labelled metric children of one (namespace, code), looked up once."""
        key = (namespace, code)
        children = self._metric_children.get(key)
        if children is None:
            metrics = self.metrics
            children = (
                metrics.do_calls.labels(metrics.node, metrics.region, namespace, code),
                metrics.do_call_duration.labels(metrics.node, metrics.region, namespace),
            )
            self._metric_children[key] = children
        return children

    def class_of(self, namespace: str) -> type[DurableObject]:
        cls = self.classes.get(namespace)
        if cls is None:
            raise NotFoundError(f"no Durable Object class is bound to namespace {namespace!r}")
        return cls

    async def run(self) -> None:
        """Background work: commits, lease watch, alarm scan."""
        await asyncio.gather(self.committer.run(), self._watch_lease(), self._scan_alarms())

    async def close(self) -> None:
        for instance in list(self.instances.values()):
            self.evict(instance, "node shutting down")
        for open_channel in self._channels.values():
            await open_channel.close(grace=None)

    # -- activation ----------------------------------------------------------------------

    async def locate(
        self,
        namespace: str,
        object_id: bytes,
        region: str,
        location_hint: str = "",
        unreachable_standby: str = "",
    ) -> objects_pb2.LocateObjectResponse:
        stub = self._control_plane()
        if stub is None:
            return objects_pb2.LocateObjectResponse(node=self.node_name, epoch=1)
        try:
            response: objects_pb2.LocateObjectResponse = await stub.LocateObject(
                objects_pb2.LocateObjectRequest(
                    namespace=namespace,
                    id=object_id.hex(),
                    region=region,
                    location_hint=location_hint,
                    unreachable_standby=unreachable_standby,
                    requester=self.node_name,
                ),
                metadata=self.internal_metadata,
                timeout=LOCATE_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            raise from_upstream(error, "control plane") from error
        return response

    async def instance(
        self, namespace: str, object_id: bytes, region: str, location_hint: str = ""
    ) -> ObjectInstance:
        """The live instance, activating it if this node owns the object."""
        key = okey(namespace, object_id)
        existing = self.instances.get(key)
        if existing is not None:
            if not existing.broken and self.lease_current(existing.lease_generation):
                return existing
            self.evict(existing, existing.broken or "lease lapsed")
        pending = self._activating.get(key)
        if pending is None:
            pending = asyncio.ensure_future(
                self._activate(namespace, object_id, region, location_hint)
            )
            self._activating[key] = pending
            pending.add_done_callback(lambda _: self._activating.pop(key, None))
        return await asyncio.shield(pending)

    async def _activate(
        self, namespace: str, object_id: bytes, region: str, location_hint: str
    ) -> ObjectInstance:
        cls = self.class_of(namespace)
        generation = self.lease_generation()
        located = await self.locate(namespace, object_id, region, location_hint)
        if located.node != self.node_name:
            raise NotOwnerError(located.node, located.epoch)
        if not self.lease_current(generation):
            raise UnavailableError("this node's lease on its objects has lapsed")
        object_key = okey(namespace, object_id)
        try:
            meta = await self.storage.write(
                lambda txn: self.store.claim(txn, namespace, object_key, located.epoch)
            )
        except StaleEpochError as error:
            raise UnavailableError(f"placement is behind storage: {error.message}") from error
        instance = ObjectInstance(
            self,
            namespace,
            object_id,
            cls,
            epoch=located.epoch,
            seq=meta.seq,
            standby=located.standby,
            standby_address=located.standby_address,
            lease_generation=generation,
        )
        instance.load_request_ids(self._stored_request_ids(object_key))
        if located.standby_address and not await self._sync_standby(instance):
            # Both alive but cut off from each other: ask for another standby (same epoch).
            relocated = await self.locate(
                namespace, object_id, region, location_hint, unreachable_standby=located.standby
            )
            if relocated.node != self.node_name:
                raise NotOwnerError(relocated.node, relocated.epoch)
            instance.standby = relocated.standby
            instance.standby_address = relocated.standby_address
            if relocated.standby_address and (
                relocated.standby == located.standby or not await self._sync_standby(instance)
            ):
                raise UnavailableError(
                    f"no standby can take a copy of the object (tried {located.standby},"
                    f" {relocated.standby or '-'})"
                )
        await instance.execute(instance.obj.setup)
        self.instances[object_key] = instance
        self.metrics.do_objects_active.set(len(self.instances))
        with self.storage.read() as txn:
            raw_alarm = self.store.get(txn, object_key, ALARM_KEY)
        if raw_alarm is not None:
            self.schedule_alarm(instance, raw_alarm)
        log.info(
            "activated %s/%s at epoch %d (seq %d, standby %s)",
            namespace,
            object_id.hex()[:12],
            located.epoch,
            meta.seq,
            located.standby or "-",
        )
        return instance

    def _stored_request_ids(self, object_key: bytes) -> list[tuple[int, bytes]]:
        end = REQUEST_PREFIX[:-1] + bytes([REQUEST_PREFIX[-1] + 1])
        found = []
        with self.storage.read() as txn:
            for key, value in self.store.scan(txn, object_key, start=REQUEST_PREFIX, end=end):
                found.append((int(json.loads(value).get("seq", 0)), key))
        return found

    async def _sync_standby(self, instance: ObjectInstance) -> bool:
        """Bring the standby to this node's commit for the object (no writes: a check)."""
        check = objects_pb2.ObjectReplicaUpdate(
            namespace=instance.namespace,
            id=instance.object_id,
            epoch=instance.epoch,
            base_seq=instance.seq,
            seq=instance.seq,
        )
        try:
            results = await self.committer._send(instance.standby_address, [check])
        except grpc.aio.AioRpcError:
            return False
        if results[0] == objects_pb2.REPLICA_RESULT_APPLIED:
            return True
        if results[0] == objects_pb2.REPLICA_RESULT_NEED_FULL:
            return await self.committer.send_full(instance, instance.standby_address)
        return False

    def evict(self, instance: ObjectInstance, reason: str) -> None:
        instance.mark_broken(reason)
        if self.instances.get(instance.okey) is instance:
            del self.instances[instance.okey]
            self.metrics.do_objects_active.set(len(self.instances))
            log.info("evicted %s/%s: %s", instance.namespace, instance.object_id.hex()[:12], reason)

    async def _watch_lease(self) -> None:
        """Stop serving every object the moment the lease lapses."""
        was_valid = False
        while True:
            await asyncio.sleep(LEASE_CHECK_INTERVAL_S)
            lease = self._lease()
            if lease is None:
                continue
            now = time.monotonic()
            if lease.check_lapsed(now, was_valid):
                log.warning("lease lapsed: stopping %d object(s)", len(self.instances))
                for instance in list(self.instances.values()):
                    self.evict(instance, "this node's lease lapsed")
            was_valid = lease.valid(now)

    # -- calls -----------------------------------------------------------------------------

    async def call(
        self,
        namespace: str,
        object_id: bytes,
        method: str,
        args_json: str,
        *,
        region: str,
        location_hint: str = "",
        request_id: str = "",
    ) -> tuple[str, int]:
        cls = self.class_of(namespace)
        if method not in callable_methods(cls):
            raise UnimplementedError(f"{namespace} has no callable method {method!r}")
        args, kwargs = parse_args(args_json)
        started = time.perf_counter()
        code = "OK"
        try:
            instance = await self.instance(namespace, object_id, region, location_hint)
            handler = getattr(instance.obj, method)
            return await instance.execute(lambda: handler(*args, **kwargs), request_id=request_id)
        except EdgeError as error:
            code = error.code.name
            raise
        finally:
            calls, duration = self._call_metrics(namespace, code)
            calls.inc()
            duration.observe(time.perf_counter() - started)

    # -- standby side ----------------------------------------------------------------------

    async def apply_replica(
        self, updates: list[objects_pb2.ObjectReplicaUpdate]
    ) -> list[objects_pb2.ReplicaResult.ValueType]:
        """Apply an owner's updates to this node's standby copies (one transaction)."""
        results: list[objects_pb2.ReplicaResult.ValueType] = []
        deposed: list[ObjectInstance] = []

        def work(txn: Any) -> None:
            results.clear()
            for update in updates:
                object_key = okey(update.namespace, bytes(update.id))
                active = self.instances.get(object_key)
                if active is not None:
                    if update.epoch <= active.epoch:
                        results.append(objects_pb2.REPLICA_RESULT_STALE_EPOCH)
                        continue
                    deposed.append(active)
                meta = self.store.read_meta(txn, object_key)
                if update.epoch < meta.epoch:
                    results.append(objects_pb2.REPLICA_RESULT_STALE_EPOCH)
                    continue
                if update.full:
                    items = [(bytes(w.key), bytes(w.value)) for w in update.writes]
                    self.store.replace(
                        txn, update.namespace, object_key, update.epoch, update.seq, items
                    )
                elif meta.seq != update.base_seq or (meta.epoch != update.epoch and meta.seq != 0):
                    # Same seq under another epoch may be another history (a deposed owner's
                    # unacknowledged commits): only a copy of this owner's lineage, or an
                    # empty one, is in sync.
                    results.append(objects_pb2.REPLICA_RESULT_NEED_FULL)
                    continue
                else:
                    writes = [
                        (bytes(w.key), None if w.delete else bytes(w.value)) for w in update.writes
                    ]
                    self.store.commit(
                        txn, update.namespace, object_key, update.epoch, update.seq, writes
                    )
                results.append(objects_pb2.REPLICA_RESULT_APPLIED)

        await self.storage.write(work)
        for instance in deposed:
            self.evict(instance, "a newer owner replicates this object")
        return results

    # -- alarms ----------------------------------------------------------------------------

    def schedule_alarm(self, instance: ObjectInstance, raw: bytes | None) -> None:
        if instance.alarm_task is not None:
            instance.alarm_task.cancel()
            instance.alarm_task = None
        if raw is None:
            return
        instance.alarm_task = asyncio.ensure_future(self._alarm(instance, decode_alarm(raw)))

    async def _alarm(self, instance: ObjectInstance, at: float) -> None:
        """At-least-once: cleared only by the commit of a successful `alarm()`."""
        await asyncio.sleep(max(0.0, at - time.time()))
        for attempt in range(ALARM_RETRIES_MAX + 1):
            if instance.broken:
                return

            async def fire() -> None:
                await instance.obj.alarm()
                storage = instance.state.storage
                if await storage.get_alarm() == at:
                    await storage.delete_alarm()

            try:
                await instance.execute(fire)
                return
            except InstanceBrokenError:
                return
            except EdgeError as error:
                if attempt == ALARM_RETRIES_MAX:
                    log.error("alarm of %s failed %d times; cancelled", instance.namespace,
                              attempt + 1)  # fmt: skip
                    with contextlib.suppress(EdgeError):
                        await instance.execute(instance.state.storage.delete_alarm)
                    return
                delay = ALARM_RETRY_BASE_S * 2**attempt
                log.warning(
                    "alarm of %s failed (%s); retry in %.1f s",
                    instance.namespace,
                    error.message,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _scan_alarms(self) -> None:
        """Wake objects whose alarm is due but which have no live instance (e.g. moved here)."""
        while True:
            await asyncio.sleep(ALARM_SCAN_INTERVAL_S)
            with self.storage.read() as txn:
                due = [
                    (object_key, self.store.namespace_of(txn, object_key))
                    for object_key, _ in self.store.due_alarms(txn, time.time())
                    if object_key not in self.instances
                ]
            now = time.monotonic()
            for object_key, namespace in due:
                if not namespace or namespace not in self.classes:
                    continue
                if self._not_mine.get(object_key, 0.0) > now:
                    continue
                try:
                    await self.instance(namespace, object_key[8:], self.region)
                except NotOwnerError:
                    # A standby copy: its owner runs the alarm; look again much later.
                    self._not_mine[object_key] = now + NOT_MINE_RECHECK_S
                except EdgeError:
                    continue  # the control plane is away: try again next scan
