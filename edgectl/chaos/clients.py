"""The clients of a fault run: simulated users in several regions, recording what they saw.

Each client does one operation at a time against the PoP nearest its region and records
it as an `Op` (edgectl.chaos.history) with times from the run's one clock:
- Durable Object counter increments and gets on a few shared objects, placed in
  different regions (`location_hint`) so that owners spread; the i-th client of each
  region calls object i, so every object has a client in every region; every other
  object is a `SqlCounter`, SQLite-backed (its value in `storage.sql`), the rest
  `Counter`s (key-value storage);
- KV puts of unique values (the returned seq recorded), STRONG gets, BOOKMARK gets with the
  client's own last seq as `min_seq` (the applied seq recorded), a few EVENTUAL gets;
- SQL (a D1-style database, `SQL_DATABASE`): INSERTs of a unique tag at the primary (from
  any PoP: its bookmark recorded) and reads of every tag in a session, as D1's
  `withSession(bookmark)`: each client carries the newest bookmark any of its SQL ops
  returned, so its reads must never go back and must hold every write at or below it.

Retries are what makes a history honest. Every write carries a request id and is retried
with the same id on an ambiguous failure (UNAVAILABLE, DEADLINE_EXCEEDED, ...: it may or
may not have run) until a definite answer or the give-up time; the platform answers a
repeat with the first result, so a retried increment is counted once. Status then follows
history.py: "ok" with a reply; "fail" when every attempt was refused with a definite code
(the request cannot have run); "info" when any attempt was ambiguous and no reply came.

Clients find PoPs as a real client would: `ControlPlane.Route` for their region, and,
because the control plane may be the thing that is dead, the node list the runner
started with (addresses survive restarts) ordered by the topology's RTT, skipping nodes
that just failed. Load is paced (`ops_per_s_max` over all clients) so the clients do not
starve a 2-core machine of the CPU the cluster needs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import control_plane_pb2_grpc as cp_grpc
from edge.v1 import kv_pb2, objects_pb2, pop_pb2_grpc, sql_pb2
from edgectl.chaos.history import Op, Status, bookmark_seq, object_ref, split_object_ref
from edgectl.chaos.nemesis import Clock
from edgectl.launcher import NodeState
from edgepop import retry
from edgepop.netem import REGION_HEADER, sent_at_metadata
from edgepop.rpc import CHANNEL_OPTIONS
from edgepop.topology import Topology

T = TypeVar("T")

# The built-in counters the clients call: key-value storage, and SQLite-backed.
COUNTER_NAMESPACES = ("Counter", "SqlCounter")
KV_NAMESPACE = "chaos"
# Codes after which a request may have run: retried with the same request id.
AMBIGUOUS_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
# A PoP that failed a call is passed over for this long when choosing where to go.
SUSPECT_S = 3.0
# Route is one round trip to us-east-1 (170 ms from tokyo); a dead control plane must
# not hold a client longer than this before it falls back to its own list.
ROUTE_TIMEOUT_S = 1.0
# The operation mix (weights): mostly object calls and KV writes (issue 10), and SQL.
OP_WEIGHTS: dict[str, float] = {
    "increment": 0.36,
    "do-get": 0.10,
    "put": 0.16,
    "strong-get": 0.10,
    "bookmark-get": 0.11,
    "eventual-get": 0.05,
    "sql-insert": 0.07,
    "sql-read": 0.05,
}
# The SQL database the clients share, made by the runner before they start: one table
# whose rows are only ever added, each naming the insert (its request id) that made it.
SQL_DATABASE = "chaos"
SQL_TABLE = "chaos_rows"
SQL_SETUP = (
    f"CREATE TABLE {SQL_TABLE} (id INTEGER PRIMARY KEY, client TEXT NOT NULL, tag TEXT NOT NULL)"
)
SQL_INSERT = f"INSERT INTO {SQL_TABLE} (client, tag) VALUES (?, ?)"
SQL_SELECT = f"SELECT tag FROM {SQL_TABLE} ORDER BY id"


@dataclass(frozen=True)
class Workload:
    """What the clients do: which objects and keys, how many clients, how fast."""

    # (object ref "Namespace/name", the region it is placed in on first use)
    objects: tuple[tuple[str, str], ...]
    kv_keys: tuple[str, ...]
    regions: tuple[str, ...]
    clients_per_region: int = 4
    # Over all clients together; each client paces itself to its share.
    ops_per_s_max: float = 200.0
    attempt_timeout_s: float = 3.0
    # A write (increment, put) is retried this long before it is recorded as "info":
    # longer than a failover (3-4.5 s), so an owner's death alone leaves no "info".
    give_up_s: float = 6.0
    # Reads change nothing: they give up sooner and free the client for the next op.
    read_give_up_s: float = 3.0
    # How often each op is drawn (OP_WEIGHTS; a planted bug's run weights the ops it hits).
    op_weights: tuple[tuple[str, float], ...] = tuple(OP_WEIGHTS.items())

    @property
    def object_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.objects)

    @property
    def client_count(self) -> int:
        return self.clients_per_region * len(self.regions)


def default_workload(pop_regions: Sequence[str], objects: int = 4, keys: int = 6) -> Workload:
    """`objects` counters spread over the PoP regions in turn, of each counter class in
    turn; `keys` shared KV keys."""
    regions = tuple(pop_regions)
    return Workload(
        objects=tuple(
            (
                object_ref(COUNTER_NAMESPACES[i % len(COUNTER_NAMESPACES)], f"counter-{i}"),
                regions[i % len(regions)],
            )
            for i in range(objects)
        ),
        kv_keys=tuple(f"k{i}" for i in range(keys)),
        regions=regions,
    )


def object_key(ref: str) -> str:
    """The history key of a counter (see history.py), from its object ref."""
    return f"do:{ref}"


def kv_key(key: str) -> str:
    return f"kv:{KV_NAMESPACE}/{key}"


# The history key of every SQL op (one table: its checks look at all of them together).
SQL_KEY = f"sql:{SQL_DATABASE}/{SQL_TABLE}"


def select_tags() -> sql_pb2.SqlStatement:
    return sql_pb2.SqlStatement(sql=SQL_SELECT)


def tags_of(response: sql_pb2.SqlQueryResponse) -> list[str]:
    """The tags a SELECT of `SQL_SELECT` returned, in row order."""
    return [row.values[0].text for row in response.results[0].rows] if response.results else []


class Recorder:
    """Every op of the run, with ids in invocation order and live counts for the display."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ops: list[Op] = []
        self._ids = itertools.count()
        self.counts: dict[str, int] = {"ok": 0, "fail": 0, "info": 0}

    def invoke(self, process: str, key: str, f: str, input: Any = None, **meta: Any) -> Op:
        op = Op(
            id=next(self._ids),
            process=process,
            key=key,
            f=f,
            invoke_s=self.clock.now(),
            input=input,
            meta={"attempts": 0, **meta},
        )
        self.ops.append(op)
        return op

    def complete(self, op: Op, status: Status, output: Any = None) -> None:
        op.status, op.output, op.complete_s = status, output, self.clock.now()
        self.counts[status] += 1


