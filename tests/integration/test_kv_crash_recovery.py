"""Crashes and restarts: nothing acknowledged is lost, nothing applied twice or skipped."""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import grpc

from edge.v1 import kv_pb2, origin_pb2, origin_pb2_grpc, pop_pb2_grpc
from edgectl.launcher import Cluster
from tests.conftest import FAST_TOPOLOGY, ClusterFactory, poll_until
from tests.integration.kvclient import (
    auth,
    converged,
    dump_origin,
    metric_value,
    origin_head,
    origin_stub,
    pop_status,
    pop_stub,
)


class Writer(threading.Thread):
    """Writes unique keys through one node until stopped; records what was acknowledged."""

    def __init__(self, cluster: Cluster, *, via_pop: str | None = None) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.via_pop = via_pop
        self.acknowledged: dict[str, int] = {}
        self.failures = 0
        self.stop = threading.Event()
        self.prefix = uuid.uuid4().hex[:8]

    def run(self) -> None:
        counter = 0
        address = (
            self.cluster.node(self.via_pop).grpc_address
            if self.via_pop
            else self.cluster.origin.grpc_address
        )
        with grpc.insecure_channel(address) as channel:
            stub = (
                pop_pb2_grpc.PopStub(channel)
                if self.via_pop
                else origin_pb2_grpc.OriginStub(channel)
            )
            while not self.stop.is_set():
                key = f"{self.prefix}-{counter:06d}"
                counter += 1
                try:
                    seq = stub.KvPut(
                        kv_pb2.KvPutRequest(namespace="burst", key=key, value=key.encode()),
                        timeout=2,
                    ).seq
                except grpc.RpcError:
                    self.failures += 1
                    continue
                self.acknowledged[key] = seq


def _wait_for_acks(writer: Writer, count: int) -> None:
    poll_until(lambda: len(writer.acknowledged) >= count, timeout=30, what=f"{count} acks")


def test_pop_killed_during_write_burst_catches_up_exactly_after_restart(
    fast_cluster: Cluster,
) -> None:
    writer = Writer(fast_cluster)
    writer.start()
    try:
        _wait_for_acks(writer, 200)
        fast_cluster.kill("tokyo-2")
        acked_at_kill = len(writer.acknowledged)
        _wait_for_acks(writer, acked_at_kill + 300)
        fast_cluster.start("tokyo-2")
        _wait_for_acks(writer, len(writer.acknowledged) + 200)
    finally:
        writer.stop.set()
        writer.join()
    head = origin_head(fast_cluster)
    poll_until(
        lambda: pop_status(fast_cluster, "tokyo-2").applied_seq == head,
        timeout=30,
        what="tokyo-2 catches up",
    )
    poll_until(lambda: converged(fast_cluster), timeout=30, interval=0.5, what="identical dumps")


def _log_is_gap_free(cluster: Cluster, head: int) -> None:
    """Read the whole log through Subscribe: seqs 1..head, each once, in order."""
    expected = 1
    with origin_stub(cluster) as stub:
        call = stub.Subscribe(
            origin_pb2.SubscribeRequest(node="test", from_seq=1),
            metadata=auth(cluster),
            timeout=60,
        )
        for message in call:
            assert not message.HasField("snapshot"), "the whole log is retained here"
            for entry in message.entries:
                assert entry.seq == expected
                expected += 1
            if expected > head:
                call.cancel()
                break
    assert expected == head + 1


def test_origin_killed_during_write_burst_keeps_every_acknowledged_write(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(FAST_TOPOLOGY)
    writers = [Writer(cluster), Writer(cluster, via_pop="tokyo-1")]
    for writer in writers:
        writer.start()
    try:
        for writer in writers:
            _wait_for_acks(writer, 150)
        cluster.kill("origin")
        cluster.start("origin")
        for writer in writers:
            _wait_for_acks(writer, len(writer.acknowledged) + 150)
    finally:
        for writer in writers:
            writer.stop.set()
            writer.join()
    assert sum(writer.failures for writer in writers) > 0, "the kill interrupted writes"

    head, records = dump_origin(cluster)
    stored = {record.key: record for record in records if record.namespace == "burst"}
    for writer in writers:
        for key, seq in writer.acknowledged.items():
            assert key in stored, f"acknowledged write {key} (seq {seq}) lost"
            assert stored[key].value == key.encode()
    _log_is_gap_free(cluster, head)
    # PoPs resume on their own (no restart) and hold exactly the origin's data.
    poll_until(lambda: converged(cluster), timeout=30, interval=0.5, what="PoPs resume")


def test_pop_that_starts_after_log_truncation_bootstraps_from_a_snapshot(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(FAST_TOPOLOGY, role_args={"origin": ["--log-retain-entries", "50"]})
    with pop_stub(cluster, "london-1") as london:
        london.KvPut(kv_pb2.KvPutRequest(namespace="snap", key="before", value=b"1"), timeout=5)
    poll_until(lambda: converged(cluster), timeout=20, what="initial sync")
    cluster.stop("tokyo-2")
    # A brand-new node: its data dir is gone, and the log no longer starts at seq 1.
    shutil.rmtree(Path(cluster.node("tokyo-2").data_dir) / "lmdb")
    with origin_stub(cluster) as origin:
        for batch in range(4):
            origin.KvPutMany(
                kv_pb2.KvPutManyRequest(
                    namespace="snap",
                    entries=[
                        kv_pb2.KvPutEntry(key=f"b{batch}-{index:03d}", value=b"v")
                        for index in range(60)
                    ],
                ),
                timeout=10,
            )
        status = origin.Status(origin_pb2.OriginStatusRequest(), timeout=5)
    assert status.log_first_seq > 1, "the log was truncated"
    cluster.start("tokyo-2")
    poll_until(lambda: converged(cluster), timeout=30, interval=0.3, what="snapshot + catch-up")
    assert metric_value(cluster, "tokyo-2", "edge_kv_snapshots_total") >= 1
    assert pop_status(cluster, "tokyo-2").applied_seq == status.head_seq


def test_sigterm_drains_cleanly_and_data_survives_restart(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(FAST_TOPOLOGY)
    with origin_stub(cluster) as origin:
        seq = origin.KvPut(
            kv_pb2.KvPutRequest(namespace="keep", key="k", value=b"durable"), timeout=5
        ).seq
    poll_until(lambda: pop_status(cluster, "london-1").applied_seq >= seq, what="replicated")
    for name in ("london-1", "origin"):
        node = cluster.node(name)
        cluster.stop(name)
        assert not cluster.alive(name)
        assert "closing (SIGTERM)" in Path(node.log_file).read_text()
    cluster.start("origin")
    cluster.start("london-1")
    with pop_stub(cluster, "london-1") as london:
        got = london.KvGet(kv_pb2.KvGetRequest(namespace="keep", key="k"), timeout=5)
    assert got.found and got.value == b"durable" and got.applied_seq >= seq
