"""Every limit is refused where the request enters, with the stated code, changing nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from edge.v1 import kv_pb2
from edgectl.launcher import Cluster
from edgepop.limits import KEY_BYTES_MAX, METADATA_BYTES_MAX, VALUE_BYTES_MAX
from tests.conftest import FAST_TOPOLOGY, ClusterFactory, poll_until
from tests.integration.kvclient import (
    log_entries_since,
    origin_head,
    origin_stub,
    pop_status,
    pop_stub,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _put(**fields: Any) -> Callable[[Any], Any]:
    request = kv_pb2.KvPutRequest(namespace=fields.pop("namespace", "lim"), **fields)
    return lambda stub: stub.KvPut(request, timeout=30)


REFUSED_WRITES = {
    "key over 512 bytes": (_put(key="k" * (KEY_BYTES_MAX + 1), value=b"v"), "512"),
    "multibyte key over 512 bytes": (_put(key="é" * 257, value=b"v"), "512"),
    "empty key": (_put(key="", value=b"v"), "empty"),
    "key '.'": (_put(key=".", value=b"v"), '"."'),
    "key '..'": (_put(key="..", value=b"v"), '".."'),
    "value over 25 MiB": (_put(key="big", value=b"x" * (VALUE_BYTES_MAX + 1)), "VALUE_BYTES_MAX"),
    "metadata over 1024 bytes": (
        _put(key="m", value=b"v", metadata_json='"' + "x" * METADATA_BYTES_MAX + '"'),
        "METADATA_BYTES_MAX",
    ),
    "metadata not JSON": (_put(key="m", value=b"v", metadata_json="{nope"), "JSON"),
    "negative ttl": (_put(key="t", value=b"v", expiration_ttl=-5), "negative"),
    "expiration in the past": (_put(key="t", value=b"v", expiration=1000), "future"),
    "bad namespace": (_put(namespace="no spaces", key="k", value=b"v"), "namespace"),
    "request id over 64 bytes": (_put(key="k", value=b"v", request_id="r" * 65), "request_id"),
    "put-many over 10,000 entries": (
        lambda stub: stub.KvPutMany(
            kv_pb2.KvPutManyRequest(
                namespace="lim",
                entries=[kv_pb2.KvPutEntry(key=f"k{i}") for i in range(10_001)],
            ),
            timeout=30,
        ),
        "PUT_MANY_ENTRIES_MAX",
    ),
    "put-many with one bad entry": (
        lambda stub: stub.KvPutMany(
            kv_pb2.KvPutManyRequest(
                namespace="lim",
                entries=[kv_pb2.KvPutEntry(key="ok"), kv_pb2.KvPutEntry(key="..")],
            ),
            timeout=30,
        ),
        "entries[1]",
    ),
    "delete of an over-long key": (
        lambda stub: stub.KvDelete(
            kv_pb2.KvDeleteRequest(namespace="lim", key="k" * 600), timeout=30
        ),
        "512",
    ),
}

REFUSED_READS = {
    "get-many over 100 keys": (
        lambda stub: stub.KvGetMany(
            kv_pb2.KvGetManyRequest(namespace="lim", keys=[f"k{i}" for i in range(101)])
        ),
        "GET_MANY_KEYS_MAX",
    ),
    "list limit over 1000": (
        lambda stub: stub.KvList(kv_pb2.KvListRequest(namespace="lim", limit=1001)),
        "LIST_LIMIT_MAX",
    ),
    "list with a foreign cursor": (
        lambda stub: stub.KvList(kv_pb2.KvListRequest(namespace="lim", cursor="%%%")),
        "cursor",
    ),
    "get of an over-long key": (
        lambda stub: stub.KvGet(kv_pb2.KvGetRequest(namespace="lim", key="k" * 513)),
        "512",
    ),
}


@pytest.mark.parametrize("target", ["pop", "origin"])
@pytest.mark.parametrize("case", sorted(REFUSED_WRITES))
def test_write_over_a_limit_is_refused_and_changes_nothing(
    fast_cluster: Cluster, target: str, case: str
) -> None:
    call, words = REFUSED_WRITES[case]
    head_before = origin_head(fast_cluster)
    context = pop_stub(fast_cluster, "tokyo-1") if target == "pop" else origin_stub(fast_cluster)
    with context as stub, pytest.raises(grpc.RpcError) as raised:
        call(stub)
    assert raised.value.code() == INVALID
    assert words in raised.value.details()
    # Nothing was committed for it (the expiry sweeper may commit unrelated deletes).
    assert [e for e in log_entries_since(fast_cluster, head_before) if e.namespace == "lim"] == []


@pytest.mark.parametrize("case", sorted(REFUSED_READS))
def test_read_over_a_limit_is_refused(fast_cluster: Cluster, case: str) -> None:
    call, words = REFUSED_READS[case]
    with pop_stub(fast_cluster, "london-1") as stub, pytest.raises(grpc.RpcError) as raised:
        call(stub)
    assert raised.value.code() == INVALID
    assert words in raised.value.details()


def test_values_and_keys_at_the_limits_are_accepted_and_replicated(fast_cluster: Cluster) -> None:
    longest_key = "é" * (KEY_BYTES_MAX // 2)  # exactly 512 bytes
    largest_value = b"\x07" * VALUE_BYTES_MAX
    metadata = '"' + "m" * (METADATA_BYTES_MAX - 2) + '"'
    with pop_stub(fast_cluster, "tokyo-1") as tokyo:
        seq = tokyo.KvPut(
            kv_pb2.KvPutRequest(
                namespace="edge", key=longest_key, value=largest_value, metadata_json=metadata
            ),
            timeout=60,
        ).seq
    poll_until(lambda: pop_status(fast_cluster, "london-1").applied_seq >= seq, timeout=30)
    with pop_stub(fast_cluster, "london-1") as london:
        got = london.KvGet(kv_pb2.KvGetRequest(namespace="edge", key=longest_key), timeout=30)
    assert got.found and got.value == largest_value and got.metadata_json == metadata


def test_ttl_key_expires_on_read_everywhere_then_is_swept_through_the_log(
    fast_cluster: Cluster,
) -> None:
    with pop_stub(fast_cluster, "tokyo-1") as tokyo:
        seq = tokyo.KvPut(
            kv_pb2.KvPutRequest(namespace="ttl", key="short", value=b"v", expiration_ttl=1),
            timeout=10,
        ).seq
        assert tokyo.KvGet(kv_pb2.KvGetRequest(namespace="ttl", key="short")).found
    written_at = time.time()

    def gone_everywhere() -> bool:
        for pop in fast_cluster.pops:
            with pop_stub(fast_cluster, pop.name) as stub:
                if stub.KvGet(kv_pb2.KvGetRequest(namespace="ttl", key="short")).found:
                    return False
        return True

    poll_until(gone_everywhere, timeout=5, what="expired at every PoP")
    assert time.time() - written_at >= 0.0
    # The sweeper logs a delete, so the head moves past the put.
    poll_until(lambda: origin_head(fast_cluster) > seq, timeout=5, what="sweeper delete")


def test_full_origin_map_refuses_writes_and_keeps_serving_reads(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(FAST_TOPOLOGY, role_args={"origin": ["--map-size-mb", "4"]})
    with origin_stub(cluster) as origin:
        seq = origin.KvPut(
            kv_pb2.KvPutRequest(namespace="full", key="first", value=b"1"), timeout=5
        ).seq
    poll_until(lambda: pop_status(cluster, "tokyo-1").applied_seq >= seq, what="replicated")
    value = b"z" * (256 * 1024)
    with pop_stub(cluster, "tokyo-1") as tokyo:
        code = None
        for index in range(64):
            try:
                tokyo.KvPut(
                    kv_pb2.KvPutRequest(namespace="full", key=f"k{index}", value=value),
                    timeout=10,
                )
            except grpc.RpcError as error:
                code = error.code()
                details = error.details()
                break
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "full" in details
        got = tokyo.KvGet(kv_pb2.KvGetRequest(namespace="full", key="first"), timeout=5)
        assert got.found
    with origin_stub(cluster) as origin:
        assert origin.KvGet(kv_pb2.KvGetRequest(namespace="full", key="first"), timeout=5).found
        with pytest.raises(grpc.RpcError) as raised:
            origin.KvPut(kv_pb2.KvPutRequest(namespace="full", key="more", value=value), timeout=5)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_pop_write_fails_unavailable_within_its_deadline_while_origin_is_down(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(FAST_TOPOLOGY)
    with pop_stub(cluster, "london-1") as london:
        seq = london.KvPut(kv_pb2.KvPutRequest(namespace="up", key="k", value=b"v"), timeout=5).seq
        poll_until(lambda: pop_status(cluster, "london-1").applied_seq >= seq)
        cluster.stop("origin")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            london.KvPut(kv_pb2.KvPutRequest(namespace="up", key="k2", value=b"v"), timeout=2)
        elapsed = time.monotonic() - started
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "origin unreachable" in raised.value.details()
        assert elapsed < 2.0
        got = london.KvGet(kv_pb2.KvGetRequest(namespace="up", key="k"), timeout=2)
        assert got.found and got.value == b"v"
        cluster.start("origin")
        assert (
            london.KvPut(kv_pb2.KvPutRequest(namespace="up", key="k2", value=b"v"), timeout=10).seq
            > seq
        )
