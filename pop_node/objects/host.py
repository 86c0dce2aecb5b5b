"""The Durable Objects a node owns: activation, eviction, standby copies, alarms.

Activation asks the control plane who owns the object (never a cache): only if it is
this node, at an epoch no older than storage has seen, and with a copy no older than the
last one confirmed on a standby, does an instance start. The epoch is recorded in
storage first (so a deposed owner's late writes are refused), then the object's copy is
brought to the same commit on another node before the first call runs: every
acknowledged write is then on two nodes.

The copy goes to the *next standby* when the control plane names one (a full copy, then
ConfirmStandby makes it the standby), else to the standby itself. If the next standby
cannot be reached, the standby — which already holds every acknowledged write — keeps
the role, and the control plane is asked for another next standby. Heartbeats name the
objects whose next standby waits for a copy; the owner brings each in (activating idle
objects, switching live ones between calls), so an object is back on two confirmed
copies within about a heartbeat of losing one.

When this node's lease lapses, every instance stops at once (their sessions close) and
the next call activates again, asking the control plane afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Any

import grpc

from edge.v1 import control_plane_pb2_grpc, objects_pb2, pop_pb2_grpc
from edgepop import buggify, objectid, retry, ticks
from edgepop.durable import DurableObject, callable_methods, check_call_arguments
from edgepop.errors import (
    EdgeError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    UnimplementedError,
    from_upstream,
)
from edgepop.lease import Lease
from edgepop.metrics import PopMetrics
from edgepop.ordered_stream import OrderedStream, Unanswered
from edgepop.rpc import channel
from edgepop.storage import Storage
from edgepop.topology import DEFAULT_EVICT_IDLE_AFTER_S, DEFAULT_HIBERNATE_AFTER_S
from pop_node.objects.committer import ObjectCommitter
from pop_node.objects.fetch import FETCH_METHOD, decode_request, run_fetch
from pop_node.objects.instance import (
    REQUEST_PREFIX,
    InstanceBrokenError,
    ObjectInstance,
)
from pop_node.objects.store import (
    ALARM_KEY,
    OBJECT_KEY_BYTES_MAX,
    OBJECT_VALUE_BYTES_MAX,
    ObjectStore,
    StaleEpochError,
    decode_alarm,
    okey,
)

# The stream of standby copies an owner keeps open to one standby node.
StandbyLink = OrderedStream[objects_pb2.ObjectReplicateRequest, objects_pb2.ObjectReplicateResponse]

log = logging.getLogger(__name__)

ARGS_BYTES_MAX = 1024 * 1024
LOCATE_TIMEOUT_S = 3.0
LEASE_CHECK_INTERVAL_S = 0.05
# Alarms of objects with no live instance here are looked for at least this often (one
# that came with no event here: a standby copy promoted); one already seen is woken at
# its time, and an eviction looks again at once.
ALARM_SCAN_INTERVAL_S = 1.0
# Idle objects are looked for at least this often (and 4 times per hibernate_after_s or
# evict_idle_after_s, whichever is shorter).
HIBERNATION_CHECK_S_MAX = 1.0
NOT_MINE_RECHECK_S = 30.0
# Objects brought to a new standby at once (each a full copy and a control-plane call).
STANDBY_SYNCS_IN_FLIGHT_MAX = 8


class NotOwnerError(EdgeError):
    """This node does not own the object (anymore); the caller should ask again."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "not-owner"

    def __init__(self, owner: str, epoch: int) -> None:
        super().__init__(f"not the owner: the owner is {owner or '(none)'} at epoch {epoch}")
        self.owner = owner
        self.epoch = epoch


