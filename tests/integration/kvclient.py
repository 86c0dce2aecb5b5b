"""Small synchronous gRPC helpers for integration tests (real channels, real nodes).

Channels come from `Cluster.channel`: mutual TLS with the cluster's client certificate
when the cluster runs TLS, plaintext otherwise.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.parser import text_string_to_metric_families

from edge.v1 import kv_pb2, origin_pb2, origin_pb2_grpc, pop_pb2, pop_pb2_grpc
from edgectl.launcher import Cluster
from edgepop.limits import MESSAGE_BYTES_MAX

OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
]


@contextmanager
def pop_stub(cluster: Cluster, name: str) -> Iterator[pop_pb2_grpc.PopStub]:
    with cluster.channel(cluster.node(name).grpc_address, OPTIONS) as channel:
        yield pop_pb2_grpc.PopStub(channel)


@contextmanager
def origin_stub(cluster: Cluster) -> Iterator[origin_pb2_grpc.OriginStub]:
    with cluster.channel(cluster.origin.grpc_address, OPTIONS) as channel:
        yield origin_pb2_grpc.OriginStub(channel)


def auth(cluster: Cluster) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {cluster.token}")]


def dump_pop(cluster: Cluster, name: str) -> tuple[int, list[kv_pb2.KvRecord]]:
    """(applied_seq, every record) of a PoP's replica, read in one transaction."""
    with pop_stub(cluster, name) as stub:
        chunks = list(stub.Dump(kv_pb2.DumpRequest(), metadata=auth(cluster), timeout=60))
    return chunks[0].seq, [record for chunk in chunks for record in chunk.records]


def dump_origin(cluster: Cluster) -> tuple[int, list[kv_pb2.KvRecord]]:
    with origin_stub(cluster) as stub:
        chunks = list(stub.Dump(kv_pb2.DumpRequest(), metadata=auth(cluster), timeout=60))
    return chunks[0].seq, [record for chunk in chunks for record in chunk.records]


def origin_head(cluster: Cluster) -> int:
    with origin_stub(cluster) as stub:
        return int(stub.Status(origin_pb2.OriginStatusRequest(), timeout=5).head_seq)


def pop_status(cluster: Cluster, name: str) -> pop_pb2.PopStatusResponse:
    with pop_stub(cluster, name) as stub:
        return stub.Status(pop_pb2.PopStatusRequest(), timeout=5)


def record_tuples(records: list[kv_pb2.KvRecord]) -> list[tuple[str, str, bytes, str, int, int]]:
    return [(r.namespace, r.key, r.value, r.metadata_json, r.expiration, r.seq) for r in records]


def converged(cluster: Cluster) -> bool:
    """True when every PoP's replica equals the origin's store, byte for byte, at one seq."""
    origin_seq, origin_records = dump_origin(cluster)
    expected = record_tuples(origin_records)
    for pop in cluster.pops:
        seq, records = dump_pop(cluster, pop.name)
        if seq != origin_seq or record_tuples(records) != expected:
            return False
    return True


def metric_value(
    cluster: Cluster, name: str, metric: str, labels: dict[str, str] | None = None
) -> float:
    """Sum of a metric's samples on one node's /metrics, of those with `labels` if given
    (0 when absent)."""
    address = cluster.node(name).metrics_address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = (labels or {}).items()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and wanted <= sample.labels.items():
                total += sample.value
    return total


def log_entries_since(cluster: Cluster, after_seq: int) -> list[kv_pb2.LogEntry]:
    """Every log entry committed after `after_seq` (read through Subscribe)."""
    head = origin_head(cluster)
    entries: list[kv_pb2.LogEntry] = []
    if head <= after_seq:
        return entries
    with origin_stub(cluster) as stub:
        call = stub.Subscribe(
            origin_pb2.SubscribeRequest(node="test", from_seq=after_seq + 1),
            metadata=auth(cluster),
            timeout=30,
        )
        for message in call:
            entries.extend(message.entries)
            if entries and entries[-1].seq >= head:
                call.cancel()
                break
    return entries
