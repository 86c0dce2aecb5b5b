"""Every Prometheus metric, declared per role in one module (names are a contract).

Names follow `edge_<subsystem>_<name>_<unit>`, counters end in `_total`, and every
metric carries the labels `node` and `region`. Labels stay low-cardinality: never a
key or an object id. Each process has its own registry, served on its metrics port.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from edge.v1 import node_pb2
from edgepop.host_cpu import HostCpuCollector

# Request latencies from sub-millisecond local reads up to multi-second timeouts.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
PROPAGATION_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
    10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

BASE_LABELS = ("node", "region")
# Calls that only look at a node (the live view's and the console's polls): they are not
# the cluster's traffic, so RequestTotals leaves them out.
MONITOR_METHODS = frozenset(
    {
        ("Pop", "Status"),
        ("Origin", "Status"),
        ("ControlPlane", "ListNodes"),
        ("ControlPlane", "GetTopology"),
        ("ControlPlane", "ListPlacements"),
    }
)


class RequestTotals:
    """Every request this node served but the monitors', as one latency histogram.

    Kept beside the labelled histogram at observe time (a bisect and two increments), so
    that Status can say it without collecting every child of the labelled one.
    """

    def __init__(self, bounds: tuple[float, ...] = ()) -> None:
        self.bounds = bounds or LATENCY_BUCKETS_S
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1

    def cumulative(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """(upper bounds with +Inf last, cumulative counts): Prometheus's buckets."""
        return (*self.bounds, float("inf")), tuple(itertools.accumulate(self.counts))

    def to_proto(self) -> node_pb2.RequestStats:
        bounds, counts = self.cumulative()
        return node_pb2.RequestStats(
            count=self.count, bucket_bounds=bounds, bucket_counts=[float(n) for n in counts]
        )


class _TotalledChild:
    """A request-duration child whose observations also go into the RequestTotals.

    Every call of every node ends here, so one bisect serves both histograms (they share
    their bounds) and the child's bucket and sum are added to directly, as
    `observe_repeated` does (tests/unit/test_metrics.py holds both to `observe()`).
    """

    __slots__ = ("_buckets", "_counts", "_sum", "_totals", "_upper_bounds")

    def __init__(self, child: Any, totals: RequestTotals) -> None:
        if tuple(child._upper_bounds) != (*totals.bounds, float("inf")):
            raise ValueError("a totalled child must have the totals' bucket bounds")
        self._totals = totals
        self._upper_bounds = child._upper_bounds
        self._buckets = child._buckets
        self._sum = child._sum
        self._counts = totals.counts

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(self._upper_bounds, seconds)
        self._buckets[index].inc(1)
        self._sum.inc(seconds)
        self._counts[index] += 1
        self._totals.count += 1


class NodeChildren:
    """One labelled metric's children at this node, cached by their labels after
    (node, region).

    prometheus_client's `labels()` takes a lock and builds the label tuple on every call
    (~0.75 us against ~0.25 us for the child's `inc()`), and a hot path asks for the same
    few children on every request.
    """

    __slots__ = ("_children", "_metric", "_node_labels")

    def __init__(self, metric: Any, node: str, region: str) -> None:
        self._metric = metric
        self._node_labels = (node, region)
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*self._node_labels, *labels)
        return child


def observe_repeated(histogram: Histogram, amount: float, count: int) -> None:
    """`histogram.observe(amount)` done `count` times, in one step.

    prometheus_client has no weighted observe, and its observe scans the buckets in
    Python: per entry of a 500-entry replication batch on 12 PoPs, that was ~15% of a
    PoP's CPU. This adds to the same bucket and sum (the pinned version's `_upper_bounds`,
    `_buckets` and `_sum`; tests/unit/test_metrics.py holds it to observe()).
    """
    if count <= 0:
        return
    index = bisect.bisect_left(histogram._upper_bounds, amount)
    histogram._buckets[index].inc(count)
    histogram._sum.inc(amount * count)


def observe_ages(histogram: Histogram, now: float, times: Iterable[float]) -> None:
    """Observe `now - t` (at least 0) for each t; runs of equal times in one step each
    (a replication batch's entries share their commit's time)."""
    run_time = 0.0
    run_count = 0
    for at in times:
        if at == run_time:
            run_count += 1
            continue
        observe_repeated(histogram, max(0.0, now - run_time), run_count)
        run_time, run_count = at, 1
    observe_repeated(histogram, max(0.0, now - run_time), run_count)