def check_replica_update(update: objects_pb2.ObjectReplicaUpdate) -> None:
    """An owner's update as the standby accepts it (INVALID_ARGUMENT otherwise, and
    nothing of the request is applied)."""
    object_id = objectid.id_from_string(update.namespace, bytes(update.id).hex())
    if update.epoch < 1:
        raise InvalidArgumentError("a replica update needs an epoch >= 1")
    if not update.full and update.seq < update.base_seq:
        raise InvalidArgumentError("a replica update's seq is below its base_seq")
    for write in update.writes:
        key, value = bytes(write.key), bytes(write.value)
        if not key or len(key) > OBJECT_KEY_BYTES_MAX + len(REQUEST_PREFIX) + 64:
            raise InvalidArgumentError(
                f"storage key of {len(key)} bytes in a replica update of {object_id.hex()[:12]}"
            )
        if len(value) > OBJECT_VALUE_BYTES_MAX:
            raise InvalidArgumentError(
                f"value of {len(value)} bytes in a replica update (OBJECT_VALUE_BYTES_MAX)"
            )


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


def plan_alarm_scan(
    alarms: Iterable[tuple[bytes, float]],
    now: float,
    live: Collection[bytes],
    skipped: Collection[bytes],
) -> tuple[list[bytes], float | None]:
    """The alarm scan's decision: the objects to wake now (alarm due, no live instance,
    not skipped), and when the earliest other such alarm falls due (None: none ahead).
    A live instance's alarm is its own timer's; a skipped one is a standby copy's."""
    due: list[bytes] = []
    next_at: float | None = None
    for object_key, at in alarms:
        if object_key in live or object_key in skipped:
            continue
        if at <= now:
            due.append(object_key)
        elif next_at is None or at < next_at:
            next_at = at
    return due, next_at


