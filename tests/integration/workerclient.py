"""Helpers for worker tests: deploy bundles, talk HTTP/1.1 to PoP ingress and the origin
app, read Prometheus metrics.

HTTP goes through `http.client` (the standard library under urllib) on persistent
connections, so a measured latency is the request's own, not a TCP handshake's. Each
request may say where its simulated user is (`x-edge-region`) and stamps
`x-edge-sent-at`, so the emulated delay counts the real transit time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import json5
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edge.v1 import (
    control_plane_pb2_grpc,
    kv_pb2,
    pop_pb2,
    pop_pb2_grpc,
    workers_pb2,
)
from edgectl.launcher import Cluster
from edgepop.bundle import read_bundle
from edgepop.netem import REGION_HEADER, sent_at_metadata
from tests.conftest import measured_again_if_missed, poll_until
from tests.integration.seeds import seeded_nodes

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "workers"
FIXTURES_DIR = REPO / "tests" / "fixtures" / "workers"
EXAMPLES = ("api-router", "jwt-auth", "ab-test", "personalize", "rate-limit", "middleware")
HTTP_TIMEOUT_S = 30.0
# The issue's bound for a deploy (or rollback) to reach every PoP.
DEPLOY_PROPAGATION_S_MAX = 2.0


# -- clusters ------------------------------------------------------------------------------


@contextlib.contextmanager
def module_cluster(
    tmp_path_factory: pytest.TempPathFactory, label: str, topology: dict[str, Any]
) -> Iterator[Cluster]:
    """A cluster for one test module (started here, stopped by PID at the end), its
    random draws seeded with the session's seed (the A/B split replays)."""
    data_dir = tmp_path_factory.mktemp(label)
    topology_file = data_dir / "topology.yaml"
    topology_file.write_text(yaml.safe_dump(topology))
    cluster = Cluster(data_dir, topology_file=topology_file)
    try:
        with seeded_nodes():
            cluster.up()
        yield cluster
    finally:
        cluster.down()


def pop_in(cluster: Cluster, region: str, index: int = 1) -> str:
    """The name of a PoP of `region` (`tokyo-1`)."""
    name = f"{region}-{index}"
    cluster.node(name)
    return name


# -- deploys -------------------------------------------------------------------------------


def auth(cluster: Cluster) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {cluster.token}")]


@contextlib.contextmanager
def control_plane(cluster: Cluster) -> Iterator[control_plane_pb2_grpc.ControlPlaneStub]:
    with grpc.insecure_channel(cluster.control_plane.grpc_address) as channel:
        yield control_plane_pb2_grpc.ControlPlaneStub(channel)


def bundle(
    folder: Path,
    *,
    vars: Mapping[str, str] | None = None,
    replace: Mapping[str, bytes] | None = None,
) -> workers_pb2.WorkerBundle:
    """A folder's bundle, with its config's vars overridden (worker.yaml or wrangler.jsonc)
    and files replaced in memory."""
    read = read_bundle(folder)
    for file in read.files:
        if replace and file.path in replace:
            file.content = replace[file.path]
        if vars and file.path == "worker.yaml":
            config = yaml.safe_load(file.content)
            config["vars"] = {**(config.get("vars") or {}), **vars}
            file.content = yaml.safe_dump(config).encode()
        elif vars and file.path == "wrangler.jsonc":
            config = json5.loads(file.content.decode())
            config["vars"] = {**(config.get("vars") or {}), **vars}
            file.content = json.dumps(config).encode()
    return read


def deploy(
    cluster: Cluster, bundle_or_folder: workers_pb2.WorkerBundle | Path
) -> workers_pb2.DeployResponse:
    to_deploy = (
        read_bundle(bundle_or_folder) if isinstance(bundle_or_folder, Path) else bundle_or_folder
    )
    with control_plane(cluster) as stub:
        response: workers_pb2.DeployResponse = stub.Deploy(
            workers_pb2.DeployRequest(bundle=to_deploy), metadata=auth(cluster), timeout=10
        )
    return response


def rollback(cluster: Cluster, name: str) -> workers_pb2.DeployResponse:
    with control_plane(cluster) as stub:
        response: workers_pb2.DeployResponse = stub.Deploy(
            workers_pb2.DeployRequest(rollback=True, name=name), metadata=auth(cluster), timeout=10
        )
    return response


def list_workers(cluster: Cluster) -> list[workers_pb2.WorkerVersion]:
    with control_plane(cluster) as stub:
        return list(stub.ListWorkers(workers_pb2.ListWorkersRequest(), timeout=10).versions)


def pop_status(cluster: Cluster, pop: str) -> pop_pb2.PopStatusResponse:
    with grpc.insecure_channel(cluster.node(pop).grpc_address) as channel:
        status: pop_pb2.PopStatusResponse = pop_pb2_grpc.PopStub(channel).Status(
            pop_pb2.PopStatusRequest(), timeout=5
        )
    return status


def loaded_versions(cluster: Cluster, pop: str) -> dict[str, str]:
    """worker name -> version loaded at `pop` (Pop.Status)."""
    return {worker.name: worker.version for worker in pop_status(cluster, pop).workers}


