"""Fuzzed requests to every edge.v1 RPC of a running cluster (issue 10, item 5).

Requests come from `tests.integration.fuzz` (built from the protobuf descriptors): valid,
almost valid, random, and mangled on the wire; with the cluster token, without, or with
a wrong one. Every answer must be a clear status from the method's declared set, with a
message when it is an error; no node may die; and nothing may change that a refused
request touched:

- KV: after each batch, every entry the origin logged during it belongs to a write that
  was accepted (or whose outcome was unknown), or is the expiry sweeper deleting a key
  written with an expiration — a refused write never reaches the log.
- Control plane: admin requests go one at a time between two snapshots; a refused one
  leaves the faults, the node it named, the workers and the placement it named as they
  were.

A dedicated small cluster (no emulated delay) so the fuzz cannot disturb other tests and
runs fast. Calls go out concurrently in batches on one event loop. Hypothesis runs
derandomized, without a database: the same requests on every run. At the end, every
node is alive and healthy and every replica equals the origin; the number of requests
sent is printed and must reach 10,000.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from edge.v1 import control_plane_pb2, kv_pb2, objects_pb2, origin_pb2, sql_pb2, workers_pb2
from edgectl.launcher import Cluster
from edgepop import limits
from edgepop.netem import REGION_HEADER
from edgepop.topology import DEFAULT_ORIGIN_REGION
from tests.conftest import _make_factory, poll_until
from tests.integration.fuzz import (
    INTERNAL_METHODS,
    RPC_BY_KEY,
    RPCS,
    WORKER_PY,
    WORKER_YAML,
    FuzzCall,
    FuzzContext,
    MessageStrategies,
    Rpc,
    batches,
    parse_or_none,
    reseeded,
)
from tests.integration.kvclient import converged

pytestmark = pytest.mark.cluster

FUZZ_TOPOLOGY: dict[str, Any] = {
    "emulate_delay": False,
    "regions": [
        {"name": "us-east-1"},
        {"name": "tokyo", "pop_nodes": 2},
        {"name": "london", "pop_nodes": 1},
    ],
}
# The topology names no origin region: the control plane is in the default one.
CONTROL_PLANE_REGION = DEFAULT_ORIGIN_REGION
KV_NAMESPACES = ("fuzz", "fuzz-b")
KV_KEYS = ("fuzz-a", "fuzz-b", "fuzz-c/d", "fuzz-é", "k")
OBJECT_NAMES = ("fuzz-1", "fuzz-2", "fuzz-3")
WORKER_NAMES = ("fuzz-w1", "fuzz-w2")
SQL_DATABASES = ("fuzz-db", "fuzz-db2")

# The acceptance bound: generated requests per run, over all RPCs.
REQUESTS_MIN = 10_000
BULK_BATCH_CALLS = 50
BULK_EXAMPLES = 200
ADMIN_BATCH_CALLS = 8
ADMIN_EXAMPLES = 60
# A unary answer normally takes milliseconds; a fuzzed call that hangs this long is a bug.
CALL_TIMEOUT_S = 10.0
# Streams are cut after this many messages or this long (they may never end on their own).
STREAM_MESSAGES_MAX = 3
STREAM_TIMEOUT_S = 1.5
STREAM_IDLE_S = 0.05

HYPOTHESIS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    # A failing batch is reported in the assertion message, one line per offending
    # request (hypothesis's own report would repeat every call of the batch); shrinking it
    # against a live cluster would cost minutes.
    verbosity=Verbosity.quiet,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)

Code = grpc.StatusCode
# Codes any method may answer with (with a message saying why).
CLEAR_CODES = frozenset(
    {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.RESOURCE_EXHAUSTED,
        Code.OUT_OF_RANGE,
        Code.ALREADY_EXISTS,
        Code.UNIMPLEMENTED,
        Code.PERMISSION_DENIED,
    }
)
# Details the grpc client makes up when the call broke rather than ended with a status
# (a dropped connection, a reply it could not take): never an acceptable answer.
TRANSPORT_FAILURES = ("Stream removed", "Socket closed", "Connection reset", "failed to connect")
# What the grpc client reports for a write to a call the server has already ended.
CLIENT_WRITE_FAILED = "Internal error from Core"
# Methods that depend on another node, for which UNAVAILABLE (naming it) is an answer.
FORWARDING = frozenset(
    {
        "Pop/KvGet",
        "Pop/KvGetMany",
        "Pop/KvList",
        "Pop/KvPut",
        "Pop/KvPutMany",
        "Pop/KvDelete",
        "Pop/ObjectCall",
        "Pop/ObjectConnect",
        "Pop/SqlQuery",
    }
)
# A Durable Object's own exception reaches its caller as UNKNOWN "remote <Type>: ...".
OBJECT_METHODS = frozenset({"Pop/ObjectCall", "Pop/ObjectConnect"})
KV_WRITES = frozenset(
    {
        "Pop/KvPut",
        "Pop/KvPutMany",
        "Pop/KvDelete",
        "Origin/KvPut",
        "Origin/KvPutMany",
        "Origin/KvDelete",
    }
)
# Calls that may log a SQL commit (or a new database) of the database they name.
SQL_WRITES = frozenset({"Pop/SqlQuery", "Origin/SqlQuery", "Origin/SqlCreate"})
# Token methods that only read, or write nothing the rest of the fuzz relies on (a
# heartbeat renews a lease; ObjectReplicate writes only to the fuzz's own object class):
# sent concurrently with the rest. Every other token method changes the control plane
# for everyone (a partition, a fake node, a deploy, a placement) and is sent one at a
# time between two snapshots.
BULK_SAFE_INTERNAL = frozenset(
    {
        "Pop/Dump",
        "Pop/ObjectReplicate",
        "Pop/SqlDump",
        "Origin/Dump",
        "Origin/SqlDump",
        "Origin/Subscribe",
        "ControlPlane/Heartbeat",
        "ControlPlane/HeartbeatStream",
        "ControlPlane/WatchTopology",
        "ControlPlane/ListPlacements",
        "ControlPlane/GetWorkerBundle",
    }
)
ADMIN = INTERNAL_METHODS - BULK_SAFE_INTERNAL
BULK_RPCS = [rpc for rpc in RPCS if rpc.key not in ADMIN]
ADMIN_RPCS = [rpc for rpc in RPCS if rpc.key in ADMIN]


# -- running calls -----------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[bytes]
    cut: bool = False  # we ended the stream (it was still going)
    write_failed: bool = False  # the server ended a bidi call while we were writing
    elapsed_s: float = 0.0


@dataclass
class Tally:
    """What the fuzz sent and how it was answered, over the whole module."""

    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    codes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def add(self, rpc: Rpc, outcome: Outcome) -> None:
        self.sent[rpc.key] += 1
        self.codes[(rpc.key, outcome.code.name)] += 1

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class Driver:
    """Sends generated calls to the cluster on its own event loop and channels."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.token = cluster.token
        self.loop = asyncio.new_event_loop()
        self.tally = Tally()
        self.addresses = {name: node.grpc_address for name, node in cluster.nodes.items()}
        self.channels: dict[str, grpc.aio.Channel] = self.loop.run_until_complete(self._open())

    async def _open(self) -> dict[str, grpc.aio.Channel]:
        # Above the server's limit, so that the server (not this client) refuses big calls.
        options = [
            ("grpc.max_send_message_length", 2 * limits.MESSAGE_BYTES_MAX),
            ("grpc.max_receive_message_length", 2 * limits.MESSAGE_BYTES_MAX),
        ]
        return {
            name: grpc.aio.insecure_channel(address, options=options)
            for name, address in self.addresses.items()
        }

    def close(self) -> None:
        async def close_all() -> None:
            for channel in self.channels.values():
                await channel.close()

        self.loop.run_until_complete(close_all())
        self.loop.close()

    def metadata(self, call: FuzzCall) -> tuple[tuple[str, str], ...]:
        auth: tuple[tuple[str, str], ...] = ()
        if call.auth == "token":
            auth = (("authorization", f"Bearer {self.token}"),)
        elif call.auth == "wrong":
            auth = (("authorization", "Bearer not-the-token"),)
        return (*auth, *call.metadata)

    def run(self, batch: list[FuzzCall]) -> list[Outcome]:
        async def send_all() -> list[Outcome]:
            return await asyncio.gather(*(self._send(call) for call in batch))

        outcomes = self.loop.run_until_complete(send_all())
        for call, outcome in zip(batch, outcomes, strict=True):
            self.tally.add(call.rpc, outcome)
        return outcomes

    def call(self, rpc_key: str, target: str, request: Any, *, auth: bool = True) -> Any:
        """One well-formed call (for snapshots and set-up): the decoded response."""
        rpc = RPC_BY_KEY[rpc_key]
        fuzz_call = FuzzCall(
            rpc, target, request.SerializeToString(), "check", "token" if auth else "none", ()
        )
        outcome = self.loop.run_until_complete(self._send(fuzz_call))
        if outcome.code != grpc.StatusCode.OK:
            raise AssertionError(f"{rpc_key}: {outcome.code.name} {outcome.details}")
        return [rpc.response.FromString(raw) for raw in outcome.responses]

    async def _send(self, call: FuzzCall) -> Outcome:
        started = time.monotonic()
        outcome = await self._send_once(call)
        outcome.elapsed_s = time.monotonic() - started
        return outcome

    async def _send_once(self, call: FuzzCall) -> Outcome:
        channel = self.channels[call.target]
        metadata = self.metadata(call)
        rpc = call.rpc
        try:
            if rpc.client_streaming:
                return await self._bidi(channel, call, metadata)
            if rpc.server_streaming:
                stream = channel.unary_stream(rpc.path)(
                    call.payload, metadata=metadata, timeout=STREAM_TIMEOUT_S
                )
                return await _read_stream(stream)
            response = await channel.unary_unary(rpc.path)(
                call.payload, metadata=metadata, timeout=CALL_TIMEOUT_S
            )
            return Outcome(grpc.StatusCode.OK, "", [response])
        except grpc.aio.AioRpcError as error:
            return Outcome(error.code(), error.details() or "", [])

    async def _bidi(
        self, channel: grpc.aio.Channel, call: FuzzCall, metadata: tuple[tuple[str, str], ...]
    ) -> Outcome:
        """As a client should: the first message, its answer, then the rest."""
        stream = channel.stream_stream(call.rpc.path)(metadata=metadata, timeout=STREAM_TIMEOUT_S)
        responses: list[bytes] = []
        try:
            await stream.write(call.payload)
            first = await stream.read()
            if first is grpc.aio.EOF:
                return Outcome(await stream.code(), await stream.details() or "", responses)
            responses.append(first)
            for message in call.more:
                await stream.write(message)
            await stream.done_writing()
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Outcome(error.code(), error.details() or "", responses, cut=True)
            # A write the server's end of the call overtook fails here, with a status this
            # client made up ("Internal error from Core"): not the server's answer.
            return Outcome(error.code(), error.details() or "", responses, write_failed=True)
        except asyncio.InvalidStateError:
            # The server had ended the call (refusing an earlier message) before this
            # write began: its status is the answer.
            return Outcome(await stream.code(), await stream.details() or "", responses)
        return await _read_stream(stream, responses)

    # -- state the checks compare ------------------------------------------------------------

    def origin_head(self) -> int:
        (status,) = self.call("Origin/Status", "origin", origin_pb2.OriginStatusRequest())
        return int(status.head_seq)

    def log_entries(self, after_seq: int, head: int) -> list[kv_pb2.LogEntry]:
        """The origin's log entries after_seq + 1 .. head (read through Subscribe)."""
        if head <= after_seq:
            return []

        async def read() -> list[kv_pb2.LogEntry]:
            stream = self.channels["origin"].unary_stream(
                "/edge.v1.Origin/Subscribe",
                request_serializer=origin_pb2.SubscribeRequest.SerializeToString,
                response_deserializer=origin_pb2.SubscribeResponse.FromString,
            )(
                origin_pb2.SubscribeRequest(node="fuzz-check", from_seq=after_seq + 1),
                metadata=(("authorization", f"Bearer {self.token}"),),
                timeout=10,
            )
            entries: list[kv_pb2.LogEntry] = []
            async for message in stream:
                entries.extend(entry for entry in message.entries if entry.seq <= head)
                if entries and entries[-1].seq >= head:
                    break
            stream.cancel()
            return entries

        return self.loop.run_until_complete(read())


