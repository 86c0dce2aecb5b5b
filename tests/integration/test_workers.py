"""Edge functions on a running cluster, over real HTTP: deploys and rollbacks under load,
CPU limits, errors, ingress limits, the per-PoP HTTP cache, worker-defined Durable
Objects, and the worker metrics.

One module cluster (us-east-1 origin; PoPs in new-york, tokyo x2 and london; the seed's
delays) runs the test bundles of `tests/fixtures/workers/`; every test leaves it serving.
Bugs that wedge a PoP's worker loader get a fresh one-PoP cluster of their own.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import statistics
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest

from edge.v1 import workers_pb2
from edgectl.launcher import Cluster
from edgepop.bundle import read_bundle
from tests.conftest import ClusterFactory, poll_until
from tests.integration.workerclient import (
    DEPLOY_PROPAGATION_S_MAX,
    EXAMPLES_DIR,
    FIXTURES_DIR,
    EdgeClient,
    HttpResult,
    auth,
    bundle,
    control_plane,
    deploy,
    deploy_everywhere,
    http_once,
    kv_put,
    kv_value,
    list_workers,
    loaded_versions,
    metric_samples,
    module_cluster,
    node_metric,
    origin_requests,
    paired_timing,
    pop_status,
    raw_exchange,
    rollback,
    wait_loaded,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timing]

RUNTIME_TOPOLOGY = {
    "regions": [
        {"name": "us-east-1"},
        {"name": "new-york", "pop_nodes": 1},
        {"name": "tokyo", "pop_nodes": 2},
        {"name": "london", "pop_nodes": 1},
    ]
}
FIXTURE_WORKERS = ("echo", "hog", "raise", "stream", "rooms", "proxy", "kv")
FIXTURE_FOLDERS = {"raise": "raises"}
ECHO = "echo.test"
TOKYO_ORIGIN_RTT_S = 0.170
TOKYO_EDGE_RTT_S = 0.008


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The module cluster with every fixture worker loaded at every PoP."""
    with module_cluster(tmp_path_factory, "workers", RUNTIME_TOPOLOGY) as cluster:
        for name in FIXTURE_WORKERS:
            deploy(cluster, FIXTURES_DIR / FIXTURE_FOLDERS.get(name, name))
        for version in list_workers(cluster):
            wait_loaded(cluster, version.name, version.version, timeout=20)
        yield cluster


def address(cluster: Cluster, pop: str) -> str:
    return cluster.node(pop).http_address


def echo_version(result: HttpResult) -> str:
    assert result.status == 200, (result.status, result.text)
    version: str = result.json()["version"]
    return version


def serves_version(http_address: str, version: str) -> bool:
    return echo_version(http_once(http_address, ECHO)) == version


def assert_pop_serves(cluster: Cluster, pop: str) -> None:
    """The PoP still answers a normal worker request."""
    result = http_once(address(cluster, pop), ECHO, "/still-serving")
    assert result.status == 200, result.text


# -- deploys -------------------------------------------------------------------------------


def test_a_deploy_is_listed_loaded_at_every_pop_and_its_cold_start_measured(
    runtime: Cluster,
) -> None:
    marker = unique("v")
    deployed = deploy(runtime, bundle(FIXTURES_DIR / "echo", vars={"VERSION": marker}))
    assert deployed.changed and len(deployed.version) == 64
    deployed_at = time.monotonic()
    for pop in runtime.pops:
        poll_until(
            functools.partial(serves_version, pop.http_address, marker),
            timeout=DEPLOY_PROPAGATION_S_MAX + 1,
            what=f"{pop.name} serving {marker}",
        )
    assert time.monotonic() - deployed_at < DEPLOY_PROPAGATION_S_MAX
    # The same bundle again is the same version: nothing changes.
    again = deploy(runtime, bundle(FIXTURES_DIR / "echo", vars={"VERSION": marker}))
    assert (again.version, again.changed) == (deployed.version, False)
    listed = [v for v in list_workers(runtime) if v.name == "test-echo"]
    active = [v for v in listed if v.active]
    assert [v.version for v in active] == [deployed.version]
    assert list(active[0].routes) == ["echo.test/*"]
    for pop in runtime.pops:
        [loaded] = [w for w in pop_status(runtime, pop.name).workers if w.name == "test-echo"]
        assert loaded.version == deployed.version
        assert 0 < loaded.cold_start_ms < 2000
        assert (
            node_metric(
                runtime, pop.name, "edge_worker_cold_start_seconds_count", worker="test-echo"
            )
            >= 1
        )


@dataclass
class Seen:
    thread: int
    pop: str
    status: int
    version: str
    at: float


