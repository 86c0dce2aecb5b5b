"""KV replication across the default cluster, with the seed's delays."""

from __future__ import annotations

import time
import uuid

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import kv_pb2, origin_pb2, origin_pb2_grpc
from edgectl.client import EdgeClient
from edgectl.launcher import Cluster
from edgepop.netem import REGION_HEADER, sent_at_metadata
from tests.conftest import poll_until
from tests.integration import workload
from tests.integration.kvclient import (
    converged,
    dump_origin,
    origin_head,
    origin_stub,
    pop_status,
    pop_stub,
)

TOKYO = [("x-edge-region", "tokyo")]


def test_write_through_tokyo_reads_back_at_once_and_everywhere_after_propagation(
    shared_cluster: Cluster,
) -> None:
    key = f"greeting-{uuid.uuid4().hex}"
    with pop_stub(shared_cluster, "tokyo-1") as tokyo:
        put = tokyo.KvPut(
            kv_pb2.KvPutRequest(namespace="app", key=key, value=b"hello"),
            metadata=TOKYO,
            timeout=10,
        )
        assert put.seq > 0
        got = tokyo.KvGet(kv_pb2.KvGetRequest(namespace="app", key=key), metadata=TOKYO)
        assert got.found and got.value == b"hello"

    for pop in shared_cluster.pops:
        with pop_stub(shared_cluster, pop.name) as stub:

            def replicated(stub=stub) -> bool:
                response = stub.KvGet(kv_pb2.KvGetRequest(namespace="app", key=key), timeout=5)
                return response.found and response.value == b"hello"

            poll_until(replicated, timeout=10, what=f"{key} at {pop.name}")


def test_seeded_workload_of_5000_operations_leaves_every_replica_identical_to_origin(
    fast_cluster: Cluster,
) -> None:
    operations = workload.generate(seed=20261127, count=5000)
    last_seq = workload.run(fast_cluster, operations, seed=7)
    assert last_seq >= 5000  # batch puts take one seq per entry
    # Expiring keys are swept through the log while we compare: wait for a stable match.
    poll_until(lambda: converged(fast_cluster), timeout=60, interval=0.5, what="convergence")
    origin_seq, records = dump_origin(fast_cluster)
    assert origin_seq >= last_seq
    assert records, "the workload leaves keys behind"
    for pop in fast_cluster.pops:
        assert pop_status(fast_cluster, pop.name).applied_seq >= last_seq


def test_bookmark_read_at_another_pop_never_returns_data_older_than_the_bookmark(
    shared_cluster: Cluster,
) -> None:
    key = f"bookmark-{uuid.uuid4().hex}"
    with (
        pop_stub(shared_cluster, "tokyo-1") as tokyo,
        pop_stub(shared_cluster, "sao-paulo-1") as sao_paulo,
    ):
        for round_number in range(5):
            value = f"v{round_number}".encode()
            seq = tokyo.KvPut(
                kv_pb2.KvPutRequest(namespace="app", key=key, value=value),
                metadata=TOKYO,
                timeout=10,
            ).seq
            got = sao_paulo.KvGet(
                kv_pb2.KvGetRequest(
                    namespace="app",
                    key=key,
                    consistency=kv_pb2.CONSISTENCY_BOOKMARK,
                    min_seq=seq,
                ),
                metadata=[("x-edge-region", "sao-paulo")],
                timeout=10,
            )
            assert got.found and got.value == value, f"round {round_number}"
            assert got.applied_seq >= seq


# Extra one-way delay on the origin's messages to sydney in the strong-vs-eventual test:
# with sydney's own 105 ms it keeps that replica provably behind a write for ~0.4 s,
# far longer than the two reads take, and costs the test about a second.
STREAM_DELAY_MS = 300.0


