"""Durable Objects when owners die or are cut off: nothing acknowledged is lost, no value is
given twice, no two nodes serve one object.

One module cluster with the seed's delays: us-east-1 (control plane, origin), tokyo x2,
london x2, sydney x1. Every test uses fresh object names and leaves the cluster whole
(killed nodes restarted, faults cleared, all nodes healthy), so the twenty seeded kill
runs share it and the client processes: a run takes ~8 s here (load, lease 2.5 s +
margin 0.5 s, the rest of the load, the restarted old owner checked), where a fresh cluster
per run would add its start-up each time. Sydney has a single PoP: an object hinted
there has its standby in tokyo, so sydney can be cut off from the control plane while
the new owner stays reachable.

The owner lease is the control plane's default (2.5 s, heartbeats every 1 s), objects
move 0.5 s after it lapses: failover measures 3.1-4.3 s of the 5 s the issue allows (2.5-3.8
s with the earlier 2 s lease and 0.5 s heartbeats).
Also here: a reply lost before a failover (the retry is answered from the first run),
the standby dying, both copies dying, the owner cut off from its standby, and the
control plane paused or restarted. The seeded kill runs are also judged whole by the
checker of the fault runs (`edgectl.chaos.checks`), retried and unanswered calls
included.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.registry import NODE_LEASE_S_DEFAULT
from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import control_plane_pb2_grpc as cp_grpc
from edge.v1 import objects_pb2
from edgectl.launcher import Cluster
from edgepop.config import HEARTBEAT_INTERVAL_S_DEFAULT
from tests.conftest import _make_factory, poll_until
from tests.integration.kvclient import metric_value
from tests.integration.objclient import (
    ClientPool,
    DocClient,
    IncrementJob,
    IncrementLoop,
    apoll_until,
    auth,
    call,
    call_error,
    check_counter,
    clear_faults,
    copy_holds,
    delay,
    describe_violations,
    healthy,
    kept_whole,
    partition,
    placement_of,
    recorded_call,
    result,
    route,
    status_rtt_s,
)

pytestmark = pytest.mark.cluster

FAILOVER_TOPOLOGY: dict[str, Any] = {
    "emulate_delay": True,
    "regions": [
        {"name": "us-east-1"},
        {"name": "tokyo", "pop_nodes": 2},
        {"name": "london", "pop_nodes": 2},
        {"name": "sydney", "pop_nodes": 1},
    ],
}
CLIENT_REGIONS = ["tokyo", "london", "sydney"]
LEASE_S = NODE_LEASE_S_DEFAULT
FAILOVER_S_MAX = 5.0
SEEDS = range(20)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started: list[Cluster] = []
    made = _make_factory(Path(tmp_path_factory.mktemp("objects-failover")), started)(
        FAILOVER_TOPOLOGY
    )
    yield made
    made.down()


@pytest.fixture(scope="module")
def pool() -> Iterator[ClientPool]:
    with ClientPool(len(CLIENT_REGIONS)) as clients:
        yield clients


@pytest.fixture
def whole(cluster: Cluster) -> Iterator[Cluster]:
    """The module cluster, all nodes up and healthy before and after the test."""
    with kept_whole(cluster, timeout=15) as made_whole:
        yield made_whole


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- acceptance: kill -9 the owner under load, 20 seeded runs -------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_owner_killed_under_load_loses_no_acknowledged_increment_and_gives_no_value_twice(
    whole: Cluster, pool: ClientPool, seed: int
) -> None:
    """3 client processes (tokyo, london, sydney) x 60 increments, 6 in flight each; the
    owner is killed -9 once a seeded number of increments (20-60 %) were acknowledged."""
    cluster = whole
    rng = random.Random(seed)
    first_region = rng.choice(CLIENT_REGIONS)
    kill_after = rng.randint(36, 108)
    name = _unique(f"failover-{seed}")
    first, first_record = recorded_call(
        cluster, route(cluster, first_region).name, "get", name=name, region=first_region
    )
    owner, old_epoch = first.node, first.epoch
    assert cluster.node(owner).region == first_region
    before = placement_of(cluster, "Counter", name)
    assert before is not None and before.standby
    jobs = [
        IncrementJob(
            control_plane=cluster.control_plane.grpc_address,
            region=region,
            name=name,
            count=60,
            tag=f"{name}-{region}",
            in_flight=6,
            give_up_s=20.0,
        )
        for region in CLIENT_REGIONS
    ]
    failovers = metric_value(cluster, "control-plane", "edge_do_failovers_total")
    pool.start(jobs)
    poll_until(lambda: pool.acknowledged >= kill_after, timeout=30, what="load under way")
    cluster.kill(owner)
    killed_at = time.time()
    # Once the object has moved, the old owner restarts while the clients still run: its
    # stale copy must not serve (and the restart overlaps the rest of the run).
    poll_until(
        lambda: (p := placement_of(cluster, "Counter", name)) and p.epoch > old_epoch,
        timeout=FAILOVER_S_MAX + 2,
        what="the object moves off the killed owner",
    )
    restart = threading.Thread(target=cluster.start, args=(owner,), daemon=True)
    restart.start()
    histories = pool.wait(timeout=90)
    restart.join(timeout=60)
    assert cluster.alive(owner)
    records = [record for history in histories for record in history]
    acknowledged = [record for record in records if record.ok]

    # No value twice; each value under exactly one epoch.
    values = [record.value for record in acknowledged]
    assert len(values) == len(set(values)), "a value was returned twice"
    epochs_of: dict[int, set[int]] = defaultdict(set)
    for record in acknowledged:
        epochs_of[record.value].add(record.epoch)
    assert all(len(epochs) == 1 for epochs in epochs_of.values())

    # Serving again within 5 s of the kill, at a higher epoch, on the old standby.
    after = placement_of(cluster, "Counter", name)
    assert after is not None
    assert (after.owner, after.epoch) == (before.standby, old_epoch + 1)
    moved = [record for record in acknowledged if record.epoch > old_epoch]
    assert moved, "no call was served after the kill"
    assert {record.node for record in moved} == {after.owner}
    recovery_s = min(record.acked_at for record in moved) - killed_at
    print(
        f"seed {seed}: killed {owner} after {kill_after} acks; serving again in {recovery_s:.2f} s"
    )
    assert recovery_s < FAILOVER_S_MAX
    assert metric_value(cluster, "control-plane", "edge_do_failovers_total") >= failovers + 1

    # Nothing acknowledged lost, nothing counted that was not attempted.
    final_response, final_record = recorded_call(
        cluster, after.owner, "get", name=name, region=first_region
    )
    final = result(final_response)
    assert len(acknowledged) <= final <= len(records)
    assert max(values) <= final
    if len(acknowledged) == len(records):
        assert sorted(values) == list(range(1, final + 1))

    # The old owner is back with a stale copy: it forwards, never serves the object.
    again, again_record = recorded_call(
        cluster, owner, "increment", name=name, region=cluster.node(owner).region
    )
    assert (again.node, again.epoch, result(again)) == (after.owner, after.epoch, final + 1)

    # The whole history, retried and unanswered calls included, against the checker of
    # the fault runs: linearizable in real-time order (no read or increment that an
    # earlier acknowledgement rules out), each value once, nothing lost or applied twice,
    # one node per epoch, and no reply from the deposed owner after the move.
    key = f"do:Counter/{name}"
    calls = [first_record, *records, final_record, again_record]
    checked = check_counter(key, calls, final + 1, after.owner, after.epoch)
    unanswered = len(records) - len(acknowledged)
    print(f"seed {seed}: {unanswered} calls unanswered; checker {checked.verdicts()}")
    assert checked.ok, describe_violations(checked)
    assert checked.verdicts()["ok"] == 1, checked.linearizability[key].detail


# -- exactly once across an owner change ------------------------------------------------------

# Extra one-way delay on the owner's replies to the client in the lost-reply test, and
# the client's deadline: the call runs and commits at once, its reply arrives long
# after the client gave up.
REPLY_DELAY_MS = 1000.0
LOST_REPLY_DEADLINE_S = 0.6


def test_a_reply_lost_before_a_failover_is_answered_by_the_new_owner_from_the_first_run(
    whole: Cluster,
) -> None:
    """A client in london increments a tokyo object at its owner with its own request
    id; the owner runs it and commits it (on its standby too), but the reply is held
    1 s on the way back (a tokyo -> london delay) and the client's 0.6 s deadline passes:
    it cannot know whether the increment happened. The owner is then killed -9, and the
    client retries the same request id at the new owner.

    The retry must be answered from the request-id record that came over with the
    object: the first run's value (2), with the node and epoch of that first run (a
    fresh run would say the new owner and the new epoch), and the count must show the
    increment once: a read gives 2 and the next increment 3, at the new epoch."""
    cluster = whole
    name = _unique("lost-reply")
    first = call(cluster, "tokyo-1", "increment", name=name, region="tokyo", location_hint="tokyo")
    placed = placement_of(cluster, "Counter", name)
    assert placed is not None and result(first) == 1
    assert (placed.owner, placed.epoch) == (first.node, first.epoch)
    assert cluster.node(placed.standby).region == "tokyo"
    request_id = f"{name}-retried"
    delay(cluster, "tokyo", "london", REPLY_DELAY_MS)
    try:
        # In force at the owner once a london client's Status comes back that late.
        poll_until(
            lambda: status_rtt_s(cluster, placed.owner, "london") > REPLY_DELAY_MS / 1e3,
            timeout=10,
            what="the reply delay in force at the owner",
        )
        lost = call_error(
            lambda: call(
                cluster,
                placed.owner,
                "increment",
                name=name,
                region="london",
                request_id=request_id,
                timeout=LOST_REPLY_DEADLINE_S,
            )
        )
        assert lost.code() == grpc.StatusCode.DEADLINE_EXCEEDED, lost
    finally:
        clear_faults(cluster)
    cluster.kill(placed.owner)
    moved = poll_until(
        lambda: (p := placement_of(cluster, "Counter", name)) and p.epoch > placed.epoch and p,
        timeout=FAILOVER_S_MAX + 2,
        what="the object moves off the killed owner",
    )
    assert (moved.owner, moved.epoch) == (placed.standby, placed.epoch + 1)
    retried = call(
        cluster, moved.owner, "increment", name=name, region="tokyo", request_id=request_id
    )
    # The first run's answer: its value, and where and at which epoch it ran.
    assert (result(retried), retried.node, retried.epoch) == (2, placed.owner, placed.epoch)
    # Executed once: the count is 2, and the next increment (a new id) makes it 3.
    read = call(cluster, moved.owner, "get", name=name, region="tokyo")
    assert (result(read), read.node, read.epoch) == (2, moved.owner, moved.epoch)
    after = call(cluster, moved.owner, "increment", name=name, region="tokyo")
    assert (result(after), after.node, after.epoch) == (3, moved.owner, moved.epoch)


# -- acceptance: owner partitioned from the control plane ----------------------------------------


def _probe(cluster: Cluster, node: str, name: str, region: str) -> tuple[bool, Any, float]:
    """One increment sent straight to `node`: (served, response or code, send time)."""
    sent = time.time()
    try:
        response = call(cluster, node, "increment", name=name, region=region, timeout=0.8)
    except grpc.RpcError as error:
        return False, error.code(), sent
    return True, response, sent


@pytest.mark.timing
def test_owner_cut_off_from_the_control_plane_stops_after_its_lease_and_refuses_after_heal(
    whole: Cluster,
) -> None:
    """The object lives in sydney (one PoP, standby in tokyo); sydney <-> us-east-1 is cut,
    which leaves sydney-1 reachable by clients and peers but not by the control plane.

    Probes are increments sent straight to sydney-1 with a short deadline. One that timed
    out may still have run (its reply was late, not lost) if it was sent while the lease
    could still be valid; one sent after that must not have run: the count the new owner
    reports is checked against both bounds.
    """
    cluster = whole
    name = _unique("partitioned")
    first = call(
        cluster, "sydney-1", "increment", name=name, region="sydney", location_hint="sydney"
    )
    assert (first.node, first.epoch) == ("sydney-1", 1)
    placed = placement_of(cluster, "Counter", name)
    assert placed is not None and cluster.node(placed.standby).region == "tokyo"
    partition(cluster, "sydney", "us-east-1")
    cut_at = time.time()
    # The lease runs from the send time of the last acknowledged heartbeat (< cut_at).
    lease_over_at = cut_at + LEASE_S + 0.2
    probes: list[tuple[bool, Any, float]] = []

    def stopped() -> bool:
        probes.append(_probe(cluster, "sydney-1", name, "sydney"))
        return not probes[-1][0]

    poll_until(stopped, timeout=LEASE_S + 4, interval=0.05, what="the cut-off owner stops")
    # Until its lease lapsed it served, as itself, at its epoch; never after the lease.
    served = [(answer, sent) for ok, answer, sent in probes if ok]
    assert all((a.node, a.epoch) == ("sydney-1", 1) for a, _ in served)
    assert all(sent < lease_over_at for _, sent in served)
    assert probes[-1][2] < lease_over_at + 0.5, "it served well past its lease"
    last_served_at = max([sent for _, sent in served], default=cut_at)

    moved = poll_until(
        lambda: (p := placement_of(cluster, "Counter", name)) and p.epoch == 2 and p,
        timeout=5,
        what="the object moves to its standby",
    )
    assert moved.owner == placed.standby
    assert time.time() > last_served_at
    # Still refusing (no flapping), after the move too.
    for _ in range(2):
        probes.append(_probe(cluster, "sydney-1", name, "sydney"))
        assert not probes[-1][0]
    response = call(cluster, moved.owner, "increment", name=name, region="tokyo")
    assert (response.node, response.epoch) == (moved.owner, 2)
    acknowledged = 1 + len(served)
    maybe_ran = len([1 for ok, _, sent in probes if not ok and sent < lease_over_at])
    assert acknowledged + 1 <= result(response) <= acknowledged + maybe_ran + 1
    count = result(response)

    clear_faults(cluster)
    poll_until(lambda: "sydney-1" in healthy(cluster), timeout=10, what="sydney-1 healthy")
    # The old owner takes calls again, but only to forward them: never served at epoch 1.
    for _ in range(3):
        again = call(cluster, "sydney-1", "increment", name=name, region="sydney")
        count += 1
        assert (again.node, again.epoch, result(again)) == (moved.owner, 2, count)


def test_stale_route_to_a_cut_off_old_owner_is_corrected_within_the_failover_time(
    whole: Cluster,
) -> None:
    cluster = whole
    name = _unique("stale-route")
    first = call(
        cluster, "london-1", "increment", name=name, region="london", location_hint="sydney"
    )
    assert first.node == "sydney-1"  # london-1 now caches sydney-1 as the owner
    partition(cluster, "sydney", "us-east-1")
    poll_until(
        lambda: (p := placement_of(cluster, "Counter", name)) and p.epoch == 2,
        timeout=LEASE_S + 4,
        what="the object moves",
    )
    moved_at = time.monotonic()
    response = call(cluster, "london-1", "increment", name=name, region="london", timeout=10)
    assert response.epoch == 2
    assert time.monotonic() - moved_at < FAILOVER_S_MAX


# -- Lock across a failover ------------------------------------------------------------------------


def test_lock_fencing_tokens_keep_growing_across_a_failover(whole: Cluster) -> None:
    cluster = whole
    name = _unique("lock-failover")

    def lock(node: str, method: str, *args: Any) -> dict[str, Any]:
        answer: dict[str, Any] = result(
            call(
                cluster,
                node,
                method,
                list(args),
                namespace="Lock",
                name=name,
                region=cluster.node(node).region,
                timeout=10,
            )
        )
        return answer

    first = lock("london-1", "acquire", "alice", 0.3)
    owner = placement_of(cluster, "Lock", name)
    assert owner is not None and owner.owner.startswith("london-")
    second = poll_until(
        lambda: (a := lock("london-1", "acquire", "bob", 1.0))["granted"] and a,
        timeout=5,
        what="bob after alice's ttl",
    )
    assert second["token"] > first["token"]
    cluster.kill(owner.owner)
    entry = "tokyo-1"
    third = poll_until(
        lambda: (a := _try(lambda: lock(entry, "acquire", "carol", 30))) and a["granted"] and a,
        timeout=10,
        what="carol after the failover and bob's ttl",
    )
    assert third["token"] > second["token"]
    status = lock(entry, "status")
    assert status["holder"] == "carol" and status["fence"] == third["token"]


def _try(function: Any) -> Any:
    try:
        return function()
    except grpc.RpcError:
        return None


# -- DocumentSession: one order for all, nothing acknowledged missed across a failover ----------


def test_document_session_clients_see_one_order_and_miss_nothing_acknowledged_across_a_failover(
    whole: Cluster,
) -> None:
    asyncio.run(_document_scenario(whole))


async def _document_scenario(cluster: Cluster) -> None:
    document = _unique("doc")
    first = await asyncio.to_thread(
        call,
        cluster,
        "tokyo-1",
        "head",
        namespace="DocumentSession",
        name=document,
        region="tokyo",
        location_hint="tokyo",
    )
    owner = first.node
    entries = {"tokyo": owner, "london": "london-1", "sydney": "sydney-1"}
    clients = {
        region: DocClient(cluster, f"client-{region}", region, document)
        for region in CLIENT_REGIONS
    }
    try:
        for region, client in clients.items():
            opened = await client.connect(entries[region])
            assert (opened.node, opened.epoch) == (owner, first.epoch)

        # Phase 1: 8 ops from each, concurrently; everyone sees all 24 in one order.
        await asyncio.gather(
            *(_send_ops(client, "p1", 8, interval_s=0.0) for client in clients.values())
        )
        await apoll_until(
            lambda: all(len(c.seen) == 24 for c in clients.values()), timeout=10, what="24 ops"
        )
        reference = clients["tokyo"].seen
        for client in clients.values():
            assert client.seen == reference
            assert client.connections[0].arrivals == list(range(1, 25))

        # Phase 2: keep sending; kill the owner midway; reconnect; say hello.
        stop = asyncio.Event()
        keepers = [
            asyncio.ensure_future(_keep_connected(cluster, client, entries, owner, stop))
            for client in clients.values()
        ]
        senders = [
            asyncio.ensure_future(_send_ops(client, "p2", 20, interval_s=0.05))
            for client in clients.values()
        ]
        await apoll_until(
            lambda: sum(len(c.acknowledged) for c in clients.values()) >= 24 + 15,
            timeout=15,
            what="phase-2 ops acknowledged",
        )
        await asyncio.to_thread(cluster.kill, owner)
        await asyncio.gather(*senders)
        acknowledged = {
            op_id: seq for client in clients.values() for op_id, seq in client.acknowledged.items()
        }

        def every_client_has_every_acknowledged_op() -> bool:
            return all(
                all(
                    isinstance(c.seen.get(seq), dict) and c.seen[seq]["id"] == op_id
                    for op_id, seq in acknowledged.items()
                )
                for c in clients.values()
            )

        await apoll_until(every_client_has_every_acknowledged_op, timeout=20, what="catch-up")
        stop.set()
        await asyncio.gather(*keepers)
        # One order for everyone: no seq names two different ops anywhere.
        merged: dict[int, Any] = {}
        for client in clients.values():
            for seq, op in client.seen.items():
                assert merged.setdefault(seq, op) == op
        assert any(len(c.connections) > 1 for c in clients.values()), "nobody reconnected"
        # Every session, first or resumed: every op after the `last_seen` its hello
        # carried, in seq order, none missing, none twice (the replay, then live ops).
        for client in clients.values():
            for connection in client.connections:
                arrivals, since = connection.arrivals, connection.resumed_from
                print(f"{client.name} at {connection.node} from {since}: {len(arrivals)} ops")
                expected = list(range(since + 1, since + 1 + len(arrivals)))
                assert arrivals == expected, (client.name, connection.node, since, arrivals)
        # The document itself holds every acknowledged op at its seq.
        ops = await asyncio.to_thread(
            call,
            cluster,
            "london-1",
            "ops",
            [0, 1000],
            namespace="DocumentSession",
            name=document,
            region="london",
        )
        stored = {item["seq"]: item["op"] for item in result(ops)}
        assert sorted(stored) == list(range(1, len(stored) + 1))
        for op_id, seq in acknowledged.items():
            assert stored[seq]["id"] == op_id
        assert ops.epoch == first.epoch + 1
    finally:
        for client in clients.values():
            await client.close()


async def _send_ops(client: DocClient, phase: str, count: int, interval_s: float) -> None:
    """Send `count` ops, each while the session is live (waiting through reconnects)."""
    for index in range(count):
        op_id = f"{client.name}-{phase}-{index}"
        while not await client.send_op(op_id):
            await asyncio.wait_for(client.live.wait(), timeout=20)
        if interval_s:
            await asyncio.sleep(interval_s)


async def _keep_connected(
    cluster: Cluster, client: DocClient, entries: dict[str, str], owner: str, stop: asyncio.Event
) -> None:
    """Reconnect whenever the session ends: to the same PoP, or (if it was the owner that
    died) to the nearest healthy one; hello carries the last contiguous seq seen."""
    while not stop.is_set():
        if client.live.is_set():
            await asyncio.sleep(0.02)
            continue
        node = entries[client.region]
        if node == owner:
            node = await asyncio.to_thread(lambda: route(cluster, client.region).name)
        try:
            await client.connect(node, timeout=12)
        except (grpc.aio.AioRpcError, AssertionError, TimeoutError):
            await asyncio.sleep(0.1)


# -- the standby dies, or both copies do --------------------------------------------------------


def test_standby_killed_under_load_object_keeps_owner_and_epoch_and_gets_a_new_standby(
    whole: Cluster,
) -> None:
    cluster = whole
    name = _unique("standby-dies")
    first = call(cluster, "london-1", "increment", name=name, region="london")
    placed = placement_of(cluster, "Counter", name)
    assert placed is not None and placed.owner == first.node
    loop = IncrementLoop(cluster, placed.owner, name, "london")
    loop.start()
    poll_until(lambda: len(loop.acknowledged) >= 10, timeout=10, what="load under way")
    cluster.kill(placed.standby)
    killed_at = time.time()
    poll_until(
        lambda: (
            any(record.acked_at > killed_at + 0.5 for record in loop.acknowledged[-1:])
            and len(loop.acknowledged) >= 30
        ),
        timeout=15,
        what="calls served again after the standby died",
    )
    loop.finish()
    after = placement_of(cluster, "Counter", name)
    assert after is not None
    assert (after.owner, after.epoch) == (placed.owner, placed.epoch)
    assert after.standby not in ("", placed.standby)
    resumed = min(r.acked_at for r in loop.acknowledged if r.acked_at > killed_at + 0.5)
    print(f"standby killed: longest gap {loop.longest_gap_s():.2f} s")
    assert loop.longest_gap_s() < FAILOVER_S_MAX
    assert resumed - killed_at < FAILOVER_S_MAX + 0.5
    assert {record.epoch for record in loop.acknowledged} == {placed.epoch}
    values = [record.value for record in loop.acknowledged]
    assert values == list(range(2, len(values) + 2))  # in order, none lost, none twice
    final = result(call(cluster, "tokyo-1", "get", name=name, region="tokyo"))
    # The loop stops between attempts: an attempt that failed just then may have run.
    assert values[-1] <= final <= values[-1] + 1


def test_owner_and_standby_both_killed_object_waits_then_its_standby_serves_everything(
    whole: Cluster,
) -> None:
    """Neither copy is up: the object must not move elsewhere (that would lose acknowledged
    writes). It comes back when the standby does, at a higher epoch, with every write."""
    cluster = whole
    name = _unique("both-die")
    for _ in range(5):
        last = call(cluster, "tokyo-1", "increment", name=name, region="tokyo")
    placed = placement_of(cluster, "Counter", name)
    assert placed is not None and cluster.node(placed.standby).region == "tokyo"
    # Both stop at one instant, then die. Killed one after the other, a heartbeat tick
    # between the two kills can leave the standby's lease a second longer than the
    # owner's, and the control plane then rightly promotes it while it still looks alive.
    cluster.pause(placed.owner)
    cluster.pause(placed.standby)
    cluster.kill(placed.owner)
    cluster.kill(placed.standby)
    poll_until(
        lambda: not ({placed.owner, placed.standby} & healthy(cluster)),
        timeout=5,
        what="both copies unhealthy",
    )
    # Well past lease + margin: still placed on the two dead nodes, calls refused.
    error = call_error(lambda: call(cluster, "london-1", "get", name=name, timeout=3.5))
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    still = placement_of(cluster, "Counter", name)
    assert still is not None
    # The two copies that hold every acknowledged write keep the object (the standby may
    # have been promoted if its lease outlived the owner's by the last heartbeat).
    assert {still.owner, still.standby} == {placed.owner, placed.standby}
    assert still.epoch in (placed.epoch, placed.epoch + 1)
    assert still.owner == placed.owner or still.epoch == placed.epoch + 1
    cluster.start(placed.standby)
    response = call(cluster, "london-1", "increment", name=name, region="london", timeout=10)
    assert (response.node, response.epoch) == (placed.standby, placed.epoch + 1)
    assert result(response) == result(last) + 1


# -- network faults between the two copies, and a paused control plane ----------------------------


def test_owner_cut_off_from_its_standby_confirms_a_new_one_and_loses_no_increment(
    whole: Cluster,
) -> None:
    """sydney-1 owns the object (its only site-mate-less PoP), its standby is in tokyo;
    then sydney <-> tokyo is cut while a client keeps incrementing through sydney-1 (one
    call at a time, each retried with its request id until answered).

    The owner cannot make a write durable on its standby any more, so it acknowledges
    nothing until the control plane has named a next standby outside the cut region,
    the owner has given it a full copy and confirmed it. Checked: the owner and epoch do
    not change; the standby is a new node outside tokyo, confirmed (no next standby left
    pending) and healthy; calls are served again within 10 s of the cut; the answers are
    1, 2, 3 ... in order (none lost, none twice, all at the one epoch); and the new
    standby's own copy holds the final count."""
    cluster = whole
    name = _unique("split-pair")
    first = call(
        cluster, "sydney-1", "increment", name=name, region="sydney", location_hint="sydney"
    )
    placed = placement_of(cluster, "Counter", name)
    assert placed is not None and placed.owner == "sydney-1" == first.node
    assert cluster.node(placed.standby).region == "tokyo" and not placed.next_standby
    loop = IncrementLoop(cluster, "sydney-1", name, "sydney")
    loop.start()
    try:
        poll_until(lambda: len(loop.acknowledged) >= 5, timeout=10, what="load under way")
        partition(cluster, "sydney", "tokyo")
        cut_at = time.time()

        def standby_replaced() -> objects_pb2.Placement | None:
            now = placement_of(cluster, "Counter", name)
            if now is None or now.standby in ("", placed.standby) or now.next_standby:
                return None
            return now

        replaced = poll_until(standby_replaced, timeout=10, what="a new confirmed standby")
        replaced_at = time.time()
        poll_until(
            lambda: sum(r.sent_at > replaced_at for r in loop.acknowledged) >= 5,
            timeout=10,
            what="calls served with the new standby",
        )
    finally:
        loop.finish()
    after = placement_of(cluster, "Counter", name)
    assert after is not None
    report = f"placed {placed}; after the cut {after}; failures {loop.failures[:5]}"
    assert (after.owner, after.epoch) == (placed.owner, placed.epoch), report
    assert (after.standby, after.next_standby) == (replaced.standby, ""), report
    assert cluster.node(after.standby).region != "tokyo", report
    assert after.standby in healthy(cluster), report
    served_again = min(r.acked_at for r in loop.acknowledged if r.sent_at > cut_at)
    print(f"owner cut off from its standby: served again {served_again - cut_at:.2f} s after")
    assert served_again - cut_at < 10, report
    assert {(r.node, r.epoch) for r in loop.acknowledged} == {(placed.owner, placed.epoch)}
    values = [record.value for record in loop.acknowledged]
    assert values == list(range(2, len(values) + 2)), values  # in order, none lost or twice
    final = result(call(cluster, "sydney-1", "get", name=name, region="sydney"))
    # The loop stops between attempts: a call it was still retrying may have run.
    assert values[-1] <= final <= values[-1] + (1 if loop.unfinished else 0)
    poll_until(
        lambda: copy_holds(cluster, after.standby, "Counter", name, final),
        timeout=5,
        what=f"the count {final} in {after.standby}'s copy",
    )


