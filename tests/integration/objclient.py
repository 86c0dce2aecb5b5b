"""Durable Object helpers for integration tests: calls, placements, faults, client processes.

Synchronous helpers (`call`, `placement_of`, `partition`, ...) are for the test process.
`ClientPool` runs simulated clients as separate *processes* (spawned, so no gRPC state is
inherited through fork): each process takes one job at a time — N `increment` calls on
one Counter from one region through the PoP `ControlPlane.Route` picks for it — and
answers with what each call returned. Clients set their own request ids and retry
UNAVAILABLE / DEADLINE_EXCEEDED with the same id (re-routing each time), so a retried
call is never run twice; what was acknowledged is exactly what a reply came back for.
`DocClient` is an asyncio `ObjectConnect` client for `DocumentSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import multiprocessing.connection
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import lmdb
from prometheus_client.parser import text_string_to_metric_families

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import control_plane_pb2_grpc as cp_grpc
from edge.v1 import objects_pb2, pop_pb2, pop_pb2_grpc
from edgectl.chaos.checks import CheckResult, FinalState, check
from edgectl.chaos.history import History, Op
from edgectl.launcher import Cluster
from edgepop import objectid
from edgepop.kvstore import namespace_hash
from edgepop.netem import REGION_HEADER, sent_at_metadata
from tests.conftest import poll_until
from tests.integration.kvclient import OPTIONS

CLIENT_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
CLIENT_BACKOFF_S = (0.05, 0.1, 0.2)


# -- calls from the test process -----------------------------------------------------------


def auth(cluster: Cluster) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {cluster.token}")]


def object_id(namespace: str, name: str) -> str:
    return objectid.id_from_name(namespace, name).hex()


def region_metadata(region: str) -> list[tuple[str, str]]:
    """A simulated client's location, and its send time for accurate emulated latency."""
    metadata = [sent_at_metadata()]
    if region:
        metadata.append((REGION_HEADER, region))
    return metadata


@contextlib.contextmanager
def pop_stub(cluster: Cluster, node: str) -> Iterator[pop_pb2_grpc.PopStub]:
    with grpc.insecure_channel(cluster.node(node).grpc_address, options=OPTIONS) as channel:
        yield pop_pb2_grpc.PopStub(channel)


@contextlib.contextmanager
def cp_stub(cluster: Cluster) -> Iterator[cp_grpc.ControlPlaneStub]:
    with grpc.insecure_channel(cluster.control_plane.grpc_address) as channel:
        yield cp_grpc.ControlPlaneStub(channel)


def call(
    cluster: Cluster,
    node: str,
    method: str,
    args: Any = None,
    *,
    namespace: str = "Counter",
    name: str = "",
    id: str = "",
    region: str = "",
    location_hint: str = "",
    request_id: str = "",
    args_json: str | None = None,
    timeout: float = 10.0,
) -> objects_pb2.ObjectCallResponse:
    """One `Pop.ObjectCall` at `node` from a client in `region` (raises grpc.RpcError)."""
    request = objects_pb2.ObjectCallRequest(
        namespace=namespace,
        name=name,
        id=id,
        method=method,
        args_json=args_json
        if args_json is not None
        else ("" if args is None else json.dumps(args)),
        location_hint=location_hint,
        request_id=request_id,
    )
    with pop_stub(cluster, node) as stub:
        response: objects_pb2.ObjectCallResponse = stub.ObjectCall(
            request, metadata=region_metadata(region), timeout=timeout
        )
        return response


def result(response: objects_pb2.ObjectCallResponse) -> Any:
    return json.loads(response.result_json)


def call_error(function: Callable[[], Any]) -> grpc.RpcError:
    """The RpcError `function` raises (fails the test if it returns)."""
    try:
        function()
    except grpc.RpcError as error:
        return error
    raise AssertionError("the call succeeded; an error was expected")


def copy_holds(cluster: Cluster, node: str, namespace: str, name: str, value: int) -> bool:
    """`node`'s own copy of a Counter holds `value`. Read from its LMDB file (read-only, as
    one more reader): any RPC that asks a node about its copy would also change it."""
    env = lmdb.open(f"{cluster.node(node).data_dir}/objects", readonly=True, max_dbs=32)
    try:
        data = env.open_db(b"do_data", create=False)
        key = namespace_hash(namespace) + objectid.id_from_name(namespace, name) + b"value"
        with env.begin() as txn:
            raw = txn.get(key, db=data)
    finally:
        env.close()
    return raw is not None and int(raw) == value