def run_load(
    cluster: Cluster, stop: threading.Event, seen: list[Seen], threads: int = 6
) -> ThreadPoolExecutor:
    """`threads` clients, each cycling over every PoP as fast as it can until `stop`;
    each thread has its own kept-alive connection per PoP."""
    pops = [pop.name for pop in cluster.pops]
    lock = threading.Lock()

    def client(index: int) -> None:
        connections = {pop: EdgeClient(address(cluster, pop)) for pop in pops}
        try:
            turn = index
            while not stop.is_set():
                pop = pops[turn % len(pops)]
                turn += 1
                try:
                    result = connections[pop].get(ECHO, f"/load?t={index}")
                    version = result.json().get("version", "") if result.status == 200 else ""
                    status = result.status
                except Exception as error:  # a failed request is what this test counts
                    version, status = repr(error), 0
                with lock:
                    seen.append(Seen(index, pop, status, version, time.monotonic()))
        finally:
            for connection in connections.values():
                connection.close()

    pool = ThreadPoolExecutor(threads)
    for index in range(threads):
        pool.submit(client, index)
    return pool


def first_seen_after(
    cluster: Cluster, seen: list[Seen], version: str, since: float
) -> dict[str, float]:
    """Wait until the load has seen `version` at every PoP after `since`; seconds from
    `since` to the first such answer, per PoP."""

    def firsts() -> dict[str, float] | None:
        found: dict[str, float] = {}
        for item in list(seen):
            if item.version == version and item.at > since and item.pop not in found:
                found[item.pop] = item.at - since
        return found if len(found) == len(cluster.pops) else None

    result: dict[str, float] = poll_until(firsts, timeout=10, what=f"{version} at every PoP")
    return result


def test_deploy_and_rollback_under_load_fail_no_request_and_reach_every_pop_within_2s(
    runtime: Cluster,
) -> None:
    """Six threads send requests to all four PoPs without pause while a new version is
    deployed and then rolled back: every request succeeds, each PoP switches within 2 s,
    and a client never goes back to the old version once it saw the new one at a PoP."""
    old, new = unique("old"), unique("new")
    deploy_everywhere(runtime, bundle(FIXTURES_DIR / "echo", vars={"VERSION": old}))
    seen: list[Seen] = []
    stop = threading.Event()
    pool = run_load(runtime, stop, seen)
    try:
        poll_until(lambda: len(seen) > 50, timeout=10, what="load running")
        started = time.monotonic()
        deployed = deploy(runtime, bundle(FIXTURES_DIR / "echo", vars={"VERSION": new}))
        to_new = first_seen_after(runtime, seen, new, started)
        started = time.monotonic()
        rolled = rollback(runtime, "test-echo")
        to_old = first_seen_after(runtime, seen, old, started)
        count = len(seen)
        poll_until(lambda: len(seen) > count + 50, timeout=10, what="load after the rollback")
    finally:
        stop.set()
        pool.shutdown(wait=True)
    failures = [s for s in seen if s.status != 200]
    assert not failures, f"{len(failures)} of {len(seen)} requests failed: {failures[:5]}"
    assert rolled.version != deployed.version
    assert max(to_new.values()) < DEPLOY_PROPAGATION_S_MAX, to_new
    assert max(to_old.values()) < DEPLOY_PROPAGATION_S_MAX, to_old
    # Per client and PoP the versions go old -> new -> old, never back and forth.
    by_stream: dict[tuple[int, str], list[str]] = defaultdict(list)
    for item in seen:
        stream = by_stream[(item.thread, item.pop)]
        if not stream or stream[-1] != item.version:
            stream.append(item.version)
    allowed = ([old, new, old], [old, new], [old], [new, old], [new])
    for stream_key, versions in by_stream.items():
        assert versions in allowed, (stream_key, versions)
    assert len(seen) > 200


def test_requests_in_flight_finish_on_the_old_version(runtime: Cluster) -> None:
    """A request that started on one version finishes on it, although the PoP switched
    to the next version (and serves it) while the request was waiting. The request
    waits for a KV key the test writes only once the new version serves, so it is in
    flight across the switch however long the deploy takes."""
    first, second = unique("first"), unique("second")
    deploy_everywhere(runtime, bundle(FIXTURES_DIR / "echo", vars={"VERSION": first}))
    pop = address(runtime, "new-york-1")
    mark = uuid.uuid4().hex[:8]
    release = f"release:{mark}"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(http_once, pop, ECHO, f"/slow?mark={mark}&until={release}")
        poll_until(
            lambda: (
                kv_value(runtime, "new-york-1", "test-echo-marks", f"started:{mark}") is not None
            ),
            timeout=5,
            what="the slow request running in the worker",
        )
        deployed = deploy(runtime, bundle(FIXTURES_DIR / "echo", vars={"VERSION": second}))
        poll_until(
            lambda: echo_version(http_once(pop, ECHO)) == second,
            timeout=DEPLOY_PROPAGATION_S_MAX,
            what="new version serving",
        )
        assert not slow.done(), "the slow request should still be waiting for its release"
        kv_put(runtime, "new-york-1", "test-echo-marks", release, b"go")
        finished = slow.result(timeout=10)
    assert echo_version(finished) == first
    assert deployed.version[:12] not in finished.json()["package"]


