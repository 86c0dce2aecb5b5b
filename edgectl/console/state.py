"""What the console shows and does: a snapshot of the cluster, and the actions a click makes.

`build_snapshot` is pure (topology, node samples, placements in; the page's JSON out).
`ConsoleModel` gathers its inputs with the same calls the CLI makes (`ClusterMonitor` of
the live view, `EdgeClient`, `Cluster`), synchronously: the web app runs it on threads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import kv_pb2, objects_pb2, pop_pb2, pop_pb2_grpc, sql_pb2
from edgectl import net
from edgectl import objects as do
from edgectl.client import (
    CliError,
    ClusterMonitor,
    EdgeClient,
    NodeSample,
    Target,
    role_name,
    scrape,
    value_text,
)
from edgectl.console import geo
from edgectl.launcher import Cluster
from edgepop import sqldb
from edgepop.host_cpu import wait_is_notable

# Sparklines: one point a second, the last five minutes.
HISTORY_POINTS = 300
# The nearest-PoP routing of each user region: asked again when the topology's version
# moves (nodes, health), and at least this often.
ROUTES_REFRESH_S = 30.0
# Watching a write: each PoP's applied seq is polled this often, for at most this long.
WATCH_POLL_S = 0.01
WATCH_TIMEOUT_S = 10.0
PROPAGATION_HISTOGRAM = "edge_kv_propagation_seconds"
PROPAGATION_SAMPLES = (f"{PROPAGATION_HISTOGRAM}_sum", f"{PROPAGATION_HISTOGRAM}_count")
KV_LIST_LIMIT = 100
SQL_ROWS_LIMIT = 50
SQL_TABLES = (
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
)
# The latency table's live column: `edgectl probe` with this many calls per target.
PROBE_CALLS = 5
# A probe of every region takes a few seconds; one that hangs is ended.
PROBE_TIMEOUT_S = 120.0
ACTIONS = frozenset({"start", "stop", "kill"})
FAULTS = frozenset({*net.FAULT_KINDS, "heal"})


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def node_json(sample: NodeSample, info: cp_pb2.NodeInfo | None) -> dict[str, Any]:
    return {
        "name": sample.name,
        "role": sample.role,
        "region": sample.region,
        "pid": sample.pid,
        "alive": sample.alive,
        # Healthy = running and its lease current at the control plane.
        "healthy": bool(sample.alive and (info.healthy if info is not None else sample.healthy)),
        "seq": sample.seq,
        "head_seq": sample.head_seq,
        "lag_s": _round(sample.lag_s, 3),
        "replicating": sample.replicating,
        "requests_per_s": _round(sample.requests_per_s, 1),
        "p50_ms": _round(sample.p50_ms),
        "p99_ms": _round(sample.p99_ms),
        "workers": sample.workers,
        # % of a core since the previous sample; notable: the host adds to its figures.
        "cpu_percent": _round(sample.cpu_percent, 1),
        "cpu_wait_percent": _round(sample.cpu_wait_percent, 1),
        "cpu_wait_notable": wait_is_notable(sample.cpu_percent, sample.cpu_wait_percent),
        "http_address": sample.http_address,
        "stale": sample.stale,
    }


def region_json(region: cp_pb2.Region, origin_region: str) -> dict[str, Any]:
    x, y = geo.project(region.latitude, region.longitude)
    return {
        "name": region.name,
        "latitude": region.latitude,
        "longitude": region.longitude,
        "x": x,
        "y": y,
        "pop_nodes": region.pop_nodes,
        "edge_rtt_ms": region.edge_rtt_ms,
        "city": region.city,
        "is_origin": region.name == origin_region,
    }


def placement_json(
    placement: objects_pb2.Placement, owner: NodeSample | None = None
) -> dict[str, Any]:
    """`edgectl do placements --json`'s row, and what the page shows besides: the
    call rate its owner reports (None until two looks at the owner have named it)."""
    rate = None if owner is None else owner.object_rates.get((placement.namespace, placement.id))
    return {
        **do.placement_json(placement),
        "next_standby": placement.next_standby,
        "synced_seq": placement.synced_seq,
        "calls_per_s": _round(rate, 1),
    }


def build_snapshot(
    topology: cp_pb2.Topology,
    samples: Sequence[NodeSample],
    placements: Iterable[objects_pb2.Placement],
    routes: dict[str, str],
    now: float,
) -> dict[str, Any]:
    """The page's view of the cluster at `now` (unix seconds)."""
    infos = {info.name: info for info in topology.nodes}
    by_name = {sample.name: sample for sample in samples}
    origin = topology.origin_region
    rtt = {(link.from_region, link.to_region): link.rtt_ms for link in topology.rtt}
    # A link for every PoP region to the origin: the way its writes and replication go.
    links = [
        {"from": region.name, "to": origin, "rtt_ms": rtt.get((region.name, origin))}
        for region in topology.regions
        if region.name != origin
    ]
    return {
        "at": now,
        "version": topology.version,
        "origin_region": origin,
        "regions": [region_json(region, origin) for region in topology.regions],
        "links": links,
        "rtt": [
            {"from": link.from_region, "to": link.to_region, "rtt_ms": link.rtt_ms}
            for link in topology.rtt
        ],
        "faults": [net.fault_json(fault, now) for fault in net.in_force(topology.faults, now)],
        "nodes": [node_json(sample, infos.get(sample.name)) for sample in samples],
        "objects": [
            placement_json(placement, by_name.get(placement.owner)) for placement in placements
        ],
        "routes": routes,
        "workers": [
            {"name": worker.name, "version": worker.version} for worker in topology.workers
        ],
    }