@pytest.mark.timing
def test_control_plane_unreachable_for_1_s_interrupts_no_object_call(whole: Cluster) -> None:
    """The control plane is paused (SIGSTOP) for 1 s, shorter than the lease minus one
    heartbeat interval: owners keep serving on their lease and PoPs on cached routes."""
    cluster = whole
    name = _unique("cp-pause")
    call(cluster, "tokyo-1", "get", name=name, region="tokyo")
    placed = placement_of(cluster, "Counter", name)
    assert placed is not None
    direct = IncrementLoop(cluster, placed.owner, name, "tokyo")
    forwarded = IncrementLoop(cluster, "london-1", name, "london")
    for loop in (direct, forwarded):
        loop.start()
    poll_until(lambda: len(forwarded.acknowledged) >= 3, timeout=10, what="load under way")
    _freeze_control_plane(cluster, 1.0)
    resumed_at = time.time()
    poll_until(
        lambda: forwarded.acknowledged[-1].acked_at > resumed_at + 1.0,
        timeout=10,
        what="calls after the pause",
    )
    for loop in (direct, forwarded):
        loop.finish()
    assert direct.failures == [] and forwarded.failures == []
    assert {r.epoch for r in direct.acknowledged + forwarded.acknowledged} == {placed.epoch}
    assert direct.longest_gap_s() < 0.5
    after = placement_of(cluster, "Counter", name)
    assert after is not None and (after.owner, after.epoch) == (placed.owner, placed.epoch)