def test_a_version_that_does_not_load_leaves_the_previous_one_serving(runtime: Cluster) -> None:
    good = unique("good")
    deployed = deploy_everywhere(runtime, bundle(FIXTURES_DIR / "echo", vars={"VERSION": good}))
    broken = bundle(
        FIXTURES_DIR / "echo",
        vars={"VERSION": unique("broken")},
        replace={"worker.py": b"async def fetch(request, env, ctx)\n    return None\n"},
    )
    broken_deploy = deploy(runtime, broken)
    assert broken_deploy.changed
    # For a while after the broken deploy every PoP keeps the good version and serves it.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        for pop in runtime.pops:
            assert loaded_versions(runtime, pop.name)["test-echo"] == deployed.version
            assert echo_version(http_once(pop.http_address, ECHO)) == good
    # And the next good deploy still goes out.
    fixed = unique("fixed")
    fixed_deploy = deploy(runtime, bundle(FIXTURES_DIR / "echo", vars={"VERSION": fixed}))
    wait_loaded(runtime, "test-echo", fixed_deploy.version, timeout=DEPLOY_PROPAGATION_S_MAX)


def test_deploy_rpcs_check_the_cluster_token_the_bundle_and_the_history(runtime: Cluster) -> None:
    with control_plane(runtime) as stub:
        request = workers_pb2.DeployRequest(bundle=read_bundle(FIXTURES_DIR / "echo"))
        with pytest.raises(grpc.RpcError) as no_token:
            stub.Deploy(request, timeout=10)
        assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bad = bundle(FIXTURES_DIR / "echo", replace={"worker.yaml": b"name: Not_Valid\n"})
        with pytest.raises(grpc.RpcError) as invalid:
            stub.Deploy(workers_pb2.DeployRequest(bundle=bad), metadata=auth(runtime), timeout=10)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "worker.yaml:1: name: must be" in (invalid.value.details() or "")
    with pytest.raises(grpc.RpcError) as no_history:
        rollback(runtime, "never-deployed")
    assert no_history.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# -- CPU limits and errors -----------------------------------------------------------------


def test_a_cpu_hog_gets_1102_while_concurrent_requests_succeed(runtime: Cluster) -> None:
    """Hogs (a busy loop, one inside `except Exception`, many short steps) each get 503
    with 1102 in well under their 3 s of CPU, while a client keeps getting answers from
    the same PoP; the PoP keeps serving afterwards."""
    pop = "tokyo-1"
    stop = threading.Event()
    normal: list[HttpResult] = []

    def normal_client() -> None:
        client = EdgeClient(address(runtime, pop))
        try:
            while not stop.is_set():
                normal.append(client.get(ECHO, "/normal"))
        finally:
            client.close()

    requests_before = node_metric(
        runtime, pop, "edge_worker_requests_total", worker="test-hog", status="503"
    )
    cpu_count_before = node_metric(runtime, pop, "edge_worker_cpu_seconds_count", worker="test-hog")
    modes = ["spin", "swallow", "steps", "spin", "swallow", "spin"]
    with ThreadPoolExecutor(4) as pool:
        background = pool.submit(normal_client)
        poll_until(lambda: len(normal) >= 3, timeout=5, what="normal requests flowing")
        hogs = list(
            pool.map(
                lambda mode: http_once(address(runtime, pop), "hog.test", f"/?mode={mode}&s=3"),
                modes,
            )
        )
        count_during = len(normal)
        poll_until(lambda: len(normal) >= count_during + 3, timeout=5, what="normal requests after")
        stop.set()
        background.result(timeout=10)
    for mode, hog in zip(modes, hogs, strict=True):
        assert hog.status == 503, (mode, hog.status, hog.text)
        assert hog.text.startswith("error code: 1102"), hog.text
        assert hog.header("cf-error-code") == "1102"
        assert hog.elapsed_s < 2.0, (mode, hog.elapsed_s)
    assert all(result.status == 200 for result in normal)
    # The loop is blocked only for a few hog budgets (CPU time; more wall time on a busy
    # host), never for the 3 s of CPU each hog wanted.
    assert max(result.elapsed_s for result in normal) < 2.0
    assert_pop_serves(runtime, pop)
    assert node_metric(
        runtime, pop, "edge_worker_requests_total", worker="test-hog", status="503"
    ) == (requests_before + len(modes))
    assert node_metric(runtime, pop, "edge_worker_cpu_seconds_count", worker="test-hog") == (
        cpu_count_before + len(modes)
    )