def wait_loaded(
    cluster: Cluster, name: str, version: str, timeout: float = 10.0, pops: list[str] | None = None
) -> None:
    """Wait until every PoP (or the given ones) reports `version` of worker `name`."""
    names = pops or [pop.name for pop in cluster.pops]
    poll_until(
        lambda: all(loaded_versions(cluster, pop).get(name) == version for pop in names),
        timeout=timeout,
        interval=0.05,
        what=f"{name} {version[:12]} loaded at {names}",
    )


def deploy_everywhere(
    cluster: Cluster, bundle_or_folder: workers_pb2.WorkerBundle | Path, timeout: float = 15.0
) -> workers_pb2.DeployResponse:
    deployed = deploy(cluster, bundle_or_folder)
    wait_loaded(cluster, deployed.name, deployed.version, timeout=timeout)
    return deployed


def kv_value(cluster: Cluster, pop: str, namespace: str, key: str) -> bytes | None:
    """A key as one PoP's replica (plus its own pending writes) reads it; None if missing."""
    with grpc.insecure_channel(cluster.node(pop).grpc_address) as channel:
        found = pop_pb2_grpc.PopStub(channel).KvGet(
            kv_pb2.KvGetRequest(namespace=namespace, key=key), timeout=5
        )
    return bytes(found.value) if found.found else None


def kv_put(cluster: Cluster, pop: str, namespace: str, key: str, value: bytes) -> None:
    """Write a key through one PoP (visible there at once: read-your-writes)."""
    with grpc.insecure_channel(cluster.node(pop).grpc_address) as channel:
        pop_pb2_grpc.PopStub(channel).KvPut(
            kv_pb2.KvPutRequest(namespace=namespace, key=key, value=value), timeout=10
        )


# -- HTTP ----------------------------------------------------------------------------------