class NodeMetrics:
    """What every process exports, pre-labelled with its node name and region: the calls
    it served, the delay it injected, whether it serves. Each role declares the rest
    (`PopMetrics`, `OriginMetrics`, `ControlPlaneMetrics`): a process exports only the
    families it can move."""

    def __init__(self, node: str, region: str) -> None:
        self.node = node
        self.region = region
        self.registry = CollectorRegistry(auto_describe=True)
        labels = BASE_LABELS
        registry = self.registry

        self.request_duration = Histogram(
            "edge_request_duration_seconds",
            "Time from a call's arrival to its reply, injected delay included.",
            (*labels, "service", "method", "code"),
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self.request_totals = RequestTotals()

        # Network emulation.
        self.injected_delay = Histogram(
            "edge_injected_delay_seconds",
            "Emulated network delay added to a call or stream message.",
            (*labels, "from_region", "to_region"),
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._delay_children = NodeChildren(self.injected_delay, node, region)

        self.node_up = Gauge(
            "edge_node_up",
            "1 while this process is serving.",
            labels,
            registry=registry,
        ).labels(node, region)

        # Its own CPU, and its threads' wait for one (edgepop/host_cpu.py): read at scrape.
        registry.register(HostCpuCollector(node, region))

    def request(self, service: str, method: str, code: str) -> Any:
        """The request-duration child for one (service, method, code), cached."""
        key = (service, method, code)
        child = self._request_children.get(key)
        if child is None:
            child = self.request_duration.labels(self.node, self.region, service, method, code)
            if (service, method) not in MONITOR_METHODS:
                child = _TotalledChild(child, self.request_totals)
            self._request_children[key] = child
        return child

    def delay(self, from_region: str, to_region: str) -> Any:
        return self._delay_children(from_region, to_region)

    def serve(self, host: str, port: int) -> tuple[int, Callable[[], None]]:
        """Serve /metrics on a thread; returns the bound port and a stop function."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        bound_port = int(server.server_address[1])

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return bound_port, stop


class _LogPositions(NodeMetrics):
    """What the origin and each replica say of the KV log: where they are, snapshots."""

    def __init__(self, node: str, region: str) -> None:
        super().__init__(node, region)
        labels = BASE_LABELS
        registry = self.registry

        self.kv_applied_seq = Gauge(
            "edge_kv_replica_applied_seq",
            "Every log entry up to this seq is applied to the local replica.",
            labels,
            registry=registry,
        ).labels(node, region)
        self.kv_origin_head_seq = Gauge(
            "edge_kv_origin_head_seq",
            "The origin's newest committed seq, as last known by this node.",
            labels,
            registry=registry,
        ).labels(node, region)
        self.kv_snapshots = Counter(
            "edge_kv_snapshots_total",
            "Snapshots installed (replica) or sent (origin).",
            labels,
            registry=registry,
        ).labels(node, region)


class PopMetrics(_LogPositions):
    """A PoP: its replica (KV and SQL), its Durable Objects, its workers and HTTP cache."""

    def __init__(self, node: str, region: str) -> None:
        super().__init__(node, region)
        labels = BASE_LABELS
        registry = self.registry

        # The replica.
        # Its child is made by set_lag_function: only replicas have a staleness to report.
        self._lag = Gauge(
            "edge_kv_replication_lag_seconds",
            "Staleness bound: now minus the origin time up to which this replica is known"
            " to hold every committed write.",
            labels,
            registry=registry,
        )
        self.kv_propagation = Histogram(
            "edge_kv_propagation_seconds",
            "Time from an entry's commit at the origin to its apply at this replica.",
            labels,
            buckets=PROPAGATION_BUCKETS_S,
            registry=registry,
        ).labels(node, region)
        self.kv_applied_entries = Counter(
            "edge_kv_applied_entries_total",
            "Log entries applied to the local replica.",
            labels,
            registry=registry,
        ).labels(node, region)
        self.sql_queries = Counter(
            "edge_sql_queries_total",
            "SQL queries taken by this PoP, by where they were served: replica (the local "
            "copy, as the session allowed) or primary (at the origin: writes, queries "
            "outside a session, first-primary, a bookmark the replica did not reach).",
            (*labels, "database", "served_by"),
            registry=registry,
        )
        self.sql_replica_applied_seq = Gauge(
            "edge_sql_replica_applied_seq",
            "The log seq of the newest commit of each SQL database this PoP's replica holds "
            "(its staleness is the replication stream's: edge_kv_replication_lag_seconds).",
            (*labels, "database"),
            registry=registry,
        )
        self.kv_read_cache_requests = Counter(
            "edge_kv_read_cache_requests_total",
            "Reads of KV namespaces in Cloudflare mode at this PoP, by result: hit (answered "
            "by the PoP's cache, possibly stale up to cacheTtl) or miss (fetched from the "
            "origin, then cached).",
            (*labels, "result"),
            registry=registry,
        )
        self.kv_read_cache_entries = Gauge(
            "edge_kv_read_cache_entries",
            "Keys held by this PoP's KV read cache (namespaces in Cloudflare mode).",
            labels,
            registry=registry,
        ).labels(node, region)
        self.kv_replica_rebuilds = Counter(
            "edge_kv_replica_rebuilds_total",
            "KV replicas discarded at start because a stop of the machine may have torn"
            " them (rebuilt from the origin).",
            labels,
            registry=registry,
        ).labels(node, region)
        self.kv_stream_connects = Counter(
            "edge_kv_stream_connects_total",
            "Replication stream (re)connections opened by this replica.",
            labels,
            registry=registry,
        ).labels(node, region)
        self.kv_overlay_entries = Gauge(
            "edge_kv_overlay_entries",
            "Own writes acknowledged at this PoP and not yet applied from the stream.",
            labels,
            registry=registry,
        ).labels(node, region)

        # Durable Objects.
        self.do_calls = Counter(
            "edge_do_calls_total",
            "Object calls run on this node (as owner), by class namespace and status code.",
            (*labels, "namespace", "code"),
            registry=registry,
        )
        self.do_call_duration = Histogram(
            "edge_do_call_duration_seconds",
            "Time of an object call at its owner, from arrival to durable reply.",
            (*labels, "namespace"),
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.do_objects_active = Gauge(
            "edge_do_objects_active",
            "Object instances live on this node.",
            labels,
            registry=registry,
        ).labels(node, region)
        self.do_forwards = Counter(
            "edge_do_forwards_total",
            "Object calls this PoP forwarded to the owner on another node.",
            labels,
            registry=registry,
        ).labels(node, region)
        self.do_queue_depth = Gauge(
            "edge_do_queue_depth",
            "Object calls waiting at input gates on this node.",
            labels,
            registry=registry,
        ).labels(node, region)
        self.do_commit_duration = Histogram(
            "edge_do_commit_duration_seconds",
            "Time of one object group commit: local fsync and standby copy.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        ).labels(node, region)
        self.do_hibernations = Counter(
            "edge_do_hibernations_total",
            "Objects that hibernated here (only hibernatable WebSockets, idle): the next "
            "event constructs the class again.",
            labels,
            registry=registry,
        ).labels(node, region)
        # Per namespace (its class): which objects' memory a user sees go.
        self.do_idle_evictions = Counter(
            "edge_do_idle_evictions_total",
            "Objects evicted from memory here for being idle with no connection (Cloudflare:"
            " after 70-140 s): the next event constructs the class again.",
            (*labels, "namespace"),
            registry=registry,
        )

        # Edge functions (workers) and the PoP's HTTP cache.
        self.worker_requests = Counter(
            "edge_worker_requests_total",
            "HTTP requests answered by a worker at this PoP, by worker and status.",
            (*labels, "worker", "status"),
            registry=registry,
        )
        self.worker_cpu = Histogram(
            "edge_worker_cpu_seconds",
            "CPU time a worker's fetch used per request (its own steps, not waiting).",
            (*labels, "worker"),
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
            registry=registry,
        )
        self.worker_cold_start = Histogram(
            "edge_worker_cold_start_seconds",
            "Time to load a worker version at this PoP (compile, import, bind).",
            (*labels, "worker"),
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=registry,
        )
        self.worker_subrequests = Counter(
            "edge_worker_subrequests_total",
            "fetch() subrequests made by workers, by worker and cache result.",
            (*labels, "worker", "cache"),
            registry=registry,
        )
        self.worker_cron_runs = Counter(
            "edge_worker_cron_runs_total",
            "Runs of a worker's scheduled handler at this PoP (cron triggers, on schedule or "
            "triggered by hand), by result (ok, error).",
            (*labels, "worker", "result"),
            registry=registry,
        )
        self.cache_requests = Counter(
            "edge_cache_requests_total",
            "Lookups in this PoP's HTTP cache, by result (hit, miss).",
            (*labels, "result"),
            registry=registry,
        )
        self.analytics_points = Counter(
            "edge_analytics_data_points_total",
            "Analytics data points written by workers (write_data_point).",
            (*labels, "worker", "dataset", "index", "blob"),
            registry=registry,
        )
        self.analytics_value = Counter(
            "edge_analytics_value_total",
            "Sum of the first double of analytics data points.",
            (*labels, "worker", "dataset", "index", "blob"),
            registry=registry,
        )

    def set_lag_function(self, lag_seconds: Callable[[], float]) -> None:
        """The lag gauge is computed at scrape time, so it grows while nothing arrives."""
        self._lag.labels(self.node, self.region).set_function(lag_seconds)


class OriginMetrics(_LogPositions):
    """The origin: its commits, the streams it feeds, its HTTP application."""

    def __init__(self, node: str, region: str) -> None:
        super().__init__(node, region)
        labels = BASE_LABELS
        registry = self.registry

        # Origin commits.
        self.kv_commits = Counter(
            "edge_kv_commits_total",
            "Durable LMDB commits at the origin (one commit may carry many writes).",
            labels,
            registry=registry,
        ).labels(node, region)
        self.kv_commit_entries = Histogram(
            "edge_kv_commit_entries",
            "Log entries per commit (group commit batch size).",
            labels,
            buckets=BATCH_BUCKETS,
            registry=registry,
        ).labels(node, region)
        self.kv_commit_duration = Histogram(
            "edge_kv_commit_duration_seconds",
            "Time to write and fsync one commit.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        ).labels(node, region)
        self.kv_subscribers = Gauge(
            "edge_kv_subscribers",
            "Replication streams connected to this origin.",
            labels,
            registry=registry,
        ).labels(node, region)
        self.kv_expired_deletes = Counter(
            "edge_kv_expired_deletes_total",
            "Expired keys deleted (and logged) by the origin's sweeper.",
            labels,
            registry=registry,
        ).labels(node, region)
        self.kv_log_first_seq = Gauge(
            "edge_kv_log_first_seq",
            "The oldest seq the origin's log still holds.",
            labels,
            registry=registry,
        ).labels(node, region)

        # Origin HTTP application.
        self.origin_http_requests = Counter(
            "edge_origin_http_requests_total",
            "HTTP requests the origin application answered, by route and status.",
            (*labels, "route", "code"),
            registry=registry,
        )


class ControlPlaneMetrics(NodeMetrics):
    """The control plane: the registry's view, the matrix, object failovers."""

    def __init__(self, node: str, region: str) -> None:
        super().__init__(node, region)
        labels = BASE_LABELS
        registry = self.registry

        # Control plane.
        self.net_matrix_delay = Gauge(
            "edge_net_matrix_delay_seconds",
            "The topology's base one-way delay between two regions (faults excluded): what"
            " edge_injected_delay_seconds should show when no fault is in force.",
            (*labels, "from_region", "to_region"),
            registry=registry,
        )
        self.cp_nodes = Gauge(
            "edge_cp_nodes",
            "Registered nodes by health, as the control plane sees them.",
            (*labels, "healthy"),
            registry=registry,
        )
        self.do_failovers = Counter(
            "edge_do_failovers_total",
            "Objects moved to their standby after the owner's lease lapsed (control plane).",
            labels,
            registry=registry,
        ).labels(node, region)


ROLE_METRICS: dict[str, type[NodeMetrics]] = {
    "pop": PopMetrics,
    "origin": OriginMetrics,
    "control_plane": ControlPlaneMetrics,
}