def test_a_hog_that_catches_everything_still_gets_1102_promptly(runtime: Cluster) -> None:
    result = http_once(address(runtime, "london-1"), "hog.test", "/?mode=bare&s=0.5")
    assert_pop_serves(runtime, "london-1")
    assert (result.status, result.header("cf-error-code")) == (503, "1102"), result.text
    assert result.elapsed_s < 0.5


def test_a_worker_that_raises_gets_1101_without_details_and_the_pop_keeps_serving(
    runtime: Cluster,
) -> None:
    pop = address(runtime, "new-york-1")
    before = node_metric(
        runtime, "new-york-1", "edge_worker_requests_total", worker="test-raise", status="500"
    )
    for path in ("/", "/?mode=badreturn", "/again"):
        result = http_once(pop, "raise.test", path)
        assert result.status == 500
        assert result.text.startswith("error code: 1101")
        assert result.header("cf-error-code") == "1101"
        assert "secret" not in result.text and "Traceback" not in result.text
    assert_pop_serves(runtime, "new-york-1")
    after = node_metric(
        runtime, "new-york-1", "edge_worker_requests_total", worker="test-raise", status="500"
    )
    assert after == before + 3


def test_a_host_without_a_worker_route_gets_404(runtime: Cluster) -> None:
    result = http_once(address(runtime, "new-york-1"), "nobody.test", "/x")
    assert result.status == 404
    assert "no worker route" in result.json()["error"]
    # `<name>.workers.dev` reaches a worker without a route, as on Cloudflare.
    assert http_once(address(runtime, "new-york-1"), "test-echo.workers.dev", "/").status == 200


# -- streaming, cookies, geo -------------------------------------------------------------


def test_a_streaming_response_reaches_the_client_chunk_by_chunk(runtime: Cluster) -> None:
    host, port = address(runtime, "new-york-1").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        started = time.perf_counter()
        connection.request("GET", "/?n=5&gap=0.15", headers={"Host": "stream.test"})
        response = connection.getresponse()
        first = response.read1(65536)
        first_chunk_at = time.perf_counter() - started
        rest = response.read()
        total = time.perf_counter() - started
    finally:
        connection.close()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("X-Streamed") == "yes"
    assert first.startswith(b"chunk 0\n")
    assert (first + rest).decode().splitlines() == [f"chunk {i}" for i in range(5)]
    # Four gaps of 150 ms: the first chunk is out long before the last one is made.
    assert total >= 0.55
    assert first_chunk_at < total - 0.4, (first_chunk_at, total)
    assert_pop_serves(runtime, "new-york-1")


def test_a_streaming_response_pays_the_same_emulated_rtt_as_a_buffered_one(
    runtime: Cluster,
) -> None:
    """Each on a fresh connection (on a kept-alive one the held leg delays the next
    request instead, which hides the early stream)."""
    rtt_s = runtime.topology.rtt_ms("london", "tokyo", caller_is_node=False) / 1000
    tokyo = address(runtime, "tokyo-1")
    buffered = [http_once(tokyo, ECHO, "/buffered", region="london").elapsed_s for _ in range(3)]
    streamed = [
        http_once(tokyo, "stream.test", "/?n=1", region="london").elapsed_s for _ in range(3)
    ]
    assert statistics.median(buffered) >= rtt_s - 0.005
    assert statistics.median(streamed) >= rtt_s - 0.005, (rtt_s, buffered, streamed)


def test_cpu_spent_in_a_streaming_body_is_limited_too(runtime: Cluster) -> None:
    """The body generator yields one chunk, then burns 1.5 s of CPU. A request sent once
    the first chunk arrived must not wait for that."""
    pop = address(runtime, "london-1")
    host, port = pop.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", "/?n=3&hog=1.5", headers={"Host": "stream.test"})
        response = connection.getresponse()
        assert response.read1(65536).startswith(b"chunk 0")
        bystander = http_once(pop, ECHO, "/bystander")
        with contextlib.suppress(http.client.HTTPException, OSError):
            response.read()
    finally:
        connection.close()
    assert bystander.status == 200
    assert bystander.elapsed_s < 0.5, f"the PoP was blocked for {bystander.elapsed_s:.2f} s"


def test_several_set_cookie_headers_and_request_cookies_pass_the_ingress(runtime: Cluster) -> None:
    result = http_once(
        address(runtime, "new-york-1"),
        ECHO,
        "/cookies?cookies=3",
        headers={"Cookie": "a=1; experiment-checkout-v2=variant"},
    )
    assert result.status == 200
    assert result.header_all("Set-Cookie") == [
        "c0=v0; Path=/; HttpOnly",
        "c1=v1; Path=/; HttpOnly",
        "c2=v2; Path=/; HttpOnly",
    ]
    assert result.json()["cookies"] == {"a": "1", "experiment-checkout-v2": "variant"}


