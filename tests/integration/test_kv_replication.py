"""KV replication across the default cluster, with the seed's delays."""

from __future__ import annotations

import uuid

from edge.v1 import kv_pb2
from edgectl.launcher import Cluster
from tests.conftest import poll_until
from tests.integration import workload
from tests.integration.kvclient import (
    converged,
    dump_origin,
    origin_head,
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


def test_strong_read_is_answered_by_the_origin_and_eventual_by_the_replica(
    shared_cluster: Cluster,
) -> None:
    key = f"strong-{uuid.uuid4().hex}"
    with pop_stub(shared_cluster, "london-1") as london:
        seq = london.KvPut(
            kv_pb2.KvPutRequest(namespace="app", key=key, value=b"x"), timeout=10
        ).seq
        strong = london.KvGet(
            kv_pb2.KvGetRequest(namespace="app", key=key, consistency=kv_pb2.CONSISTENCY_STRONG),
            timeout=10,
        )
        assert strong.found and strong.applied_seq >= seq
    head = origin_head(shared_cluster)
    assert head >= seq


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
