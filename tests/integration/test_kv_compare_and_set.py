"""Compare-and-set puts (`KvPutRequest.if_seq`, beyond Cloudflare): of two writers that
read the same version at different PoPs, one wins and the other fails cleanly with
FAILED_PRECONDITION, writing nothing; the version to pass is `KvGetResponse.seq`."""

from __future__ import annotations

import uuid

import grpc
import pytest

from edge.v1 import kv_pb2
from edgectl.launcher import Cluster
from tests.conftest import poll_until
from tests.integration.kvclient import log_entries_since, origin_head, pop_stub

NAMESPACE = "cas"


def get(cluster: Cluster, pop: str, key: str, strong: bool = False) -> kv_pb2.KvGetResponse:
    consistency = kv_pb2.CONSISTENCY_STRONG if strong else kv_pb2.CONSISTENCY_EVENTUAL
    with pop_stub(cluster, pop) as stub:
        return stub.KvGet(
            kv_pb2.KvGetRequest(namespace=NAMESPACE, key=key, consistency=consistency),
            timeout=30,
        )


def put(cluster: Cluster, pop: str, key: str, value: bytes, if_seq: int) -> int:
    with pop_stub(cluster, pop) as stub:
        reply = stub.KvPut(
            kv_pb2.KvPutRequest(namespace=NAMESPACE, key=key, value=value, if_seq=if_seq),
            timeout=30,
        )
    return int(reply.seq)


def test_two_writers_at_one_version_one_wins_and_the_other_writes_nothing(
    fast_cluster: Cluster,
) -> None:
    key = f"counter-{uuid.uuid4().hex[:8]}"
    created = put(fast_cluster, "tokyo-1", key, b"0", if_seq=0)  # only if absent
    with pytest.raises(grpc.RpcError) as twice:
        put(fast_cluster, "london-1", key, b"0", if_seq=0)
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"is at seq {created}" in (twice.value.details() or "")
    # Both PoPs read version `created` (london once it has replicated it).
    poll_until(lambda: get(fast_cluster, "london-1", key).seq == created, 10.0)
    assert get(fast_cluster, "tokyo-1", key).seq == created
    won = put(fast_cluster, "tokyo-1", key, b"1", if_seq=created)
    head = origin_head(fast_cluster)
    with pytest.raises(grpc.RpcError) as lost:
        put(fast_cluster, "london-1", key, b"1 from london", if_seq=created)
    assert lost.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"is at seq {won}" in (lost.value.details() or "")
    # The loser wrote nothing: no log entry after the head, the winner's value stays.
    assert [e for e in log_entries_since(fast_cluster, head) if e.namespace == NAMESPACE] == []
    final = get(fast_cluster, "london-1", key, strong=True)
    assert (final.value, final.seq) == (b"1", won)