class Directory:
    """Where clients find PoPs: Route when the control plane answers, else the node list
    the run started with, nearest first by the topology's RTT; one channel per node."""

    def __init__(
        self, nodes: Sequence[NodeState], topology: Topology, control_plane_address: str
    ) -> None:
        self.pops = [node for node in nodes if node.role == "pop"]
        self.topology = topology
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.control_plane = cp_grpc.ControlPlaneStub(self.channel(control_plane_address))
        self._suspect_until: dict[str, float] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return self._channels[address]

    def pop(self, address: str) -> pop_pb2_grpc.PopStub:
        return pop_pb2_grpc.PopStub(self.channel(address))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()

    def suspect(self, name: str) -> None:
        self._suspect_until[name] = time.monotonic() + SUSPECT_S

    def _suspected(self, name: str) -> bool:
        return self._suspect_until.get(name, 0.0) > time.monotonic()

    def nearest(self, region: str) -> NodeState:
        """The nearest PoP not suspected of being down (the nearest at all if all are)."""
        ranked = sorted(
            self.pops,
            key=lambda node: (
                self._suspected(node.name),
                self.topology.rtt_ms(region, node.region, caller_is_node=False),
                node.name,
            ),
        )
        return ranked[0]

    async def route(self, region: str, client_id: str) -> NodeState:
        """The control plane's choice for this client, unless it is unreachable or names a
        node that just failed us; then the nearest from the list."""
        try:
            routed = await self.control_plane.Route(
                cp_pb2.RouteRequest(region=region, client_id=client_id),
                metadata=region_metadata(region),
                timeout=ROUTE_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError:
            return self.nearest(region)
        for node in self.pops:
            if node.name == routed.name and not self._suspected(node.name):
                return node
        return self.nearest(region)


def region_metadata(region: str) -> tuple[tuple[str, str], ...]:
    """A simulated client's location and its send time (for accurate emulated latency)."""
    return ((REGION_HEADER, region), sent_at_metadata())


def _ambiguous(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in AMBIGUOUS_CODES


@dataclass
class Client:
    """One simulated user: one op at a time until `stop`, paced to its share of the load."""

    name: str
    region: str
    workload: Workload
    directory: Directory
    recorder: Recorder
    rng: random.Random
    request_tag: str  # makes request ids unique per run
    # The object this client calls. Bound, not drawn per op: a client waits out an
    # unavailable object (up to give_up_s), and with a random object per op every client
    # would soon be waiting on the one object that is down, stalling the whole load.
    home_object: int = 0
    # The PoP this client goes to until it fails; None: ask (Route) before the next call.
    _entry: NodeState | None = field(default=None, init=False)
    # The client's own bookmark: the highest seq of its acknowledged puts, and that key.
    _last_seq: int = field(default=0, init=False)
    _last_key: str = field(default="", init=False)
    # The client's SQL session: the newest bookmark its SQL ops returned (the runner's
    # CREATE TABLE's to begin with).
    sql_bookmark: str = ""
    _sequence: itertools.count[int] = field(default_factory=itertools.count, init=False)

    async def run(self, stop: asyncio.Event) -> None:
        clock = self.recorder.clock
        interval_s = self.workload.client_count / self.workload.ops_per_s_max
        operations = [kind for kind, _ in self.workload.op_weights]
        weights = [weight for _, weight in self.workload.op_weights]
        # Clients start spread over one interval, not in one burst.
        next_at = clock.now() + self.rng.uniform(0, interval_s)
        while not stop.is_set():
            await clock.sleep_until(next_at)
            if stop.is_set():
                break
            kind = self.rng.choices(operations, weights)[0]
            await self._one(kind)
            next_at = max(next_at + interval_s * self.rng.uniform(0.5, 1.5), clock.now())

    async def _one(self, kind: str) -> None:
        if kind in ("increment", "do-get"):
            ref, hint = self.workload.objects[self.home_object]
            await self._object_call(ref, hint, "increment" if kind == "increment" else "get")
        elif kind == "put":
            await self._put(self.rng.choice(self.workload.kv_keys))
        elif kind == "bookmark-get" and self._last_seq:
            await self._get(self._last_key, kv_pb2.CONSISTENCY_BOOKMARK, self._last_seq)
        elif kind == "eventual-get":
            await self._get(self.rng.choice(self.workload.kv_keys), kv_pb2.CONSISTENCY_EVENTUAL)
        elif kind == "sql-insert":
            await self._sql_insert()
        elif kind == "sql-read":
            await self._sql_read()
        else:  # strong-get, or a bookmark read before this client wrote anything
            await self._get(self.rng.choice(self.workload.kv_keys), kv_pb2.CONSISTENCY_STRONG)

    def _request_id(self) -> str:
        return f"{self.request_tag}-{self.name}-{next(self._sequence)}"

    async def _entry_node(self) -> NodeState:
        if self._entry is None:
            self._entry = await self.directory.route(self.region, self.name)
        return self._entry

    async def _attempts(
        self,
        op: Op,
        give_up_s: float,
        call: Callable[[pop_pb2_grpc.PopStub, float], Awaitable[T]],
    ) -> T:
        """`call` at the current entry PoP, retried on ambiguous failures (re-routing each
        time) until it answers or `give_up_s` passed; raises the last error."""
        deadline = time.monotonic() + give_up_s
        async for attempt in retry.rerouted(give_up_s, _ambiguous):
            with attempt:
                op.meta["attempts"] += 1
                entry = await self._entry_node()
                timeout = min(self.workload.attempt_timeout_s, deadline - time.monotonic())
                try:
                    return await call(self.directory.pop(entry.grpc_address), max(0.05, timeout))
                except grpc.aio.AioRpcError as error:
                    op.meta["code"] = error.code().name
                    if _ambiguous(error):
                        op.meta["ambiguous"] = True
                        # Try elsewhere next: the entry, or what is behind it, is in trouble.
                        self.directory.suspect(entry.name)
                        self._entry = None
                    raise
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _failed(self, op: Op, error: grpc.aio.AioRpcError) -> None:
        """A definite refusal is "fail" only if no earlier attempt may have run."""
        op.meta["code"] = error.code().name
        op.meta["details"] = (error.details() or "")[:200]
        status: Status = "info" if op.meta.get("ambiguous") else "fail"
        self.recorder.complete(op, status)

    async def _object_call(self, ref: str, hint: str, method: str) -> None:
        request_id = self._request_id()
        op = self.recorder.invoke(
            self.name, object_key(ref), method, request_id=request_id, region=self.region
        )
        namespace, name = split_object_ref(ref)
        request = objects_pb2.ObjectCallRequest(
            namespace=namespace,
            name=name,
            method=method,
            location_hint=hint,
            request_id=request_id,
        )

        async def call(stub: pop_pb2_grpc.PopStub, timeout: float) -> Any:
            op.meta["entry"] = self._entry.name if self._entry else ""
            return await stub.ObjectCall(
                request, metadata=region_metadata(self.region), timeout=timeout
            )

        try:
            response = await self._attempts(op, self.workload.give_up_s, call)
        except grpc.aio.AioRpcError as error:
            self._failed(op, error)
            return
        op.meta.update(node=response.node, epoch=int(response.epoch))
        op.meta.pop("code", None)
        self.recorder.complete(op, "ok", int(json.loads(response.result_json)))

    async def _put(self, key: str) -> None:
        request_id = self._request_id()
        value = request_id  # unique per run: every put writes a value nobody else wrote
        op = self.recorder.invoke(
            self.name, kv_key(key), "put", value, request_id=request_id, region=self.region
        )
        request = kv_pb2.KvPutRequest(
            namespace=KV_NAMESPACE, key=key, value=value.encode(), request_id=request_id
        )

        async def call(stub: pop_pb2_grpc.PopStub, timeout: float) -> Any:
            op.meta["node"] = self._entry.name if self._entry else ""
            return await stub.KvPut(request, metadata=region_metadata(self.region), timeout=timeout)

        try:
            response = await self._attempts(op, self.workload.give_up_s, call)
        except grpc.aio.AioRpcError as error:
            self._failed(op, error)
            return
        op.meta["seq"] = int(response.seq)
        op.meta.pop("code", None)
        self._last_seq, self._last_key = max(self._last_seq, int(response.seq)), key
        self.recorder.complete(op, "ok")

    async def _get(
        self, key: str, consistency: kv_pb2.Consistency.ValueType, min_seq: int = 0
    ) -> None:
        name = {
            kv_pb2.CONSISTENCY_EVENTUAL: "eventual",
            kv_pb2.CONSISTENCY_BOOKMARK: "bookmark",
            kv_pb2.CONSISTENCY_STRONG: "strong",
        }[consistency]
        meta: dict[str, Any] = {"consistency": name, "region": self.region}
        if consistency == kv_pb2.CONSISTENCY_BOOKMARK:
            meta["min_seq"] = min_seq
        op = self.recorder.invoke(self.name, kv_key(key), "get", **meta)
        request = kv_pb2.KvGetRequest(
            namespace=KV_NAMESPACE,
            key=key,
            consistency=consistency,
            min_seq=min_seq,
        )

        async def call(stub: pop_pb2_grpc.PopStub, timeout: float) -> Any:
            op.meta["node"] = self._entry.name if self._entry else ""
            return await stub.KvGet(request, metadata=region_metadata(self.region), timeout=timeout)

        try:
            response = await self._attempts(op, self.workload.read_give_up_s, call)
        except grpc.aio.AioRpcError as error:
            self._failed(op, error)
            return
        op.meta["applied_seq"] = int(response.applied_seq)
        op.meta.pop("code", None)
        self.recorder.complete(op, "ok", response.value.decode() if response.found else None)

    def _advance_session(self, bookmark: str) -> None:
        """The session moves on to a newer bookmark. A malformed one is recorded with its
        op, for the checker to report, and never carried."""
        seq = bookmark_seq(bookmark)
        if seq is not None and seq > (bookmark_seq(self.sql_bookmark) or 0):
            self.sql_bookmark = bookmark

    async def _sql_query(
        self, op: Op, request: sql_pb2.SqlQueryRequest, give_up_s: float
    ) -> sql_pb2.SqlQueryResponse | None:
        """`Pop.SqlQuery` through `_attempts`; None once `op` is recorded as failed."""

        async def call(stub: pop_pb2_grpc.PopStub, timeout: float) -> Any:
            op.meta["entry"] = self._entry.name if self._entry else ""
            return await stub.SqlQuery(
                request, metadata=region_metadata(self.region), timeout=timeout
            )

        try:
            response: sql_pb2.SqlQueryResponse = await self._attempts(op, give_up_s, call)
        except grpc.aio.AioRpcError as error:
            self._failed(op, error)
            return None
        return response

    async def _sql_insert(self) -> None:
        """One row at the primary (through the entry PoP), outside a session: its bookmark
        is the write's own seq."""
        request_id = self._request_id()
        op = self.recorder.invoke(
            self.name, SQL_KEY, "insert", request_id, request_id=request_id, region=self.region
        )
        request = sql_pb2.SqlQueryRequest(
            database=SQL_DATABASE,
            statements=[
                sql_pb2.SqlStatement(
                    sql=SQL_INSERT,
                    params=[sql_pb2.SqlValue(text=self.name), sql_pb2.SqlValue(text=request_id)],
                )
            ],
            request_id=request_id,
        )

        response = await self._sql_query(op, request, self.workload.give_up_s)
        if response is None:
            return
        op.meta["bookmark"] = response.bookmark
        op.meta.pop("code", None)
        self._advance_session(response.bookmark)
        self.recorder.complete(op, "ok")

    async def _sql_read(self) -> None:
        """Every tag, in the client's session: `withSession(bookmark)` (a replica at least
        that new, or the primary), or `first-unconstrained` before it has one."""
        bookmark = self.sql_bookmark
        op = self.recorder.invoke(
            self.name, SQL_KEY, "read", min_bookmark=bookmark, region=self.region
        )
        request = sql_pb2.SqlQueryRequest(
            database=SQL_DATABASE,
            statements=[select_tags()],
            session=(
                sql_pb2.SQL_SESSION_BOOKMARK
                if bookmark
                else sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED
            ),
            bookmark=bookmark,
        )

        response = await self._sql_query(op, request, self.workload.read_give_up_s)
        if response is None:
            return
        meta = response.results[0].meta if response.results else sql_pb2.SqlMeta()
        op.meta.update(
            bookmark=response.bookmark, node=meta.served_by, primary=meta.served_by_primary
        )
        op.meta.pop("code", None)
        self._advance_session(response.bookmark)
        self.recorder.complete(op, "ok", tags_of(response))


def make_clients(
    workload: Workload,
    directory: Directory,
    recorder: Recorder,
    seed: int,
    request_tag: str,
    sql_bookmark: str = "",
) -> list[Client]:
    """`clients_per_region` clients in each region, each with its own seeded choices;
    every SQL session starts at `sql_bookmark`."""
    clients = []
    for region in workload.regions:
        for index in range(workload.clients_per_region):
            name = f"{region}-c{index}"
            clients.append(
                Client(
                    name=name,
                    region=region,
                    workload=workload,
                    directory=directory,
                    recorder=recorder,
                    rng=random.Random(f"edgepop-chaos-client:{seed}:{name}"),
                    request_tag=request_tag,
                    home_object=index % len(workload.objects),
                    sql_bookmark=sql_bookmark,
                )
            )
    return clients
