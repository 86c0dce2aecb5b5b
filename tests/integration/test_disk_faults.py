"""A disk that refuses to sync: writes fail with a clear UNAVAILABLE, nothing of them is
kept or half kept, reads go on, and everything works again once the disk does.

The cluster (us-east-1 + london x2, delay emulation off) runs over the fault runs'
disk-fault shim (`edgectl/chaos/diskfault.c`): while its flag file exists, fsync and
fdatasync of the files it names fail with EIO, as a failing disk's would: first of every
file of every node (the origin's log, the control plane's state, the PoPs' replicas and
Durable Object stores, the SQL files), then only the SQL primary's WAL.

- The whole disk refuses: a KV write, a Durable Object's increment and a SQL write each
  answer UNAVAILABLE naming the refused commit (they used to answer INTERNAL); reads at
  the PoPs and at the SQL primary still answer; after the disk recovers, the refused
  writes are nowhere (the Counter counts on from its last acknowledged value) and the
  replicas converge on the origin.
- Only the SQL primary's WAL refuses: the log takes the write (so the replicas apply it)
  but SQLite cannot commit it at the primary; the primary then answers UNAVAILABLE to
  reads and writes of that database (it would answer without a logged write) until the
  disk recovers, and then holds the write exactly once; its retry is answered from the log.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from edge.v1 import kv_pb2, objects_pb2, origin_pb2_grpc, sql_pb2
from edgectl.chaos import diskfault
from edgectl.chaos.diskfault import DiskFaults
from edgectl.launcher import Cluster
from edgepop.lifecycle import STORAGE_DIR_NAME
from tests.conftest import _make_factory, _stop, poll_until
from tests.integration.kvclient import OPTIONS, auth, converged, origin_stub, pop_stub

pytestmark = pytest.mark.cluster

TOPOLOGY: dict[str, Any] = {
    "emulate_delay": False,
    "regions": [{"name": "us-east-1"}, {"name": "london", "pop_nodes": 2}],
}
DATABASE = "disk"
WAL_NAME = f"{DATABASE}.sqlite-wal"  # the SQL primary's WAL (edgepop.sqldb's file naming)
NAMESPACE = "disk-faults"
COUNTER = "disk-faults"  # placed in london: owner and standby are its two PoPs
ENTRY_POP = "london-1"
OTHER_POP = "london-2"
CALL_TIMEOUT_S = 3.0
REFUSED_CALL_TIMEOUT_S = 10.0
RECOVERY_TIMEOUT_S = 30.0
REFUSED_COMMIT = "storage refused the commit"
CHILD_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, DiskFaults]]:
    """One cluster for both tests (neither leaves it broken), under the shim."""
    shim_dir = tmp_path_factory.mktemp("disk-faults-shim")
    shim = diskfault.build(shim_dir)
    refused = DiskFaults(shim_dir / "refuse-syncs")
    started: list[Cluster] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        # The launcher hands its environment to every node it starts.
        for name, value in diskfault.environment(shim, refused.flag).items():
            monkeypatch.setenv(name, value)
        cluster = _make_factory(tmp_path_factory.mktemp("disk-faults"), started)(TOPOLOGY)
    try:
        _sql(cluster, "CREATE TABLE t (v TEXT)", create=True)
        yield cluster, refused
    finally:
        refused.allow()
        _stop(started)


def _put(cluster: Cluster, key: str, *, at_origin: bool = False) -> kv_pb2.KvPutResponse:
    """A KV write through the entry PoP, or straight to the origin (`at_origin`: its own
    answer, at once; a PoP retries an UNAVAILABLE origin until near the deadline)."""
    request = kv_pb2.KvPutRequest(namespace=NAMESPACE, key=key, value=key.encode())
    if at_origin:
        with origin_stub(cluster) as origin:
            return origin.KvPut(request, metadata=auth(cluster), timeout=CALL_TIMEOUT_S)
    with pop_stub(cluster, ENTRY_POP) as stub:
        return stub.KvPut(request, timeout=CALL_TIMEOUT_S)


def _found(cluster: Cluster, pop: str, key: str) -> bool:
    with pop_stub(cluster, pop) as stub:
        reply = stub.KvGet(kv_pb2.KvGetRequest(namespace=NAMESPACE, key=key), timeout=5)
    return bool(reply.found)


def _increment(cluster: Cluster, timeout_s: float = CALL_TIMEOUT_S) -> int:
    with pop_stub(cluster, ENTRY_POP) as stub:
        reply = stub.ObjectCall(
            objects_pb2.ObjectCallRequest(namespace="Counter", name=COUNTER, method="increment"),
            timeout=timeout_s,
        )
    return int(json.loads(reply.result_json))


def _sql(
    cluster: Cluster,
    sql: str,
    *,
    create: bool = False,
    replica: bool = False,
    at_origin: bool = False,
    request_id: str = "",
) -> sql_pb2.SqlQueryResponse:
    """`sql` at the primary (through a PoP, outside a session, or straight to the origin
    with `at_origin`), or at the PoP's replica."""
    if create:
        with cluster.channel(cluster.origin.grpc_address, OPTIONS) as channel:
            origin_pb2_grpc.OriginStub(channel).SqlCreate(
                sql_pb2.SqlCreateRequest(name=DATABASE), timeout=CALL_TIMEOUT_S
            )
    request = sql_pb2.SqlQueryRequest(
        database=DATABASE, statements=[sql_pb2.SqlStatement(sql=sql)], request_id=request_id
    )
    if replica:
        request.session = sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED
    if at_origin:
        with origin_stub(cluster) as origin:
            return origin.SqlQuery(request, timeout=CALL_TIMEOUT_S)
    with pop_stub(cluster, ENTRY_POP) as stub:
        return stub.SqlQuery(request, timeout=CALL_TIMEOUT_S)