def test_geo_fields_come_from_the_users_region_and_colo_from_the_pop(runtime: Cluster) -> None:
    tokyo_pop = address(runtime, "tokyo-1")
    from_london = http_once(tokyo_pop, ECHO, "/geo", region="london").json()["cf"]
    assert from_london == {
        "colo": "NRT",
        "region": "london",
        "country": "GB",
        "city": "London",
        "continent": "EU",
        "timezone": "Europe/London",
        "latitude": 51.51,
        "longitude": -0.13,
        "is_eu_country": False,
    }
    # No region header (or an unknown one): the PoP's own region.
    own = http_once(tokyo_pop, ECHO, "/geo").json()["cf"]
    assert (own["country"], own["city"], own["colo"]) == ("JP", "Tokyo", "NRT")
    unknown = http_once(tokyo_pop, ECHO, "/geo", region="atlantis").json()["cf"]
    assert unknown["region"] == "tokyo"


def test_the_http_path_pays_the_emulated_edge_delay_within_the_table_tolerance(
    runtime: Cluster,
) -> None:
    """A Tokyo user's request to tokyo-1 takes the edge RTT (8 ms) longer than the same
    request from nowhere, within the probe table's max(1 ms, 5%)."""
    timing = paired_timing(
        address(runtime, "tokyo-1"), "tokyo", ECHO, "/rtt", pairs=20, target_s=TOKYO_EDGE_RTT_S
    )
    print(f"echo from tokyo: {timing}")
    assert all(r.status == 200 for r in timing.delayed + timing.undelayed)
    assert timing.adds(TOKYO_EDGE_RTT_S), f"{timing}"


# -- ingress limits and malformed HTTP -------------------------------------------------


def test_malformed_http_gets_400_and_the_connection_closes(runtime: Cluster) -> None:
    pop = address(runtime, "tokyo-2")
    for garbage in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: echo.test\r\nno colon in this header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: nope\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),
    ):
        received, closed = raw_exchange(pop, garbage)
        assert received.split(b"\r\n", 1)[0].endswith(b"400 Bad Request"), received[:200]
        assert closed, "the server must close a connection it cannot parse"
        assert_pop_serves(runtime, "tokyo-2")


@pytest.mark.parametrize(
    ("scenario", "status"),
    [
        ("url-17KiB", 414),
        ("one-header-40KiB", 431),
        ("forty-headers-1KiB-each", 431),
        ("body-11MiB", 413),
    ],
)
def test_oversized_requests_get_their_status_and_the_pop_keeps_serving(
    runtime: Cluster, scenario: str, status: int
) -> None:
    pop = address(runtime, "tokyo-2")
    path, headers, body, method = "/", {}, None, "GET"
    if scenario == "url-17KiB":
        path = "/" + "u" * (17 * 1024)
    elif scenario == "one-header-40KiB":
        headers = {"X-Big": "h" * (40 * 1024)}
    elif scenario == "forty-headers-1KiB-each":
        headers = {f"X-H{index}": "h" * 1024 for index in range(40)}
    else:
        body, method = b"b" * (11 * 1024 * 1024), "POST"
    result = http_once(pop, ECHO, path, headers=headers, body=body, method=method)
    assert result.status == status, (result.status, result.text[:200])
    assert_pop_serves(runtime, "tokyo-2")


def test_requests_just_within_the_limits_reach_the_worker(runtime: Cluster) -> None:
    pop = address(runtime, "tokyo-2")
    assert http_once(pop, ECHO, "/" + "u" * (15 * 1024)).status == 200
    assert http_once(pop, ECHO, "/", headers={"X-Big": "h" * (30 * 1024)}).status == 200
    body = b"b" * (10 * 1024 * 1024)
    result = http_once(pop, ECHO, "/", method="POST", body=body)
    assert result.status == 200
    assert result.json()["body_bytes"] == len(body)


@pytest.mark.parametrize(
    ("scenario", "status"),
    [("url-70KiB", 414), ("one-header-70KiB", 431), ("300-headers", 431)],
)
def test_far_oversized_requests_still_get_414_or_431(
    runtime: Cluster, scenario: str, status: int
) -> None:
    pop = address(runtime, "tokyo-2")
    path, headers = "/", {}
    if scenario == "url-70KiB":
        path = "/" + "u" * (70 * 1024)
    elif scenario == "one-header-70KiB":
        headers = {"X-Big": "h" * (70 * 1024)}
    else:
        headers = {f"X-H{index}": "h" for index in range(300)}
    result = http_once(pop, ECHO, path, headers=headers)
    assert_pop_serves(runtime, "tokyo-2")
    assert result.status == status, (result.status, result.text[:100])