@pytest.mark.timing
def test_control_plane_frozen_past_the_lease_wakes_to_no_node_down_and_moves_nothing(
    whole: Cluster,
) -> None:
    """The control plane is frozen (SIGSTOP) for 4 s, twice the lease, as a GC pause or a
    stopped VM would. Its lease clock does not count its own stall (LeaseClock): waking,
    it reads every heartbeat as about a second old, not 4 s, so it never marks a node
    down (no topology push says so) and moves no object; the heartbeats queued meanwhile
    then renew every lease. Owners, whose own leases lapsed while nobody answered them,
    serve again at the same epoch."""
    cluster = whole
    name = _unique("cp-freeze")
    call(cluster, "tokyo-1", "increment", name=name, region="tokyo")
    placed = placement_of(cluster, "Counter", name)
    assert placed is not None
    unhealthy_seen: list[set[str]] = []
    pushes: list[int] = []
    channel = grpc.insecure_channel(cluster.control_plane.grpc_address)
    stream = cp_grpc.ControlPlaneStub(channel).WatchTopology(
        cp_pb2.GetTopologyRequest(), metadata=auth(cluster)
    )

    def watch() -> None:
        with contextlib.suppress(grpc.RpcError):
            for topology in stream:
                pushes.append(topology.version)
                down = {node.name for node in topology.nodes if not node.healthy}
                if down:
                    unhealthy_seen.append(down)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        poll_until(lambda: pushes, timeout=5, what="the first topology")
        _freeze_control_plane(cluster, 4.0)
        # Every lease renewed again (the registry's view), then a few health checks more.
        poll_until(
            lambda: healthy(cluster) >= set(cluster.nodes), timeout=10, what="every node healthy"
        )
        woke_at = time.monotonic()
        poll_until(lambda: time.monotonic() - woke_at >= 1.0, timeout=2, what="1 s awake")
        assert unhealthy_seen == [], f"the control plane called nodes down: {unhealthy_seen}"
        after = placement_of(cluster, "Counter", name)
        assert after is not None and (after.owner, after.epoch) == (placed.owner, placed.epoch)
        # The owner serves again at the same epoch (its own lease lapsed while frozen out).
        response = poll_until(
            lambda: _increment_or_none(cluster, name), timeout=10, what="the owner serving again"
        )
        assert response.epoch == placed.epoch
    finally:
        stream.cancel()
        channel.close()