@dataclass
class HttpResult:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed_s: float

    def header(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return default

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class EdgeClient:
    """HTTP/1.1 to one address on one kept-alive connection (not thread-safe: one per
    thread). `region` is where the simulated user is; None sends no region (no delay)."""

    address: str
    region: str | None = None
    timeout_s: float = HTTP_TIMEOUT_S
    # False: a plain client (a browser, curl) that sends no `x-edge-sent-at`.
    stamp: bool = True
    _connection: http.client.HTTPConnection | None = field(default=None, repr=False)

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            host, port = self.address.rsplit(":", 1)
            self._connection = http.client.HTTPConnection(host, int(port), timeout=self.timeout_s)
            self._connection.connect()
            self._connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def request(
        self,
        host: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> HttpResult:
        all_headers = {"Host": host, **(headers or {})}
        if self.region is not None:
            all_headers.setdefault(REGION_HEADER, self.region)
        for attempt in range(2):
            connection = self._connect()
            started = time.perf_counter()  # before the stamp: see EdgeClient._timed_method
            if self.stamp:
                name, value = sent_at_metadata()
                all_headers[name] = value
            try:
                connection.request(method, path, body=body, headers=all_headers)
                response = connection.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed a kept-alive connection between requests: reconnect
                # once (a request that reached a handler is never resent).
                self.close()
                if attempt:
                    raise
                continue
            elapsed = time.perf_counter() - started
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return HttpResult(response.status, response.getheaders(), payload, elapsed)
        raise AssertionError("unreachable")

    def get(self, host: str, path: str = "/", **kwargs: Any) -> HttpResult:
        return self.request(host, path, **kwargs)


# The probe table's tolerance (DESIGN.md, `edgectl probe`): max(1 ms, 5%) of the target.
TABLE_TOLERANCE_S_MIN = 0.001
TABLE_TOLERANCE_SHARE = 0.05


def table_tolerance_s(target_s: float) -> float:
    return max(TABLE_TOLERANCE_S_MIN, TABLE_TOLERANCE_SHARE * target_s)


@dataclass
class PairedTiming:
    """The same request sent alternately from a region and from nowhere (no emulated
    delay on the client's own hop), on two kept-alive connections to one PoP, by a
    plain client that stamps nothing (as a browser would).

    The undelayed request measures what the emulation does not add (parsing, the worker,
    its subrequests); the difference of the medians is what it adds: the client's edge
    round trip, to be held to the table's tolerance. (A stamping client would see that
    difference short by the loopback transport time, which the emulation counts against
    the delay of the delayed request only.)"""

    delayed: list[HttpResult]
    undelayed: list[HttpResult]
    # What earlier measurements of the same row added (s), when they missed the target.
    missed_s: list[float] = field(default_factory=list)

    @property
    def added_s(self) -> float:
        return statistics.median(r.elapsed_s for r in self.delayed) - self.own_cost_s

    @property
    def own_cost_s(self) -> float:
        return statistics.median(r.elapsed_s for r in self.undelayed)

    def adds(self, target_s: float) -> bool:
        """The emulation added `target_s`, within the table's tolerance."""
        return abs(self.added_s - target_s) <= table_tolerance_s(target_s)

    def __str__(self) -> str:
        missed = "".join(f", first added {added_s * 1e3:.2f} ms" for added_s in self.missed_s)
        return (
            f"added {self.added_s * 1e3:.2f} ms over an own cost of {self.own_cost_s * 1e3:.2f} ms"
            f" (delayed {[round(r.elapsed_s * 1e3, 2) for r in self.delayed]}{missed})"
        )


def paired_timing(
    address: str,
    region: str,
    host: str,
    path: str = "/",
    pairs: int = 15,
    *,
    target_s: float | None = None,
    **kwargs: Any,
) -> PairedTiming:
    """`pairs` delayed and undelayed requests, alternated; with `target_s`, measured
    again when the first measurement does not add the target (`measured_again_if_missed`)."""
    measurements = measured_again_if_missed(
        lambda: _paired_timing_once(address, region, host, path, pairs, **kwargs),
        lambda timing: target_s is not None and not timing.adds(target_s),
    )
    timing = measurements[-1]
    timing.missed_s = [earlier.added_s for earlier in measurements[:-1]]
    return timing


def _paired_timing_once(
    address: str, region: str, host: str, path: str, pairs: int, **kwargs: Any
) -> PairedTiming:
    delayed, undelayed = EdgeClient(address, region, stamp=False), EdgeClient(address, stamp=False)
    timing = PairedTiming([], [])
    try:
        delayed.request(host, path, **kwargs)  # connect both first
        undelayed.request(host, path, **kwargs)
        for _ in range(pairs):
            timing.delayed.append(delayed.request(host, path, **kwargs))
            timing.undelayed.append(undelayed.request(host, path, **kwargs))
    finally:
        delayed.close()
        undelayed.close()
    return timing


def http_once(
    address: str,
    host: str,
    path: str = "/",
    *,
    region: str | None = None,
    **kwargs: Any,
) -> HttpResult:
    """One request on a fresh connection."""
    client = EdgeClient(address, region)
    try:
        return client.request(host, path, **kwargs)
    finally:
        client.close()


class ClientsPerThread:
    """One `EdgeClient` per (thread, address): for thread pools hitting several PoPs."""

    def __init__(self, region_of: Mapping[str, str | None] | None = None) -> None:
        self._local = threading.local()
        self._region_of = dict(region_of or {})
        self._all: list[EdgeClient] = []
        self._lock = threading.Lock()

    def get(self, address: str) -> EdgeClient:
        clients: dict[str, EdgeClient] = getattr(self._local, "clients", None) or {}
        self._local.clients = clients
        if address not in clients:
            clients[address] = EdgeClient(address, self._region_of.get(address))
            with self._lock:
                self._all.append(clients[address])
        return clients[address]

    def close(self) -> None:
        with self._lock:
            for client in self._all:
                client.close()


def raw_exchange(address: str, data: bytes, timeout_s: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes; read until the server closes (or `timeout_s` passes).

    Returns (everything received, whether the server closed the connection).
    """
    host, port = address.rsplit(":", 1)
    received = b""
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, False
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
    return received, False


# -- the origin app ------------------------------------------------------------------------


def issue_token(cluster: Cluster, subject: str, algorithm: str = "RS256", ttl_s: int = 3600) -> str:
    """A JWT from the origin's auth server (POST /auth/token with the cluster token)."""
    result = http_once(
        cluster.origin.http_address,
        "origin",
        "/auth/token",
        method="POST",
        headers={"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"},
        body=f'{{"sub": "{subject}", "alg": "{algorithm}", "ttl_s": {ttl_s}}}'.encode(),
    )
    assert result.status == 200, result.text
    token: str = result.json()["token"]
    return token


def origin_signing_key_pem(cluster: Cluster, algorithm: str) -> bytes:
    """The origin's private signing key (to forge tokens the JWKS would verify)."""
    name = "rs256.pem" if algorithm == "RS256" else "es256.pem"
    return (Path(cluster.origin.data_dir) / "jwt-keys" / name).read_bytes()


# -- metrics -------------------------------------------------------------------------------


def http_get(
    address: str, host: str, path: str = "/", *, timeout_s: float = 10.0, **headers: str
) -> tuple[int, str]:
    """GET http://address/path with a Host header, as curl -H 'Host: …' does: (status,
    body), an HTTP error's too. A fresh connection (for a request's outcome, not timing)."""
    request = urllib.request.Request(
        f"http://{address}{path}", headers={"Host": host, **headers}, method="GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric_samples(address: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` on a node's /metrics: (labels, value)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metric_sum(address: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for sample_labels, value in metric_samples(address, name)
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items())
    )


def node_metric(cluster: Cluster, node: str, name: str, **labels: str) -> float:
    return metric_sum(cluster.node(node).metrics_address, name, **labels)


def origin_requests(cluster: Cluster, route: str | None = None) -> float:
    """edge_origin_http_requests_total at the origin (one route, or all)."""
    labels = {"route": route} if route is not None else {}
    return metric_sum(cluster.origin.metrics_address, "edge_origin_http_requests_total", **labels)