# -- the per-PoP HTTP cache -------------------------------------------------------------


def test_a_cacheable_origin_response_is_served_from_the_pop_cache_and_only_there(
    runtime: Cluster,
) -> None:
    """/api/products is `public, max-age=30`. From tokyo: the first request pays the
    origin round trip (170 ms) and the origin counts it; the second is a HIT at edge
    latency with no origin request; the other Tokyo PoP and London still miss once each."""
    path = f"/api/products?id=42&probe={uuid.uuid4().hex[:8]}"
    route = "/api/products"
    tokyo_1 = EdgeClient(address(runtime, "tokyo-1"), "tokyo")
    tokyo_2 = EdgeClient(address(runtime, "tokyo-2"), "tokyo")
    london = EdgeClient(address(runtime, "london-1"), "london")
    try:
        before = origin_requests(runtime, route)
        miss = tokyo_1.get("proxy.test", path)
        assert (miss.status, miss.header("cf-cache-status")) == (200, "MISS")
        assert miss.json()["id"] == 42
        assert origin_requests(runtime, route) == before + 1
        assert miss.elapsed_s >= TOKYO_ORIGIN_RTT_S

        hits = [tokyo_1.get("proxy.test", path) for _ in range(3)]
        for hit in hits:
            assert (hit.status, hit.header("cf-cache-status")) == (200, "HIT")
            assert hit.body == miss.body
            assert int(hit.header("Age") or "-1") >= 0
        assert origin_requests(runtime, route) == before + 1
        # A hit costs the user the edge round trip and nothing of the origin's.
        timing = paired_timing(
            address(runtime, "tokyo-1"),
            "tokyo",
            "proxy.test",
            path,
            pairs=10,
            target_s=TOKYO_EDGE_RTT_S,
        )
        print(f"cache hits from tokyo: {timing}")
        assert {r.header("cf-cache-status") for r in timing.delayed + timing.undelayed} == {"HIT"}
        assert origin_requests(runtime, route) == before + 1
        assert timing.adds(TOKYO_EDGE_RTT_S), f"{timing}"

        other = tokyo_2.get("proxy.test", path)
        assert other.header("cf-cache-status") == "MISS"
        assert origin_requests(runtime, route) == before + 2
        far = london.get("proxy.test", path)
        assert far.header("cf-cache-status") == "MISS"
        assert origin_requests(runtime, route) == before + 3
        assert tokyo_2.get("proxy.test", path).header("cf-cache-status") == "HIT"
        assert origin_requests(runtime, route) == before + 3
    finally:
        for client in (tokyo_1, tokyo_2, london):
            client.close()


def test_uncacheable_origin_responses_go_to_the_origin_every_time(runtime: Cluster) -> None:
    pop = address(runtime, "new-york-1")
    before = origin_requests(runtime, "/api/v1/orders")
    for _ in range(3):
        result = http_once(pop, "proxy.test", "/api/v1/orders")
        assert result.status == 200
        assert result.header("cf-cache-status") == "DYNAMIC"
    assert origin_requests(runtime, "/api/v1/orders") == before + 3


def test_vary_keeps_one_cache_entry_per_request_header_value(runtime: Cluster) -> None:
    """/api/deals varies on Accept-Language: each language misses once, then hits."""
    pop = address(runtime, "new-york-1")
    path = f"/api/deals?country=JP&probe={uuid.uuid4().hex[:8]}"
    before = origin_requests(runtime, "/api/deals")
    statuses = [
        http_once(pop, "proxy.test", path, headers={"Accept-Language": language}).header(
            "cf-cache-status"
        )
        for language in ("en", "en", "de", "de", "en")
    ]
    assert statuses == ["MISS", "HIT", "MISS", "HIT", "HIT"]
    assert origin_requests(runtime, "/api/deals") == before + 2


def test_a_head_subrequest_does_not_poison_the_cache_for_gets(runtime: Cluster) -> None:
    pop = address(runtime, "london-1")
    path = f"/api/products?id=9&probe={uuid.uuid4().hex[:8]}"
    head = http_once(pop, "proxy.test", path, headers={"x-subrequest-method": "HEAD"})
    assert head.status == 200
    get = http_once(pop, "proxy.test", path)
    assert get.status == 200
    assert get.json()["id"] == 9, (
        f"GET after HEAD got {get.body!r} ({get.header('cf-cache-status')})"
    )