class ObjectHost:
    def __init__(
        self,
        *,
        node_name: str,
        region: str,
        storage: Storage,
        metrics: PopMetrics,
        classes: dict[str, type[DurableObject]],
        env: Any,
        lease: Callable[[], Lease | None],
        control_plane: Callable[[], control_plane_pb2_grpc.ControlPlaneStub | None],
        internal_metadata: tuple[tuple[str, str], ...],
        hibernate_after_s: float = DEFAULT_HIBERNATE_AFTER_S,
        evict_idle_after_s: float = DEFAULT_EVICT_IDLE_AFTER_S,
        sqlite_namespaces: frozenset[str] = frozenset(),
    ) -> None:
        """`hibernate_after_s`: an object holding only hibernatable WebSockets leaves
        memory after this long without an event; `evict_idle_after_s`: an object with no
        connection at all (0: never, for either)."""
        self.node_name = node_name
        self.hibernate_after_s = hibernate_after_s
        self.evict_idle_after_s = evict_idle_after_s
        self.region = region
        self.storage = storage
        self.store = ObjectStore(storage)
        self.metrics = metrics
        self.classes = dict(classes)
        # Namespaces whose classes are SQLite-backed (wrangler's new_sqlite_classes).
        self.sqlite_namespaces: set[str] = set(sqlite_namespaces)
        self.env = env
        # namespace -> the env its objects get (a worker's own classes get the worker's).
        self.envs: dict[str, Any] = {}
        self._lease = lease
        self._control_plane = control_plane
        self.internal_metadata = internal_metadata
        self.instances: dict[bytes, ObjectInstance] = {}
        self._activating: dict[bytes, asyncio.Future[ObjectInstance]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pop_pb2_grpc.PopStub] = {}
        self._standby_links: dict[str, StandbyLink] = {}
        # Owners' streams of copies to this node, being served (cancelled at close).
        self._replica_streams: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.committer = ObjectCommitter(self)
        self._queue_depth = 0
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        metrics.do_queue_depth.set_function(lambda: self._queue_depth)
        # Objects with a due alarm that this node holds only as a standby copy.
        self._not_mine: dict[bytes, float] = {}
        # Set by an eviction: the instance's alarm timer is gone, the scan takes it over.
        self._alarms_unwatched = asyncio.Event()
        # Standby syncs asked for by heartbeats and under way: (namespace, id, epoch, node).
        self._standby_syncs: set[tuple[str, str, int, str]] = set()
        self._standby_sync_slots = asyncio.Semaphore(STANDBY_SYNCS_IN_FLIGHT_MAX)
        self._check_copies = not buggify.enabled(buggify.PROMOTE_UNSYNCED)
        self._background: set[asyncio.Future[None]] = set()

    def register_class(
        self, namespace: str, cls: type[DurableObject], env: Any, *, sqlite: bool = False
    ) -> None:
        """Serve `namespace` with `cls`; its instances get `env` (and `ctx.storage.sql`
        when `sqlite`)."""
        self.classes[namespace] = cls
        self.envs[namespace] = env
        if sqlite:
            self.sqlite_namespaces.add(namespace)
        else:
            self.sqlite_namespaces.discard(namespace)

    def env_for(self, namespace: str) -> Any:
        return self.envs.get(namespace, self.env)

    # -- plumbing ------------------------------------------------------------------------

    def channel(self, address: str) -> grpc.aio.Channel:
        existing = self._channels.get(address)
        if existing is None:
            existing = self._channels[address] = channel(address)
        return existing

    def stub(self, address: str) -> pop_pb2_grpc.PopStub:
        """The Pop stub over `channel(address)`, made once: a stub builds a callable per
        method of the service (~10 us), and a standby copy or a forwarded call needs one
        per batch or call."""
        existing = self._stubs.get(address)
        if existing is None:
            existing = self._stubs[address] = pop_pb2_grpc.PopStub(self.channel(address))
        return existing

    def standby_link(self, address: str) -> StandbyLink:
        """The stream of standby copies to the node at `address`, kept open."""
        existing = self._standby_links.get(address)
        if existing is None:
            stub = self.stub(address)
            existing = self._standby_links[address] = StandbyLink(
                address, lambda: stub.ObjectReplicate(metadata=self.internal_metadata)
            )
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

    def busiest(self, limit: int) -> list[ObjectInstance]:
        """The `limit` live instances that have run the most calls, most first."""
        return heapq.nlargest(limit, self.instances.values(), key=lambda instance: instance.calls)

    def class_of(self, namespace: str) -> type[DurableObject]:
        cls = self.classes.get(namespace)
        if cls is None:
            raise NotFoundError(f"no Durable Object class is bound to namespace {namespace!r}")
        return cls

    async def run(self) -> None:
        """Background work: commits, lease watch, alarm scan."""
        await asyncio.gather(
            self.committer.run(),
            self._watch_lease(),
            self._scan_alarms(),
            self._put_idle_objects_away(),
        )

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for instance in list(self.instances.values()):
            self.evict(instance, "node shutting down")
        for link in self._standby_links.values():
            link.close()
        self._closing = True
        for stream in list(self._replica_streams):
            stream.cancel()
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
        if response.unavailable:
            raise UnavailableError(response.unavailable)
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
            pending.add_done_callback(lambda done: self._activation_done(key, done))
        return await asyncio.shield(pending)

    def _activation_done(self, key: bytes, done: asyncio.Future[ObjectInstance]) -> None:
        self._activating.pop(key, None)
        # Read here: callers that gave up (their deadline) no longer await it, and asyncio
        # would log a failed activation as an exception never retrieved. Those that still
        # wait get it from the shield.
        if not done.cancelled():
            done.exception()

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
        synced_seq = located.synced_seq if self._check_copies else 0
        try:
            meta = await self.storage.write(
                lambda txn: self.store.claim(
                    txn, namespace, object_key, located.epoch, synced_seq=synced_seq
                )
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
            standby="",
            standby_address="",
            lease_generation=generation,
            sqlite=namespace in self.sqlite_namespaces,
        )
        instance.load_request_ids(self._stored_request_ids(object_key))
        await self._bring_in_standby(instance, located, region, location_hint)
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
            instance.standby or "-",
        )
        return instance

    async def _bring_in_standby(
        self,
        instance: ObjectInstance,
        located: objects_pb2.LocateObjectResponse,
        region: str,
        location_hint: str,
    ) -> None:
        """Give the object's copy to a node that will hold every acknowledged write.

        The next standby first (a full copy, confirmed at the control plane); failing
        that, the standby, which is a holder already; failing both, one more next standby
        from the control plane. No node reachable: the object is unavailable. Nobody named
        at all (a one-PoP cluster): the owner serves alone.
        """
        tried: list[str] = []
        for name, address, confirm in (
            (located.next_standby, located.next_standby_address, True),
            (located.standby, located.standby_address, False),
        ):
            if not name or name == self.node_name:
                continue
            tried.append(name)
            if address and await self._sync_standby(instance, address):
                if confirm:
                    await self.confirm_standby(instance, name)
                elif located.next_standby:
                    # Serving with the standby; have another next standby named.
                    self._spawn_replace(instance, located.next_standby, region)
                instance.standby, instance.standby_address = name, address
                return
        if not tried:
            return
        relocated = await self.locate(
            instance.namespace,
            instance.object_id,
            region,
            location_hint,
            unreachable_standby=tried[0],
        )
        if (relocated.node, relocated.epoch) != (self.node_name, instance.epoch):
            raise NotOwnerError(relocated.node, relocated.epoch)
        name, address = relocated.next_standby, relocated.next_standby_address
        if name and name not in tried and address and await self._sync_standby(instance, address):
            await self.confirm_standby(instance, name)
            instance.standby, instance.standby_address = name, address
            return
        raise UnavailableError(
            "no node can take a copy of the object, so no write could be acknowledged"
            f" (tried {', '.join([*tried, name or '-'])})"
        )

    async def confirm_standby(self, instance: ObjectInstance, standby: str) -> None:
        """Tell the control plane that `standby` holds a full copy at the instance's seq."""
        stub = self._control_plane()
        if stub is None:
            return
        try:
            await stub.ConfirmStandby(
                objects_pb2.ConfirmStandbyRequest(
                    namespace=instance.namespace,
                    id=instance.object_id.hex(),
                    owner=self.node_name,
                    epoch=instance.epoch,
                    standby=standby,
                    seq=instance.seq,
                ),
                metadata=self.internal_metadata,
                timeout=LOCATE_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # The placement moved on meanwhile: retryable against a fresh answer.
                raise UnavailableError(error.details() or "standby not confirmed") from error
            raise from_upstream(error, "control plane") from error

    def _spawn_replace(self, instance: ObjectInstance, unreachable: str, region: str) -> None:
        async def replace() -> None:
            with contextlib.suppress(EdgeError):
                await self.locate(
                    instance.namespace,
                    instance.object_id,
                    region,
                    unreachable_standby=unreachable,
                )

        task = asyncio.ensure_future(replace())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- standby syncs named by heartbeats -----------------------------------------------

    def on_objects_to_sync(self, refs: list[objects_pb2.ObjectRef]) -> None:
        """Heartbeat answer: these owned objects need their next standby brought in."""
        for ref in refs:
            key = (ref.namespace, ref.id, ref.epoch, ref.next_standby)
            if key in self._standby_syncs:
                continue
            self._standby_syncs.add(key)
            task = asyncio.ensure_future(self._sync_named(ref))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(functools.partial(_discard, self._standby_syncs, key))

    async def _sync_named(self, ref: objects_pb2.ObjectRef) -> None:
        try:
            object_id = bytes.fromhex(ref.id)
        except ValueError:
            return
        async with self._standby_sync_slots:
            try:
                existing = self.instances.get(okey(ref.namespace, object_id))
                if existing is None or existing.broken:
                    # Activation brings the next standby in.
                    await self.instance(ref.namespace, object_id, self.region)
                    return
                if existing.epoch == ref.epoch and existing.standby != ref.next_standby:
                    await self._switch_standby(existing)
            except EdgeError as error:
                log.debug("standby sync of %s/%s: %s", ref.namespace, ref.id[:12], error)

    async def _switch_standby(self, instance: ObjectInstance) -> None:
        """Move a live instance's copy to its next standby, between two calls."""
        located = await self.locate(instance.namespace, instance.object_id, self.region)
        if (located.node, located.epoch) != (self.node_name, instance.epoch):
            return  # not ours any more: the lease and epoch checks stop the instance
        name, address = located.next_standby, located.next_standby_address
        if not name or name == instance.standby or not address:
            return

        async def switch() -> None:
            if not await self._sync_standby(instance, address):
                self._spawn_replace(instance, name, self.region)
                return
            await self.confirm_standby(instance, name)
            instance.standby, instance.standby_address = name, address
            log.info(
                "standby of %s/%s is now %s",
                instance.namespace,
                instance.object_id.hex()[:12],
                name,
            )

        await instance.exclusive(switch)

    def _stored_request_ids(self, object_key: bytes) -> list[tuple[int, bytes]]:
        end = REQUEST_PREFIX[:-1] + bytes([REQUEST_PREFIX[-1] + 1])
        found = []
        with self.storage.read() as txn:
            for key, value in self.store.scan(txn, object_key, start=REQUEST_PREFIX, end=end):
                found.append((int(json.loads(value).get("seq", 0)), key))
        return found

    async def _sync_standby(self, instance: ObjectInstance, address: str) -> bool:
        """Bring the node at `address` to this node's commit for the object: a check that
        costs no writes when it is there already, else a full copy."""
        check = objects_pb2.ObjectReplicaUpdate(
            namespace=instance.namespace,
            id=instance.object_id,
            epoch=instance.epoch,
            base_seq=instance.seq,
            seq=instance.seq,
        )
        try:
            results = await self.committer.send_updates(address, [check])
        except Unanswered:
            return False
        if results[0] == objects_pb2.REPLICA_RESULT_APPLIED:
            return True
        if results[0] == objects_pb2.REPLICA_RESULT_NEED_FULL:
            return await self.committer.send_full(instance, address)
        return False

    def evict(self, instance: ObjectInstance, reason: str) -> None:
        instance.mark_broken(reason)
        if self.instances.get(instance.okey) is instance:
            del self.instances[instance.okey]
            self.metrics.do_objects_active.set(len(self.instances))
            self._alarms_unwatched.set()
            log.info("evicted %s/%s: %s", instance.namespace, instance.object_id.hex()[:12], reason)

    async def _watch_lease(self) -> None:
        """Stop serving every object the moment the lease lapses."""
        was_valid = False
        while True:
            # A timer at the lease's expiry while it is valid; a poll while it is not.
            lease = self._lease()
            wait = LEASE_CHECK_INTERVAL_S
            if lease is not None:
                wait = lease.next_check_in(time.monotonic(), LEASE_CHECK_INTERVAL_S)
            await asyncio.sleep(wait)
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
    ) -> tuple[str, int, str]:
        """Run a call here: (result JSON, epoch, node) of its one run."""
        cls = self.class_of(namespace)
        args, kwargs = parse_args(args_json)
        if method == FETCH_METHOD:
            # `stub.fetch(request)`: the object's `fetch` handler, with the request.
            if not callable(getattr(cls, "fetch", None)):
                raise UnimplementedError(f"{namespace} has no fetch handler")
            if len(args) != 1 or not isinstance(args[0], str):
                raise InvalidArgumentError("fetch takes one request (its JSON form)")
            request = decode_request(args[0])
        elif method not in callable_methods(cls):
            raise UnimplementedError(f"{namespace} has no callable method {method!r}")
        else:
            check_call_arguments(cls, method, args, kwargs)
        started = time.perf_counter()
        code = "OK"
        try:
            instance = await self.instance(namespace, object_id, region, location_hint)
            instance.calls += 1
            if method == FETCH_METHOD:
                return await instance.execute(
                    lambda: run_fetch(instance.obj, request, upgrade=False),
                    request_id=request_id,
                )
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

    async def serve_replica_stream(
        self, requests: AsyncIterator[objects_pb2.ObjectReplicateRequest]
    ) -> AsyncIterator[objects_pb2.ObjectReplicateResponse]:
        """An owner's stream of copies: each request applied and answered, in order.

        The stream never ends on its own, so a node that stops ends it UNAVAILABLE
        (`close` cancels it here: grpc would leave a cancelled handler's call open until
        the server's drain ran out); the owner's requests in flight then fail, as they
        would if this node had died.
        """
        task = asyncio.current_task()
        if task is not None:
            self._replica_streams.add(task)
        try:
            async for request in requests:
                results = await self.apply_replica(list(request.updates))
                yield objects_pb2.ObjectReplicateResponse(results=results)
        except asyncio.CancelledError:
            if task is None or not self._closing:
                raise
            task.uncancel()
            raise UnavailableError("the standby is shutting down") from None
        finally:
            if task is not None:
                self._replica_streams.discard(task)

    async def apply_replica(
        self, updates: list[objects_pb2.ObjectReplicaUpdate]
    ) -> list[objects_pb2.ReplicaResult.ValueType]:
        """Apply an owner's updates to this node's standby copies (one transaction)."""
        for update in updates:
            check_replica_update(update)
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

        payload_bytes = sum(len(w.key) + len(w.value) for u in updates for w in u.writes)
        await self.storage.write_small(work, payload_bytes)
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

        async def fire() -> None:
            await instance.obj.alarm()
            storage = instance.state.storage
            if await storage.get_alarm() == at:
                await storage.delete_alarm()

        def retryable(error: BaseException) -> bool:
            # A broken instance is gone: a new one (here or at a new owner) takes over.
            return isinstance(error, EdgeError) and not isinstance(error, InstanceBrokenError)

        try:
            async for attempt in retry.alarm_retries(retryable):
                with attempt:
                    if instance.broken:
                        return
                    await instance.execute(fire)
        except InstanceBrokenError:
            return
        except EdgeError:
            log.error("alarm of %s failed %d times; cancelled", instance.namespace,
                      retry.ALARM_RETRIES_MAX + 1)  # fmt: skip
            with contextlib.suppress(EdgeError):
                await instance.execute(instance.state.storage.delete_alarm)

    async def _put_idle_objects_away(self) -> None:
        """Hibernate or evict the idle objects Cloudflare would
        (`ObjectInstance.hibernate_if_idle`, `evict_if_idle`), looking a few times per
        period (at least once a second)."""
        periods = [p for p in (self.hibernate_after_s, self.evict_idle_after_s) if p > 0]
        if not periods:
            return
        interval = min(HIBERNATION_CHECK_S_MAX, min(periods) / 4)
        while True:
            await ticks.sleep_to_next_tick(interval)
            now = time.monotonic()
            for instance in list(self.instances.values()):
                if instance.websockets:
                    if instance.hibernate_if_idle(now, self.hibernate_after_s):
                        self.metrics.do_hibernations.inc()
                        log.info(
                            "hibernated %s/%s", instance.namespace, instance.object_id.hex()[:12]
                        )
                elif instance.evict_if_idle(now, self.evict_idle_after_s):
                    metrics = self.metrics
                    metrics.do_idle_evictions.labels(
                        metrics.node, metrics.region, instance.namespace
                    ).inc()

    async def _scan_alarms(self) -> None:
        """Wake objects whose alarm is due but which have no live instance (evicted, or
        moved here). Between looks it sleeps to the earliest such alarm still ahead, the
        next tick of ALARM_SCAN_INTERVAL_S or an eviction, whichever comes first: an idle
        node wakes for it once a second, on the heartbeats' tick."""
        while True:
            now = time.monotonic()
            skipped = {key for key, until in self._not_mine.items() if until > now}
            with self.storage.read() as txn:
                due, next_at = plan_alarm_scan(
                    self.store.all_alarms(txn), time.time(), self.instances.keys(), skipped
                )
                due_namespaces = [(key, self.store.namespace_of(txn, key)) for key in due]
            for object_key, namespace in due_namespaces:
                if not namespace or namespace not in self.classes:
                    continue
                try:
                    await self.instance(namespace, object_key[8:], self.region)
                except NotOwnerError:
                    # A standby copy: its owner runs the alarm; look again much later.
                    self._not_mine[object_key] = time.monotonic() + NOT_MINE_RECHECK_S
                except EdgeError:
                    continue  # the control plane is away: try again next scan
            wait_s = ticks.until_next_tick(ALARM_SCAN_INTERVAL_S)
            if next_at is not None:
                wait_s = min(wait_s, max(next_at - time.time(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._alarms_unwatched.wait(), wait_s)
            self._alarms_unwatched.clear()


def _discard(items: set[Any], item: Any, _: object) -> None:
    items.discard(item)
