"""KV replication across the default cluster, with the seed's delays."""

from __future__ import annotations

import uuid

from edge.v1 import kv_pb2
from edgectl.launcher import Cluster
from tests.conftest import poll_until
from tests.integration.kvclient import pop_stub

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