def test_eventual_read_at_a_lagging_pop_is_stale_while_a_strong_read_there_is_fresh(
    shared_cluster: Cluster,
) -> None:
    """sydney-1's replica is held behind on purpose: every message from the origin to
    sydney (the replication stream among them) gets 300 ms more one-way delay. A write
    made at the origin is then, for ~400 ms, not yet in that replica. Read through
    sydney-1 at once, EVENTUAL must answer the old value with an `applied_seq` below the
    write's seq (the replica, provably behind), and STRONG the new value (the origin:
    a read answered locally would return the old one). Once the stream delivers, the
    EVENTUAL read catches up."""
    key = f"strong-{uuid.uuid4().hex}"
    with origin_stub(shared_cluster) as origin, pop_stub(shared_cluster, "sydney-1") as sydney:
        old_seq = origin.KvPut(
            kv_pb2.KvPutRequest(namespace="app", key=key, value=b"old"), timeout=10
        ).seq
        poll_until(
            lambda: pop_status(shared_cluster, "sydney-1").applied_seq >= old_seq,
            timeout=10,
            what="the old value at sydney-1",
        )
        set_stream_delay(shared_cluster, STREAM_DELAY_MS)
        try:
            # In force at the origin once a sydney client's call comes back late (its
            # round trip is 210 ms without the fault, 510 ms with it).
            poll_until(
                lambda: origin_rtt_s(origin, "sydney") > (210 + STREAM_DELAY_MS / 2) / 1e3,
                timeout=5,
                what="the stream delay in force at the origin",
            )
            new_seq = origin.KvPut(
                kv_pb2.KvPutRequest(namespace="app", key=key, value=b"new"), timeout=10
            ).seq
            eventual = sydney.KvGet(
                kv_pb2.KvGetRequest(
                    namespace="app", key=key, consistency=kv_pb2.CONSISTENCY_EVENTUAL
                ),
                timeout=10,
            )
            strong = sydney.KvGet(
                kv_pb2.KvGetRequest(
                    namespace="app", key=key, consistency=kv_pb2.CONSISTENCY_STRONG
                ),
                timeout=10,
            )
            report = f"write seq {new_seq}; eventual {eventual}; strong {strong}"
            assert (eventual.found, eventual.value) == (True, b"old"), report
            assert old_seq <= eventual.applied_seq < new_seq, report
            assert (strong.found, strong.value) == (True, b"new"), report
            assert strong.applied_seq >= new_seq, report
            poll_until(
                lambda: sydney.KvGet(kv_pb2.KvGetRequest(namespace="app", key=key)).value == b"new",
                timeout=10,
                what="the stream delivers the write to sydney-1",
            )
        finally:
            clear_stream_delay(shared_cluster)
    assert origin_head(shared_cluster) >= new_seq


def set_stream_delay(cluster: Cluster, delay_ms: float) -> None:
    """Extra one-way delay on every message from us-east-1 to sydney."""
    with EdgeClient.for_data_dir(cluster.data_dir) as client:
        client.set_link_fault(
            cp_pb2.SetLinkFaultRequest(
                from_region="us-east-1", to_region="sydney", delay_ms=delay_ms, one_way=True
            )
        )


def clear_stream_delay(cluster: Cluster) -> None:
    with EdgeClient.for_data_dir(cluster.data_dir) as client:
        client.clear_faults(
            cp_pb2.ClearFaultsRequest(from_region="us-east-1", to_region="sydney", one_way=True)
        )


def origin_rtt_s(origin: origin_pb2_grpc.OriginStub, region: str) -> float:
    """One Origin.Status round trip from a client in `region`, timed."""
    started = time.perf_counter()
    origin.Status(
        origin_pb2.OriginStatusRequest(),
        metadata=[(REGION_HEADER, region), sent_at_metadata()],
        timeout=10,
    )
    return time.perf_counter() - started


def test_read_your_writes_at_the_writing_pop_before_the_stream_delivers(
    shared_cluster: Cluster,
) -> None:
    # Sydney's PoP is 105 ms one-way from the origin: the stream brings a write at least
    # that long after the origin commits, but the writer must see it at once.
    key = f"ryw-{uuid.uuid4().hex}"
    sydney = [("x-edge-region", "sydney")]
    with pop_stub(shared_cluster, "sydney-1") as stub:
        for round_number in range(3):
            value = f"r{round_number}".encode()
            stub.KvPut(
                kv_pb2.KvPutRequest(namespace="app", key=key, value=value),
                metadata=sydney,
                timeout=10,
            )
            got = stub.KvGet(kv_pb2.KvGetRequest(namespace="app", key=key), metadata=sydney)
            assert got.found and got.value == value
        stub.KvDelete(kv_pb2.KvDeleteRequest(namespace="app", key=key), metadata=sydney)
        assert not stub.KvGet(kv_pb2.KvGetRequest(namespace="app", key=key)).found
        listed = stub.KvList(kv_pb2.KvListRequest(namespace="app", prefix=key))
        assert [k.name for k in listed.keys] == []
