"""A PoP whose replica may have been torn by a machine stop rebuilds it by itself.

A replica commits without fsync, so only a stop of the machine while it is open can tear
it. The test simulates one with real processes: the replica's data file is put back to
an earlier copy (the tail since is lost, as unsynced pages would be), the PoP was killed
with SIGKILL (never closed), and it restarts under another boot id (the test-only
EDGEPOP_TEST_BOOT_ID, as a reboot would change /proc/sys/kernel/random/boot_id).
A process crash or a clean stop must not cost a rebuild.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edge.v1 import kv_pb2
from edgectl.launcher import Cluster
from edgepop.storage import BOOT_ID_ENV
from tests.conftest import ClusterFactory, poll_until
from tests.integration.kvclient import converged, metric_value, origin_stub, pop_status

pytestmark = pytest.mark.cluster

TOPOLOGY: dict[str, Any] = {
    "emulate_delay": False,
    "regions": [{"name": "us-east-1"}, {"name": "london", "pop_nodes": 1}],
}
POP = "london-1"
# Short, so that a replica starting from nothing gets a snapshot (the log no longer
# starts at seq 1) rather than the whole log.
LOG_RETAIN_ENTRIES = 20
KEYS_PER_BATCH = 30
TORN = "KV replica may be torn"


def _cluster(cluster_factory: ClusterFactory) -> Cluster:
    return cluster_factory(
        TOPOLOGY, role_args={"origin": ["--log-retain-entries", str(LOG_RETAIN_ENTRIES)]}
    )


def _put_many(cluster: Cluster, prefix: str, value: bytes) -> int:
    entries = [
        kv_pb2.KvPutEntry(key=f"{prefix}-{index:03d}", value=value)
        for index in range(KEYS_PER_BATCH)
    ]
    with origin_stub(cluster) as origin:
        request = kv_pb2.KvPutManyRequest(namespace="torn", entries=entries)
        return int(origin.KvPutMany(request, timeout=10).seq)


def _delete(cluster: Cluster, key: str) -> int:
    with origin_stub(cluster) as origin:
        request = kv_pb2.KvDeleteRequest(namespace="torn", key=key)
        return int(origin.KvDelete(request, timeout=10).seq)


def _wait_applied(cluster: Cluster, seq: int) -> None:
    poll_until(
        lambda: pop_status(cluster, POP).applied_seq >= seq, timeout=20, what=f"{POP} at {seq}"
    )


def _data_file(cluster: Cluster) -> Path:
    return Path(cluster.node(POP).data_dir) / "lmdb" / "data.mdb"


def _log_since(cluster: Cluster, offset: int) -> str:
    return Path(cluster.node(POP).log_file).read_text()[offset:]


def _log_size(cluster: Cluster) -> int:
    return len(Path(cluster.node(POP).log_file).read_text())


def _resumed_at(log: str) -> int:
    """The seq the replication stream started from after a restart (its first line)."""
    line = next(line for line in log.splitlines() if "replicating from" in line)
    return int(line.rsplit("at seq ", 1)[1])


def test_pop_rebuilds_a_replica_that_lost_its_tail_in_a_simulated_reboot(
    cluster_factory: ClusterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = _cluster(cluster_factory)
    _wait_applied(cluster, _put_many(cluster, "before", b"old"))
    # The replica is idle (nothing left to apply): its file is a consistent state, the
    # one a flush would have left on disk.
    on_disk = tmp_path / "data.mdb"
    shutil.copyfile(_data_file(cluster), on_disk)

    _put_many(cluster, "before", b"new")  # overwrites every key of the copy
    _put_many(cluster, "after", b"tail")
    _wait_applied(cluster, _delete(cluster, "before-000"))
    cluster.kill(POP)
    shutil.copyfile(on_disk, _data_file(cluster))  # the tail never reached the disk
    offset = _log_size(cluster)
    monkeypatch.setenv(BOOT_ID_ENV, "simulated-reboot")  # for the node started next
    cluster.start(POP)

    poll_until(lambda: converged(cluster), timeout=30, interval=0.3, what="identical dumps")
    log = _log_since(cluster, offset)
    assert TORN in log and "open when the machine stopped" in log
    assert _resumed_at(log) == 0, "rebuilt from nothing, not resumed from the stale copy"
    assert metric_value(cluster, POP, "edge_kv_snapshots_total") >= 1
    assert metric_value(cluster, POP, "edge_kv_replica_rebuilds_total") == 1


def test_pop_keeps_its_replica_after_a_process_crash_or_a_clean_stop_before_a_reboot(
    cluster_factory: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = _cluster(cluster_factory)
    seq = _put_many(cluster, "kept", b"v")
    _wait_applied(cluster, seq)

    # kill -9 under the same boot: the page cache kept every commit.
    cluster.kill(POP)
    offset = _log_size(cluster)
    cluster.start(POP)
    poll_until(lambda: converged(cluster), timeout=30, interval=0.3, what="identical dumps")
    log = _log_since(cluster, offset)
    assert TORN not in log and _resumed_at(log) == seq
    assert metric_value(cluster, POP, "edge_kv_snapshots_total") == 0
    assert metric_value(cluster, POP, "edge_kv_replica_rebuilds_total") == 0

    # A clean stop synced and closed it: another boot finds it sound.
    cluster.stop(POP)
    offset = _log_size(cluster)
    monkeypatch.setenv(BOOT_ID_ENV, "another-boot")
    cluster.start(POP)
    poll_until(lambda: converged(cluster), timeout=30, interval=0.3, what="identical dumps")
    log = _log_since(cluster, offset)
    assert TORN not in log and _resumed_at(log) == seq
    assert metric_value(cluster, POP, "edge_kv_snapshots_total") == 0
    assert metric_value(cluster, POP, "edge_kv_replica_rebuilds_total") == 0