def test_caches_default_put_match_delete_stay_in_the_pop_that_wrote_them(runtime: Cluster) -> None:
    key = uuid.uuid4().hex[:8]
    tokyo_1, tokyo_2 = address(runtime, "tokyo-1"), address(runtime, "tokyo-2")
    assert http_once(tokyo_1, "proxy.test", f"/cache-api/match?key={key}").status == 404
    assert (
        http_once(tokyo_1, "proxy.test", f"/cache-api/put?key={key}&value=hello").text == "stored"
    )
    hit = http_once(tokyo_1, "proxy.test", f"/cache-api/match?key={key}")
    assert (hit.status, hit.text) == (200, "hello")
    assert http_once(tokyo_2, "proxy.test", f"/cache-api/match?key={key}").status == 404
    assert http_once(tokyo_1, "proxy.test", f"/cache-api/delete?key={key}").json() == {
        "deleted": True
    }
    assert http_once(tokyo_1, "proxy.test", f"/cache-api/match?key={key}").status == 404
    assert http_once(tokyo_1, "proxy.test", f"/cache-api/delete?key={key}").json() == {
        "deleted": False
    }


def test_subrequests_are_limited_per_request_and_reach_only_the_origin(runtime: Cluster) -> None:
    pop = address(runtime, "new-york-1")
    within = http_once(pop, "proxy.test", "/fanout?n=5")
    assert (within.status, within.json()) == (200, {"statuses": [200] * 5})
    over = http_once(pop, "proxy.test", "/fanout?n=6")
    assert (over.status, over.header("cf-error-code")) == (500, "1101")
    elsewhere = http_once(pop, "proxy.test", "/external")
    assert (elsewhere.status, elsewhere.header("cf-error-code")) == (500, "1101")
    # The budget is per request: the next one has all five again.
    assert http_once(pop, "proxy.test", "/fanout?n=5").status == 200


# -- KV bindings ----------------------------------------------------------------------------


def test_kv_binding_reads_its_own_writes_and_sees_others_after_replication(
    runtime: Cluster,
) -> None:
    """put at tokyo-1 is readable there at once (with metadata); london reads it strongly
    at once and eventually from its replica; list and delete work through the binding."""
    prefix = unique("kv")
    tokyo, london = address(runtime, "tokyo-1"), address(runtime, "london-1")
    put = http_once(tokyo, "kv.test", f"/put?key={prefix}/a&value=alpha&by=tokyo")
    assert put.status == 200 and put.json()["seq"] > 0
    assert http_once(tokyo, "kv.test", f"/get?key={prefix}/a").json() == {"value": "alpha"}
    # With the key's version (beyond Cloudflare's shape): the put's own seq.
    assert http_once(tokyo, "kv.test", f"/meta?key={prefix}/a").json() == {
        "value": "alpha",
        "metadata": {"by": "tokyo"},
        "seq": put.json()["seq"],
    }
    strong = http_once(london, "kv.test", f"/get?key={prefix}/a&consistency=strong")
    assert strong.json() == {"value": "alpha"}
    poll_until(
        lambda: http_once(london, "kv.test", f"/get?key={prefix}/a").json()["value"] == "alpha",
        timeout=5,
        what="the write replicated to london",
    )
    http_once(tokyo, "kv.test", f"/put?key={prefix}/b&value=%7B%22n%22%3A%201%7D")
    as_json = http_once(tokyo, "kv.test", f"/get?key={prefix}/b&type=json")
    assert as_json.json() == {"value": {"n": 1}}
    listed = http_once(tokyo, "kv.test", f"/list?prefix={prefix}/").json()
    assert [key["name"] for key in listed["keys"]] == [f"{prefix}/a", f"{prefix}/b"]
    assert listed["list_complete"] is True
    assert http_once(tokyo, "kv.test", f"/delete?key={prefix}/a").json()["seq"] > put.json()["seq"]
    assert http_once(tokyo, "kv.test", f"/get?key={prefix}/a").json() == {"value": None}
    assert http_once(tokyo, "kv.test", f"/meta?key={prefix}/a").json() == {
        "value": None,
        "metadata": None,
        "seq": 0,  # a missing key has no version
    }


# -- Durable Objects defined by a worker -------------------------------------------------


def test_a_worker_defined_object_class_is_callable_from_every_pop(runtime: Cluster) -> None:
    room = unique("room")
    members = []
    for pop, member in (
        ("tokyo-1", "aiko"),
        ("new-york-1", "bob"),
        ("london-1", "carol"),
        ("tokyo-2", "aiko"),
    ):
        result = http_once(address(runtime, pop), "rooms.test", f"/{room}?member={member}")
        assert result.status == 200, result.text
        answer = result.json()
        assert answer["class"] == "TestChatRoom"
        assert answer["room"] == room
        members = answer["members"]
    assert members == ["aiko", "bob", "carol"]


# -- metrics --------------------------------------------------------------------------------


