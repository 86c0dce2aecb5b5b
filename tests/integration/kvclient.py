"""Small synchronous gRPC helpers for integration tests (real channels, real nodes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from edge.v1 import kv_pb2, origin_pb2, origin_pb2_grpc, pop_pb2, pop_pb2_grpc
from edgectl.launcher import Cluster
from edgepop.limits import MESSAGE_BYTES_MAX

OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
]


@contextmanager
def pop_stub(cluster: Cluster, name: str) -> Iterator[pop_pb2_grpc.PopStub]:
    with grpc.insecure_channel(cluster.node(name).grpc_address, options=OPTIONS) as channel:
        yield pop_pb2_grpc.PopStub(channel)


@contextmanager
def origin_stub(cluster: Cluster) -> Iterator[origin_pb2_grpc.OriginStub]:
    with grpc.insecure_channel(cluster.origin.grpc_address, options=OPTIONS) as channel:
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