def placements(cluster: Cluster) -> dict[str, objects_pb2.Placement]:
    """Every placement, by object id."""
    with cp_stub(cluster) as stub:
        response = stub.ListPlacements(
            objects_pb2.ListPlacementsRequest(), metadata=auth(cluster), timeout=5
        )
    return {placement.id: placement for placement in response.placements}


def placement_of(cluster: Cluster, namespace: str, name: str) -> objects_pb2.Placement | None:
    return placements(cluster).get(object_id(namespace, name))


def route(cluster: Cluster, region: str) -> cp_pb2.RouteResponse:
    with cp_stub(cluster) as stub:
        response: cp_pb2.RouteResponse = stub.Route(cp_pb2.RouteRequest(region=region), timeout=5)
        return response


def partition(cluster: Cluster, region_a: str, region_b: str) -> None:
    """Cut both directions between two regions (ControlPlane.SetLinkFault)."""
    with cp_stub(cluster) as stub:
        stub.SetLinkFault(
            cp_pb2.SetLinkFaultRequest(from_region=region_a, to_region=region_b, partitioned=True),
            metadata=auth(cluster),
            timeout=5,
        )


def delay(cluster: Cluster, from_region: str, to_region: str, delay_ms: float) -> None:
    """Extra one-way delay on every message from one region to another."""
    with cp_stub(cluster) as stub:
        stub.SetLinkFault(
            cp_pb2.SetLinkFaultRequest(
                from_region=from_region, to_region=to_region, delay_ms=delay_ms, one_way=True
            ),
            metadata=auth(cluster),
            timeout=5,
        )


def status_rtt_s(cluster: Cluster, node: str, region: str) -> float:
    """One `Pop.Status` round trip to `node` from a client in `region`, timed."""
    with pop_stub(cluster, node) as stub:
        started = time.perf_counter()
        stub.Status(pop_pb2.PopStatusRequest(), metadata=region_metadata(region), timeout=30)
        return time.perf_counter() - started


def clear_faults(cluster: Cluster) -> None:
    with cp_stub(cluster) as stub:
        stub.ClearFaults(cp_pb2.ClearFaultsRequest(), metadata=auth(cluster), timeout=5)


def healthy(cluster: Cluster) -> set[str]:
    try:
        return {info.name for info in cluster.list_nodes() if info.healthy}
    except grpc.RpcError:
        return set()


def make_whole(cluster: Cluster, timeout: float) -> None:
    """Start every node that is not running, then wait until all but the control plane
    report healthy."""
    for node in cluster.nodes.values():
        if not cluster.alive(node.name):
            cluster.start(node.name)
    poll_until(
        lambda: healthy(cluster) >= set(cluster.nodes) - {"control-plane"},
        timeout=timeout,
        what="every node healthy",
    )


@contextlib.contextmanager
def kept_whole(cluster: Cluster, timeout: float) -> Iterator[Cluster]:
    """`cluster` whole (`make_whole`) before the block and, faults cleared, after it: for
    module clusters shared by tests that kill nodes and cut links."""
    make_whole(cluster, timeout)
    try:
        yield cluster
    finally:
        clear_faults(cluster)
        make_whole(cluster, timeout)


def metric_samples(cluster: Cluster, node: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample on a node's /metrics as (name, labels, value)."""
    address = cluster.node(node).metrics_address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


class IncrementLoop(threading.Thread):
    """Sequential increments through one PoP until stopped, each retried (same request id)
    on UNAVAILABLE / DEADLINE_EXCEEDED; records what each attempt saw."""

    def __init__(
        self, cluster: Cluster, node: str, name: str, region: str, attempt_timeout_s: float = 2.0
    ) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.node = node
        self.name = name
        self.region = region
        self.attempt_timeout_s = attempt_timeout_s
        self.stop = threading.Event()
        self.acknowledged: list[CallRecord] = []
        self.failures: list[tuple[float, str]] = []  # (wall time, code) of failed attempts
        self.attempted = 0
        # The call being retried when the loop was stopped: it may have run.
        self.unfinished: CallRecord | None = None

    def run(self) -> None:
        index = 0
        while not self.stop.is_set():
            record = CallRecord(request_id=f"{self.name}-loop-{index}", ok=False)
            record.sent_at = time.time()
            self.attempted += 1
            while not self.stop.is_set():
                record.attempts += 1
                try:
                    response = call(
                        self.cluster,
                        self.node,
                        "increment",
                        name=self.name,
                        region=self.region,
                        request_id=record.request_id,
                        timeout=self.attempt_timeout_s,
                    )
                except grpc.RpcError as error:
                    self.failures.append((time.time(), error.code().name))
                    if error.code() not in CLIENT_RETRYABLE:
                        raise
                    # A pause between retries of one call (not a synchronisation).
                    self.stop.wait(0.05)
                    continue
                record.ok, record.acked_at = True, time.time()
                record.value, record.epoch = int(result(response)), int(response.epoch)
                record.node = response.node
                self.acknowledged.append(record)
                break
            if not record.ok and record.attempts:
                record.gave_up_at = time.time()
                self.unfinished = record
            index += 1

    def longest_gap_s(self) -> float:
        """The longest time between consecutive acknowledgements."""
        times = [record.acked_at for record in self.acknowledged]
        return max((later - earlier for earlier, later in itertools.pairwise(times)), default=0)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=30)


