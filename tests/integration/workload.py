"""A seeded random KV workload (puts, deletes, TTLs, batch puts) driven through PoPs."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from edge.v1 import kv_pb2, pop_pb2_grpc
from edgectl.launcher import Cluster
from tests.integration.kvclient import OPTIONS

NAMESPACES = ("users", "flags", "cart")


@dataclass
class Operation:
    kind: str  # "put" | "delete" | "put_many"
    namespace: str
    key: str = ""
    value: bytes = b""
    metadata_json: str = ""
    expiration_ttl: int = 0
    entries: list[kv_pb2.KvPutEntry] = field(default_factory=list)


def _key(rng: random.Random) -> str:
    # A small key space so puts and deletes collide; some long and multibyte keys.
    roll = rng.random()
    base = f"k{rng.randrange(400):03d}"
    if roll < 0.05:
        return "é" * 200 + base  # 400 bytes of 2-byte characters + suffix
    if roll < 0.10:
        return "L" * 500 + base[:12]  # shares a 500-byte head with its neighbours
    return base


def generate(seed: int, count: int) -> list[Operation]:
    """`count` operations (a batch put counts as one), reproducible from `seed`."""
    rng = random.Random(seed)
    operations = []
    for _ in range(count):
        namespace = rng.choice(NAMESPACES)
        roll = rng.random()
        if roll < 0.6:
            metadata = json.dumps({"v": rng.randrange(100)}) if rng.random() < 0.3 else ""
            ttl = rng.choice((1, 2, 3)) if rng.random() < 0.05 else 0
            operations.append(
                Operation(
                    "put",
                    namespace,
                    _key(rng),
                    rng.randbytes(rng.randrange(0, 2048)),
                    metadata,
                    ttl,
                )
            )
        elif roll < 0.85:
            operations.append(Operation("delete", namespace, _key(rng)))
        else:
            entries = [
                kv_pb2.KvPutEntry(key=_key(rng), value=rng.randbytes(rng.randrange(0, 256)))
                for _ in range(rng.randrange(1, 50))
            ]
            operations.append(Operation("put_many", namespace, entries=entries))
    return operations


def run(cluster: Cluster, operations: list[Operation], seed: int, in_flight: int = 16) -> int:
    """Send every operation through a random PoP; returns the highest acknowledged seq."""
    rng = random.Random(seed)
    pops = [pop.grpc_address for pop in cluster.pops]
    channels = {address: grpc.insecure_channel(address, options=OPTIONS) for address in pops}
    stubs = {address: pop_pb2_grpc.PopStub(channel) for address, channel in channels.items()}
    targets = [rng.choice(pops) for _ in operations]

    def send(item: tuple[Operation, str]) -> int:
        operation, address = item
        stub = stubs[address]
        if operation.kind == "put":
            return int(
                stub.KvPut(
                    kv_pb2.KvPutRequest(
                        namespace=operation.namespace,
                        key=operation.key,
                        value=operation.value,
                        metadata_json=operation.metadata_json,
                        expiration_ttl=operation.expiration_ttl,
                    ),
                    timeout=30,
                ).seq
            )
        if operation.kind == "delete":
            return int(
                stub.KvDelete(
                    kv_pb2.KvDeleteRequest(namespace=operation.namespace, key=operation.key),
                    timeout=30,
                ).seq
            )
        return int(
            stub.KvPutMany(
                kv_pb2.KvPutManyRequest(namespace=operation.namespace, entries=operation.entries),
                timeout=30,
            ).seq
        )

    try:
        with ThreadPoolExecutor(in_flight) as pool:
            return max(pool.map(send, zip(operations, targets, strict=True)))
    finally:
        for channel in channels.values():
            channel.close()
