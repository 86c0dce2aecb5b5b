"""Load generators. Each runs in a load-generator process (see `bench.runner`).

A client that shares a process (and so an event loop and a GIL) with the bench's
scrapers, or with a server, measures that contention rather than the server. So the
runner keeps a pool of spawned load-generator processes and sends them a spec; every
function here takes one frozen spec, runs its own event loop and returns a plain result.

Clients send pre-serialised request bytes and keep raw response bytes where they can:
the client's own protobuf work would otherwise be a large share of what is measured,
and it is the same on both sides of a comparison anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.probe import cpu_seconds
from bench.resp import RespConnection, encode, info_fields
from bench.stats import summarize

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# Latencies kept per run for percentiles; beyond this every n-th is kept.
LATENCY_SAMPLES_MAX = 200_000


def warm() -> int:
    """A no-op that makes a load-generator process import its modules before any
    measurement."""
    return 0


# -- closed loop: N callers, each with one call in flight ---------------------------------


@dataclass(frozen=True)
class UnaryLoad:
    address: str
    # Full method path, e.g. "/edge.v1.Pop/KvGet"; requests and responses stay bytes.
    method: str
    payloads: tuple[bytes, ...]
    concurrency: int
    duration_s: float
    # Calls made on the same channel before the clock starts (not counted).
    warmup_s: float = 0.0
    # The server's pid: its CPU time over the measured window is reported per call.
    server_pid: int = 0
    timeout_s: float = 10.0
    # Other processes the call keeps busy (a standby, the owner behind a forwarding PoP):
    # their CPU time over the same window is reported apart.
    extra_pids: tuple[int, ...] = ()


@dataclass
class UnaryResult:
    calls: int
    errors: int
    elapsed_s: float
    rate_per_s: float
    latency_s: dict[str, float]
    server_cpu_s: float
    client_cpu_s: float
    extra_cpu_s: float = 0.0

    @property
    def server_cpu_per_call_us(self) -> float:
        return 1e6 * self.server_cpu_s / self.calls if self.calls else math.nan


def closed_loop(spec: UnaryLoad) -> UnaryResult:
    return asyncio.run(_closed_loop(spec))


async def _closed_loop(spec: UnaryLoad) -> UnaryResult:
    async with grpc.aio.insecure_channel(spec.address, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(spec.method)
        await asyncio.wait_for(channel.channel_ready(), spec.timeout_s)
        await call(spec.payloads[0], timeout=spec.timeout_s)
        if spec.warmup_s > 0:
            await _drive(call, spec, spec.warmup_s)
        return await _drive(call, spec, spec.duration_s, measure=True)


async def _drive(
    call: Any, spec: UnaryLoad, duration_s: float, measure: bool = False
) -> UnaryResult:
    latencies: list[float] = []
    errors = 0
    payloads = spec.payloads
    stop_at = time.perf_counter() + duration_s

    async def caller(offset: int) -> None:
        nonlocal errors
        index = offset
        clock = time.perf_counter
        while True:
            started = clock()
            if started >= stop_at:
                return
            try:
                await call(payloads[index % len(payloads)], timeout=spec.timeout_s)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(clock() - started)
            index += 1

    server_cpu = cpu_seconds(spec.server_pid) if measure and spec.server_pid else 0.0
    extra_cpu = sum(cpu_seconds(pid) for pid in spec.extra_pids) if measure else 0.0
    client_cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(caller(offset) for offset in range(spec.concurrency)))
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    if measure and spec.server_pid:
        server_cpu = cpu_seconds(spec.server_pid) - server_cpu
    if measure:
        extra_cpu = sum(cpu_seconds(pid) for pid in spec.extra_pids) - extra_cpu
    return UnaryResult(
        calls=len(latencies),
        errors=errors,
        elapsed_s=elapsed,
        rate_per_s=len(latencies) / elapsed if elapsed > 0 else 0.0,
        latency_s=summarize(latencies[:: max(1, len(latencies) // LATENCY_SAMPLES_MAX)]),
        server_cpu_s=server_cpu,
        client_cpu_s=client_cpu,
        extra_cpu_s=extra_cpu,
    )


# -- open loop: writes paced at a fixed rate ----------------------------------------------


@dataclass(frozen=True)
class PacedWrites:
    """KvPut to the origin at `rate_per_s`, whatever the replies do (open loop).

    With `sample_every` N > 0, each value starts `<index>:<send time ns>:` (the client's
    wall clock just before the call, what a reader elsewhere measures from) and the
    result keeps the seq of every N-th write (those a visibility reader watches)."""

    address: str
    rate_per_s: float
    duration_s: float
    namespace: str = "bench"
    key_prefix: str = "prop"
    value_bytes: int = 100
    timeout_s: float = 10.0
    # Wall clock at which to start (a reader in another process keeps the same schedule).
    start_at: float = 0.0
    sample_every: int = 0


@dataclass
class PacedResult:
    sent: int
    acked: int
    errors: int
    unfinished: int
    elapsed_s: float
    last_seq: int
    # How far behind its schedule the sender was at each send (open-loop fidelity).
    send_lateness_s: dict[str, float]
    ack_latency_s: dict[str, float]
    first_error: str = ""
    # Index -> seq of the sampled writes (see PacedWrites.sample_every).
    sampled_seqs: dict[int, int] = field(default_factory=dict)


async def _paced(
    rate_per_s: float, duration_s: float, send: Any, on_tick: Any = None
) -> tuple[int, float, list[float]]:
    """Call `send(i)` on schedule i / rate; several at once when the loop woke late."""
    total = max(1, round(rate_per_s * duration_s))
    lateness: list[float] = []
    started = time.perf_counter()
    for index in range(total):
        due = started + index / rate_per_s
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
            now = time.perf_counter()
        lateness.append(now - due)
        send(index)
    return total, time.perf_counter() - started, lateness


def paced_puts(spec: PacedWrites) -> PacedResult:
    return asyncio.run(_paced_puts(spec))


async def _paced_puts(spec: PacedWrites) -> PacedResult:
    from edge.v1 import kv_pb2

    value = b"v" * spec.value_bytes
    acks: list[float] = []
    errors: list[str] = []
    last_seq = 0
    sampled: dict[int, int] = {}
    tasks: set[asyncio.Task[None]] = set()
    async with grpc.aio.insecure_channel(spec.address, options=CHANNEL_OPTIONS) as channel:
        put = channel.unary_unary(
            "/edge.v1.Origin/KvPut",
            request_serializer=kv_pb2.KvPutRequest.SerializeToString,
            response_deserializer=kv_pb2.KvPutResponse.FromString,
        )
        await asyncio.wait_for(channel.channel_ready(), spec.timeout_s)

        async def one(index: int) -> None:
            nonlocal last_seq
            payload = value
            if spec.sample_every:
                stamp = f"{index}:{time.time_ns()}:".encode()
                payload = stamp + value[len(stamp) :]
            request = kv_pb2.KvPutRequest(
                namespace=spec.namespace, key=f"{spec.key_prefix}-{index}", value=payload
            )
            started = time.perf_counter()
            try:
                response = await put(request, timeout=spec.timeout_s)
            except grpc.aio.AioRpcError as error:
                errors.append(f"{error.code().name}: {error.details()} (write {index})")
                return
            acks.append(time.perf_counter() - started)
            last_seq = max(last_seq, response.seq)
            if spec.sample_every and index % spec.sample_every == 0:
                sampled[index] = response.seq

        def send(index: int) -> None:
            task = asyncio.create_task(one(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        if spec.start_at:
            await asyncio.sleep(max(0.0, spec.start_at - time.time()))
        sent, elapsed, lateness = await _paced(spec.rate_per_s, spec.duration_s, send)
        if tasks:
            await asyncio.wait(list(tasks), timeout=spec.timeout_s)
        # Writes still unanswered after the timeout are counted, not reported as errors.
        unfinished = len(tasks)
        for task in list(tasks):
            task.cancel()
    return PacedResult(
        sent=sent,
        acked=len(acks),
        errors=len(errors),
        unfinished=unfinished,
        elapsed_s=elapsed,
        last_seq=last_seq,
        send_lateness_s=summarize(lateness),
        ack_latency_s=summarize(acks),
        first_error=errors[0] if errors else "",
        sampled_seqs=sampled,
    )


# -- visibility at every PoP: client send -> readable there ---------------------------------


@dataclass(frozen=True)
class VisibilityWatch:
    """For every `sample_every`-th write of a `PacedWrites` run with the same schedule,
    a BOOKMARK read at each PoP, sent `lead_s` before the write is due.

    The read waits inside the PoP (an event, not polling) until the replica has applied
    the seq the write is expected to get (`base_seq` + 1 + its index: one writer, nothing
    else writing), and comes back with the value: the time it arrives, minus the send
    time stamped in the value, is client send -> visible to a reader at that PoP, the
    interval the Redis baseline measures. A read that finds nothing (the write took a
    later seq) asks again from the seq it saw. A sampled reader (one write in 50 by
    default) keeps this client far from being the bottleneck: 12 PoPs x 20 writes/s is
    240 reads/s."""

    pop_addresses: tuple[str, ...]
    rate_per_s: float
    duration_s: float
    start_at: float
    base_seq: int
    key_prefix: str
    namespace: str = "bench"
    sample_every: int = 50
    lead_s: float = 0.05
    # A BOOKMARK read waits min(2 s, half its deadline) before it asks the origin instead.
    timeout_s: float = 4.0


@dataclass
class VisibilitySample:
    index: int
    delay_s: float  # client send -> the read's reply here
    min_seq: int  # the seq the answering read waited for
    early: bool  # the read was sent before the write (else the delay may be overstated)
    waited_s: float  # how long the answering read took (>= 2 s: the origin answered)


@dataclass
class VisibilityResult:
    # Per PoP (in spec order): one sample per watched write that was found.
    samples: list[list[VisibilitySample]]
    errors: int
    first_error: str
    reads: int
    send_lateness_s: dict[str, float]
    # The reader's own CPU over the run and how long it ran: it must stay far from a core.
    cpu_s: float = 0.0
    elapsed_s: float = 0.0


def watch_visibility(spec: VisibilityWatch) -> VisibilityResult:
    return asyncio.run(_watch_visibility(spec))


async def _watch_visibility(spec: VisibilityWatch) -> VisibilityResult:
    from edge.v1 import kv_pb2, pop_pb2_grpc

    channels = [
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        for address in spec.pop_addresses
    ]
    stubs = [pop_pb2_grpc.PopStub(channel) for channel in channels]
    samples: list[list[VisibilitySample]] = [[] for _ in stubs]
    errors: list[str] = []
    reads = 0
    tasks: set[asyncio.Task[None]] = set()

    async def watch(pop: int, index: int) -> None:
        nonlocal reads
        key = f"{spec.key_prefix}-{index}"
        min_seq = spec.base_seq + 1 + index
        read_sent_ns = time.time_ns()
        for _ in range(100):  # a write reordered by a few seqs needs a few reads
            asked = time.perf_counter()
            reads += 1
            try:
                reply = await stubs[pop].KvGet(
                    kv_pb2.KvGetRequest(
                        namespace=spec.namespace,
                        key=key,
                        consistency=kv_pb2.CONSISTENCY_BOOKMARK,
                        min_seq=min_seq,
                    ),
                    timeout=spec.timeout_s,
                )
            except grpc.aio.AioRpcError as error:
                errors.append(f"{error.code().name}: {error.details()} (write {index})")
                return
            seen_ns = time.time_ns()
            if reply.found:
                written, sent_ns, _ = bytes(reply.value).split(b":", 2)
                if int(written) != index:
                    errors.append(f"write {index} read back as write {int(written)}")
                    return
                samples[pop].append(
                    VisibilitySample(
                        index=index,
                        delay_s=(seen_ns - int(sent_ns)) / 1e9,
                        min_seq=min_seq,
                        early=read_sent_ns < int(sent_ns),
                        waited_s=time.perf_counter() - asked,
                    )
                )
                return
            min_seq = max(min_seq, reply.applied_seq) + 1
        errors.append(f"write {index} not found after 100 reads")

    def send(slot: int) -> None:
        for pop in range(len(stubs)):
            task = asyncio.create_task(watch(pop, slot * spec.sample_every))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    cpu_started, started = time.process_time(), time.perf_counter()
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))
        # The write schedule is i / rate from start_at; the reads go out lead_s earlier.
        await asyncio.sleep(max(0.0, spec.start_at - spec.lead_s - time.time()))
        _, _, lateness = await _paced(spec.rate_per_s / spec.sample_every, spec.duration_s, send)
        if tasks:
            await asyncio.wait(list(tasks), timeout=spec.timeout_s * 2)
    finally:
        for channel in channels:
            await channel.close()
    return VisibilityResult(
        samples,
        len(errors),
        errors[0] if errors else "",
        reads,
        summarize(lateness),
        cpu_s=time.process_time() - cpu_started,
        elapsed_s=time.perf_counter() - started,
    )


# -- sustained bulk writes ----------------------------------------------------------------


@dataclass(frozen=True)
class PutManyLoad:
    """KvPutMany batches to the origin, `concurrency` in flight, for `duration_s`."""

    address: str
    duration_s: float
    batch_entries: int = 500
    value_bytes: int = 100
    concurrency: int = 2
    # Distinct batches (distinct keys) cycled through; later ones overwrite earlier keys.
    distinct_batches: int = 20
    namespace: str = "bench"
    timeout_s: float = 30.0
    # Keys: a batch's share a prefix (`bulk-BATCH-INDEX`, as a bulk load's usually do), or
    # are random (uuid4 hex: no two of a batch are neighbours in the store).
    random_keys: bool = False


@dataclass
class PutManyResult:
    batches: int
    entries: int
    errors: int
    started_at: float  # wall clock, for lining up with the scrapes
    elapsed_s: float
    first_seq: int
    last_seq: int
    ack_latency_s: dict[str, float]
    # (wall time, acked seq) after each reply: the origin's side of the timeline.
    acked: list[tuple[float, int]] = field(default_factory=list)
    first_error: str = ""


def put_many(spec: PutManyLoad) -> PutManyResult:
    return asyncio.run(_put_many(spec))


async def _put_many(spec: PutManyLoad) -> PutManyResult:
    from edge.v1 import kv_pb2

    value = b"p" * spec.value_bytes

    def key(batch: int, index: int) -> str:
        return uuid.uuid4().hex if spec.random_keys else f"bulk-{batch}-{index}"

    payloads = [
        kv_pb2.KvPutManyRequest(
            namespace=spec.namespace,
            entries=[
                kv_pb2.KvPutEntry(key=key(batch, index), value=value)
                for index in range(spec.batch_entries)
            ],
        ).SerializeToString()
        for batch in range(spec.distinct_batches)
    ]
    acks: list[float] = []
    acked: list[tuple[float, int]] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(spec.address, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(
            "/edge.v1.Origin/KvPutMany",
            response_deserializer=kv_pb2.KvPutManyResponse.FromString,
        )
        await asyncio.wait_for(channel.channel_ready(), spec.timeout_s)
        counter = iter(range(1 << 62))
        started_at = time.time()
        started = time.perf_counter()
        stop_at = started + spec.duration_s

        async def writer() -> None:
            while time.perf_counter() < stop_at:
                payload = payloads[next(counter) % len(payloads)]
                sent = time.perf_counter()
                try:
                    response = await call(payload, timeout=spec.timeout_s)
                except grpc.aio.AioRpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
                    continue
                acks.append(time.perf_counter() - sent)
                acked.append((time.time(), response.seq))

        await asyncio.gather(*(writer() for _ in range(spec.concurrency)))
        elapsed = time.perf_counter() - started
    seqs = [seq for _, seq in acked]
    return PutManyResult(
        batches=len(acks),
        entries=len(acks) * spec.batch_entries,
        errors=len(errors),
        started_at=started_at,
        elapsed_s=elapsed,
        first_seq=(min(seqs) - spec.batch_entries + 1) if seqs else 0,
        last_seq=max(seqs) if seqs else 0,
        ack_latency_s=summarize(acks),
        acked=acked,
        first_error=errors[0] if errors else "",
    )


# -- Redis: paced SETs to the primary, keyevent subscribers on the replicas ---------------

REDIS_KEY_PREFIX = "b:"
# Keyspace notifications on db 0 (replicas run with notify-keyspace-events K$): one
# channel per key, so a pattern subscription samples writes by index inside Redis, and
# the subscriber hears only those (as edgepop's visibility reader reads only its sample).
REDIS_KEYSPACE_PREFIX = "__keyspace@0__:"
# Keys are b:<index>:<send time ns>: indices ending in 00 or 50, one write in 50.
REDIS_SAMPLE_PATTERN = REDIS_KEYSPACE_PREFIX + REDIS_KEY_PREFIX + "*[05]0:*"
REDIS_SAMPLE_EVERY = 50


@dataclass(frozen=True)
class RedisWrites:
    """SET b:<index>:<send time ns> on the primary at `rate_per_s`, pipelined (open loop)."""

    port: int
    rate_per_s: float
    duration_s: float
    # Wall clock at which to start (so that subscribers in another process are ready).
    start_at: float
    value_bytes: int = 100


@dataclass
class RedisWriteResult:
    sent: int
    acked: int
    elapsed_s: float
    send_lateness_s: dict[str, float]


def redis_writes(spec: RedisWrites) -> RedisWriteResult:
    return asyncio.run(_redis_writes(spec))


async def _redis_writes(spec: RedisWrites) -> RedisWriteResult:
    connection = await RespConnection.open("127.0.0.1", spec.port)
    value = b"v" * spec.value_bytes
    acked = 0
    all_acked = asyncio.Event()
    sent = -1

    async def drain_replies() -> None:
        nonlocal acked
        while True:
            acked += len(await connection.read_values())
            if acked == sent:
                all_acked.set()

    reader = asyncio.create_task(drain_replies())
    await asyncio.sleep(max(0.0, spec.start_at - time.time()))

    def send(index: int) -> None:
        key = f"{REDIS_KEY_PREFIX}{index}:{time.time_ns()}"
        connection.send(encode(b"SET", key, value))

    sent, elapsed, lateness = await _paced(spec.rate_per_s, spec.duration_s, send)
    if acked < sent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_acked.wait(), 5.0)
    reader.cancel()
    await connection.close()
    return RedisWriteResult(sent, acked, elapsed, summarize(lateness))


@dataclass(frozen=True)
class RedisWatch:
    """Subscribe to the sampled writes' keyspace events on every replica until `stop_at`
    (wall clock)."""

    ports: tuple[int, ...]
    stop_at: float
    # Keys sent before this wall time (warm-up) are not counted.
    count_from: float


@dataclass
class RedisWatchResult:
    # Per replica: propagation delays in seconds (receive time - send time).
    delays_s: list[list[float]]
    subscribed_at: float


def redis_watch(spec: RedisWatch) -> RedisWatchResult:
    return asyncio.run(_redis_watch(spec))


async def _redis_watch(spec: RedisWatch) -> RedisWatchResult:
    connections = [await RespConnection.open("127.0.0.1", port) for port in spec.ports]
    for connection in connections:
        await connection.command("PSUBSCRIBE", REDIS_SAMPLE_PATTERN)
    subscribed_at = time.time()
    count_from_ns = int(spec.count_from * 1e9)
    delays: list[list[float]] = [[] for _ in connections]

    async def watch(connection: RespConnection, sink: list[float]) -> None:
        while True:
            values = await connection.read_values()
            # One clock reading per read: every message in it arrived by then.
            received_ns = time.time_ns()
            for value in values:
                # ["pmessage", pattern, "__keyspace@0__:b:<index>:<ns>", "set"]
                if not (isinstance(value, list) and len(value) == 4 and value[0] == b"pmessage"):
                    continue
                sent_ns = int(value[2].rsplit(b":", 1)[1])
                if sent_ns >= count_from_ns:
                    sink.append((received_ns - sent_ns) / 1e9)

    tasks = [
        asyncio.create_task(watch(connection, sink))
        for connection, sink in zip(connections, delays, strict=True)
    ]
    await asyncio.sleep(max(0.0, spec.stop_at - time.time()))
    for task in tasks:
        task.cancel()
    for connection in connections:
        await connection.close()
    return RedisWatchResult(delays, subscribed_at)


async def redis_info(port: int, section: str = "replication") -> dict[str, str]:
    """INFO `section` of one Redis server."""
    connection = await RespConnection.open("127.0.0.1", port, timeout=1.0)
    try:
        return info_fields(await connection.command("INFO", section, timeout=1.0))
    finally:
        await connection.close()


# -- HTTP: closed loop over keep-alive connections (the fallback when wrk is missing) ------


@dataclass(frozen=True)
class HttpLoad:
    """GET `url` with `Host: host` over `connections` keep-alive connections (closed loop)."""

    url: str
    host: str
    connections: int
    duration_s: float
    warmup_s: float = 0.0
    server_pid: int = 0
    extra_pids: tuple[int, ...] = ()
    timeout_s: float = 10.0


@dataclass
class HttpResult:
    # 2xx/3xx responses only; the others are counted apart.
    requests: int
    errors: int
    non_2xx: int
    elapsed_s: float
    rate_per_s: float
    latency_s: dict[str, float]
    server_cpu_s: float
    extra_cpu_s: float
    # "wrk", or "aiohttp" for the fallback.
    tool: str


def http_closed_loop(spec: HttpLoad) -> HttpResult:
    return asyncio.run(_http_closed_loop(spec))


async def _http_closed_loop(spec: HttpLoad) -> HttpResult:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=spec.connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    headers = {"Host": spec.host}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def drive(duration_s: float, measure: bool) -> HttpResult:
            latencies: list[float] = []
            errors = non_2xx = 0
            stop_at = time.perf_counter() + duration_s

            async def caller() -> None:
                nonlocal errors, non_2xx
                clock = time.perf_counter
                while True:
                    started = clock()
                    if started >= stop_at:
                        return
                    try:
                        async with session.get(spec.url, headers=headers) as response:
                            await response.read()
                            status = response.status
                    except (aiohttp.ClientError, TimeoutError):
                        errors += 1
                        continue
                    if status >= 400:
                        non_2xx += 1
                        continue
                    latencies.append(clock() - started)

            pids = (spec.server_pid, *spec.extra_pids) if measure else ()
            before = [cpu_seconds(pid) for pid in pids if pid]
            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(spec.connections)))
            elapsed = time.perf_counter() - started
            after = [cpu_seconds(pid) for pid in pids if pid]
            server = after[0] - before[0] if measure and spec.server_pid else 0.0
            return HttpResult(
                requests=len(latencies),
                errors=errors,
                non_2xx=non_2xx,
                elapsed_s=elapsed,
                rate_per_s=len(latencies) / elapsed if elapsed > 0 else 0.0,
                latency_s=summarize(latencies[:: max(1, len(latencies) // LATENCY_SAMPLES_MAX)]),
                server_cpu_s=server,
                extra_cpu_s=sum(after) - sum(before) - server,
                tool="aiohttp",
            )

        if spec.warmup_s > 0:
            await drive(spec.warmup_s, measure=False)
        return await drive(spec.duration_s, measure=True)


# -- network: the seed's latency table, and commit-to-visible times ------------------------


@dataclass(frozen=True)
class ProbeSpec:
    """`edgectl probe` against the cluster in `data_dir`: `calls` per target and region."""

    data_dir: str
    calls: int
    parallel: int


def probe_regions(spec: ProbeSpec) -> dict[str, Any]:
    """edgectl's own probe (Route, then timed Status calls); rows with their raw samples."""
    from pathlib import Path

    from edgectl import probe
    from edgectl.client import EdgeClient

    with EdgeClient.for_data_dir(Path(spec.data_dir)) as client:
        topology = client.topology()
        plans = probe.plan(client, topology, None)
        # One throwaway pass: the first calls of a fresh client process (and the first
        # calls a node serves) are slower, and would land in the first region probed.
        probe.run_probe(client, topology, plans, 2, lambda _region: None, len(plans))
        results = probe.run_probe(
            client, topology, plans, spec.calls, lambda _region: None, spec.parallel
        )
    return {
        "rows": [
            {
                **result.to_json(),
                "edge_samples_ms": list(result.edge.samples_ms),
                "origin_samples_ms": list(result.to_origin.samples_ms),
            }
            for result in results
        ],
        "headline": probe.headline(results),
    }