# -- client processes ---------------------------------------------------------------------


@dataclass
class IncrementJob:
    """N `increment` calls on one Counter from `region`, `in_flight` at a time."""

    control_plane: str
    region: str
    name: str
    count: int
    tag: str  # request-id prefix, unique per client and run
    in_flight: int = 8
    namespace: str = "Counter"
    # Wall-clock time to start at (all clients of a run start together); 0 = at once.
    start_at: float = 0.0
    call_timeout_s: float = 5.0
    give_up_s: float = 30.0


@dataclass
class CallRecord:
    request_id: str
    ok: bool
    value: int = 0
    epoch: int = 0
    node: str = ""
    entry: str = ""  # the PoP the acknowledged attempt went to
    sent_at: float = 0.0  # wall time of the first attempt
    acked_at: float = 0.0  # wall time the reply arrived (0 = never)
    attempts: int = 0
    error: str = ""
    # Wall time the client gave up on a call that got no reply (0 = acknowledged, or
    # still in flight): the end of the window in which it may have taken effect.
    gave_up_at: float = 0.0
    method: str = "increment"


async def _run_increment_job(job: IncrementJob, progress: Any) -> list[CallRecord]:
    channels: dict[str, grpc.aio.Channel] = {}

    def channel_to(address: str) -> grpc.aio.Channel:
        if address not in channels:
            channels[address] = grpc.aio.insecure_channel(address, options=OPTIONS)
        return channels[address]

    control_plane = cp_grpc.ControlPlaneStub(channel_to(job.control_plane))
    entry: dict[str, str] = {}

    async def entry_address(refresh: bool) -> str:
        if refresh or "address" not in entry:
            routed = await control_plane.Route(cp_pb2.RouteRequest(region=job.region), timeout=2)
            entry["address"], entry["name"] = routed.grpc_address, routed.name
        return entry["address"]

    async def one(index: int) -> CallRecord:
        record = CallRecord(request_id=f"{job.tag}-{index}", ok=False, sent_at=time.time())
        request = objects_pb2.ObjectCallRequest(
            namespace=job.namespace,
            name=job.name,
            method="increment",
            request_id=record.request_id,
        )
        deadline = time.monotonic() + job.give_up_s
        refresh = False
        while True:
            record.attempts += 1
            try:
                address = await entry_address(refresh)
                stub = pop_pb2_grpc.PopStub(channel_to(address))
                remaining = max(0.05, min(job.call_timeout_s, deadline - time.monotonic()))
                response = await stub.ObjectCall(
                    request, metadata=region_metadata(job.region), timeout=remaining
                )
            except grpc.aio.AioRpcError as error:
                record.error = f"{error.code().name}: {error.details()}"
                if error.code() not in CLIENT_RETRYABLE or time.monotonic() >= deadline:
                    record.gave_up_at = time.time()
                    return record
                refresh = True
                backoff = CLIENT_BACKOFF_S[min(record.attempts - 1, len(CLIENT_BACKOFF_S) - 1)]
                await asyncio.sleep(backoff)
                continue
            record.ok = True
            record.acked_at = time.time()
            record.value = int(json.loads(response.result_json))
            record.epoch = int(response.epoch)
            record.node = response.node
            record.entry = entry.get("name", "")
            record.error = ""
            with progress.get_lock():
                progress.value += 1
            return record

    if job.start_at:
        await asyncio.sleep(max(0.0, job.start_at - time.time()))
    indices = iter(range(job.count))
    records: list[CallRecord] = []

    async def worker() -> None:
        for index in indices:
            records.append(await one(index))

    try:
        await asyncio.gather(*(worker() for _ in range(job.in_flight)))
    finally:
        for open_channel in channels.values():
            await open_channel.close(grace=None)
    return sorted(records, key=lambda record: int(record.request_id.rsplit("-", 1)[1]))