async def _read_stream(stream: Any, responses: list[bytes] | None = None) -> Outcome:
    """Read at most STREAM_MESSAGES_MAX messages, then end the call (streams may not end)."""
    responses = [] if responses is None else responses
    try:
        while len(responses) < STREAM_MESSAGES_MAX:
            try:
                # The first message may take the call's time; later ones come at once or
                # not for a while (WatchTopology sends again only on a change).
                message = await asyncio.wait_for(
                    stream.read(), None if not responses else STREAM_IDLE_S
                )
            except TimeoutError:
                break
            if message is grpc.aio.EOF:
                return Outcome(await stream.code(), await stream.details() or "", responses)
            responses.append(message)
    except grpc.aio.AioRpcError as error:
        cut = error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        return Outcome(error.code(), error.details() or "", responses, cut=cut)
    stream.cancel()
    return Outcome(grpc.StatusCode.OK, "", responses, cut=True)


# -- what an answer must look like --------------------------------------------------------------


def partitions_its_own_answer(call: FuzzCall) -> bool:
    """A SetLinkFault partitioning the link from the control plane to the region its
    caller says it is in: the answer crosses that link after the fault is in force, so it
    waits there like any other message, and the caller sees its deadline pass (the fault
    is set all the same)."""
    request = call.request
    if call.rpc.key != "ControlPlane/SetLinkFault" or request is None:
        return False
    caller_region = dict(call.metadata).get(REGION_HEADER, "")
    if not request.partitioned or caller_region in ("", CONTROL_PLANE_REGION):
        return False
    pair = (request.from_region, request.to_region)
    return pair == (CONTROL_PLANE_REGION, caller_region) or (
        pair == (caller_region, CONTROL_PLANE_REGION) and not request.one_way
    )