def test_worker_and_cache_metrics_are_exported_and_move(runtime: Cluster) -> None:
    pop = "new-york-1"
    metrics_address = runtime.node(pop).metrics_address

    def read() -> dict[str, float]:
        return {
            "requests_200": node_metric(
                runtime, pop, "edge_worker_requests_total", worker="test-proxy", status="200"
            ),
            "cpu_count": node_metric(
                runtime, pop, "edge_worker_cpu_seconds_count", worker="test-proxy"
            ),
            "cpu_sum": node_metric(
                runtime, pop, "edge_worker_cpu_seconds_sum", worker="test-proxy"
            ),
            "sub_miss": node_metric(
                runtime, pop, "edge_worker_subrequests_total", worker="test-proxy", cache="miss"
            ),
            "sub_hit": node_metric(
                runtime, pop, "edge_worker_subrequests_total", worker="test-proxy", cache="hit"
            ),
            "cache_hit": node_metric(runtime, pop, "edge_cache_requests_total", result="hit"),
            "cache_miss": node_metric(runtime, pop, "edge_cache_requests_total", result="miss"),
            "cold_starts": node_metric(
                runtime, pop, "edge_worker_cold_start_seconds_count", worker="test-proxy"
            ),
        }

    before = read()
    path = f"/api/products?id=3&probe={uuid.uuid4().hex[:8]}"
    for _ in range(4):
        assert http_once(runtime.node(pop).http_address, "proxy.test", path).status == 200
    after = read()
    assert after["requests_200"] == before["requests_200"] + 4
    assert after["cpu_count"] == before["cpu_count"] + 4
    assert after["cpu_sum"] > before["cpu_sum"]
    assert after["sub_miss"] == before["sub_miss"] + 1
    assert after["sub_hit"] == before["sub_hit"] + 3
    assert after["cache_miss"] >= before["cache_miss"] + 1
    assert after["cache_hit"] >= before["cache_hit"] + 3
    assert after["cold_starts"] >= 1
    # Every worker metric carries the node and region labels.
    for name in (
        "edge_worker_requests_total",
        "edge_worker_cpu_seconds_count",
        "edge_cache_requests_total",
    ):
        samples = metric_samples(metrics_address, name)
        assert samples, name
        assert all(
            labels.get("node") == pop and labels.get("region") == "new-york"
            for labels, _ in samples
        )


# -- restarts ------------------------------------------------------------------------------


def test_a_restarted_pop_never_answers_404_for_a_deployed_worker(runtime: Cluster) -> None:
    runtime.stop("london-1")
    runtime.start("london-1")  # returns once the node is ready, healthy and registered
    first = http_once(address(runtime, "london-1"), ECHO, "/after-restart")
    poll_until(
        lambda: http_once(address(runtime, "london-1"), ECHO, "/").status == 200,
        timeout=10,
        what="london-1 serving its workers again",
    )
    assert first.status == 200, (first.status, first.text)


# -- isolation between workers (last: it leaves a hijacked class behind) -----------------


def test_a_worker_class_named_like_a_builtin_does_not_hijack_other_workers(
    runtime: Cluster,
) -> None:
    deploy_everywhere(runtime, EXAMPLES_DIR / "rate-limit")
    deploy_everywhere(runtime, FIXTURES_DIR / "shadow")
    result = http_once(
        address(runtime, "new-york-1"),
        "limited.example.com",
        "/",
        headers={"X-Client-Id": unique("client")},
    )
    assert (result.status, result.header("X-RateLimit-Limit")) == (200, "100"), (
        result.status,
        result.headers,
    )


# -- bugs that wedge a PoP's loader: fresh clusters ------------------------------------

SMALL_TOPOLOGY = {
    "emulate_delay": False,
    "regions": [{"name": "us-east-1"}, {"name": "new-york", "pop_nodes": 1}],
}


def test_a_worker_binding_a_missing_class_does_not_stop_later_deploys(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(SMALL_TOPOLOGY)
    deploy(cluster, FIXTURES_DIR / "bad-binding")
    deployed = deploy(cluster, bundle(FIXTURES_DIR / "echo", vars={"VERSION": unique("after")}))
    wait_loaded(cluster, "test-echo", deployed.version, timeout=DEPLOY_PROPAGATION_S_MAX + 3)


def test_a_worker_with_a_slow_module_body_does_not_hold_up_other_deploys(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(SMALL_TOPOLOGY)
    deploy(cluster, FIXTURES_DIR / "slow-init")
    deployed = deploy(cluster, bundle(FIXTURES_DIR / "echo", vars={"VERSION": unique("after")}))
    wait_loaded(cluster, "test-echo", deployed.version, timeout=DEPLOY_PROPAGATION_S_MAX)