def _worker_main(connection: multiprocessing.connection.Connection, progress: Any) -> None:
    """A client process: run jobs until told to stop (None)."""
    while True:
        job = connection.recv()
        if job is None:
            return
        try:
            records = asyncio.run(_run_increment_job(job, progress))
            connection.send(("ok", [asdict(record) for record in records]))
        except Exception as error:  # reported to the test, which fails with it
            connection.send(("error", repr(error)))


@dataclass
class ClientProcess:
    process: multiprocessing.process.BaseProcess
    connection: multiprocessing.connection.Connection
    busy: bool = False


@dataclass
class ClientPool:
    """`size` long-lived client processes; `start` gives each one job, `wait` collects."""

    size: int
    clients: list[ClientProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.progress = context.Value("i", 0)
        for _ in range(self.size):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(child, self.progress), daemon=True)
            process.start()
            child.close()
            self.clients.append(ClientProcess(process, parent))

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(OSError, BrokenPipeError):
                client.connection.send(None)
        for client in self.clients:
            client.process.join(timeout=10)
            if client.process.is_alive():
                client.process.kill()
                client.process.join(timeout=5)

    @property
    def acknowledged(self) -> int:
        """Calls acknowledged so far in the current run (all processes)."""
        return int(self.progress.value)

    def start(self, jobs: list[IncrementJob]) -> None:
        if len(jobs) > self.size:
            raise ValueError(f"{len(jobs)} jobs for {self.size} client processes")
        with self.progress.get_lock():
            self.progress.value = 0
        for client, job in zip(self.clients, jobs, strict=False):
            client.connection.send(job)
            client.busy = True

    def wait(self, timeout: float) -> list[list[CallRecord]]:
        deadline = time.monotonic() + timeout
        results = []
        for client in self.clients:
            if not client.busy:
                continue
            if not client.connection.poll(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"client process gave no answer within {timeout} s")
            status, payload = client.connection.recv()
            client.busy = False
            if status != "ok":
                raise AssertionError(f"client process failed: {payload}")
            results.append([CallRecord(**record) for record in payload])
        return results

    def run(self, jobs: list[IncrementJob], timeout: float) -> list[list[CallRecord]]:
        self.start(jobs)
        return self.wait(timeout)


# -- histories for the checker of the fault runs -------------------------------------------


def recorded_call(
    cluster: Cluster, node: str, method: str, *, name: str, region: str = "", **kwargs: Any
) -> tuple[objects_pb2.ObjectCallResponse, CallRecord]:
    """`call`, with the record the history checker needs (raises as `call` does)."""
    record = CallRecord(request_id=kwargs.get("request_id", ""), ok=False, method=method)
    record.sent_at = time.time()
    record.attempts = 1
    response = call(cluster, node, method, name=name, region=region, **kwargs)
    record.ok, record.acked_at = True, time.time()
    record.value, record.epoch, record.node = int(result(response)), response.epoch, response.node
    return response, record


def counter_history(key: str, records: Sequence[CallRecord]) -> History:
    """The Counter calls of a test as the fault runs' history (`edgectl.chaos.history`).

    A call with a reply is "ok" with what it returned and where it ran; one without is
    indeterminate ("info"): it may have taken effect at any time after its first send.
    Times are wall-clock seconds since the first send (every client is on this machine).
    Each call is its own process: a client process keeps several in flight, and the
    history's processes run one op at a time.
    """
    started = min(record.sent_at for record in records)
    ops = []
    for number, record in enumerate(records):
        ended = record.acked_at if record.ok else record.gave_up_at
        ops.append(
            Op(
                id=number,
                process=record.request_id or f"call-{number}",
                key=key,
                f=record.method,
                invoke_s=record.sent_at - started,
                status="ok" if record.ok else "info",
                output=record.value if record.ok else None,
                complete_s=ended - started if ended else None,
                meta={
                    "node": record.node,
                    "epoch": record.epoch,
                    "request_id": record.request_id,
                    "attempts": record.attempts,
                },
            )
        )
    return History(ops)


def check_counter(
    key: str, records: Sequence[CallRecord], final_value: int, owner: str, epoch: int
) -> CheckResult:
    """Every guarantee of the fault runs' checker over one Counter's calls: linearizable
    in real-time order (retried and indeterminate calls included), nothing acknowledged
    lost, no value twice, nothing applied twice, one node per epoch, no deposed owner."""
    final = FinalState(counters={key: final_value}, placements={key: (owner, epoch)})
    return check(counter_history(key, records), final)