def problems(call: FuzzCall, outcome: Outcome) -> list[str]:
    """Why `outcome` is not an acceptable answer to `call` (empty when it is)."""
    rpc = call.rpc
    code = outcome.code
    parsed = call.request
    found: list[str] = []
    allowed = set(CLEAR_CODES)
    if rpc.key in FORWARDING:
        allowed.add(Code.UNAVAILABLE)
    if rpc.server_streaming and outcome.cut:
        allowed.add(Code.DEADLINE_EXCEEDED)  # a stream we ended
    if partitions_its_own_answer(call):
        allowed.add(Code.DEADLINE_EXCEEDED)
    if rpc.key in OBJECT_METHODS and outcome.details.startswith("remote "):
        allowed.add(Code.UNKNOWN)
    authorized = call.auth == "token" or not rpc.internal
    if not authorized:
        allowed.add(Code.UNAUTHENTICATED)
    if parsed is None:
        # Bytes that are not the request message: refused as such, before anything runs.
        allowed = {Code.INVALID_ARGUMENT}
        if rpc.client_streaming and not authorized:
            # A stream's headers arrive before its first message: the token is checked first.
            allowed.add(Code.UNAUTHENTICATED)
    elif not authorized and not (rpc.server_streaming and outcome.cut):
        # An internal method without the token refuses, whatever else is wrong.
        allowed = {Code.UNAUTHENTICATED}
    if outcome.write_failed and code == Code.INTERNAL and outcome.details == CLIENT_WRITE_FAILED:
        allowed.add(Code.INTERNAL)  # the server had ended the call: its status is lost
    if code not in allowed:
        found.append(f"{code.name} ({outcome.details!r}) not in {sorted(c.name for c in allowed)}")
    if any(marker in outcome.details for marker in TRANSPORT_FAILURES) and not (
        code == Code.DEADLINE_EXCEEDED and outcome.cut
    ):
        found.append(f"the call failed in transport, not with a status: {outcome.details!r}")
    if code != Code.OK and not outcome.details.strip():
        found.append(f"{code.name} without a message")
    for raw in outcome.responses:
        if parse_or_none(rpc.response, raw) is None:
            found.append(f"a response that is not a {rpc.response.__name__}: {raw[:60]!r}")
    return found