def _freeze_control_plane(cluster: Cluster, seconds: float) -> None:
    """SIGSTOP the control plane for `seconds` (a GC pause, a stopped VM), then SIGCONT."""
    pids = cluster.pause(cluster.control_plane.name)
    try:
        frozen_at = time.monotonic()
        poll_until(
            lambda: time.monotonic() - frozen_at >= seconds,
            timeout=seconds + 2,
            what=f"{seconds:g} s frozen",
        )
    finally:
        cluster.resume(pids)


def _increment_or_none(cluster: Cluster, name: str) -> objects_pb2.ObjectCallResponse | None:
    try:
        return call(cluster, "tokyo-1", "increment", name=name, region="tokyo")
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return None
        raise


# A control plane away for this long still leaves the owner's lease (2.5 s) renewed in
# time: the last heartbeat before the stop may be one interval (1 s) old, and a waiting
# one is delivered only when the channel reconnects (backoff up to 0.25 s + 20% jitter).
RESTART_WITHIN_LEASE_S = LEASE_S - HEARTBEAT_INTERVAL_S_DEFAULT - 0.3 - 0.2


@pytest.mark.timing
def test_control_plane_restart_within_1_s_interrupts_no_call_and_a_longer_one_only_while_away(
    whole: Cluster,
) -> None:
    """The control plane is stopped and started again (a new process) while a client
    increments through the owner, each call retried with its request id.

    Always: the object keeps its owner and epoch, and each increment is applied once, in
    order. Then it depends on how long the control plane was away. Back within
    RESTART_WITHIN_LEASE_S (1 s: the 2.5 s lease, less one heartbeat interval, the
    channel's reconnect backoff and a margin), every lease is renewed in time: no call
    fails and none waits 0.5 s. That is the usual case here (stop + start takes 0.3-0.4 s
    on this machine). Away longer (a loaded machine), the owner's lease may lapse as in a
    partition: calls are then refused UNAVAILABLE (retryable) until the control plane is
    back, for no longer than the restart plus a second. Which branch ran is printed.
    DESIGN.md promises "a restart shorter than the lease interrupts nothing"; what is
    guaranteed, and checked, is a restart shorter than 1 s."""
    cluster = whole
    name = _unique("cp-restart")
    call(cluster, "tokyo-1", "get", name=name, region="tokyo")
    placed = placement_of(cluster, "Counter", name)
    assert placed is not None
    direct = IncrementLoop(cluster, placed.owner, name, "tokyo")
    direct.start()
    poll_until(lambda: len(direct.acknowledged) >= 5, timeout=10, what="load under way")
    started = time.monotonic()
    cluster.stop("control-plane")
    stopped_s = time.monotonic() - started
    cluster.start("control-plane")
    restart_s = time.monotonic() - started
    done_at = time.time()
    poll_until(
        lambda: direct.acknowledged[-1].acked_at > done_at + 1.0, timeout=10, what="calls after"
    )
    direct.finish()
    gap_s = direct.longest_gap_s()
    report = (
        f"control plane stop {stopped_s:.2f} s, stop + start {restart_s:.2f} s, gap {gap_s:.2f} s"
    )
    print(report)
    assert {r.epoch for r in direct.acknowledged} == {placed.epoch}, report
    values = [r.value for r in direct.acknowledged]
    assert values == sorted(set(values)), report  # each increment applied once, in order
    print("within the lease: strict" if restart_s < RESTART_WITHIN_LEASE_S else "longer: lenient")
    if restart_s < RESTART_WITHIN_LEASE_S:
        # A call takes ~10 ms: a gap of 0.5 s means the owner stopped serving for a while
        # (its lease lapsed and a call waited for a re-activation at the control plane).
        assert direct.failures == [], report
        assert gap_s < 0.5, report
    else:
        # A restart this slow (a loaded machine) may outlast the lease, as a partition
        # would: the owner then stops until the control plane is back, and no longer; a
        # call caught by the lapse is refused as retryable and its retry succeeds.
        assert {code for _, code in direct.failures} <= {"UNAVAILABLE"}, report
        assert gap_s < restart_s + 1.0, report