def describe_violations(checked: CheckResult) -> str:
    return "; ".join(f"{v.kind} on {v.key}: {v.message}" for v in checked.violations)


# -- DocumentSession clients (asyncio, in the test process) -----------------------------------


@dataclass
class Connection:
    """One ObjectConnect stream: where it went and what arrived on it, in order."""

    node: str
    opened: objects_pb2.ObjectOpened | None = None
    arrivals: list[int] = field(default_factory=list)
    closed: str = ""
    # The `last_seen` its hello carried: the object owes it every op after this, in order.
    resumed_from: int = 0


class DocClient:
    """A collaborative-document client: sends ops, records every op it sees with its seq.

    An op is acknowledged when the sender sees it come back with a seq. After a session
    ends (`closed`, or the stream breaks), `reconnect` opens a new one and says hello with
    the highest seq up to which it has seen every op.
    """

    def __init__(self, cluster: Cluster, name: str, region: str, document: str) -> None:
        self.cluster = cluster
        self.name = name
        self.region = region
        self.document = document
        self.seen: dict[int, Any] = {}
        self.acknowledged: dict[str, int] = {}  # own op id -> seq
        self.sent: list[str] = []
        self.connections: list[Connection] = []
        self._call: Any = None
        self._channel: grpc.aio.Channel | None = None
        self._reader: asyncio.Task[None] | None = None
        self.live = asyncio.Event()

    @property
    def contiguous(self) -> int:
        """Every op up to this seq has been seen."""
        seq = 0
        while seq + 1 in self.seen:
            seq += 1
        return seq

    async def connect(self, node: str, timeout: float = 10.0) -> objects_pb2.ObjectOpened:
        await self.close()
        self._channel = grpc.aio.insecure_channel(
            self.cluster.node(node).grpc_address, options=OPTIONS
        )
        stub = pop_pb2_grpc.PopStub(self._channel)
        self._call = stub.ObjectConnect(metadata=region_metadata(self.region))
        connection = Connection(node)
        self.connections.append(connection)
        await self._call.write(
            objects_pb2.ObjectClientMessage(
                open=objects_pb2.ObjectOpen(namespace="DocumentSession", name=self.document)
            )
        )
        first = await asyncio.wait_for(self._call.read(), timeout)
        if first is grpc.aio.EOF or not first.HasField("opened"):
            raise AssertionError(f"{self.name}: session at {node} did not open: {first}")
        connection.opened = first.opened
        # Join: receive every op after the last contiguous one seen (0 for a new client).
        connection.resumed_from = self.contiguous
        await self._send({"type": "hello", "last_seen": connection.resumed_from})
        self.live.set()
        self._reader = asyncio.ensure_future(self._read(self._call, connection))
        opened: objects_pb2.ObjectOpened = first.opened
        return opened

    async def _read(self, stream: Any, connection: Connection) -> None:
        try:
            while True:
                message = await stream.read()
                if message is grpc.aio.EOF:
                    connection.closed = connection.closed or "EOF"
                    break
                if message.HasField("closed"):
                    connection.closed = message.closed.reason or "closed"
                    continue
                if not message.HasField("data"):
                    continue
                data = json.loads(message.data)
                if data.get("type") != "op":
                    continue
                seq = int(data["seq"])
                connection.arrivals.append(seq)
                if seq in self.seen and self.seen[seq] != data["op"]:
                    raise AssertionError(
                        f"{self.name}: seq {seq} was {self.seen[seq]!r}, now {data['op']!r}"
                    )
                self.seen[seq] = data["op"]
                op = data["op"]
                if isinstance(op, dict) and op.get("client") == self.name:
                    self.acknowledged.setdefault(op["id"], seq)
        except grpc.aio.AioRpcError as error:
            connection.closed = f"stream error: {error.code().name}"
        finally:
            self.live.clear()

    async def _send(self, message: dict[str, Any]) -> None:
        await self._call.write(objects_pb2.ObjectClientMessage(data=json.dumps(message)))

    async def send_op(self, op_id: str) -> bool:
        """Send one op; False when the session is not live (the op is not sent)."""
        if not self.live.is_set():
            return False
        try:
            await self._send({"type": "op", "op": {"client": self.name, "id": op_id}})
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return False
        self.sent.append(op_id)
        return True

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
        self.live.clear()


async def apoll_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """`poll_until` for coroutines: wait (without blocking the loop) until `condition()`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(interval)