def assert_clear(batch: list[FuzzCall], outcomes: list[Outcome]) -> None:
    bad = [
        f"{call.describe()}\n    -> {'; '.join(reasons)}"
        for call, outcome in zip(batch, outcomes, strict=True)
        if (reasons := problems(call, outcome))
    ]
    assert not bad, f"{len(bad)} unclear answer(s):\n" + "\n".join(bad)


# -- KV: refused writes never reach the log ------------------------------------------------------


def write_keys(request: Any) -> list[tuple[str, str]]:
    """What a write may log: (namespace, key) for KV; ("sql", database) for SQL."""
    if isinstance(request, sql_pb2.SqlCreateRequest):
        return [("sql", request.name)]
    if isinstance(request, sql_pb2.SqlQueryRequest):
        return [("sql", request.database)]
    if isinstance(request, kv_pb2.KvPutManyRequest):
        return [(request.namespace, entry.key) for entry in request.entries]
    return [(request.namespace, request.key)]


def expires(request: Any) -> list[tuple[str, str]]:
    if isinstance(request, sql_pb2.SqlCreateRequest | sql_pb2.SqlQueryRequest):
        return []
    if isinstance(request, kv_pb2.KvPutManyRequest):
        return [
            (request.namespace, entry.key)
            for entry in request.entries
            if entry.expiration or entry.expiration_ttl
        ]
    if isinstance(request, kv_pb2.KvPutRequest) and (request.expiration or request.expiration_ttl):
        return [(request.namespace, request.key)]
    return []