@dataclass
class History:
    """The last HISTORY_POINTS values of a few numbers per node, for sparklines."""

    points: int = HISTORY_POINTS
    series: dict[str, dict[str, deque[float | None]]] = field(default_factory=dict)

    def add(self, nodes: Iterable[dict[str, Any]]) -> None:
        for node in nodes:
            per_node = self.series.setdefault(node["name"], {})
            for name in ("lag_s", "requests_per_s", "p99_ms"):
                per_node.setdefault(name, deque(maxlen=self.points)).append(node[name])

    def to_json(self) -> dict[str, dict[str, list[float | None]]]:
        return {
            node: {name: list(values) for name, values in series.items()}
            for node, series in self.series.items()
        }


def propagation_totals(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of a PoP's commit -> apply histogram."""
    total = count = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != PROPAGATION_HISTOGRAM:
            continue
        for sample in family.samples:
            if sample.name == f"{PROPAGATION_HISTOGRAM}_sum":
                total += sample.value
            elif sample.name == f"{PROPAGATION_HISTOGRAM}_count":
                count += sample.value
    return total, count


def propagation_ms(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """The mean commit -> apply time of the entries applied between two scrapes (exact for
    one write: the console's own, when nothing else is writing)."""
    applied = after[1] - before[1]
    if applied <= 0:
        return None
    return (after[0] - before[0]) / applied * 1e3


@dataclass(frozen=True)
class _SqlRows:
    columns: list[str]
    rows: list[list[Any]]
    served_by: str


def _cell(value: Any) -> Any:
    """A SQL value for JSON: a blob as its hex, text cut at 200 characters."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):
        return value[:200]
    return value


def cli_error_from_stderr(stderr: str) -> CliError:
    """The CliError an edgectl subprocess reported: its last line, `error: CODE: details`
    (or `error: details` for a failure without a status code)."""
    lines = stderr.strip().splitlines()
    text = lines[-1].removeprefix("error: ") if lines else "edgectl failed and said nothing"
    code, _, details = text.partition(": ")
    if details and code.replace("_", "").isalpha() and code.isupper():
        return CliError(code, details)
    return CliError("UNKNOWN", text)


class ConsoleModel:
    """The cluster in `data_dir`, seen and changed the way `edgectl` does it."""

    def __init__(self, data_dir: Path, executor: futures.ThreadPoolExecutor) -> None:
        self.data_dir = data_dir
        self.cluster = Cluster.open(data_dir)
        self.client = EdgeClient.for_data_dir(data_dir)
        self.monitor = ClusterMonitor(self.cluster, executor)
        self.history = History()
        self._routes: dict[str, str] = {}
        self._routes_at = 0.0
        self._routes_version = -1
        self._topology: cp_pb2.Topology | None = None

    def close(self) -> None:
        self.monitor.close()
        self.client.close()

    # -- looking -----------------------------------------------------------------------

    def topology(self) -> cp_pb2.Topology:
        try:
            self._topology = self.client.topology()
        except CliError:
            if self._topology is None:
                raise
        return self._topology

    def _routes_now(self, topology: cp_pb2.Topology) -> dict[str, str]:
        # Routing changes only with nodes and their health, which bump the version.
        stale = topology.version != self._routes_version or not self._routes
        if stale or time.monotonic() - self._routes_at >= ROUTES_REFRESH_S:
            routes = {}
            for region in topology.regions:
                try:
                    routes[region.name] = self.client.route(region.name).name
                except CliError:
                    continue
            self._routes, self._routes_at = routes, time.monotonic()
            self._routes_version = topology.version
        return self._routes

    def snapshot(self) -> dict[str, Any]:
        samples = self.monitor.sample()
        topology = self.topology()
        try:
            placements = self.client.list_placements()
        except CliError:
            placements = []
        snapshot = build_snapshot(
            topology, samples, placements, self._routes_now(topology), time.time()
        )
        self.history.add(snapshot["nodes"])
        return snapshot

    def kv_list(self, pop: str, namespace: str, prefix: str) -> dict[str, Any]:
        target = self._pop_target(pop)
        request = kv_pb2.KvListRequest(namespace=namespace, prefix=prefix, limit=KV_LIST_LIMIT)
        keys = self.client.kv_list(target, request).response
        rows = []
        for key in keys.keys:
            got = self.client.kv_get(
                target, kv_pb2.KvGetRequest(namespace=namespace, key=key.name)
            ).response
            text, encoding = value_text(got.value)
            rows.append(
                {
                    "key": key.name,
                    "value": text[:200],
                    "encoding": encoding,
                    "metadata": got.metadata_json,
                    "seq": got.seq,
                    "expiration": got.expiration,
                }
            )
        return {"pop": pop, "namespace": namespace, "prefix": prefix, "keys": rows}

    def probe(self, calls: int = PROBE_CALLS) -> list[dict[str, Any]]:
        """`edgectl probe --json`: each region's round trips to its PoP and to the origin.

        In a process of its own: this one's threads (the once-a-second sampling, the
        page's requests) share its GIL, and an edge round trip of a few ms, judged to
        1 ms, would time their turns too. A client that stamps its calls is credited
        the request's wait but not the reply's: CI saw sydney's 10 ms read 11.3 here."""
        command = [sys.executable, "-m", "edgectl", "--data-dir", str(self.data_dir)]
        command += ["probe", "--json", "--calls", str(calls)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired as expired:
            raise CliError("DEADLINE_EXCEEDED", f"probe took over {expired.timeout:g} s") from None
        if done.returncode != 0:
            raise cli_error_from_stderr(done.stderr)
        results: list[dict[str, Any]] = json.loads(done.stdout)
        return results

    def kv_versions(self, namespace: str, key: str) -> dict[str, Any]:
        """Which version of a key each PoP holds now (its replica, read locally), and the
        origin's (the newest)."""
        topology = self.topology()
        holders: list[dict[str, Any]] = []
        nodes = [
            info
            for info in topology.nodes
            if info.role in (cp_pb2.ROLE_POP, cp_pb2.ROLE_ORIGIN) and info.healthy
        ]
        for info in sorted(nodes, key=lambda info: (info.role != cp_pb2.ROLE_ORIGIN, info.name)):
            target = Target(info.name, role_name(info.role), info.region, info.grpc_address, "")
            try:
                got = self.client.kv_get(
                    target, kv_pb2.KvGetRequest(namespace=namespace, key=key)
                ).response
            except CliError as error:
                holders.append({"node": info.name, "region": info.region, "error": error.details})
                continue
            text, encoding = value_text(got.value)
            holders.append(
                {
                    "node": info.name,
                    "region": info.region,
                    "role": role_name(info.role),
                    "found": got.found,
                    "seq": got.seq,
                    "value": text[:200],
                    "encoding": encoding,
                }
            )
        return {"namespace": namespace, "key": key, "holders": holders}

    def sql_browse(self, pop: str, database: str, table: str) -> dict[str, Any]:
        """The SQL databases at a PoP's replica; a database's tables; a table's first rows.
        Read at the replica as it is (D1's first-unconstrained), never at the primary."""
        target = self._pop_target(pop)
        databases = [db.name for db in self.client.sql_list(target).response.databases]
        browsed: dict[str, Any] = {"pop": pop, "databases": databases, "database": database}
        if not database:
            return browsed
        if database not in databases:
            raise CliError("NOT_FOUND", f"no database {database!r} at {pop}")
        tables = [str(row[0]) for row in self._sql(target, database, SQL_TABLES).rows]
        browsed.update(tables=tables, table=table, columns=[], rows=[])
        if table:
            if table not in tables:
                raise CliError("NOT_FOUND", f"no table {table!r} in {database} at {pop}")
            quoted = '"' + table.replace('"', '""') + '"'
            result = self._sql(target, database, f"SELECT * FROM {quoted} LIMIT {SQL_ROWS_LIMIT}")
            browsed.update(
                columns=result.columns,
                rows=[[_cell(value) for value in row] for row in result.rows],
                served_by=result.served_by,
            )
        return browsed

    def _sql(self, target: Target, database: str, statement: str) -> _SqlRows:
        request = sql_pb2.SqlQueryRequest(
            database=database,
            statements=[sql_pb2.SqlStatement(sql=statement)],
            session=sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED,
        )
        result = self.client.sql_query(target, request).response.results[0]
        rows = [[sqldb.to_python(value) for value in row.values] for row in result.rows]
        return _SqlRows(list(result.columns), rows, result.meta.served_by)

    # -- acting ------------------------------------------------------------------------

    def node_action(self, name: str, action: str) -> str:
        """Start, stop or kill a node, as `edgectl node ACTION NAME` does."""
        if action not in ACTIONS:
            raise CliError("INVALID_ARGUMENT", f"unknown node action {action!r}")
        self.cluster.reload()
        node = self.cluster.node(name)
        if action == "start":
            self.cluster.start(name)
            return f"started {name} (pid {self.cluster.node(name).pid})"
        if not self.cluster.pids_of(name):
            return f"{name} is not running"
        pid = node.pid
        if action == "stop":
            self.cluster.stop(name)
            return f"stopped {name} (pid {pid})"
        self.cluster.kill(name)
        return f"killed {name} (pid {pid})"

    def fault(
        self,
        action: str,
        from_region: str,
        to_region: str,
        values: Mapping[str, str],
        one_way: bool,
    ) -> list[dict[str, Any]]:
        """Set or heal a fault on a pair of regions, as `edgectl net ACTION` does.

        `values` are the form's texts, read as the CLI reads its arguments: `delay` and
        `jitter` (`100`, `100ms`, `0.1s`), `loss` (`0.2`, `20%`), `for` (`30s`, `2m`;
        empty: until healed)."""
        if action not in FAULTS:
            raise CliError("INVALID_ARGUMENT", f"unknown fault {action!r}")
        unknown = net.unknown_regions(self.topology(), [from_region, to_region])
        if unknown:
            raise CliError("INVALID_ARGUMENT", f"unknown region {unknown[0]!r}")
        if from_region == to_region:
            raise CliError("INVALID_ARGUMENT", "a fault is between two different regions")
        if action == "heal":
            faults = self.client.clear_faults(
                cp_pb2.ClearFaultsRequest(
                    from_region=from_region, to_region=to_region, one_way=one_way
                )
            )
        else:

            def read(name: str, parse: Callable[[str], float]) -> float | None:
                text = values.get(name, "").strip()
                if not text:
                    return None
                try:
                    return parse(text)
                except ValueError as error:
                    raise CliError("INVALID_ARGUMENT", f"{name}: {error}") from None

            try:
                request = net.fault_request(
                    action,
                    from_region,
                    to_region,
                    delay_ms=read("delay", net.parse_ms),
                    jitter_ms=read("jitter", net.parse_ms),
                    loss=read("loss", net.parse_loss),
                    one_way=one_way,
                    duration_s=read("for", net.parse_duration),
                )
            except ValueError as error:
                raise CliError("INVALID_ARGUMENT", str(error)) from None
            faults = self.client.set_link_fault(request)
        now = time.time()
        return [net.fault_json(fault, now) for fault in net.in_force(faults, now)]

    def watch_write(
        self,
        region: str,
        namespace: str,
        key: str,
        value: str,
        on_visible: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        """Put `key` from a client in `region` and report each PoP turning to it.

        Each PoP's time is its own commit -> apply histogram's share of this write
        (`propagation_ms`, read from its metrics before and after), so the page shows
        what the metrics say; its applied seq is polled to know when to read them.
        """
        topology = self.topology()
        if region not in {r.name for r in topology.regions}:
            raise CliError("INVALID_ARGUMENT", f"unknown region {region!r}")
        pops = [info for info in topology.nodes if info.role == cp_pb2.ROLE_POP and info.healthy]
        before = {info.name: self._propagation(info) for info in pops}
        target = self.client.resolve(from_region=region)
        started = time.monotonic()
        put = self.client.kv_put(
            target,
            kv_pb2.KvPutRequest(namespace=namespace, key=key, value=value.encode()),
        )
        seq = put.response.seq
        results = []
        deadline = time.monotonic() + WATCH_TIMEOUT_S
        waiting = {info.name: info for info in pops}
        stubs = {
            info.name: pop_pb2_grpc.PopStub(self.client.channel(info.grpc_address, name=info.name))
            for info in pops
        }
        while waiting and time.monotonic() < deadline:
            for name in list(waiting):
                try:
                    status = stubs[name].Status(pop_pb2.PopStatusRequest(), timeout=1.0)
                except grpc.RpcError:
                    continue
                if status.applied_seq < seq:
                    continue
                info = waiting.pop(name)
                result = {
                    "node": name,
                    "region": info.region,
                    "seq": seq,
                    "propagation_ms": _round(propagation_ms(before[name], self._propagation(info))),
                    "seen_after_ms": round((time.monotonic() - started) * 1e3, 1),
                }
                results.append(result)
                on_visible(result)
            if waiting:
                time.sleep(WATCH_POLL_S)
        return {
            "region": region,
            "via": target.name,
            "namespace": namespace,
            "key": key,
            "seq": seq,
            "ack_ms": round(put.latency_ms, 2),
            "pops": results,
            "not_seen": sorted(waiting),
        }

    def _propagation(self, info: cp_pb2.NodeInfo) -> tuple[float, float]:
        try:
            return propagation_totals(scrape(info.metrics_address, samples=PROPAGATION_SAMPLES))
        except (OSError, ValueError):
            return 0.0, 0.0

    def _pop_target(self, name: str) -> Target:
        info = self.client.node_info(name)
        if info.role != cp_pb2.ROLE_POP:
            raise CliError("INVALID_ARGUMENT", f"{name} is not a PoP")
        return Target(name, role_name(info.role), info.region, info.grpc_address, "")