def _replica_holds(cluster: Cluster, value: str) -> bool:
    """Whether the entry PoP's own replica serves a row `value` (one that lacks the
    database yet sends the read to the primary, which may refuse it)."""
    try:
        answer = _sql(cluster, "SELECT v FROM t", replica=True)
    except grpc.RpcError:
        return False
    return not answer.results[0].meta.served_by_primary and value in _values(answer)


def _values(answer: sql_pb2.SqlQueryResponse) -> list[str]:
    return [row.values[0].text for row in answer.results[0].rows]


def _refused(call: Any, *, says: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    error = refused.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    assert says in (error.details() or ""), error.details()
    return error


def test_a_disk_that_refuses_syncs_fails_writes_as_unavailable_and_keeps_none_of_them(
    disk: tuple[Cluster, DiskFaults],
) -> None:
    cluster, refused = disk
    _put(cluster, "before")
    counted = _increment(cluster)
    _sql(cluster, "INSERT INTO t VALUES ('before')")
    poll_until(lambda: _found(cluster, OTHER_POP, "before"), what=f"'before' at {OTHER_POP}")

    refused.refuse()  # every file of every node
    try:
        # Straight to the origin: its own answer, at once. (Through a PoP, which retries an
        # UNAVAILABLE origin, the same status and reason arrive just before the deadline.)
        _refused(lambda: _put(cluster, "during", at_origin=True), says=REFUSED_COMMIT)
        _refused(
            lambda: _sql(cluster, "INSERT INTO t VALUES ('during')", at_origin=True),
            says=REFUSED_COMMIT,
        )
        # The owner tries again until near the deadline: a long one, so that its answer,
        # not the client's own timeout, ends the call on a busy machine.
        _refused(lambda: _increment(cluster, REFUSED_CALL_TIMEOUT_S), says=REFUSED_COMMIT)
        # Reads need no sync.
        assert _found(cluster, OTHER_POP, "before")
        assert "before" in _values(_sql(cluster, "SELECT v FROM t"))
    finally:
        refused.allow()

    _put(cluster, "after")
    # The refused increment left nothing, on the owner or its standby.
    assert _increment(cluster) == counted + 1
    _sql(cluster, "INSERT INTO t VALUES ('after')")
    assert sorted(_values(_sql(cluster, "SELECT v FROM t"))) == ["after", "before"]
    poll_until(lambda: converged(cluster), timeout=RECOVERY_TIMEOUT_S, what="replicas converge")
    assert not _found(cluster, ENTRY_POP, "during")
    assert _found(cluster, OTHER_POP, "after")


def test_a_primary_that_cannot_commit_a_logged_write_answers_unavailable_until_it_can(
    disk: tuple[Cluster, DiskFaults],
) -> None:
    cluster, refused = disk
    # Only SQLite's commit at the primary (not the replicas' WALs); the log syncs.
    [primary_wal] = Path(cluster.origin.data_dir).rglob(WAL_NAME)
    refused.refuse(str(primary_wal))
    try:
        _refused(
            lambda: _sql(
                cluster, "INSERT INTO t VALUES ('logged')", at_origin=True, request_id="logged-1"
            ),
            says="lacks logged commits",
        )
        # The log took it: the replicas apply it ...
        poll_until(
            lambda: _replica_holds(cluster, "logged"),
            timeout=RECOVERY_TIMEOUT_S,
            what="the logged write at london-1's replica",
        )
        # ... and the primary, which lacks it, answers nothing of that database.
        _refused(
            lambda: _sql(cluster, "SELECT v FROM t", at_origin=True), says="lacks logged commits"
        )
        _refused(
            lambda: _sql(cluster, "INSERT INTO t VALUES ('refused')", at_origin=True),
            says="lacks logged commits",
        )
    finally:
        refused.allow()

    assert _values(_sql(cluster, "SELECT v FROM t")).count("logged") == 1
    again = _sql(cluster, "INSERT INTO t VALUES ('logged')", request_id="logged-1")
    values = _values(_sql(cluster, "SELECT v FROM t"))
    assert values.count("logged") == 1 and "refused" not in values
    assert again.bookmark  # answered from the log: the first attempt's seq


def test_the_shim_refuses_syncs_of_the_files_its_flag_names_and_only_while_it_exists(
    tmp_path: Path,
) -> None:
    shim = diskfault.build(tmp_path)
    faults = DiskFaults(tmp_path / "flag")
    code = """
import os, sys
results = []
for name in sys.argv[1:]:
    with open(name, "wb") as out:
        out.write(b"x")
        out.flush()
        for sync in (os.fsync, os.fdatasync):
            try:
                sync(out.fileno())
                results.append("ok")
            except OSError as error:
                results.append(os.strerror(error.errno))
print(" ".join(results))
"""
    paths = [str(tmp_path / "store" / "data.mdb"), str(tmp_path / "other" / "data.mdb")]
    for path in paths:
        Path(path).parent.mkdir()

    def syncs() -> str:
        env = {**os.environ, **diskfault.environment(shim, faults.flag)}
        done = subprocess.run(
            [sys.executable, "-c", code, *paths],
            env=env,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=True,
        )
        return done.stdout.strip()

    eio = os.strerror(errno.EIO)
    assert syncs() == "ok ok ok ok"
    faults.refuse("/store/")
    assert syncs() == f"{eio} {eio} ok ok"
    faults.refuse()  # every file, besides
    assert syncs() == f"{eio} {eio} {eio} {eio}"
    faults.allow()
    assert not faults.flag.exists()
    assert syncs() == "ok ok ok ok"


def test_a_replica_flush_the_disk_refuses_is_tried_again_not_given_up(
    disk: tuple[Cluster, DiskFaults],
) -> None:
    cluster, refused = disk
    log_file = cluster.data_dir / "logs" / f"{OTHER_POP}.log"
    # Only the replica's store at the other PoP: the origin commits, the PoP applies the
    # entry (no sync: a replica syncs once a second) and its next flush is refused.
    replica_store = f"{cluster.node(OTHER_POP).data_dir}/{STORAGE_DIR_NAME}/"
    refused.refuse(replica_store)
    try:
        _put(cluster, "flushed-later")
        poll_until(
            lambda: "replica flush failed" in log_file.read_text(),
            timeout=RECOVERY_TIMEOUT_S,
            what=f"{OTHER_POP}'s refused flush in its log",
        )
    finally:
        refused.allow(replica_store)
    assert "background task replica-flush failed" not in log_file.read_text()
    _put(cluster, "flushed-now")
    poll_until(lambda: _found(cluster, OTHER_POP, "flushed-now"), what="the write applied")