@dataclass
class KvLedger:
    """Which keys accepted writes touched (and which may expire), over the module."""

    expiring: set[tuple[str, str]] = field(default_factory=set)

    def check_batch(
        self, batch: list[FuzzCall], outcomes: list[Outcome], entries: list[kv_pb2.LogEntry]
    ) -> list[str]:
        accepted: set[tuple[str, str]] = set()
        refused: dict[tuple[str, str], tuple[FuzzCall, Outcome]] = {}
        for call, outcome in zip(batch, outcomes, strict=True):
            request = call.request
            if call.rpc.key not in KV_WRITES | SQL_WRITES or request is None:
                continue
            # UNAVAILABLE: the write may or may not have committed.
            if outcome.code in (Code.OK, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                accepted.update(write_keys(request))
                self.expiring.update(expires(request))
            else:
                for key in write_keys(request):
                    refused.setdefault(key, (call, outcome))
        found = []
        for entry in entries:
            key = (entry.namespace, entry.key)
            if entry.op == kv_pb2.LOG_OP_SQL:
                key = ("sql", entry.sql.database)
            if key in accepted:
                continue
            if entry.op == kv_pb2.LOG_OP_DELETE and key in self.expiring:
                continue  # the expiry sweeper
            cause = "no request of this batch"
            if key in refused:
                call, outcome = refused[key]
                cause = f"refused with {outcome.code.name}: {call.describe(200)}"
            found.append(f"log entry {entry.seq} {kv_pb2.LogOp.Name(entry.op)} {key}: {cause}")
        return found


# -- the cluster and its fuzz context --------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started: list[Cluster] = []
    made = _make_factory(Path(tmp_path_factory.mktemp("fuzz-rpc")), started)(FUZZ_TOPOLOGY)
    yield made
    made.down()


@pytest.fixture(scope="module")
def driver(cluster: Cluster) -> Iterator[Driver]:
    made = Driver(cluster)
    yield made
    print(f"\nfuzz: {made.tally.total} gRPC requests")
    for key in sorted(made.tally.sent):
        codes = {code: n for (rpc, code), n in made.tally.codes.items() if rpc == key}
        print(f"  {key:28} {made.tally.sent[key]:6}  {dict(sorted(codes.items()))}")
    made.close()


@pytest.fixture(scope="module")
def ctx(cluster: Cluster, driver: Driver) -> FuzzContext:
    """Seed what valid requests refer to: keys, objects, a deployed worker."""
    for namespace in KV_NAMESPACES:
        for key in KV_KEYS:
            driver.call(
                "Origin/KvPut",
                "origin",
                kv_pb2.KvPutRequest(namespace=namespace, key=key, value=b"seed"),
            )
    for database in SQL_DATABASES:
        driver.call("Origin/SqlCreate", "origin", sql_pb2.SqlCreateRequest(name=database))
        driver.call(
            "Origin/SqlQuery",
            "origin",
            sql_pb2.SqlQueryRequest(
                database=database,
                statements=[
                    sql_pb2.SqlStatement(sql="CREATE TABLE t (id INTEGER PRIMARY KEY, v)"),
                    sql_pb2.SqlStatement(sql="INSERT INTO t (v) VALUES ('seed')"),
                ],
            ),
        )
    pops = tuple(node.name for node in cluster.pops)
    for name in OBJECT_NAMES:
        driver.call(
            "Pop/ObjectCall",
            pops[0],
            objects_pb2.ObjectCallRequest(namespace="Counter", name=name, method="increment"),
        )
    (deployed,) = driver.call(
        "ControlPlane/Deploy",
        "control-plane",
        workers_pb2.DeployRequest(
            bundle=workers_pb2.WorkerBundle(
                files=[
                    workers_pb2.WorkerFile(
                        path="worker.yaml",
                        content=WORKER_YAML.format(name=WORKER_NAMES[0], var="seed").encode(),
                    ),
                    workers_pb2.WorkerFile(path="worker.py", content=WORKER_PY),
                ]
            )
        ),
    )
    return FuzzContext(
        regions=tuple(region.name for region in cluster.topology.regions),
        node_names=tuple(cluster.nodes),
        pop_names=pops,
        kv_namespaces=KV_NAMESPACES,
        kv_keys=KV_KEYS,
        object_names=OBJECT_NAMES,
        worker_names=WORKER_NAMES,
        worker_versions=(deployed.version,),
        sql_databases=SQL_DATABASES,
    )


@pytest.fixture(scope="module")
def ledger() -> KvLedger:
    return KvLedger()


@dataclass(frozen=True)
class Batches:
    """The batch strategies, built once (building a strategy costs more than a draw)."""

    bulk: st.SearchStrategy[list[FuzzCall]]
    admin: st.SearchStrategy[list[FuzzCall]]


@pytest.fixture(scope="module")
def strategies(ctx: FuzzContext) -> Batches:
    messages = MessageStrategies(ctx)
    return Batches(
        bulk=batches(ctx, BULK_RPCS, BULK_BATCH_CALLS, messages),
        admin=batches(ctx, ADMIN_RPCS, ADMIN_BATCH_CALLS, messages),
    )


# -- the tests ------------------------------------------------------------------------------------


@reseeded
@settings(HYPOTHESIS, max_examples=BULK_EXAMPLES)
@given(data=st.data())
def test_fuzzed_calls_to_every_rpc_get_a_clear_status_and_refused_writes_leave_no_trace(
    driver: Driver,
    ctx: FuzzContext,
    strategies: Batches,
    ledger: KvLedger,
    data: st.DataObject,
) -> None:
    batch = data.draw(strategies.bulk, label="batch")
    head_before = driver.origin_head()
    outcomes = driver.run(batch)
    assert_clear(batch, outcomes)
    head_after = driver.origin_head()
    untraced = ledger.check_batch(batch, outcomes, driver.log_entries(head_before, head_after))
    assert not untraced, "writes nobody was told about:\n" + "\n".join(untraced)


@dataclass(frozen=True)
class ControlPlaneState:
    nodes: dict[str, tuple[Any, ...]]
    faults: list[tuple[Any, ...]]
    placements: dict[tuple[str, str], tuple[str, str, int]]
    workers: dict[tuple[str, str], bool]

    @classmethod
    def read(cls, driver: Driver) -> ControlPlaneState:
        (listed,) = driver.call(
            "ControlPlane/ListNodes", "control-plane", control_plane_pb2.ListNodesRequest()
        )
        (topology,) = driver.call(
            "ControlPlane/GetTopology", "control-plane", control_plane_pb2.GetTopologyRequest()
        )
        (placements,) = driver.call(
            "ControlPlane/ListPlacements", "control-plane", objects_pb2.ListPlacementsRequest()
        )
        (workers,) = driver.call(
            "ControlPlane/ListWorkers", "control-plane", workers_pb2.ListWorkersRequest()
        )
        return cls(
            nodes={
                node.name: (
                    node.region,
                    node.role,
                    node.grpc_address,
                    node.http_address,
                    node.metrics_address,
                    node.incarnation,
                )
                for node in listed.nodes
            },
            faults=sorted(
                (f.from_region, f.to_region, f.delay_ms, f.jitter_ms, f.loss, f.partitioned)
                for f in topology.faults
            ),
            placements={
                (p.namespace, p.id): (p.owner, p.standby, p.epoch) for p in placements.placements
            },
            workers={(v.name, v.version): v.active for v in workers.versions},
        )


def touched_changes(request: Any, before: ControlPlaneState, after: ControlPlaneState) -> list[str]:
    """What changed in the part of the control plane a refused `request` named."""
    fields = request.DESCRIPTOR.fields_by_name
    if isinstance(request, control_plane_pb2.RegisterNodeRequest):
        parts = {"node": (before.nodes.get(request.node.name), after.nodes.get(request.node.name))}
    elif "namespace" in fields and "id" in fields:  # an object's placement
        key = (request.namespace, request.id)
        parts = {"placement": (before.placements.get(key), after.placements.get(key))}
    else:  # faults, deploys, and whatever an admin method added later may touch
        parts = {
            "faults": (before.faults, after.faults),
            "workers": (before.workers, after.workers),
        }
    return [f"{name}: {old} -> {new}" for name, (old, new) in parts.items() if old != new]


@reseeded
@settings(HYPOTHESIS, max_examples=ADMIN_EXAMPLES)
@given(data=st.data())
def test_refused_admin_requests_leave_the_control_plane_as_it_was(
    driver: Driver, strategies: Batches, data: st.DataObject
) -> None:
    batch = data.draw(strategies.admin, label="batch")
    for call in batch:
        before = ControlPlaneState.read(driver)
        (outcome,) = driver.run([call])
        assert_clear([call], [outcome])
        request = call.request
        # A call whose answer its own partition held was not refused: it took effect.
        held = outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED and partitions_its_own_answer(call)
        if outcome.code != grpc.StatusCode.OK and request is not None and not held:
            changed = touched_changes(request, before, ControlPlaneState.read(driver))
            assert not changed, f"refused ({outcome.code.name}) but changed: {changed}\n" + (
                call.describe()
            )
        if call.rpc.key == "ControlPlane/SetLinkFault" and (
            outcome.code == grpc.StatusCode.OK or held
        ):
            # Heal at once: a fault left in force would slow or cut the rest of the fuzz.
            driver.call(
                "ControlPlane/ClearFaults", "control-plane", control_plane_pb2.ClearFaultsRequest()
            )


def test_only_a_partition_of_its_own_answer_link_may_hold_a_fault_call() -> None:
    rpc = RPC_BY_KEY["ControlPlane/SetLinkFault"]
    here = CONTROL_PLANE_REGION

    def held(caller_region: str, **fields: Any) -> bool:
        request = control_plane_pb2.SetLinkFaultRequest(**fields)
        metadata = ((REGION_HEADER, caller_region),) if caller_region else ()
        call = FuzzCall(
            rpc, "control-plane", request.SerializeToString(), "valid", "token", metadata
        )
        return partitions_its_own_answer(call)

    assert held("tokyo", from_region=here, to_region="tokyo", partitioned=True, one_way=True)
    assert held("tokyo", from_region="tokyo", to_region=here, partitioned=True)
    # The other way only, another region, no region stated, or no partition: answered.
    assert not held("tokyo", from_region="tokyo", to_region=here, partitioned=True, one_way=True)
    assert not held("london", from_region=here, to_region="tokyo", partitioned=True)
    assert not held("", from_region=here, to_region="tokyo", partitioned=True)
    assert not held("tokyo", from_region=here, to_region="tokyo", delay_ms=5.0)


def test_requests_at_and_past_the_size_limits(driver: Driver, ctx: FuzzContext) -> None:
    """The large boundaries the random strategies leave out (they cost real bandwidth)."""
    namespace = ctx.kv_namespaces[0]
    key = f"fuzz-limit-{uuid.uuid4().hex[:8]}"
    value_max = b"v" * limits.VALUE_BYTES_MAX
    cases: list[tuple[str, Any, set[grpc.StatusCode]]] = [
        (
            "Origin/KvPut",
            kv_pb2.KvPutRequest(namespace=namespace, key=key + "-max", value=value_max),
            {Code.OK},
        ),
        (
            "Origin/KvPut",
            kv_pb2.KvPutRequest(namespace=namespace, key=key, value=value_max + b"v"),
            {Code.INVALID_ARGUMENT},
        ),
        (
            "Pop/KvPut",
            kv_pb2.KvPutRequest(namespace=namespace, key=key, value=value_max + b"v"),
            {Code.INVALID_ARGUMENT},
        ),
        # Past the gRPC message limit: refused by the transport, as RESOURCE_EXHAUSTED.
        (
            "Pop/KvPut",
            kv_pb2.KvPutRequest(
                namespace=namespace, key=key, value=b"v" * (limits.MESSAGE_BYTES_MAX + 1)
            ),
            {Code.RESOURCE_EXHAUSTED},
        ),
        (
            "Pop/KvPutMany",
            kv_pb2.KvPutManyRequest(
                namespace=namespace,
                entries=[
                    kv_pb2.KvPutEntry(key=f"{key}-{i}", value=b"v" * 3000)
                    for i in range(limits.PUT_MANY_ENTRIES_MAX + 1)
                ],
            ),
            {Code.INVALID_ARGUMENT},
        ),
        (
            "Origin/KvPutMany",
            kv_pb2.KvPutManyRequest(
                namespace=namespace,
                entries=[kv_pb2.KvPutEntry(key=key, value=b"v" * 1024)] * 10
                + [kv_pb2.KvPutEntry(key=key, value=value_max + b"v")],
            ),
            {Code.INVALID_ARGUMENT},
        ),
    ]
    head_before = driver.origin_head()
    batch = [
        FuzzCall(
            RPC_BY_KEY[rpc_key],
            "origin" if rpc_key.startswith("Origin") else ctx.pop_names[0],
            request.SerializeToString(),
            "boundary",
            "token",
            (),
        )
        for rpc_key, request, _ in cases
    ]
    outcomes = [driver.run([call])[0] for call in batch]
    for (rpc_key, _, expected), outcome in zip(cases, outcomes, strict=True):
        assert outcome.code in expected, (rpc_key, outcome.code, outcome.details[:200])
        assert outcome.code == Code.OK or outcome.details
    # Only the one accepted put committed; the refused ones left no key. (Only this test's
    # keys: a write an earlier fuzz test left in flight may commit meanwhile.)
    entries = driver.log_entries(head_before, driver.origin_head())
    ours = [(e.namespace, e.key) for e in entries if e.key.startswith(key)]
    assert ours == [(namespace, key + "-max")]


def test_every_node_survived_the_fuzz_and_replicas_converged(
    cluster: Cluster, driver: Driver
) -> None:
    for node in cluster.nodes.values():
        assert cluster.alive(node.name), f"{node.name} died during the fuzz"
        with grpc.insecure_channel(node.grpc_address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING, node.name
    real = set(cluster.nodes)

    def all_healthy() -> bool:
        listed = {info.name: info.healthy for info in cluster.list_nodes()}
        return all(listed.get(name) for name in real if name != "control-plane")

    poll_until(all_healthy, timeout=10, what="every node healthy after the fuzz")
    poll_until(lambda: converged(cluster), timeout=20, what="replicas equal to the origin")
    print(f"\nfuzz: {driver.tally.total} generated gRPC requests in this run")
    assert driver.tally.total >= REQUESTS_MIN, driver.tally.total
    assert set(driver.tally.sent) == {rpc.key for rpc in RPCS}, "every RPC is fuzzed"