@dataclass(frozen=True)
class PropagationProbe:
    """Paced KvPuts at the origin; after each ack, a BOOKMARK read at the PoP for its seq.

    The read waits inside the PoP until the replica holds the write (an event, not
    polling), so ack -> reply is the time from commit to visible at the PoP (plus the
    read's loopback hop). Neither call carries x-edge-region: no emulated delay on the
    client's own hops, only on the origin -> PoP stream.
    """

    origin_address: str
    pop_address: str
    rate_per_s: float
    writes: int
    key_prefix: str
    namespace: str = "bench-wan"
    timeout_s: float = 10.0


@dataclass
class PropagationResult:
    samples_s: list[float]
    errors: int
    first_error: str
    send_lateness_s: dict[str, float]


def propagation_probe(spec: PropagationProbe) -> PropagationResult:
    return asyncio.run(_propagation_probe(spec))


async def _propagation_probe(spec: PropagationProbe) -> PropagationResult:
    from edge.v1 import kv_pb2, origin_pb2_grpc, pop_pb2_grpc

    samples: list[float] = []
    errors: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    async with (
        grpc.aio.insecure_channel(spec.origin_address, options=CHANNEL_OPTIONS) as to_origin,
        grpc.aio.insecure_channel(spec.pop_address, options=CHANNEL_OPTIONS) as to_pop,
    ):
        origin = origin_pb2_grpc.OriginStub(to_origin)
        pop = pop_pb2_grpc.PopStub(to_pop)
        await asyncio.wait_for(to_origin.channel_ready(), spec.timeout_s)
        await asyncio.wait_for(to_pop.channel_ready(), spec.timeout_s)

        async def one(index: int) -> None:
            key = f"{spec.key_prefix}-{index}"
            value = f"{spec.key_prefix}:{index}:{time.time_ns()}".encode()
            try:
                seq = (
                    await origin.KvPut(
                        kv_pb2.KvPutRequest(namespace=spec.namespace, key=key, value=value),
                        timeout=spec.timeout_s,
                    )
                ).seq
                acked = time.perf_counter()
                got = await pop.KvGet(
                    kv_pb2.KvGetRequest(
                        namespace=spec.namespace,
                        key=key,
                        consistency=kv_pb2.CONSISTENCY_BOOKMARK,
                        min_seq=seq,
                    ),
                    timeout=spec.timeout_s,
                )
                visible = time.perf_counter()
            except grpc.aio.AioRpcError as error:
                errors.append(f"{error.code().name}: {error.details()} (write {index})")
                return
            if not (got.found and got.value == value and got.applied_seq >= seq):
                errors.append(f"write {index} (seq {seq}) read back as {got}")
                return
            samples.append(visible - acked)

        def send(index: int) -> None:
            task = asyncio.create_task(one(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        _, _, lateness = await _paced(spec.rate_per_s, spec.writes / spec.rate_per_s, send)
        if tasks:
            await asyncio.wait(list(tasks), timeout=spec.timeout_s)
    return PropagationResult(samples, len(errors), errors[0] if errors else "", summarize(lateness))


def pooled_http(runs: Sequence[HttpResult]) -> dict[str, Any]:
    """Rounds of one target pooled: total requests over total time, median round's tails."""
    requests = sum(run.requests for run in runs)
    elapsed = sum(run.elapsed_s for run in runs)
    server = sum(run.server_cpu_s for run in runs)
    extra = sum(run.extra_cpu_s for run in runs)
    p50s = sorted(run.latency_s["p50"] for run in runs)
    p99s = sorted(run.latency_s["p99"] for run in runs)
    return {
        "requests": requests,
        "errors": sum(run.errors for run in runs),
        "non_2xx": sum(run.non_2xx for run in runs),
        "elapsed_s": elapsed,
        "rate_per_s": requests / elapsed if elapsed else math.nan,
        "latency_p50_s": p50s[len(p50s) // 2] if runs else math.nan,
        "latency_p99_s": p99s[len(p99s) // 2] if runs else math.nan,
        "server_cpu_per_request_us": 1e6 * server / requests if requests else math.nan,
        "total_cpu_per_request_us": 1e6 * (server + extra) / requests if requests else math.nan,
        "server_cpu_share": server / elapsed if elapsed else math.nan,
        "rounds": [run.rate_per_s for run in runs],
        "tool": runs[0].tool if runs else "",
    }
