"""Durable Objects on running clusters: exact counts, latency, routing, limits, errors, metrics.

Clusters: the shared default cluster (six regions, the seed's delays) for everything that
only adds objects of its own (each test uses fresh object names), and the shared fast
cluster (no delay) for the error table. Tests that kill or partition nodes live in
`test_objects_failover.py`.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from edge.v1 import kv_pb2, objects_pb2, workers_pb2
from edgectl.launcher import Cluster
from edgepop import objectid
from pop_node.objects.instance import QUEUE_DEPTH_MAX
from tests.conftest import ClusterFactory, _make_factory, poll_until
from tests.integration.objclient import (
    ClientPool,
    IncrementJob,
    auth,
    call,
    call_error,
    copy_holds,
    cp_stub,
    metric_samples,
    object_id,
    placement_of,
    pop_stub,
    region_metadata,
    result,
    route,
)
from tests.integration.workerclient import http_once

pytestmark = pytest.mark.cluster

REGIONS = ["sydney", "tokyo", "london", "new-york", "mumbai", "sao-paulo"]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- acceptance: six client processes, one counter ---------------------------------------------


def test_six_client_processes_in_six_regions_get_every_value_from_1_to_1200_exactly_once(
    shared_cluster: Cluster,
) -> None:
    """Each process: 200 increments through its nearest PoP (Route), 16 in flight."""
    name = _unique("six-regions")
    first_region = REGIONS[0]
    entry = route(shared_cluster, first_region)
    # The first caller places the object (a read: the count stays 0).
    first = call(shared_cluster, entry.name, "get", name=name, region=first_region)
    assert result(first) == 0
    assert shared_cluster.node(first.node).region == first_region
    with ClientPool(len(REGIONS)) as pool:
        start_at = time.time() + 0.5
        jobs = [
            IncrementJob(
                control_plane=shared_cluster.control_plane.grpc_address,
                region=region,
                name=name,
                count=200,
                tag=f"{name}-{region}",
                in_flight=16,
                start_at=start_at,
            )
            for region in REGIONS
        ]
        started = time.monotonic()
        histories = pool.run(jobs, timeout=120)
        elapsed = time.monotonic() - started
    records = [record for history in histories for record in history]
    failed = [record for record in records if not record.ok]
    assert not failed, failed[:5]
    values = sorted(record.value for record in records)
    assert values == list(range(1, 1201)), "every value exactly once"
    # Each client went through a PoP of its own region, and one owner ran every call.
    for region, history in zip(REGIONS, histories, strict=True):
        assert {shared_cluster.node(record.entry).region for record in history} == {region}
    assert {record.node for record in records} == {first.node}
    assert {record.epoch for record in records} == {first.epoch}
    final = call(
        shared_cluster, route(shared_cluster, "london").name, "get", name=name, region="london"
    )
    assert result(final) == 1200
    placed = placement_of(shared_cluster, "Counter", name)
    assert placed is not None and placed.owner == first.node
    print(f"1200 increments from 6 regions in {elapsed:.1f} s")


# -- acceptance: latency at the owner's region ---------------------------------------------------


@pytest.mark.timing
def test_call_from_the_owners_region_costs_the_edge_rtt_plus_a_few_ms_standby_included(
    shared_cluster: Cluster,
) -> None:
    """Median of 40 sequential increments from tokyo to a tokyo-owned object, at its owner.

    Tolerance: the floor is tokyo's edge RTT (8 ms). The object's own cost is measured
    against a KV read at the same node, interleaved with it (same loopback, same load):
    at most 8 ms more. That cost is the intra-site round trip to the standby (1 ms), two
    fsyncs in parallel (~0.5 ms each on this disk) and one more Python gRPC hop (owner ->
    standby -> owner, with a hop to the LMDB writer thread on each side). Measured: 5 ms
    on this 2-core machine at load ~5, 5-7 ms at load 10-15 (other test runs share it),
    from the owner's own metrics: commit 6-11 ms of which the standby's handler 3-6 ms.
    So "a few ms" is nominally 6 ms (8 + 6 ms, the issue's figure); the bounds add 2 ms
    to the difference and 4 ms to the absolute median (18 ms) for the shared machine.
    An extra sequential round trip to the control plane or a remote region would still
    fail it by far; a regression of one more local hop may not.
    """
    name = _unique("latency")
    placed_call = call(shared_cluster, "tokyo-1", "get", name=name, region="tokyo")
    owner = placed_call.node
    assert shared_cluster.node(owner).region == "tokyo"
    placement = placement_of(shared_cluster, "Counter", name)
    assert placement is not None
    # The standby is the other node of the site and holds the data.
    assert placement.standby == ({"tokyo-1", "tokyo-2"} - {owner}).pop()
    object_ms: list[float] = []
    read_ms: list[float] = []
    request = objects_pb2.ObjectCallRequest(namespace="Counter", name=name, method="increment")
    with pop_stub(shared_cluster, owner) as stub:
        for _ in range(3):  # warm the channel and the instance
            stub.ObjectCall(request, metadata=region_metadata("tokyo"), timeout=5)
        for _ in range(40):
            started = time.perf_counter()
            stub.ObjectCall(request, metadata=region_metadata("tokyo"), timeout=5)
            object_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            stub.KvGet(
                kv_pb2.KvGetRequest(namespace="latency", key="k"),
                metadata=region_metadata("tokyo"),
                timeout=5,
            )
            read_ms.append((time.perf_counter() - started) * 1000)
    object_median = statistics.median(object_ms)
    read_median = statistics.median(read_ms)
    print(
        f"object call median {object_median:.1f} ms, KV read median {read_median:.1f} ms"
        f" (load average {os.getloadavg()[0]:.1f})"
    )
    assert 8.0 <= object_median <= 18.0
    assert object_median - read_median <= 8.0
    # Standby sync included: the standby's copy has every acknowledged increment.
    stopped_at = result(call(shared_cluster, owner, "get", name=name, region="tokyo"))
    assert stopped_at == 43
    assert copy_holds(shared_cluster, placement.standby, "Counter", name, stopped_at)


# -- routing ---------------------------------------------------------------------------------


def test_any_pop_forwards_to_the_owner_and_a_location_hint_places_the_object(
    shared_cluster: Cluster,
) -> None:
    name = _unique("hinted")
    placed = call(
        shared_cluster, "london-1", "increment", name=name, region="london", location_hint="mumbai"
    )
    assert shared_cluster.node(placed.node).region == "mumbai"
    assert placed.id == object_id("Counter", name)
    # Every PoP answers, and each answer comes from the one owner.
    for number, pop in enumerate(shared_cluster.pops, start=2):
        response = call(shared_cluster, pop.name, "increment", name=name, region=pop.region)
        assert (response.node, response.epoch, result(response)) == (placed.node, 1, number)
    # Addressing by id reaches the same object.
    by_id = call(shared_cluster, "tokyo-2", "get", id=placed.id, region="tokyo")
    assert result(by_id) == len(shared_cluster.pops) + 1


def test_object_id_rpc_derives_parses_and_makes_unique_ids(shared_cluster: Cluster) -> None:
    with pop_stub(shared_cluster, "tokyo-1") as stub:
        named = stub.ObjectId(objects_pb2.ObjectIdRequest(namespace="Counter", name="n"))
        assert named.id == object_id("Counter", "n")
        parsed = stub.ObjectId(objects_pb2.ObjectIdRequest(namespace="Counter", id=named.id))
        assert parsed.id == named.id
        unique = {
            stub.ObjectId(objects_pb2.ObjectIdRequest(namespace="Counter")).id for _ in range(5)
        }
        assert len(unique) == 5
        with pytest.raises(grpc.RpcError) as caught:
            stub.ObjectId(objects_pb2.ObjectIdRequest(namespace="Lock", id=named.id))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as caught:
            stub.ObjectId(objects_pb2.ObjectIdRequest(namespace="NoSuchClass", name="n"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "NoSuchClass" in (caught.value.details() or "")


# -- RateLimiter -----------------------------------------------------------------------------


def test_rate_limiter_allows_exactly_100_of_150_checks_from_3_regions_with_correct_retry_after(
    shared_cluster: Cluster,
) -> None:
    name = _unique("limiter")
    regions = ["tokyo", "london", "sydney"]
    entries = {region: route(shared_cluster, region).name for region in regions}
    replies: list[tuple[float, float, dict[str, Any]]] = []
    lock = threading.Lock()

    def check(region: str) -> None:
        sent = time.time()
        response = call(
            shared_cluster,
            entries[region],
            "check",
            ["api"],
            namespace="RateLimiter",
            name=name,
            region=region,
        )
        with lock:
            replies.append((sent, time.time(), result(response)))

    with ThreadPoolExecutor(max_workers=15) as pool:
        list(pool.map(check, [region for region in regions for _ in range(50)]))
    assert len(replies) == 150
    allowed = [reply for reply in replies if reply[2]["allowed"]]
    denied = [reply for reply in replies if not reply[2]["allowed"]]
    assert len(allowed) == 100 and len(denied) == 50
    # One window, one order: the allowed checks saw remaining 99 .. 0, each once.
    assert sorted(reply[2]["remaining"] for reply in allowed) == list(range(100))
    first_sent = min(sent for sent, _, _ in allowed)
    first_received = min(received for _, received, _ in allowed)
    for sent, received, answer in denied:
        assert answer["remaining"] == 0
        # retry_after_s = window - time since the first allowed check, rounded up.
        low = 60.0 - (received - first_sent)
        high = 60.0 - (sent - first_received)
        assert low - 1.0 <= answer["retry_after_s"] <= high + 1.0, (answer, low, high)
    # Every answer in the window names the same reset time: the first allowed check + 60 s.
    first_allowed = next(reply for reply in allowed if reply[2]["remaining"] == 99)
    assert {reply[2]["reset_at"] for reply in replies} == {first_allowed[2]["reset_at"]}
    assert first_sent - 1.0 <= first_allowed[2]["reset_at"] - 60.0 <= first_received + 1.0


# -- Lock ------------------------------------------------------------------------------------


def test_lock_fencing_tokens_only_grow_across_acquire_expire_and_reacquire(
    shared_cluster: Cluster,
) -> None:
    name = _unique("lock")
    node = route(shared_cluster, "london").name

    def lock(method: str, *args: Any) -> dict[str, Any]:
        answer: dict[str, Any] = result(
            call(
                shared_cluster,
                node,
                method,
                list(args),
                namespace="Lock",
                name=name,
                region="london",
            )
        )
        return answer

    first = lock("acquire", "alice", 0.5)
    assert first["granted"]
    refused = lock("acquire", "bob", 30)
    assert not refused["granted"] and refused["holder"] == "alice"
    # alice's lease expires: bob gets the lock with a larger token.
    second = poll_until(
        lambda: (answer := lock("acquire", "bob", 30))["granted"] and answer,
        timeout=5,
        what="bob acquires after alice's ttl",
    )
    assert second["token"] > first["token"]
    # alice's stale token cannot release bob's lock.
    assert not lock("release", "alice", first["token"])["released"]
    assert lock("release", "bob", second["token"])["released"]
    third = lock("acquire", "carol", 30)
    assert third["granted"] and third["token"] > second["token"]
    status = lock("status")
    assert status["held"] and status["holder"] == "carol" and status["fence"] == third["token"]


# -- errors: each has a status, and the object works after it -----------------------------------


@pytest.fixture
def counter_at_3(fast_cluster: Cluster) -> str:
    """A fresh counter at 3 on the fast cluster; returns its name."""
    name = _unique("errors")
    for _ in range(3):
        call(fast_cluster, "tokyo-1", "increment", name=name, region="tokyo")
    return name


def _still_counts(cluster: Cluster, name: str, expected: int) -> None:
    response = call(cluster, "london-1", "increment", name=name, region="london")
    assert result(response) == expected


def test_unknown_class_is_not_found(fast_cluster: Cluster, counter_at_3: str) -> None:
    error = call_error(
        lambda: call(fast_cluster, "tokyo-1", "get", namespace="NoSuchClass", name=counter_at_3)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    _still_counts(fast_cluster, counter_at_3, 4)


def test_unknown_method_is_unimplemented(fast_cluster: Cluster, counter_at_3: str) -> None:
    for method in ("decrement", "_private", "setup", "alarm", "on_message"):
        error = call_error(lambda m=method: call(fast_cluster, "tokyo-2", m, name=counter_at_3))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED, method
    _still_counts(fast_cluster, counter_at_3, 4)


def test_args_over_1_mib_are_an_invalid_argument(fast_cluster: Cluster, counter_at_3: str) -> None:
    big = '["' + "x" * (1024 * 1024) + '"]'
    for node in ("tokyo-1", "tokyo-2", "london-1"):  # owner or not
        error = call_error(
            lambda n=node: call(fast_cluster, n, "increment", name=counter_at_3, args_json=big)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1 MiB" in (error.details() or "")
    error = call_error(
        lambda: call(fast_cluster, "tokyo-1", "increment", name=counter_at_3, args_json="[1,")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _still_counts(fast_cluster, counter_at_3, 4)


@pytest.mark.parametrize(
    "bad_id",
    ["", "xyz", "0" * 64, objectid.id_from_name("Lock", "foreign").hex()],
    ids=["empty-both", "malformed", "untagged", "foreign"],
)
def test_malformed_or_foreign_id_is_an_invalid_argument(
    fast_cluster: Cluster, counter_at_3: str, bad_id: str
) -> None:
    error = call_error(lambda: call(fast_cluster, "london-1", "get", id=bad_id))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _still_counts(fast_cluster, counter_at_3, 4)


def test_user_exception_is_unknown_marked_remote_and_the_object_keeps_its_state(
    fast_cluster: Cluster, counter_at_3: str
) -> None:
    """Built-in classes raise before writing; a user class that writes and then raises is
    `test_user_exception_after_a_write_discards_the_write_and_reaches_the_caller_as_remote`."""
    for node in ("tokyo-1", "london-1"):  # at the owner and through a forwarding PoP
        error = call_error(
            lambda n=node: call(fast_cluster, n, "increment", ["x"], name=counter_at_3)
        )
        assert error.code() == grpc.StatusCode.UNKNOWN
        assert "remote" in (error.details() or "")
        assert "ValueError" in (error.details() or "")
    assert result(call(fast_cluster, "tokyo-2", "get", name=counter_at_3)) == 3
    _still_counts(fast_cluster, counter_at_3, 4)


# -- metrics -------------------------------------------------------------------------------------


def test_owner_exports_object_call_metrics_with_node_region_and_namespace(
    shared_cluster: Cluster,
) -> None:
    name = _unique("metrics")
    response = call(shared_cluster, "sydney-1", "increment", name=name, region="sydney")
    owner = response.node
    region = shared_cluster.node(owner).region
    for _ in range(4):
        call(shared_cluster, owner, "increment", name=name, region="sydney")
    call_error(lambda: call(shared_cluster, owner, "increment", ["x"], name=name, region="sydney"))
    samples = metric_samples(shared_cluster, owner)

    def find(metric: str, **labels: str) -> list[float]:
        return [
            value
            for sample, found, value in samples
            if sample == metric and all(found.get(k) == v for k, v in labels.items())
        ]

    base = {"node": owner, "region": region}
    assert sum(find("edge_do_calls_total", **base, namespace="Counter", code="OK")) >= 5
    assert sum(find("edge_do_calls_total", **base, namespace="Counter", code="UNKNOWN")) >= 1
    assert sum(find("edge_do_call_duration_seconds_count", **base, namespace="Counter")) >= 6
    assert find("edge_do_call_duration_seconds_bucket", **base, namespace="Counter", le="+Inf")
    active = find("edge_do_objects_active", **base)
    assert active and active[0] >= 1
    for metric in ("edge_do_forwards_total", "edge_do_queue_depth"):
        assert find(metric, **base), metric
    # A PoP that only forwarded counts its forwards, not calls.
    other = next(pop.name for pop in shared_cluster.pops if pop.region != region)
    before = sum(find_on(shared_cluster, other, "edge_do_forwards_total"))
    call(shared_cluster, other, "get", name=name, region=shared_cluster.node(other).region)
    assert sum(find_on(shared_cluster, other, "edge_do_forwards_total")) == before + 1


def find_on(cluster: Cluster, node: str, metric: str) -> list[float]:
    return [value for sample, _, value in metric_samples(cluster, node) if sample == metric]


# -- user classes (deployed as a worker): overload, discarded writes, alarms ----------------------

WORKER_PY = '''"""Durable Object classes for the object tests (no routes: called by ObjectCall)."""

import asyncio
import time

from edgepop import worker_api as edge
from edgepop.durable import DurableObject

# Alarm attempts per object, in this process's memory (a failed attempt's writes are
# discarded, so they cannot be counted in storage).
ATTEMPTS = {}
FAILURES_LEFT = {}
# Holds waiting for the test to release them, by token (this PoP process's memory: the
# object and the HTTP route that releases it run in the owner's process).
RELEASES = {}
HOLD_S_MAX = 60.0


def release_of(token: str) -> asyncio.Event:
    return RELEASES.setdefault(token, asyncio.Event())


class TestSlowCounter(DurableObject):
    async def hold(self, token: str) -> str:
        """Keep the input gate until `GET hold.test/release/<token>` at this PoP."""
        try:
            await asyncio.wait_for(release_of(token).wait(), HOLD_S_MAX)
        except TimeoutError:
            return "never released"
        return "held"

    async def get(self) -> int:
        return int(await self.storage.get("value") or 0)

    async def increment(self) -> int:
        value = int(await self.storage.get("value") or 0) + 1
        await self.storage.put("value", value)
        return value

    async def put_then_raise(self) -> None:
        await self.storage.put("value", -1000)
        raise RuntimeError("boom after a write")


class TestAlarmClock(DurableObject):
    async def arm(self, delay_s: float, failures: int = 0) -> float:
        FAILURES_LEFT[self.state.id] = failures
        at = time.time() + delay_s
        await self.storage.set_alarm(at)
        return at

    async def status(self) -> dict:
        return {
            "fired": await self.storage.get("fired") or [],
            "attempts": ATTEMPTS.get(self.state.id, 0),
            "alarm": await self.storage.get_alarm(),
        }

    async def alarm(self) -> None:
        ATTEMPTS[self.state.id] = ATTEMPTS.get(self.state.id, 0) + 1
        fired = await self.storage.get("fired") or []
        await self.storage.put("fired", [*fired, time.time()])
        if FAILURES_LEFT.get(self.state.id, 0) > 0:
            FAILURES_LEFT[self.state.id] -= 1
            raise RuntimeError("alarm handler failed")


async def fetch(request, env, ctx):
    release_of(request.path.rsplit("/", 1)[-1]).set()
    return edge.Response("released")
'''
WORKER_YAML = 'name: test-object-classes\nroutes: ["hold.test/release/*"]\n'
USER_TOPOLOGY: dict[str, Any] = {
    "emulate_delay": False,
    "regions": [
        {"name": "us-east-1"},
        {"name": "tokyo", "pop_nodes": 2},
        {"name": "london", "pop_nodes": 1},
    ],
}


@pytest.fixture(scope="module")
def user_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A small no-delay cluster with the test classes deployed and loaded on every PoP."""
    started: list[Cluster] = []
    cluster = _make_factory(Path(tmp_path_factory.mktemp("objects-user")), started)(USER_TOPOLOGY)
    try:
        _deploy_test_classes(cluster)
        yield cluster
    finally:
        cluster.down()


def _deploy_test_classes(cluster: Cluster) -> None:
    """Deploy the test classes and wait until every PoP has loaded them."""
    bundle = workers_pb2.WorkerBundle(
        files=[
            workers_pb2.WorkerFile(path="worker.py", content=WORKER_PY.encode()),
            workers_pb2.WorkerFile(path="worker.yaml", content=WORKER_YAML.encode()),
        ]
    )
    with cp_stub(cluster) as stub:
        stub.Deploy(workers_pb2.DeployRequest(bundle=bundle), metadata=auth(cluster), timeout=10)

    def loaded_everywhere() -> bool:
        for pop in cluster.pops:
            try:
                call(
                    cluster,
                    pop.name,
                    "get",
                    namespace="test-object-classes.TestSlowCounter",
                    name="probe",
                )
            except grpc.RpcError:
                return False
        return True

    poll_until(loaded_everywhere, timeout=20, what="the test classes on every PoP")


def test_queue_over_the_bound_is_resource_exhausted_with_cloudflares_message(
    user_cluster: Cluster,
) -> None:
    """One call holds the input gate until the test releases it; 300 more arrive at the
    owner: 256 wait, the rest are refused at once; then the object serves the queue and
    goes on. The hold ends on the test's word (an HTTP request to the owner's worker
    route), once the refusals are back: a timed hold could end before the flood arrived."""
    cluster = user_cluster
    name = _unique("overload")
    owner = call(
        cluster, "tokyo-1", "get", namespace="test-object-classes.TestSlowCounter", name=name
    ).node
    request = objects_pb2.ObjectCallRequest(
        namespace="test-object-classes.TestSlowCounter", name=name, method="get"
    )
    token = uuid.uuid4().hex
    with pop_stub(cluster, owner) as stub:
        holding = stub.ObjectCall.future(
            objects_pb2.ObjectCallRequest(
                namespace="test-object-classes.TestSlowCounter",
                name=name,
                method="hold",
                args_json=json.dumps([token]),
            ),
            timeout=60,
        )

        def gate_held() -> bool:
            try:
                stub.ObjectCall(request, timeout=0.2)
            except grpc.RpcError as error:
                return bool(error.code() == grpc.StatusCode.DEADLINE_EXCEEDED)
            return False

        poll_until(gate_held, timeout=5, interval=0.01, what="the slow call holds the gate")
        flood = [stub.ObjectCall.future(request, timeout=60) for _ in range(300)]
        # While the gate is held a call can only end by being refused: once this many
        # are back, the queue was full and the flood had overflowed it.
        poll_until(
            lambda: sum(future.done() for future in flood) >= len(flood) - QUEUE_DEPTH_MAX,
            timeout=30,
            what="the calls over the bound refused",
        )
        released = http_once(cluster.node(owner).http_address, "hold.test", f"/release/{token}")
        assert (released.status, released.text) == (200, "released")
        outcomes: list[Any] = []
        for future in flood:
            try:
                outcomes.append(future.result())
            except grpc.RpcError as error:
                outcomes.append(error)
        assert result(holding.result()) == "held"
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    served = [o for o in outcomes if not isinstance(o, grpc.RpcError)]
    assert refused, "no call was refused"
    assert {error.code() for error in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert {error.details() for error in refused} == {
        "Durable Object is overloaded. Too many requests queued."
    }
    assert len(served) >= 256 - 10  # the queue was served (a few probes may have held places)
    assert (
        result(
            call(
                cluster,
                "london-1",
                "increment",
                namespace="test-object-classes.TestSlowCounter",
                name=name,
            )
        )
        == 1
    )


def test_user_exception_after_a_write_discards_the_write_and_reaches_the_caller_as_remote(
    user_cluster: Cluster,
) -> None:
    cluster = user_cluster
    name = _unique("discarded")
    for expected in (1, 2):
        counted = call(
            cluster,
            "tokyo-2",
            "increment",
            namespace="test-object-classes.TestSlowCounter",
            name=name,
        )
        assert result(counted) == expected
    for node in ("tokyo-1", "london-1"):
        error = call_error(
            lambda n=node: call(
                cluster,
                n,
                "put_then_raise",
                namespace="test-object-classes.TestSlowCounter",
                name=name,
            )
        )
        assert error.code() == grpc.StatusCode.UNKNOWN
        assert "remote" in (error.details() or "") and "boom" in (error.details() or "")
    assert (
        result(
            call(
                cluster,
                "tokyo-1",
                "get",
                namespace="test-object-classes.TestSlowCounter",
                name=name,
            )
        )
        == 2
    )
    assert (
        result(
            call(
                cluster,
                "tokyo-1",
                "increment",
                namespace="test-object-classes.TestSlowCounter",
                name=name,
            )
        )
        == 3
    )


def test_alarm_fires_at_least_once_and_a_failing_alarm_is_retried(user_cluster: Cluster) -> None:
    cluster = user_cluster
    once, failing = _unique("alarm-once"), _unique("alarm-retried")

    def alarm(name: str, method: str, *args: Any) -> Any:
        return result(
            call(
                cluster,
                "tokyo-1",
                method,
                list(args),
                namespace="test-object-classes.TestAlarmClock",
                name=name,
            )
        )

    armed_at = alarm(once, "arm", 0.3)
    alarm(failing, "arm", 0.3, 2)
    status = poll_until(
        lambda: (s := alarm(once, "status"))["fired"] and s, timeout=10, what="the alarm"
    )
    assert status["fired"][0] >= armed_at - 0.05
    assert status["alarm"] is None  # cleared by the successful run
    retried = poll_until(
        lambda: (s := alarm(failing, "status"))["fired"] and s,
        timeout=15,
        what="the failing alarm succeeding on a retry",
    )
    # Two failed attempts (their writes discarded), then one success.
    assert retried["attempts"] == 3
    assert len(retried["fired"]) == 1
    assert retried["alarm"] is None


ALARM_CLASS = "test-object-classes.TestAlarmClock"
# Armed this far ahead: past the owner's restart.
ALARM_AFTER_KILL_S = 6.0
# The owner's scan sleeps to the alarm's time; waking the object (a first activation:
# placement, then the class) may take this long on a busy machine.
ALARM_LATE_S_MAX = 1.5


@pytest.mark.timing
def test_an_alarm_outlives_its_owners_kill_9_and_restart_and_fires_on_time(
    cluster_factory: ClusterFactory,
) -> None:
    """The owner is killed and started again at once (within the failover time, so it
    keeps the object), and nothing calls the object after: no instance of it lives
    anywhere, so the restarted owner's alarm scan must find the alarm in its storage and
    wake the object at the alarm's time."""
    cluster = cluster_factory(USER_TOPOLOGY)
    _deploy_test_classes(cluster)
    name = _unique("alarm-restart")

    def alarm(entry: str, method: str, *args: Any) -> Any:
        return result(
            call(cluster, entry, method, list(args), namespace=ALARM_CLASS, name=name, timeout=5)
        )

    at = alarm("tokyo-1", "arm", ALARM_AFTER_KILL_S)
    placed = placement_of(cluster, ALARM_CLASS, name)
    assert placed is not None
    cluster.kill(placed.owner)
    cluster.start(placed.owner)
    poll_until(
        lambda: time.time() > at + ALARM_LATE_S_MAX,
        timeout=ALARM_AFTER_KILL_S + 2 * ALARM_LATE_S_MAX,
        what="the alarm's time passed",
    )
    after = placement_of(cluster, ALARM_CLASS, name)
    assert after is not None and (after.owner, after.epoch) == (placed.owner, placed.epoch)
    status = alarm(placed.owner, "status")
    assert len(status["fired"]) == 1, status
    assert at - 0.05 <= status["fired"][0] <= at + ALARM_LATE_S_MAX, (status, at)
    assert status["alarm"] is None
